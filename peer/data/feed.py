"""The peer's stream of training batches: shards leased through the DHT, fetched, verified, read.

Each epoch every shard is trained once by the swarm as a whole. The feed walks the epoch's shuffle
(``coordinator.leases.epoch_order``) from a peer-specific start, skips shards that are done or
held by another peer, claims the next free one (``peer.leasing``), fetches it from peers that
announced it or from the coordinator, and reads it from the offset its lease records. Progress
goes to the lease keeper after every completed step, so a peer that dies costs the swarm at most
the steps since its last renewal; the next owner resumes where the record says.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from barnraise.coordinator import leases as lease_rules
from barnraise.coordinator import records
from barnraise.coordinator.errors import BarnraiseError, IntegrityError
from barnraise.peer.data.leasing import HeldLease, LeaseClient, LeaseKeeper
from barnraise.peer.data.shards import (
    DEFAULT_CACHE_BUDGET_BYTES,
    BatchReader,
    ShardCache,
    ShardSourceRef,
    shard_tokens,
    trainable_tokens,
)
from barnraise.peer.data.shardserver import CacheAnnouncer, PeerShardSources, ServeConfig, ShardServer
from barnraise.peer.events import (
    NO_EVENTS,
    EpochComplete,
    EventLog,
    FirstShard,
    RangeTrained,
    ShardFetched,
    ShardSkipped,
)
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

MAX_PROBES = 16  # shards tried per look for a free one (each try is a DHT read)
UNOBTAINABLE_BACKOFF_S = 10.0  # a shard no source could serve (all busy, gone, or bad) rests this long


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    """How a peer gets, keeps and shares shards."""

    cache_budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES  # disk the shard cache may use, bytes
    lease: lease_rules.LeaseConfig = field(default_factory=lease_rules.LeaseConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    idle_wait_s: float = 2.0  # seconds next_batch waits for a free shard before giving the round back

    def __post_init__(self) -> None:
        if self.cache_budget_bytes < 0:
            raise ValueError(f"cache budget must be >= 0 bytes, got {self.cache_budget_bytes}")
        if self.idle_wait_s < 0:
            raise ValueError(f"idle_wait_s must be >= 0 s, got {self.idle_wait_s}")


@dataclass
class _Current:
    """The shard being trained: its lease, its reader, and a step handed out but not yet confirmed."""

    info: manifest_pb2.ShardInfo
    held: HeldLease
    reader: BatchReader
    sha256: str  # digest of the bytes actually read (range_trained events)
    pending: tuple[int, int] | None = None  # token range of the last batch handed to the trainer


class ShardFeed:
    """Batches for ``InnerTrainer``: ``next_batch(batch_size)`` (None: no free shard right now)."""

    def __init__(
        self,
        manifest: manifest_pb2.RunManifest,
        cache: ShardCache,
        sources: Sequence[ShardSourceRef],
        peer_id: str,
        *,
        leases: LeaseClient,
        keeper: LeaseKeeper,
        peers: PeerShardSources | None = None,
        events: EventLog = NO_EVENTS,
        idle_wait_s: float = 2.0,
    ):
        self.manifest = manifest
        self.cache = cache
        self.sources = list(sources)  # fallback sources (the coordinator), after peers
        self.peer_id = peer_id
        self.leases, self.keeper, self.peers, self.events = leases, keeper, peers, events
        self.idle_wait_s = idle_wait_s
        self.shards = sorted(manifest.shards, key=lambda s: s.index)
        self.start_at = lease_rules.start_position(peer_id, len(self.shards))
        self.current: _Current | None = None
        self.first_shard_s: float | None = None  # seconds from the first request to the first shard in hand
        self.failed: set[int] = set()  # shards no source could serve, ever (refuse to train if all)
        self._asked_at: float | None = None  # monotonic time of the trainer's first request
        self._closers: list = []
        self._set_epoch(leases.read_epoch_hint())
        keeper.start(self.epoch)

    # --- epochs -------------------------------------------------------------------------------
    def _set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = lease_rules.epoch_order(self.manifest.seed, epoch, len(self.shards))
        self.done: set[int] = set()  # shards of this epoch known done (DHT, or finished here)
        self.unobtainable: dict[int, float] = {}  # shard -> monotonic time until which it is skipped
        self.keeper.set_epoch(epoch)

    def _refresh_done(self) -> None:
        try:
            self.done |= self.leases.read_done(self.epoch)
        except BarnraiseError as e:  # keep what we know; the next look retries
            log.debug("done records of epoch %d unreadable: %s", self.epoch, e)

    # --- batches ------------------------------------------------------------------------------
    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The next batch of this peer's leased shard; None if no shard is free for ``idle_wait_s``.

        Being called again means the previous batch's step completed: only then does its range
        count as trained (lease offset, range_trained event).
        """
        deadline = time.monotonic() + self.idle_wait_s
        if self._asked_at is None:
            self._asked_at = time.monotonic()
        while True:
            cur = self.current
            if cur is not None:
                self._confirm(cur)
                if cur.held.lost or records.dht_time() >= cur.held.expires_at:  # not renewed in time
                    log.warning(
                        "lost the lease on shard %d (epoch %d) at token %d; moving on",
                        cur.info.index,
                        cur.held.epoch,
                        cur.reader.offset,
                    )
                    self._release(finished=False)
                    continue
                start = cur.reader.offset
                batch = cur.reader.next_batch(batch_size)
                if batch is not None:
                    cur.pending = (start, cur.reader.offset)
                    return batch
                self._release(finished=True)
            if self._open_next():
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(0.5, left))

    def _confirm(self, cur: _Current) -> None:
        """The trainer finished a step on ``cur.pending``: record it."""
        if cur.pending is None:
            return
        start, end = cur.pending
        cur.pending = None
        self.keeper.progress(cur.held, end)
        if self.events.enabled:
            self.events.emit(
                RangeTrained(
                    peer=self.peer_id,
                    epoch=cur.held.epoch,
                    shard=cur.info.index,
                    start=start,
                    end=end,
                    sha256=cur.sha256,
                )
            )

    def _release(self, *, finished: bool) -> None:
        cur, self.current = self.current, None
        if cur is None:
            return
        self.cache.pinned.discard(cur.info.sha256)
        if finished:
            self.done.add(cur.info.index)
            self.keeper.finish(cur.held)
            log.info("shard %d of epoch %d done", cur.info.index, cur.held.epoch)
        else:
            self.keeper.drop(cur.held)

    def _open_next(self) -> bool:
        """Lease, fetch and open the next free shard; False if none is free now."""
        for _ in range(3):  # at most a couple of epoch changes per look
            self._refresh_done()
            if len(self.done) >= len(self.shards):
                self.events.emit(EpochComplete(epoch=self.epoch, shards=len(self.shards)), log)
                self._set_epoch(self.epoch + 1)
                continue
            now = time.monotonic()
            skip = self.done | {s for s, until in self.unobtainable.items() if until > now}
            for shard in lease_rules.candidates(self.order, self.start_at, skip)[:MAX_PROBES]:
                try:
                    held = self.leases.claim(self.epoch, shard)
                except BarnraiseError as e:
                    log.debug("claim of shard %d failed: %s", shard, e)
                    return False
                if held is not None and self._start(held):
                    return True
            return False
        return False

    def _start(self, held: HeldLease) -> bool:
        """Fetch and open a freshly claimed shard; False if it cannot be trained now."""
        info = self.shards[held.shard]
        self.keeper.hold(held)  # renewed from now on, also while the fetch runs
        if held.offset >= trainable_tokens(info.n_tokens, self.manifest.model.seq_len):
            self.done.add(held.shard)  # the previous owner got to the end but did not say so
            self.keeper.finish(held)
            return False
        self.cache.pinned.add(info.sha256)
        sources = (self.peers.sources(info) if self.peers is not None else []) + self.sources
        try:
            got = self.cache.fetch(info, sources)
        except BarnraiseError as e:
            log.error("%s; skipping this shard for now (back to the pool)", e)
            self.events.emit(ShardSkipped(index=info.index, reason=str(e)))
            self.cache.pinned.discard(info.sha256)
            self.keeper.drop(held)
            self.unobtainable[held.shard] = time.monotonic() + UNOBTAINABLE_BACKOFF_S
            self.failed.add(held.shard)
            if self.first_shard_s is None and len(self.failed) == len(self.shards):
                raise IntegrityError(
                    "no shard of this run could be obtained with a valid sha256: refusing to train"
                ) from e
            return False
        if self.first_shard_s is None:
            self.first_shard_s = time.monotonic() - (self._asked_at or time.monotonic())
            self.events.emit(FirstShard(seconds=self.first_shard_s), log)
        if got.source != "cache":
            fetched = ShardFetched(
                index=info.index, bytes=len(got.data), source=got.source, seconds=got.seconds
            )
            self.events.emit(fetched, log)
        reader = BatchReader(
            shard_tokens(got.data, self.manifest.dataset.token_dtype), self.manifest.model.seq_len
        )
        reader.offset = held.offset
        digest = hashlib.sha256(got.data).hexdigest() if self.events.enabled else info.sha256
        self.current = _Current(info=info, held=held, reader=reader, sha256=digest)
        log.info(
            "training shard %d of epoch %d from token %d (%d windows left)",
            info.index,
            held.epoch,
            held.offset,
            reader.remaining_windows(),
        )
        return True

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random tokens for probing memory: no lease, no download, nothing trained."""
        vocab = self.manifest.model.vocab_size
        L = self.manifest.model.seq_len
        tokens = torch.randint(0, vocab, (n, L + 1), generator=torch.Generator().manual_seed(0))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def close(self) -> None:
        """Confirm the last step, release the lease with its offset, stop background work."""
        t0 = time.monotonic()
        if self.current is not None:
            self._confirm(self.current)
            self._release(finished=False)
        for closer in self._closers:
            try:
                closer()
            except Exception as e:
                log.debug("closing the shard feed: %s", e)
        log.debug("shard feed closed in %.2f s", time.monotonic() - t0)

    # --- wiring -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        *,
        dht,
        loop,
        manifest: manifest_pb2.RunManifest,
        peer_id: str,
        cache_dir: Path,
        sources: Sequence[ShardSourceRef],
        options: ShardOptions,
        auth: PeerAuth | OpenRun,
        events: EventLog = NO_EVENTS,
        corrupt_shards: Callable[[], bool] | None = None,
    ) -> ShardFeed:
        """A feed with its cache, shard server, cache announcer and lease keeper running.

        ``cache_dir`` is the run's cache directory; ``sources`` are tried after peers (the
        coordinator). ``loop`` is the peer's ``P2PLoop``; ``auth`` signs our shard requests to
        peers and checks theirs. ``events`` gets the shard events; ``corrupt_shards`` (tests only,
        peer/injection.py) says when to corrupt what is served.
        """
        cache = ShardCache(cache_dir / "shards", options.cache_budget_bytes, events)
        cache.enforce_budget()
        server = ShardServer(loop.p2p, cache, manifest, options.serve, auth=auth)
        server.corrupt = corrupt_shards
        loop.call(server.register(), 10.0)
        announcer = CacheAnnouncer(dht, cache, manifest, peer_id, options.serve)
        cache.on_change = announcer.changed
        announcer.start()
        keeper = LeaseKeeper(LeaseClient(dht, manifest, peer_id, options.lease))
        feed = cls(
            manifest,
            cache,
            sources,
            peer_id,
            leases=keeper.client,
            keeper=keeper,
            peers=PeerShardSources(dht, loop, cache, manifest, peer_id, auth=auth),
            events=events,
            idle_wait_s=options.idle_wait_s,
        )
        feed._closers = [keeper.close, announcer.stop]
        feed.announcer = announcer  # the daemon tells it when others cannot dial us
        return feed
