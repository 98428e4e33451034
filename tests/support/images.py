"""Build small, real, runnable images and push them to a registry over HTTP.

Why: tests of a mirror need images that real clients (dockerd, containerd,
podman, skopeo) accept and can run, in every shape the mirror must handle:
Docker schema2 or OCI, single-platform or a multi-platform list/index,
nested repository names, and big incompressible layers.  No internet, so
the base layer is made from the host's statically linked /bin/busybox.

Everything is deterministic: the same arguments give the same digests.
Pushing uses only http.client (monolithic upload: POST then PUT ?digest=).
"""

from __future__ import annotations

import atexit
import gzip
import hashlib
import http.client
import json
import os
import random
import ssl
import shutil
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Mapping, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

__all__ = [
    "BlobInfo",
    "ManifestInfo",
    "ImageInfo",
    "PushError",
    "push_image",
    "busybox_layer",
    "random_layer",
    "clear_layer_cache",
    "MEDIA_TYPES",
]

BUSYBOX = "/bin/busybox"
BUSYBOX_APPLETS = (
    "sh", "echo", "cat", "ls", "true", "false", "sleep", "env", "id", "uname",
    "wc", "head", "tail", "sha256sum", "md5sum", "mkdir", "rm", "cp", "mv",
    "pwd", "test", "grep", "hostname", "date", "du", "df", "ps", "find",
)

MEDIA_TYPES = {
    "docker": {
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    },
    "oci": {
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "index": "application/vnd.oci.image.index.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
    },
}

# Sent on every push request, so access logs can tell pushes from pulls.
USER_AGENT = "daomirror-tests-push/1"

_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PushError(RuntimeError):
    """The registry refused part of a push."""


@dataclass(frozen=True)
class BlobInfo:
    """A blob as referenced by a manifest."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Layer:
    """A built layer on disk: the gzip'd tar at ``path``."""

    path: str
    digest: str  # sha256 of the compressed blob
    size: int  # bytes of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()


@dataclass
class ManifestInfo:
    """One platform's image manifest."""

    platform: str  # "linux/amd64", "linux/arm64/v8", ...
    os: str
    architecture: str
    variant: str | None
    digest: str
    media_type: str
    size: int
    config: BlobInfo
    layers: list[BlobInfo]
    raw: bytes = field(repr=False)

    @property
    def blobs(self) -> set[str]:
        """Digests of the config and layer blobs."""
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def blob_bytes(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)


@dataclass
class ImageInfo:
    """What ``push_image`` pushed; ``digest`` is what ``tag`` points to."""

    repo: str
    tag: str
    digest: str
    media_type: str
    manifests: list[ManifestInfo]
    blobs: set[str]  # every config and layer digest, all platforms
    total_blob_bytes: int  # sum of the sizes of ``blobs`` (each counted once)
    blob_sizes: dict[str, int]
    registry_url: str
    raw: bytes = field(repr=False)  # the tagged manifest (or list/index) bytes

    @property
    def ref(self) -> str:
        """``repo:tag``, e.g. ``library/busybox:latest``."""
        return f"{self.repo}:{self.tag}"

    @property
    def is_index(self) -> bool:
        return self.media_type in (MEDIA_TYPES["docker"]["index"], MEDIA_TYPES["oci"]["index"])

    def manifest_for(self, architecture: str) -> ManifestInfo:
        """The manifest for an architecture ("amd64") or platform ("linux/arm64/v8")."""
        for m in self.manifests:
            if architecture in (m.architecture, m.platform):
                return m
        raise KeyError(architecture)

    @property
    def manifest_digests(self) -> set[str]:
        """Every manifest digest: the tagged one and per-platform ones."""
        return {self.digest, *(m.digest for m in self.manifests)}


# -- layer building (cached on disk for the life of the process) -------------

_cache_lock = threading.Lock()
_cache: dict[tuple, Layer] = {}
_cache_dir: str | None = None


