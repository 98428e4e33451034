"""
The caching policy: what is served from storage, what is asked of upstream,
and what is filled from upstream into storage.

- Content addressed by digest (blobs, manifests by digest) never changes: once
  stored and known in a repository it is served without asking upstream.
- A tag is served from storage for C{[cache] tag_ttl} after it was fetched or
  revalidated; after that it is revalidated upstream with a C{HEAD}, and only
  a changed digest costs a C{GET}. When upstream is in trouble a cached tag is
  served anyway; only an upstream 404 ends its life (DESIGN.md invariant 7).
- A blob miss starts one L{Fill}; every request for that blob while it runs
  joins it. When storage cannot take the blob, each request gets it from
  upstream through a L{PassThrough}, verified but stored nowhere.
"""

import json
import time
from dataclasses import dataclass
from typing import Callable

from twisted.internet.defer import DeferredList
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from . import errors, heap, keys
from .fill import Fill, FillFailed
from .lru import LRU
from .manifests import NotAManifest, digested_bytes, media_type_of
from .passthrough import PassThrough
from .reference import Digest, InvalidReference, parse_digest, sha256_of
from .singleflight import SingleFlight
from .upstream import MANIFEST_TYPES

MANIFESTS_IN_MEMORY = 512
MANIFEST_SIZE_IN_MEMORY = 64 * 1024  # larger ones (rare) are read from storage each time
TAGS_IN_MEMORY = 4096
LINKS_IN_MEMORY = 16384

# Upstream troubles during which a cached tag is still served: rate limits,
# unreachable / 5xx / refused credentials / token service down (502), timeouts.
_STALE_OK_STATUSES = {429, 502, 504}

log = Logger()


@dataclass(frozen=True)
class Manifest:
    body: bytes
    media_type: str
    digest: Digest

    @property
    def size(self):
        return len(self.body)


@dataclass(frozen=True)
class _RunningFill:
    name: str  # the repository the blob is being fetched for
    fill: Fill


@dataclass(frozen=True)
class Blob:
    """
    A blob ready to be sent: C{stream(consumer, start, end)} writes that
    range and returns a Deferred that fires when it is written.
    """

    digest: Digest
    size: int
    stream: Callable
    drop: Callable = lambda: None  # when it is not streamed after all


def acceptable(media_type, accept):
    """
    Whether a client whose C{Accept} values are C{accept} takes C{media_type};
    no C{Accept} header at all (None) takes anything.
    """
    return accept is None or media_type.split(";")[0].strip().lower() in accept or "*/*" in accept


