"""Real container clients pulling through a registry mirror, fully private.

Why: the mirror must work with the clients people actually use, and each
one talks to a mirror differently (dockerd only mirrors docker.io and
falls back to it; containerd adds ``?ns=docker.io``; podman and skopeo
use containers/image).  Every daemon and tool here gets its own temporary
directories, sockets and config files, so tests never read or change the
machine's own docker/containerd/podman state and can run beside them.

The mirror is given as a URL, ``http://127.0.0.1:PORT`` (plain HTTP on
loopback: dockerd, containerd and podman all treat that as insecure-OK
with the settings below).

Plain standard library + subprocess: usable from pytest and from scripts.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Iterable, Sequence
from urllib.parse import urlsplit

__all__ = [
    "ClientError",
    "PrivateDockerd",
    "PrivateContainerd",
    "ctr_pull",
    "podman_pull",
    "skopeo_copy",
    "PullResult",
    "docker_hub_ref",
]

# The docker CLI that ships with dockerd (Debian's docker.io); another
# "docker" earlier on PATH works too but may be a much newer client.
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"

# Environment variables that would point a client at someone else's daemon,
# config or credentials; removed from every child's environment.
_LEAKY_ENV = (
    "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH", "CONTAINERD_ADDRESS", "CONTAINERD_NAMESPACE",
    "CONTAINERD_SNAPSHOTTER", "CONTAINER_HOST", "CONTAINER_CONNECTION",
    "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF",
    "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
    "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
)


class ClientError(RuntimeError):
    """A client command or daemon failed; the message has its stderr/log tail."""


@dataclass
class PullResult:
    """What a pull produced: the digest the client resolved, plus its output."""

    ref: str
    digest: str | None  # the tag's manifest (or list/index) digest, when the client tells it
    image_id: str | None  # the client's local image/config ID, when it has one
    output: str
    seconds: float


# -- helpers -----------------------------------------------------------------------

# Daemons still running, stopped at interpreter exit as a last resort (a
# test or script should stop them itself, in a finally or a with block).
_live: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _stop_live() -> None:
    for obj in list(_live):
        try:
            obj.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


_blackhole: socket.socket | None = None


def blackhole_proxy() -> str:
    """URL of a loopback "proxy" that refuses every connection.

    Why: when a mirror fails, dockerd, containerd and podman fall back to
    registry-1.docker.io.  With this as HTTP(S)_PROXY that fallback fails at
    once on loopback, without even a DNS lookup leaving the machine.  It is
    a socket bound to a free port and never listened on (so connections are
    refused and nothing else can take the port), kept for the process' life.
    """
    global _blackhole
    if _blackhole is None:
        _blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _blackhole.bind(("127.0.0.1", 0))
    return "http://127.0.0.1:%d" % _blackhole.getsockname()[1]


def _clean_env(*, direct: Iterable[str] = (), **extra: str) -> dict:
    """The environment for a client: none of the caller's docker/containers
    settings, every non-loopback request through the refusing proxy except to
    the hosts in ``direct`` (mirror addresses; loopback is always direct)."""
    env = {k: v for k, v in os.environ.items()
           if k not in _LEAKY_ENV and k.upper() != "NO_PROXY"}
    proxy = blackhole_proxy()
    no_proxy = ",".join(["127.0.0.1", "localhost", "::1",
                         *(h.rsplit(":", 1)[0] if h.count(":") == 1 else h for h in direct)])
    env.update(HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy,
               NO_PROXY=no_proxy, no_proxy=no_proxy)
    env.update(extra)
    return env


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def _run(cmd: Sequence[str], *, env: dict | None = None, timeout: float = 300,
         what: str = "", check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure raise ClientError with its stdout/stderr."""
    try:
        proc = subprocess.run(list(cmd), env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ClientError(
            f"{what or cmd[0]} timed out after {timeout}s: {' '.join(cmd)}\n"
            f"stdout: {_s(e.stdout)}\nstderr: {_s(e.stderr)}"
        ) from None
    if check and proc.returncode != 0:
        raise ClientError(
            f"{what or cmd[0]} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )
    return proc


def _s(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def mirror_host(mirror: str) -> str:
    """``http://127.0.0.1:5000`` (or ``127.0.0.1:5000``) -> ``127.0.0.1:5000``."""
    if "://" in mirror:
        return urlsplit(mirror).netloc
    return mirror.rstrip("/")


def mirror_url(mirror: str) -> str:
    """``127.0.0.1:5000`` (or a URL) -> ``http://127.0.0.1:5000``."""
    return mirror.rstrip("/") if "://" in mirror else f"http://{mirror.rstrip('/')}"


def docker_hub_ref(ref: str) -> str:
    """``busybox`` / ``library/busybox:1`` / ``docker.io/x/y`` -> ``docker.io/<repo>:<tag>``.

    The fully qualified form containerd, podman and skopeo need; single
    names get ``library/`` like Docker Hub official images.
    """
    if ref.startswith("docker.io/"):
        ref = ref[len("docker.io/"):]
    name, sep, digest = ref.partition("@")
    if not sep:
        last = name.rsplit("/", 1)[-1]
        if ":" not in last:
            name += ":latest"
    if "/" not in name:
        name = "library/" + name
    return "docker.io/" + name + (sep + digest if sep else "")


def _short_tmpdir(prefix: str) -> str:
    # Unix socket paths must stay under ~108 bytes: keep the base short.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _ppids() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # "pid (comm) state ppid ..." -- comm may contain spaces/parens.
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def _owned_processes(root_pids: Iterable[int], marker: str) -> set[int]:
    """Our processes: ``root_pids``, those whose command line names ``marker``
    (our private temp dir: containerd, shims), and all their descendants
    (container processes under the shims)."""
    ppids = _ppids()
    own = {p for p in root_pids if p in ppids}
    marker = marker.rstrip("/") + "/"
    own |= {pid for pid in ppids if pid != os.getpid() and marker in _proc_cmdline(pid)}
    changed = True
    while changed:
        changed = False
        for pid, ppid in ppids.items():
            if ppid in own and pid not in own:
                own.add(pid)
                changed = True
    own.discard(os.getpid())
    return own


def _kill_and_reap(pids: set[int], timeout: float = 10) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child
        except ChildProcessError:
            pass
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break  # zombie: dead, its parent will reap it
            except OSError:
                break
            time.sleep(0.05)


# containerd 1.6 puts every shim's socket here, whatever its root/state dirs.
SHIM_SOCKET_DIR = "/run/containerd/s"


def _shim_socket(cmdline: str) -> str | None:
    """The socket a runc v2 shim listens on, computed as containerd 1.6 does:
    SHIM_SOCKET_DIR/hex(sha256("<containerd address>/<namespace>/<id>"))."""
    args = cmdline.split()
    if not args or "containerd-shim" not in os.path.basename(args[0]):
        return None
    try:
        address = args[args.index("-address") + 1]
        namespace = args[args.index("-namespace") + 1]
        ident = args[args.index("-id") + 1]
    except (ValueError, IndexError):
        return None
    digest = hashlib.sha256(f"{address}/{namespace}/{ident}".encode()).hexdigest()
    return os.path.join(SHIM_SOCKET_DIR, digest)


def _kill_owned(root_pids: Iterable[int], marker: str) -> None:
    """SIGKILL our leftover processes (see ``_owned_processes``) and remove the
    sockets that killed shims leave in SHIM_SOCKET_DIR (they only remove
    them when they exit normally)."""
    pids = _owned_processes(root_pids, marker)
    sockets = {_shim_socket(_proc_cmdline(pid)) for pid in pids} - {None}
    _kill_and_reap(pids)
    for path in sockets:
        for p in (path, path + ".debug"):
            try:
                os.unlink(p)
            except OSError:
                pass


def _unmount_under(path: str) -> None:
    """Lazily unmount every mount point at or below ``path``, deepest first."""
    path = os.path.realpath(path)
    # Stacked mounts (dockerd bind-mounts its data-root onto itself) need
    # one umount each, hence the repeat.
    for _round in range(5):
        points = _mounts_under(path)
        if not points:
            return
        for mp in sorted(set(points), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _mounts_under(path: str) -> list[str]:
    points = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                # Field 5 is the mount point, with octal escapes like \040.
                mp = line.split()[4].encode().decode("unicode_escape")
                if mp == path or mp.startswith(path + "/"):
                    points.append(mp)
    except OSError:
        pass
    return points


def _rmtree(path: str) -> None:
    """Remove a tree that may hold read-only dirs (vfs layers, runc state)."""
    def onerror(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass
    if os.path.lexists(path):
        _unmount_under(path)
        shutil.rmtree(path, onerror=onerror)


def _wait_for(check, timeout: float, proc: subprocess.Popen | None, what: str, log: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClientError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - report the last reason on timeout
            last = e
        time.sleep(0.1)
    raise ClientError(f"{what} not ready after {timeout}s ({last}):\n{_tail(log)}")


# -- dockerd -------------------------------------------------------------------------


class PrivateDockerd:
    """A dockerd of our own, with ``--registry-mirror`` set to the mirror.

    Why private: tests must not depend on, or disturb, a system docker.
    It has its own data-root, exec-root, pidfile, socket, daemon.json and
    cgroup parent, the vfs storage driver (no overlay mounts to leak), no
    bridge, no iptables, no ip_forward sysctl, and a containerd of its own
    (a PrivateContainerd given with ``--containerd``; ``containerd_socket``).

    dockerd only uses mirrors for docker.io names, so pull refs like
    ``library/busybox:latest`` or ``team/tools/cli:1``.  If the mirror
    fails, dockerd silently falls back to registry-1.docker.io; its proxy
    is ``blackhole_proxy()``, so that fails at once and a broken mirror
    shows up as a failed pull (the mirror's error is in the dockerd log,
    which ``pull`` appends to its error).
    """

    def __init__(self, mirror: str | Sequence[str] | None = None, *,
                 extra_args: Sequence[str] = (), daemon_config: dict | None = None,
                 start_timeout: float = 60.0) -> None:
        mirrors = [mirror] if isinstance(mirror, str) else list(mirror or ())
        self.mirrors = [mirror_url(m) for m in mirrors]
        self.dir = _short_tmpdir("dmd.")
        self.data_root = os.path.join(self.dir, "data")
        self.exec_root = os.path.join(self.dir, "exec")
        self.socket = os.path.join(self.dir, "docker.sock")
        self.host = "unix://" + self.socket
        self.pidfile = os.path.join(self.dir, "dockerd.pid")
        self.log_path = os.path.join(self.dir, "dockerd.log")
        self.config_path = os.path.join(self.dir, "daemon.json")
        self.client_config = os.path.join(self.dir, "client")
        self.cgroup_parent = "/daomirror-" + os.path.basename(self.dir).replace(".", "-")
        self.containerd: PrivateContainerd | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None
        _live.add(self)
        try:
            # Our own containerd rather than dockerd's managed one: the managed
            # one gets no say over its opt dir and would create /opt/containerd.
            self.containerd = PrivateContainerd(workdir=os.path.join(self.dir, "ctd"),
                                                start_timeout=start_timeout)
            self._start(extra_args, daemon_config or {}, start_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def containerd_socket(self) -> str:
        """The containerd socket dockerd uses (for ``ctr --address``; dockerd's namespace is "moby")."""
        return self.containerd.socket

    def command(self, extra_args: Sequence[str] = ()) -> list[str]:
        cmd = [
            "dockerd",
            "--config-file", self.config_path,
            "--data-root", self.data_root,
            "--exec-root", self.exec_root,
            "--pidfile", self.pidfile,
            "-H", self.host,
            "--containerd", self.containerd_socket,
            "--storage-driver=vfs",
            "--iptables=false", "--ip6tables=false", "--ip-forward=false",
            "--ip-masq=false", "--bridge=none", "--userland-proxy=false",
            "--cgroup-parent", self.cgroup_parent,
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--log-level", "info",
        ]
        for m in self.mirrors:
            cmd += ["--registry-mirror", m]
        return cmd + list(extra_args)

    def _start(self, extra_args, daemon_config, timeout) -> None:
        for d in (self.data_root, self.exec_root, self.client_config):
            os.makedirs(d, exist_ok=True)
        # An explicit (empty) daemon.json: never read /etc/docker/daemon.json.
        with open(self.config_path, "w") as f:
            json.dump(daemon_config, f)
        with open(os.path.join(self.client_config, "config.json"), "w") as f:
            json.dump({}, f)
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(extra_args), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, env=_clean_env(direct=[mirror_host(m) for m in self.mirrors]),
            cwd=self.dir, start_new_session=True,
        )
        _wait_for(lambda: self.docker("version", timeout=10, check=False).returncode == 0,
                  timeout, self._proc, "dockerd", self.log_path)

    # -- CLI ---------------------------------------------------------------

    def env(self) -> dict:
        return _clean_env(DOCKER_HOST=self.host, DOCKER_CONFIG=self.client_config)

    def docker(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``docker -H unix://SOCK ARGS``; raise ClientError on failure if ``check``."""
        return _run([DOCKER_CLI, "-H", self.host, *args], env=self.env(),
                    timeout=timeout, what="docker " + (args[0] if args else ""), check=check)

    def pull(self, ref: str, *, platform: str | None = None, timeout: float = 300) -> PullResult:
        """``docker pull REF``; returns the digest dockerd reports and the image ID."""
        t0 = time.monotonic()
        args = ["pull"] + (["--platform", platform] if platform else []) + [ref]
        try:
            out = self.docker(*args, timeout=timeout).stdout
        except ClientError as e:
            # dockerd reports only the docker.io fallback's error; the mirror's
            # own failure is in its log.
            raise ClientError(f"{e}\n--- dockerd log tail ---\n{_tail(self.log_path, 15)}") from None
        m = re.search(r"^Digest: (sha256:[0-9a-f]{64})$", out, re.M)
        image_id = self.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
        return PullResult(ref, m.group(1) if m else None, image_id or None, out,
                          time.monotonic() - t0)

    def rmi(self, ref: str, *, force: bool = True) -> None:
        self.docker("rmi", *(["--force"] if force else []), ref)

    def run(self, ref: str, *cmd: str, timeout: float = 120) -> str:
        """``docker run --rm --network none REF CMD...``; returns its stdout."""
        return self.docker("run", "--rm", "--network", "none", ref, *cmd,
                           timeout=timeout).stdout

    def images(self) -> list[dict]:
        """Local images as dicts (Repository, Tag, Digest, ID, ...), full IDs."""
        out = self.docker("images", "--digests", "--no-trunc", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def inspect(self, ref: str) -> dict:
        return json.loads(self.docker("image", "inspect", ref).stdout)[0]

    def info(self) -> dict:
        return json.loads(self.docker("info", "--format", "{{json .}}").stdout)

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """Stop dockerd, its containerd, shims and containers; remove all its dirs."""
        _live.discard(self)
        proc, self._proc = self._proc, None
        root_pids = set()
        if proc is not None:
            root_pids.add(proc.pid)
            if proc.poll() is None:
                # Remove containers first so their shims exit normally.
                try:
                    ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                    if ids:
                        self.docker("rm", "--force", "--volumes", *ids, check=False, timeout=60)
                except ClientError:
                    pass  # hung daemon: the kills below still clean up
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        if self.containerd is not None:
            self.containerd.stop()  # also kills leftover shims and containers
        _kill_owned(root_pids, self.dir)
        if proc is not None and proc.poll() is None:
            proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _rmtree(self.dir)
        _remove_cgroup(self.cgroup_parent)

    def __enter__(self) -> "PrivateDockerd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<PrivateDockerd {self.host} mirrors={self.mirrors}>"


def _remove_cgroup(parent: str) -> None:
    """Remove the (empty) cgroup directories our containers' parent left behind."""
    base = "/sys/fs/cgroup"
    try:
        hierarchies = os.listdir(base)
    except OSError:
        return
    for h in hierarchies:
        path = os.path.join(base, h, parent.lstrip("/"))
        if os.path.isdir(path):
            for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass


# -- containerd -----------------------------------------------------------------------


class PrivateContainerd:
    """A containerd of our own, for ``ctr`` pulls without any dockerd.

    Own root, state, socket, opt dir and config; CRI and exotic snapshotters
    disabled.  ``ctr_pull`` starts one for a single pull when not given one.
    """

    def __init__(self, *, workdir: str | None = None, start_timeout: float = 30.0) -> None:
        self._own_dir = workdir is None
        self.dir = workdir or _short_tmpdir("dmc.")
        self.root = os.path.join(self.dir, "root")
        self.state = os.path.join(self.dir, "state")
        self.socket = os.path.join(self.dir, "containerd.sock")
        self.config_path = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self._proc: subprocess.Popen | None = None
        self._log = None
        _live.add(self)
        try:
            self._start(start_timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> None:
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.state, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(f"""\
version = 2
root = "{self.root}"
state = "{self.state}"
plugin_dir = ""
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{self.socket}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{self.dir}/opt"
""")
        self._log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            ["containerd", "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=_clean_env(), cwd=self.dir, start_new_session=True,
        )
        _wait_for(lambda: _run(["ctr", "--address", self.socket, "version"],
                               env=_clean_env(), timeout=10, check=False).returncode == 0,
                  timeout, self._proc, "containerd", self.log_path)

    def ctr(self, *args: str, namespace: str = "daomirror-test", timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ctr --address SOCK --namespace NS ARGS`` against this containerd."""
        return _run(["ctr", "--address", self.socket, "--namespace", namespace, *args],
                    env=_clean_env(), timeout=timeout, what="ctr", check=check)

    def stop(self) -> None:
        """Stop containerd, kill leftover shims/containers, remove its dir (if ours)."""
        _live.discard(self)
        proc, self._proc = self._proc, None
        root_pids = set()
        if proc is not None:
            root_pids.add(proc.pid)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    pass
        _kill_owned(root_pids, self.dir)
        if proc is not None and proc.poll() is None:
            proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir:
            _rmtree(self.dir)
        else:
            _unmount_under(self.dir)

    def __enter__(self) -> "PrivateContainerd":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def write_hosts_dir(directory: str, mirror: str, *, registry: str = "docker.io",
                    server: str = "https://registry-1.docker.io") -> str:
    """Write ``DIR/<registry>/hosts.toml`` sending pulls for ``registry`` to ``mirror``."""
    d = os.path.join(directory, registry)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "hosts.toml")
    with open(path, "w") as f:
        f.write(f'server = "{server}"\n\n'
                f'[host."{mirror_url(mirror)}"]\n'
                f'  capabilities = ["pull", "resolve"]\n')
    return path


def ctr_pull(mirror: str, ref: str, *, containerd: "PrivateContainerd | PrivateDockerd | str | None" = None,
             namespace: str = "daomirror-test", platform: str | None = None,
             all_platforms: bool = False, timeout: float = 300) -> PullResult:
    """``ctr images pull --hosts-dir DIR docker.io/<repo>:<tag>`` via ``mirror``.

    ``containerd`` is a PrivateContainerd, a PrivateDockerd (its
    containerd is used) or a socket path; None starts a PrivateContainerd
    just for this pull.  The image stays in ``namespace`` of that containerd.
    Returns the tag's digest as containerd recorded it.
    """
    own = None
    if containerd is None:
        own = containerd = PrivateContainerd()
    try:
        sock = containerd if isinstance(containerd, str) else (
            containerd.containerd_socket if isinstance(containerd, PrivateDockerd) else containerd.socket)
        full = docker_hub_ref(ref)
        hosts = tempfile.mkdtemp(prefix="dmh.", dir="/tmp")
        try:
            write_hosts_dir(hosts, mirror)
            base = ["ctr", "--address", sock, "--namespace", namespace]
            cmd = base + ["images", "pull", "--hosts-dir", hosts]
            if platform:
                cmd += ["--platform", platform]
            if all_platforms:
                cmd += ["--all-platforms"]
            t0 = time.monotonic()
            out = _run(cmd + [full], env=_clean_env(direct=[mirror_host(mirror)]),
                       timeout=timeout, what="ctr pull").stdout
            seconds = time.monotonic() - t0
        finally:
            shutil.rmtree(hosts, ignore_errors=True)
        digest = None
        ls = _run(base + ["images", "ls"], env=_clean_env(), what="ctr images ls").stdout
        for line in ls.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == full:
                digest = cols[2]
        return PullResult(full, digest, None, out, seconds)
    finally:
        if own is not None:
            own.stop()


# -- podman -----------------------------------------------------------------------------


def podman_pull(mirror: str, ref: str, *, keep_dir: str | None = None,
                platform: str | None = None, timeout: float = 300) -> PullResult:
    """``podman pull docker.io/<repo>:<tag>`` with ``mirror`` as docker.io's mirror.

    podman gets private root/runroot/tmp dirs, its own containers.conf,
    storage.conf, registries.conf, policy.json and auth file (all through
    flags and env vars), vfs storage, cgroupfs, file events and file locks,
    so it uses none of the system's podman state.  Two fixed paths remain,
    which containers/image gives no setting for: it reads drop-ins in
    /etc/containers/registries.conf.d, and as root it records digests in
    /var/lib/containers/cache/blob-info-cache-v1.boltdb.  Everything else is
    removed afterwards unless ``keep_dir`` is given (then it is used and
    kept).  On failure podman 4.3 retries a pull 3 times, 1 s apart.

    ``digest`` is the tag's digest (the list/index for multi-platform
    images, even with ``platform``); ``image_id`` is the config digest's hex.
    """
    base = keep_dir or _short_tmpdir("dmp.")
    os.makedirs(base, exist_ok=True)
    d = {name: os.path.join(base, name) for name in
         ("root", "runroot", "tmp", "home", "xdg-run", "xdg-config", "xdg-data", "libpod-tmp", "volumes")}
    for path in d.values():
        os.makedirs(path, exist_ok=True)
    os.chmod(d["xdg-run"], 0o700)
    conf = {name: os.path.join(base, name) for name in
            ("containers.conf", "storage.conf", "registries.conf", "policy.json", "auth.json")}
    try:
        with open(conf["containers.conf"], "w") as f:
            f.write(f"""\
[containers]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{d['libpod-tmp']}"
volume_path = "{d['volumes']}"
runtime = "runc"
# File locks under tmp_dir instead of the machine-wide /dev/shm/libpod_lock.
lock_type = "file"
[network]
# CNI with our own config dir: the netavark backend (podman's default when no
# CNI config exists) would create /run/containers/networks, a fixed path.
network_backend = "cni"
network_config_dir = "{base}/networks"
""")
        with open(conf["storage.conf"], "w") as f:
            f.write(f"""\
[storage]
driver = "vfs"
graphroot = "{d['root']}"
runroot = "{d['runroot']}"
""")
        with open(conf["registries.conf"], "w") as f:
            f.write(f"""\
unqualified-search-registries = []
short-name-mode = "disabled"

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "{mirror_host(mirror)}"
insecure = true
""")
        with open(conf["policy.json"], "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        with open(conf["auth.json"], "w") as f:
            json.dump({"auths": {}}, f)
        env = _clean_env(
            direct=[mirror_host(mirror)],
            CONTAINERS_CONF=conf["containers.conf"],
            CONTAINERS_STORAGE_CONF=conf["storage.conf"],
            CONTAINERS_REGISTRIES_CONF=conf["registries.conf"],
            REGISTRY_AUTH_FILE=conf["auth.json"],
            HOME=d["home"], TMPDIR=d["tmp"],
            XDG_RUNTIME_DIR=d["xdg-run"], XDG_CONFIG_HOME=d["xdg-config"],
            XDG_DATA_HOME=d["xdg-data"],
        )
        full = docker_hub_ref(ref)
        podman = [
            "podman",
            "--root", d["root"], "--runroot", d["runroot"], "--tmpdir", d["libpod-tmp"],
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--volumepath", d["volumes"],
            "--network-config-dir", os.path.join(base, "networks"),
        ]
        cmd = podman + ["pull", "--signature-policy", conf["policy.json"]]
        if platform:
            cmd += ["--platform", platform]
        t0 = time.monotonic()
        proc = _run(cmd + [full], env=env, timeout=timeout, what="podman pull")
        seconds = time.monotonic() - t0
        image_id = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else None
        digest = _run(podman + ["image", "inspect", "--format", "{{.Digest}}", full],
                      env=env, what="podman image inspect").stdout.strip() or None
        return PullResult(full, digest, image_id, proc.stdout + proc.stderr, seconds)
    finally:
        if keep_dir is None:
            _rmtree(base)


# -- skopeo -------------------------------------------------------------------------------


def skopeo_copy(mirror: str, ref: str, dest_dir: str, *, all_platforms: bool = False,
                transport: str = "oci", timeout: float = 300) -> PullResult:
    """``skopeo copy --src-tls-verify=false docker://HOST/<repo>:<tag> oci:DEST_DIR``.

    Talks to the mirror directly by its host:port (no docker.io
    rewriting), so ``ref`` is ``<repo>:<tag>``.  ``all_platforms`` adds
    ``--all`` (copy every manifest of a list/index).

    Returns the digest of the manifest written (``digest``) and, for a
    single image, its config digest (``image_id``).  For an ``oci:``
    destination skopeo converts Docker schema2 manifests, lists *and
    configs* to OCI, so for Docker-typed sources both differ from the
    source's (layers are unchanged); OCI sources are copied as they are.
    ``transport="dir"`` writes ``dir:DEST_DIR`` instead, which keeps the
    manifest byte for byte, so ``digest`` is the source's digest.

    As root, skopeo (like podman) also records digests in
    /var/lib/containers/cache/blob-info-cache-v1.boltdb; containers/image
    has no setting to move it.
    """
    if transport not in ("oci", "dir"):
        raise ValueError(f"transport must be 'oci' or 'dir', not {transport!r}")
    if ref.startswith("docker.io/"):
        ref = ref[len("docker.io/"):]
    src = f"docker://{mirror_host(mirror)}/{ref}"
    tmp = _short_tmpdir("dms.")
    try:
        policy = os.path.join(tmp, "policy.json")
        with open(policy, "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        registries = os.path.join(tmp, "registries.conf")
        with open(registries, "w") as f:
            f.write("unqualified-search-registries = []\n")
        env = _clean_env(direct=[mirror_host(mirror)], HOME=tmp, TMPDIR=tmp, XDG_RUNTIME_DIR=tmp,
                         XDG_CONFIG_HOME=tmp, XDG_DATA_HOME=tmp,
                         REGISTRY_AUTH_FILE=os.path.join(tmp, "auth.json"),
                         CONTAINERS_REGISTRIES_CONF=registries)
        cmd = ["skopeo", "--policy", policy, "--registries-conf", registries,
               "copy", "--src-tls-verify=false", "--retry-times", "0"]
        if all_platforms:
            cmd.append("--all")
        t0 = time.monotonic()
        proc = _run(cmd + [src, f"{transport}:{dest_dir}"], env=env, timeout=timeout,
                    what="skopeo copy")
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if transport == "dir":
        digest, config = _dir_top(dest_dir)
    else:
        digest, config = _oci_layout_top(dest_dir)
    return PullResult(ref, digest, config, proc.stdout + proc.stderr, seconds)


def _dir_top(path: str) -> tuple[str, str | None]:
    """(sha256 of a ``dir:`` copy's manifest.json, its config digest if it is an image)."""
    with open(os.path.join(path, "manifest.json"), "rb") as f:
        raw = f.read()
    config = json.loads(raw).get("config", {}).get("digest")
    return "sha256:" + hashlib.sha256(raw).hexdigest(), config


def _oci_layout_top(layout: str) -> tuple[str | None, str | None]:
    """(digest of the newest manifest in an OCI layout, its config digest if it is an image)."""
    with open(os.path.join(layout, "index.json")) as f:
        manifests = json.load(f).get("manifests", [])
    if not manifests:
        return None, None
    digest = manifests[-1]["digest"]
    algo, _, hexdigest = digest.partition(":")
    with open(os.path.join(layout, "blobs", algo, hexdigest)) as f:
        doc = json.load(f)
    config = doc.get("config", {}).get("digest")
    return digest, config
