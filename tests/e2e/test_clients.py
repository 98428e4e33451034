"""
Real clients pull real images through daomirror (under twistd) from a real
upstream registry: dockerd as a registry mirror, containerd's ctr with a
hosts.toml mirror, podman with a registries.conf mirror, and skopeo talking
to the mirror directly.
"""

import json
import os

from tests.support.clients import ctr_pull, podman_pull, skopeo_copy
from tests.support.images import push_image


def blob_gets(upstream, mark):
    upstream.quiesce()
    return [e.path for e in upstream.entries_since(mark) if e.method == "GET" and "/blobs/" in e.path]


def test_dockerd_pulls_runs_and_pulls_again_from_cache(dockerd, mirror, upstream):
    image = push_image(upstream.url, "library/busybox", "latest", extra_layers=[8 * 1024 * 1024], seed="dockerd")
    mark = upstream.mark()
    pulled = dockerd.pull("busybox:latest")
    assert pulled.digest == image.digest
    assert sorted(set(blob_gets(upstream, mark))) == sorted(
        f"/v2/library/busybox/blobs/{d}" for d in image.blobs
    )
    assert dockerd.run("busybox:latest", "echo", "hello from the mirror").strip() == "hello from the mirror"
    dockerd.rmi("busybox:latest")
    mark = upstream.mark()
    again = dockerd.pull("busybox:latest")
    assert again.digest == image.digest and again.image_id == pulled.image_id
    assert blob_gets(upstream, mark) == [], "the warm pull fetched blobs upstream"


def test_dockerd_pulls_a_multi_platform_image(dockerd, upstream):
    image = push_image(upstream.url, "library/multi", "v1", platforms=("amd64", "arm64"), seed="dockerd-multi")
    assert image.is_index
    pulled = dockerd.pull("multi:v1")
    assert pulled.digest == image.digest
    config = image.manifest_for("amd64").config.digest
    assert pulled.image_id == config
    assert dockerd.run("multi:v1", "echo", "ok").strip() == "ok"


def test_dockerd_pulls_a_nested_name(dockerd, upstream):
    image = push_image(upstream.url, "team/tools/cli", "1.0", seed="dockerd-nested")
    pulled = dockerd.pull("team/tools/cli:1.0")
    assert pulled.digest == image.digest


def test_containerd_pulls_through_a_hosts_toml_mirror(mirror, upstream):
    image = push_image(upstream.url, "library/ctrimage", "v2", platforms=("amd64", "arm64"), seed="ctr")
    with open(mirror.log_path) as f:
        f.seek(0, os.SEEK_END)
        start = f.tell()
    pulled = ctr_pull(mirror.url, "library/ctrimage:v2")
    assert pulled.digest == image.digest
    with open(mirror.log_path) as f:
        f.seek(start)
        requests = [line for line in f if "/v2/library/ctrimage/" in line and '"GET ' in line]
    assert requests and all("?ns=docker.io" in line for line in requests)


def test_podman_pulls_through_a_registries_conf_mirror(mirror, upstream):
    image = push_image(upstream.url, "library/podimage", "v1", extra_layers=[1024 * 1024], seed="podman")
    pulled = podman_pull(mirror.url, "library/podimage:v1")
    assert pulled.image_id == image.manifests[0].config.digest.split(":")[1]


def test_skopeo_copies_through_the_mirror(mirror, upstream, tmp_path):
    image = push_image(upstream.url, "library/skoimage", "v1", platforms=("amd64", "arm64"), oci=True, seed="skopeo")
    dest = tmp_path / "oci"
    copied = skopeo_copy(mirror.url, "library/skoimage:v1", str(dest), all_platforms=True)
    assert copied.digest == image.digest  # OCI content is copied byte for byte
    index = json.loads((dest / "index.json").read_text())
    assert index["manifests"][0]["digest"] == image.digest
    for digest in image.blobs:
        algorithm, hex_ = digest.split(":")
        assert (dest / "blobs" / algorithm / hex_).exists()
