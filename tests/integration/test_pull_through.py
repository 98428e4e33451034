"""
Pull-through against a real upstream: Debian's docker-registry (the
reference implementation) behind daomirror running under twistd. The
upstream's access log tells what the mirror asked of it.
"""

import hashlib
import json
import os

import pytest

from tests.support.images import push_image
from tests.support.mirror import MirrorProcess

DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ALL_TYPES = ", ".join([DOCKER_V2, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST])


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_gets(upstream, digest=""):
    upstream.quiesce()  # the registry logs a request just after its last byte left
    return upstream.count("GET", "/blobs/" + digest)


def test_manifest_by_tag_is_upstreams_bytes_and_headers(mirror, upstream, image):
    status, headers, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})
    assert status == 200
    assert body == image.raw
    assert headers["content-type"] == image.media_type
    assert headers["docker-content-digest"] == image.digest == sha256(body)
    assert int(headers["content-length"]) == len(body)
    assert headers["docker-distribution-api-version"] == "registry/2.0"


def test_containerd_ns_parameter_changes_nothing(mirror, image):
    plain = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})
    with_ns = mirror.request("GET", f"/v2/{image.repo}/manifests/v1?ns=docker.io", {"Accept": ALL_TYPES})
    assert plain[0] == with_ns[0] == 200
    assert plain[2] == with_ns[2]
    layer = image.manifests[0].layers[-1]
    status, _, body = mirror.request("GET", f"/v2/{image.repo}/blobs/{layer.digest}?ns=docker.io")
    assert status == 200 and sha256(body) == layer.digest


def test_cold_head_of_a_manifest_fills_it_and_agrees_with_get(mirror, upstream, image):
    path = f"/v2/{image.repo}/manifests/v1"
    status, head, body = mirror.request("HEAD", path, {"Accept": ALL_TYPES})
    assert status == 200 and body == b""
    assert int(head["content-length"]) == len(image.raw)
    status, get, body = mirror.request("GET", path, {"Accept": ALL_TYPES})
    assert status == 200 and body == image.raw
    for name in ("content-type", "content-length", "docker-content-digest"):
        assert head[name] == get[name]
    by_digest = f"/v2/{image.repo}/manifests/{image.digest}"
    before = upstream.count(None, "/manifests/")
    assert mirror.request("GET", by_digest, {"Accept": ALL_TYPES})[2] == image.raw
    assert upstream.count(None, "/manifests/") == before, "a manifest by digest was cached by the tag fetch"


def test_blobs_stream_through_and_are_served_from_cache(mirror, upstream, image):
    manifest = image.manifests[0]
    for blob in [manifest.config, *manifest.layers]:
        status, headers, body = mirror.request("GET", f"/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200
        assert sha256(body) == blob.digest and len(body) == blob.size
        assert headers["docker-content-digest"] == blob.digest
        assert headers["content-type"] == "application/octet-stream"
        assert int(headers["content-length"]) == blob.size
    before = blob_gets(upstream)
    for blob in [manifest.config, *manifest.layers]:
        status, headers, body = mirror.request("GET", f"/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200 and sha256(body) == blob.digest
        assert int(headers["content-length"]) == blob.size
        status, head, body = mirror.request("HEAD", f"/v2/{image.repo}/blobs/{blob.digest}")
        assert status == 200 and body == b"" and head["content-length"] == headers["content-length"]
    assert blob_gets(upstream) == before, "a cached blob was fetched upstream again"


def test_cold_head_of_a_blob_downloads_nothing(mirror, upstream, image):
    layer = image.manifests[0].layers[-1]
    mark = upstream.mark()
    status, headers, body = mirror.request("HEAD", f"/v2/{image.repo}/blobs/{layer.digest}")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) == layer.size
    asked = [(e.method, e.path) for e in upstream.entries_since(mark)]
    assert asked == [("HEAD", f"/v2/{image.repo}/blobs/{layer.digest}")]


def test_second_pull_of_an_image_costs_no_blob_transfer(mirror, upstream, image):
    def pull():
        _, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})
        manifest = json.loads(body)
        for blob in [manifest["config"], *manifest["layers"]]:
            status, _, data = mirror.request("GET", f"/v2/{image.repo}/blobs/{blob['digest']}")
            assert status == 200 and sha256(data) == blob["digest"]

    pull()
    before = blob_gets(upstream)
    manifest_gets = upstream.count("GET", "/manifests/")
    pull()
    assert blob_gets(upstream) == before
    assert upstream.count("GET", "/manifests/") == manifest_gets, "an unchanged tag was fetched again"


