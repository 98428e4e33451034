"""daomirror demo: a real dockerd pulling through daomirror, cold then warm.

What it shows, on real input and with nothing leaving this machine:

1. a local upstream registry (Debian's reference ``docker-registry``)
   holding a runnable ``library/busybox:latest``: the busybox-static rootfs
   plus one 64 MiB layer, so that the timings mean something;
2. daomirror (``twistd daomirror``) in front of that upstream;
3. a private dockerd started with ``--registry-mirror`` pointing at
   daomirror, so ``docker pull busybox`` (docker.io/library/busybox:latest)
   goes through the mirror;
4. a cold pull (the mirror fetches every blob from upstream), a container
   run from the pulled image, ``docker rmi``, then a warm pull (every blob
   comes from the mirror's cache: upstream sees no blob request at all).

For each pull it prints the time taken, the blob bytes the mirror fetched
from upstream (from the upstream registry's access log) and the blob bytes
it served from its cache (from daomirror's own access log).

Run it as root from the repository root::

    make demo            # or: .venv/bin/python tools/demo.py

It exits non-zero with a message if anything fails, and exits 1 if the
warm pull fetched any blob from upstream.  Every daemon it starts is
stopped, and its temporary directories removed, on the way out (also on
failure and on Ctrl-C); on failure its work directory, with daomirror's
log, is kept and its path printed.
"""

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.clients import PrivateDockerd  # noqa: E402
from tests.support.images import push_image  # noqa: E402
from tests.support.mirror import MirrorProcess  # noqa: E402
from tests.support.registry import UpstreamRegistry  # noqa: E402

REPO, TAG = "library/busybox", "latest"
REF = "busybox"  # what a user types; dockerd asks its mirror for library/busybox:latest
BIG_LAYER = 64 * 1024 * 1024

