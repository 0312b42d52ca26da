"""One RPC layer over hivemind P2P streams: ``call`` on the client side, ``serve`` on the server side.

Every protocol between peers (matchmaking joins, part exchange, confirmations, state sync, shard
transfer) is a stream that opens with one request frame and goes on as the protocol needs: one
reply, or a header and then chunks both ways. This module is the one place that opens, frames,
caps, times out, signs and checks those streams (frames: ``wire.py``):

- a ``Method`` declares a protocol as both sides see it: its stream name, its request type (which
  carries a ``RequestAuth auth = 15`` field), the request's size cap and deadline, and the reply
  that says "refused" in that protocol's own terms;
- ``call(p2p, peer, method, request, access=...)`` opens a stream with a connect deadline, signs
  the request (``access.attach``), sends it and yields a ``Stream`` whose every read has a cap
  and every read and write a deadline; the stream is closed on the way out. ``ask`` is the case
  of a single reply;
- ``serve(p2p, method, handler, access=...)`` registers ``handler``. Each incoming stream's
  request is read under the cap and deadline and checked by ``access.refuse`` before the handler
  sees it; a refused request gets the protocol's refusal reply (``on_refused`` hears of it first)
  and the stream ends. There is no default policy: a peer passes its ``PeerAuth``, code that runs
  without a run's membership (benchmarks, tests) passes ``auth.OPEN_RUN``, in so many words.

Failures are our errors (``coordinator/errors.py``): a peer that cannot be reached or does not
answer in time raises ``PeerUnavailable`` (``StreamClosed`` when its stream ends early), one that
breaks the protocol (an oversized or malformed frame) ``ProtocolError``. In ``serve`` these end the
stream with a debug line; anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from google.protobuf.message import Message

from barnraise.coordinator.errors import BarnraiseError, PeerUnavailable
from barnraise.peer.net.wire import (
    HEADER,
    close_writer,
    finish_stream,
    parse_frame,
    read_frame_bytes,
    write_frame,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

MAX_CONTROL_BYTES = 64 * 1024  # a control message (join, confirm, verdict): ids, numbers, a token, names


@runtime_checkable
class AccessPolicy(Protocol):
    """Who may use a protocol: ``PeerAuth`` (a run's membership) or ``OpenRun`` (everyone)."""

    def attach(self, msg: Message, method: str) -> None:
        """Sign an outgoing request (its ``auth`` field), if the policy signs anything."""

    def refuse(self, msg: Message, method: str, remote: str) -> str | None:
        """Why ``remote``'s request ``msg`` is refused, or None to serve it."""


@dataclass(frozen=True, kw_only=True)
class Method:
    """One protocol between peers, as both sides see it."""

    name: str  # the stream's protocol name, e.g. "barnraise.join"
    request: type[Message]  # the stream's first frame; has a `RequestAuth auth` field
    max_request_bytes: int  # cap on the request frame, checked before its body is read
    refusal: Callable[[str], Message]  # the protocol's reply to a refused request, given the reason
    request_timeout_s: float = 10.0  # seconds a server waits for the request frame
    reply_timeout_s: float = 5.0  # seconds to send the reply a handler returns, or the refusal
    reply: type[Message] | None = None  # the reply of a single-reply protocol (what ``ask`` reads)

    def __post_init__(self) -> None:
        if "auth" not in self.request.DESCRIPTOR.fields_by_name:
            raise ValueError(f"{self.name}: {self.request.__name__} has no `auth` field to carry membership")
        if self.max_request_bytes <= 0 or self.request_timeout_s <= 0 or self.reply_timeout_s <= 0:
            raise ValueError(f"{self.name}: caps and timeouts must be positive")


class Stream:
    """An open stream to ``remote``: capped reads, deadlines both ways, bytes counted on the wire."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str, remote_addr: str = ""
    ):
        self.reader, self.writer = reader, writer
        self.remote = remote  # peer id, as libp2p authenticated it
        self.remote_addr = remote_addr  # the multiaddr its connection comes from (served streams only)
        self.sent = 0  # bytes written, frame headers included
        self.received = 0  # bytes read, frame headers included

    async def write(self, msg: Message | bytes, timeout_s: float) -> int:
        n = await write_frame(self.writer, msg, timeout_s)
        self.sent += n
        return n

    async def read_bytes(self, max_bytes: int, timeout_s: float) -> bytes:
        data = await read_frame_bytes(self.reader, max_bytes, timeout_s)
        self.received += HEADER + len(data)
        return data

    async def read(self, cls: type[M], max_bytes: int, timeout_s: float) -> M:
        return parse_frame(cls, await self.read_bytes(max_bytes, timeout_s))


Handler = Callable[[Stream, Any], Awaitable[Message | None]]


def _require_policy(access: object) -> AccessPolicy:
    if not isinstance(access, AccessPolicy):
        raise TypeError(
            f"an access policy is required, got {access!r}: pass the peer's PeerAuth, or "
            "barnraise.peer.net.auth.OPEN_RUN where everyone is admitted"
        )
    return access


@asynccontextmanager
async def call(
    p2p,
    peer: str,
    method: Method,
    request: Message,
    *,
    access: AccessPolicy,
    connect_timeout_s: float,
    send_timeout_s: float | None = None,
) -> AsyncIterator[Stream]:
    """Open ``method``'s stream to ``peer``, send the signed ``request`` and yield the stream.

    ``send_timeout_s`` (default: ``connect_timeout_s``) bounds sending the request; the stream is
    closed when the block ends, however it ends.
    """
    _require_policy(access)
    if not isinstance(request, method.request):
        raise TypeError(f"{method.name} takes a {method.request.__name__}, not a {type(request).__name__}")
    from hivemind.p2p import PeerID

    try:
        _, reader, writer = await asyncio.wait_for(
            p2p.call_binary_stream_handler(PeerID.from_base58(peer), method.name), connect_timeout_s
        )
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise PeerUnavailable(
            f"peer {peer[:12]} did not open {method.name} within {connect_timeout_s:.1f} s"
        ) from e
    except BarnraiseError:
        raise
    except Exception as e:  # p2pd reports dial failures as its own error types
        raise PeerUnavailable(f"peer {peer[:12]} unreachable: {type(e).__name__}: {e}") from e
    stream = Stream(reader, writer, peer)
    try:
        access.attach(request, method.name)
        await stream.write(request, connect_timeout_s if send_timeout_s is None else send_timeout_s)
        yield stream
    finally:
        close_writer(writer)


async def ask(
    p2p,
    peer: str,
    method: Method,
    request: Message,
    reply: type[M] | None = None,
    *,
    access: AccessPolicy,
    timeout_s: float,
    max_reply_bytes: int = MAX_CONTROL_BYTES,
) -> M:
    """``call`` for a protocol with a single reply (``reply``, default ``method.reply``): each step
    (open, send, receive) within ``timeout_s``."""
    reply_type = reply or method.reply
    if reply_type is None:
        raise TypeError(f"{method.name} declares no reply type: pass `reply`")
    async with call(p2p, peer, method, request, access=access, connect_timeout_s=timeout_s) as stream:
        return await stream.read(reply_type, max_reply_bytes, timeout_s)


async def serve(
    p2p,
    method: Method,
    handler: Handler,
    *,
    access: AccessPolicy,
    on_refused: Callable[[Any, str, str], None] | None = None,
) -> None:
    """Register ``handler(stream, request)`` for ``method``; the request it gets has passed ``access``.

    The handler returns a reply to send (within ``method.reply_timeout_s``) or None once it has
    written what it had to. ``on_refused(request, remote, reason)`` runs before a refusal is sent.
    """
    policy = _require_policy(access)

    async def on_stream(stream_info, reader, writer) -> None:
        stream = Stream(
            reader, writer, stream_info.peer_id.to_base58(), str(getattr(stream_info, "addr", ""))
        )
        try:
            await _answer(method, handler, policy, on_refused, stream)
        finally:
            await finish_stream(reader, writer)

    await p2p.add_binary_stream_handler(method.name, on_stream)


async def _answer(
    method: Method,
    handler: Handler,
    access: AccessPolicy,
    on_refused: Callable[[Any, str, str], None] | None,
    stream: Stream,
) -> None:
    try:
        request = await stream.read(method.request, method.max_request_bytes, method.request_timeout_s)
        reason = access.refuse(request, method.name, stream.remote)
        if reason is not None:
            if on_refused is not None:
                on_refused(request, stream.remote, reason)
            reply = method.refusal(reason)
        else:
            reply = await handler(stream, request)
        if reply is not None:
            await stream.write(reply, method.reply_timeout_s)
    except (BarnraiseError, asyncio.TimeoutError, TimeoutError) as e:
        log.debug("%s from %s failed: %s", method.name, stream.remote[:12], str(e) or type(e).__name__)
    except Exception:  # a bug here must not pass for a closed stream on the other side
        log.exception("%s handler failed", method.name)
