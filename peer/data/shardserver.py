"""Shards between peers: serve cached shards over hivemind P2P, announce them, fetch them.

A peer that has a shard cached serves it to others (``ShardServer``) and says so in the DHT
(``CacheAnnouncer``: one bitmap per peer under ``caches_key``), so newcomers on home links pull
shards from many peers instead of all from the coordinator. ``PeerShardSources`` turns the
announcements into an ordered list of sources for one shard: peers that never sent a bad copy
first, ranked by a hash of (peer, shard) so that the load spreads evenly and every downloader
ranks the same way; peers that did, last; peers that sent ``MAX_BAD_COPIES``, never again.

What comes back is unverified: ``ShardCache.fetch`` checks the sha256 against the manifest and
discards a bad copy. Every read has a size cap and every network wait a deadline; a serving peer
limits concurrent uploads (``FETCH_BUSY``) so its own averaging traffic is not starved, and in a
closed run serves members only (``FETCH_REFUSED``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from barnraise.coordinator import records
from barnraise.coordinator.errors import BarnraiseError, PeerUnavailable, ProtocolError
from barnraise.peer.data.leasing import dht_alive
from barnraise.peer.data.shards import ShardCache, ShardSourceRef
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.protos import manifest_pb2, shards_pb2

log = logging.getLogger(__name__)

SHARD_HANDLER = "barnraise.shard"
CHUNK_BYTES = 1 << 20  # shard data frames carry at most this much
CONNECT_TIMEOUT_S = 10.0  # opening a stream to a peer
REPLY_TIMEOUT_S = 10.0  # the serving peer's answer to a request
MIN_RATE_BYTES_S = 128 * 1024  # slowest transfer tolerated: 1 Mbit/s, beyond which we try another source
MAX_REQUEST_BYTES = 4096  # a request is a run id, a digest and a signed membership token (<= 1 KiB)
MAX_REPLY_BYTES = 1024  # a status, a size and a refusal reason
MAX_BAD_COPIES = 3  # a peer that served this many bad copies is not asked again
SHARD = rpc.Method(
    name=SHARD_HANDLER,
    request=shards_pb2.ShardFetchRequest,
    max_request_bytes=MAX_REQUEST_BYTES,
    refusal=lambda why: shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_REFUSED, reason=why),
    request_timeout_s=REPLY_TIMEOUT_S,
    reply_timeout_s=REPLY_TIMEOUT_S,
)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How this peer serves and announces its cached shards."""

    # concurrent shard uploads; more requests get FETCH_BUSY and try the next holder. One: on a home
    # uplink two uploads at once each take twice as long, while another holder's uplink sits idle
    max_uploads: int = 1
    announce_every_s: float = 10.0  # seconds between cache announcements (and right after a change)

    def __post_init__(self) -> None:
        if self.max_uploads < 1:
            raise ValueError(f"max_uploads must be at least 1, got {self.max_uploads}")
        if self.announce_every_s <= 0:
            raise ValueError(f"announce_every_s must be positive, got {self.announce_every_s}")

    @property
    def announce_ttl_s(self) -> float:
        """Seconds an announcement lives: three periods, so a departed peer drops out soon."""
        return 3 * self.announce_every_s


def transfer_timeout_s(size_bytes: int) -> float:
    """Deadline for a whole shard transfer: fixed overhead plus the size at the slowest rate tolerated."""
    return CONNECT_TIMEOUT_S + REPLY_TIMEOUT_S + size_bytes / MIN_RATE_BYTES_S


# --- bitmaps ----------------------------------------------------------------------------------------


