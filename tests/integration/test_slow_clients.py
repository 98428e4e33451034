"""
A cached blob goes to each client at that client's pace, through real
sockets: a client that stops reading holds up neither the others nor the
daemon's memory, and still gets every byte once it reads again (DESIGN.md
section 2: each client is paced by its own socket; invariant 4).
"""

import hashlib
import http.client
import socket

from tests.support.images import push_image

LAYER = 64 * 1024 * 1024


def fetch(mirror, path):
    status, _, body = mirror.request("GET", path)
    return status, "sha256:" + hashlib.sha256(body).hexdigest()


def stalled_get(mirror, path):
    """
    Send a GET and read nothing: the socket's buffers fill and stay full.
    """
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    client.connect(("127.0.0.1", mirror.port))
    client.sendall(f"GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n".encode())
    return client


def read_to_end(client):
    """
    The body of the response on C{client}, checked against its headers.
    """
    response = http.client.HTTPResponse(client)
    response.begin()
    digest, received = hashlib.sha256(), 0
    while chunk := response.read(1024 * 1024):
        digest.update(chunk)
        received += len(chunk)
    assert received == int(response.getheader("Content-Length"))
    return response.status, "sha256:" + digest.hexdigest()


def test_a_client_that_stops_reading_a_cached_blob_holds_up_no_one_and_no_memory(upstream, mirror):
    image = push_image(upstream.url, "library/stall", "v1", extra_layers=[LAYER], seed="stall")
    layer = max(image.manifests[0].layers, key=lambda blob: blob.size).digest
    path = f"/v2/{image.repo}/blobs/{layer}"
    assert fetch(mirror, path) == (200, layer)  # now cached
    baseline = mirror.resident_mib()

    stalled = stalled_get(mirror, path)
    try:
        for _ in range(3):  # served in full while the first client reads nothing
            assert fetch(mirror, path) == (200, layer)
        grown = mirror.resident_mib() - baseline
        assert grown < 16, f"{grown:.0f} MiB more resident while a client of a 64 MiB blob stalls"
        assert read_to_end(stalled) == (200, layer)
    finally:
        stalled.close()