class Mirror:
    def __init__(self, storage, upstream, reactor, tag_ttl=300.0, clock=time.time):
        self._storage = storage
        self._upstream = upstream
        self._reactor = reactor
        self._tag_ttl = tag_ttl
        self._clock = clock
        self._fills = {}
        self._give_back = heap.GiveBackWhenQuiet(reactor, busy=lambda: bool(self._fills))
        self._starting = SingleFlight()
        self._manifests = SingleFlight()
        # Manifests never change under their digest, and this process is
        # the only writer of tag records: both may be kept in memory.
        self._manifest_memory = LRU(MANIFESTS_IN_MEMORY)
        self._tag_memory = LRU(TAGS_IN_MEMORY)
        self._link_memory = LRU(LINKS_IN_MEMORY)  # (name, digest) known to be linked

    def check_storage(self):
        """
        Raise OSError unless storage can be used now.
        """
        self._storage.check()

    # Manifests

    async def manifest(self, name, reference, accept):
        """
        The manifest for C{reference} (a tag or a L{Digest}) in C{name}.
        Concurrent requests for the same thing share one upstream request.
        """
        if isinstance(reference, Digest):
            cached = await self._linked_manifest(name, reference)
            if cached is not None and acceptable(cached.media_type, accept):
                return cached
            return await self._manifests.run(
                (name, reference, accept), lambda: self._fetch_by_digest(name, reference, accept))
        record = await self._tag_record(name, reference)
        cached = _pick(record, accept)
        if cached is not None and self._clock() - cached["fetched"] < self._tag_ttl:
            manifest = await self._stored_manifest(parse_digest(cached["digest"]))
            if manifest is not None:
                return manifest
        return await self._manifests.run(
            (name, reference, accept), lambda: self._refresh_tag(name, reference, accept))

    async def _linked_manifest(self, name, digest):
        if await self._storage.stat(keys.manifest_link(name, digest)) is None:
            return None
        return await self._stored_manifest(digest)

    async def _fetch_by_digest(self, name, digest, accept):
        fetched = await self._upstream.manifest(name, str(digest), accept or MANIFEST_TYPES)
        media_type = _media_type(fetched)
        if not digest.matches(_digested(fetched.body, media_type)):
            raise errors.unavailable(f"upstream sent a manifest that does not match {digest}")
        manifest = Manifest(fetched.body, media_type, digest)
        await self._store_manifest(name, manifest)
        return _acceptable_or_404(manifest, accept)

    async def _refresh_tag(self, name, tag, accept):
        """
        Ask upstream what C{tag} is now. When upstream is in trouble a cached
        representation is served anyway; an upstream 404 ends its life.
        """
        record = await self._tag_record(name, tag)
        cached = _pick(record, accept)
        try:
            manifest = await self._revalidate(name, tag, accept, record, cached is not None)
        except errors.RegistryError as e:
            if e.status == 404:
                self._tag_memory.discard((name, tag))
                await self._storage.delete(keys.tag(name, tag))
                raise
            if cached is None or e.status not in _STALE_OK_STATUSES:
                raise
            manifest = await self._stored_manifest(parse_digest(cached["digest"]))
            if manifest is None:
                raise
            log.warn("serving cached {name}:{tag} because upstream failed: {why}",
                     name=name, tag=tag, why=e.detail or e.message)
            return manifest
        # Checked only now: a 404 of our own (the client refuses what upstream
        # has) must not end the tag's cached life the way upstream's 404 does.
        return _acceptable_or_404(manifest, accept)

    async def _revalidate(self, name, tag, accept, record, head_first):
        """
        What upstream says C{tag} is now. A C{HEAD} first when something is
        cached: an unchanged digest costs nothing more (Docker Hub does not
        count HEADs against its pull limit).
        """
        if head_first:
            head = await self._upstream.manifest(name, tag, accept, method="HEAD")
            cached = record["representations"].get(head.media_type.strip())
            if cached is not None and head.digest == cached["digest"]:
                manifest = await self._stored_manifest(parse_digest(cached["digest"]))
                if manifest is not None:
                    await self._remember_tag(name, tag, record, manifest)
                    return manifest
        fetched = await self._upstream.manifest(name, tag, accept)
        media_type = _media_type(fetched)
        manifest = Manifest(fetched.body, media_type, _verified_digest(fetched, media_type))
        await self._store_manifest(name, manifest)
        await self._remember_tag(name, tag, record, manifest)
        return manifest

    async def _tag_record(self, name, tag):
        """
        What is known of C{tag}; a copy, so that callers may change it.
        """
        remembered = self._tag_memory.get((name, tag))
        if remembered is not None:
            return json.loads(remembered)
        raw = await self._storage.get(keys.tag(name, tag))
        if raw is None:
            return {"representations": {}}
        try:
            record = json.loads(raw)
        except ValueError:
            log.warn("ignoring a damaged tag record for {name}:{tag}", name=name, tag=tag)
            return {"representations": {}}
        self._tag_memory.put((name, tag), raw)
        return record

    async def _remember_tag(self, name, tag, record, manifest):
        """
        Record what C{tag} is as of now: its freshness window starts again.
        """
        record["representations"][manifest.media_type] = {
            "digest": str(manifest.digest),
            "mediaType": manifest.media_type,
            "fetched": self._clock(),
        }
        raw = json.dumps(record).encode()
        self._tag_memory.put((name, tag), raw)
        try:
            await self._storage.put(keys.tag(name, tag), raw)
        except OSError as e:
            log.warn("could not record tag {name}:{tag}: {why}", name=name, tag=tag, why=e)

    async def _stored_manifest(self, digest):
        manifest = self._manifest_memory.get(digest)
        if manifest is not None:
            return manifest
        body = await self._storage.get(keys.manifest(digest))
        media_type = await self._storage.get(keys.manifest_media_type(digest))
        if body is None or media_type is None:
            return None
        manifest = Manifest(body, media_type.decode(), digest)
        if len(body) <= MANIFEST_SIZE_IN_MEMORY:
            self._manifest_memory.put(digest, manifest)
        return manifest

    async def _store_manifest(self, name, manifest):
        """
        Keep a manifest whose digest the caller has verified; the type record
        goes first, so a manifest is never visible without its type. When
        storage fails the manifest is still served, just not cached.
        """
        try:
            if await self._storage.stat(keys.manifest(manifest.digest)) is None:
                await self._storage.put(keys.manifest_media_type(manifest.digest), manifest.media_type.encode())
                await self._storage.put(keys.manifest(manifest.digest), manifest.body)
            await self._storage.put(keys.manifest_link(name, manifest.digest), b"")
        except OSError as e:
            log.warn("could not cache manifest {digest}: {why}", digest=str(manifest.digest), why=e)

    # Blobs

    async def blob(self, name, digest):
        """
        The blob C{digest} of C{name}: from storage, or from a fill that is
        running or that this call starts.
        """
        size = await self._storage.stat(keys.blob(digest))
        if size is not None:
            await self._confirm(name, digest)
            key = keys.blob(digest)
            return Blob(digest, size, lambda consumer, start, end: self._storage.produce(key, consumer, start, end))
        running = self._fills.get(digest)
        if running is None:
            try:
                running = await self._starting.run((name, digest), lambda: self._start_fill(name, digest))
            except _StorageRefused as e:
                return await self._pass_through(name, digest, e)
        await self._confirm(name, digest, running)
        fill = running.fill
        if fill.size is None:
            try:
                await fill.wait_verified()
            except FillFailed as e:
                raise errors.unavailable(str(e)) from None
        return Blob(digest, fill.size, fill.attach)

    async def blob_size(self, name, digest):
        """
        The size of blob C{digest} in C{name}, without downloading it.
        """
        size = await self._storage.stat(keys.blob(digest))
        running = self._fills.get(digest)
        if size is None and running is not None and running.fill.size is not None:
            size = running.fill.size
        if size is not None:
            await self._confirm(name, digest, running)
            return size
        size = await self._upstream.blob_size(name, digest)
        if size is None:
            raise errors.unavailable(f"upstream gave no length for {digest}")
        return size

    async def _confirm(self, name, digest, running=None):
        """
        Make sure the blob may be served in C{name}: it was fetched for
        C{name} (by a fill still running, or as its link record says), or
        upstream confirms now (a C{HEAD}) that C{name} has it too. The bytes
        are stored once; only this link is per repository (DESIGN.md
        invariant 3).
        """
        running = running or self._fills.get(digest)
        if (running is not None and running.name == name) or self._link_memory.get((name, digest)):
            return
        if await self._storage.stat(keys.blob_link(name, digest)) is None:
            await self._upstream.blob_size(name, digest)  # raises a 404 if name lacks it
            await self._storage.put(keys.blob_link(name, digest), b"")
        self._link_memory.put((name, digest), True)

    async def _start_fill(self, name, digest):
        """
        Ask upstream for the blob and start filling it. Requests for one
        blob under two repositories may race here: the second to get its
        answer drops it and joins the running fill (its own upstream 200
        confirmed the blob in its repository).
        """
        response = await self._upstream.blob(name, digest)
        running = self._fills.get(digest)
        if running is not None:
            response.deliverBody(_Dropped())
            await self._storage.put(keys.blob_link(name, digest), b"")
            return _RunningFill(name, running.fill)
        size = response.length if isinstance(response.length, int) else None
        try:
            writer = self._storage.open_writer(keys.blob(digest), digest)
        except OSError as e:
            response.deliverBody(_Dropped())  # else its connection stays paused for good
            raise _StorageRefused(e) from None
        fill = Fill(digest, size, writer, self._reactor, self._upstream.idle_timeout)
        running = self._fills[digest] = _RunningFill(name, fill)
        fill.done.addCallback(self._fill_finished, name, digest)
        fill.start(response)
        return running

    async def _pass_through(self, name, digest, why):
        """
        Storage cannot take C{digest}: serve it from upstream, uncached, to
        this request alone (each request makes its own upstream GET).
        """
        log.warn("storage cannot take {digest} ({why}): serving it from upstream uncached",
                 digest=str(digest), why=why)
        response = await self._upstream.blob(name, digest)
        if not isinstance(response.length, int):
            response.deliverBody(_Dropped())
            raise errors.storage_unavailable(f"cannot store {digest}, and the upstream gives no length: {why}")

        def stream(consumer, start, end):
            relay = PassThrough(digest, response.length, consumer, start, end, self._reactor,
                                self._upstream.idle_timeout)
            response.deliverBody(relay)
            return relay.done

        return Blob(digest, response.length, stream, drop=lambda: response.deliverBody(_Dropped()))

    def _fill_finished(self, committed, name, digest):
        """
        Record the repository the blob was fetched for, then forget the fill
        (in that order, so that there is no moment when neither says so).
        """
        self._give_back.transfer_ended()
        if not committed:
            del self._fills[digest]
            return None
        linked = self._storage.put(keys.blob_link(name, digest), b"")
        linked.addErrback(lambda f: log.warn("could not link {digest} to {name}: {why}",
                                             digest=str(digest), name=name, why=f.value))
        return linked.addCallback(lambda _: self._fills.pop(digest, None))

    def close(self):
        """
        Stop for shutdown: transfers still downloading are abandoned (nothing
        of them is committed), verified ones are given time to commit.
        """
        self._give_back.stop()
        for running in list(self._fills.values()):
            running.fill.cancel()
        return DeferredList([running.fill.done for running in self._fills.values()])

    # Tags

    async def tags(self, name, query):
        return await self._upstream.tags(name, query)


