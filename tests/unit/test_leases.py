"""Lease rules, epoch order, cache announcements and the shard cache: pure logic, no sockets."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from barnraise.coordinator import leases
from barnraise.coordinator.errors import BarnraiseError, IntegrityError
from barnraise.coordinator.records import MAX_RECORD_BYTES
from barnraise.peer.data.shards import BatchReader, ShardCache, ShardSourceRef, trainable_tokens
from barnraise.peer.data.shardserver import decode_bitmap, encode_bitmap, parse_announcements
from barnraise.protos import manifest_pb2, shards_pb2

NOW = 1_000_000.0


def lease(peer: str, claim: float, expires: float, offset: int = 0, released: bool = False, **kw):
    fields = dict(epoch=2, shard=5) | kw
    return shards_pb2.ShardLease(
        peer_id=peer, claim_time=claim, expires_at=expires, offset=offset, released=released, **fields
    )


def parse(*records: shards_pb2.ShardLease, subkeys: list[str] | None = None) -> list[shards_pb2.ShardLease]:
    raw = {(subkeys[i] if subkeys else r.peer_id): r.SerializeToString() for i, r in enumerate(records)}
    return leases.parse_leases(raw, epoch=2, shard=5, n_tokens=4000, now=NOW)


# --- who holds a shard ------------------------------------------------------------------------------


def test_earliest_valid_claim_wins_and_ties_break_on_peer_id():
    a = lease("peerA", NOW - 10, NOW + 5)
    b = lease("peerB", NOW - 20, NOW + 5)
    c = lease("peerC", NOW - 20, NOW + 5)
    assert leases.holder([a, b, c], NOW).peer_id == "peerB"
    assert leases.holder([c, a, b], NOW).peer_id == "peerB"  # order of records does not matter


def test_expired_and_released_claims_do_not_hold():
    expired = lease("peerA", NOW - 30, NOW - 1, offset=900)
    released = lease("peerB", NOW - 20, NOW + 30, offset=1200, released=True)
    assert leases.holder([expired, released], NOW) is None
    late = lease("peerC", NOW, NOW + 4)
    assert leases.holder([expired, released, late], NOW).peer_id == "peerC"


def test_a_renewing_holder_beats_a_later_claimer():
    """The holder renews with its original claim time, so whoever claims after it loses."""
    holder = lease("zzz-holder", NOW - 100, NOW + 60)  # renewed just now, claimed long ago
    newcomer = lease("aaa-newcomer", NOW - 0.1, NOW + 60)
    assert leases.holder([newcomer, holder], NOW).peer_id == "zzz-holder"


def test_resume_offset_is_the_highest_recorded_even_when_expired():
    records = [lease("peerA", NOW - 30, NOW - 1, offset=1536), lease("peerB", NOW - 5, NOW + 5, offset=256)]
    assert leases.resume_offset(records) == 1536
    assert leases.resume_offset([]) == 0


@pytest.mark.parametrize(
    ("record", "subkey", "why"),
    [
        (lease("peerA", NOW - 1, NOW + 5), "peerB", "subkey"),
        (lease("", NOW - 1, NOW + 5), "", "subkey"),
        (lease("peerA", NOW - 1, NOW + 5, epoch=3), "peerA", "epoch"),
        (lease("peerA", NOW - 1, NOW + 5, shard=6), "peerA", "shard"),
        (lease("peerA", NOW - 1, NOW + 3600), "peerA", "future"),
        (lease("peerA", NOW + 60, NOW + 70), "peerA", "future"),
        (lease("peerA", NOW - 1, NOW - 2), "peerA", "expiry before claim"),
        (lease("peerA", float("nan"), NOW + 5), "peerA", "non-finite"),
        (lease("peerA", NOW - 1, NOW + 5, offset=4001), "peerA", "beyond"),
    ],
)
def test_bad_lease_records_are_dropped(record, subkey, why):
    problem = leases.lease_problem(record, subkey=subkey, epoch=2, shard=5, n_tokens=4000, now=NOW)
    assert problem is not None and why in problem
    assert parse(record, subkeys=[subkey]) == []


def test_malformed_and_oversized_records_are_dropped():
    good = lease("peerA", NOW - 1, NOW + 5)
    raw = {
        "peerA": good.SerializeToString(),
        "peerB": b"\xff\xff not a protobuf",
        "peerC": lease("peerC", NOW - 1, NOW + 5).SerializeToString() + b"\0" * MAX_RECORD_BYTES,
    }
    assert [x.peer_id for x in leases.parse_leases(raw, epoch=2, shard=5, n_tokens=4000, now=NOW)] == [
        "peerA"
    ]


# --- epochs -----------------------------------------------------------------------------------------


def done_record(shard, epoch=1, subkey=None, peer="p", at=NOW):
    d = shards_pb2.ShardDone(shard=shard, epoch=epoch, peer_id=peer, finished_at=at)
    return (subkey if subkey is not None else f"{peer}/{shard}"), d.SerializeToString()


def test_done_records_are_checked_against_key_and_manifest():
    raw = dict(
        [
            done_record(0),
            done_record(3),
            done_record(4, subkey="p/5"),
            done_record(9),
            done_record(2, epoch=7),
            done_record(1, peer=""),
        ]
    )
    assert set(leases.parse_done(raw, epoch=1, n_shards=9)) == {0, 3}


def test_done_records_count_only_under_their_writers_subkey():
    """The subkey names the writer (so its seal was checked by ``records.get_dict``): a record under
    a bare shard index (unsealed, as written before) or under another peer's subkey is ignored."""
    raw = dict([done_record(1, subkey="1"), done_record(2, peer="victim", subkey="forger/2")])
    assert leases.parse_done(raw, epoch=1, n_shards=9) == {}
    both = dict([done_record(4, peer="late", at=NOW + 5), done_record(4, peer="early")])
    assert leases.parse_done(both, epoch=1, n_shards=9)[4].peer_id == "early"  # the earliest counts


