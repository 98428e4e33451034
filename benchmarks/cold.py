"""Cold GETs of one big blob, system by system, with the CPU each side spent.

Where the time of a cold pull goes, and how near daomirror is to what
Twisted can do at all on this machine. One upstream (``docker-registry``)
holds a big blob; then, in rounds, each system is started fresh (an empty
cache), the blob is fetched through it once with a 1 MiB-read client that
checks the sha256 (the mirrors are asked for the manifest first, as a pull
does), and the system is stopped:

upstream        the blob straight from the upstream (the network's ceiling)
distribution    ``docker-registry`` in proxy mode (the registry:2 pull-through
                cache; it serves the client as it reads and stores the blob
                from a second upstream GET, in the background)
daomirror       this project
relay           ``twisted_relay.py``: the simplest Twisted program relaying
                upstream to client with backpressure (no hash, no disk)
relay+store     the same, also hashing and writing every chunk and ending the
                response only if the digest matches: the same work as a
                verifying cache, with nothing else

For each: MB/s, time to first byte, and the CPU seconds that the system's
process, the upstream and the client used during the transfer (from
``/proc``), medians over the rounds. The machine has two cores: when the
three CPU columns add up to about twice the wall time, the transfer is
CPU-bound and the CPU column is what to compare.

    .venv/bin/python benchmarks/cold.py [--big 512M] [--rounds 3]
"""

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from side_by_side import MANIFEST_V2, fetch  # noqa: E402
from tests.support.images import clear_layer_cache, push_image  # noqa: E402
from tests.support.mirror import MirrorProcess  # noqa: E402
from tests.support.registry import UpstreamRegistry, free_port  # noqa: E402

MIB = 1 << 20
SYSTEMS = ("upstream", "distribution", "daomirror", "relay", "relay+store")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_listening(port, process, timeout=30):
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def started(system, upstream, workdir):
    """The system running fresh: yields (port, pid)."""
    if system == "upstream":
        yield upstream.port, upstream._proc.pid
    elif system == "distribution":
        with UpstreamRegistry(config={"proxy": {"remoteurl": upstream.url}}) as proxy:
            yield proxy.port, proxy._proc.pid
    elif system == "daomirror":
        with MirrorProcess(upstream.url) as mirror:
            yield mirror.port, mirror.process.pid
    else:
        port = free_port()
        command = [sys.executable, os.path.join(HERE, "twisted_relay.py"), "--port", str(port),
                   "--upstream", upstream.url]
        if system == "relay+store":
            command += ["--store", tempfile.mkdtemp(dir=workdir)]
        relay = subprocess.Popen(command)
        try:
            wait_until_listening(port, relay)
            yield port, relay.pid
        finally:
            relay.terminate()
            relay.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", type=lambda s: int(s.upper().removesuffix("M")) * MIB, default=512 * MIB,
                        metavar="MiB", help="blob size in MiB, e.g. 256M (default 512M)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    samples = {system: [] for system in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="daomirror-cold-") as workdir:
        tempfile.tempdir = workdir
        try:
            with UpstreamRegistry() as upstream:
                image = push_image(upstream.url, "library/big", "v1", extra_layers=[args.big], seed="cold")
                digest = image.manifests[0].layers[1].digest
                path = f"/v2/library/big/blobs/{digest}"
                for round_ in range(args.rounds):
                    order = SYSTEMS[round_ % len(SYSTEMS):] + SYSTEMS[:round_ % len(SYSTEMS)]
                    for system in order:
                        with started(system, upstream, workdir) as (port, pid):
                            if system in ("distribution", "daomirror"):  # a pull asks for the manifest first
                                fetch(port, "/v2/library/big/manifests/v1", headers={"Accept": MANIFEST_V2})
                            upstream.quiesce(quiet=0.3)
                            before = cpu_seconds(pid), cpu_seconds(upstream._proc.pid), sum(os.times()[:2])
                            size, ttfb, elapsed = fetch(port, path, digest)
                            after = cpu_seconds(pid), cpu_seconds(upstream._proc.pid), sum(os.times()[:2])
                        spent = [b - a for a, b in zip(before, after)]
                        samples[system].append((size / elapsed / 1e6, ttfb * 1000, elapsed, *spent))
                        print(f"{system:<13} {samples[system][-1][0]:7.1f} MB/s", flush=True)
        finally:
            tempfile.tempdir = None
            clear_layer_cache()
    print(f"\n{args.big // MIB} MiB blob, median of {args.rounds} rounds")
    print(f"{'system':<13}{'MB/s':>8}{'ttfb ms':>9}{'wall s':>8}{'cpu: system':>13}{'upstream':>10}{'client':>8}")
    for system, rows in samples.items():
        mbps, ttfb, wall, own, up, client = (statistics.median(column) for column in zip(*rows))
        own_text = "-" if system == "upstream" else f"{own:.2f}"
        print(f"{system:<13}{mbps:8.1f}{ttfb:9.1f}{wall:8.2f}{own_text:>13}{up:10.2f}{client:8.2f}")


if __name__ == "__main__":
    main()
