"""Chunked reduction: chunks are combined as soon as every member still in has sent them."""

from __future__ import annotations

import asyncio

import pytest
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.partreducer import PartReducer, chunk_bounds
from barnraise.protos import averaging_pb2


def group(n: int, codec: str = "fp32") -> averaging_pb2.Group:
    g = averaging_pb2.Group(group_id="g1", round=3, codec=codec)
    for i in range(n):
        g.members.add(peer_id=f"p{i}", weight=1.0, part_fraction=1.0 / n)
    return g


def reducer(n: int = 2, numel: int = 10, codec: str = "fp32") -> PartReducer:
    return PartReducer(group=group(n, codec), index=0, numel=numel, topk_fraction=0.01, chunk_values=4)


def test_chunk_bounds_cover_the_part():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(0, 4) == []
    assert chunk_bounds(8, 4) == [(0, 4), (4, 8)]


def test_chunk_is_combined_once_every_member_sent_it_and_replies_stream_in_order():
    async def go():
        r = reducer()
        r.add("p0", 1.0, torch.zeros(10))
        r.begin("p1", 1.0)
        assert r.chunks == []  # p1 has sent nothing yet
        waiter = asyncio.create_task(r.wait_chunk(0, "p1"))
        r.receive_chunk("p1", 0, codecs.encode(torch.full((4,), 2.0), "fp32"))
        assert len(r.chunks) == 1 and not r.done.is_set()
        first = await waiter
        assert torch.equal(codecs.decode(first, 4, "fp32"), torch.full((4,), 1.0))
        r.receive_chunk("p1", 1, codecs.encode(torch.full((4,), 4.0), "fp32"))
        r.receive_chunk("p1", 2, codecs.encode(torch.full((2,), 6.0), "fp32"))
        assert r.done.is_set() and r.result.status == averaging_pb2.PART_OK
        assert torch.equal(r.value(), torch.tensor([1.0] * 4 + [2.0] * 4 + [3.0] * 2))
        assert sorted(r.result.contributors) == ["p0", "p1"]
        # every member gets the same serialized frame per chunk
        assert averaging_pb2.ReducedPart.FromString(r.frame(1)).tensor == r.chunks[1]

    asyncio.run(go())


def test_bad_chunk_excludes_sender_from_the_chunks_not_yet_combined():
    async def go():
        r = reducer(n=3)
        r.add("p0", 1.0, torch.zeros(10))
        r.begin("p1", 1.0)
        r.begin("p2", 1.0)
        r.receive_chunk("p1", 0, codecs.encode(torch.full((4,), 3.0), "fp32"))
        r.receive_chunk("p2", 0, codecs.encode(torch.full((4,), 6.0), "fp32"))
        assert len(r.chunks) == 1  # chunk 0 holds all three
        with pytest.raises(ProtocolError, match="non-finite"):
            r.receive_chunk("p2", 1, codecs.encode(torch.full((4,), float("nan")), "fp32"))
        r.exclude("p2", "sent NaN")
        assert await r.wait_chunk(1, "p2") is None  # an excluded member gets no more chunks
        with pytest.raises(ProtocolError, match="excluded"):
            r.receive_chunk("p2", 1, codecs.encode(torch.ones(4), "fp32"))
        r.receive_chunk("p1", 1, codecs.encode(torch.full((4,), 2.0), "fp32"))
        r.receive_chunk("p1", 2, codecs.encode(torch.full((2,), 2.0), "fp32"))
        assert r.done.is_set()
        out = r.value()
        assert torch.allclose(out[:4], torch.full((4,), 3.0), rtol=1e-3)  # (0 + 3 + 6) / 3
        assert torch.equal(out[4:], torch.full((6,), 1.0))  # (0 + 2) / 2
        assert r.result.contributors == ["p0", "p1"] and list(r.result.excluded) == ["p2"]

    asyncio.run(go())


def test_deadline_combines_what_arrived_and_names_the_late_member():
    async def go():
        r = reducer()
        r.add("p0", 1.0, torch.zeros(10))
        r.begin("p1", 1.0)
        r.receive_chunk("p1", 0, codecs.encode(torch.full((4,), 2.0), "fp32"))
        r.finish()
        assert r.done.is_set() and r.result.status == averaging_pb2.PART_OK
        assert torch.equal(r.value(), torch.tensor([1.0] * 4 + [0.0] * 6))
        assert "late: 1 of 3 chunks" in r.result.exclusions[0]
        with pytest.raises(ProtocolError, match="too late"):
            r.receive_chunk("p1", 1, codecs.encode(torch.ones(4), "fp32"))

    asyncio.run(go())


def test_out_of_order_and_oversized_chunks_are_refused():
    r = reducer()
    r.begin("p1", 1.0)
    with pytest.raises(ProtocolError, match="out of order"):
        r.receive_chunk("p1", 1, codecs.encode(torch.ones(4), "fp32"))
    with pytest.raises(ProtocolError, match="elements"):
        r.receive_chunk("p1", 0, codecs.encode(torch.ones(5), "fp32"))
    with pytest.raises(ProtocolError, match="duplicate"):
        r.begin("p1", 1.0)


def test_lossy_codec_chunks_decode_identically_for_every_member():
    async def go():
        r = PartReducer(group=group(2, "int8"), index=0, numel=600, topk_fraction=0.01, chunk_values=256)
        a, b = torch.randn(600), torch.randn(600)
        r.add("p0", 1.0, a)
        r.add("p1", 1.0, b)
        assert len(r.chunks) == 3 and r.done.is_set()
        assert (r.value() - (a + b) / 2).abs().max() < 0.05

    asyncio.run(go())
