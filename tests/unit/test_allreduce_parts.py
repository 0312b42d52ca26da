"""Part bounds, group split and reducer validation, without sockets."""

from __future__ import annotations

import asyncio

import pytest
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import PartReducer, part_bounds
from barnraise.peer.averaging.matchmaking import split_groups
from barnraise.protos import averaging_pb2


def group(n: int, codec: str = "fp32") -> averaging_pb2.Group:
    g = averaging_pb2.Group(group_id="g1", round=3, codec=codec)
    for i in range(n):
        g.members.add(peer_id=f"p{i}", weight=10.0 * (i + 1), part_fraction=1.0 / n)
    return g


def test_part_bounds_cover_the_vector():
    for numel in (0, 1, 7, 1000):
        b = part_bounds(numel, group(3))
        assert b[0][0] == 0 and b[-1][1] == numel
        assert all(b[i][1] == b[i + 1][0] for i in range(len(b) - 1))


def test_split_groups_is_deterministic_and_complete():
    ids = [f"peer{i}" for i in range(100)]
    groups = split_groups(ids, 5, 16)
    assert sorted(p for g in groups for p in g) == sorted(ids)
    assert all(12 <= len(g) <= 17 for g in groups)
    assert split_groups(list(reversed(ids)), 5, 16) == groups
    assert split_groups(ids, 6, 16) != groups


def msg(sender: str, weight: float, t: torch.Tensor, index: int = 0) -> averaging_pb2.PartMessage:
    return averaging_pb2.PartMessage(
        group_id="g1", sender=sender, part_index=index, weight=weight, tensor=codecs.encode(t, "fp32")
    )


def test_reducer_weighted_mean_and_validation():
    async def go():
        r = PartReducer(group=group(3), index=0, numel=4, topk_fraction=0.01)
        r.add("p0", 10.0, torch.ones(4))
        w, t = r.validate(msg("p1", 20.0, torch.full((4,), 4.0)), "p1")
        r.add("p1", w, t)
        with pytest.raises(ProtocolError, match="not a member"):
            r.validate(msg("px", 1.0, torch.ones(4)), "px")
        with pytest.raises(ProtocolError, match="not a member"):
            r.validate(msg("p2", 30.0, torch.ones(4)), "p1")  # claims another sender
        with pytest.raises(ProtocolError, match="announced at join"):
            r.validate(msg("p2", 1e9, torch.ones(4)), "p2")
        with pytest.raises(ProtocolError, match="non-finite"):
            r.validate(msg("p2", 30.0, torch.tensor([1.0, float("nan"), 0, 0])), "p2")
        with pytest.raises(ProtocolError, match="elements"):
            r.validate(msg("p2", 30.0, torch.ones(5)), "p2")
        with pytest.raises(ProtocolError, match="part 1"):
            r.validate(msg("p2", 30.0, torch.ones(4), index=1), "p2")
        r.exclude("p2", "sent NaN")
        assert r.done.is_set()
        out = r.value()
        assert torch.allclose(out, torch.full((4,), 3.0))
        assert r.result.contributors == ["p0", "p1"] and list(r.result.excluded) == ["p2"]

    asyncio.run(go())


def test_reducer_closes_late_members_out():
    async def go():
        r = PartReducer(group=group(2), index=0, numel=2, topk_fraction=0.01)
        r.add("p0", 10.0, torch.ones(2))
        r.finish()
        assert r.result.status == averaging_pb2.PART_OK
        assert "late" in r.result.exclusions[0]
        with pytest.raises(ProtocolError, match="too late"):
            r.add("p1", 20.0, torch.ones(2))

    asyncio.run(go())
