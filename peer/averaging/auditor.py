"""The network side of verified reduction (the rules are in ``audit.py``).

As a reducer, a peer keeps the committed inputs of the parts it reduced for the last few groups
(``keep``) and answers ``barnraise.audit``: a member of the group names segments of the part, and
gets each input of each segment with its Merkle path and its sender's signature.

As a member, after the exchange and before it confirms its result hash, a peer checks every other
reducer of its group (``check_group``): it picks segments with its own randomness, asks, checks
the evidence against the part it received, and returns accusations (evidence of a lie) and
failures (a reducer that could not show signed inputs: not applied, not provable). When the
verdict comes back with every accusation the leader received, ``judge`` checks each against this
member's own copy of the average: a proven reducer is caught, an accuser whose evidence does not
hold is an offender.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.averaging import audit, commitments, plan
from barnraise.peer.averaging.partreducer import PartReducer, part_bounds
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import audit_pb2, averaging_pb2

log = logging.getLogger(__name__)

AUDIT_HANDLER = "barnraise.audit"
KEEP_GROUPS = 2  # reduced parts whose inputs a reducer keeps for audits (memory: one vector each)
KEEP_AFTER_DECIDE_S = 10.0  # inputs are dropped this long after the group's leader decided
MAX_SEGMENTS = 256  # segments one audit request may name
MAX_AUDIT_REPLY_BYTES = 16 << 20  # 256 segments of a group of 8 members, with paths and signatures
KEPT_WAIT_S = 10.0  # how long an audit waits for the reducer to finish its exchange and keep the inputs
KEPT_POLL_S = 0.05  # how often it looks
AUDIT_GRACE_S = 1.0  # audits end this long before the leader decides, so confirmations arrive in time


def _refused(reason: str) -> audit_pb2.AuditReply:
    return audit_pb2.AuditReply(ok=False, reason=reason)


AUDIT = rpc.Method(
    name=AUDIT_HANDLER,
    request=audit_pb2.AuditRequest,
    max_request_bytes=rpc.MAX_CONTROL_BYTES,
    refusal=_refused,
    request_timeout_s=10.0,
    reply_timeout_s=10.0,
    reply=audit_pb2.AuditReply,
)


@dataclass
class Findings:
    """What checking a group's reducers found."""

    accusations: list[audit_pb2.Accusation] = field(default_factory=list)  # evidence of lies
    failures: dict[str, str] = field(default_factory=dict)  # reducer -> why its audit failed
    checks: int = 0  # segments checked
    bytes_received: int = 0  # audit replies
    bytes_sent: int = 0  # audit requests


