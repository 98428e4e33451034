"""
Faults a real registry will not produce, from a scripted upstream: a body
that does not match its digest, a connection cut mid-body, a body that
arrives slowly. Whatever happens, the client never sees a clean end on a
broken body, and nothing unverified reaches storage.
"""

import hashlib
import json
import http.client
import os
import socket
import subprocess
import threading
import time

import pytest

from tests.support.fakeupstream import FakeUpstream, blob
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess

DATA = os.urandom(4 * 1024 * 1024 + 5)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
PATH = f"/v2/library/fault/blobs/{DIGEST}"


def stored_files(root):
    """
    Every file under the cache that holds blob bytes, committed or staged.
    """
    found = []
    for top in ("blobs", "_staging"):
        for directory, _, files in os.walk(os.path.join(root, top)):
            found += [os.path.join(directory, f) for f in files]
    return found


def read_blob(mirror, path=PATH):
    """
    GET a blob; returns (status, body) for a clean response and raises if
    the connection broke before the declared length.
    """
    connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("fault", [
    {"data": b"X" + DATA[1:]},                       # right length, wrong bytes
    {"data": DATA, "cut_after": 0},                  # cut right after the headers
    {"data": DATA, "cut_after": len(DATA) // 2},     # cut mid-body
    {"data": DATA[:-10], "claimed_length": len(DATA)},  # fewer bytes than announced
])
def test_a_broken_upstream_body_aborts_the_client_and_stores_nothing(fault):
    data = fault.pop("data")
    with FakeUpstream({PATH: blob(data, **fault)}) as upstream, MirrorProcess(upstream.url) as mirror:
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            read_blob(mirror)
        assert stored_files(mirror.root) == []
        # the failure is not cached: the next request asks upstream again
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            read_blob(mirror)
        assert upstream.count("GET", PATH) == 2
        assert stored_files(mirror.root) == []
        assert "Traceback" not in mirror.log()


def test_an_upstream_claiming_an_empty_body_for_a_blob_never_ends_a_response_cleanly():
    # Nothing to hold back as the last byte: the end waits for the digest.
    with FakeUpstream({PATH: blob(b"", claimed_length=0)}) as upstream, MirrorProcess(upstream.url) as mirror:
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            read_blob(mirror)
        assert stored_files(mirror.root) == []
        assert "Traceback" not in mirror.log()


def test_the_client_gets_bytes_while_the_upstream_is_still_sending():
    """
    The upstream sends the first MiB and then holds the rest back until the
    test has read bytes from the mirror: if the mirror buffered the blob
    before answering, the read would time out.
    """
    release = threading.Event()
    route = blob(DATA, hold_after=1024 * 1024, release=release)
    with FakeUpstream({PATH: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=20)
        connection.request("GET", PATH)
        response = connection.getresponse()
        assert response.status == 200
        first = response.read(512 * 1024)
        assert first == DATA[:512 * 1024]
        release.set()
        rest = response.read()
        assert hashlib.sha256(first + rest).hexdigest() == DIGEST[7:]
        connection.close()


def test_concurrent_requests_share_one_upstream_transfer():
    release = threading.Event()
    route = blob(DATA, hold_after=1024 * 1024, release=release)
    with FakeUpstream({PATH: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        responses = []
        for _ in range(4):
            connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=30)
            connection.request("GET", PATH)
            response = connection.getresponse()
            assert response.read(1000) == DATA[:1000], "each client gets bytes before the fill ends"
            responses.append((connection, response))
        release.set()
        for connection, response in responses:
            assert DATA[:1000] + response.read() == DATA
            connection.close()
        assert upstream.count("GET", PATH) == 1
        status, body = read_blob(mirror)
        assert status == 200 and body == DATA
        assert upstream.count("GET", PATH) == 1


def test_a_client_that_leaves_does_not_stop_the_fill():
    release = threading.Event()
    route = blob(DATA, hold_after=1024 * 1024, release=release)
    with FakeUpstream({PATH: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        sock = socket.create_connection(("127.0.0.1", mirror.port), timeout=20)
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.close()
        release.set()
        status, body = read_blob(mirror)
        assert status == 200 and body == DATA
        assert upstream.count("GET", PATH) == 1
        committed = wait_for(lambda: [f for f in stored_files(mirror.root) if "_staging" not in f])
        assert len(committed) == 1 and open(committed[0], "rb").read() == DATA
        assert "Traceback" not in mirror.log()


def wait_for(check, timeout=10):
    """
    The commit (fsync and rename) may trail the last byte sent a little.
    """
    deadline = time.monotonic() + timeout
    while not (result := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def chunked(data, *, cut=False):
    """
    A blob route that sends no Content-Length: chunked, optionally cut off.
    """

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for i in range(0, len(data), 65536):
            piece = data[i:i + 65536]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            if cut and i > len(data) // 2:
                handler.close_connection = True
                return
        handler.wfile.write(b"0\r\n\r\n")

    return route


def close_delimited(data):
    """
    A blob route in the HTTP/1.0 manner: no length, the end is the close.
    """

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    return route


@pytest.mark.parametrize("route", [chunked(DATA), close_delimited(DATA)], ids=["chunked", "close-delimited"])
def test_a_blob_without_a_length_is_verified_then_served(route):
    with FakeUpstream({PATH: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        status, body = read_blob(mirror)
        assert status == 200 and body == DATA
        committed = wait_for(lambda: [f for f in stored_files(mirror.root) if "_staging" not in f])
        assert len(committed) == 1


@pytest.mark.parametrize("route", [chunked(b"X" + DATA[1:]), chunked(DATA, cut=True), close_delimited(DATA[:-1])],
                         ids=["chunked-wrong", "chunked-cut", "close-delimited-short"])
def test_a_broken_blob_without_a_length_is_a_502(route):
    with FakeUpstream({PATH: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        status, headers, body = mirror.request("GET", PATH)
        assert status == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        assert stored_files(mirror.root) == []
        assert "Traceback" not in mirror.log()


def test_joining_a_transfer_for_another_repository_needs_upstream_confirmation():
    """
    While the upstream is still thinking about private/D, a request for
    public/D must not ride along: the upstream says public has no such blob.
    """
    private, public = f"/v2/library/private/blobs/{DIGEST}", f"/v2/library/public/blobs/{DIGEST}"
    release = threading.Event()

    def slow_headers(handler):
        release.wait(30)
        blob(DATA)(handler)

    with FakeUpstream({private: slow_headers}) as upstream, MirrorProcess(upstream.url) as mirror:
        first = {}
        thread = threading.Thread(target=lambda: first.update(answer=read_blob(mirror, private)))
        thread.start()
        wait_for(lambda: upstream.count("GET", private))
        status, _, body = mirror.request("GET", public)
        assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
        release.set()
        thread.join(30)
        assert first["answer"] == (200, DATA)


def test_a_disk_that_refuses_the_last_block_aborts_the_client_and_keeps_nothing():
    limit = 4 * 1024 * 1024
    data = DATA[:limit] + b"tail"  # every whole block fits; the tail written at the end does not
    path = f"/v2/library/fault/blobs/sha256:{hashlib.sha256(data).hexdigest()}"
    with FakeUpstream({path: blob(data)}) as upstream, MirrorProcess(upstream.url) as mirror:
        subprocess.run(["prlimit", "--pid", str(mirror.process.pid), f"--fsize={limit}:"], check=True)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            read_blob(mirror, path)
        assert stored_files(mirror.root) == []
        assert "storage failed" in mirror.log()
        subprocess.run(["prlimit", "--pid", str(mirror.process.pid), "--fsize=unlimited:"], check=True)
        assert read_blob(mirror, path) == (200, data)
        assert upstream.count("GET", path) == 2
        assert "Traceback" not in mirror.log(), "the failed fill's writer closed cleanly"


def break_staging(mirror):
    """
    Put a file where the staging folder should be: no blob can be stored.
    Returns a function that undoes it.
    """
    staging = os.path.join(mirror.root, "_staging")
    os.rmdir(staging)
    with open(staging, "w"):
        pass
    return lambda: (os.unlink(staging), os.mkdir(staging))


def test_a_blob_that_storage_cannot_take_is_served_from_upstream_uncached(upstream):
    image = push_image(upstream.url, "library/nostore", "v1", extra_layers=[8 * 1024 * 1024], seed="nostore")
    layer = max(image.manifests[0].layers, key=lambda blob: blob.size)
    path = f"/v2/{image.repo}/blobs/{layer.digest}"
    with MirrorProcess(upstream.url) as mirror:
        repair = break_staging(mirror)
        status, body = read_blob(mirror, path)
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == layer.digest
        status, headers, part = mirror.request("GET", path, {"Range": "bytes=100-199"})
        assert (status, headers["content-range"], part) == (206, f"bytes 100-199/{layer.size}", body[100:200])
        assert stored_files(mirror.root) == []
        assert "serving it from upstream uncached" in mirror.log()

        repair()
        assert read_blob(mirror, path) == (200, body)  # stored this time...
        upstream.quiesce()
        asked = upstream.count("GET", path)
        assert read_blob(mirror, path) == (200, body)  # ...and served from storage
        upstream.quiesce()
        assert upstream.count("GET", path) == asked
        assert "Traceback" not in mirror.log()


def test_a_wrong_body_passed_through_uncached_is_aborted():
    with FakeUpstream({PATH: blob(b"X" + DATA[1:])}) as upstream, MirrorProcess(upstream.url) as mirror:
        break_staging(mirror)
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            read_blob(mirror)
        assert "Traceback" not in mirror.log()
