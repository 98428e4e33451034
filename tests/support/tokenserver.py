"""A Docker-Hub-style token server for an upstream registry in ``auth: token`` mode.

Why: Docker Hub (and most registries a mirror fronts) answer ``401`` with
``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` and expect the
client to fetch a short-lived JWT from the realm.  The mirror must do that
dance, cache tokens per scope, refresh them when they expire and survive an
auth service that fails.  This server is that realm, for the reference
registry (``docker-registry`` 2.8) started by ``registry.UpstreamRegistry``:

    with TokenServer(users={"alice": "secret"}) as ts, \\
         UpstreamRegistry(config=ts.registry_config()) as reg:
        push_image(reg.url, "library/busybox", "latest",
                   authorization="Bearer " + ts.token(["repository:library/busybox:pull,push"]))

Tokens are RS256 JWTs whose header carries the signing certificate (``x5c``),
which distribution verifies against ``rootcertbundle`` (the cert written at
start-up).  Note distribution allows 60 s of clock skew on ``exp``/``nbf``
(``LEEWAY``): a token stays usable upstream until ``exp + 60 s``, so
``expires_in`` (what the client is told) and ``lifetime`` (the JWT's own
``exp``) are separate knobs.

Plain standard library + ``cryptography``, threaded; no Twisted.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterable, Mapping
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["TokenServer", "TokenRequest", "parse_scope", "decode_token", "LEEWAY"]

# distribution's registry/auth/token: exp and nbf are checked with this much slack.
LEEWAY = 60


@dataclass
class TokenRequest:
    """One request the token server answered."""

    method: str
    path: str
    params: dict[str, list[str]]  # parsed query string
    user: str | None  # Basic user name as sent (even if the password was wrong)
    authenticated: bool  # a Basic user whose password matched
    status: int
    scopes: list[str] = field(default_factory=list)  # every scope, space-separated ones split

    @property
    def service(self) -> str | None:
        return (self.params.get("service") or [None])[0]


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """``"repository:foo/bar:pull,push"`` -> ``("repository", "foo/bar", ["pull", "push"])``.

    The name may itself contain ``:`` (a registry host with a port), so the
    type is before the first colon and the actions after the last.
    """
    type_, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not type_ or not name:
        raise ValueError(f"malformed scope {scope!r}")
    return type_, name, [a for a in actions.split(",") if a]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_token(token: str) -> tuple[dict, dict]:
    """(header, claims) of a JWT, without checking the signature (for assertions)."""
    head, claims, _sig = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(head))),
            json.loads(base64.urlsafe_b64decode(pad(claims))))


def libtrust_key_id(public_key) -> str:
    """docker/libtrust's key ID: base32 of the first 240 bits of sha256(DER SPKI), in 4-char groups.

    distribution looks a header ``kid`` up among the rootcertbundle's keys by this ID.
    """
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


def _rfc3339(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


Authorize = Callable[[str | None, str, str, list[str]], list[str]]


class TokenServer:
    """The token ("auth") service of the registry token spec, on a free loopback port.

    ``users``: ``{"alice": "secret"}``; when given, a wrong or unknown Basic
    credential gets 401, and a request without one is served as anonymous
    (pull only) if ``anonymous`` else refused with 401.  Without ``users``
    any Basic credential is accepted and everyone gets every action asked
    for (push too).  ``authorize(user, type, name, actions) -> actions``
    replaces that policy (``user`` is None for anonymous).

    ``expires_in``: seconds told to the client (None: leave the field out,
    clients then assume 60).  ``lifetime``: seconds from now to the JWT's
    ``exp`` (default ``expires_in``, or 60); may be negative, remember the
    registry's 60 s ``LEEWAY``.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        anonymous: bool = True,
        expires_in: int | None = 300,
        lifetime: int | None = None,
        service: str = "daomirror-upstream",
        issuer: str = "daomirror-test-token-issuer",
        authorize: Authorize | None = None,
    ) -> None:
        self.users = dict(users) if users is not None else None
        self.anonymous = anonymous
        self.expires_in = expires_in
        self.lifetime = lifetime
        self.service = service
        self.issuer = issuer
        self.authorize = authorize
        self._lock = threading.Lock()
        self._requests: list[TokenRequest] = []
        self._failure: tuple[int, bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="daomirror-tokens-")
        self.cert_path = os.path.join(self.dir, "token-ca.pem")
        self._make_key()

        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

            do_POST = do_GET  # answered 404: clients then fall back to GET (spec)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=f"tokenserver-{self.port}", daemon=True)
        self._thread.start()

    # -- keys and tokens -------------------------------------------------

    def _make_key(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.issuer)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))  # Go checks the validity period
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        with open(self.cert_path, "wb") as f:
            f.write(self.cert_pem)
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.key_id = libtrust_key_id(self._key.public_key())

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[dict]:
        """The ``access`` claim for ``scopes`` under this server's policy."""
        merged: dict[tuple[str, str], list[str]] = {}
        for scope in scopes:
            type_, name, actions = parse_scope(scope)
            if self.authorize is not None:
                allowed = list(self.authorize(user, type_, name, actions))
            elif user is None and self.users is not None:
                allowed = [a for a in actions if a == "pull"]
            else:
                allowed = actions
            got = merged.setdefault((type_, name), [])
            got.extend(a for a in allowed if a not in got)
        return [{"type": t, "name": n, "actions": a} for (t, n), a in merged.items()]

    def token(self, scopes: Iterable[str] = (), user: str | None = None, *,
              lifetime: int | None = None, x5c: bool = True, kid: bool = False) -> str:
        """Mint a signed token for ``scopes`` (e.g. ``["repository:foo:pull,push"]``).

        ``lifetime``: seconds to ``exp`` (default: the server's); a value
        below ``-LEEWAY`` gives a token the registry already refuses.
        ``x5c``/``kid`` choose how the header names the signing key.
        """
        if lifetime is None:
            lifetime = self.lifetime if self.lifetime is not None else (self.expires_in or 60)
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256"}
        if x5c:
            header["x5c"] = [self._x5c]
        if kid:
            header["kid"] = self.key_id
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": self.grant(user, scopes),
        }
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    # -- HTTP ------------------------------------------------------------

    def _basic_user(self, header: str | None) -> tuple[str | None, bool, bool]:
        """(user, authenticated, present) from an Authorization header."""
        if not header:
            return None, False, False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False, True
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False, True
        ok = self.users is None or self.users.get(user) == password
        return user, ok, True

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        url = urlsplit(h.path)
        params = parse_qs(url.query, keep_blank_values=True)
        scopes = [s for v in params.get("scope", []) for s in v.split()]
        user, ok, present = self._basic_user(h.headers.get("Authorization"))
        with self._lock:
            failure = self._failure

        if h.command != "GET" or url.path != "/token":
            status, body = 404, {"errors": [{"code": "NOT_FOUND", "message": "not found"}]}
        elif failure is not None:
            status, body = failure[0], failure[1]
        elif self.users is not None and (present and not ok or not present and not self.anonymous):
            status, body = 401, {"details": "incorrect username or password"}
        else:
            try:
                token = self.token(scopes, user if ok else None)
                status = 200
                body = {"token": token, "access_token": token, "issued_at": _rfc3339(time.time())}
                if self.expires_in is not None:
                    body["expires_in"] = self.expires_in
            except ValueError as e:
                status, body = 400, {"details": str(e)}

        with self._lock:
            self._requests.append(
                TokenRequest(h.command, url.path, params, user, ok, status, scopes))
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if status == 401:
            h.send_header("WWW-Authenticate", f'Basic realm="{self.url}/token"')
        h.end_headers()
        h.wfile.write(data)

    # -- test controls ---------------------------------------------------

    def fail_with(self, status: int | None,
                  body: bytes = b'{"details":"token service failure"}') -> None:
        """Answer every token request with ``status`` from now on; ``None`` clears it."""
        with self._lock:
            self._failure = None if status is None else (status, body)

    def clear_failure(self) -> None:
        self.fail_with(None)

    @property
    def requests(self) -> list[TokenRequest]:
        """Every request so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    def count(self, scope: str | None = None, user: str | None = None,
              status: int | None = None) -> int:
        """How many /token requests asked for ``scope``, came from ``user``, got ``status``."""
        return sum(
            1 for r in self.requests
            if r.path == "/token"
            and (scope is None or scope in r.scopes)
            and (user is None or r.user == user)
            and (status is None or r.status == status)
        )

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- wiring ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    def registry_config(self) -> dict:
        """Merge over the registry config: ``UpstreamRegistry(config=ts.registry_config())``."""
        return {"auth": {"token": {"realm": self.realm, "service": self.service,
                                   "issuer": self.issuer, "rootcertbundle": self.cert_path}}}

    def stop(self) -> None:
        """Stop serving and delete the certificate (idempotent)."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "TokenServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TokenServer {self.url} service={self.service!r}>"
