"""Targets for what peers send each other: frames, requests, codec payloads, parts, state, shards."""

from __future__ import annotations

import asyncio
import logging
import math

import torch
from google.protobuf.message import Message
from hypothesis import strategies as st

from barnraise.coordinator import keys
from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.partreducer import PartReducer
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.wire import HEADER, parse_frame, read_frame_bytes
from barnraise.peer.sync.state import GlobalState
from barnraise.protos import (
    auth_pb2,
    averaging_pb2,
    coordinator_pb2,
    heartbeat_pb2,
    manifest_pb2,
    shards_pb2,
    statechunks_pb2,
)
from tests.fuzz.strategies import (
    encoded,
    hostile,
    hostile_floats,
    interesting_ints,
    messages,
    mutated,
    varied,
)
from tests.fuzz.targets import Target

STALL_S = 0.005  # read deadline given to a stream that stalls
HANG_S = 2.0  # a read still running after this has hung
PEER = keys.peer_id_of(bytes(range(32)))  # the remote end of every fake stream


def frame(payload: bytes, length: int | None = None) -> bytes:
    return (len(payload) if length is None else length).to_bytes(HEADER, "big") + payload


def reader_of(data: bytes, eof: bool = True) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    if eof:
        r.feed_eof()
    return r


class NullWriter:
    """The sending half of a fake stream: accepts and drops everything."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeP2P:
    """Opens every stream onto ``data``: what a hostile remote peer sends back."""

    def __init__(self, data: bytes):
        self.data = data

    async def call_binary_stream_handler(self, peer_id, name):
        return None, reader_of(self.data), NullWriter()


def run_async(coro):
    """Run ``coro``; a product deadline must surface as our error, so any timeout here is a hang."""

    async def bounded():
        try:
            return await asyncio.wait_for(coro, HANG_S)
        except asyncio.TimeoutError as e:
            raise AssertionError(f"no answer within {HANG_S} s (or a bare timeout escaped)") from e

    return asyncio.run(bounded())


# --- wire frames ----------------------------------------------------------------------------------

WIRE = st.tuples(
    st.one_of(interesting_ints(0, (1 << 32) - 1), st.integers(0, 300)),  # announced length
    st.binary(max_size=300),  # bytes that follow the header
    st.booleans(),  # the stream ends after them (else it stalls)
    st.integers(0, 256),  # the reader's cap
    st.one_of(st.none(), st.binary(max_size=6)),  # a raw, possibly partial header instead
)


def check_wire(case) -> None:
    length, body, eof, cap, raw = case
    data = (raw if raw is not None else length.to_bytes(HEADER, "big")) + body

    async def read() -> bytes:
        return await read_frame_bytes(reader_of(data, eof), cap, STALL_S)

    try:
        got = run_async(read())
    except ProtocolError:
        announced = int.from_bytes(data[:HEADER], "big")
        assert len(data) >= HEADER and announced > cap, "ProtocolError for a frame within the cap"
        return
    except PeerUnavailable:
        if len(data) >= HEADER:
            assert int.from_bytes(data[:HEADER], "big") <= cap, "oversized frame read instead of refused"
        return
    announced = int.from_bytes(data[:HEADER], "big")
    assert announced <= cap and got == data[HEADER : HEADER + announced]


# --- every protobuf message we accept -------------------------------------------------------------

MESSAGES = sorted(
    (
        m._concrete_class
        for mod in (
            auth_pb2,
            averaging_pb2,
            coordinator_pb2,
            heartbeat_pb2,
            manifest_pb2,
            shards_pb2,
            statechunks_pb2,
        )
        for m in mod.DESCRIPTOR.message_types_by_name.values()
    ),
    key=lambda c: c.DESCRIPTOR.full_name,
)
PROTO = st.sampled_from(MESSAGES).flatmap(lambda cls: st.tuples(st.just(cls), hostile(encoded(cls))))


def check_proto(case) -> None:
    cls, data = case
    try:
        msg = parse_frame(cls, data)
    except ProtocolError:
        return
    assert isinstance(msg, cls)
    msg.SerializeToString()


# --- the request frame of every stream protocol (rpc.serve) ---------------------------------------


def _methods() -> list[rpc.Method]:
    from barnraise.peer.averaging import allreduce, matchmaking, verdict
    from barnraise.peer.data import shardserver
    from barnraise.peer.sync import chunks, statesync

    return [
        matchmaking.JOIN,
        allreduce.REDUCE,
        verdict.CONFIRM,
        shardserver.SHARD,
        statesync.STATE,
        chunks.MANIFEST,
        chunks.CHUNKS,
    ]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


REQUEST = st.sampled_from(_methods()).flatmap(
    lambda m: st.tuples(
        st.just(m),
        hostile(encoded(m.request)),
        st.one_of(st.none(), interesting_ints(0, (1 << 32) - 1)),  # a lying length
    )
)


def check_request(case) -> None:
    method, body, length = case
    seen: list[Message] = []

    async def handler(stream, request):
        seen.append(request)

    async def answer() -> rpc.Stream:
        stream = rpc.Stream(reader_of(frame(body, length)), NullWriter(), PEER)
        await rpc._answer(method, handler, OPEN_RUN, None, stream)
        return stream

    errors, logger = _Errors(), logging.getLogger(rpc.__name__)
    logger.addHandler(errors)
    try:
        stream = run_async(answer())
    finally:
        logger.removeHandler(errors)
    assert not errors.records, f"{method.name}: {errors.records[0].getMessage()}"
    assert stream.received <= HEADER + method.max_request_bytes
    for request in seen:
        assert isinstance(request, method.request)


# --- codec payloads -------------------------------------------------------------------------------


def _tensor(draw, numel: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(draw(st.integers(0, 1 << 16)))
    scale = draw(st.sampled_from([0.0, 1e-8, 1.0, 1e4, 6e4]))
    return torch.randn(numel, generator=gen) * scale


@st.composite
def encoded_tensor(draw, codec: str, max_numel: int = 700) -> averaging_pb2.EncodedTensor:
    """A valid encoding of ``codec`` with some fields replaced, its bytes mutated, or a random one."""
    how = draw(st.sampled_from(("valid", "fields", "bytes", "random")))
    if how == "random":
        msg = draw(messages(averaging_pb2.EncodedTensor))
        msg.codec = draw(st.sampled_from([codec, codec, "fp32", ""]))
        return msg
    numel = draw(st.integers(0, max_numel))
    kwargs = {}
    if codec in ("int8", "int4", "topk"):
        kwargs["block_size"] = draw(st.sampled_from([16, 32, 64, 256, 65536]))
    if codec == "topk":
        kwargs["topk_fraction"] = draw(st.sampled_from([0.01, 0.1, 0.25]))
    msg = codecs.encode(_tensor(draw, numel), codec, **kwargs)
    if how == "fields":
        fields = list(averaging_pb2.EncodedTensor.DESCRIPTOR.fields)
        for f in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3)):
            if f.type == f.TYPE_BYTES:
                setattr(msg, f.name, draw(mutated(st.just(getattr(msg, f.name)))))
            elif f.name == "codec":
                msg.codec = draw(
                    st.sampled_from(["fp32", "fp16", "bf16", "int8", "int4", "topk", "sparse", "x"])
                )
            else:
                hi = (1 << 32) - 1 if f.name == "block_size" else (1 << 64) - 1
                setattr(msg, f.name, draw(interesting_ints(0, hi)))
    elif how == "bytes":
        try:
            msg = averaging_pb2.EncodedTensor.FromString(draw(mutated(st.just(msg.SerializeToString()))))
        except Exception:
            pass  # the frame parser refuses it (the proto target): keep the valid one
    return msg


def codec_case(codec: str) -> st.SearchStrategy:
    return st.tuples(
        encoded_tensor(codec),
        st.one_of(st.none(), st.integers(0, 700)),  # the size we expect, if not the message's
        st.booleans(),  # decode into a caller's buffer
    )


def codec_check(codec: str):
    def check(case) -> None:
        msg, numel, into = case
        numel = numel if numel is not None or msg.numel > 100_000 else msg.numel
        numel = 0 if numel is None else numel
        out = torch.full((numel,), 7.0) if into else None
        try:
            got = codecs.decode(msg, numel, codec, out=out)
        except ProtocolError:
            return
        assert got.dtype == torch.float32 and got.shape == (numel,), f"{got.dtype} {tuple(got.shape)}"
        assert bool(torch.isfinite(got).all()), "non-finite value accepted"
        assert out is None or got is out

    return check


# --- part reducer: headers and chunks -------------------------------------------------------------

MEMBERS = [keys.peer_id_of(bytes([i]) * 32) for i in range(1, 5)]


@st.composite
def part_case(draw):
    n = draw(st.integers(1, 4))
    codec = draw(st.sampled_from(["fp32", "int8", "topk"]))
    weights = [draw(st.sampled_from([1.0, 2.0, 0.5, 1e-6])) for _ in range(n)]
    group = averaging_pb2.Group(group_id="g", codec=codec)
    for p, w in zip(MEMBERS[:n], weights, strict=True):
        group.members.add(peer_id=p, weight=w)
    numel, chunk_values = draw(st.integers(1, 80)), draw(st.sampled_from([16, 32, 1 << 18]))
    index = draw(st.integers(0, n - 1))
    headers, chunks = [], []
    for _ in range(draw(st.integers(0, 5))):
        remote = draw(st.sampled_from([*MEMBERS[:n], MEMBERS[-1], PEER]))
        msg = averaging_pb2.PartMessage(group_id="g", sender=remote, part_index=index)
        msg.weight = weights[MEMBERS.index(remote)] if remote in MEMBERS[:n] else 1.0
        msg = draw(varied(msg))
        headers.append((msg, draw(st.sampled_from([remote, msg.sender]))))
    for _ in range(draw(st.integers(0, 8))):
        c = draw(st.one_of(st.integers(0, 6), interesting_ints(-(1 << 31), 1 << 31)))
        chunks.append((draw(st.sampled_from([*MEMBERS[:n], PEER])), c, draw(encoded_tensor(codec, 40))))
    return group, index, numel, chunk_values, headers, chunks


def check_part(case) -> None:
    group, index, numel, chunk_values, headers, chunks = case
    pr = PartReducer(group=group, index=index, numel=numel, topk_fraction=0.25, chunk_values=chunk_values)
    announced = {m.peer_id: m.weight for m in group.members}
    for msg, remote in headers:
        try:
            w = pr.validate_header(msg, remote)
            pr.begin(remote, w)
        except ProtocolError:
            continue
        assert remote in announced and math.isfinite(w) and abs(w - announced[remote]) <= 1e-5 * max(1.0, w)
    for sender, c, enc in chunks:
        try:
            pr.receive_chunk(sender, c, enc)
        except ProtocolError:
            continue
        assert 0 <= c < len(pr.bounds) and sender in announced
    pr.finish()
    assert pr.done.is_set() and len(pr.chunks) <= len(pr.bounds)
    for c, enc in enumerate(pr.chunks):
        s, e = pr.bounds[c]
        codecs.decode(enc, e - s, group.codec)  # our own reduced output must itself be valid


# --- state sync -----------------------------------------------------------------------------------


@st.composite
def state_blob(draw):
    numel = draw(st.integers(0, 40))
    params = _tensor(draw, numel)
    if numel and draw(st.booleans()):
        params[draw(st.integers(0, numel - 1))] = draw(hostile_floats(32))
    rnd = draw(interesting_ints(-(1 << 63), (1 << 63) - 1))
    blob = GlobalState(params=params, momentum=_tensor(draw, numel), round=rnd).to_bytes()
    return draw(hostile(st.just(blob))), draw(st.sampled_from([numel, numel, 0, numel + 1]))


def _check_state(state: GlobalState, numel: int) -> None:
    assert state.params.shape == (numel,) and state.momentum.shape == (numel,)
    assert bool(torch.isfinite(state.params).all() and torch.isfinite(state.momentum).all())
    assert state.round >= -1


def check_state(case) -> None:
    data, numel = case
    try:
        state = GlobalState.from_bytes(data, numel)
    except IntegrityError:
        return
    _check_state(state, numel)


@st.composite
def state_stream(draw):
    """What a donor answers: a header, then chunks (numel, bytes on the wire)."""
    numel = draw(st.integers(0, 24))
    state = GlobalState(
        params=_tensor(draw, numel), momentum=_tensor(draw, numel), round=draw(st.integers(0, 9))
    )
    blob = state.to_bytes()
    head = averaging_pb2.StateHeader(
        ok=True, round=state.round, params_hash=state.params_hash(), total_bytes=len(blob)
    )
    head = draw(varied(head))
    cut = draw(st.integers(0, len(blob)))
    parts = [blob[:cut], blob[cut:]] if draw(st.booleans()) else [draw(mutated(st.just(blob)))]
    data = frame(head.SerializeToString()) + b"".join(frame(p) for p in parts)
    return numel, draw(st.one_of(st.just(data), mutated(st.just(data))))


def check_state_stream(case) -> None:
    from barnraise.peer.sync.statesync import download_state

    numel, data = case
    try:
        state = run_async(download_state(FakeP2P(data), PEER, "run", numel, 1.0, auth=OPEN_RUN))
    except (IntegrityError, ProtocolError, PeerUnavailable):
        return
    _check_state(state, numel)


# --- shard transfer -------------------------------------------------------------------------------


@st.composite
def shard_stream(draw):
    size = draw(st.integers(0, 3000))
    reply = shards_pb2.ShardFetchReply(status=shards_pb2.FETCH_OK, total_bytes=size)
    reply = draw(varied(reply))
    chunks = [draw(st.binary(max_size=1200)) for _ in range(draw(st.integers(0, 4)))]
    data = frame(reply.SerializeToString()) + b"".join(
        frame(c, draw(st.one_of(st.none(), interesting_ints(0, (1 << 32) - 1)))) for c in chunks
    )
    return size, draw(st.one_of(st.just(data), mutated(st.just(data))))


def check_shard_stream(case) -> None:
    from barnraise.peer.data.shardserver import fetch_from_peer

    size, data = case
    info = manifest_pb2.ShardInfo(index=0, size_bytes=size, sha256="0" * 64)
    try:
        got = run_async(fetch_from_peer(FakeP2P(data), PEER, "run", info, auth=OPEN_RUN))
    except (ProtocolError, PeerUnavailable):
        return
    assert len(got) == size


TARGETS = [
    Target("wire_frame", "wire.read_frame_bytes", WIRE, check_wire),
    Target("protobuf", "wire.parse_frame (every message type)", PROTO, check_proto),
    Target("rpc_request", "rpc._answer (request caps of every protocol)", REQUEST, check_request),
    *(
        Target(f"codec_{c}", f"codecs.decode ({c})", codec_case(c), codec_check(c))
        for c in ("fp32", "fp16", "bf16", "int8", "int4", "topk", "sparse")
    ),
    Target("part_reducer", "PartReducer.validate_header/receive_chunk", part_case(), check_part),
    Target("state_blob", "GlobalState.from_bytes", state_blob(), check_state),
    Target("state_transfer", "statesync.download_state", state_stream(), check_state_stream),
    Target("shard_transfer", "shardserver.fetch_from_peer", shard_stream(), check_shard_stream),
]