def encode_bitmap(indices: set[int], n_shards: int) -> bytes:
    out = bytearray((n_shards + 7) // 8)
    for i in indices:
        if 0 <= i < n_shards:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def decode_bitmap(bitmap: bytes, n_shards: int) -> set[int]:
    return {i for i in range(n_shards) if bitmap[i // 8] >> (i % 8) & 1}


def parse_announcements(raw: dict[str, bytes], n_shards: int) -> dict[str, set[int]]:
    """peer id -> shard indices it announces, from untrusted (subkey -> bytes) records."""

    def problem(a: shards_pb2.CacheAnnouncement, subkey: str) -> str | None:
        if not a.peer_id or a.peer_id != subkey or len(a.peer_id) > 128:
            return "peer id missing or differs from its subkey"
        if a.n_shards != n_shards or len(a.bitmap) != (n_shards + 7) // 8:
            return f"bitmap for {a.n_shards} shards, run has {n_shards}"
        return None

    out = {}
    for subkey, data in raw.items():
        a = records.parse_record(data, shards_pb2.CacheAnnouncement, lambda m, s=subkey: problem(m, s))
        if a is not None:
            out[a.peer_id] = decode_bitmap(a.bitmap, n_shards)
    return out


# --- serving ----------------------------------------------------------------------------------------


class ShardServer:
    """Serves verified shards from this peer's cache to other peers."""

    # tests only, installed from outside (peer/injection.py): True while what is served must be corrupted
    corrupt: Callable[[], bool] | None = None

    def __init__(
        self,
        p2p,
        cache: ShardCache,
        manifest: manifest_pb2.RunManifest,
        cfg: ServeConfig,
        *,
        auth: PeerAuth | OpenRun,
    ):
        self.p2p = p2p
        self.auth = auth  # who may fetch our shards (OPEN_RUN: anyone)
        self.cache = cache
        self.run_id = manifest.run_id
        self.shards = {s.sha256: s for s in manifest.shards}
        self.cfg = cfg
        self.active = 0  # uploads in progress (touched only on the P2P loop)
        self.served = 0  # shards served whole

    async def register(self) -> None:
        await rpc.serve(self.p2p, SHARD, self._serve, access=self.auth)

    async def _serve(
        self, stream: rpc.Stream, req: shards_pb2.ShardFetchRequest
    ) -> shards_pb2.ShardFetchReply | None:
        """A member's request, once ``rpc.serve`` has checked its membership: a reply, then the shard."""
        info = self.shards.get(req.sha256)
        if req.run_id != self.run_id:
            return shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_WRONG_RUN)
        if info is None:
            return shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_NOT_FOUND)
        if self.active >= self.cfg.max_uploads:
            return shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_BUSY)
        self.active += 1
        try:
            return await self._send(stream, info)
        finally:
            self.active -= 1

    async def _send(
        self, stream: rpc.Stream, info: manifest_pb2.ShardInfo
    ) -> shards_pb2.ShardFetchReply | None:
        data = await asyncio.to_thread(self.cache.load, info)  # re-verified: a rotten file is never served
        if data is None:
            return shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_NOT_FOUND)
        if self.corrupt is not None and self.corrupt():
            data = bytes(b ^ 0x5A for b in data[:64]) + data[64:]
        reply = shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_OK, total_bytes=len(data))
        await stream.write(reply, REPLY_TIMEOUT_S)
        per_chunk_s = REPLY_TIMEOUT_S + CHUNK_BYTES / MIN_RATE_BYTES_S
        for i in range(0, len(data), CHUNK_BYTES):
            await stream.write(data[i : i + CHUNK_BYTES], per_chunk_s)
        self.served += 1
        return None


def _status_name(reply: shards_pb2.ShardFetchReply) -> str:
    try:
        name = shards_pb2.FetchStatus.Name(reply.status)
    except ValueError:  # a status this version does not know
        name = f"status {reply.status}"
    return f"{name} ({reply.reason})" if reply.reason else name


async def fetch_from_peer(
    p2p, peer_id: str, run_id: str, info: manifest_pb2.ShardInfo, *, auth: PeerAuth | OpenRun
) -> bytes:
    """A shard's bytes as one peer serves them (unverified: the caller checks the sha256)."""
    request = shards_pb2.ShardFetchRequest(run_id=run_id, sha256=info.sha256)
    async with rpc.call(
        p2p, peer_id, SHARD, request, access=auth, connect_timeout_s=CONNECT_TIMEOUT_S, send_timeout_s=5.0
    ) as stream:
        reply = await stream.read(shards_pb2.ShardFetchReply, MAX_REPLY_BYTES, REPLY_TIMEOUT_S)
        if reply.status != shards_pb2.FETCH_OK:
            raise PeerUnavailable(f"peer {peer_id[:12]} refused: {_status_name(reply)}")
        if reply.total_bytes != info.size_bytes:
            raise ProtocolError(
                f"peer {peer_id[:12]} offered {reply.total_bytes} bytes of shard {info.index}, "
                f"the manifest says {info.size_bytes}"
            )
        buf = bytearray()
        per_chunk_s = REPLY_TIMEOUT_S + CHUNK_BYTES / MIN_RATE_BYTES_S
        while len(buf) < info.size_bytes:
            chunk = await stream.read_bytes(min(CHUNK_BYTES, info.size_bytes - len(buf)), per_chunk_s)
            if not chunk:
                raise ProtocolError(f"peer {peer_id[:12]} sent an empty frame")
            buf += chunk
        return bytes(buf)


