"""
The mirror's own TLS listener, as dockerd's ``https://`` mirror endpoint
uses it: TLS connections are not plain sockets, so blobs reach them through
the producer path (not the plain-socket one), for a blob still downloading too.
"""

import hashlib
import http.client
import ssl
import threading

from tests.support.certs import self_signed
from tests.support.fakeupstream import FakeUpstream, throttled
from tests.support.mirror import MirrorProcess
from tests.support.registry import free_port

DATA = b"".join(hashlib.sha256(str(i).encode()).digest() * 512 for i in range(1024))  # 16 MiB
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/library/tls/blobs/{DIGEST}"


def https_get(port, cafile, path, results, i, upstream_done):
    """
    GET over TLS; records the status, the length, the digest and whether
    the first bytes came before the upstream had sent its last.
    """
    context = ssl.create_default_context(cafile=cafile)
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=120)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        first = response.read(65536)
        early = not upstream_done.is_set()
        body = first + response.read()
        results[i] = (response.status, len(body), "sha256:" + hashlib.sha256(body).hexdigest(), early)
    finally:
        connection.close()


def test_clients_over_tls_get_a_blob_still_downloading_whole(tmp_path):
    cert, key = self_signed(str(tmp_path))
    tls_port = free_port()
    done = threading.Event()
    with FakeUpstream({PATH: throttled(DATA, 16e6, done)}) as upstream, MirrorProcess(
        upstream.url, also_listen=[f"ssl:{tls_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"]
    ) as mirror:
        results = [None] * 4
        clients = [threading.Thread(target=https_get, args=(tls_port, cert, PATH, results, i, done))
                   for i in range(4)]
        [c.start() for c in clients]
        [c.join(120) for c in clients]
        assert results == [(200, len(DATA), DIGEST, True)] * 4, "whole, and streamed while downloading"
        assert upstream.count("GET", PATH) == 1
        warm = [None]
        https_get(tls_port, cert, PATH, warm, 0, done)
        assert warm == [(200, len(DATA), DIGEST, False)]
        assert upstream.count("GET", PATH) == 1
        assert "Traceback" not in mirror.log()
