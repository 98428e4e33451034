"""A real upstream registry for tests: Debian's ``docker-registry`` (distribution 2.8).

Tests of a pull-through cache need an upstream that speaks the registry API
exactly as the real thing does, and a way to see which requests reached it
(to prove that a cached blob was *not* fetched twice).  The reference
registry writes an Apache "combined" access log line per request on its
stdout; we send that to a file and parse it.

Plain standard library and subprocess, so pytest fixtures and demo scripts
can both use it.
"""

from __future__ import annotations

import atexit
import copy
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["UpstreamRegistry", "AccessLogEntry", "RegistryError", "free_port"]

REGISTRY_BINARY = "docker-registry"
# The start-up probe's User-Agent, so tests can tell it from real clients.
READINESS_USER_AGENT = "daomirror-tests-readiness/1"


# Registries still running, stopped at interpreter exit as a last resort.
_live: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _stop_live() -> None:
    for reg in list(_live):
        reg.stop()


class RegistryError(RuntimeError):
    """The registry could not be started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a port that was free a moment ago (bind port 0, read it back).

    There is a small race until the server binds it; callers that care
    retry on "address in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def deep_merge(base: dict, extra: Mapping) -> dict:
    """Merge ``extra`` into a copy of ``base``: nested dicts merge, None deletes, others replace."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tail(path: str, lines: int = 30) -> str:
    """Last lines of a log file, for error messages."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


# Apache combined log format, as written by gorilla/handlers for distribution:
#   127.0.0.1 - - [03/Dec/2026:16:07:35 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"
# The user field is "-" or a (quoted-escaped) user name; referer/user agent are
# Go-quoted strings that may contain \" escapes.
_ACCESS_RE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]*)\] '
    r'"(?P<method>[A-Z]+) (?P<uri>\S+) (?P<proto>[^"]*)" '
    r'(?P<status>\d{3}) (?P<size>\d+|-)'
    r'(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<agent>(?:[^"\\]|\\.)*)")?'
)


@dataclass(frozen=True)
class AccessLogEntry:
    """One request the registry answered (one access log line)."""

    method: str
    path: str  # without query string, e.g. "/v2/library/busybox/manifests/latest"
    query: str  # raw query string without "?", e.g. "ns=docker.io", or ""
    status: int
    size: int  # response body bytes written
    user_agent: str
    remote: str

    @property
    def uri(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


def parse_access_line(line: str) -> AccessLogEntry | None:
    """Parse one combined-format line; return None for anything else."""
    m = _ACCESS_RE.match(line.strip())
    if not m:
        return None
    path, _, query = m.group("uri").partition("?")
    size = m.group("size")
    return AccessLogEntry(
        method=m.group("method"),
        path=path,
        query=query,
        status=int(m.group("status")),
        size=0 if size == "-" else int(size),
        user_agent=(m.group("agent") or "").replace('\\"', '"'),
        remote=m.group("remote"),
    )


class UpstreamRegistry:
    """Run ``docker-registry serve`` on a free loopback port with its own storage.

    Why: every test gets a private, real upstream whose access log says
    exactly what it was asked.  ``config`` (a dict, or JSON text; YAML text
    needs PyYAML) is merged over the defaults, e.g. ``{"auth": {"token":
    {...}}}``; a value of None removes a default key.

    The access log (stdout) goes to ``log_path``; the application log
    (stderr, logrus) goes to ``app_log_path``.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | None = None,
        *,
        start_timeout: float = 15.0,
        workdir: str | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="daomirror-upstream-")
        self.storage_dir = os.path.join(self.dir, "storage")
        self.config_path = os.path.join(self.dir, "config.json")
        self.log_path = os.path.join(self.dir, "access.log")
        self.app_log_path = os.path.join(self.dir, "registry.log")
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._logs: list = []
        self._extra = _load_config(config)
        _live.add(self)
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    # -- lifecycle -----------------------------------------------------

    def base_config(self, port: int) -> dict:
        """The default configuration (before ``config`` is merged in)."""
        return {
            "version": 0.1,
            "log": {
                "level": "info",
                "formatter": "text",
                "accesslog": {"disabled": False},
                "fields": {"service": "upstream-registry"},
            },
            "storage": {
                "filesystem": {"rootdirectory": self.storage_dir},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                # A fixed secret avoids the "No HTTP secret" warning and keeps
                # upload state valid across restarts of the same registry.
                "secret": "daomirror-test-secret",
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }

    def _start(self, timeout: float, port: int | None = None) -> None:
        os.makedirs(self.storage_dir, exist_ok=True)
        self._timeout = timeout
        last_error = ""
        for _attempt in range(1 if port else 3):  # retry if the free port was taken meanwhile
            self.port = port or free_port()
            cfg = deep_merge(self.base_config(self.port), self._extra)
            # JSON is valid YAML, so no YAML library is needed.
            with open(self.config_path, "w") as f:
                json.dump(cfg, f, indent=2)
            out = open(self.log_path, "ab")
            err = open(self.app_log_path, "ab")
            self._logs = [out, err]
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.dir,
                # REGISTRY_* variables would override the config file.
                env={k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")},
                start_new_session=True,
            )
            try:
                self._wait_ready(timeout)
                return
            except RegistryError as e:
                last_error = str(e)
                self._terminate()
                if "address already in use" not in tail(self.app_log_path):
                    break
        raise RegistryError(last_error)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RegistryError(
                    f"docker-registry exited with {self._proc.returncode}:\n"
                    + tail(self.app_log_path)
                )
            try:
                if self.tls:
                    conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2,
                                                       context=ssl._create_unverified_context())
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/v2/", headers={"User-Agent": READINESS_USER_AGENT})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                # 200, or 401 when auth is configured: either way it is serving.
                if resp.status in (200, 401):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RegistryError(
            f"docker-registry did not answer GET /v2/ on port {self.port} "
            f"within {timeout}s:\n" + tail(self.app_log_path)
        )

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for f in self._logs:
            f.close()
        self._logs = []

    def stop_server(self) -> None:
        """Stop the process but keep storage and logs (an upstream outage)."""
        self._terminate()

    def start_server(self) -> None:
        """Start again after ``stop_server``, on the same port with the same storage."""
        if self.running:
            return
        _live.add(self)
        self._start(self._timeout, port=self.port)

    def stop(self) -> None:
        """Stop the registry and remove its directory (idempotent)."""
        _live.discard(self)
        self._terminate()
        if self._own_dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "UpstreamRegistry":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- addresses -------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references and registries.conf."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` when ``http.tls`` is configured)."""
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def tls(self) -> bool:
        return bool(self._extra.get("http", {}).get("tls"))

    # -- access log ------------------------------------------------------

    def entries(self) -> list[AccessLogEntry]:
        """Every request logged so far, in order (non-access lines are skipped).

        The registry writes a request's line when its handler returns.  Small
        responses (manifests, HEADs, errors) reach the client only after
        that, but a blob body can be sent (sendfile) just before its line is
        written, so this first waits for the log to be quiet for a moment.
        """
        self.quiesce(quiet=0.1)
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            entry = parse_access_line(line)
            if entry is not None:
                out.append(entry)
        return out

    def requests(self) -> list[tuple[str, str]]:
        """``[(method, path), ...]`` of every logged request; path has no query string."""
        return [(e.method, e.path) for e in self.entries()]

    def count(self, method: str | None = None, path_contains: str = "") -> int:
        """How many logged requests have this method (None: any) and path substring.

        e.g. ``count("GET", "/blobs/")``.  Matches the path without its query.
        """
        return sum(
            1
            for e in self.entries()
            if (method is None or e.method == method) and path_contains in e.path
        )

    def wait_for(self, method: str | None, path_contains: str, n: int = 1,
                 timeout: float = 5.0) -> int:
        """Wait until at least ``n`` matching requests are logged; return the count."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.count(method, path_contains)
            if got >= n or time.monotonic() >= deadline:
                return got
            time.sleep(0.02)

    def quiesce(self, quiet: float = 0.15, timeout: float = 5.0) -> None:
        """Wait until the access log has not grown for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                size = os.path.getsize(self.log_path)
            except OSError:
                size = 0
            now = time.monotonic()
            if size != last:
                last, since = size, now
            elif now - since >= quiet:
                return
            time.sleep(0.02)

    def mark(self) -> int:
        """Number of entries so far; pass to ``entries_since`` to see only new requests."""
        return len(self.entries())

    def entries_since(self, mark: int) -> list[AccessLogEntry]:
        return self.entries()[mark:]

    def __repr__(self) -> str:
        return f"<UpstreamRegistry {self.url} dir={self.dir}>"


def _load_config(config: Mapping[str, Any] | str | None) -> dict:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    text = config.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        import yaml  # optional: only needed for YAML text that is not JSON
    except ImportError as e:
        raise RegistryError(
            "extra registry config given as YAML text needs PyYAML; pass a dict instead"
        ) from e
    return yaml.safe_load(text) or {}

