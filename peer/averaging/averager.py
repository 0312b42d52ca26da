"""One averaging round, end to end: matchmaking, butterfly all-reduce, result check.

hivemind's DecentralizedAverager cannot carry what we need (its codec set is a closed protobuf
enum, its 8-bit codecs break on numpy >= 2.4, partial averages report success and received parts
are not checked), so barnraise runs its own protocol on hivemind's P2P streams and DHT.

The averager runs the three steps in order, each owned by its module: the group
(``matchmaking.py``), the exchange (``allreduce.py``) and the verdict (``verdict.py``); every
deadline comes from the round's plan (``plan.py``). A member that missed the verdict holds its old
base and is told to sync state at the next round (JOIN_STALE_BASE), so the swarm heals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.averaging.allreduce import AllReduce, ExchangeStats, PartFaults
from barnraise.peer.averaging.auditor import Auditor, Findings
from barnraise.peer.averaging.codecs import ErrorFeedback
from barnraise.peer.averaging.matchmaking import GroupRules, Matchmaker
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.averaging.verdict import Verdicts
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.net.reachability import ReachabilityMonitor
from barnraise.protos import averaging_pb2

log = logging.getLogger(__name__)

REPORTED = "reported by the group"
UNANSWERED = "audit not answered"  # how the auditor marks a reducer that did not answer in time
PENALTY_ROUNDS = 3  # a member seen misbehaving is left out of this many following rounds
SPARSE_EF_DECAY = 0.95  # share of the error-feedback residual a sparse group carries into the next round
BANNED_UNTIL = 1 << 62  # a reducer proven to have lied is left out for the rest of the run


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
    result_hash: str = ""  # the group's agreed hash of the average (set with ``ok``)
    reduced: list[list[averaging_pb2.EncodedTensor]] = field(default_factory=list)  # the average as
    # received: each part's reduced chunks, in part order (set with ``ok``; ``barnraise.peer.sync.updatelog``)
    caught: dict[str, str] = field(default_factory=dict)  # reducers proven to have lied -> what they did
    audit_bytes: int = 0  # of the bytes above, those of checking reducers (requests and evidence)
    leader: str = ""  # peer id of the member that formed the group
    reducers: list[str] = field(default_factory=list)  # members given a share of the vector to reduce

    def applied_fields(self) -> dict:
        """What the ``round_applied`` event records of this round's group, besides its result."""
        return {"duration_s": self.duration_s, "leader": self.leader, "reducers": list(self.reducers)}


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
        on_reach: Callable[[str, str], None] | None = None,  # told (reach, detail) when it changes
        seeded_hash: str = "",  # params hash of the run's seeded initial state ("" = not checked)
    ):
        self.peer_id = peer_id
        self.auth = auth  # signs our requests, checks others' (OPEN_RUN: anyone)
        self.run_id = run_id
        self.codec = codec  # the run's codec
        self.ask_codec = ask_codec  # a smaller codec this peer asks its groups for ("" = the run's)
        self.bandwidth_bps = bandwidth_bps  # declared upload bandwidth, bits/s (0 = unknown)
        self.p2p = p2p
        self.verdicts = Verdicts(p2p=p2p, peer_id=peer_id, auth=auth)
        rules = GroupRules(
            run_id=run_id, peer_id=peer_id, group_size=group_size, codec=codec, seeded_hash=seeded_hash
        )
        self.matchmaker = Matchmaker(p2p, dht, rules, auth=auth, verdicts=self.verdicts)
        self.reachability = ReachabilityMonitor(
            p2p=p2p, dht=dht, run_id=run_id, peer_id=peer_id, access=auth, on_change=on_reach
        )
        self.matchmaker.reach = self.reachability.reach
        self.allreduce = AllReduce(
            p2p=p2p, peer_id=peer_id, topk_fraction=topk_fraction, faults=faults, auth=auth, robust=robust
        )
        self.feedback = ErrorFeedback()
        self.auditor = Auditor(p2p=p2p, peer_id=peer_id, auth=auth, robust=self.allreduce.robust)
        self.allreduce.keeper = self.auditor.keep
        self.auditor.reducing = lambda gid: gid in self.allreduce._reducers  # audits wait for these

    async def register(self) -> None:
        await self.reachability.register()
        await self.matchmaker.register()
        await self.allreduce.register()
        await self.verdicts.register()
        await self.auditor.register()

    async def average(
        self,
        round_no: int,
        update: torch.Tensor,
        weight: float,
        base_hash: str,
        plan: RoundPlan,
        ttl_s: float,
        base_round: int = -1,
    ) -> RoundOutcome:
        """Average ``update`` (weighted by ``weight`` samples) with this round's group: the group,
        the exchange and the verdict, each by the plan's deadlines. Never raises our errors: the
        outcome says why a round is not to be applied."""
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
                reach=self.matchmaker.reach(),
            )
            reply = await self.matchmaker.form_group(round_no, request, plan)
            if reply.status == averaging_pb2.JOIN_ACCEPTED:
                await self._exchange(reply, update, weight, plan, out)
            elif reply.status == averaging_pb2.JOIN_STALE_BASE:
                out.stale_base, out.reason = True, reply.reason
            else:
                out.reason = (
                    f"not in a group: {averaging_pb2.JoinStatus.Name(reply.status)} {reply.reason}".strip()
                )
        except BarnraiseError as e:
            out.reason = str(e)
        finally:
            out.duration_s = time.time() - started
            for offender, why in out.offenders.items():
                if why != REPORTED:  # only what this peer saw itself: a liar cannot get others excluded
                    self.matchmaker.penalise(offender, round_no + PENALTY_ROUNDS)
            for reducer, why in out.caught.items():  # proven by signed evidence: banned for the run
                self.matchmaker.penalise(reducer, BANNED_UNTIL)
                self.auth.ban(reducer, why)
            self.matchmaker.forget_before(round_no - 2)
        return out

    async def _exchange(
        self,
        reply: averaging_pb2.JoinReply,
        update: torch.Tensor,
        weight: float,
        plan: RoundPlan,
        out: RoundOutcome,
    ) -> None:
        """With the group the leader formed: exchange parts, then apply only on a positive verdict
        that names our own result hash."""
        group = reply.group
        out.members = [m.peer_id for m in group.members]
        out.codec = group.codec
        leader = out.leader = reply.leader or out.members[0]
        # a sparse group all-gathers: nobody reduces for anyone (peer/averaging/gather.py)
        sparse = group.codec == "sparse"
        out.reducers = [] if sparse else [m.peer_id for m in group.members if m.part_fraction > 0]
        # SparseLoCo's accumulator: in a sparse group old residue fades, so error feedback does what
        # outer momentum does (scripts/bench_codecs.py measures both); dense codecs keep it all
        self.feedback.decay = SPARSE_EF_DECAY if sparse else 1.0
        compensated = self.feedback.compensate(update)
        stats = ExchangeStats()
        average, transmitted, failure = await self.allreduce.run(group, compensated, weight, stats)
        self.feedback.remember(compensated, transmitted)
        found = Findings()
        # A sparse group's members each sum the signed payloads themselves: no reducer to audit.
        if average is not None and self.allreduce.identity is not None and not sparse:
            await self.auditor.check_group(group, average, stats.contributors, found)
            # An audit not answered in time proves nothing (a loaded or frozen machine), and failing
            # the round for it would let one slow member stall everyone's: only refusals, bad
            # evidence and proven lies fail it. The gap this leaves is in the README.
            refused = {p: why for p, why in found.failures.items() if not why.startswith(UNANSWERED)}
            failure = "; ".join(f"reducer {p[:12]}: {why}" for p, why in refused.items())
            failure = failure or "; ".join(f"reducer {a.reducer[:12]} lied" for a in found.accusations)
        out.bytes_sent = stats.bytes_sent + found.bytes_sent
        out.bytes_received = stats.bytes_received + found.bytes_received
        out.offenders, out.audit_bytes = stats.offenders, found.bytes_sent + found.bytes_received
        for p, why in found.failures.items():  # refused or bad evidence (not a slow answer): a few rounds out
            if not why.startswith(UNANSWERED):
                out.offenders.setdefault(p, f"audit failed: {why}")
        own_hash = stats.result_hash if average is not None and not failure else ""
        verdict = await self.verdicts.confirm(
            leader, group, own_hash, failure, list(stats.offenders), plan.confirm_deadline, found.accusations
        )
        for p in verdict.offenders:
            out.offenders.setdefault(p, REPORTED)
        if average is not None:
            out.caught, false = self.auditor.judge(group, average, [*found.accusations, *verdict.accusations])
            for p in false:
                out.offenders.setdefault(p, REPORTED)
        if out.caught:
            out.reason = "; ".join(f"reducer {p[:12]} {why}" for p, why in out.caught.items())
        elif verdict.ok and own_hash and verdict.result_hash == own_hash:
            out.ok, out.average = True, average
            out.result_hash, out.reduced = own_hash, [stats.reduced[j] for j in sorted(stats.reduced)]
            out.total_weight = sum(m.weight for m in group.members)
        else:
            out.reason = failure or verdict.reason or "result hash disagrees with the group's"
