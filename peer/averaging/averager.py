"""One averaging round, end to end: matchmaking, butterfly all-reduce, result check.

hivemind's DecentralizedAverager cannot carry what we need (its codec set is a closed protobuf
enum, its 8-bit codecs break on numpy >= 2.4, partial averages report success and received parts
are not checked), so barnraise runs its own protocol on hivemind's P2P streams and DHT.

After the exchange every member sends the hash of its assembled average to the group leader,
which answers with a verdict: the hash reported by a strict majority of the group. A member
applies the average only if the verdict is positive and its own hash matches; a partially
averaged round is never applied silently. A member that missed the verdict holds its old base
and is told to sync state at the next round (JOIN_STALE_BASE), so the swarm heals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.averaging.allreduce import AllReduce, ExchangeStats, PartFaults
from barnraise.peer.averaging.codecs import ErrorFeedback
from barnraise.peer.averaging.matchmaking import MAX_CONTROL_BYTES, Matchmaker, RoundTiming
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import averaging_pb2

log = logging.getLogger(__name__)

CONFIRM_HANDLER = "barnraise.confirm"
CONFIRM = rpc.Method(
    name=CONFIRM_HANDLER,
    request=averaging_pb2.Confirm,
    max_request_bytes=MAX_CONTROL_BYTES,
    refusal=lambda why: averaging_pb2.Verdict(ok=False, reason=why),
    request_timeout_s=30.0,
)
REPORTED = "reported by the group"
PENALTY_ROUNDS = 3
CONFIRM_GRACE_S = 3.0  # after the reduce deadline, how long a leader waits for result hashes  # a member seen misbehaving is left out of this many following rounds


@dataclass
class RoundOutcome:
    """What one averaging round produced for this peer."""

    round: int
    ok: bool = False
    average: torch.Tensor | None = None  # weighted mean of the group's updates (apply iff ok)
    members: list[str] = field(default_factory=list)
    total_weight: float = 0.0
    stale_base: bool = False  # our base differs from the group's: sync state
    reason: str = ""
    bytes_sent: int = 0
    bytes_received: int = 0
    offenders: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    codec: str = ""


@dataclass
class _Confirmations:
    expected: set[str]
    hashes: dict[str, str] = field(default_factory=dict)
    offenders: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    verdict: averaging_pb2.Verdict | None = None
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None  # the leader's decision


class Averager:
    """Runs on the peer's P2P loop; ``average`` is awaited once per round."""

    def __init__(
        self,
        *,
        p2p,
        dht,
        run_id: str,
        peer_id: str,
        codec: str,
        group_size: int,
        topk_fraction: float,
        ask_codec: str = "",
        bandwidth_bps: float = 0.0,
        faults: PartFaults | None = None,  # tests only: see peer/injection.py
        auth: PeerAuth | OpenRun,
        robust: RobustConfig | None = None,
    ):
        self.peer_id = peer_id
        self.auth = auth  # signs our requests, checks others' (OPEN_RUN: anyone)
        self.run_id = run_id
        self.codec = codec  # the run's codec
        self.ask_codec = ask_codec  # a smaller codec this peer asks its groups for ("" = the run's)
        self.bandwidth_bps = bandwidth_bps  # declared upload bandwidth, bits/s (0 = unknown)
        self.p2p = p2p
        self.matchmaker = Matchmaker(
            p2p=p2p, dht=dht, run_id=run_id, peer_id=peer_id, group_size=group_size, codec=codec, auth=auth
        )
        self.allreduce = AllReduce(
            p2p=p2p, peer_id=peer_id, topk_fraction=topk_fraction, faults=faults, auth=auth, robust=robust
        )
        self.feedback = ErrorFeedback()
        self._confirms: dict[str, _Confirmations] = {}
        self.matchmaker.on_group = self._open_confirmations

    async def register(self) -> None:
        await self.matchmaker.register()
        await self.allreduce.register()
        await rpc.serve(self.p2p, CONFIRM, self._answer_confirm, access=self.auth)

    async def average(
        self,
        round_no: int,
        update: torch.Tensor,
        weight: float,
        base_hash: str,
        timing: RoundTiming,
        ttl_s: float,
        base_round: int = -1,
    ) -> RoundOutcome:
        started = time.time()
        out = RoundOutcome(round=round_no)
        try:
            await self.matchmaker.announce(round_no, weight, base_hash, ttl_s)
            request = averaging_pb2.JoinRequest(
                run_id=self.run_id,
                round=round_no,
                peer_id=self.peer_id,
                weight=weight,
                base_hash=base_hash,
                base_round=base_round,
                codec=self.ask_codec or self.codec,
                bandwidth_bps=self.bandwidth_bps,
            )
            reply = await self.matchmaker.form_group(round_no, request, timing)
            if reply.status == averaging_pb2.JOIN_STALE_BASE:
                out.stale_base, out.reason = True, reply.reason
                return out
            if reply.status != averaging_pb2.JOIN_ACCEPTED:
                out.reason = (
                    f"not in a group: {averaging_pb2.JoinStatus.Name(reply.status)} {reply.reason}".strip()
                )
                return out
            group = reply.group
            out.members = [m.peer_id for m in group.members]
            out.codec = group.codec
            leader = reply.leader or out.members[0]
            compensated = self.feedback.compensate(update)
            stats = ExchangeStats()
            average, transmitted, failure = await self.allreduce.run(group, compensated, weight, stats)
            self.feedback.remember(compensated, transmitted)
            out.bytes_sent, out.bytes_received, out.offenders = (
                stats.bytes_sent,
                stats.bytes_received,
                stats.offenders,
            )
            own_hash = stats.result_hash if average is not None else ""
            verdict = await self._confirm(leader, group, own_hash, failure, stats, timing)
            for p in verdict.offenders:
                out.offenders.setdefault(p, REPORTED)
            if verdict.ok and own_hash and verdict.result_hash == own_hash:
                out.ok, out.average = True, average
                out.total_weight = sum(m.weight for m in group.members)
            else:
                out.reason = failure or verdict.reason or "result hash disagrees with the group's"
            return out
        except BarnraiseError as e:
            out.reason = str(e)
            return out
        finally:
            out.duration_s = time.time() - started
            for offender, why in out.offenders.items():
                if why != REPORTED:  # only what this peer saw itself: a liar cannot get others excluded
                    self.matchmaker.penalise(offender, round_no + PENALTY_ROUNDS)
            self.matchmaker.forget_before(round_no - 2)

    def _open_confirmations(self, group: averaging_pb2.Group, leader: str) -> None:
        """As a group's leader (member or not), collect its members' result hashes and decide.

        The decision comes when every member has confirmed or at the deadline, whichever is first.
        """
        book = _Confirmations(expected={m.peer_id for m in group.members})
        self._confirms[group.group_id] = book
        loop = asyncio.get_running_loop()
        book.task = loop.create_task(self._decide(book, group.reduce_deadline + CONFIRM_GRACE_S))
        loop.call_later(120.0, self._confirms.pop, group.group_id, None)

    async def _decide(self, book: _Confirmations, deadline: float) -> None:
        while time.time() < deadline and set(book.hashes) != book.expected:
            book.changed.clear()
            try:
                await asyncio.wait_for(book.changed.wait(), max(0.0, deadline - time.time()))
            except (asyncio.TimeoutError, TimeoutError):
                break
        counts = Counter(h for h in book.hashes.values() if h)
        best, n = counts.most_common(1)[0] if counts else ("", 0)
        ok = n * 2 > len(book.expected)
        book.verdict = averaging_pb2.Verdict(
            ok=ok,
            result_hash=best,
            agreed=sorted(p for p, h in book.hashes.items() if h == best and best),
            reason="" if ok else f"only {n} of {len(book.expected)} members assembled the same average",
            offenders=sorted(book.offenders),
        )
        book.decided.set()

    async def _confirm(
        self, leader: str, group, own_hash: str, failure: str, stats: ExchangeStats, timing: RoundTiming
    ) -> averaging_pb2.Verdict:
        msg = averaging_pb2.Confirm(
            group_id=group.group_id,
            sender=self.peer_id,
            result_hash=own_hash,
            failure=failure,
            offenders=list(stats.offenders),
        )
        deadline = timing.confirm_deadline
        if leader == self.peer_id:
            return await self._collect(group.group_id, self.peer_id, msg, deadline)
        timeout = max(0.5, deadline - time.time() + 2.0)
        try:
            return await rpc.ask(
                self.p2p,
                leader,
                CONFIRM,
                msg,
                averaging_pb2.Verdict,
                access=self.auth,
                timeout_s=timeout,
                max_reply_bytes=MAX_CONTROL_BYTES,
            )
        except Exception as e:  # leader gone or frozen: no verdict means no apply
            return averaging_pb2.Verdict(ok=False, reason=f"no verdict from leader {leader[:12]}: {e}")

    async def _collect(
        self, group_id: str, sender: str, msg: averaging_pb2.Confirm, deadline: float
    ) -> averaging_pb2.Verdict:
        book = self._confirms.get(group_id)
        if book is None or sender not in book.expected:
            return averaging_pb2.Verdict(ok=False, reason="not a member of this group")
        if sender not in book.hashes:
            book.hashes[sender] = msg.result_hash
            for p in msg.offenders:
                book.offenders.setdefault(p, sender)
            book.changed.set()
        try:
            await asyncio.wait_for(book.decided.wait(), max(0.5, deadline - time.time() + 1.0))
        except (asyncio.TimeoutError, TimeoutError):
            return averaging_pb2.Verdict(ok=False, reason="leader did not decide in time")
        return book.verdict

    async def _answer_confirm(self, stream: rpc.Stream, msg: averaging_pb2.Confirm) -> averaging_pb2.Verdict:
        """A member's result hash, once ``rpc.serve`` has checked its membership: the verdict, when known."""
        if msg.sender != stream.remote:
            return averaging_pb2.Verdict(ok=False, reason="sender mismatch")
        return await self._collect(msg.group_id, stream.remote, msg, time.time() + 30.0)
