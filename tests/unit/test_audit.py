"""Verified reduction without sockets: commitments, a reducer's evidence, recomputation, the sampling rule."""

from __future__ import annotations

import random

import pytest
import torch

from barnraise.coordinator import keys
from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import audit, codecs, commitments
from barnraise.peer.averaging.auditor import Auditor
from barnraise.peer.averaging.partreducer import PartReducer
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.averaging.segmented import aggregate_segments
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.protos import averaging_pb2

pytestmark = pytest.mark.timeout(120)

PART = 1  # the part the reducer under test reduces
NUMEL = 300_001  # two chunks: a full one and a short one of odd length


def members(n: int = 4):
    ids = [keys.generate() for _ in range(n)]
    return sorted(((keys.peer_id_of(keys.public_bytes(k)), k) for k in ids), key=lambda t: t[0])


def make_group(people, codec: str) -> averaging_pb2.Group:
    g = averaging_pb2.Group(group_id="g-7", round=7, codec=codec)
    for i, (pid, _) in enumerate(people):
        g.members.add(peer_id=pid, weight=10.0 + i, part_fraction=0.25)
    return g


def reduce_part(codec: str = "fp32", lie=None, tamper: bool = False):
    """Run one part's reduction as the reducer sees it; returns (group, reducer, delivered values)."""
    people = members()
    group = make_group(people, codec)
    r = PartReducer(group=group, index=PART, numel=NUMEL, topk_fraction=0.1, check_commitments=True, lie=lie)
    gen = torch.Generator().manual_seed(5)
    for (pid, key), m in zip(people, group.members, strict=True):
        x = torch.randn(NUMEL, generator=gen)
        r.begin(pid, m.weight)
        for c, (lo, hi) in enumerate(r.bounds):
            enc = codecs.encode(x[lo:hi], codec, **({"topk_fraction": 0.1} if codec == "topk" else {}))
            sent = codecs.decode(enc, hi - lo, codec)
            enc.commitment = commitments.commit(key, group.group_id, PART, c, m.weight, sent)
            if tamper and pid == people[0][0]:
                enc.commitment = commitments.commit(key, group.group_id, PART, c, m.weight, sent + 1)
            r.receive_chunk(pid, c, enc)
    delivered = torch.cat(
        [codecs.decode(enc, hi - lo, codec) for enc, (lo, hi) in zip(r.chunks, r.bounds, strict=True)]
    )
    return group, r, delivered


def evidence(r: PartReducer, wanted: list[int]):
    auditor = Auditor(p2p=None, peer_id="", auth=OPEN_RUN, robust=RobustConfig())
    auditor.keep(r)
    return auditor._evidence_of(r, wanted)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16", "int8", "int4", "topk"])
def test_an_honest_reducer_passes_every_segment(codec):
    group, r, delivered = reduce_part(codec)
    segs = audit.part_segments(NUMEL)
    wanted = [*range(0, len(segs), 7), len(segs) - 1]  # both chunks, the short last segment too
    reply = evidence(r, wanted)
    assert reply.ok and [ev.segment for ev in reply.segments] == wanted
    for ev in reply.segments:
        outcome, why = audit.check_evidence(group, PART, NUMEL, ev, delivered, RobustConfig(), r.contributors)
        assert (outcome, why) == (audit.HONEST, "")


@pytest.mark.parametrize("codec", ["fp32", "int8", "topk"])
def test_a_lying_reducer_is_caught_on_any_segment_of_a_corrupted_chunk(codec):
    group, r, delivered = reduce_part(codec, lie=lambda c, v: -2.0 * v if c == 1 else v)
    segs = audit.part_segments(NUMEL)
    in_chunk = {c: [i for i, s in enumerate(segs) if s[0] == c] for c in (0, 1)}
    reply = evidence(r, in_chunk[0][:3] + in_chunk[1][:3])
    outcomes = [
        audit.check_evidence(group, PART, NUMEL, ev, delivered, RobustConfig())[0] for ev in reply.segments
    ]
    assert outcomes == [audit.HONEST] * 3 + [audit.LIE] * 3


def test_fp32_recomputation_is_bit_exact():
    _, r, delivered = reduce_part("fp32")
    ev = evidence(r, [5]).segments[0]
    _, lo, hi = audit.part_segments(NUMEL)[5]
    rows = torch.stack([audit._values_of("fp32", i, hi - lo) for i in ev.inputs])
    value, _ = aggregate_segments(rows, torch.tensor([i.weight for i in ev.inputs]), RobustConfig())
    assert torch.equal(value, delivered[lo:hi])


