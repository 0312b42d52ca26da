"""Butterfly all-reduce within a group: member i reduces part i of the vector for everyone.

Each member sends part j of its (encoded) update to member j and gets back part j of the group's
robust average, so each sends and receives about 2(N-1)/N of the payload. Parts stream in chunks
(``peer/partreducer.py``): a member encodes chunk c+1 while chunk c is on the wire, the reducer
combines chunk c once every member still in has delivered it and sends it straight back, and the
member decodes and hashes it on arrival. Reduce-scatter and all-gather so overlap, and no stage
holds a whole part in flight (hivemind pipelines its all-reduce the same way).

One stream per (member, reducer): a header frame (``PartMessage`` without a tensor), then one
``EncodedTensor`` frame per chunk; the reducer answers one ``ReducedPart`` frame per reduced chunk
(status OK, tensor set) and a closing ``ReducedPart`` without a tensor naming who is in and who is
out, or a single ``ReducedPart`` with status REJECTED/FAILED that ends the stream. Every frame has a
hard cap read before its body. Each member hashes the chunks it decodes, part by part; the leader
compares these hashes (``peer/averager.py``), so a partially averaged round is never applied.
With an identity (``PeerAuth``) every chunk carries its sender's signed commitment and reducers
keep their inputs for audits (``commitments.py``, ``auditor.py``): a reducer's work can be checked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import torch

from barnraise.coordinator.errors import BarnraiseError, ProtocolError, StreamClosed
from barnraise.peer.averaging import codecs, commitments, plan
from barnraise.peer.averaging.exchange import (
    MAX_SUMMARY_BYTES,
    REDUCE,
    REDUCE_HANDLER,
    ExchangeStats,
    PartFaults,
    absorb,
    chunk_cap,
    rejected,
    result_hash,
)
from barnraise.peer.averaging.gather import SparseGather
from barnraise.peer.averaging.partreducer import PartReducer, chunk_bounds, part_bounds
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import averaging_pb2

__all__ = [
    "REDUCE",
    "REDUCE_HANDLER",
    "AllReduce",
    "ExchangeStats",
    "PartFaults",
    "PartReducer",
    "part_bounds",
    "result_hash",
]

log = logging.getLogger(__name__)


class AllReduce:
    """Serves ``REDUCE_HANDLER`` and runs the exchange for the groups this peer is in."""

    def __init__(
        self,
        *,
        p2p,
        peer_id: str,
        topk_fraction: float,
        faults: PartFaults | None = None,
        auth: PeerAuth | OpenRun,
        robust: RobustConfig | None = None,
    ):
        self.p2p = p2p
        self.auth = auth  # signs our parts, checks others', bans peers clipped too often (OPEN_RUN: none)
        self.robust = robust or RobustConfig()  # how reducers combine contributions
        self.peer_id = peer_id
        self.topk_fraction = topk_fraction
        self.faults = faults  # tests only: broken parts or a stalled reducer, by round (None: none)
        self._reducers: dict[str, asyncio.Future[PartReducer]] = {}
        self.gather = SparseGather(p2p=p2p, peer_id=peer_id, auth=auth, robust=self.robust)  # sparse groups
        self.identity = getattr(auth, "identity", None)  # signs our chunks' commitments (None: no audits)
        self.keeper = None  # takes each part we reduced, with its inputs, for audits (``Auditor.keep``)

    async def register(self) -> None:
        await rpc.serve(self.p2p, REDUCE, self._take_part, access=self.auth, on_refused=self._refused)
        await self.gather.register()

    def _reducer_future(self, group_id: str) -> asyncio.Future[PartReducer]:
        if group_id not in self._reducers:
            if len(self._reducers) > 64:  # forget old groups; a hostile peer cannot grow this without bound
                for gid in list(self._reducers)[:32]:
                    del self._reducers[gid]
            self._reducers[group_id] = asyncio.get_running_loop().create_future()
        return self._reducers[group_id]

    def _codec_kwargs(self, codec: str) -> dict:
        return {"topk_fraction": self.topk_fraction} if codec == "topk" else {}

    async def run(
        self, group: averaging_pb2.Group, update: torch.Tensor, weight: float, stats: ExchangeStats
    ) -> tuple[torch.Tensor | None, torch.Tensor, str]:
        """Exchange ``update`` with the group; returns (average or None, what we transmitted, failure reason).

        On success ``stats.result_hash`` holds the hash of the average, for the group's result check.
        """
        update = update.detach().float().cpu().reshape(-1).contiguous()
        if group.codec == "sparse":  # payloads whose positions differ: an all-gather (gather.py)
            return await self.gather.run(group, update, weight, stats)
        ids = [m.peer_id for m in group.members]
        me = ids.index(self.peer_id)
        bounds = part_bounds(update.numel(), group)
        # What the others read of our update: itself for fp32; else each chunk becomes its decoded encoding
        # as it is sent (error feedback keeps the rest), so an unsent chunk counts as sent, not garbage.
        transmitted = update if group.codec == "fp32" else update.clone()
        average = torch.empty_like(update)
        s, e = bounds[me]
        reducer = self._own_reducer(group, me, (s, e), weight, update, transmitted)
        closer = asyncio.create_task(_finish_at_deadline(reducer))
        jobs = [
            self._own_part(reducer, average, s, stats.reduced.setdefault(j, []))
            if j == me
            else self._exchange_part(group, j, ids[j], weight, update, transmitted, average, bounds[j], stats)
            for j in range(len(ids))
        ]
        try:
            outcomes = await asyncio.gather(*jobs)
        finally:
            closer.cancel()
            self._reducers.pop(group.group_id, None)
        failure = self._tally(reducer, stats)
        if not failure:
            failure = "; ".join(f"part {j}: {v}" for j, v in enumerate(outcomes) if isinstance(v, str))
        if failure:
            return None, transmitted, failure
        stats.result_hash = result_hash(outcomes)
        return average, transmitted, ""

    def _own_reducer(
        self,
        group,
        me: int,
        part: tuple[int, int],
        weight: float,
        update: torch.Tensor,
        transmitted: torch.Tensor,
    ) -> PartReducer:
        """The reducer of our part, known to the members' streams, with our own (encoded) contribution."""
        s, e = part
        mine = []
        if group.codec != "fp32":
            mine = [
                self._encode_chunk(group.codec, update, transmitted, s + lo, s + hi)
                for lo, hi in chunk_bounds(e - s)
            ]
        reducer = PartReducer(
            group=group,
            index=me,
            numel=e - s,
            topk_fraction=self.topk_fraction,
            robust=self.robust,
            check_commitments=self.identity is not None,
            lie=self.faults.lie(group.round) if self.faults else None,
        )
        fut = self._reducer_future(group.group_id)
        if not fut.done():
            fut.set_result(reducer)
        reducer.add_own(self.peer_id, weight, transmitted[s:e], self.identity, mine)
        return reducer

    def _tally(self, reducer: PartReducer, stats: ExchangeStats) -> str:
        """Account for the part we reduced: bytes, clipped and excluded members, its inputs kept
        for audits; why it failed, or ""."""
        if self.keeper is not None and reducer.inputs is not None:
            self.keeper(reducer)
        if reducer.result is not None:
            stats.contributors[reducer.index] = list(reducer.result.contributors)
        own = reducer.result
        stats.bytes_received += reducer.bytes_in
        remote = [p for p in reducer.contributors if p != self.peer_id]
        reply_bytes = sum(c.ByteSize() + 8 for c in reducer.chunks) + own.ByteSize() + 4
        stats.bytes_sent += len(remote) * reply_bytes  # the same replies to each member
        for p, factor in reducer.clipped.items():
            stats.offenders.setdefault(p, f"update clipped to x{factor:.2f} by robust aggregation")
        self.auth.note_clipped(int(reducer.group.round), reducer.clipped)
        if own.status != averaging_pb2.PART_OK:
            return f"own part failed: {own.reason}"
        for p in own.excluded:
            stats.offenders.setdefault(p, reducer.excluded.get(p, "excluded"))
        return ""

    def _encode_chunk(
        self, codec: str, update: torch.Tensor, transmitted: torch.Tensor, lo: int, hi: int
    ) -> averaging_pb2.EncodedTensor:
        enc = codecs.encode(update[lo:hi], codec, **self._codec_kwargs(codec))
        if codec != "fp32":
            codecs.decode(enc, hi - lo, codec, out=transmitted[lo:hi])
        return enc

    async def _own_part(
        self, reducer: PartReducer, average: torch.Tensor, start: int, kept: list
    ) -> bytes | str:
        """Our own part, as the others decode it (into ``kept`` too); returns its digest or why it failed."""
        digest = hashlib.sha256()
        for c, (lo, hi) in enumerate(reducer.bounds):
            enc = await reducer.wait_chunk(c)
            if enc is None:
                break
            codecs.decode(enc, hi - lo, reducer.group.codec, out=average[start + lo : start + hi])
            absorb(digest, enc)
            kept.append(enc)
        await reducer.done.wait()
        if reducer.result.status != averaging_pb2.PART_OK:
            return f"own part failed: {reducer.result.reason}"
        return digest.digest()

    async def _exchange_part(
        self,
        group,
        j: int,
        peer: str,
        weight: float,
        update: torch.Tensor,
        transmitted: torch.Tensor,
        average: torch.Tensor,
        bounds: tuple[int, int],
        stats: ExchangeStats,
    ) -> bytes | str:
        """Stream our part j to its reducer and read the reduced part back; returns its digest or why not."""
        start, end = bounds
        if end <= start:  # its reducer has no part (nobody can dial it): nothing to exchange
            return hashlib.sha256().digest()
        chunks = [(start + lo, start + hi) for lo, hi in chunk_bounds(end - start)]
        header = averaging_pb2.PartMessage(
            group_id=group.group_id, sender=self.peer_id, part_index=j, weight=weight
        )
        stream = None
        try:
            async with rpc.call(
                self.p2p,
                peer,
                REDUCE,
                header,
                access=self.auth,
                connect_timeout_s=plan.time_left(group.reduce_deadline, plan.SEND_GRACE_S, 0.5),
            ) as stream:
                sender = asyncio.create_task(
                    self._send_chunks(stream, group, (j, weight), update, transmitted, chunks)
                )
                try:
                    return await self._read_reduced(stream, group, j, average, chunks, stats)
                finally:
                    if not sender.done():
                        sender.cancel()
                    # A send that failed once the reducer had answered (e.g. it rejected us and
                    # closed) changes nothing: the answer decides.
                    await asyncio.gather(sender, return_exceptions=True)
        except ProtocolError as e:
            stats.offenders.setdefault(peer, f"sent an invalid reduced part: {e}")
            return f"reducer {peer[:12]} sent an invalid part: {e}"
        except StreamClosed as e:  # a transport fault: the round fails, nobody is blamed
            return f"reducer {peer[:12]} unavailable: {e}"
        except BarnraiseError as e:
            stats.offenders.setdefault(peer, f"did not return its reduced part: {e}")
            return f"reducer {peer[:12]} unavailable: {e}"
        except Exception as e:  # e.g. a decoder failing on what the reducer sent
            stats.offenders.setdefault(peer, f"did not return its reduced part: {type(e).__name__}")
            return f"reducer {peer[:12]} failed: {type(e).__name__}: {e}"
        finally:
            if stream is not None:
                stats.bytes_sent += stream.sent
                stats.bytes_received += stream.received

    async def _send_chunks(
        self,
        stream: rpc.Stream,
        group,
        part: tuple[int, float],
        update: torch.Tensor,
        transmitted: torch.Tensor,
        chunks: list[tuple[int, int]],
    ) -> None:
        for c, (lo, hi) in enumerate(chunks):
            enc = self._encode_chunk(group.codec, update, transmitted, lo, hi)
            if self.identity is not None:
                enc.commitment = commitments.commit(
                    self.identity, group.group_id, *part, c, transmitted[lo:hi]
                )
            payload = (
                self.faults.corrupt_part(group.round, c, enc, group.codec, hi - lo) if self.faults else enc
            )
            await stream.write(payload, plan.time_left(group.reduce_deadline, plan.SEND_GRACE_S, 0.5))

    async def _read_reduced(
        self,
        stream: rpc.Stream,
        group,
        j: int,
        average: torch.Tensor,
        chunks: list[tuple[int, int]],
        stats: ExchangeStats,
    ) -> bytes | str:
        """The reducer's chunks of part ``j``, decoded into ``average``, and its closing summary."""
        digest = hashlib.sha256()
        for lo, hi in chunks:
            cap = chunk_cap(group.codec, hi - lo)
            reply = await stream.read(
                averaging_pb2.ReducedPart,
                cap,
                plan.time_left(group.reduce_deadline, plan.RECEIVE_GRACE_S, 0.5),
            )
            if reply.status != averaging_pb2.PART_OK or not reply.HasField("tensor"):
                return f"reducer {stream.remote[:12]}: {reply.reason or 'failed'}"
            codecs.decode(reply.tensor, hi - lo, group.codec, out=average[lo:hi])
            absorb(digest, reply.tensor)
            stats.reduced.setdefault(j, []).append(reply.tensor)
        summary = await stream.read(
            averaging_pb2.ReducedPart,
            MAX_SUMMARY_BYTES,
            plan.time_left(group.reduce_deadline, plan.RECEIVE_GRACE_S, 0.5),
        )
        if summary.status != averaging_pb2.PART_OK or summary.HasField("tensor"):
            return f"reducer {stream.remote[:12]}: {summary.reason or 'failed'}"
        for p, why in zip(summary.excluded, summary.exclusions, strict=False):
            stats.offenders.setdefault(p, why)
        stats.contributors[j] = list(summary.contributors)
        return digest.digest()

    def _refused(self, msg: averaging_pb2.PartMessage, remote: str, reason: str) -> None:
        """A member of a group we reduce for is refused (banned, token revoked): stop waiting for it."""
        known = self._reducers.get(msg.group_id)
        if known is not None and known.done() and remote in {m.peer_id for m in known.result().group.members}:
            known.result().exclude(remote, reason)

    async def _take_part(
        self, stream: rpc.Stream, msg: averaging_pb2.PartMessage
    ) -> averaging_pb2.ReducedPart | None:
        """A member's contribution, once ``rpc.serve`` has checked its membership: the header ``msg``,
        then its chunks, each capped by the group's codec; our replies stream back as chunks reduce."""
        remote = stream.remote
        fut = self._reducers.get(msg.group_id) or self._reducer_future(msg.group_id)
        try:
            reducer = await asyncio.wait_for(asyncio.shield(fut), plan.GROUP_WAIT_S)
        except (asyncio.TimeoutError, TimeoutError):
            return rejected("unknown group")
        if self.faults and self.faults.stalls(reducer.group.round):  # takes parts, never answers
            await asyncio.sleep(plan.time_left(reducer.group.reduce_deadline, plan.REPLY_GRACE_S))
            return None
        if remote not in reducer.members:
            return rejected("not a member of this group")
        try:
            reducer.begin(remote, reducer.validate_header(msg, remote))
        except ProtocolError as e:
            reducer.exclude(remote, str(e))
            return rejected(str(e))
        replier = asyncio.create_task(self._reply(reducer, remote, stream))
        try:
            await self._receive(reducer, remote, stream)
            await asyncio.wait_for(
                asyncio.shield(replier),
                plan.time_left(reducer.group.reduce_deadline, plan.REDUCER_HOLD_S, 1.0),
            )
        except (asyncio.TimeoutError, TimeoutError):
            log.debug("reply to %s did not finish in time", remote[:12])
        finally:
            if not replier.done():
                replier.cancel()
        return None

    async def _receive(self, reducer: PartReducer, remote: str, stream: rpc.Stream) -> None:
        """Read ``remote``'s chunks into the reducer; a bad or missing chunk excludes it at once."""
        for c, (lo, hi) in enumerate(reducer.bounds):
            cap = chunk_cap(reducer.group.codec, hi - lo)
            timeout = plan.time_left(reducer.group.reduce_deadline, plan.SEND_GRACE_S, 1.0)
            try:
                enc = await stream.read(averaging_pb2.EncodedTensor, cap, timeout)
                reducer.bytes_in += enc.ByteSize() + 4
                reducer.receive_chunk(remote, c, enc)
            except ProtocolError as e:
                reducer.exclude(remote, str(e))
                return
            except BarnraiseError as e:  # stream closed or silent: waiting longer only delays the others
                reducer.exclude(remote, f"no chunk {c + 1} of {len(reducer.bounds)}: {e}")
                return

    async def _reply(self, reducer: PartReducer, remote: str, stream: rpc.Stream) -> None:
        """Send ``remote`` each reduced chunk as soon as it exists, then the closing summary."""
        for c in range(len(reducer.bounds)):
            enc = await reducer.wait_chunk(c, remote)
            if enc is None:
                break
            timeout = plan.time_left(reducer.group.reduce_deadline, plan.REPLY_GRACE_S, 1.0)
            await stream.write(reducer.frame(c), timeout)
        else:
            await reducer.done.wait()
        if remote in reducer.excluded:
            reply = rejected(reducer.excluded[remote])
        elif reducer.result is None:
            return
        else:
            reply = reducer.result
        await stream.write(reply, plan.time_left(reducer.group.reduce_deadline, plan.REPLY_GRACE_S, 1.0))


async def _finish_at_deadline(reducer: PartReducer) -> None:
    await asyncio.sleep(plan.time_left(reducer.group.reduce_deadline))
    reducer.finish()
