"""
The cache semantics real pulls depend on: tags are mutable and revalidated
after their freshness window, digests are forever; cached content is served
when the upstream can't; one download feeds many clients; ranges.
"""

import hashlib
import http.client
import json
import threading
import time

import pytest

from tests.support.fakeupstream import FakeUpstream, blob, relay, send, throttled
from tests.support.images import push_image
from tests.support.mirror import MirrorProcess
from tests.support.registry import UpstreamRegistry

ALL = {"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                 "application/vnd.docker.distribution.manifest.list.v2+json, "
                 "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"}


def ttl(value):
    return f'\n[cache]\ntag_ttl = "{value}"\n'


@pytest.fixture(scope="module")
def upstream():
    with UpstreamRegistry() as registry:
        yield registry


def manifest_requests(upstream, mark, repo):
    return [(e.method, e.path.rsplit("/", 1)[1]) for e in upstream.entries_since(mark)
            if f"/v2/{repo}/manifests/" in e.path]


def test_a_retagged_image_is_seen_after_the_window_and_an_unchanged_tag_costs_one_head(upstream):
    first = push_image(upstream.url, "library/retag", "T", seed="retag-a")
    with MirrorProcess(upstream.url, extra_config=ttl("1s")) as mirror:
        assert mirror.request("GET", "/v2/library/retag/manifests/T", ALL)[1]["docker-content-digest"] == first.digest
        second = push_image(upstream.url, "library/retag", "T", seed="retag-b")
        assert second.digest != first.digest
        mark = upstream.mark()
        inside = mirror.request("GET", "/v2/library/retag/manifests/T", ALL)
        assert inside[1]["docker-content-digest"] == first.digest, "within the window the cached tag is served"
        assert manifest_requests(upstream, mark, "library/retag") == []
        time.sleep(1.2)
        for method in ("HEAD", "GET"):
            status, headers, _ = mirror.request(method, "/v2/library/retag/manifests/T", ALL)
            assert status == 200 and headers["docker-content-digest"] == second.digest, method
        time.sleep(1.2)
        mark = upstream.mark()
        status, headers, body = mirror.request("GET", "/v2/library/retag/manifests/T", ALL)
        assert status == 200 and body == second.raw
        assert manifest_requests(upstream, mark, "library/retag") == [("HEAD", "T")]


def test_concurrent_requests_for_a_stale_tag_share_one_revalidation(upstream):
    image = push_image(upstream.url, "library/stale", "T", seed="stale")
    with MirrorProcess(upstream.url, extra_config=ttl("1s")) as mirror:
        assert mirror.request("GET", "/v2/library/stale/manifests/T", ALL)[0] == 200
        time.sleep(1.2)
        mark = upstream.mark()
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            mirror.request("GET", "/v2/library/stale/manifests/T", ALL)[2])) for _ in range(10)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert results == [image.raw] * 10
        assert manifest_requests(upstream, mark, "library/stale") == [("HEAD", "T")]


class RateLimitSwitch:
    """
    A real registry behind a relay that a test can turn into a 429 storm.
    """

    def __init__(self, registry):
        self.registry = registry
        self.limited = False
        self.fake = FakeUpstream(fallback=self.route)
        self.url = self.fake.url

    def route(self, handler):
        if self.limited:
            return send(handler, 429, b"Too Many Requests.", "text/plain", {"Retry-After": "30"})
        relay(self.registry.url)(handler)

    def trouble(self):
        self.limited = True

    def stop(self):
        self.fake.stop()


class Outage:
    """
    A real registry of its own that a test can stop.
    """

    def __init__(self):
        self.registry = UpstreamRegistry()
        self.url = self.registry.url

    def trouble(self):
        self.registry.stop_server()

    def stop(self):
        self.registry.stop()


@pytest.mark.parametrize("kind", [RateLimitSwitch, Outage])
def test_cached_content_is_served_when_the_upstream_cannot(upstream, kind):
    front = kind(upstream) if kind is RateLimitSwitch else kind()
    registry = upstream if kind is RateLimitSwitch else front.registry
    image = push_image(registry.url, f"library/limited{kind.__name__.lower()}", "T", seed=kind.__name__)
    push_image(registry.url, image.repo, "other", seed=kind.__name__ + "-other")
    try:
        with MirrorProcess(front.url, extra_config=ttl(0)) as mirror:
            warm = mirror.request("GET", f"/v2/{image.repo}/manifests/T", ALL)
            for digest in image.blobs:
                assert mirror.request("GET", f"/v2/{image.repo}/blobs/{digest}")[0] == 200
            front.trouble()
            for method in ("GET", "HEAD"):
                status, headers, body = mirror.request(method, f"/v2/{image.repo}/manifests/T", ALL)
                assert status == 200, (method, body)
                for name in ("content-type", "content-length", "docker-content-digest"):
                    assert headers[name] == warm[1][name]
                for digest in image.blobs:
                    assert mirror.request(method, f"/v2/{image.repo}/blobs/{digest}")[0] == 200
            status, headers, body = mirror.request("GET", f"/v2/{image.repo}/manifests/other", ALL)
            error = json.loads(body)["errors"][0]
            if kind is RateLimitSwitch:
                assert (status, error["code"], headers["retry-after"]) == (429, "TOOMANYREQUESTS", "30")
            else:
                assert (status, error["code"]) == (502, "UNAVAILABLE")
            assert "serving cached" in mirror.log()
    finally:
        front.stop()