def test_nested_names(mirror, upstream):
    image = push_image(upstream.url, "team/tools/cli", "1.0", seed="nested")
    status, headers, body = mirror.request("GET", "/v2/team/tools/cli/manifests/1.0", {"Accept": ALL_TYPES})
    assert status == 200 and body == image.raw
    config = image.manifests[0].config
    status, _, body = mirror.request("GET", f"/v2/team/tools/cli/blobs/{config.digest}")
    assert status == 200 and sha256(body) == config.digest


@pytest.mark.parametrize("oci", [False, True])
def test_multi_platform_index_keeps_its_media_type_and_platform_manifests_cache(mirror, upstream, oci):
    image = push_image(upstream.url, f"library/multi{int(oci)}", "v1", platforms=("amd64", "arm64"), oci=oci,
                       seed=f"multi{oci}")
    assert image.media_type == (OCI_INDEX if oci else DOCKER_LIST)
    for _ in range(2):
        status, headers, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})
        assert status == 200 and body == image.raw
        assert headers["content-type"] == image.media_type
    arm = image.manifest_for("arm64")
    status, headers, body = mirror.request("GET", f"/v2/{image.repo}/manifests/{arm.digest}", {"Accept": ALL_TYPES})
    assert status == 200 and sha256(body) == arm.digest and headers["content-type"] == arm.media_type
    before = upstream.count(None, arm.digest)
    assert mirror.request("GET", f"/v2/{image.repo}/manifests/{arm.digest}", {"Accept": ALL_TYPES})[2] == body
    assert upstream.count(None, arm.digest) == before


def test_tags_list_passes_through(mirror, upstream, image):
    status, headers, body = mirror.request("GET", f"/v2/{image.repo}/tags/list?ns=docker.io")
    assert status == 200
    assert json.loads(body) == {"name": image.repo, "tags": ["v1"]}


def upstream_error_code(upstream, path):
    import http.client

    connection = http.client.HTTPConnection(upstream.host, timeout=30)
    connection.request("GET", path, headers={"Accept": ALL_TYPES})
    return json.loads(connection.getresponse().read())["errors"][0]["code"]


def test_unknown_things_are_404_with_the_upstreams_code(mirror, upstream, image):
    paths = [
        f"/v2/{image.repo}/manifests/nosuchtag",
        f"/v2/{image.repo}/manifests/sha256:" + "0" * 64,
        f"/v2/{image.repo}/blobs/sha256:" + "0" * 64,
        "/v2/library/nosuchrepo/manifests/latest",
        "/v2/library/nosuchrepo/blobs/sha256:" + "0" * 64,
    ]
    for path in paths:
        code = upstream_error_code(upstream, path)
        assert code in ("MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN")
        for method in ("GET", "HEAD"):
            status, headers, body = mirror.request(method, path, {"Accept": ALL_TYPES})
            assert status == 404, (method, path)
            assert headers["content-type"] == "application/json"
            if method == "GET":
                assert json.loads(body)["errors"][0]["code"] == code, path


def test_a_blob_is_served_in_another_repository_only_when_upstream_confirms(mirror, upstream, image):
    other = push_image(upstream.url, "library/other", "v1", seed="other")
    layer = image.manifests[0].layers[-1]
    assert mirror.request("GET", f"/v2/{image.repo}/blobs/{layer.digest}")[0] == 200
    status, _, body = mirror.request("GET", f"/v2/{other.repo}/blobs/{layer.digest}")
    assert status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"
    assert upstream.count("HEAD", f"/v2/{other.repo}/blobs/{layer.digest}") == 1
    shared = image.manifests[0].layers[0]  # the busybox layer is in both repositories
    assert mirror.request("GET", f"/v2/{image.repo}/blobs/{shared.digest}")[0] == 200
    before = blob_gets(upstream, shared.digest)
    status, _, body = mirror.request("GET", f"/v2/{other.repo}/blobs/{shared.digest}")
    assert status == 200 and sha256(body) == shared.digest
    assert blob_gets(upstream, shared.digest) == before, "the bytes are stored once"


BAD_PATHS = [
    ("/v2/a//b/manifests/x", 400, "NAME_INVALID"),
    ("/v2/R/UPPER/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/r/blobs/sha256:abc", 400, "DIGEST_INVALID"),
    ("/v2/r/blobs/sha256:..%2f..%2fetc%2fpasswd", 400, "DIGEST_INVALID"),
    ("/v2/r/blobs/sha256:../../../../etc/passwd", 404, "UNSUPPORTED"),
    ("/v2/../../etc/passwd/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/r/manifests/" + "t" * 300, 400, "MANIFEST_INVALID"),
    ("/v2/r/manifests/..", 400, "MANIFEST_INVALID"),
    ("/v2/" + "a" * 256 + "/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/r/referrers/sha256:" + "a" * 64, 404, "UNSUPPORTED"),
    ("/etc/passwd", 404, "UNSUPPORTED"),
    ("/v2/%ff/manifests/latest", 400, "NAME_INVALID"),
    ("/%762/library/r/manifests/latest", 404, "UNSUPPORTED"),
    ("/v2/r/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/r/tags/list?last=%0d%0aX-Evil:%201", 400, "MANIFEST_INVALID"),
]


