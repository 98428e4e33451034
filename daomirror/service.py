"""
Build the running mirror from a L{Config}: storage, the upstream client and
its connection pool, the mirror policy, the API and one listener per
C{[server] listen} endpoint.
"""

from treq.client import HTTPClient
from twisted.application import service, strports
from twisted.internet import reactor as default_reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from .api import RegistryAPI
from .config import ConfigError
from .mirror import Mirror
from .storage import make_storage
from .upstream import Upstream

CONNECT_TIMEOUT = 10.0
MAX_PERSISTENT_PER_HOST = 16


class UpstreamClientService(service.Service):
    """
    Owns the HTTP connection pool to upstream, so that stopping the daemon
    closes its connections.
    """

    def __init__(self, reactor):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
        self.client = HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=CONNECT_TIMEOUT))

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
    client = UpstreamClientService(reactor)
    client.setServiceParent(top)
    try:
        storage = make_storage(config.storage.driver, config.storage.options)
    except OSError as e:
        raise ConfigError(config.path, f"storage.{config.storage.driver}", f"cannot use storage: {e}") from None
    mirror = Mirror(storage, Upstream(config.upstream.url, client.client), reactor)
    MirrorService(mirror).setServiceParent(top)
    site = make_site(mirror)
    for description in config.server.listen:
        listener = _listener(config, description, site, reactor)
        listener.setServiceParent(top)
    return top


def _listener(config, description, site, reactor):
    try:
        return strports.service(description, site, reactor=reactor)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(config.path, "server.listen", f"invalid endpoint {description!r}: {e}") from None
