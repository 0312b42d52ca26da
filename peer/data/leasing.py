"""The peer's side of shard leases: claim through the DHT, renew in the background, release.

``LeaseClient`` does the DHT reads and writes (each with a deadline) and applies the rules of
``coordinator.leases``. ``LeaseKeeper`` owns a background thread that renews every held lease with
its latest progress offset, writes done records and releases, and publishes the peer's epoch, so
the training thread only ever waits on a DHT write when it claims a new shard.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from barnraise.coordinator import leases, records
from barnraise.coordinator.errors import BarnraiseError
from barnraise.protos import manifest_pb2, shards_pb2

log = logging.getLogger(__name__)

KEEPER_TICK_S = 0.5  # how often the keeper looks for work
EPOCH_MARK_EVERY_S = 60.0  # how often the peer republishes the epoch it works on
RELEASE_TRIES = 20  # attempts to write a done record or a release before giving up on it
DHT_CALL_TIMEOUT_S = 5.0


def dht_alive(dht) -> bool:
    """False once the DHT process is gone (SIGTERM to the process group reaches it first)."""
    is_alive = getattr(dht, "is_alive", None)
    return bool(is_alive()) if callable(is_alive) else True


@dataclass
class HeldLease:
    """A lease this peer holds. ``offset`` is written by the training thread, the rest by the keeper."""

    epoch: int
    shard: int
    n_tokens: int
    claim_time: float  # DHT time of our claim; kept across renewals
    expires_at: float  # DHT time until which our last stored renewal holds
    offset: int  # tokens of the shard trained so far this epoch (ours and previous owners')
    renewed_at: float = 0.0  # DHT time of the last renewal that landed (or of the claim)
    lost: bool = False  # set by the keeper: stop training this shard


class LeaseClient:
    """DHT I/O for leases, done records and epoch marks of one run."""

    def __init__(self, dht, manifest: manifest_pb2.RunManifest, peer_id: str, cfg: leases.LeaseConfig):
        self.dht = dht
        self.run_id = manifest.run_id
        self.n_shards = len(manifest.shards)
        self.n_tokens = [s.n_tokens for s in sorted(manifest.shards, key=lambda s: s.index)]
        self.peer_id = peer_id
        self.cfg = cfg
        self.timeout_s = DHT_CALL_TIMEOUT_S  # per DHT call; lowered while the peer shuts down

    # --- reads --------------------------------------------------------------------------------
    def read_leases(self, epoch: int, shard: int) -> list[shards_pb2.ShardLease]:
        raw = records.get_dict(self.dht, records.lease_key(self.run_id, epoch, shard), self.timeout_s)
        return leases.parse_leases(
            raw, epoch=epoch, shard=shard, n_tokens=self.n_tokens[shard], now=records.dht_time()
        )

    def read_done(self, epoch: int) -> set[int]:
        raw = records.get_dict(self.dht, records.done_key(self.run_id, epoch), self.timeout_s)
        return set(leases.parse_done(raw, epoch=epoch, n_shards=self.n_shards))

    def read_epoch_hint(self) -> int:
        """The highest epoch any peer reports; 0 if none or the DHT does not answer."""
        try:
            raw = records.get_dict(self.dht, records.epoch_key(self.run_id), self.timeout_s)
        except BarnraiseError as e:
            log.debug("epoch marks unreadable: %s", e)
            return 0
        return leases.highest_epoch(raw)

    # --- writes -------------------------------------------------------------------------------
    def _store(self, key: str, subkey: str, record, ttl_s: float) -> bool:
        """Store one of this run's protobuf records, within the DHT call deadline."""
        return records.store(
            self.dht, key, subkey, record.SerializeToString(), ttl_s, timeout_s=self.timeout_s
        )

    def store_held(self, held: HeldLease, *, expires_at: float, released: bool = False) -> bool:
        lease = shards_pb2.ShardLease(
            peer_id=self.peer_id,
            epoch=held.epoch,
            shard=held.shard,
            claim_time=held.claim_time,
            expires_at=expires_at,
            offset=held.offset,
            released=released,
        )
        key = records.lease_key(self.run_id, held.epoch, held.shard)
        return self._store(key, self.peer_id, lease, self.cfg.lease_retention_s)

    def claim(self, epoch: int, shard: int) -> HeldLease | None:
        """Try to take a shard: None if another peer holds it or wins the race for it.

        Store our claim, wait ``settle_s`` so that a concurrent claim lands too, read all claims
        back and apply ``leases.holder``; a loser releases its claim at once.
        """
        found = self.read_leases(epoch, shard)
        now = records.dht_time()
        current = leases.holder(found, now)
        if current is not None and current.peer_id != self.peer_id:
            return None
        held = HeldLease(
            epoch=epoch,
            shard=shard,
            n_tokens=self.n_tokens[shard],
            # our own live claim (a restart with the same identity) keeps its place in the race
            claim_time=current.claim_time if current is not None else now,
            expires_at=now + self.cfg.lease_s,
            offset=leases.resume_offset(found),
            renewed_at=now,
        )
        if not self.store_held(held, expires_at=held.expires_at):
            self.store_held(held, expires_at=records.dht_time(), released=True)  # in case some node took it
            return None
        if self.cfg.settle_s:
            time.sleep(self.cfg.settle_s)
        asked = records.dht_time()  # judge the claims as they stood when we asked for them
        found = self.read_leases(epoch, shard)
        winner = leases.holder(found, asked)
        if winner is None or winner.peer_id != self.peer_id:
            log.debug("lost the race for shard %d to %s", shard, winner.peer_id[:12] if winner else "nobody")
            self.store_held(held, expires_at=records.dht_time(), released=True)
            return None
        held.offset = max(held.offset, leases.resume_offset(found))
        return held

    def renew(self, held: HeldLease) -> bool:
        """Extend a held lease with its current offset; False (and ``held.lost``) if it is gone.

        A renewal that does not land is retried at the keeper's next tick, not a period later.
        """
        now = records.dht_time()
        if now >= held.expires_at:
            log.warning("lease on shard %d expired before it could be renewed; letting it go", held.shard)
            held.lost = True
            return False
        new_expiry = now + self.cfg.lease_s
        if not self.store_held(held, expires_at=new_expiry):
            return True
        held.expires_at, held.renewed_at = new_expiry, now
        winner = leases.holder(self.read_leases(held.epoch, held.shard), records.dht_time())
        if winner is not None and winner.peer_id != self.peer_id:
            log.warning("shard %d is now held by %s; letting it go", held.shard, winner.peer_id[:12])
            held.lost = True
            return False
        return True

    def mark_done(self, epoch: int, shard: int) -> bool:
        done = shards_pb2.ShardDone(shard=shard, epoch=epoch, peer_id=self.peer_id, finished_at=time.time())
        key, subkey = records.done_key(self.run_id, epoch), records.done_subkey(self.peer_id, shard)
        return self._store(key, subkey, done, self.cfg.done_retention_s)

    def publish_epoch(self, epoch: int) -> bool:
        mark = shards_pb2.EpochMark(peer_id=self.peer_id, epoch=epoch, timestamp=time.time())
        return self._store(records.epoch_key(self.run_id), self.peer_id, mark, self.cfg.epoch_mark_ttl_s)


