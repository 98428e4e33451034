"""
Build the running mirror from a L{Config}: storage, the upstream client and
its connection pool, the mirror policy, the API and one listener per
C{[server] listen} endpoint.
"""

import os
import sys

from treq.client import HTTPClient
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.internet import reactor as default_reactor
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.server import Site

from .agent import UpstreamAgent, tls_policy
from .api import RegistryAPI
from .config import ConfigError
from .mirror import Mirror
from .storage import make_storage
from .upstream import Upstream

MAX_PERSISTENT_PER_HOST = 16


class UpstreamClientService(service.Service):
    """
    Owns the HTTP connection pool to upstream, so that stopping the daemon
    closes its connections.
    """

    def __init__(self, reactor, upstream):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
        self.pool._factory = _QuietClientFactory
        agent = UpstreamAgent(reactor, self.pool, upstream.connect_timeout, tls_policy(upstream.ca_file))
        self.client = HTTPClient(agent)

    def stopService(self):
        super().stopService()
        return self.pool.closeCachedConnections()


class MirrorService(service.Service):
    """
    Lets verified transfers finish committing when the daemon stops.
    """

    def __init__(self, mirror):
        self.mirror = mirror

    def stopService(self):
        super().stopService()
        return self.mirror.close()


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory without a log line per upstream connection.
    """

    noisy = False


def make_site(mirror):
    site = Site(RegistryAPI(mirror).resource())
    site.displayTracebacks = False
    return site


def make_service(config, reactor=default_reactor):
    """
    The service tree for C{config}; raises L{ConfigError} for a listen
    string that is not a valid endpoint.
    """
    top = service.MultiService()
    try:
        client = UpstreamClientService(reactor, config.upstream)
    except Exception as e:  # a CA bundle that pyOpenSSL cannot load
        raise ConfigError(config.path, "upstream.ca_file", f"cannot use it: {e}") from None
    client.setServiceParent(top)
    try:
        storage = make_storage(config.storage.driver, config.storage.options)
    except OSError as e:
        raise ConfigError(config.path, f"storage.{config.storage.driver}", f"cannot use storage: {e}") from None
    upstream = config.upstream
    mirror = Mirror(storage, Upstream(
        upstream.url, client.client, reactor, upstream.username, upstream.password,
        headers_timeout=upstream.headers_timeout, idle_timeout=upstream.idle_timeout,
    ), reactor, tag_ttl=config.cache.tag_ttl)
    MirrorService(mirror).setServiceParent(top)
    site = make_site(mirror)
    for description in config.server.listen:
        listener = _listener(config, description, site, reactor)
        listener.setServiceParent(top)
    return top


def _listener(config, description, site, reactor):
    if description.startswith("systemd:") and "LISTEN_FDS" not in os.environ:
        raise ConfigError(config.path, "server.listen",
                          f"{description!r} needs socket activation: run under systemd with twistd -n")
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception as e:  # endpoint parsers raise anything from ValueError to OpenSSL errors
        raise ConfigError(config.path, "server.listen", f"invalid endpoint {description!r}: {e}") from None
    return _Listener(endpoint, site, f"{config.path}: server.listen: cannot listen on {description!r}")


class _Listener(StreamServerEndpointService):
    """
    A listening endpoint that fails the start with one line, not a traceback,
    when its address is taken or not permitted.
    """

    _raiseSynchronously = True

    def __init__(self, endpoint, factory, what):
        super().__init__(endpoint, factory)
        self._what = what

    def privilegedStartService(self):
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            sys.stderr.write(f"daomirror: {self._what}: {e.socketError}\n")
            raise SystemExit(1)