# --- announcing and finding -------------------------------------------------------------------------


class CacheAnnouncer:
    """Publishes which shards this peer can serve: every ``announce_every_s`` and soon after a change."""

    def __init__(
        self, dht, cache: ShardCache, manifest: manifest_pb2.RunManifest, peer_id: str, cfg: ServeConfig
    ):
        self.dht, self.cache, self.peer_id, self.cfg = dht, cache, peer_id, cfg
        self.run_id = manifest.run_id
        self.n_shards = len(manifest.shards)
        self.index = {s.sha256: s.index for s in manifest.shards}
        self.serving: Callable[[], bool] = lambda: True  # others can dial us (peer/net/reachability.py)
        self._changed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cache-announcer")

    def start(self) -> None:
        self._thread.start()

    def changed(self) -> None:
        self._changed.set()

    def announce_now(self) -> bool:
        # A peer nobody can dial announces nothing: others would only waste a connect timeout on it.
        held = (
            {self.index[sha] for sha in self.cache.cached() if sha in self.index} if self.serving() else set()
        )
        record = shards_pb2.CacheAnnouncement(
            peer_id=self.peer_id,
            n_shards=self.n_shards,
            bitmap=encode_bitmap(held, self.n_shards),
            timestamp=time.time(),
        )
        return records.store(
            self.dht,
            records.caches_key(self.run_id),
            self.peer_id,
            record.SerializeToString(),
            self.cfg.announce_ttl_s,
            timeout_s=5.0,
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._changed.clear()
            try:
                self.announce_now()
            except Exception as e:  # the next period retries
                log.debug("cache announcement failed: %s", e)
            self._changed.wait(self.cfg.announce_every_s)
            self._stop.wait(0.5)  # coalesce a burst of changes into one announcement

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if dht_alive(self.dht):  # else it may be stuck in a DHT call; a daemon thread, it dies with us
            self._thread.join(timeout=2.0)


class PeerShardSources:
    """Sources for a shard among peers that announced it, best first."""

    def __init__(
        self,
        dht,
        loop: P2PLoop,
        cache: ShardCache,
        manifest: manifest_pb2.RunManifest,
        peer_id: str,
        *,
        auth: PeerAuth | OpenRun,
    ):
        self.dht, self.loop, self.cache, self.peer_id = dht, loop, cache, peer_id
        self.auth = auth  # signs our requests (closed runs)
        self.run_id = manifest.run_id
        self.n_shards = len(manifest.shards)

    @staticmethod
    def source_name(peer_id: str) -> str:
        return f"peer {peer_id}"

    def holders(self, info: manifest_pb2.ShardInfo) -> list[str]:
        """Peers announcing ``info``, ranked: no bad copies first, then by hash of (peer, shard)."""
        try:
            raw = records.get_dict(self.dht, records.caches_key(self.run_id), timeout_s=5.0)
        except BarnraiseError as e:
            log.debug("cache announcements unreadable: %s", e)
            return []
        found = [p for p, held in parse_announcements(raw, self.n_shards).items() if info.index in held]
        found = [
            p
            for p in found
            if p != self.peer_id and self.cache.bad_count(self.source_name(p)) < MAX_BAD_COPIES
        ]

        def rank(peer: str) -> tuple[int, bytes]:
            return (
                self.cache.bad_count(self.source_name(peer)),
                hashlib.sha256(f"{peer}/{info.sha256}".encode()).digest(),
            )

        return sorted(found, key=rank)

    def sources(self, info: manifest_pb2.ShardInfo, limit: int = 4) -> list[ShardSourceRef]:
        refs = []
        for peer in self.holders(info)[:limit]:

            def fetch(i: manifest_pb2.ShardInfo, peer: str = peer) -> bytes:
                coro = fetch_from_peer(self.loop.p2p, peer, self.run_id, i, auth=self.auth)
                return self.loop.call(coro, transfer_timeout_s(i.size_bytes) + 5.0)

            refs.append(ShardSourceRef(name=self.source_name(peer), fetch=fetch))
        return refs
