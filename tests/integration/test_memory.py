"""
Memory stays bounded whatever the blob size and the client's speed: the
bytes wait on disk, not in the daemon (DESIGN.md invariant 4), and when the
disk refuses them the transfer stops rather than piling them up in memory.
"""

import hashlib
import http.client
import subprocess
import time

import pytest

from tests.support.fakeupstream import FakeUpstream, blob
from tests.support.mirror import MirrorProcess

PIECE = b"".join(hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(1024))  # 64 MiB
DATA = PIECE * 4  # 256 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/library/huge/blobs/{DIGEST}"


def test_a_slow_reader_of_a_large_blob_leaves_memory_bounded():
    with FakeUpstream({PATH: blob(DATA)}) as upstream, MirrorProcess(upstream.url) as mirror:
        baseline = mirror.resident_mib()
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
        connection.request("GET", PATH)
        response = connection.getresponse()
        digest, peak = hashlib.sha256(), 0.0
        received = 0
        while received < 48 * 1024 * 1024:  # about 20 MB/s for a while: far slower than the fill
            chunk = response.read(1024 * 1024)
            if not chunk:
                break  # ended early: the digest check below says so
            digest.update(chunk)
            received += len(chunk)
            peak = max(peak, mirror.resident_mib())
            time.sleep(0.05)
        while chunk := response.read(4 * 1024 * 1024):
            digest.update(chunk)
            peak = max(peak, mirror.resident_mib())
        connection.close()
        assert "sha256:" + digest.hexdigest() == DIGEST
        assert upstream.count("GET", PATH) == 1
        assert peak - baseline < 64, f"resident memory grew by {peak - baseline:.0f} MiB for a 256 MiB blob"
        deadline = time.monotonic() + 10  # the pages go back once transfers have stopped for a moment
        while (held := mirror.resident_mib() - baseline) >= 8 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held < 8, f"{held:.0f} MiB still resident after the transfer (the freed chunks not given back)"


def test_a_disk_that_refuses_writes_stops_the_transfer_and_keeps_nothing_in_memory():
    with FakeUpstream({PATH: blob(DATA)}) as upstream, MirrorProcess(upstream.url) as mirror:
        baseline = mirror.resident_mib()
        # Files the daemon writes may not grow past 16 MiB (a soft limit, lifted
        # below): writes fail with EFBIG, as they would with ENOSPC.
        subprocess.run(["prlimit", "--pid", str(mirror.process.pid), "--fsize=16777216:"], check=True)
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
        connection.request("GET", PATH)
        response = connection.getresponse()
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            while response.read(4 * 1024 * 1024):
                pass
        connection.close()
        grown = mirror.resident_mib("VmHWM") - baseline
        assert grown < 64, f"memory grew by {grown:.0f} MiB while the disk refused a 256 MiB blob"
        assert "storage failed" in mirror.log()

        subprocess.run(["prlimit", "--pid", str(mirror.process.pid), "--fsize=unlimited:"], check=True)
        status, _, body = mirror.request("GET", PATH, timeout=120)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == DIGEST
        assert upstream.count("GET", PATH) == 2, "nothing of the refused fill was kept"
