from __future__ import annotations

import asyncio

import pytest

from barnraise.coordinator.errors import PeerUnavailable, ProtocolError
from barnraise.peer.net.wire import read_frame, read_frame_bytes
from barnraise.protos import averaging_pb2
from tests.fuzz.peer_targets import frame
from tests.fuzz.peer_targets import reader_of as reader_with


def test_frame_round_trip():
    msg = averaging_pb2.Confirm(group_id="g", sender="p", result_hash="h")

    async def go():
        return await read_frame(reader_with(frame(msg.SerializeToString())), averaging_pb2.Confirm, 1000, 1.0)

    assert asyncio.run(go()) == msg


def test_oversized_frame_is_refused_before_reading():
    async def go():
        await read_frame_bytes(reader_with((10**9).to_bytes(4, "big"), eof=False), 1 << 20, 1.0)

    with pytest.raises(ProtocolError, match="exceeds the cap"):
        asyncio.run(go())


def test_truncated_and_silent_streams_fail_with_timeouts():
    async def truncated():
        await read_frame_bytes(reader_with(frame(b"abcdef")[:-2]), 100, 1.0)

    async def silent():
        await read_frame_bytes(reader_with(b"", eof=False), 100, 0.2)

    with pytest.raises(PeerUnavailable):
        asyncio.run(truncated())
    with pytest.raises(PeerUnavailable, match="no complete frame"):
        asyncio.run(silent())


def test_malformed_frame():
    async def go():
        await read_frame(reader_with(frame(b"\xff\xff\xff")), averaging_pb2.Confirm, 100, 1.0)

    with pytest.raises(ProtocolError, match="malformed"):
        asyncio.run(go())
