"""Targets for multi-donor state sync: the manifests donors announce, the chunks they send, and
the rounds a donor sends a peer catching up by rounds."""

from __future__ import annotations

import hashlib

import torch
from hypothesis import strategies as st

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import absorb, result_hash
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.sync import chunks, donors
from barnraise.peer.sync.chunkplan import ChunkPlan
from barnraise.peer.sync.replay import fetch_updates
from barnraise.peer.sync.state import GlobalState, OuterStep, list_hash
from barnraise.peer.sync.updatelog import Kept
from barnraise.protos import statechunks_pb2
from tests.fuzz.peer_targets import PEER, FakeP2P, NullWriter, frame, reader_of, run_async
from tests.fuzz.strategies import mutated, varied
from tests.fuzz.targets import Target

PER = chunks.CHUNK_BYTES // 4


def _state(draw) -> GlobalState:
    numel = draw(st.sampled_from([0, 1, 5, 300, 300, 300, PER + 3]))  # rarely big: megabytes are slow
    gen = torch.Generator().manual_seed(draw(st.integers(0, 1 << 16)))
    return GlobalState(
        params=torch.randn(numel, generator=gen), momentum=torch.randn(numel, generator=gen), round=3
    )


@st.composite
def manifest_stream(draw):
    """What a donor answers to a manifest request: (numel, bytes on the wire)."""
    state = _state(draw)
    m = draw(varied(chunks.manifest_of(state)))
    data = frame(m.SerializeToString())
    return state.params.numel(), draw(st.one_of(st.just(data), mutated(st.just(data))))


def check_manifest_stream(case) -> None:
    numel, data = case
    found = run_async(
        donors.manifests(FakeP2P(data), [PEER], "run", numel, auth=OPEN_RUN, min_round=-1, wait_s=0.0)
    )
    try:
        m, group = donors.pick_manifest(found, numel)
    except PeerUnavailable:
        return
    n = chunks.chunks_per_tensor(numel)
    assert group == [PEER] and m.numel == numel and m.chunk_bytes == chunks.CHUNK_BYTES
    assert len(m.param_chunks) == len(m.momentum_chunks) == n
    assert list_hash(list(m.param_chunks)) == m.params_hash


class StreamsP2P:
    """Opens the i-th stream onto ``replies[i]`` (then onto nothing): a donor answering each chunk
    request in turn."""

    def __init__(self, replies: list[bytes]):
        self.replies = list(replies)

    async def call_binary_stream_handler(self, peer_id, name):
        data = self.replies.pop(0) if self.replies else b""
        return None, reader_of(data), NullWriter()


@st.composite
def chunk_stream(draw):
    """The chunks a donor sends for a state it announced: (state, manifest, each reply's bytes)."""
    state = _state(draw)
    m = chunks.manifest_of(state)
    n = 2 * len(m.param_chunks)
    replies = []
    for i in range(n):
        reply = statechunks_pb2.ChunkReply(ok=True, index=i, data=chunks.chunk_bytes_of(state, i))
        data = frame(draw(varied(reply)).SerializeToString())
        replies.append(draw(st.one_of(st.just(data), mutated(st.just(data)))))
    return state, m, replies


def check_chunk_stream(case) -> None:
    """Whatever the donor sends, every chunk kept is the true one, so the state is the true state."""
    state, m, replies = case
    plan = ChunkPlan(2 * len(m.param_chunks), [PEER])
    download = donors._Download(StreamsP2P(replies), "run", m, plan, OPEN_RUN, 0.05, None)
    run_async(download.run())
    for i, got in download.data.items():
        assert got == chunks.chunk_bytes_of(state, i), f"chunk {i} kept with the wrong bytes"
    if not plan.complete:
        assert plan.stuck
        return
    try:
        back = chunks.assemble(m, download.data)
    except (IntegrityError, ProtocolError):
        return
    assert torch.equal(back.params, state.params) and torch.equal(back.momentum, state.momentum)


TARGETS = [
    Target("state_manifest", "donors.manifests/pick_manifest", manifest_stream(), check_manifest_stream),
    Target("state_chunks", "donors._Download (chunk replies)", chunk_stream(), check_chunk_stream),
]


# --- catching up by rounds ------------------------------------------------------------------------

OUTER = OuterStep(lr=0.7, momentum=0.9)


def _kept_round(draw, base: GlobalState, r: int) -> tuple[Kept, GlobalState]:
    """Round ``r`` from ``base`` as a donor kept it, and the state it leads to."""
    numel, codec = base.params.numel(), draw(st.sampled_from(["fp32", "fp16", "int8", "int4"]))
    avg = torch.randn(numel, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * 1e-2
    cut = draw(st.integers(1, numel - 1))
    parts, digests, decoded = [], [], []
    for lo, hi in ((0, cut), (cut, numel)):
        enc, digest = codecs.encode(avg[lo:hi], codec), hashlib.sha256()
        decoded.append(codecs.decode(enc, hi - lo, codec))
        absorb(digest, enc)
        parts.append((enc,))
        digests.append(digest.digest())
    after = OUTER.apply(base, torch.cat(decoded), r)
    kept = Kept(
        round=r,
        base_hash=base.params_hash(),
        params_hash=after.params_hash(),
        result_hash=result_hash(digests),
        codec=codec,
        parts=tuple(parts),
        nbytes=sum(e.ByteSize() for p in parts for e in p),
    )
    return kept, after


@st.composite
def updates_stream(draw):
    """A donor's answer to an updates request: (held state, target state, bytes on the wire)."""
    numel = draw(st.integers(2, 40))
    held = GlobalState(params=torch.randn(numel), momentum=torch.zeros(numel), round=3)
    state, kept = held, []
    for r in range(4, 4 + draw(st.integers(1, 2))):
        k, state = _kept_round(draw, state, r)
        kept.append(k)
    head = draw(varied(statechunks_pb2.UpdatesHeader(ok=True, rounds=[k.header() for k in kept])))
    data = frame(head.SerializeToString()) + b"".join(
        frame(e.SerializeToString()) for k in kept for p in k.parts for e in p
    )
    return held, state, draw(st.one_of(st.just(data), mutated(st.just(data))))


def check_updates_stream(case) -> None:
    """Whatever the donor sends, the replay ends on the true state or fails with our error."""
    held, target, data = case
    try:
        got = run_async(
            fetch_updates(
                FakeP2P(data), PEER, "run", held, target.round, OUTER, auth=OPEN_RUN, max_bytes=1 << 20
            )
        )
    except (IntegrityError, ProtocolError, PeerUnavailable):
        return
    assert got.round == target.round and got.params_hash() == target.params_hash()


TARGETS.append(Target("state_updates", "replay.fetch_updates", updates_stream(), check_updates_stream))