def test_newcomers_start_at_the_highest_honest_epoch_mark():
    def mark(peer, epoch, subkey=None):
        return subkey or peer, shards_pb2.EpochMark(peer_id=peer, epoch=epoch).SerializeToString()

    raw = dict([mark("a", 3), mark("b", 5), mark("c", 9, subkey="d"), mark("e", 1 << 50)])
    assert leases.highest_epoch(raw) == 5
    assert leases.highest_epoch({}) == 0


def test_epoch_order_is_a_shared_fresh_shuffle_per_epoch():
    orders = [leases.epoch_order(seed=7, epoch=e, n_shards=50) for e in range(4)]
    for order in orders:
        assert sorted(order) == list(range(50))
    assert len({tuple(o) for o in orders}) == 4
    assert leases.epoch_order(7, 1, 50) == orders[1]  # every peer computes the same
    assert leases.epoch_order(8, 1, 50) != orders[1]


def test_candidates_wrap_from_the_start_and_skip():
    order = [4, 0, 3, 1, 2]
    assert leases.candidates(order, 3, {2}) == [1, 4, 0, 3]
    assert leases.candidates(order, 0, set(order)) == []
    starts = {leases.start_position(f"peer{i}", 10) for i in range(40)}
    assert starts <= set(range(10)) and len(starts) > 5  # peers spread over the order


def test_lease_config_is_validated():
    assert leases.LeaseConfig(lease_s=6).renew_period_s == 2
    for bad in (
        dict(lease_s=0),
        dict(lease_s=10_000),
        dict(lease_s=6, renew_every_s=6),
        dict(lease_s=6, settle_s=4),
        dict(lease_s=60, lease_retention_s=100),
    ):
        with pytest.raises(ValueError):
            leases.LeaseConfig(**bad)