# A twisted.web access log line, e.g.
#   "GET /v2/library/busybox/blobs/sha256:... HTTP/1.1" 200 67109000 "-" "docker/..."
MIRROR_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>[^ ?"]+)\S* HTTP/[\d.]+" (?P<status>\d{3}) (?P<size>\d+|-)')


def step(message):
    print(f"==> {message}", flush=True)


def is_blob_get(method, path):
    return method == "GET" and "/blobs/" in path and "/blobs/uploads/" not in path


def mirror_log_size(mirror):
    return os.path.getsize(mirror.log_path)


def mirror_blob_bytes_sent(mirror, since):
    """Blob bytes daomirror sent (GET .../blobs/..., 200) after byte offset ``since`` of its log."""
    with open(mirror.log_path, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    total = 0
    for m in MIRROR_ACCESS.finditer(text):
        if is_blob_get(m["method"], m["path"]) and m["status"] == "200" and m["size"] != "-":
            total += int(m["size"])
    return total


def wait_for_mirror_log(mirror, since, expected, timeout=5.0):
    """Access log lines are written as responses finish: wait for ``expected`` blob bytes."""
    deadline = time.monotonic() + timeout
    while True:
        sent = mirror_blob_bytes_sent(mirror, since)
        if sent >= expected or time.monotonic() >= deadline:
            return sent
        time.sleep(0.05)


def timed_pull(dockerd, upstream, mirror, expected_bytes):
    """Pull REF; return (seconds, upstream blob GETs, bytes from upstream, bytes from cache)."""
    upstream.quiesce()
    mark = upstream.mark()
    log_pos = mirror_log_size(mirror)
    seconds = dockerd.pull(REF).seconds
    upstream.quiesce()
    fetched = [e for e in upstream.entries_since(mark) if is_blob_get(e.method, e.path)]
    from_upstream = sum(e.size for e in fetched)
    sent = wait_for_mirror_log(mirror, log_pos, expected_bytes)
    return seconds, len(fetched), from_upstream, max(sent - from_upstream, 0)


def report(label, seconds, gets, from_upstream, from_cache):
    mb = 1e6
    print(f"{label}: {seconds:5.2f} s   blobs: {from_upstream / mb:5.1f} MB from upstream, "
          f"{from_cache / mb:5.1f} MB from cache ({gets} upstream blob GETs)")


def demo(stack):
    step("starting the upstream registry (docker-registry)")
    upstream = stack["upstream"] = UpstreamRegistry()

    step(f"pushing {REPO}:{TAG} (busybox rootfs + a 64 MiB layer) to {upstream.url}")
    image = push_image(upstream.url, REPO, TAG, extra_layers=[BIG_LAYER], seed="demo")
    print(f"    {image.digest}, {len(image.blobs)} blobs, {image.total_blob_bytes / 1e6:.1f} MB")

    step("starting daomirror in front of it")
    mirror = stack["mirror"] = MirrorProcess(upstream.url)
    print(f"    {mirror.url}, cache in {mirror.root}")

    step(f"starting a private dockerd with --registry-mirror {mirror.url}")
    dockerd = stack["dockerd"] = PrivateDockerd(mirror.url)

    step(f"docker pull {REF}  (cold: the mirror has nothing yet)")
    cold = timed_pull(dockerd, upstream, mirror, image.total_blob_bytes)

    step(f"docker run --rm {REF} echo hello from the mirror")
    print("    " + dockerd.run(REF, "echo", "hello from the mirror").strip())

    step(f"docker rmi {REF}, then docker pull {REF} again  (warm: from the mirror's cache)")
    dockerd.rmi(REF)
    warm = timed_pull(dockerd, upstream, mirror, image.total_blob_bytes)

    print()
    report("cold pull", *cold)
    report("warm pull", *warm)
    print()
    if warm[1] or warm[2]:
        print(f"!!! FAILURE: the warm pull fetched {warm[1]} blob(s), {warm[2]} bytes, from "
              "upstream; daomirror should have served them all from its cache !!!", file=sys.stderr)
        return 1
    if cold[1] == 0:
        print("!!! FAILURE: the cold pull fetched no blob from upstream: "
              "the numbers above cannot be right !!!", file=sys.stderr)
        return 1
    print("OK: the warm pull was served entirely from daomirror's cache.")
    print("(The upstream here is on loopback, as fast as the cache: most of each pull's time is\n"
          " dockerd verifying and unpacking the layers. Against a real, remote registry the cold\n"
          " pull pays for the download and the warm one does not.)")
    return 0


def stop_all(stack):
    for name in ("dockerd", "mirror", "upstream"):
        daemon = stack.get(name)
        if daemon is not None:
            try:
                daemon.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"warning: stopping {name} failed: {e}", file=sys.stderr)


def stop_stray_children(timeout=10.0):
    """Last resort: stop any child process of ours still running (e.g. a daomirror
    whose start-up was interrupted before MirrorProcess returned)."""
    strays = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == os.getpid() and state != "Z":
            strays.append(int(entry))
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in strays:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)


def main():
    if os.geteuid() != 0:
        sys.exit("demo: must run as root (it starts its own dockerd)")

    def terminated(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    # The registry's storage, daomirror's cache and log and the built layers all
    # go in one directory (dockerd's own, short-named one goes in /tmp and
    # removes itself), so that nothing is left behind whenever we stop.
    workdir = tempfile.tempdir = tempfile.mkdtemp(prefix="daomirror-demo-")
    stack = {}
    status = 2
    try:
        status = demo(stack)
    except KeyboardInterrupt:
        print("\ndemo: interrupted, cleaning up", file=sys.stderr)
        status = 130
    except Exception as e:  # noqa: BLE001 - report any failure plainly
        print(f"\ndemo FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        status = 2
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # don't interrupt the clean-up itself
            signal.signal(signum, signal.SIG_IGN)
        stop_all(stack)
        stop_stray_children()
        if status in (0, 130):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            where = stack["mirror"].log_path if "mirror" in stack else workdir
            print(f"demo: kept for inspection: {where}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
