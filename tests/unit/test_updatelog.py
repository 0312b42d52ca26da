"""Catching up by rounds: a donor's log of the averages it applied, as received, and the replay of
those rounds by a peer that missed them, with hostile logs refused."""

from __future__ import annotations

import hashlib
import time

import pytest
import torch

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import absorb, result_hash
from barnraise.peer.averaging.averager import RoundOutcome
from barnraise.peer.averaging.partreducer import CHUNK_VALUES
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.sync.replay import apply_round, check_header
from barnraise.peer.sync.rounds import LaunchedRound, finished
from barnraise.peer.sync.state import GlobalState, OuterStep
from barnraise.peer.sync.statesync import StateServer
from barnraise.peer.sync.updatelog import Kept, UpdateLog
from barnraise.protos import statechunks_pb2

pytestmark = pytest.mark.timeout(60)

NUMEL = CHUNK_VALUES + 5000  # two parts; the first spans two chunks
OUTER = OuterStep(lr=0.7, momentum=0.9)


def launched_round(base: GlobalState, r: int, codec: str = "int8", seed: int = 0) -> LaunchedRound:
    """Round ``r`` from ``base`` as a group member sees it: reduced chunks per part, result hash."""
    avg = torch.randn(NUMEL, generator=torch.Generator().manual_seed(seed + r)) * 1e-2
    bounds = [(0, CHUNK_VALUES + 10), (CHUNK_VALUES + 10, NUMEL)]
    parts, digests, decoded = [], [], []
    for lo, hi in bounds:
        part, digest = [], hashlib.sha256()
        for c in range(lo, hi, CHUNK_VALUES):
            enc = codecs.encode(avg[c : min(hi, c + CHUNK_VALUES)], codec)
            decoded.append(codecs.decode(enc, enc.numel, codec))
            absorb(digest, enc)
            part.append(enc)
        parts.append(part)
        digests.append(digest.digest())
    out = RoundOutcome(
        round=r,
        ok=True,
        average=torch.cat(decoded),
        codec=codec,
        result_hash=result_hash(digests),
        reduced=parts,
    )
    plan = RoundPlan.make(r, time.time(), 10.0)
    return LaunchedRound(
        plan=plan, base=base, future=finished(out), live=base.params, weight=1.0, outer=OUTER
    )


def donor_history(rounds: int) -> tuple[list[GlobalState], list[Kept]]:
    g = torch.Generator().manual_seed(9)
    states = [GlobalState(params=torch.randn(NUMEL, generator=g), momentum=torch.zeros(NUMEL), round=3)]
    kept = []
    for r in range(4, 4 + rounds):
        lr = launched_round(states[-1], r)
        states.append(lr.next_state())
        kept.append(Kept.of(lr, states[-1]))
    return states, kept


def header(kept: list[Kept]) -> statechunks_pb2.UpdatesHeader:
    return statechunks_pb2.UpdatesHeader(ok=True, rounds=[k.header() for k in kept])


def replay(held: GlobalState, kept: list[Kept], to_round: int, max_bytes: int = 1 << 30) -> GlobalState:
    head = header(kept)
    check_header(head, held, to_round, max_bytes)
    state = held
    for k, src in zip(head.rounds, kept, strict=True):
        state = apply_round(state, k, [list(p) for p in src.parts], OUTER)
    return state


def test_replaying_kept_rounds_reaches_the_donors_state_bit_for_bit():
    states, kept = donor_history(3)
    got = replay(states[0], kept, 6)
    assert got.round == 6 and got.params_hash() == states[-1].params_hash()
    assert torch.equal(got.momentum, states[-1].momentum)
    assert sum(k.nbytes for k in kept) < 8 * NUMEL  # int8: far smaller than the state


def test_the_log_serves_a_chain_from_the_requesters_state_and_nothing_else():
    states, kept = donor_history(3)
    log = UpdateLog()
    for k in kept:
        log.record(k, NUMEL)
    assert [k.round for k in log.chain(3, states[0].params_hash(), 6)] == [4, 5, 6]
    assert [k.round for k in log.chain(4, states[1].params_hash(), 5)] == [5]
    assert log.chain(3, "0" * 16, 6) == []  # the requester holds another state
    assert log.chain(3, states[0].params_hash(), 7) == []  # not kept up to there
    assert log.chain(2, states[0].params_hash(), 6) == []  # round 3 is missing


def test_the_log_is_bounded_in_rounds_and_bytes_and_forgets_a_broken_chain():
    states, kept = donor_history(5)
    log = UpdateLog(keep_rounds=3)
    for k in kept:
        log.record(k, NUMEL)
    assert [k.round for k in log.chain(5, states[2].params_hash(), 8)] == [6, 7, 8]
    small = UpdateLog(max_bytes=kept[0].nbytes + 1)
    for k in kept[:2]:
        small.record(k, NUMEL)
    assert small.chain(3, states[0].params_hash(), 4) == []  # evicted: over the byte budget
    assert [k.round for k in small.chain(4, states[1].params_hash(), 5)] == [5]
    other = launched_round(GlobalState(params=torch.zeros(NUMEL), momentum=torch.zeros(NUMEL), round=8), 9)
    log.record(Kept.of(other, other.next_state()), NUMEL)  # we resynced: the old rounds lead nowhere
    assert log.chain(5, states[2].params_hash(), 8) == []


def test_the_state_server_keeps_the_rounds_the_daemon_applies():
    states, _ = donor_history(0)
    server = StateServer(None, "run", auth=object())
    lr = launched_round(states[0], 4)
    server.publish(states[0])
    server.track(lr)
    server.publish(lr.next_state())
    assert [k.round for k in server.updates.chain(3, states[0].params_hash(), 4)] == [4]
    server.publish(GlobalState(params=torch.ones(NUMEL), momentum=torch.zeros(NUMEL), round=5))  # a sync
    assert [k.round for k in server.updates.chain(3, states[0].params_hash(), 4)] == [4]


def test_hostile_logs_are_refused():
    states, kept = donor_history(2)
    held = states[0]
    with pytest.raises(IntegrityError, match="follow on"):
        replay(held, kept[1:], 5)  # skips a round
    with pytest.raises(IntegrityError, match="more than"):
        replay(held, kept, 5, max_bytes=100)
    with pytest.raises(IntegrityError, match="lead to"):
        replay(held, kept, 9)
    with pytest.raises(PeerUnavailable):
        check_header(statechunks_pb2.UpdatesHeader(ok=False, reason="none"), held, 5, 1 << 30)
    head = header(kept)
    head.rounds[0].codec = "zip"
    with pytest.raises(IntegrityError, match="codec"):
        check_header(head, held, 5, 1 << 30)
    parts = [list(p) for p in kept[0].parts]
    flipped = statechunks_pb2.KeptRound()
    flipped.CopyFrom(kept[0].header())
    bad = type(parts[0][0])()
    bad.CopyFrom(parts[0][0])
    bad.data = bytes([bad.data[0] ^ 1]) + bad.data[1:]
    with pytest.raises(IntegrityError, match="result hash"):
        apply_round(held, flipped, [[bad, *parts[0][1:]], parts[1]], OUTER)
    with pytest.raises(IntegrityError, match="values"):
        apply_round(held, flipped, [parts[0]], OUTER)  # a part short
    flipped.params_hash = "0" * 16
    with pytest.raises(IntegrityError, match="params hash"):
        apply_round(held, flipped, parts, OUTER)
    huge = codecs.encode(torch.zeros(CHUNK_VALUES + 1), "int8")
    with pytest.raises(ProtocolError):
        apply_round(held, kept[0].header(), [[huge]], OUTER)
