"""A state as hashed chunks: the donor's manifest, the checks on hostile manifests and chunks, the
choice among several donors' manifests, and the state put back together."""

from __future__ import annotations

import hashlib

import pytest
import torch

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable
from barnraise.peer.sync import chunks
from barnraise.peer.sync.donors import pick_manifest
from barnraise.peer.sync.state import GlobalState, tensor_hash
from barnraise.protos import statechunks_pb2

pytestmark = pytest.mark.timeout(60)

PER = chunks.CHUNK_BYTES // 4  # values per chunk
NUMEL = 2 * PER + 1000  # three chunks per tensor, the last one short


def state(seed: int = 0, round_no: int = 5) -> GlobalState:
    g = torch.Generator().manual_seed(seed)
    return GlobalState(
        params=torch.randn(NUMEL, generator=g), momentum=torch.randn(NUMEL, generator=g), round=round_no
    )


def copy(m: statechunks_pb2.StateManifest) -> statechunks_pb2.StateManifest:
    out = statechunks_pb2.StateManifest()
    out.CopyFrom(m)
    return out


def test_the_params_hash_is_the_hash_of_the_manifests_chunk_list_and_chunks_rebuild_the_state():
    s = state()
    m = chunks.manifest_of(s)
    assert m.params_hash == s.params_hash() == tensor_hash(s.params)
    assert len(m.param_chunks) == len(m.momentum_chunks) == 3
    chunks.check_manifest(m, NUMEL)
    got = {i: chunks.chunk_bytes_of(s, i) for i in range(6)}
    for i, data in got.items():
        chunks.check_chunk(m, i, data)
    assert chunks.chunk_size(NUMEL, 2) == 4000 and len(got[5]) == 4000
    back = chunks.assemble(m, got)
    assert torch.equal(back.params, s.params) and torch.equal(back.momentum, s.momentum) and back.round == 5
    assert tensor_hash(back.params) == s.params_hash()


def test_hostile_manifests_are_refused():
    m = chunks.manifest_of(state())
    cases = {
        "another model": lambda x: setattr(x, "numel", NUMEL + 1),
        "another chunk size": lambda x: setattr(x, "chunk_bytes", 4096),
        "a chunk short": lambda x: x.param_chunks.pop(),
        "a momentum chunk too many": lambda x: x.momentum_chunks.append(b"\0" * 32),
        "a digest of 31 bytes": lambda x: x.momentum_chunks.__setitem__(0, b"\0" * 31),
        "a list that is not its params hash": lambda x: x.param_chunks.__setitem__(1, b"\1" * 32),
        "a params hash that is not its list": lambda x: setattr(x, "params_hash", "0" * 16),
        "round below -1": lambda x: setattr(x, "round", -2),
    }
    for why, spoil in cases.items():
        bad = copy(m)
        spoil(bad)
        with pytest.raises(IntegrityError):
            chunks.check_manifest(bad, NUMEL)
            pytest.fail(why)


def test_hostile_chunks_are_refused():
    s = state()
    m = chunks.manifest_of(s)
    good = chunks.chunk_bytes_of(s, 1)
    flipped = bytes([good[0] ^ 1]) + good[1:]
    for index, data in (
        (1, flipped),
        (1, good[:-4]),
        (1, good + b"\0\0\0\0"),
        (2, good),
        (6, good),
        (-1, good),
    ):
        with pytest.raises(IntegrityError):
            chunks.check_chunk(m, index, data)
    with pytest.raises(IntegrityError, match="every chunk"):
        chunks.assemble(m, {i: chunks.chunk_bytes_of(s, i) for i in range(5)})


def test_a_state_of_non_finite_values_is_refused_even_with_matching_hashes():
    s = state()
    bad = GlobalState(params=s.params.clone(), momentum=s.momentum, round=5)
    bad.params[7] = float("nan")
    m = chunks.manifest_of(bad)
    with pytest.raises(IntegrityError, match="non-finite"):
        chunks.assemble(m, {i: chunks.chunk_bytes_of(bad, i) for i in range(6)})


def test_the_manifest_most_donors_agree_on_wins_and_none_contradicts_the_agreed_hash():
    honest, liar = chunks.manifest_of(state(0)), chunks.manifest_of(state(1))
    newer_liar = chunks.manifest_of(state(1, round_no=9))
    found = {"a": honest, "b": honest, "c": liar, "d": newer_liar}
    m, donors = pick_manifest(found, NUMEL)
    assert m.params_hash == honest.params_hash and donors == ["a", "b"]
    # a lone liar with a newer round wins only when nobody reaches the round asked for otherwise
    assert pick_manifest(found, NUMEL, min_round=9)[1] == ["d"]
    # the agreed hash for round 5 rules out the others' round-5 list, however many announce it
    m, donors = pick_manifest({"a": honest, "c": liar, "e": liar}, NUMEL, agreed=(5, honest.params_hash))
    assert donors == ["a"]
    # the same params with another momentum list: donors that disagree are not mixed
    odd = copy(honest)
    odd.momentum_chunks[0] = hashlib.sha256(b"x").digest()
    m, donors = pick_manifest({"a": honest, "b": odd, "c": honest}, NUMEL)
    assert donors == ["a", "c"]


def test_no_usable_manifest_is_peer_unavailable():
    bad = chunks.manifest_of(state())
    bad.params_hash = "f" * 16
    with pytest.raises(PeerUnavailable):
        pick_manifest({"a": bad}, NUMEL)
    with pytest.raises(PeerUnavailable):
        pick_manifest({}, NUMEL)


def test_donors_are_the_peers_holding_the_agreed_state_fastest_known_first():
    from barnraise.peer.sync.donors import RateBook, select_donors
    from barnraise.protos import heartbeat_pb2

    def beat(peer: str, h: str, r: int) -> heartbeat_pb2.Heartbeat:
        return heartbeat_pb2.Heartbeat(peer_id=peer, params_hash=h, hash_round=r)

    beats = [beat(f"p{i}", "aa", 6) for i in range(10)] + [
        beat("odd", "bb", 6),
        beat("old", "cc", 5),
        beat("me", "aa", 6),
    ]
    rates = RateBook()
    rates.rates.update({"p7": 3e6, "p2": 9e6, "odd": 1e9})
    phash, rnd, donors = select_donors(beats, "me", rates, limit=4)
    assert (phash, rnd) == ("aa", 6)
    assert donors[:2] == ["p2", "p7"] and len(donors) == 4 and "odd" not in donors and "me" not in donors
