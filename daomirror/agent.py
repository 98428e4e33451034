"""
The HTTP agent that reaches upstream: a persistent connection pool, a
connect timeout, verified TLS (with an optional private CA bundle), and the
outbound proxy that the environment names (C{HTTPS_PROXY}, C{HTTP_PROXY},
C{NO_PROXY}), as container hosts behind corporate egress need.
"""

import base64
import os
from urllib.parse import urlsplit

from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ProxyAgent
from twisted.web.iweb import IAgent, IAgentEndpointFactory
from zope.interface import implementer


def tls_policy(ca_file=None):
    """
    Verify upstream certificates against the system's trust store, or only
    against the certificates in C{ca_file} (a PEM bundle) when given.
    """
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca_file, "rb") as f:
        pem = f.read()
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = [ssl.Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]
    return BrowserLikePolicyForHTTPS(ssl.trustRootFromCertificates(certificates))


def proxy_for(url, environ=os.environ):
    """
    The proxy URL to use for C{url}, or None when it is to be reached directly.
    """
    parts = urlsplit(url)
    names = ("https_proxy", "HTTPS_PROXY") if parts.scheme == "https" else ("http_proxy", "HTTP_PROXY")
    proxy = next((environ[n] for n in names if environ.get(n)), None)
    if not proxy or _bypassed(parts.hostname, parts.port, environ):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def _bypassed(host, port, environ):
    """
    Whether C{NO_PROXY} exempts C{host}: C{*}, exact names or addresses,
    and domain suffixes (C{.example.com} or C{example.com}), optionally with
    a port.
    """
    rules = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    host = (host or "").lower()
    for rule in (r.strip().lower() for r in rules.split(",")):
        if not rule:
            continue
        if rule == "*":
            return True
        name, _, rule_port = rule.partition(":") if rule.count(":") == 1 else (rule, "", "")
        if rule_port and port is not None and rule_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


@implementer(IAgent)
class UpstreamAgent:
    """
    Sends each request directly or through the proxy the environment names
    for its URL, all on one connection pool.
    """

    def __init__(self, reactor, pool, connect_timeout, policy, environ=os.environ):
        self._reactor = reactor
        self._pool = pool
        self._timeout = connect_timeout
        self._policy = policy
        self._environ = environ
        self._direct = Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=pool)
        self._via = {}

    def request(self, method, uri, headers=None, bodyProducer=None):
        url = uri.decode("ascii")
        proxy = proxy_for(url, self._environ)
        if proxy is None:
            return self._direct.request(method, uri, headers, bodyProducer)
        scheme = urlsplit(url).scheme
        agent = self._via.get((proxy, scheme))
        if agent is None:
            agent = self._via[(proxy, scheme)] = self._proxy_agent(proxy, scheme)
        return agent.request(method, uri, _with_proxy_auth(headers, proxy, scheme), bodyProducer)

    def _proxy_agent(self, proxy, scheme):
        parts = urlsplit(proxy)
        endpoint = HostnameEndpoint(self._reactor, parts.hostname, parts.port or 80, timeout=self._timeout)
        if scheme == "http":
            return ProxyAgent(endpoint, self._reactor, self._pool)
        tunnels = _TunnelEndpointFactory(self._reactor, endpoint, self._policy, _proxy_authorization(proxy))
        return Agent.usingEndpointFactory(self._reactor, tunnels, pool=self._pool)


def _proxy_authorization(proxy):
    parts = urlsplit(proxy)
    if parts.username is None:
        return None
    pair = f"{parts.username}:{parts.password or ''}".encode()
    return b"Basic " + base64.b64encode(pair)


def _with_proxy_auth(headers, proxy, scheme):
    """
    A forward (plain HTTP) proxy gets its credentials on each request; a
    tunnel gets them on the CONNECT instead.
    """
    authorization = _proxy_authorization(proxy)
    if authorization is None or scheme == "https":
        return headers
    headers = headers.copy()
    headers.setRawHeaders(b"Proxy-Authorization", [authorization])
    return headers


@implementer(IAgentEndpointFactory)
class _TunnelEndpointFactory:
    def __init__(self, reactor, proxy_endpoint, policy, authorization):
        self._reactor = reactor
        self._proxy = proxy_endpoint
        self._policy = policy
        self._authorization = authorization

    def endpointForURI(self, uri):
        host, port = uri.host.decode("ascii"), uri.port
        creator = self._policy.creatorForNetloc(uri.host, port)
        return _TunnelEndpoint(self._proxy, host, port, creator, self._authorization)


@implementer(IStreamClientEndpoint)
class _TunnelEndpoint:
    """
    Connects through an HTTP proxy with C{CONNECT host:port}, then speaks
    TLS to the origin inside the tunnel.
    """

    def __init__(self, proxy_endpoint, host, port, creator, authorization):
        self._proxy = proxy_endpoint
        self._host = host
        self._port = port
        self._creator = creator
        self._authorization = authorization

    def connect(self, factory):
        established = Deferred()
        tunnel = Factory.forProtocol(lambda: _TunnelProtocol(self, factory, established))
        connecting = self._proxy.connect(tunnel)
        connecting.addErrback(lambda f: established.called or established.errback(f))
        return established


class TunnelRefused(Exception):
    """
    The proxy did not open the tunnel.
    """


class _TunnelProtocol(Protocol):
    def __init__(self, endpoint, factory, established):
        self._endpoint = endpoint
        self._factory = factory
        self._established = established
        self._buffer = b""

    def connectionMade(self):
        target = f"{self._endpoint._host}:{self._endpoint._port}".encode("ascii")
        request = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n"
        if self._endpoint._authorization:
            request += b"Proxy-Authorization: " + self._endpoint._authorization + b"\r\n"
        self.transport.write(request + b"\r\n")

    def dataReceived(self, data):
        self._buffer += data
        head, sep, rest = self._buffer.partition(b"\r\n\r\n")
        if not sep:
            if len(self._buffer) > 64 * 1024:
                self._refuse(b"an endless answer to CONNECT")
            return
        status = head.split(b"\r\n", 1)[0].split(b" ")
        if len(status) < 2 or status[1] != b"200":
            self._refuse(head.split(b"\r\n", 1)[0])
            return
        if rest:
            self._refuse(b"data before the TLS handshake")
            return
        # The tunnel is open: hand the connection to the protocol that asked
        # for it, behind a TLS layer (startTLS wraps transport.protocol; the
        # transport's writes then go through TLS).
        inner = self._factory.buildProtocol(self.transport.getPeer())
        self.transport.protocol = inner
        self.transport.startTLS(self._endpoint._creator)
        inner.makeConnection(self.transport)
        self._established.callback(inner)

    def _refuse(self, why):
        self.transport.abortConnection()
        if not self._established.called:
            self._established.errback(TunnelRefused(f"proxy refused the tunnel: {why.decode('latin-1')[:200]}"))

    def connectionLost(self, reason):
        if not self._established.called:
            self._established.errback(reason)
