"""Shard leases and epochs: what the swarm agrees on about who trains which shard, as pure logic.

The rules, which every peer applies to the same DHT records and so reaches the same answer:

* A claim is a ``ShardLease`` stored under ``lease_key(run, epoch, shard)`` with subkey = the
  claimer's peer id. A claim is *valid* while it is not released and ``expires_at`` is in the
  future. The holder of a shard is the valid claim with the lowest ``(claim_time, peer_id)``; a
  holder keeps its original ``claim_time`` when it renews, so a later claimer always loses to it.
  Two peers that claim at once both read the claims back after storing theirs and agree on the
  winner; the loser releases its claim and backs off.
* A holder that cannot renew before ``expires_at`` stops training the shard. So two peers never
  hold one shard for longer than a lease period, even when one of them is cut off.
* The progress offset of a shard is the highest offset in any of its records for the epoch,
  expired and released ones included: every record's offset counts tokens that its writer (or
  the owners before it) trained, so resuming from the highest one leaves no gap.
* An epoch is over when every shard has a ``ShardDone`` record; the next epoch's order is a fresh
  shuffle derived from the run seed and the epoch number (``epoch_order``).

Records are untrusted: one that is malformed, stored under someone else's subkey, out of range, or
claims a lease longer than ``MAX_LEASE_S`` is dropped whole. Every record sits under a subkey that
names its writer (its peer id; ``<peer id>/<shard>`` for done records), and ``records.get_dict``
hands over only records their writer sealed (``coordinator/signing.py``), so requiring the
record's ``peer_id`` to match its subkey here proves who wrote it. A member that lies (marks
shards done, inflates an offset) can still make the swarm skip data, under its own name; this
module bounds what such a record can say.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from barnraise.coordinator.records import done_subkey, parse_record
from barnraise.protos import shards_pb2

MAX_LEASE_S = 600.0  # longest lease a reader honours; a record claiming more is dropped
CLOCK_SLACK_S = 5.0  # tolerated clock difference between peers when checking expiry bounds
MAX_PEER_ID_CHARS = 128  # base58 peer ids are ~46 characters
MAX_EPOCH = 1 << 40  # no run gets anywhere near this; a larger epoch is a lie


@dataclass(frozen=True, kw_only=True)
class LeaseConfig:
    """How a peer leases shards. Every peer may pick its own; readers only bound them."""

    lease_s: float = 60.0  # seconds a claim or renewal holds the shard without another renewal
    renew_every_s: float = 0.0  # seconds between renewals; 0: lease_s / 3 (two renewals may fail)
    settle_s: float = 0.3  # seconds between storing a claim and reading the claims back
    lease_retention_s: float = 7 * 86400.0  # seconds the DHT keeps lease records (and their offsets)
    done_retention_s: float = 30 * 86400.0  # seconds the DHT keeps done records (an epoch must fit)
    epoch_mark_ttl_s: float = 3600.0  # seconds an epoch mark lives; refreshed every minute or so

    def __post_init__(self) -> None:
        if not 0 < self.lease_s <= MAX_LEASE_S:
            raise ValueError(f"lease_s must be in (0, {MAX_LEASE_S:.0f}] seconds, got {self.lease_s}")
        if self.renew_every_s < 0 or self.renew_every_s >= self.lease_s:
            raise ValueError(
                f"renew_every_s must be 0 (auto) or below lease_s ({self.lease_s}), got {self.renew_every_s}"
            )
        if not 0 <= self.settle_s < self.lease_s / 2:
            raise ValueError(f"settle_s must be in [0, lease_s/2), got {self.settle_s}")
        if self.lease_retention_s < 10 * self.lease_s or self.done_retention_s < self.lease_retention_s:
            raise ValueError("retention must be at least 10 lease periods, done records at least as long")

    @property
    def renew_period_s(self) -> float:
        """Seconds between renewals of a held lease."""
        return self.renew_every_s or self.lease_s / 3


def _bad_peer_id(peer_id: str) -> bool:
    return not peer_id or len(peer_id) > MAX_PEER_ID_CHARS


def lease_problem(
    lease: shards_pb2.ShardLease, *, subkey: str, epoch: int, shard: int, n_tokens: int, now: float
) -> str | None:
    """Why a lease record read from the DHT cannot be used, or None."""
    if _bad_peer_id(lease.peer_id) or lease.peer_id != subkey:
        return "peer id missing or differs from its subkey"
    if lease.epoch != epoch or lease.shard != shard:
        return f"record for epoch {lease.epoch} shard {lease.shard} stored under epoch {epoch} shard {shard}"
    if not (math.isfinite(lease.claim_time) and math.isfinite(lease.expires_at)):
        return "non-finite times"
    if lease.claim_time <= 0 or lease.expires_at < lease.claim_time:
        return "expiry before claim"
    if lease.expires_at > now + MAX_LEASE_S + CLOCK_SLACK_S:
        return f"lease runs {lease.expires_at - now:.0f} s into the future, more than {MAX_LEASE_S:.0f} s"
    if lease.claim_time > now + CLOCK_SLACK_S:
        return "claim time in the future"
    if lease.offset > n_tokens:
        return f"offset {lease.offset} beyond the shard's {n_tokens} tokens"
    return None


def parse_leases(
    raw: Mapping[str, bytes], *, epoch: int, shard: int, n_tokens: int, now: float
) -> list[shards_pb2.ShardLease]:
    """The usable lease records among (subkey -> bytes) read from a shard's lease key."""
    out = []
    for subkey, data in raw.items():
        lease = parse_record(
            data,
            shards_pb2.ShardLease,
            lambda m, s=subkey: lease_problem(
                m, subkey=s, epoch=epoch, shard=shard, n_tokens=n_tokens, now=now
            ),
        )
        if lease is not None:
            out.append(lease)
    return out


