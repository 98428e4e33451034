"""
What the client sees when the upstream misbehaves, row by row of DESIGN.md's
status table, with a scripted upstream: error bodies in JSON, text, HTML or
nothing; rate limits; refused credentials; silence before the headers and
in the middle of a body; blob downloads redirected to another host.
"""

import base64
import hashlib
import json
import os
import threading
import time

import pytest

from tests.support.fakeupstream import FakeUpstream, blob, send
from tests.support.mirror import MirrorProcess

MANIFEST = "/v2/library/app/manifests/v1"
DATA = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
BLOB = f"/v2/library/app/blobs/{DIGEST}"


def answer(status, body=b"", content_type="text/plain", headers=None):
    return lambda handler: send(handler, status, body, content_type, headers)


def error_of(body):
    return json.loads(body)["errors"][0]


@pytest.mark.parametrize("route, status, code, headers", [
    (answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x"}]}', "application/json"),
     404, "MANIFEST_UNKNOWN", {}),
    (answer(404, b"<html>not here</html>", "text/html"), 404, "MANIFEST_UNKNOWN", {}),
    (answer(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"x"}]}', "application/json"),
     404, "NAME_UNKNOWN", {}),
    (answer(429, b"Too Many Requests.", "text/plain", {"Retry-After": "30"}),
     429, "TOOMANYREQUESTS", {"retry-after": "30"}),
    (answer(500, b"<html><body>oops</body></html>", "text/html"), 502, "UNAVAILABLE", {}),
    (answer(503), 502, "UNAVAILABLE", {}),
    (answer(403, b'{"errors":[{"code":"DENIED","message":"no"}]}', "application/json"), 502, "UNAVAILABLE", {}),
    (answer(401, b"", "text/plain", {"WWW-Authenticate": "Basic realm=\"x\""}), 502, "UNAVAILABLE", {}),
    (answer(418, b"teapot"), 502, "UNAVAILABLE", {}),
])
def test_upstream_answers_map_to_the_status_table(route, status, code, headers):
    with FakeUpstream({MANIFEST: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        for method in ("GET", "HEAD"):
            got, got_headers, body = mirror.request(method, MANIFEST)
            assert got == status, method
            assert got_headers["content-type"] == "application/json"
            for name, value in headers.items():
                assert got_headers[name] == value
            if method == "GET":
                assert error_of(body)["code"] == code
        assert "Traceback" not in mirror.log()


def test_credentials_refused_says_so():
    route = answer(401, b"", "text/plain", {"WWW-Authenticate": 'Basic realm="registry"'})
    with FakeUpstream({MANIFEST: route}) as upstream, MirrorProcess(
        upstream.url, upstream_config='username = "bob"\npassword = "wrong"\n'
    ) as mirror:
        status, _, body = mirror.request("GET", MANIFEST)
        assert status == 502 and "credentials" in error_of(body)["detail"]
        assert "wrong" not in mirror.log()
        sent = [h.get("Authorization") for h in upstream.headers]
        assert sent == [None, "Basic " + base64.b64encode(b"bob:wrong").decode()], "one retry, never a loop"


def test_unreachable_upstream_is_502():
    with MirrorProcess("http://127.0.0.1:9") as mirror:
        status, _, body = mirror.request("GET", MANIFEST)
        assert status == 502 and error_of(body)["code"] == "UNAVAILABLE"
        assert "refused" in error_of(body)["detail"].lower()


def test_no_headers_in_time_is_504():
    stall = threading.Event()
    with FakeUpstream({MANIFEST: lambda handler: stall.wait(30)}) as upstream, MirrorProcess(
        upstream.url, upstream_config='headers_timeout = "1s"\n'
    ) as mirror:
        started = time.monotonic()
        status, _, body = mirror.request("GET", MANIFEST)
        stall.set()
        assert status == 504 and error_of(body)["code"] == "UNAVAILABLE"
        assert time.monotonic() - started < 10


def test_a_blob_that_stalls_mid_body_is_aborted_and_not_stored():
    release = threading.Event()
    route = blob(DATA, hold_after=100_000, release=release)
    with FakeUpstream({BLOB: route}) as upstream, MirrorProcess(
        upstream.url, upstream_config='idle_timeout = "1s"\n'
    ) as mirror:
        import http.client

        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            mirror.request("GET", BLOB, timeout=20)
        release.set()
        stored = [f for _, _, files in os.walk(mirror.root) for f in files if DIGEST[7:] in f]
        assert stored == []


def test_a_manifest_body_that_stalls_is_504():
    def stalls(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"{")
        handler.wfile.flush()
        time.sleep(5)

    with FakeUpstream({MANIFEST: stalls}) as upstream, MirrorProcess(
        upstream.url, upstream_config='idle_timeout = "1s"\n'
    ) as mirror:
        status, _, body = mirror.request("GET", MANIFEST)
        assert status == 504 and error_of(body)["code"] == "UNAVAILABLE"


def basic_auth_then_redirect(authorization, location):
    """
    A registry route that wants HTTP Basic credentials and then sends the
    blob elsewhere with a 307, as Docker Hub sends downloads to its CDN.
    """

    def route(handler):
        if handler.headers.get("Authorization") != authorization:
            return send(handler, 401, b"", headers={"WWW-Authenticate": 'Basic realm="registry"'})
        send(handler, 307, b"", headers={"Location": location})

    return route


def test_blob_redirects_are_followed_without_leaking_credentials():
    """
    The upstream wants Basic credentials and sends the blob to a CDN on
    another host, which refuses any request carrying Authorization and
    itself redirects once more with a relative Location.
    """
    expected = "Basic " + base64.b64encode(b"bob:s3cret").decode()

    def cdn_first(handler):
        if handler.headers.get("Authorization"):
            return send(handler, 400, b"credentials sent to the CDN", "text/plain")
        send(handler, 302, b"", headers={"Location": f"/final/{DIGEST}?signature=abc"})

    def cdn_final(handler):
        if handler.headers.get("Authorization"):
            return send(handler, 400, b"credentials sent to the CDN", "text/plain")
        blob(DATA)(handler)

    with FakeUpstream({}, host="127.0.0.2") as cdn:
        cdn.routes[f"/cdn/{DIGEST}"] = cdn_first
        cdn.routes[f"/final/{DIGEST}"] = cdn_final

        registry = basic_auth_then_redirect(expected, f"{cdn.url}/cdn/{DIGEST}?expires=1")
        with FakeUpstream({BLOB: registry}) as upstream, MirrorProcess(
            upstream.url, upstream_config='username = "bob"\npassword = "s3cret"\n'
        ) as mirror:
            status, headers, body = mirror.request("GET", BLOB)
            assert status == 200 and body == DATA and headers["docker-content-digest"] == DIGEST
            assert [h.get("Authorization") for h in cdn.headers] == [None, None]
            assert [r[1] for r in cdn.requests] == [f"/cdn/{DIGEST}", f"/final/{DIGEST}"]
            asked = len(upstream.requests) + len(cdn.requests)
            status, _, body = mirror.request("GET", BLOB)
            assert status == 200 and body == DATA
            assert len(upstream.requests) + len(cdn.requests) == asked, "the second request is a cache hit"
            assert "s3cret" not in mirror.log() and base64.b64encode(b"bob:s3cret").decode() not in mirror.log()


def test_a_challenge_from_a_redirect_target_never_gets_credentials():
    """
    Only the upstream's own 401 is answered with the mirror's credentials; a
    CDN that asks for them (naming a realm elsewhere) gets nothing.
    """
    expected = "Basic " + base64.b64encode(b"alice:hunter2").decode()
    with FakeUpstream({}, host="127.0.0.3") as evil, FakeUpstream({}, host="127.0.0.2") as cdn:
        cdn.routes[f"/cdn/{DIGEST}"] = answer(
            401, b"", headers={"WWW-Authenticate": f'Bearer realm="{evil.url}/token",service="x"'})

        registry = basic_auth_then_redirect(expected, f"{cdn.url}/cdn/{DIGEST}")
        with FakeUpstream({BLOB: registry}) as upstream, MirrorProcess(
            upstream.url, upstream_config='username = "alice"\npassword = "hunter2"\n'
        ) as mirror:
            status, _, body = mirror.request("GET", BLOB)
            assert status == 502 and error_of(body)["code"] == "UNAVAILABLE"
        assert evil.requests == []
        assert [h.get("Authorization") for h in cdn.headers] == [None]


V2 = "application/vnd.docker.distribution.manifest.v2+json"
GENUINE = json.dumps({"schemaVersion": 2, "mediaType": V2, "config": {}, "layers": []}, indent=3).encode()
GENUINE_DIGEST = "sha256:" + hashlib.sha256(GENUINE).hexdigest()


def forged_schema1():
    """
    A signed schema 1 envelope whose protected header claims the genuine v2
    manifest as its payload, wrapped around different content.
    """
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    protected = b64(json.dumps({"formatLength": 0, "formatTail": b64(GENUINE)}).encode())
    return json.dumps({"schemaVersion": 1, "name": "evil", "fsLayers": [{"blobSum": "sha256:" + "e" * 64}],
                       "signatures": [{"protected": protected, "signature": "x", "header": {}}]}).encode()


def test_a_forged_schema1_envelope_does_not_pass_as_another_manifest():
    path = f"/v2/library/app/manifests/{GENUINE_DIGEST}"
    route = answer(200, forged_schema1(), "application/vnd.docker.distribution.manifest.v1+prettyjws",
                   {"Docker-Content-Digest": GENUINE_DIGEST})
    with FakeUpstream({path: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        status, _, body = mirror.request("GET", path)
        assert status == 502 and "does not match" in error_of(body)["detail"]
        assert not os.path.exists(os.path.join(mirror.root, "manifests"))


def test_a_media_type_the_client_refuses_is_never_served():
    oci = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
    route = answer(200, oci, "application/vnd.oci.image.manifest.v1+json")
    with FakeUpstream({MANIFEST: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        status, _, body = mirror.request("GET", MANIFEST, {"Accept": V2})
        assert status == 404 and error_of(body)["code"] == "MANIFEST_UNKNOWN"
        status, headers, body = mirror.request("GET", MANIFEST, {"Accept": f"{V2}, application/vnd.oci.image.manifest.v1+json"})
        assert status == 200 and body == oci
        status, _, _ = mirror.request("GET", MANIFEST, {"Accept": "application/vnd.oci.image.manifest.v1+json;q=0"})
        assert status == 404
        asked = len(upstream.requests)
        status, _, body = mirror.request("GET", MANIFEST, {"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200 and body == oci
        assert len(upstream.requests) == asked, "a 404 of the mirror's own did not end the tag's cached life"


@pytest.mark.parametrize("content_type, body", [
    (b"application/\xe9", GENUINE),
    (b"text/html", b"<html>login here</html>"),
])
def test_unusable_upstream_manifests_are_502(content_type, body):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type.decode("latin-1"))
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with FakeUpstream({MANIFEST: route}) as upstream, MirrorProcess(upstream.url) as mirror:
        status, _, reply = mirror.request("GET", MANIFEST)
        assert status == 502 and error_of(reply)["code"] == "UNAVAILABLE"
        assert "Traceback" not in mirror.log()
