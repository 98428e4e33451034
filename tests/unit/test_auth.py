"""
Challenge parsing and the token cache, with a fake realm and a fake clock.
"""

import base64
import json

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from daomirror.auth import Authenticator, Challenge, parse_challenges
from daomirror.errors import RegistryError

HUB = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"'


def test_docker_hub_challenge():
    assert parse_challenges([HUB]) == [Challenge("bearer", {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    })]


def test_several_challenges_quoted_commas_and_escapes():
    values = ['Basic realm="a, b", Bearer realm="x\\"y",service=s', "Negotiate abc==, Basic realm=z"]
    assert parse_challenges(values) == [
        Challenge("basic", {"realm": "a, b"}),
        Challenge("bearer", {"realm": 'x"y', "service": "s"}),
        Challenge("negotiate", {}),
        Challenge("basic", {"realm": "z"}),
    ]


def test_scheme_and_parameter_names_are_case_insensitive():
    assert parse_challenges(['BEARER Realm="r"']) == [Challenge("bearer", {"realm": "r"})]


@pytest.mark.parametrize("value", ["", "=", 'Bearer realm="unterminated', ",,,"])
def test_malformed_headers_never_raise(value):
    for challenge in parse_challenges([value]):
        assert "realm" not in challenge.params or challenge.params["realm"]


class Realm:
    """
    A token realm the test answers by hand.
    """

    def __init__(self):
        self.asked = []

    async def get(self, url, headers):
        answer = Deferred()
        self.asked.append((url, headers, answer))
        return await answer

    def grant(self, index, token, **extra):
        self.asked[index][2].callback((200, json.dumps(dict(token=token, **extra)).encode()))


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


@pytest_twisted.ensureDeferred
async def test_one_token_request_for_a_burst_and_reuse_until_expiry():
    realm, clock = Realm(), Clock()
    auth = Authenticator(realm.get, clock=clock)
    scope = "repository:library/busybox:pull"
    answers = [Deferred.fromCoroutine(auth.answer([HUB], scope, None)) for _ in range(5)]
    assert len(realm.asked) == 1
    url, headers, _ = realm.asked[0]
    assert url == ("https://auth.docker.io/token?service=registry.docker.io"
                   "&scope=repository%3Alibrary%2Fbusybox%3Apull")
    assert headers == {}
    realm.grant(0, "T1", expires_in=300)
    assert [await a for a in answers] == ["Bearer T1"] * 5
    assert auth.cached(scope) == "Bearer T1"
    clock.now += 269
    assert auth.cached(scope) == "Bearer T1"
    clock.now += 2
    assert auth.cached(scope) is None, "not reused in the last tenth of its life"


@pytest_twisted.ensureDeferred
async def test_default_lifetime_is_60_seconds():
    realm, clock = Realm(), Clock()
    auth = Authenticator(realm.get, clock=clock)
    pending = Deferred.fromCoroutine(auth.answer([HUB], "s", None))
    realm.grant(0, "T")
    await pending
    clock.now += 53
    assert auth.cached("s") == "Bearer T"
    clock.now += 2
    assert auth.cached("s") is None


@pytest_twisted.ensureDeferred
async def test_a_rejected_token_is_replaced_not_reused():
    realm = Realm()
    auth = Authenticator(realm.get, clock=Clock())
    first = Deferred.fromCoroutine(auth.answer([HUB], "s", None))
    realm.grant(0, "OLD", expires_in=300)
    assert await first == "Bearer OLD"
    second = Deferred.fromCoroutine(auth.answer([HUB], "s", "Bearer OLD"))
    assert len(realm.asked) == 2
    realm.grant(1, "NEW", expires_in=300)
    assert await second == "Bearer NEW"


@pytest_twisted.ensureDeferred
async def test_credentials_go_to_the_realm_as_basic():
    realm = Realm()
    auth = Authenticator(realm.get, "alice", "secret", clock=Clock())
    pending = Deferred.fromCoroutine(auth.answer([HUB], "s", None))
    assert realm.asked[0][1] == {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
    realm.grant(0, "T", access_token="ignored")
    assert await pending == "Bearer T"


@pytest_twisted.ensureDeferred
async def test_basic_upstreams_and_missing_credentials():
    auth = Authenticator(Realm().get, "bob", "pw", clock=Clock())
    header = await auth.answer(['Basic realm="r"'], "s", None)
    assert header == "Basic " + base64.b64encode(b"bob:pw").decode()
    assert auth.cached("other") == header, "then sent up front"
    with pytest.raises(RegistryError) as e:
        await Authenticator(Realm().get, clock=Clock()).answer(['Basic realm="r"'], "s", None)
    assert e.value.status == 502 and "none are configured" in e.value.detail


@pytest.mark.parametrize("status, body, words", [
    (401, b"", "refused the mirror's credentials"),
    (500, b"oops", "answered 500"),
    (200, b"not json", "sent no token"),
    (200, b'{"token": ""}', "sent no token"),
])
@pytest_twisted.ensureDeferred
async def test_token_service_failures_are_502(status, body, words):
    realm = Realm()
    auth = Authenticator(realm.get, clock=Clock())
    pending = Deferred.fromCoroutine(auth.answer([HUB], "s", None))
    realm.asked[0][2].callback((status, body))
    with pytest.raises(RegistryError) as e:
        await pending
    assert e.value.status == 502 and words in e.value.detail