def is_valid(lease: shards_pb2.ShardLease, now: float) -> bool:
    """A claim that still holds: not released and not expired."""
    return not lease.released and lease.expires_at > now


def holder(leases: Iterable[shards_pb2.ShardLease], now: float) -> shards_pb2.ShardLease | None:
    """The winning claim: the valid one with the lowest (claim_time, peer_id); None if the shard is free."""
    valid = [lease for lease in leases if is_valid(lease, now)]
    return min(valid, key=lambda lease: (lease.claim_time, lease.peer_id), default=None)


def resume_offset(leases: Iterable[shards_pb2.ShardLease]) -> int:
    """Tokens of the shard already trained this epoch: the highest offset any record reports."""
    return max((lease.offset for lease in leases), default=0)


def parse_done(raw: Mapping[str, bytes], *, epoch: int, n_shards: int) -> dict[int, shards_pb2.ShardDone]:
    """Usable done records of an epoch, by shard index (the earliest, if several peers wrote one).

    A record counts only under ``done_subkey(its peer_id, its shard)``: a subkey owned by the peer
    it names, so its writer sealed it. An unowned subkey (a bare shard index) is never used.
    """

    def problem(d: shards_pb2.ShardDone, subkey: str) -> str | None:
        if _bad_peer_id(d.peer_id) or not math.isfinite(d.finished_at):
            return "bad peer id or time"
        if subkey != done_subkey(d.peer_id, d.shard):
            return f"shard {d.shard} of {d.peer_id[:12]} stored under another subkey"
        if d.shard >= n_shards:
            return f"shard {d.shard} out of range (run has {n_shards} shards)"
        return f"epoch {d.epoch} stored under epoch {epoch}" if d.epoch != epoch else None

    out: dict[int, shards_pb2.ShardDone] = {}
    for subkey, data in raw.items():
        d = parse_record(data, shards_pb2.ShardDone, lambda m, s=subkey: problem(m, s))
        if d is not None and (d.shard not in out or _done_order(d) < _done_order(out[d.shard])):
            out[d.shard] = d
    return out


def _done_order(d: shards_pb2.ShardDone) -> tuple[float, str]:
    return d.finished_at, d.peer_id


def highest_epoch(raw: Mapping[str, bytes]) -> int:
    """The highest epoch peers report working on (0 if none): where a newcomer starts looking."""

    def problem(m: shards_pb2.EpochMark, subkey: str) -> str | None:
        if _bad_peer_id(m.peer_id) or m.peer_id != subkey:
            return "peer id missing or differs from its subkey"
        return "absurd epoch" if m.epoch > MAX_EPOCH else None

    marks = [
        parse_record(data, shards_pb2.EpochMark, lambda m, s=sk: problem(m, s)) for sk, data in raw.items()
    ]
    return max((m.epoch for m in marks if m is not None), default=0)


def epoch_order(seed: int, epoch: int, n_shards: int) -> list[int]:
    """The epoch's shuffle of shard indices: the same on every peer, different every epoch.

    A hash of (seed, epoch, index) sorts the indices, so it needs no shared random generator and
    does not change with the Python version.
    """

    def rank(index: int) -> bytes:
        return hashlib.sha256(f"barnraise-shuffle/{seed}/{epoch}/{index}".encode()).digest()

    return sorted(range(n_shards), key=rank)


def start_position(peer_id: str, n_shards: int) -> int:
    """Where in the epoch's order a peer starts looking, so that peers rarely race for one shard."""
    digest = hashlib.sha256(f"barnraise-start/{peer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, n_shards)


def candidates(order: list[int], start: int, skip: set[int] | frozenset[int]) -> list[int]:
    """Shards to try, in order: the epoch's order from ``start``, wrapping, minus ``skip``."""
    n = len(order)
    return [order[(start + i) % n] for i in range(n) if order[(start + i) % n] not in skip]
