"""daomirror next to the reference registry's pull-through cache, in one run.

One upstream (Debian's ``docker-registry``, distribution 2.8); in front of it,
at the same time and with empty caches, daomirror and a second
``docker-registry`` in proxy mode. Over loopback it measures:

cold        one GET of a big blob (default 256 MiB): MB/s (10**6 bytes/s) and
            time to first body byte; the upstream's own, direct, for reference.
warm        interleaved rounds: the big blob again (MB/s), and 16 concurrent
            GETs of a 16 MiB blob with ``curl -Z`` (aggregate MB/s); medians.
small       ``wrk -t2 -c32 -d3s`` on a manifest (by tag) and a small blob:
            requests/s (median) and failures (non-2xx and socket errors).
coalescing  16 concurrent cold GETs of a fresh 64 MiB blob: how many GETs of
            it reached the upstream (its access log); aggregate MB/s.
memory      peak RSS (VmHWM) of each mirror's process tree.

Bodies read by Python are checked against their sha256 digest. The machine
is shared and absolute numbers drift between runs: what to compare is the
ratio column (daomirror / distribution) of one run.
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.images import clear_layer_cache, push_image  # noqa: E402
from tests.support.mirror import MirrorProcess  # noqa: E402
from tests.support.registry import UpstreamRegistry, tail  # noqa: E402

MIB = 1 << 20
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
SYSTEMS = ("daomirror", "distribution")
N = 16  # concurrent clients


def fetch(port, path, digest=None, headers=None):
    """GET path, checking status and digest; return (bytes, s to first body byte, s in all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        start = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET :{port}{path}: HTTP {resp.status}: {resp.read(300)!r}")
        sha, size = hashlib.sha256(), 0
        chunk = resp.read1(MIB)  # whatever arrived first
        ttfb = time.perf_counter() - start
        while chunk:
            sha.update(chunk)
            size += len(chunk)
            chunk = resp.read(MIB)
        elapsed = time.perf_counter() - start
    finally:
        conn.close()
    if digest and "sha256:" + sha.hexdigest() != digest:
        raise RuntimeError(f"GET :{port}{path}: body does not match {digest}")
    return size, ttfb, elapsed


def concurrent_fetch(port, path, digest, n=N):
    """n threads GET path at once, each checking the digest; return aggregate MB/s."""
    barrier = threading.Barrier(n + 1)

    def one():
        barrier.wait()
        return fetch(port, path, digest)[0]

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one) for _ in range(n)]
        barrier.wait()
        start = time.perf_counter()
        total = sum(f.result() for f in futures)  # raises the first failure
        return total / (time.perf_counter() - start) / 1e6


def curl_parallel(url, size, n=N):
    """n concurrent GETs with curl -Z, bodies to /dev/null; return aggregate MB/s."""
    cmd = ["curl", "-sS", "-Z", "--parallel-immediate", "--parallel-max", str(n),
           "-w", "%{http_code} %{size_download}\\n"] + ["-o", "/dev/null", url] * n
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - start
    if out.split() != ["200", str(size)] * n:
        raise RuntimeError(f"curl -Z {url}: unexpected results {out!r}")
    return n * size / elapsed / 1e6


def wrk(url, script=None):
    """wrk -t2 -c32 -d3s; return (requests/s, failed responses + socket errors)."""
    cmd = ["wrk", "-t2", "-c32", "-d3s"] + (["-s", script] if script else []) + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    # wrk counts statuses >= 400 here; each URL answered 200 before (no redirects).
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return rps, int(bad.group(1) if bad else 0) + sum(map(int, sock.groups() if sock else ()))


