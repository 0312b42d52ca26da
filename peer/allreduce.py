"""Butterfly all-reduce within a group: member i reduces part i of the vector for everyone.

Each member sends part j of its (encoded) update to member j and gets back part j of the group's
robust average, so each sends and receives about 2(N-1)/N of the payload. A reducer validates
every contribution before use (sender is a member and is who the transport says it is, weight as
announced at join, codec, size, finite values); an invalid or late contribution is left out of
that part and its sender named, never a crash. It then combines what it kept with the run's
robust aggregator (peer/robust.py: weights and norms bounded, CenteredClip by default) and names
the senders whose updates it had to clip. The result of a part is encoded once and sent to every
member, so all members assemble byte-identical averages.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

import torch

from coordinator.errors import BarnraiseError, ProtocolError, StreamClosed
from peer import codecs
from peer.robust import CLIPPED_BELOW, RobustConfig, aggregate
from peer.wire import close_writer, finish_stream, read_frame, write_frame
from protos import averaging_pb2

log = logging.getLogger(__name__)

REDUCE_HANDLER = "barnraise.reduce"
MAX_HEADER_BYTES = 4096
WEIGHT_TOLERANCE = 1e-6


def part_bounds(numel: int, group: averaging_pb2.Group) -> list[tuple[int, int]]:
    """[start, end) of each member's part, by its ``part_fraction`` (normalised)."""
    fractions = [max(m.part_fraction, 0.0) for m in group.members]
    total = sum(fractions) or 1.0
    bounds, start, acc = [], 0, 0.0
    for i, f in enumerate(fractions):
        acc += f / total
        end = numel if i == len(fractions) - 1 else min(numel, round(acc * numel))
        bounds.append((start, end))
        start = end
    return bounds


@dataclass
class PartReducer:
    """Collects contributions to the one part this member reduces, then combines them robustly."""

    group: averaging_pb2.Group
    index: int
    numel: int
    topk_fraction: float
    robust: RobustConfig = field(default_factory=RobustConfig)
    weight: float = 0.0  # sum of the weights contributors claimed
    contributors: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    clipped: dict[str, float] = field(default_factory=dict)  # sender -> factor its update was scaled by
    done: asyncio.Event = field(default_factory=asyncio.Event)
    result: averaging_pb2.ReducedPart | None = None
    bytes_in: int = 0  # contributions received over the network
    reduce_s: float = 0.0  # seconds spent combining (robust aggregation's cost)
    _rows: torch.Tensor | None = None  # one row per contributor, in ``contributors`` order
    _weights: list[float] = field(default_factory=list)

    def add(self, sender: str, weight: float, tensor: torch.Tensor) -> None:
        if self.done.is_set():
            raise ProtocolError("part already reduced (too late)")
        if self._rows is None:
            self._rows = torch.empty(len(self.group.members), self.numel)
        self._rows[len(self.contributors)].copy_(tensor)
        self._weights.append(weight)
        self.weight += weight
        self.contributors.append(sender)
        if len(self.contributors) + len(self.excluded) >= len(self.group.members):
            self.finish()

    def validate(self, msg: averaging_pb2.PartMessage, remote: str) -> tuple[float, torch.Tensor]:
        members = {m.peer_id: m for m in self.group.members}
        if msg.sender != remote or remote not in members:
            raise ProtocolError(f"sender {remote[:12]} is not a member of group {self.group.group_id}")
        if remote in self.contributors or remote in self.excluded:
            raise ProtocolError("duplicate contribution")
        if msg.part_index != self.index:
            raise ProtocolError(f"part {msg.part_index} sent to the reducer of part {self.index}")
        if not (
            math.isfinite(msg.weight)
            and abs(msg.weight - members[remote].weight) <= WEIGHT_TOLERANCE * max(1.0, msg.weight)
        ):
            raise ProtocolError(
                f"weight {msg.weight} differs from the {members[remote].weight} announced at join"
            )
        return msg.weight, codecs.decode(msg.tensor, self.numel, self.group.codec)

    def exclude(self, sender: str, reason: str) -> None:
        if sender in self.contributors or sender in self.excluded:
            return
        self.excluded[sender] = reason
        log.warning("round %d: left %s out of part %d: %s", self.group.round, sender[:12], self.index, reason)
        if len(self.contributors) + len(self.excluded) >= len(self.group.members):
            self.finish()

    def finish(self) -> None:
        """Close the part: robust combination of what arrived (late members are excluded)."""
        if self.done.is_set():
            return
        for m in self.group.members:
            if m.peer_id not in self.contributors and m.peer_id not in self.excluded:
                self.excluded[m.peer_id] = "late: no contribution by the deadline"
        if self._rows is None or self.weight <= 0:
            self.result = averaging_pb2.ReducedPart(
                status=averaging_pb2.PART_FAILED, reason="no valid contribution"
            )
        else:
            t0 = time.perf_counter()
            n = len(self.contributors)
            agg = aggregate(self._rows[:n], torch.tensor(self._weights, dtype=torch.float32), self.robust)
            self.reduce_s = time.perf_counter() - t0
            for sender, factor in zip(self.contributors, agg.clip.tolist(), strict=True):
                if factor < CLIPPED_BELOW:
                    self.clipped[sender] = factor
            self._rows = None
            self.result = averaging_pb2.ReducedPart(
                status=averaging_pb2.PART_OK,
                tensor=codecs.encode(agg.value, self.group.codec, **self._codec_kwargs()),
                contributors=sorted(self.contributors),
                total_weight=float(agg.weights.sum()),
                excluded=list(self.excluded),
                exclusions=[f"{p[:12]}: {r}" for p, r in self.excluded.items()],
            )
        self.done.set()

    def _codec_kwargs(self) -> dict:
        return {"topk_fraction": self.topk_fraction} if self.group.codec == "topk" else {}