# --- cache announcements ----------------------------------------------------------------------------


def test_bitmaps_round_trip_and_bad_announcements_are_dropped():
    held = {0, 7, 8, 20}
    bitmap = encode_bitmap(held, 21)
    assert len(bitmap) == 3 and decode_bitmap(bitmap, 21) == held

    def ann(peer, n=21, bits=bitmap, subkey=None):
        a = shards_pb2.CacheAnnouncement(peer_id=peer, n_shards=n, bitmap=bits)
        return subkey or peer, a.SerializeToString()

    raw = dict([ann("a"), ann("b", n=22), ann("c", bits=bitmap + b"\0"), ann("d", subkey="e")])
    assert parse_announcements(raw, 21) == {"a": held}


# --- the shard cache --------------------------------------------------------------------------------


def shard_info(data: bytes, index: int = 0) -> manifest_pb2.ShardInfo:
    return manifest_pb2.ShardInfo(
        sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), n_tokens=len(data), index=index
    )


def test_a_bad_copy_is_discarded_its_source_noted_and_the_next_source_used(tmp_path: Path):
    data = os.urandom(1000)
    info = shard_info(data)
    cache = ShardCache(tmp_path)
    calls = []

    def serve(payload: bytes, name: str) -> ShardSourceRef:
        return ShardSourceRef(name=name, fetch=lambda i: calls.append(name) or payload)

    def refuse(i):
        raise BarnraiseError("gone")

    sources = [
        ShardSourceRef(name="dead", fetch=refuse),
        serve(data[:-1] + b"!", "liar"),
        serve(data[:500], "short"),
        serve(data, "honest"),
    ]
    got = cache.fetch(info, sources)
    assert got.data == data and got.source == "honest"
    assert cache.bad_sources == {"liar": 1, "short": 1}
    assert (tmp_path / info.sha256).read_bytes() == data
    assert cache.fetch(info, []).source == "cache"  # verified copy on disk now
    other = shard_info(b"other", 1)
    with pytest.raises(IntegrityError, match="no good copy of shard 1"):
        cache.fetch(other, [serve(b"wrong", "liar")])
    assert not (tmp_path / other.sha256).exists()


def test_a_rotten_cache_file_is_not_used(tmp_path: Path):
    data = b"x" * 100
    info = shard_info(data)
    (tmp_path / info.sha256).write_bytes(b"y" * 100)
    cache = ShardCache(tmp_path)
    assert cache.load(info) is None and not (tmp_path / info.sha256).exists()


def test_the_cache_stays_within_its_budget_and_keeps_the_pinned_shard(tmp_path: Path):
    cache = ShardCache(tmp_path, budget_bytes=2500)
    infos = [shard_info(bytes([i]) * 1000, i) for i in range(4)]
    cache.pinned.add(infos[0].sha256)
    for t, info in enumerate(infos):
        cache.add(info, bytes([info.index]) * 1000)
        os.utime(tmp_path / info.sha256, (1000 + t, 1000 + t))  # a clear least-recently-used order
    cache.enforce_budget()
    assert cache.cached() == {infos[0].sha256, infos[3].sha256}
    cache.budget_bytes = 0
    cache.enforce_budget()
    assert cache.cached() == {infos[0].sha256}  # pinned: the shard in training is never evicted


# --- reading from a recorded offset -----------------------------------------------------------------


def test_batch_reader_resumes_at_the_recorded_offset():
    tokens = torch.arange(1000)
    whole = BatchReader(tokens, seq_len=10)
    first = whole.next_batch(3)
    resumed = BatchReader(tokens, seq_len=10, offset=whole.offset)
    x_rest, _ = resumed.next_batch(100)
    assert first[0].flatten().tolist() == list(range(30))
    assert x_rest.flatten()[0].item() == 30 and resumed.offset == trainable_tokens(1000, 10) == 990
    assert resumed.next_batch(1) is None