class _StorageRefused(Exception):
    """
    Storage could not open a writer for a blob (the reason is the argument).
    """


class _Dropped(Protocol):
    """
    Takes a response body nobody needs and closes it.
    """

    def connectionMade(self):
        self.transport.stopProducing()


def _pick(record, accept):
    """
    A cached representation of a tag that the client accepts, if any.
    """
    for representation in record["representations"].values():
        if acceptable(representation["mediaType"], accept):
            return representation
    return None


def _media_type(fetched):
    try:
        return media_type_of(fetched.media_type, fetched.body)
    except NotAManifest as e:
        raise errors.unavailable(f"upstream manifest: {e}") from None


def _digested(body, media_type):
    try:
        return digested_bytes(body, media_type)
    except NotAManifest as e:
        raise errors.unavailable(f"upstream sent something that is not a manifest: {e}") from None


def _acceptable_or_404(manifest, accept):
    """
    Never answer with a media type the client's Accept excludes, whatever
    the upstream sent (DESIGN.md, "Manifests and Accept").
    """
    if not acceptable(manifest.media_type, accept):
        raise errors.manifest_not_acceptable(manifest.media_type)
    return manifest


def _verified_digest(fetched, media_type) -> Digest:
    """
    The digest of a manifest fetched by tag: the upstream's
    Docker-Content-Digest when it sent one and the bytes match it, else their
    sha256.
    """
    digested = _digested(fetched.body, media_type)
    if fetched.digest:
        try:
            claimed = parse_digest(fetched.digest)
        except InvalidReference:
            raise errors.unavailable(f"upstream sent an invalid Docker-Content-Digest {fetched.digest[:80]!r}")
        if not claimed.matches(digested):
            raise errors.unavailable(f"upstream manifest does not match its Docker-Content-Digest {claimed}")
        return claimed
    return sha256_of(digested)
