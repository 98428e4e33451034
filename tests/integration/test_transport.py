"""
How the mirror reaches its upstream: verified TLS with a private CA
(``[upstream] ca_file``), and the outbound proxy that the environment names
(``HTTP_PROXY``/``HTTPS_PROXY``, with ``NO_PROXY`` exemptions).
"""

import hashlib
import json
import os

import pytest

from tests.support.certs import self_signed
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess
from tests.support.proxy import ForwardProxy
from tests.support.registry import UpstreamRegistry

ACCEPT = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


def environment(**variables):
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    env.update(variables)
    return env


def pull(mirror, image):
    status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
    assert status == 200, body
    layer = image.manifests[0].layers[0]
    status, _, data = mirror.request("GET", f"/v2/{image.repo}/blobs/{layer.digest}")
    assert status == 200 and "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="module")
def tls_upstream(certificate):
    cert, key = certificate
    with UpstreamRegistry(config={"http": {"tls": {"certificate": cert, "key": key}}}) as registry:
        yield registry


@pytest.fixture(scope="module")
def plain_upstream():
    with UpstreamRegistry() as registry:
        yield registry


def test_tls_upstream_verified_with_a_private_ca(tls_upstream, certificate):
    image = push_image(tls_upstream.url, "library/tls", "v1", seed="tls")
    with MirrorProcess(tls_upstream.url, upstream_config=f'ca_file = "{certificate[0]}"\n',
                       env=environment()) as mirror:
        pull(mirror, image)


def test_an_untrusted_certificate_is_refused(tls_upstream):
    image = push_image(tls_upstream.url, "library/untrusted", "v1", seed="untrusted")
    with MirrorProcess(tls_upstream.url, env=environment()) as mirror:
        status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
        assert status == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"
    assert not any(e.path.endswith("/manifests/v1") and e.method == "GET" for e in tls_upstream.entries()
                   if image.repo in e.path)


def test_https_upstream_through_a_connect_proxy(tls_upstream, certificate):
    image = push_image(tls_upstream.url, "library/tunnel", "v1", seed="tunnel")
    with ForwardProxy() as proxy, MirrorProcess(
        tls_upstream.url, upstream_config=f'ca_file = "{certificate[0]}"\n',
        env=environment(HTTPS_PROXY=proxy.url),
    ) as mirror:
        pull(mirror, image)
        assert proxy.count("CONNECT", tls_upstream.host) >= 1
        assert proxy.count() == proxy.count("CONNECT")


def test_http_upstream_through_a_forward_proxy(plain_upstream):
    image = push_image(plain_upstream.url, "library/forward", "v1", seed="forward")
    with ForwardProxy() as proxy, MirrorProcess(
        plain_upstream.url, env=environment(http_proxy=proxy.url)
    ) as mirror:
        pull(mirror, image)
        assert proxy.count("GET", f"{plain_upstream.url}/v2/{image.repo}/manifests/v1") == 1
        assert proxy.count("GET", "/blobs/") == 1


def test_no_proxy_exempts_the_upstream(plain_upstream):
    image = push_image(plain_upstream.url, "library/direct", "v1", seed="direct")
    with ForwardProxy() as proxy, MirrorProcess(
        plain_upstream.url, env=environment(HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    ) as mirror:
        pull(mirror, image)
        assert proxy.count() == 0