@dataclass
class _Release:
    """A write the keeper still owes the DHT: a done record (if ``done``) and the lease's release."""

    held: HeldLease
    done: bool
    tries: int = 0
    done_written: bool = False


class LeaseKeeper:
    """Background renewals and releases of this peer's leases.

    The training thread calls ``hold``, ``progress``, ``finish`` and ``drop``; none of them waits
    on the DHT. ``close`` releases what is still held, so a clean exit frees its shards at once
    instead of after a lease period.
    """

    def __init__(self, client: LeaseClient):
        self.client = client
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], HeldLease] = {}
        self._owed: list[_Release] = []
        self._epoch = 0
        self._epoch_published = -1.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="lease-keeper")

    def start(self, epoch: int) -> None:
        self._epoch = epoch
        self._thread.start()

    def hold(self, held: HeldLease) -> None:
        with self._lock:
            self._held[(held.epoch, held.shard)] = held

    def progress(self, held: HeldLease, offset: int) -> None:
        with self._lock:
            held.offset = max(held.offset, offset)

    def finish(self, held: HeldLease) -> None:
        """The shard is trained to its end: write its done record and release the lease."""
        self._let_go(held, done=True, offset=held.n_tokens)

    def drop(self, held: HeldLease) -> None:
        """Stop working on a shard without finishing it; its offset goes back to the pool."""
        self._let_go(held, done=False, offset=held.offset)

    def _let_go(self, held: HeldLease, *, done: bool, offset: int) -> None:
        with self._lock:
            self._held.pop((held.epoch, held.shard), None)
            held.offset = max(held.offset, offset)
            # also when lost: the record keeps our progress, so the pool knows how far we got
            self._owed.append(_Release(held=held, done=done))
        self._wake.set()

    def set_epoch(self, epoch: int) -> None:
        with self._lock:
            if epoch != self._epoch:
                self._epoch, self._epoch_published = epoch, -1.0
        self._wake.set()

    def _loop(self) -> None:
        period = self.client.cfg.renew_period_s
        while not self._stop.is_set():
            self._wake.wait(KEEPER_TICK_S)
            self._wake.clear()
            try:
                self._settle_owed()
                with self._lock:
                    due = [h for h in self._held.values() if records.dht_time() - h.renewed_at >= period]
                for held in due:
                    self.client.renew(held)
                    if held.lost:
                        with self._lock:
                            self._held.pop((held.epoch, held.shard), None)
                self._publish_epoch()
            except Exception as e:  # a DHT hiccup must not kill renewals; the next tick retries
                log.warning("lease keeper: %s", e)

    def _settle_owed(self) -> None:
        with self._lock:
            owed, self._owed = self._owed, []
        keep = []
        for item in owed:
            held = item.held
            try:
                if item.done and not item.done_written:
                    item.done_written = self.client.mark_done(held.epoch, held.shard)
                ok = (item.done_written or not item.done) and self.client.store_held(
                    held, expires_at=records.dht_time(), released=True
                )
            except BarnraiseError as e:
                log.debug("release of shard %d failed: %s", held.shard, e)
                ok = False
            item.tries += 1
            if not ok and item.tries < RELEASE_TRIES:
                keep.append(item)
            elif not ok:
                log.warning("could not record shard %d in the DHT; its lease will expire instead", held.shard)
        with self._lock:
            self._owed = keep + self._owed

    def _publish_epoch(self) -> None:
        with self._lock:
            epoch, last = self._epoch, self._epoch_published
        if time.monotonic() - last >= EPOCH_MARK_EVERY_S or last < 0:
            if self.client.publish_epoch(epoch):
                with self._lock:
                    self._epoch_published = time.monotonic()

    def close(self, timeout_s: float = 3.0) -> None:
        """Release held leases (offsets recorded) and flush owed writes, within ``timeout_s``.

        Best effort: on Ctrl-C or SIGTERM to the process group the DHT process is gone already,
        and then the leases simply expire.
        """
        with self._lock:
            held = list(self._held.values())
        for h in held:
            self.drop(h)
        self._stop.set()
        self._wake.set()
        if not dht_alive(self.client.dht):
            return  # nothing can be written; the keeper thread is a daemon and dies with us
        self._thread.join(timeout=timeout_s)
        if self._owed and not self._thread.is_alive():
            self.client.timeout_s = min(self.client.timeout_s, timeout_s / 2)
            try:
                self._settle_owed()
            except Exception as e:
                log.debug("final lease release failed: %s", e)
