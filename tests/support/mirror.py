"""
daomirror itself as the tests run it: ``twistd -n --pidfile= daomirror``
in a subprocess, with a generated configuration, on a free loopback port.
"""

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .registry import free_port, tail

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def twistd_command():
    """
    The twistd of the Python running the tests (the project's venv).
    """
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    return [candidate] if os.path.exists(candidate) else [sys.executable, "-m", "twisted"]


def write_config(path, *, port, upstream, root, extra="", upstream_extra="", also_listen=()):
    listen = ", ".join(f'"{endpoint}"' for endpoint in (f"tcp:{port}:interface=127.0.0.1", *also_listen))
    with open(path, "w") as f:
        f.write(
            f'[server]\nlisten = [{listen}]\n\n'
            f'[upstream]\nurl = "{upstream}"\n{upstream_extra}\n'
            f'[storage]\ndriver = "filesystem"\n\n'
            f'[storage.filesystem]\nroot = "{root}"\n{extra}'
        )


class MirrorProcess:
    """
    A running daomirror in front of C{upstream} (a URL), caching under
    C{root} (a fresh temporary directory unless given, so a test can restart
    a mirror on the same cache). C{also_listen}: more endpoints besides
    plain TCP on C{port}, e.g. a TLS one. C{twistd}: the command to run
    instead of twistd (a benchmark stands another program in daomirror's
    place with it).
    """

    def __init__(self, upstream, root=None, port=None, extra_config="", upstream_config="", env=None,
                 also_listen=(), twistd=None):
        self.workdir = tempfile.mkdtemp(prefix="daomirror-test-")
        self.root = root or os.path.join(self.workdir, "cache")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.host = f"127.0.0.1:{self.port}"
        self.config_path = os.path.join(self.workdir, "daomirror.toml")
        self.log_path = os.path.join(self.workdir, "daomirror.log")
        write_config(self.config_path, port=self.port, upstream=upstream, root=self.root, extra=extra_config,
                     upstream_extra=upstream_config, also_listen=also_listen)
        env = dict(os.environ if env is None else env, PYTHONPATH=PROJECT)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                (twistd or twistd_command()) + ["-n", "--pidfile=", "daomirror", "--config", self.config_path],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
            )
        self._wait_until_listening()

    def _wait_until_listening(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daomirror exited with {self.process.returncode}: {tail(self.log_path)}")
            try:
                status, _, _ = self.request("GET", "/v2/")
                if status == 200:
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daomirror did not answer in {timeout}s: {tail(self.log_path)}")

    def request(self, method, path, headers=None, timeout=60):
        """
        One request; returns (status, headers as a dict with lower-case
        names, body).
        """
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            connection.close()

    def resident_mib(self, field="VmRSS"):
        """
        The daemon's resident memory (or, with C{"VmHWM"}, its peak) in MiB.
        """
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the cache too, unless it was given
