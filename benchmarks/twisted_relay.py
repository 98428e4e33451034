"""The simplest Twisted program doing a mirror's cold work: the ceiling to compare with.

For ``GET /v2/<name>/blobs/<digest>`` it fetches the same path from the
upstream with a plain ``twisted.web.client.Agent`` and relays the body to
the client, the client's socket pausing the upstream (the response body's
transport is registered as the request's producer). With ``--store DIR``
it also does what a verifying cache must: hashes every chunk, appends it to
a file, and ends the response cleanly only if the digest matches. Nothing
else: no error bodies, no coalescing, no cache hits.

    python benchmarks/twisted_relay.py --port 8000 --upstream http://127.0.0.1:5000 [--store DIR]
"""

import argparse
import hashlib
import os
import uuid

from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class Relay(Protocol):
    def __init__(self, request, digest, store):
        self.request = request
        self.digest = digest
        self.hasher = hashlib.sha256() if store else None
        self.file = open(os.path.join(store, uuid.uuid4().hex), "wb") if store else None

    def connectionMade(self):
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data):
        if self.file is not None:
            self.hasher.update(data)
            self.file.write(data)
        self.request.write(data)

    def connectionLost(self, reason):
        self.request.unregisterProducer()
        whole = reason.check(ResponseDone, PotentialDataLoss)
        if self.file is not None:
            self.file.close()
            whole = whole and "sha256:" + self.hasher.hexdigest() == self.digest
        if whole:
            self.request.finish()
        else:
            self.request.transport.abortConnection()


class Blobs(Resource):
    isLeaf = True

    def __init__(self, upstream, store):
        super().__init__()
        self.agent = Agent(reactor)
        self.upstream = upstream
        self.store = store

    def render_GET(self, request):
        digest = request.path.decode().rsplit("/", 1)[-1]
        fetched = self.agent.request(b"GET", self.upstream + request.path)

        def relay(response):
            request.setResponseCode(response.code)
            request.setHeader(b"Content-Length", str(response.length).encode())
            store = self.store if b"/blobs/" in request.path else None  # a manifest's name is no digest
            response.deliverBody(Relay(request, digest, store))

        fetched.addCallbacks(relay, lambda failure: request.transport.abortConnection())
        return NOT_DONE_YET


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    parser.add_argument("--store", help="hash and write each body to a new file in this folder")
    args = parser.parse_args()
    reactor.listenTCP(args.port, Site(Blobs(args.upstream.rstrip("/").encode(), args.store)), interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