BIG = b"".join(hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(1024))  # 64 MiB
BIG_DIGEST = "sha256:" + hashlib.sha256(BIG).hexdigest()
BIG_PATH = f"/v2/library/big/blobs/{BIG_DIGEST}"


def test_sixteen_clients_share_one_throttled_download(upstream):
    done = threading.Event()
    with FakeUpstream({BIG_PATH: throttled(BIG, 16e6, done)}) as fake, MirrorProcess(fake.url) as mirror:
        results = [None] * 16

        def client(i):
            connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=120)
            connection.request("GET", BIG_PATH)
            response = connection.getresponse()
            first = response.read(65536)
            early = not done.is_set()
            digest = hashlib.sha256(first)
            while chunk := response.read(1 << 20):
                digest.update(chunk)
            results[i] = (response.status, early, "sha256:" + digest.hexdigest())
            connection.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        [t.start() for t in threads]
        [t.join(300) for t in threads]
        assert results == [(200, True, BIG_DIGEST)] * 16, "each got its first bytes before the fill ended"
        assert fake.count("GET", BIG_PATH) == 1
        status, headers, body = mirror.request("GET", BIG_PATH)
        assert status == 200 and len(body) == len(BIG)
        assert fake.count("GET", BIG_PATH) == 1


def ranged(mirror, path, header, extra=None):
    return mirror.request("GET", path, dict({"Range": header}, **(extra or {})))


def test_ranges_on_a_cached_blob(upstream):
    image = push_image(upstream.url, "library/ranges", "v1", extra_layers=[200_000], seed="ranges")
    layer = image.manifests[0].layers[-1]
    path = f"/v2/{image.repo}/blobs/{layer.digest}"
    with MirrorProcess(upstream.url) as mirror:
        status, _, whole = mirror.request("GET", path)
        assert status == 200
        size = len(whole)
        status, headers, body = ranged(mirror, path, "bytes=100-")
        assert (status, headers["content-range"], body) == (206, f"bytes 100-{size - 1}/{size}", whole[100:])
        assert int(headers["content-length"]) == size - 100
        status, headers, body = ranged(mirror, path, "bytes=10-19")
        assert (status, body) == (206, whole[10:20])
        status, headers, body = ranged(mirror, path, f"bytes={size}-")
        assert status == 416 and headers["content-range"] == f"bytes */{size}"
        assert json.loads(body)["errors"][0]["code"]
        status, _, body = ranged(mirror, path, "bytes=0-1,5-6")
        assert status == 200 and body == whole
        status, _, body = ranged(mirror, path, "bytes=100-", {"If-Range": '"sha256:' + "0" * 64 + '"'})
        assert status == 200 and body == whole
        status, _, body = ranged(mirror, path, "bytes=100-", {"If-Range": f'"{layer.digest}"'})
        assert status == 206 and body == whole[100:]
        status, headers, body = mirror.request("HEAD", path, {"Range": "bytes=100-"})
        assert status == 206 and headers["content-range"] == f"bytes 100-{size - 1}/{size}"


def test_a_range_of_a_blob_still_being_filled_is_served_once_the_blob_is_verified():
    data = bytes(range(256)) * 8192  # 2 MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = f"/v2/library/filling/blobs/{digest}"
    release = threading.Event()
    with FakeUpstream({path: blob(data, hold_after=1_000_000, release=release)}) as fake, \
            MirrorProcess(fake.url) as mirror:
        connection = http.client.HTTPConnection("127.0.0.1", mirror.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.read(1000) == data[:1000]  # the fill is running and held
        answers = {}
        threads = [threading.Thread(target=lambda r=r: answers.update({r: ranged(mirror, path, f"bytes={r}")}))
                   for r in ("0-9999", "1500000-1500099")]
        [t.start() for t in threads]
        [t.join(1) for t in threads]
        # Bytes already there or not, a range never ends cleanly before the
        # digest is checked: it could be wrong.
        assert all(t.is_alive() for t in threads) and answers == {}
        release.set()
        [t.join(30) for t in threads]
        assert answers["0-9999"][0] == 206 and answers["0-9999"][2] == data[:10000]
        assert answers["1500000-1500099"][0] == 206 and answers["1500000-1500099"][2] == data[1500000:1500100]
        assert data[:1000] + response.read() == data
        connection.close()


def test_tag_list_pagination_comes_back_through_the_mirror():
    pages = {
        "": (b'{"name":"library/x","tags":["a","b"]}', '</v2/library/x/tags/list?n=2&last=b>; rel="next"'),
        "n=2&last=b": (b'{"name":"library/x","tags":["c"]}', None),
    }

    def tags(handler):
        query = handler.path.partition("?")[2]
        body, link = pages.get(query, pages[""])
        send(handler, 200, body, "application/json", {"Link": link} if link else {})

    with FakeUpstream({"/v2/library/x/tags/list": tags}) as fake, MirrorProcess(fake.url) as mirror:
        status, headers, body = mirror.request("GET", "/v2/library/x/tags/list?n=2&ns=docker.io")
        assert status == 200 and json.loads(body)["tags"] == ["a", "b"]
        assert headers["link"] == '</v2/library/x/tags/list?n=2&last=b>; rel="next"'
        status, headers, body = mirror.request("GET", "/v2/library/x/tags/list?n=2&last=b")
        assert json.loads(body)["tags"] == ["c"] and "link" not in headers
        assert [r[1] for r in fake.requests if "tags" in r[1]] == ["/v2/library/x/tags/list"] * 2