class Auditor:
    """Runs on the P2P loop: keeps the inputs of parts this peer reduced, checks other reducers."""

    def __init__(self, *, p2p, peer_id: str, auth: PeerAuth | OpenRun, robust: RobustConfig):
        self.p2p = p2p
        self.peer_id = peer_id
        self.auth = auth  # signs audit requests, checks others' (OPEN_RUN: anyone)
        self.robust = robust  # the run's aggregator, as every reducer runs it
        self.rng = random.SystemRandom()  # private: a reducer cannot predict what is checked
        self._kept: OrderedDict[str, PartReducer] = OrderedDict()

    async def register(self) -> None:
        await rpc.serve(self.p2p, AUDIT, self._answer, access=self.auth)

    def reducing(self, group_id: str) -> bool:
        """Whether we reduce a part in group ``group_id`` now (the averager sets this)."""
        return False

    def keep(self, reducer: PartReducer) -> None:
        """The part ``reducer`` reduced, with its inputs, for audits of the next moments."""
        if reducer.inputs is None:
            return
        gid = reducer.group.group_id
        self._kept[gid] = reducer
        while len(self._kept) > KEEP_GROUPS:
            self._kept.popitem(last=False)
        try:  # audits come before the verdict: after it the inputs only cost memory
            delay = plan.time_left(plan.decide_deadline(reducer.group.reduce_deadline), KEEP_AFTER_DECIDE_S)
            asyncio.get_running_loop().call_later(delay, self._kept.pop, gid, None)
        except RuntimeError:  # no loop (tools and tests keep parts by hand)
            pass

    async def _answer(self, stream: rpc.Stream, req: audit_pb2.AuditRequest) -> audit_pb2.AuditReply:
        # A member audits as soon as its part is back; we keep a part's inputs once our whole
        # exchange is over, which can be later: wait for them a bounded while before refusing.
        give_up = time.monotonic() + KEPT_WAIT_S
        waits = self.reducing(req.group_id)  # only for a group we reduce in (not any id sent to us)
        while (reducer := self._kept.get(req.group_id)) is None and waits and time.monotonic() < give_up:
            await asyncio.sleep(KEPT_POLL_S)
        if reducer is None or reducer.inputs is None:
            return _refused("no inputs kept for this group")
        if stream.remote not in reducer.members or req.part_index != reducer.index:
            return _refused("not a member of this group, or not my part")
        count = audit.segment_count(reducer.numel)
        if len(req.segments) > MAX_SEGMENTS or any(s >= count for s in req.segments):
            return _refused(f"at most {MAX_SEGMENTS} segments of the {count} of this part")
        return await asyncio.to_thread(self._evidence_of, reducer, list(req.segments))

    def _evidence_of(self, reducer: PartReducer, wanted: list[int]) -> audit_pb2.AuditReply:
        reply = audit_pb2.AuditReply(ok=True)
        leaves: dict[tuple[str, int], list[bytes]] = {}
        for number in wanted:
            c, lo, hi = audit.segment_at(reducer.numel, number)
            if c >= len(reducer.used):
                return _refused(f"chunk {c + 1} was never reduced")
            cs, ce = reducer.bounds[c]
            ev = reply.segments.add(segment=number)
            for sender in reducer.used[c]:
                row = reducer.inputs[reducer.members.index(sender)]
                if (sender, c) not in leaves:
                    leaves[(sender, c)] = commitments.leaves(row[cs:ce])
                signed = reducer.commitments.get((sender, c), b"")
                inp = ev.inputs.add(
                    sender=sender,
                    weight=reducer.weight_of(sender),
                    path=commitments.path(leaves[(sender, c)], (lo - cs) // audit.SEGMENT_VALUES),
                    root=signed[: commitments.ROOT_BYTES],
                    signature=signed[commitments.ROOT_BYTES :],
                )
                enc = reducer.encoded.get((sender, c))
                piece = audit.segment_slice(enc, reducer.group.codec, lo - cs, hi - cs) if enc else None
                if piece is not None:  # as the sender encoded it: a quarter of the bytes for int8
                    inp.data, inp.scales, inp.block_size = piece.data, piece.scales, piece.block_size
                else:
                    inp.values = row[lo:hi].contiguous().numpy().astype("<f4").tobytes()
        return reply

    async def check_group(
        self,
        group: averaging_pb2.Group,
        average: torch.Tensor,
        contributors: dict[int, list[str]],
        found: Findings,
    ) -> None:
        """Check the other reducers of ``group`` on our share of random segments of the parts we received."""
        ids = [m.peer_id for m in group.members]
        bounds = part_bounds(average.numel(), group)
        if self.peer_id not in ids:
            return
        me = ids.index(self.peer_id)
        jobs = []
        for j, reducer in enumerate(ids):
            s, e = bounds[j]
            if reducer == self.peer_id or e <= s:
                continue
            k = audit.checks_by(len(audit.chunk_bounds(e - s)), j, me, len(ids))
            wanted = audit.pick_segments(e - s, k, self.rng)
            if wanted:
                jobs.append(
                    self._check_one(group, j, reducer, wanted, average[s:e], contributors.get(j), found)
                )
        timeout = plan.time_left(plan.decide_deadline(group.reduce_deadline), -AUDIT_GRACE_S, 0.5)
        try:
            await asyncio.wait_for(asyncio.gather(*jobs), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            for reducer in ids:
                if reducer != self.peer_id:
                    found.failures.setdefault(reducer, "audit not answered in time")

    async def _check_one(
        self, group, j: int, reducer: str, wanted, part: torch.Tensor, contributors, found
    ) -> None:
        req = audit_pb2.AuditRequest(group_id=group.group_id, part_index=j, segments=wanted)
        try:
            reply = await rpc.ask(
                self.p2p,
                reducer,
                AUDIT,
                req,
                access=self.auth,
                timeout_s=8.0,
                max_reply_bytes=MAX_AUDIT_REPLY_BYTES,
            )
        except BarnraiseError as e:
            found.failures[reducer] = f"audit not answered: {e}"
            return
        found.bytes_sent += req.ByteSize() + 4
        found.bytes_received += reply.ByteSize() + 4
        if not reply.ok or sorted(ev.segment for ev in reply.segments) != sorted(wanted):
            found.failures[reducer] = f"audit refused: {reply.reason or 'other segments than asked'}"
            return
        for ev in reply.segments:
            found.checks += 1
            outcome, why = await asyncio.to_thread(
                audit.check_evidence, group, j, part.numel(), ev, part, self.robust, contributors
            )
            if outcome == audit.INVALID:
                found.failures[reducer] = f"could not show signed inputs: {why}"
                return
            if outcome == audit.LIE:
                log.warning("round %d: reducer %s lied: %s", group.round, reducer[:12], why)
                found.accusations.append(
                    audit_pb2.Accusation(
                        reducer=reducer,
                        accuser=self.peer_id,
                        group_id=group.group_id,
                        part_index=j,
                        evidence=ev,
                        why=why,
                    )
                )
                return

    def judge(
        self, group: averaging_pb2.Group, average: torch.Tensor, accusations
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(reducers proven to have lied, accusers whose evidence does not hold), each with why,
        checked against our own ``average`` (the group's agreed bytes)."""
        ids = [m.peer_id for m in group.members]
        bounds = part_bounds(average.numel(), group)
        caught: dict[str, str] = {}
        false: dict[str, str] = {}
        for acc in accusations:
            j = acc.part_index
            if acc.group_id != group.group_id or j >= len(ids) or ids[j] != acc.reducer:
                false.setdefault(acc.accuser, "accusation about another group or part")
                continue
            s, e = bounds[j]
            outcome, why = audit.check_evidence(group, j, e - s, acc.evidence, average[s:e], self.robust)
            if outcome == audit.LIE:
                caught.setdefault(acc.reducer, f"lied as a reducer: {why}")
            elif acc.accuser != self.peer_id:
                false.setdefault(
                    acc.accuser, f"false accusation of {acc.reducer[:12]}: {why or 'values hold'}"
                )
        return caught, false