def peak_rss_mib(pid):
    """Sum of VmHWM over pid and its descendants, in MiB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with open(f"/proc/{p}/status") as f:
            total += int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))
        for tid in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{tid}/children") as f:
                todo += map(int, f.read().split())
    return total / 1024


def run(args, results, reference):
    def record(metric, system, value):
        results.setdefault(metric, {}).setdefault(system, []).append(value)

    with contextlib.ExitStack() as stack:
        # The harness's temp dirs (registries, mirror, built layers) all go
        # under ours, removed last whatever happens.
        tmp = tempfile.mkdtemp(prefix="daomirror-bench-")
        stack.callback(shutil.rmtree, tmp, True)
        tempfile.tempdir = tmp
        stack.callback(setattr, tempfile, "tempdir", None)
        stack.callback(clear_layer_cache)

        print("==> upstream: pushing library/big, library/mid, library/co", flush=True)
        upstream = stack.enter_context(UpstreamRegistry())
        big = push_image(upstream.url, "library/big", "v1", extra_layers=[args.big], seed="big")
        mid = push_image(upstream.url, "library/mid", "v1", extra_layers=[16 * MIB, 1024], seed="mid")
        co = push_image(upstream.url, "library/co", "v1", extra_layers=[64 * MIB], seed="co")
        big_blob, co_blob = big.manifests[0].layers[1], co.manifests[0].layers[1]
        mid_blob, small_blob = mid.manifests[0].layers[1:3]
        big_path = f"/v2/library/big/blobs/{big_blob.digest}"
        mid_path = f"/v2/library/mid/blobs/{mid_blob.digest}"
        small_path = f"/v2/library/mid/blobs/{small_blob.digest}"
        co_path = f"/v2/library/co/blobs/{co_blob.digest}"
        manifest_path = "/v2/library/mid/manifests/v1"

        print("==> starting daomirror and distribution (proxy mode), empty caches", flush=True)
        # $DAOMIRROR_TWISTD stands another program in daomirror's place
        # (benchmarks/relay_as_daomirror.py: the simplest Twisted relay).
        twistd = [os.environ["DAOMIRROR_TWISTD"]] if os.environ.get("DAOMIRROR_TWISTD") else None
        dao = stack.enter_context(MirrorProcess(upstream.url, twistd=twistd))
        proxy = stack.enter_context(UpstreamRegistry(config={
            "proxy": {"remoteurl": upstream.url}, "log": {"fields": {"service": "proxy-registry"}}}))
        ports = {"daomirror": dao.port, "distribution": proxy.port}
        pids = {"daomirror": dao.process.pid, "distribution": proxy._proc.pid}  # no public pid

        @stack.push
        def show_logs(exc_type, exc, tb):
            if exc_type is not None:
                print(f"daomirror's log:\n{tail(dao.log_path)}\n")
                print(f"distribution's log:\n{tail(proxy.app_log_path)}")

        def settle(system, *digests):  # wait until the mirror is done with the upstream
            # distribution stores a cold blob with a second upstream GET, in the background.
            for hexa in (d.split(":")[1] for d in digests if system == "distribution"):
                data = f"{proxy.storage_dir}/docker/registry/v2/blobs/sha256/{hexa[:2]}/{hexa}/data"
                deadline = time.monotonic() + 300
                while not os.path.exists(data):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"distribution did not store {hexa} in 300 s")
                    time.sleep(0.05)
            upstream.quiesce(quiet=0.3)

        def interleaved(rounds):  # the systems, round after round, alternating who goes first
            return [s for r in range(rounds) for s in (SYSTEMS if r % 2 == 0 else SYSTEMS[::-1])]

        print(f"==> cold: one GET of a {big_blob.size / MIB:.0f} MiB blob", flush=True)
        size, ttfb, elapsed = fetch(upstream.port, big_path, big_blob.digest)
        reference.update({"upstream direct MB/s": size / elapsed / 1e6,
                          "upstream direct TTFB ms": ttfb * 1e3})
        for system in SYSTEMS:
            before = upstream.count("GET", big_blob.digest)
            size, ttfb, elapsed = fetch(ports[system], big_path, big_blob.digest)
            record("cold big blob MB/s", system, size / elapsed / 1e6)
            record("cold big blob TTFB ms", system, ttfb * 1e3)
            settle(system, big_blob.digest)
            record("cold big blob: upstream GETs", system, upstream.count("GET", big_blob.digest) - before)

        for system in SYSTEMS:  # fill both caches for the warm and small-request tests
            fetch(ports[system], manifest_path, headers={"Accept": MANIFEST_V2})
            fetch(ports[system], mid_path, mid_blob.digest)
            fetch(ports[system], small_path, small_blob.digest)
            settle(system, mid_blob.digest, small_blob.digest)

        print(f"==> warm: {args.rounds} interleaved rounds", flush=True)
        for system in interleaved(args.rounds):
            before = upstream.count("GET", "/blobs/")
            size, _, elapsed = fetch(ports[system], big_path, big_blob.digest)
            record("warm big blob MB/s", system, size / elapsed / 1e6)
            url = f"http://127.0.0.1:{ports[system]}{mid_path}"
            record(f"warm {N}x16 MiB aggregate MB/s", system, curl_parallel(url, mid_blob.size))
            record("warm: upstream blob GETs (all rounds)", system, upstream.count("GET", "/blobs/") - before)

        small_rounds = max(1, args.rounds // 2)
        print(f"==> small requests: wrk, {small_rounds} interleaved round(s)", flush=True)
        script = os.path.join(tmp, "manifest.lua")
        with open(script, "w") as f:
            f.write(f'wrk.headers["Accept"] = "{MANIFEST_V2}"\n')
        small = f"{small_blob.size / 1024:.0f} KiB blob"
        for system in interleaved(small_rounds):
            base, before = f"http://127.0.0.1:{ports[system]}", upstream.count()
            for name, url, lua in (("manifest", base + manifest_path, script),
                                   (small, base + small_path, None)):
                rps, failed = wrk(url, lua)
                record(f"{name} req/s", system, rps)
                record(f"{name} failures (all rounds)", system, failed)
            record("wrk: upstream requests (all rounds)", system, upstream.count() - before)

        print(f"==> coalescing: {N} concurrent cold GETs of a 64 MiB blob", flush=True)
        for system in SYSTEMS:
            before = upstream.count("GET", co_blob.digest)
            mbps = concurrent_fetch(ports[system], co_path, co_blob.digest)
            record(f"cold {N}x64 MiB aggregate MB/s", system, mbps)
            settle(system, co_blob.digest)
            record("coalescing: upstream GETs", system, upstream.count("GET", co_blob.digest) - before)

        for system in SYSTEMS:
            record("peak RSS MiB", system, peak_rss_mib(pids[system]))


def summarize(results):
    """Medians, except for counts ("GETs", "failures", "requests"), which are summed."""
    table = {}
    for metric, by_system in results.items():
        count = any(w in metric for w in ("GETs", "failures", "requests"))
        row = {s: (sum(v) if count else statistics.median(v)) for s, v in by_system.items()}
        row["ratio"] = row["daomirror"] / row["distribution"] if row["distribution"] else None
        table[metric] = row
    return table


def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if isinstance(v, int) or abs(v) >= 100 else f"{v:,.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big", type=lambda s: int(s.upper().removesuffix("M")) * MIB, default=256 * MIB,
                        metavar="MiB", help="big layer size in MiB, e.g. 64M (default 256M)")
    parser.add_argument("--rounds", type=int, default=5, help="warm rounds (default 5; wrk: rounds//2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    args = parser.parse_args()

    results, reference = {}, {}
    run(args, results, reference)
    table = summarize(results)
    width = max(map(len, table)) + 2
    print(f"\n{'metric':<{width}}{'daomirror':>12}{'distribution':>14}{'ratio':>9}")
    for metric, row in table.items():
        d, r, ratio = (fmt(row[k]) for k in ("daomirror", "distribution", "ratio"))
        print(f"{metric:<{width}}{d:>12}{r:>14}{ratio:>9}")
    print("\nratio = daomirror / distribution; for MB/s and req/s higher is better, for the rest lower")
    print("reference: " + ", ".join(f"{k} {fmt(v)}" for k, v in reference.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"big": args.big, "rounds": args.rounds, "results": table,
                       "samples": results, "reference": reference}, f, indent=2)


if __name__ == "__main__":
    main()
