"""
Token authentication the way Docker Hub does it: the reference registry in
``auth: token`` mode and a token server signing RS256 tokens with a
certificate the registry trusts. Pulls through daomirror work anonymously
and with credentials, ask the token server as little as they can, renew
tokens, and never loop.
"""

import concurrent.futures
import json
import time

import pytest

from tests.support.clients import PrivateDockerd
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess
from tests.support.registry import UpstreamRegistry
from tests.support.tokenserver import TokenServer

ACCEPT = {"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                    "application/vnd.docker.distribution.manifest.list.v2+json"}
CREDENTIALS = 'username = "alice"\npassword = "secret"\n'


@pytest.fixture(scope="module")
def tokens():
    with TokenServer(users={"alice": "secret"}, anonymous=True) as server:
        yield server


@pytest.fixture(scope="module")
def upstream(tokens):
    with UpstreamRegistry(config=tokens.registry_config()) as registry:
        yield registry


@pytest.fixture(autouse=True)
def fresh_token_server(tokens):
    tokens.clear_requests()
    tokens.clear_failure()
    tokens.expires_in, tokens.lifetime = 300, None


def push(tokens, upstream, repo, **kwargs):
    scope = f"repository:{repo}:pull,push"
    return push_image(upstream.url, repo, "v1", authorization="Bearer " + tokens.token([scope], "alice"), **kwargs)


def pull(mirror, image):
    """
    What a client does: the tag, then the config and every layer.
    """
    status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
    assert status == 200, body
    manifest = json.loads(body)
    for blob in [manifest["config"], *manifest["layers"]]:
        status, _, data = mirror.request("GET", f"/v2/{image.repo}/blobs/{blob['digest']}")
        assert status == 200 and len(data) == blob["size"]


def test_anonymous_pull_asks_the_token_server_once(tokens, upstream):
    image = push(tokens, upstream, "library/anon", extra_layers=[100_000])
    with MirrorProcess(upstream.url) as mirror:
        pull(mirror, image)
        pull(mirror, image)
    asked = tokens.requests
    assert [(r.scopes, r.user) for r in asked] == [(["repository:library/anon:pull"], None)]


def test_pull_with_credentials_sends_them_to_the_realm_only(tokens, upstream):
    image = push(tokens, upstream, "library/private")
    with MirrorProcess(upstream.url, upstream_config=CREDENTIALS) as mirror:
        pull(mirror, image)
        assert "secret" not in mirror.log()
    assert [r.user for r in tokens.requests] == ["alice"]
    registry_log = open(upstream.log_path).read()
    assert "alice" not in registry_log


def test_refused_credentials_are_a_502_that_says_so(tokens, upstream):
    image = push(tokens, upstream, "library/refused")
    with MirrorProcess(upstream.url, upstream_config='username = "alice"\npassword = "wrong"\n') as mirror:
        status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
        assert status == 502
        error = json.loads(body)["errors"][0]
        assert error["code"] == "UNAVAILABLE" and "credentials" in error["detail"]
        assert "wrong" not in mirror.log()


def test_a_burst_for_one_repository_asks_the_realm_once(tokens, upstream):
    image = push(tokens, upstream, "library/burst")
    with MirrorProcess(upstream.url) as mirror:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            results = list(pool.map(
                lambda _: mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)[0], range(12)))
        assert results == [200] * 12
    assert tokens.count() == 1


def test_tokens_are_renewed_when_they_expire(tokens, upstream):
    image = push(tokens, upstream, "library/expiring", extra_layers=[100_000])
    tokens.expires_in = 2
    with MirrorProcess(upstream.url, extra_config="\n[cache]\ntag_ttl = 0\n") as mirror:
        started = time.monotonic()
        pull(mirror, image)
        assert tokens.count() == 1, (time.monotonic() - started, [(r.scopes, r.params) for r in tokens.requests])
        time.sleep(2.5)
        pull(mirror, image)  # the tag is revalidated with a fresh token
        assert tokens.count() == 2


def test_a_token_the_registry_rejects_gets_one_fresh_token_and_one_retry(tokens, upstream):
    image = push(tokens, upstream, "library/rejected")
    tokens.lifetime = -120  # the registry refuses these, though expires_in says 300 s
    with MirrorProcess(upstream.url) as mirror:
        status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
        assert status == 502 and "credentials" in json.loads(body)["errors"][0]["detail"]
        assert tokens.count() == 1, "no loop: one token for the challenge"
        tokens.lifetime = None  # the realm mends
        status, _, _ = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
        assert status == 200
        assert tokens.count() == 2, "the cached token was refused, so one fresh token and one retry"


def test_a_failing_token_service_is_a_502(tokens, upstream):
    image = push(tokens, upstream, "library/tokenfail")
    tokens.fail_with(500)
    with MirrorProcess(upstream.url) as mirror:
        status, _, body = mirror.request("GET", f"/v2/{image.repo}/manifests/v1", ACCEPT)
        assert status == 502 and json.loads(body)["errors"][0]["code"] == "UNAVAILABLE"


def test_dockerd_pulls_through_a_token_protected_upstream(tokens, upstream):
    image = push(tokens, upstream, "library/busybox", extra_layers=[1_000_000])
    with MirrorProcess(upstream.url) as mirror, PrivateDockerd(mirror.url) as dockerd:
        pulled = dockerd.pull("busybox:v1")
        assert pulled.digest == image.digest
        assert dockerd.run("busybox:v1", "echo", "token ok").strip() == "token ok"
    assert tokens.count(scope="repository:library/busybox:pull") == 1
