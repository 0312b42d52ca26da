"""Length-prefixed protobuf frames over hivemind P2P binary streams, with hard size caps.

hivemind's own protobuf streams read whatever length a sender announces; our averaging and state
messages come from untrusted peers, so every read states the largest frame it will accept and
every read and write has a deadline. Every write is paced by the peer's upload limit (``uplink.py``).
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from google.protobuf.message import Message

from barnraise.coordinator.errors import PeerUnavailable, ProtocolError, StreamClosed
from barnraise.peer.net.uplink import SLICE_BYTES, UPLOAD

HEADER = 4  # big-endian frame length
M = TypeVar("M", bound=Message)


async def write_frame(writer: asyncio.StreamWriter, msg: Message | bytes, timeout_s: float) -> int:
    """Send one frame within ``timeout_s``, paced by the upload limit; returns bytes written
    (header included)."""
    data = msg if isinstance(msg, bytes) else msg.SerializeToString()
    try:
        await asyncio.wait_for(_send(writer, len(data).to_bytes(HEADER, "big"), data), timeout_s)
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise PeerUnavailable(f"send of {len(data)} bytes timed out after {timeout_s:.1f} s") from e
    except (ConnectionError, OSError) as e:  # a transport fault (e.g. a relay reset), not misbehaviour
        raise StreamClosed(f"connection lost while sending: {e}") from e
    return HEADER + len(data)


async def _send(writer: asyncio.StreamWriter, header: bytes, data: bytes) -> None:
    if UPLOAD.rate_bytes_per_s <= 0:  # unlimited: one write
        writer.write(header)
        writer.write(data)
        await writer.drain()
        return
    await UPLOAD.take(HEADER)
    writer.write(header)
    view = memoryview(data)
    for i in range(0, len(data), SLICE_BYTES):
        piece = view[i : i + SLICE_BYTES]
        await UPLOAD.take(len(piece))
        writer.write(piece)
        await writer.drain()
    await writer.drain()


async def read_frame_bytes(reader: asyncio.StreamReader, max_bytes: int, timeout_s: float) -> bytes:
    try:
        header = await asyncio.wait_for(reader.readexactly(HEADER), timeout_s)
        length = int.from_bytes(header, "big")
        if length > max_bytes:
            raise ProtocolError(f"frame of {length} bytes exceeds the cap of {max_bytes}")
        return await asyncio.wait_for(reader.readexactly(length), timeout_s)
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise PeerUnavailable(f"no complete frame within {timeout_s:.1f} s") from e
    except asyncio.IncompleteReadError as e:
        raise StreamClosed("stream closed mid-frame") from e
    except (ConnectionError, OSError) as e:
        raise StreamClosed(f"connection lost while receiving: {e}") from e


async def read_frame(reader: asyncio.StreamReader, cls: type[M], max_bytes: int, timeout_s: float) -> M:
    return parse_frame(cls, await read_frame_bytes(reader, max_bytes, timeout_s))


def parse_frame(cls: type[M], data: bytes) -> M:
    try:
        return cls.FromString(data)
    except Exception as e:
        raise ProtocolError(f"malformed {cls.__name__} frame: {e}") from e


def close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
    except Exception:  # already closed by the remote side
        pass


async def finish_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float = 5.0
) -> None:
    """Server side: let the caller close first (it does once it has read our reply), then close.

    Closing right after the last write can cut off the reply while the p2p daemon still holds it.
    """
    try:
        await asyncio.wait_for(reader.read(), timeout_s)
    except Exception:  # timeout or reset: close anyway
        pass
    close_writer(writer)
