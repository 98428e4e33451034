"""
Memory stays bounded whatever the blob size and the client's speed: the
bytes wait on disk, not in the daemon (DESIGN.md invariant 4).
"""

import hashlib
import http.client
import time

from tests.support.fakeupstream import FakeUpstream, blob
from tests.support.mirror import MirrorProcess

PIECE = b"".join(hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(1024))  # 64 MiB
DATA = PIECE * 4  # 256 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/library/huge/blobs/{DIGEST}"


def resident_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_slow_reader_of_a_large_blob_leaves_memory_bounded():
    with FakeUpstream({PATH: blob(DATA)}) as upstream, MirrorProcess(upstream.url) as mirror:
        baseline = resident_mib(mirror.process.pid)
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
        connection.request("GET", PATH)
        response = connection.getresponse()
        digest, peak = hashlib.sha256(), 0.0
        received = 0
        while received < 48 * 1024 * 1024:  # about 20 MB/s for a while: far slower than the fill
            chunk = response.read(1024 * 1024)
            digest.update(chunk)
            received += len(chunk)
            peak = max(peak, resident_mib(mirror.process.pid))
            time.sleep(0.05)
        while chunk := response.read(4 * 1024 * 1024):
            digest.update(chunk)
            peak = max(peak, resident_mib(mirror.process.pid))
        connection.close()
        assert "sha256:" + digest.hexdigest() == DIGEST
        assert upstream.count("GET", PATH) == 1
        assert peak - baseline < 64, f"resident memory grew by {peak - baseline:.0f} MiB for a 256 MiB blob"
