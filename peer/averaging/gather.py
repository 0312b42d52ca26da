"""All-gather of sparse payloads: every member sends its payload to every other one and combines all.

Why not the butterfly: a reducer of a sparse part would have to send back the sum of N payloads
whose positions differ, up to N times as many values, or re-sparsify it and lose what it drops
with nobody's error feedback to keep it. Sent directly, each member uploads (N - 1) payloads and
downloads as many; on home links (upload the bottleneck) no relay scheme does better, since every
member must receive (N - 1) payloads and the group's uploads must carry them all. Each member then
combines the same payloads with the same exact arithmetic (``sparseagg.py``).

One stream per (sender, receiver) on ``barnraise.gather``: a header frame (``PartMessage``
without a tensor: group, sender, its index, its weight), then one ``EncodedTensor`` frame per
segment of ``CHUNK_VALUES`` values, each capped before its body is read. The receiver validates
the header (member, index, weight as announced at join, no second payload) and every segment
(codec, the group's chunk and density, sizes, indices, scales) as it arrives, and answers one
``ReducedPart``: PART_OK once the whole payload is in, PART_REJECTED naming what was wrong. A
member's result covers the payloads it holds in full by the reduce deadline; its result hash names
them, so members that saw different sets disagree and the leader's majority verdict decides.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from barnraise.coordinator.errors import BarnraiseError, ProtocolError
from barnraise.peer.averaging import plan, sparseagg
from barnraise.peer.averaging.partreducer import CHUNK_VALUES, WEIGHT_TOLERANCE, chunk_bounds
from barnraise.peer.averaging.robust import CLIPPED_BELOW, RobustConfig
from barnraise.peer.averaging.sparse import DEFAULT_CHUNK, decode_positions, encode_sparse, max_sparse_bytes
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.net.wire import parse_frame
from barnraise.protos import averaging_pb2

log = logging.getLogger(__name__)

GATHER_HANDLER = "barnraise.gather"
FRAME_SLACK = 4096


def _rejected(reason: str) -> averaging_pb2.ReducedPart:
    return averaging_pb2.ReducedPart(status=averaging_pb2.PART_REJECTED, reason=reason)


GATHER = rpc.Method(
    name=GATHER_HANDLER,
    request=averaging_pb2.PartMessage,  # the header; the segments follow as EncodedTensor frames
    max_request_bytes=4096,
    refusal=_rejected,
    request_timeout_s=30.0,
)

Rows = list[tuple[np.ndarray, np.ndarray]]  # per segment: (positions in the segment, values)


@dataclass
class Inbox:
    """The payloads one member holds for one group, validated, segment by segment."""

    group: averaging_pb2.Group
    numel: int
    per_chunk: int
    rows: dict[str, Rows] = field(default_factory=dict)  # sender -> its segments, once complete
    digests: dict[str, bytes] = field(default_factory=dict)  # sender -> sha256 of its frames
    excluded: dict[str, str] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)  # senders whose payload is on its way
    bytes_in: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.segments = chunk_bounds(self.numel, CHUNK_VALUES)
        self.index = {m.peer_id: i for i, m in enumerate(self.group.members)}

    def check_header(self, msg: averaging_pb2.PartMessage, remote: str) -> None:
        if msg.sender != remote or remote not in self.index:
            raise ProtocolError(f"sender {remote[:12]} is not a member of group {self.group.group_id}")
        if remote in self.rows or remote in self.busy or remote in self.excluded:
            raise ProtocolError("duplicate contribution")
        if msg.part_index != self.index[remote]:
            raise ProtocolError(f"index {msg.part_index} where the group has {self.index[remote]}")
        announced = self.group.members[self.index[remote]].weight
        if not abs(msg.weight - announced) <= WEIGHT_TOLERANCE * max(1.0, abs(msg.weight)):
            raise ProtocolError(f"weight {msg.weight} differs from the {announced} announced at join")

    def check_segment(self, s: int, enc: averaging_pb2.EncodedTensor) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.segments[s]
        if enc.codec != "sparse" or enc.numel != hi - lo:
            raise ProtocolError(
                f"segment {s}: {enc.codec[:16]!r} of {enc.numel} values, not sparse of {hi - lo}"
            )
        if enc.block_size != DEFAULT_CHUNK or enc.nnz != self.per_chunk:
            raise ProtocolError(f"segment {s}: layout {enc.block_size}/{enc.nnz}, not the group's")
        return decode_positions(enc, hi - lo)

    def cap(self, s: int) -> int:
        lo, hi = self.segments[s]
        return max_sparse_bytes(hi - lo, DEFAULT_CHUNK, self.per_chunk) + FRAME_SLACK

    def complete(self) -> bool:
        return all(p in self.rows or p in self.excluded for p in self.index)

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


def encode_payload(update: torch.Tensor, per_chunk: int, out: torch.Tensor) -> tuple[list[bytes], Rows]:
    """Our payload as frames, what the others will decode of it (written into ``out``), and its rows."""
    frames, rows = [], []
    for lo, hi in chunk_bounds(update.numel(), CHUNK_VALUES):
        enc = encode_sparse(update[lo:hi], DEFAULT_CHUNK, per_chunk)
        pos, vals = decode_positions(enc, hi - lo)
        seg = out[lo:hi]
        seg.zero_()
        seg.numpy()[pos] = vals
        frames.append(enc.SerializeToString())
        rows.append((pos, vals))
    return frames, rows


class SparseGather:
    """Serves ``GATHER_HANDLER`` and runs the all-gather for the sparse groups this peer is in."""

    def __init__(self, *, p2p, peer_id: str, auth: PeerAuth | OpenRun, robust: RobustConfig):
        self.p2p, self.peer_id, self.auth, self.robust = p2p, peer_id, auth, robust
        self._inboxes: dict[str, asyncio.Future[Inbox]] = {}

    async def register(self) -> None:
        await rpc.serve(self.p2p, GATHER, self._take, access=self.auth)

    def _inbox(self, group_id: str) -> asyncio.Future[Inbox]:
        if group_id not in self._inboxes:
            if len(self._inboxes) > 64:  # a hostile peer cannot grow this without bound
                for gid in list(self._inboxes)[:32]:
                    del self._inboxes[gid]
            self._inboxes[group_id] = asyncio.get_running_loop().create_future()
        return self._inboxes[group_id]

    async def run(
        self, group, update: torch.Tensor, weight: float, stats
    ) -> tuple[torch.Tensor | None, torch.Tensor, str]:
        """As ``AllReduce.run``: (average or None, what we transmitted, failure reason)."""
        numel = update.numel()
        per_chunk = sparseagg.per_chunk_for(group, numel)
        transmitted = torch.empty_like(update)
        frames, own_rows = await asyncio.to_thread(encode_payload, update, per_chunk, transmitted)
        inbox = Inbox(group=group, numel=numel, per_chunk=per_chunk)
        inbox.rows[self.peer_id] = own_rows
        inbox.digests[self.peer_id] = _digest(frames)
        fut = self._inbox(group.group_id)
        if not fut.done():
            fut.set_result(inbox)
        me = inbox.index[self.peer_id]
        others = [m.peer_id for m in group.members if m.peer_id != self.peer_id]
        sends = [self._send(group, me, p, weight, frames, stats) for p in others]
        try:
            await asyncio.gather(self._wait_all(inbox), *sends)
        finally:
            self._inboxes.pop(group.group_id, None)
        stats.bytes_received += inbox.bytes_in
        for p in inbox.index:
            if p not in inbox.rows:
                inbox.excluded.setdefault(p, "late: no payload by the deadline")
                stats.offenders.setdefault(p, inbox.excluded[p])
        members = [p for p in inbox.index if p in inbox.rows]
        if len(members) < 2 <= len(inbox.index):  # alone in a group of one: its own payload, as dense
            return None, transmitted, "no payload from any other member"
        average = torch.empty_like(update)
        coef, clip = await asyncio.to_thread(self._combine, inbox, members, average)
        clipped = {p: float(f) for p, f in zip(members, clip.tolist(), strict=True) if f < CLIPPED_BELOW}
        for p, f in clipped.items():
            stats.offenders.setdefault(p, f"update clipped to x{f:.2f} by robust aggregation")
        self.auth.note_clipped(int(group.round), clipped)
        stats.result_hash = sparseagg.result_hash(members, inbox.digests, coef)
        return average, transmitted, ""

    def _combine(
        self, inbox: Inbox, members: list[str], average: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray]:
        g = np.zeros((len(members), len(members)))
        for s, (lo, hi) in enumerate(inbox.segments):
            g += sparseagg.gram([inbox.rows[p][s] for p in members], hi - lo)
        weights = [inbox.group.members[inbox.index[p]].weight for p in members]
        coef, clip = sparseagg.coefficients(g, weights, self.robust)
        for s, (lo, hi) in enumerate(inbox.segments):
            sparseagg.combine_into(average[lo:hi], [inbox.rows[p][s] for p in members], coef)
        return coef, clip

    async def _wait_all(self, inbox: Inbox) -> None:
        while not inbox.complete():
            left = plan.time_left(inbox.group.reduce_deadline)
            if left <= 0:
                return
            try:
                await asyncio.wait_for(inbox.changed.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                return

    async def _send(self, group, me: int, peer: str, weight: float, frames: list[bytes], stats) -> None:
        header = averaging_pb2.PartMessage(
            group_id=group.group_id, sender=self.peer_id, part_index=me, weight=weight
        )
        stream = None
        try:
            async with rpc.call(
                self.p2p, peer, GATHER, header, access=self.auth,
                connect_timeout_s=plan.time_left(group.reduce_deadline, plan.SEND_GRACE_S, 0.5),
            ) as stream:  # fmt: skip
                for frame in frames:
                    await stream.write(frame, plan.time_left(group.reduce_deadline, plan.SEND_GRACE_S, 0.5))
                reply = await stream.read(
                    averaging_pb2.ReducedPart,
                    1 << 16,
                    plan.time_left(group.reduce_deadline, plan.RECEIVE_GRACE_S, 0.5),
                )
                if reply.status != averaging_pb2.PART_OK:
                    log.warning(
                        "round %d: %s refused our payload: %s", group.round, peer[:12], reply.reason[:200]
                    )
        except BarnraiseError as e:  # its loss shows in its own result: nothing to decide here
            log.info("round %d: payload to %s not delivered: %s", group.round, peer[:12], e)
        finally:
            if stream is not None:
                stats.bytes_sent += stream.sent

    async def _take(
        self, stream: rpc.Stream, msg: averaging_pb2.PartMessage
    ) -> averaging_pb2.ReducedPart | None:
        """A member's payload, once ``rpc.serve`` has checked its membership."""
        remote = stream.remote
        fut = self._inboxes.get(msg.group_id) or self._inbox(msg.group_id)
        try:
            inbox = await asyncio.wait_for(asyncio.shield(fut), plan.GROUP_WAIT_S)
        except (asyncio.TimeoutError, TimeoutError):
            return _rejected("unknown group")
        try:
            inbox.check_header(msg, remote)
        except ProtocolError as e:
            return _rejected(str(e))
        inbox.busy.add(remote)
        rows: Rows = []
        digest = hashlib.sha256()
        try:
            for s in range(len(inbox.segments)):
                timeout = plan.time_left(inbox.group.reduce_deadline, plan.SEND_GRACE_S, 1.0)
                raw = await stream.read_bytes(inbox.cap(s), timeout)
                inbox.bytes_in += len(raw) + 4
                enc = parse_frame(averaging_pb2.EncodedTensor, raw)
                rows.append(inbox.check_segment(s, enc))
                digest.update(len(raw).to_bytes(8, "big") + raw)
        except ProtocolError as e:
            inbox.excluded[remote] = str(e)
            return _rejected(str(e))
        except BarnraiseError as e:  # closed or silent: it is left out of this member's result
            inbox.excluded[remote] = f"payload incomplete: {e}"
            return None
        finally:
            inbox.busy.discard(remote)
            inbox.notify()
        inbox.rows[remote], inbox.digests[remote] = rows, digest.digest()
        inbox.notify()
        return averaging_pb2.ReducedPart(status=averaging_pb2.PART_OK)


def _digest(frames: list[bytes]) -> bytes:
    h = hashlib.sha256()
    for raw in frames:
        h.update(len(raw).to_bytes(8, "big") + raw)
    return h.digest()
