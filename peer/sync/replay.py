"""Catching up by rounds: download the averages of the rounds a peer missed from a donor's update
log (``barnraise.peer.sync.updatelog``) and replay their outer steps.

Nothing a donor sends is trusted: the rounds must follow on from the state this peer holds, each
round's chunks must hash to its result hash, and the outer step must land on the params hash the
round ended at; the caller then checks the last one against the swarm's agreed hash where it
knows it. Any failure is an error and the caller downloads the whole state instead.
"""

from __future__ import annotations

import hashlib

import torch

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import absorb, result_hash
from barnraise.peer.averaging.partreducer import CHUNK_VALUES
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.net.wire import parse_frame
from barnraise.peer.sync.state import GlobalState, OuterStep
from barnraise.peer.sync.statesync import MAX_DONOR_WAIT_S
from barnraise.peer.sync.updatelog import MAX_ROUNDS_SENT, UPDATES
from barnraise.protos import averaging_pb2, statechunks_pb2

MAX_HEADER_BYTES = 1 << 20  # the list of rounds: part counts of up to MAX_ROUNDS_SENT rounds
FRAME_SLACK = 4096  # protobuf fields around a chunk's encoded values


def check_header(
    head: statechunks_pb2.UpdatesHeader, held: GlobalState, to_round: int, max_bytes: int
) -> None:
    """Refuse a list of rounds that does not lead from ``held`` to ``to_round`` within ``max_bytes``."""
    if not head.ok:
        raise PeerUnavailable(f"donor has no updates from round {held.round}: {head.reason[:200]}")
    rounds = list(head.rounds)
    if not rounds or len(rounds) > MAX_ROUNDS_SENT or rounds[-1].round != to_round:
        raise IntegrityError(f"donor's updates do not lead to round {to_round}")
    numel = held.params.numel()
    expected, prev, total = held.round + 1, held.params_hash(), 0
    for k in rounds:
        if k.round != expected or k.base_hash != prev:
            raise IntegrityError(f"donor's round {k.round} does not follow on from round {expected - 1}")
        if k.codec not in codecs.CODECS:
            raise IntegrityError(f"round {k.round}: unknown codec {k.codec[:20]!r}")
        if sum(k.part_chunks) > max(1, numel) or (numel and not sum(k.part_chunks)):
            raise IntegrityError(f"round {k.round}: {sum(k.part_chunks)} chunks for {numel} values")
        total += k.encoded_bytes
        expected, prev = k.round + 1, k.params_hash
    if total > max_bytes:
        raise IntegrityError(f"donor's updates take {total} bytes, more than the {max_bytes} asked for")


def apply_round(
    state: GlobalState,
    k: statechunks_pb2.KeptRound,
    parts: list[list[averaging_pb2.EncodedTensor]],
    outer: OuterStep,
) -> GlobalState:
    """The state after round ``k``: its chunks decoded and checked against its result hash, then the
    members' outer step, checked against the params hash the round ended at."""
    numel = state.params.numel()
    average = torch.empty(numel)
    offset, digests = 0, []
    for part in parts:
        digest = hashlib.sha256()
        for enc in part:
            n = int(enc.numel)
            if not 0 < n <= CHUNK_VALUES or offset + n > numel or enc.codec not in ("", k.codec):
                raise ProtocolError(f"round {k.round}: a chunk of {n} values at {offset} does not fit")
            codecs.decode(enc, n, k.codec, out=average[offset : offset + n])
            absorb(digest, enc)
            offset += n
        digests.append(digest.digest())
    if offset != numel:
        raise IntegrityError(f"round {k.round}: chunks hold {offset} values, not {numel}")
    if result_hash(digests) != k.result_hash:
        raise IntegrityError(f"round {k.round}: chunks do not match the round's result hash")
    after = outer.apply(state, average, k.round)
    if after.params_hash() != k.params_hash:
        raise IntegrityError(f"round {k.round}: replayed state does not match the donor's params hash")
    return after


async def fetch_updates(
    p2p,
    donor: str,
    run_id: str,
    held: GlobalState,
    to_round: int,
    outer: OuterStep,
    *,
    auth: PeerAuth | OpenRun,
    max_bytes: int,
    wait_s: float = 0.0,
    frame_timeout_s: float = 30.0,
) -> GlobalState:
    """The state of ``to_round`` from ``held`` and the rounds ``donor`` kept (see the module docstring)."""
    req = statechunks_pb2.UpdatesRequest(
        run_id=run_id,
        from_round=held.round,
        base_hash=held.params_hash(),
        to_round=to_round,
        max_bytes=max_bytes,
        wait_s=wait_s,
    )
    async with rpc.call(p2p, donor, UPDATES, req, access=auth, connect_timeout_s=10.0) as stream:
        wait = 10.0 + min(max(0.0, wait_s), MAX_DONOR_WAIT_S)
        head = await stream.read(statechunks_pb2.UpdatesHeader, MAX_HEADER_BYTES, wait)
        check_header(head, held, to_round, max_bytes)
        state, left = held, max_bytes
        for k in head.rounds:
            cap = codecs.max_encoded_bytes(k.codec, CHUNK_VALUES) + FRAME_SLACK
            parts = []
            for count in k.part_chunks:
                part = []
                for _ in range(count):
                    raw = await stream.read_bytes(min(cap, left), frame_timeout_s)
                    left -= len(raw)
                    part.append(parse_frame(averaging_pb2.EncodedTensor, raw))
                parts.append(part)
            state = apply_round(state, k, parts, outer)
    return state