def _layer_dir() -> str:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = tempfile.mkdtemp(prefix="daomirror-layers-")
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def clear_layer_cache() -> None:
    """Delete the built layers (big random layers add up over a long session)."""
    global _cache_dir
    with _cache_lock:
        _cache.clear()
        if _cache_dir is not None:
            shutil.rmtree(_cache_dir, ignore_errors=True)
            _cache_dir = None


class _HashingWriter:
    """File-like sink that hashes and counts what passes through it."""

    def __init__(self, raw) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.raw.write(data)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _tarinfo(name: str, type_=tarfile.REGTYPE, mode=0o644, size=0, linkname="") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _build_layer(key: tuple, fill, compresslevel: int) -> Layer:
    """Write a gzip'd tar whose members ``fill(tar)`` adds; cache it under ``key``."""
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        fd, path = tempfile.mkstemp(suffix=".tar.gz", dir=_layer_dir())
        with os.fdopen(fd, "wb") as out:
            blob = _HashingWriter(out)
            # filename="" and mtime=0 keep the gzip header deterministic.
            with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0,
                               compresslevel=compresslevel) as gz:
                diff = _HashingWriter(gz)
                with tarfile.open(fileobj=diff, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    fill(tar)
        layer = Layer(path=path, digest=blob.digest, size=blob.size, diff_id=diff.digest)
        _cache[key] = layer
        return layer


def busybox_layer() -> Layer:
    """A runnable rootfs: bin/busybox plus applet symlinks (bin/sh -> busybox, ...)."""
    st = os.stat(BUSYBOX)

    def fill(tar: tarfile.TarFile) -> None:
        for d in ("bin", "etc", "tmp"):
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        with open(BUSYBOX, "rb") as f:
            tar.addfile(_tarinfo("bin/busybox", mode=0o755, size=st.st_size), f)
        for applet in BUSYBOX_APPLETS:
            tar.addfile(_tarinfo(f"bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        tar.addfile(_tarinfo("etc/daomirror-test-image", size=0))

    return _build_layer(("busybox", st.st_size, st.st_mtime_ns), fill, 6)


class _RandomReader:
    """``size`` bytes of seeded pseudo-random data, read in chunks."""

    def __init__(self, seed: str, size: int) -> None:
        self.rng = random.Random(seed)
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.left:
            n = self.left
        self.left -= n
        return self.rng.randbytes(n)


def random_layer(size: int, seed: str | int = 0) -> Layer:
    """A layer with one file of ``size`` incompressible bytes (blob is slightly larger)."""
    seed = str(seed)

    def fill(tar: tarfile.TarFile) -> None:
        tar.addfile(_tarinfo("data", tarfile.DIRTYPE, 0o755))
        name = "data/" + hashlib.sha256(seed.encode()).hexdigest()[:16] + ".bin"
        tar.addfile(_tarinfo(name, size=size), _RandomReader(seed, size))

    # Level 0 (stored deflate blocks): random data does not compress, so
    # don't spend time trying; it is still a valid gzip stream.
    return _build_layer(("random", seed, size), fill, 0)


# -- pushing -------------------------------------------------------------------


class _Registry:
    """A tiny registry API client over http.client (one connection, reused)."""

    def __init__(self, url: str, authorization: str | None, timeout: float) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme or "http"
        self.netloc = parts.netloc
        self.base = f"{self.scheme}://{self.netloc}"
        self.authorization = authorization
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        if self.scheme == "https":  # test registries have self-signed certificates
            return http.client.HTTPSConnection(self.netloc, timeout=self.timeout,
                                               context=ssl._create_unverified_context())
        return http.client.HTTPConnection(self.netloc, timeout=self.timeout)

    def request(self, method: str, target: str, body=None, headers: Mapping[str, str] = {}):
        """Return (status, headers, body bytes); ``target`` is a path or absolute URL."""
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            if parts.netloc != self.netloc:
                raise PushError(f"registry redirected to another host: {target}")
            target = parts.path + ("?" + parts.query if parts.query else "")
        hdrs = {"User-Agent": USER_AGENT, **headers}
        if self.authorization:
            hdrs.setdefault("Authorization", self.authorization)
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self._connect()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                self.conn.request(method, target, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, resp.headers, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server closed: retry once on a new one.
                self.conn.close()
                self.conn = None
                if attempt:
                    raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _fail(self, what: str, status: int, body: bytes) -> PushError:
        return PushError(f"{what} at {self.base}: HTTP {status}: {body[:500]!r}")

    def has_blob(self, repo: str, digest: str) -> bool:
        status, _, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return status == 200

    def push_blob(self, repo: str, digest: str, size: int, body) -> None:
        """Monolithic upload: POST /blobs/uploads/, then PUT <location>?digest=."""
        if self.has_blob(repo, digest):
            return
        status, headers, data = self.request("POST", f"/v2/{repo}/blobs/uploads/",
                                             headers={"Content-Length": "0"})
        if status != 202 or not headers.get("Location"):
            raise self._fail(f"starting upload of {digest} to {repo}", status, data)
        location = urljoin(self.base + "/", headers["Location"])
        sep = "&" if "?" in location else "?"
        location += sep + urlencode({"digest": digest})
        status, headers, data = self.request(
            "PUT", location, body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if status != 201:
            raise self._fail(f"uploading blob {digest} to {repo}", status, data)

    def push_manifest(self, repo: str, reference: str, media_type: str, raw: bytes) -> str:
        status, headers, data = self.request(
            "PUT", f"/v2/{repo}/manifests/{reference}", body=raw,
            headers={"Content-Type": media_type, "Content-Length": str(len(raw))},
        )
        if status != 201:
            raise self._fail(f"putting manifest {repo}:{reference}", status, data)
        digest = _sha256(raw)
        got = headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise PushError(f"registry says manifest digest is {got}, we computed {digest}")
        return digest


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dumps(obj) -> bytes:
    return json.dumps(obj, indent=3, sort_keys=False).encode()


def _parse_platform(p: str) -> tuple[str, str, str | None]:
    """"amd64" | "linux/arm64" | "linux/arm64/v8" -> (os, arch, variant)."""
    parts = p.split("/")
    if len(parts) == 1:
        os_, arch, variant = "linux", parts[0], None
    elif len(parts) == 2:
        (os_, arch), variant = parts, None
    else:
        os_, arch, variant = parts[0], parts[1], parts[2]
    if arch == "arm64" and variant is None:
        variant = "v8"
    return os_, arch, variant


def push_image(
    registry_url: str,
    repo: str,
    tag: str,
    *,
    extra_layers: Sequence[int] = (),
    platforms: Sequence[str] = ("amd64",),
    oci: bool = False,
    seed: int | str = 0,
    index: bool | None = None,
    share_layers: bool = False,
    authorization: str | None = None,
    timeout: float = 120.0,
) -> ImageInfo:
    """Build and push ``repo:tag`` to ``registry_url`` ("http://127.0.0.1:PORT").

    Layers: the busybox rootfs, then one layer per ``extra_layers`` entry,
    each holding that many seeded random bytes.  ``platforms`` are
    architectures ("amd64", "arm64") or "os/arch[/variant]"; with more than
    one (or ``index=True``), one manifest per platform is pushed by digest
    and a manifest list (OCI: image index) is tagged.  The busybox layer
    is shared by all platforms (it holds the host's x86-64 binary); extra
    layers differ per platform unless ``share_layers``.  ``repo`` and
    ``seed`` go into the config, and ``seed`` into the extra layers, so a
    new seed (or repo) gives a new image digest; the same arguments always
    give the same digests.
    ``authorization`` is sent as the Authorization header (e.g. "Bearer ...").
    """
    if isinstance(platforms, str):
        platforms = (platforms,)
    if not platforms:
        raise ValueError("need at least one platform")
    types = MEDIA_TYPES["oci" if oci else "docker"]
    make_index = len(platforms) > 1 if index is None else index
    reg = _Registry(registry_url, authorization, timeout)
    try:
        base = busybox_layer()
        manifests: list[ManifestInfo] = []
        for platform in platforms:
            os_, arch, variant = _parse_platform(platform)
            layers = [base]
            for i, size in enumerate(extra_layers):
                salt = "" if share_layers else f"/{os_}/{arch}/{variant or ''}"
                layers.append(random_layer(int(size), f"{seed}/{i}{salt}"))
            for layer in layers:
                with open(layer.path, "rb") as f:
                    reg.push_blob(repo, layer.digest, layer.size, f)
            config = {
                "architecture": arch,
                "os": os_,
                **({"variant": variant} if variant else {}),
                "created": "1970-01-01T00:00:00Z",
                "config": {
                    "Env": [_PATH_ENV],
                    "Cmd": ["/bin/sh"],
                    # The repo makes images in different repos distinct (as in
                    # real life) while sharing the busybox base layer.
                    "Labels": {"daomirror.test.repo": repo, "daomirror.test.seed": str(seed)},
                },
                "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
                "history": [
                    {"created": "1970-01-01T00:00:00Z",
                     "created_by": "daomirror tests: busybox rootfs" if n == 0
                     else f"daomirror tests: {extra_layers[n - 1]} random bytes"}
                    for n in range(len(layers))
                ],
            }
            config_raw = _dumps(config)
            config_blob = BlobInfo(_sha256(config_raw), len(config_raw), types["config"])
            reg.push_blob(repo, config_blob.digest, config_blob.size, config_raw)
            layer_blobs = [BlobInfo(layer.digest, layer.size, types["layer"]) for layer in layers]
            manifest = {
                "schemaVersion": 2,
                "mediaType": types["manifest"],
                "config": _descriptor(config_blob),
                "layers": [_descriptor(b) for b in layer_blobs],
            }
            raw = _dumps(manifest)
            digest = _sha256(raw)
            if not make_index:
                reg.push_manifest(repo, tag, types["manifest"], raw)
            else:
                reg.push_manifest(repo, digest, types["manifest"], raw)
            manifests.append(ManifestInfo(
                platform="/".join(x for x in (os_, arch, variant) if x),
                os=os_, architecture=arch, variant=variant, digest=digest,
                media_type=types["manifest"], size=len(raw),
                config=config_blob, layers=layer_blobs, raw=raw,
            ))

        if make_index:
            index_doc = {
                "schemaVersion": 2,
                "mediaType": types["index"],
                "manifests": [
                    {
                        "mediaType": m.media_type,
                        "digest": m.digest,
                        "size": m.size,
                        "platform": {
                            "architecture": m.architecture,
                            "os": m.os,
                            **({"variant": m.variant} if m.variant else {}),
                        },
                    }
                    for m in manifests
                ],
            }
            top_raw = _dumps(index_doc)
            top_digest = reg.push_manifest(repo, tag, types["index"], top_raw)
            top_type = types["index"]
        else:
            top_raw, top_digest, top_type = manifests[0].raw, manifests[0].digest, types["manifest"]
    finally:
        reg.close()

    sizes: dict[str, int] = {}
    for m in manifests:
        sizes[m.config.digest] = m.config.size
        for layer in m.layers:
            sizes[layer.digest] = layer.size
    return ImageInfo(
        repo=repo, tag=tag, digest=top_digest, media_type=top_type,
        manifests=manifests, blobs=set(sizes), total_blob_bytes=sum(sizes.values()),
        blob_sizes=sizes, registry_url=registry_url, raw=top_raw,
    )


def _descriptor(blob: BlobInfo) -> dict:
    return {"mediaType": blob.media_type, "size": blob.size, "digest": blob.digest}