def faulty_part(fault: str, enc: averaging_pb2.EncodedTensor, codec: str, numel: int) -> bytes:
    """A deliberately broken contribution, so tests can show how reducers treat bad members."""
    if fault == "nan":
        bad = codecs.encode(torch.full((numel,), float("nan")), "fp32") if codec == "fp32" else enc
        if codec != "fp32":
            bad = averaging_pb2.EncodedTensor()
            bad.CopyFrom(enc)
            bad.scales = b"\xff\x7f" * (len(enc.scales) // 2)  # fp16 NaN scales
        return bad.SerializeToString()
    if fault == "shape":
        return codecs.encode(torch.zeros(max(0, numel - 1)), codec).SerializeToString()
    if fault == "oversize":
        return b"\0" * (codecs.max_encoded_bytes(codec, numel) + 8192)
    return enc.SerializeToString()


@dataclass
class ExchangeStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    offenders: dict[str, str] = field(default_factory=dict)


class AllReduce:
    """Serves ``REDUCE_HANDLER`` and runs the exchange for the groups this peer is in."""

    def __init__(
        self,
        *,
        p2p,
        peer_id: str,
        topk_fraction: float,
        fault: str = "",
        auth=None,
        robust: RobustConfig | None = None,
    ):
        self.p2p = p2p
        self.auth = auth  # peer.auth.PeerAuth: signs our parts, checks others' (None: no checks)
        self.robust = robust or RobustConfig()  # how reducers combine contributions
        self.peer_id = peer_id
        self.topk_fraction = topk_fraction
        self.fault = fault  # protocol fault injected by tests: nan, shape, oversize, stall (see faulty_part)
        self._reducers: dict[str, asyncio.Future[PartReducer]] = {}

    async def register(self) -> None:
        await self.p2p.add_binary_stream_handler(REDUCE_HANDLER, self._handle_part)

    def _reducer_future(self, group_id: str) -> asyncio.Future[PartReducer]:
        if group_id not in self._reducers:
            if len(self._reducers) > 64:  # forget old groups; a hostile peer cannot grow this without bound
                for gid in list(self._reducers)[:32]:
                    del self._reducers[gid]
            self._reducers[group_id] = asyncio.get_running_loop().create_future()
        return self._reducers[group_id]

    async def run(
        self, group: averaging_pb2.Group, update: torch.Tensor, weight: float, stats: ExchangeStats
    ) -> tuple[torch.Tensor | None, torch.Tensor, str]:
        """Exchange ``update`` with the group; returns (average or None, what we transmitted, failure reason)."""
        ids = [m.peer_id for m in group.members]
        me = ids.index(self.peer_id)
        bounds = part_bounds(update.numel(), group)
        kwargs = {"topk_fraction": self.topk_fraction} if group.codec == "topk" else {}
        encoded = [codecs.encode(update[s:e], group.codec, **kwargs) for s, e in bounds]
        if group.codec == "fp32":  # lossless: what we send is the update itself
            transmitted = update.detach().float().cpu()
        else:
            transmitted = torch.cat(
                [codecs.decode(enc, e - s, group.codec) for enc, (s, e) in zip(encoded, bounds, strict=True)]
            )
        s, e = bounds[me]
        reducer = PartReducer(
            group=group, index=me, numel=e - s, topk_fraction=self.topk_fraction, robust=self.robust
        )
        fut = self._reducer_future(group.group_id)
        if not fut.done():
            fut.set_result(reducer)
        reducer.add(self.peer_id, weight, transmitted[s:e])

        async def finish_at_deadline() -> None:
            await asyncio.sleep(max(0.0, group.reduce_deadline - time.time()))
            reducer.finish()

        closer = asyncio.create_task(finish_at_deadline())
        tasks = [
            asyncio.create_task(self._send_part(group, j, ids[j], weight, encoded[j], bounds[j], stats))
            for j in range(len(ids))
            if j != me
        ]
        try:
            await reducer.done.wait()
            parts: dict[int, torch.Tensor | str] = {}
            for j, res in zip(
                [j for j in range(len(ids)) if j != me], await asyncio.gather(*tasks), strict=True
            ):
                parts[j] = res
        finally:
            closer.cancel()
            self._reducers.pop(group.group_id, None)
        own = reducer.result
        stats.bytes_received += reducer.bytes_in
        remote_contributors = [p for p in reducer.contributors if p != self.peer_id]
        stats.bytes_sent += len(remote_contributors) * (own.ByteSize() + 4)  # one reply each
        for p, factor in reducer.clipped.items():
            stats.offenders.setdefault(p, f"update clipped to x{factor:.2f} by robust aggregation")
        if self.auth is not None:
            self.auth.note_clipped(int(group.round), reducer.clipped)
        if own.status != averaging_pb2.PART_OK:
            return None, transmitted, f"own part failed: {own.reason}"
        parts[me] = codecs.decode(own.tensor, e - s, group.codec)
        for p in own.excluded:
            stats.offenders.setdefault(p, reducer.excluded.get(p, "excluded"))
        failures = [f"part {j}: {v}" for j, v in sorted(parts.items()) if isinstance(v, str)]
        if failures:
            return None, transmitted, "; ".join(failures)
        return torch.cat([parts[j] for j in range(len(ids))]), transmitted, ""

    async def _send_part(
        self, group, j: int, peer: str, weight: float, enc, bounds: tuple[int, int], stats: ExchangeStats
    ) -> torch.Tensor | str:
        from hivemind.p2p import PeerID

        numel = bounds[1] - bounds[0]
        cap = codecs.max_encoded_bytes(group.codec, numel) + 4096
        writer = None
        try:
            timeout = max(0.5, group.reduce_deadline - time.time() + 1.0)
            _, reader, writer = await asyncio.wait_for(
                self.p2p.call_binary_stream_handler(PeerID.from_base58(peer), REDUCE_HANDLER), timeout
            )
            header = averaging_pb2.PartMessage(
                group_id=group.group_id, sender=self.peer_id, part_index=j, weight=weight
            )
            if self.auth is not None:
                self.auth.attach(header, REDUCE_HANDLER)
            sent = await write_frame(writer, header, timeout)
            stats.bytes_sent += sent  # (not `+= await`: concurrent sends would overwrite each other)
            payload = faulty_part(self.fault, enc, group.codec, numel) if self.fault else enc
            sent = await write_frame(writer, payload, timeout)
            stats.bytes_sent += sent
            timeout = max(0.5, group.reduce_deadline - time.time() + 2.0)
            reply = await read_frame(reader, averaging_pb2.ReducedPart, cap, timeout)
            stats.bytes_received += reply.ByteSize() + 4
            if reply.status != averaging_pb2.PART_OK:
                return f"reducer {peer[:12]}: {reply.reason or 'failed'}"
            for p, why in zip(reply.excluded, reply.exclusions, strict=False):
                stats.offenders.setdefault(p, why)
            return codecs.decode(reply.tensor, numel, group.codec)
        except ProtocolError as e:
            stats.offenders.setdefault(peer, f"sent an invalid reduced part: {e}")
            return f"reducer {peer[:12]} sent an invalid part: {e}"
        except StreamClosed as e:  # a transport fault: the round fails, nobody is blamed
            return f"reducer {peer[:12]} unavailable: {e}"
        except (BarnraiseError, asyncio.TimeoutError, TimeoutError, OSError) as e:
            stats.offenders.setdefault(peer, f"did not return its reduced part: {e}")
            return f"reducer {peer[:12]} unavailable: {e}"
        except Exception as e:  # p2pd control errors (peer gone) surface as various types
            stats.offenders.setdefault(peer, f"did not return its reduced part: {type(e).__name__}")
            return f"reducer {peer[:12]} failed: {type(e).__name__}: {e}"
        finally:
            if writer is not None:
                close_writer(writer)

    async def _handle_part(self, stream_info, reader, writer) -> None:
        """A member's contribution: a small header frame, then the tensor frame capped by the group's codec."""
        remote = stream_info.peer_id.to_base58()

        async def reject(reason: str) -> None:
            await write_frame(
                writer, averaging_pb2.ReducedPart(status=averaging_pb2.PART_REJECTED, reason=reason), 5.0
            )

        try:
            msg = await read_frame(reader, averaging_pb2.PartMessage, MAX_HEADER_BYTES, 30.0)
            if self.auth is not None and (refused := self.auth.refuse(msg, REDUCE_HANDLER, remote)) is not None:
                known = self._reducers.get(msg.group_id)
                if known is not None and known.done():  # a member we refuse: do not wait for it
                    if remote in {m.peer_id for m in known.result().group.members}:
                        known.result().exclude(remote, refused)
                await reject(refused)
                return
            fut = self._reducers.get(msg.group_id) or self._reducer_future(msg.group_id)
            try:
                reducer = await asyncio.wait_for(asyncio.shield(fut), 15.0)
                if self.fault == "stall":  # a member that stops mid-round: takes the part, never answers
                    await asyncio.sleep(max(0.0, reducer.group.reduce_deadline - time.time() + 5.0))
                    return
            except (asyncio.TimeoutError, TimeoutError):
                await reject("unknown group")
                return
            if remote not in {m.peer_id for m in reducer.group.members}:
                await reject("not a member of this group")
                return
            cap = codecs.max_encoded_bytes(reducer.group.codec, reducer.numel) + 4096
            timeout = max(1.0, reducer.group.reduce_deadline - time.time() + 1.0)
            try:
                msg.tensor.CopyFrom(await read_frame(reader, averaging_pb2.EncodedTensor, cap, timeout))
                reducer.bytes_in += msg.ByteSize() + 8  # header and tensor frames
                weight, tensor = reducer.validate(msg, remote)
                reducer.add(remote, weight, tensor)
            except ProtocolError as e:
                reducer.exclude(remote, str(e))
                await reject(str(e))
                return
            await reducer.done.wait()
            await write_frame(
                writer, reducer.result, max(1.0, reducer.group.reduce_deadline - time.time() + 5.0)
            )
        except BarnraiseError as e:
            log.debug("part from %s failed: %s", remote[:12], e)
        except Exception:  # a bug here must not pass for a closed stream on the other side
            log.exception("handle_part handler failed")
        finally:
            await finish_stream(reader, writer)
