"""
Answering an upstream registry's authentication challenges.

Registries such as Docker Hub answer an anonymous request with a 401 and
``WWW-Authenticate: Bearer realm="...",service="...",scope="..."``: the client
gets a token from the realm (anonymously, or with HTTP Basic credentials)
and repeats the request with ``Authorization: Bearer TOKEN``. Some private
registries ask for HTTP Basic instead. L{Authenticator} does both, caches
tokens per scope until shortly before they expire, and asks the realm once
for a burst of requests. Credentials and tokens never appear in a log or an
error message (DESIGN.md invariant 3).
"""

import base64
import json
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from twisted.logger import Logger

from . import errors
from .lru import LRU
from .singleflight import SingleFlight

DEFAULT_EXPIRES_IN = 60
TOKEN_BODY_LIMIT = 1024 * 1024
# Tokens are per repository, and clients pick the repositories: keep the
# ones in use, not every one ever asked for.
TOKENS_IN_MEMORY = 4096

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SEPARATORS = re.compile(r"[ \t,]*")
_BLANKS = re.compile(r"[ \t]*")
_TOKEN68 = re.compile(r"[ \t]+[A-Za-z0-9\-._~+/]+=*[ \t]*(,|$)")

log = Logger()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer", "basic", ...
    params: dict = field(default_factory=dict)  # names in lower case


def parse_challenges(values):
    """
    Every challenge in some C{WWW-Authenticate} header values (RFC 9110
    section 11.6.1): several per header, quoted values with commas and
    escapes inside. What cannot be parsed is skipped, not guessed.
    """
    challenges = []
    for value in values:
        position, current = 0, None
        while True:
            position = _SEPARATORS.match(value, position).end()
            token = _TOKEN.match(value, position)
            if token is None:
                break
            after = _BLANKS.match(value, token.end()).end()
            if value.startswith("=", after) and current is not None and not value.startswith("==", after):
                parsed, position = _param_value(value, _BLANKS.match(value, after + 1).end())
                if parsed is None:
                    break
                current.params[token.group().lower()] = parsed
            else:
                current = Challenge(token.group().lower(), {})
                challenges.append(current)
                position = token.end()
                token68 = _TOKEN68.match(value, position)
                if token68:  # e.g. "Negotiate abc==": nothing we use
                    position = token68.end()
    return challenges


def _param_value(value, position):
    if value.startswith('"', position):
        chars, i = [], position + 1
        while i < len(value):
            c = value[i]
            if c == "\\" and i + 1 < len(value):
                chars.append(value[i + 1])
                i += 2
            elif c == '"':
                return "".join(chars), i + 1
            else:
                chars.append(c)
                i += 1
        return None, len(value)
    token = _TOKEN.match(value, position)
    return (token.group(), token.end()) if token else (None, position)


@dataclass
class _Token:
    header: str
    usable_until: float


class Authenticator:
    """
    Turns challenges into C{Authorization} header values for one upstream
    and one set of credentials (or none).

    @param get: an async function C{get(url, headers) -> (status, body)}
        that fetches a token from a realm.
    @param secure_realms_only: refuse a plain-http realm (for an https
        upstream: credentials never travel in clear).
    """

    def __init__(self, get, username=None, password=None, clock=time.monotonic, secure_realms_only=False):
        self._get = get
        self._secure_realms_only = secure_realms_only
        self._credentials = (username, password) if username is not None else None
        self._clock = clock
        self._tokens = LRU(TOKENS_IN_MEMORY)
        self._basic = False
        self._fetching = SingleFlight()

    def cached(self, scope):
        """
        The header to send before any challenge: a cached, still valid token
        for C{scope}, or Basic credentials once the upstream asked for them.
        """
        token = self._tokens.get(scope)
        if token is not None and self._clock() < token.usable_until:
            return token.header
        if self._basic:
            return self._basic_header()
        return None

    async def answer(self, challenge_values, scope, rejected):
        """
        The header that answers a 401's challenges for C{scope}.

        @param rejected: the header the upstream just refused, if any; it is
            forgotten, so the answer is a fresh token, never the same one.
        """
        current = self.cached(scope)
        if current is not None and current != rejected:
            return current  # another request got a token meanwhile
        known = self._tokens.get(scope)
        if rejected is not None and known is not None and known.header == rejected:
            self._tokens.discard(scope)
        challenges = parse_challenges(challenge_values)
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.params.get("realm")), None)
        if bearer is not None:
            token = await self._fetching.run(scope, lambda: self._fetch_token(bearer, scope))
            return token.header
        if any(c.scheme == "basic" for c in challenges):
            if self._credentials is None:
                raise errors.unavailable("upstream asks for credentials (Basic) and none are configured")
            self._basic = True
            return self._basic_header()
        raise errors.unavailable("upstream asks for an authentication scheme the mirror does not speak")

    def _basic_header(self):
        pair = f"{self._credentials[0]}:{self._credentials[1]}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")

    async def _fetch_token(self, challenge, scope):
        realm = challenge.params["realm"]
        scheme = urlsplit(realm).scheme
        if scheme not in ("http", "https") or (scheme == "http" and self._secure_realms_only):
            raise errors.unavailable("the upstream's token realm is not an https URL; the mirror will not use it")
        query = {}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        query["scope"] = challenge.params.get("scope") or scope
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"Authorization": self._basic_header()} if self._credentials else {}
        status, body = await self._get(url, headers)
        if status in (401, 403):
            raise errors.unavailable(f"the upstream's token service refused the mirror's credentials ({status})")
        if status != 200:
            raise errors.unavailable(f"the upstream's token service answered {status}")
        try:
            answer = json.loads(body)
            value = answer.get("token") or answer.get("access_token")
            expires_in = int(answer.get("expires_in") or DEFAULT_EXPIRES_IN)
        except (ValueError, TypeError, AttributeError):
            value = None
        if not isinstance(value, str) or not value:
            raise errors.unavailable("the upstream's token service sent no token")
        margin = min(30.0, expires_in / 10)
        token = _Token("Bearer " + value, self._clock() + max(0.0, expires_in - margin))
        self._tokens.put(scope, token)
        log.debug("got an upstream token for {scope}, valid {seconds}s", scope=scope, seconds=expires_in)
        return token