@pytest.mark.parametrize("codec", ["int8", "int4", "fp16"])
def test_evidence_travels_as_the_sender_encoded_it(codec):
    _, r, _ = reduce_part(codec)
    segs = audit.part_segments(NUMEL)
    for number in (0, len(segs) - 1):  # a full segment and the short last one (odd length)
        _, lo, hi = segs[number]
        ev = evidence(r, [number]).segments[0]
        for inp in ev.inputs:
            assert inp.data and not inp.values
            row = r.inputs[r.members.index(inp.sender)][lo:hi]
            assert torch.equal(audit._values_of(codec, inp, hi - lo), row)


def test_evidence_that_does_not_match_its_signatures_is_invalid():
    group, r, delivered = reduce_part("fp32")
    ev = evidence(r, [3]).segments[0]
    forged = type(ev)()
    forged.CopyFrom(ev)
    forged.inputs[0].data = (
        (torch.frombuffer(bytearray(ev.inputs[0].data), dtype=torch.float32) * 2).numpy().tobytes()
    )
    assert audit.check_evidence(group, PART, NUMEL, forged, delivered, RobustConfig())[0] == audit.INVALID
    dropped = type(ev)()
    dropped.CopyFrom(ev)
    del dropped.inputs[0]
    contributors = [i.sender for i in ev.inputs]
    assert (
        audit.check_evidence(group, PART, NUMEL, dropped, delivered, RobustConfig(), contributors)[0]
        == audit.INVALID
    )
    moved = type(ev)()
    moved.CopyFrom(ev)
    moved.segment = 4  # right inputs, claimed for another segment: the path leads elsewhere
    assert audit.check_evidence(group, PART, NUMEL, moved, delivered, RobustConfig())[0] == audit.INVALID


def test_a_chunk_without_a_valid_commitment_is_refused():
    with pytest.raises(ProtocolError, match="commitment"):
        reduce_part("fp32", tamper=True)


def test_merkle_paths_lead_to_the_root_for_every_leaf():
    for count in (1, 2, 3, 5, 8, 13, 256):
        leaves = [bytes([i % 256]) * 32 for i in range(count)]
        root = commitments.root(leaves)
        for i in range(count):
            assert commitments.root_from_path(leaves[i], i, count, commitments.path(leaves, i)) == root
        assert commitments.root_from_path(leaves[0], count, count, []) is None


@pytest.mark.parametrize("chunks", [1, 2, 24, 99, 100, 1000])
@pytest.mark.parametrize("members", [2, 4, 8, 32])
def test_the_sampling_rule_meets_the_detection_target(chunks, members):
    k = audit.checks_per_round(chunks)
    q = -(-chunks // 100) / chunks
    assert audit.miss_probability(k, q) ** 5 <= audit.TARGET_MISS <= 0.01  # with a margin
    assert k == 1 or audit.miss_probability(k - 1, q) ** 5 > audit.TARGET_MISS  # the least
    assert k <= 106  # 0.99 ** (5 * 106) < 0.005
    for reducer in range(members):  # the auditors make exactly k checks of every reducer
        shares = [audit.checks_by(chunks, reducer, a, members) for a in range(members)]
        assert shares[reducer] == 0 and sum(shares) == k
        assert max(shares) - min(s for i, s in enumerate(shares) if i != reducer) <= 1


def test_picked_segments_spread_over_chunks_not_values():
    """A reducer cannot hide a lie in the short last chunk: chunks are picked uniformly first."""
    numel = 262144 + 1024  # a full chunk and a one-segment chunk
    rng = random.Random(1)
    last = len(audit.part_segments(numel)) - 1
    hits = sum(last in audit.pick_segments(numel, 1, rng) for _ in range(2000))
    assert 850 < hits < 1150


def test_a_members_chunks_carry_commitments_its_reducer_accepts():
    """The member's side (``AllReduce._send_chunks``) against the reducer's check, no sockets."""
    import asyncio
    from types import SimpleNamespace

    from barnraise.peer.averaging.allreduce import AllReduce
    from barnraise.peer.averaging.partreducer import part_bounds

    people = members()
    group = make_group(people, "int8")
    sender, key = people[0]
    member = AllReduce(p2p=None, peer_id=sender, topk_fraction=0.1, auth=SimpleNamespace(identity=key))
    update = torch.randn(12_000)
    transmitted = update.clone()
    s, e = part_bounds(update.numel(), group)[PART]
    sent = []

    class Sink:
        async def write(self, payload, timeout_s):
            sent.append(payload)

    weight = group.members[0].weight
    asyncio.run(member._send_chunks(Sink(), group, (PART, weight), update, transmitted, [(s, e)]))
    r = PartReducer(group=group, index=PART, numel=e - s, topk_fraction=0.1, check_commitments=True)
    r.begin(sender, weight)
    r.receive_chunk(sender, 0, sent[0])
    assert r.commitments[(sender, 0)] == sent[0].commitment