@pytest.mark.parametrize("path, status, code", BAD_PATHS)
def test_bad_input_is_refused_without_asking_upstream(mirror, upstream, path, status, code):
    before = len(upstream.entries())
    outside = sorted(os.listdir(mirror.workdir))
    got, headers, body = mirror.request("GET", path)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["errors"][0]["code"] == code
    assert len(upstream.entries()) == before
    assert sorted(os.listdir(mirror.workdir)) == outside
    assert "Traceback" not in mirror.log()


@pytest.mark.parametrize("method, path", [
    ("POST", "/v2/"),
    ("POST", "/v2/r/blobs/uploads/"),
    ("PATCH", "/v2/r/blobs/uploads/0123"),
    ("PUT", "/v2/r/manifests/latest"),
    ("DELETE", "/v2/r/manifests/sha256:" + "a" * 64),
    ("DELETE", "/v2/r/blobs/sha256:" + "a" * 64),
])
def test_writes_are_unsupported(mirror, upstream, method, path):
    before = len(upstream.entries())
    status, _, body = mirror.request(method, path)
    assert status == 405
    assert json.loads(body)["errors"][0]["code"] == "UNSUPPORTED"
    assert len(upstream.entries()) == before


def test_cache_survives_a_restart_and_serves_with_upstream_gone(upstream, tmp_path):
    image = push_image(upstream.url, "library/durable", "v1", seed="durable")
    root = str(tmp_path / "cache")
    with MirrorProcess(upstream.url, root=root) as first:
        assert first.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})[0] == 200
        for blob in image.manifests[0].blobs:
            assert first.request("GET", f"/v2/{image.repo}/blobs/{blob}")[0] == 200
    gone = "http://127.0.0.1:9"  # nothing listens on the discard port
    with MirrorProcess(gone, root=root) as second:
        status, headers, body = second.request("GET", f"/v2/{image.repo}/manifests/v1", {"Accept": ALL_TYPES})
        assert status == 200 and body == image.raw
        assert second.request("GET", f"/v2/{image.repo}/manifests/{image.digest}", {"Accept": ALL_TYPES})[2] == body
        for blob in image.manifests[0].blobs:
            status, _, data = second.request("GET", f"/v2/{image.repo}/blobs/{blob}")
            assert status == 200 and sha256(data) == blob
        status, _, body = second.request("GET", "/v2/library/uncached/manifests/v1", {"Accept": ALL_TYPES})
        assert status == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


def test_a_client_without_accept_gets_what_upstream_gives_it(mirror, upstream, image):
    """
    With no Accept header the reference registry answers a signed schema 1
    manifest, whose digest covers its payload, not all of its bytes.
    """
    import http.client

    connection = http.client.HTTPConnection(upstream.host, timeout=30)
    connection.request("GET", f"/v2/{image.repo}/manifests/v1")
    direct = connection.getresponse()
    direct_body = direct.read()
    for _ in range(2):
        status, headers, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1")
        assert status == 200
        assert headers["content-type"] == direct.getheader("Content-Type")
        assert headers["docker-content-digest"] == direct.getheader("Docker-Content-Digest")
        unsigned = {k: v for k, v in json.loads(body).items() if k != "signatures"}
        assert unsigned == {k: v for k, v in json.loads(direct_body).items() if k != "signatures"}
        assert json.loads(body)["signatures"], "signed afresh on each request upstream; kept as sent here"


def test_health_and_readiness(mirror, upstream):
    before = len(upstream.entries())
    for path, status in [("/healthz", "ok"), ("/readyz", "ready")]:
        code, headers, body = mirror.request("GET", path)
        assert code == 200 and json.loads(body) == {"status": status}
    assert len(upstream.entries()) == before, "readiness does not depend on the upstream"


def test_not_ready_when_storage_is_unusable(upstream, tmp_path):
    import shutil

    root = tmp_path / "cache"
    with MirrorProcess(upstream.url, root=str(root)) as mirror:
        shutil.rmtree(root)  # someone removed the cache under the running mirror
        code, _, body = mirror.request("GET", "/readyz")
        assert code == 503 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
        assert mirror.request("GET", "/healthz")[0] == 200
