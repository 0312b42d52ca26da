"""Group formation for one averaging round: DHT entries, then a leader that closes the group.

Each peer writes a ``RoundEntry`` for round r to the DHT when its compute window ends. At
``join_at`` it reads the entries, splits them into groups of about ``group_size`` (by a hash of
round and peer id, so groups reshuffle every round) and asks its group's leader (smallest peer
id) to join. The leader closes the group when all expected members have joined or at
``close_at``, keeps the members whose base state is the majority's (weighted by samples) and tells
every joiner the same member list; that reply, not each peer's DHT view, defines the group, so
peers with different DHT views still end up with one consistent group.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from barnraise.coordinator import records, swarmclock
from barnraise.coordinator.codecspec import negotiate_codec
from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.averaging import roles
from barnraise.peer.averaging.plan import JOIN_REPLY_GRACE_S, RoundPlan, time_left
from barnraise.peer.averaging.verdict import Verdicts
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import averaging_pb2

log = logging.getLogger(__name__)

JOIN_HANDLER = "barnraise.join"
JOIN = rpc.Method(
    name=JOIN_HANDLER,
    request=averaging_pb2.JoinRequest,
    max_request_bytes=rpc.MAX_CONTROL_BYTES,
    refusal=lambda why: averaging_pb2.JoinReply(status=averaging_pb2.JOIN_REFUSED, reason=why),
    reply_timeout_s=10.0,
    reply=averaging_pb2.JoinReply,
)


def split_groups(peer_ids: list[str], round_no: int, group_size: int) -> list[list[str]]:
    """Deterministic groups of about ``group_size``, reshuffled every round."""
    order = sorted(peer_ids, key=lambda p: hashlib.sha256(f"{round_no}/{p}".encode()).digest())
    n_groups = max(1, math.ceil(len(order) / group_size))
    return [sorted(order[k::n_groups]) for k in range(n_groups)]


def part_fractions(bandwidths_bps: list[float]) -> list[float]:
    """Share of the vector each member reduces: by declared bandwidth when all declared one, else equal.

    A member reducing part i receives and sends that part N-1 times, so a fast link should own more.
    """
    n = len(bandwidths_bps)
    if n and all(b > 0 and math.isfinite(b) for b in bandwidths_bps):
        total = sum(bandwidths_bps)
        return [b / total for b in bandwidths_bps]
    return [1.0 / n] * n if n else []


@dataclass
class _LeaderRound:
    """A leader's book-keeping for one round."""

    expected: set[str] = field(default_factory=set)
    joins: dict[str, averaging_pb2.JoinRequest] = field(default_factory=dict)
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    any_join: asyncio.Event = field(default_factory=asyncio.Event)
    is_leader: bool | None = None  # None: this peer has not decided yet
    leader: str = ""
    replies: dict[str, averaging_pb2.JoinReply] = field(default_factory=dict)
    closed: bool = False
    closed_ev: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True, kw_only=True)
class GroupRules:
    """What this peer's groups are made of."""

    run_id: str  # the run whose round entries we read
    peer_id: str  # this peer
    group_size: int  # target members per group (a leader accepts up to twice this)
    codec: str  # the run's codec; a group uses a smaller one if a member asks for it
    seeded_hash: str = ""  # params hash of the run's seeded initial state ("" = not checked)


class Matchmaker:
    def __init__(self, p2p, dht, rules: GroupRules, *, auth: PeerAuth | OpenRun, verdicts: Verdicts):
        self.p2p = p2p
        self.dht = dht
        self.run_id, self.peer_id = rules.run_id, rules.peer_id
        self.group_size, self.codec = rules.group_size, rules.codec
        self.seeded_hash = rules.seeded_hash
        self.auth = auth  # signs our joins, checks others' and who takes part (OPEN_RUN: anyone)
        self._rounds: dict[int, _LeaderRound] = defaultdict(_LeaderRound)
        self.current_round = 0  # requests for rounds far from this are refused
        self.verdicts = verdicts  # a group this peer closes as leader gets its verdict book there
        self.penalties: dict[str, int] = {}  # peer -> last round it is left out of (misbehaved recently)
        self.reach: Callable[[], str] = lambda: ""  # how others reach us (peer/net/reachability.py)

    async def register(self) -> None:
        await rpc.serve(self.p2p, JOIN, self._answer_join, access=self.auth)

    async def announce(self, round_no: int, weight: float, base_hash: str, ttl_s: float) -> None:
        self.current_round = max(self.current_round, round_no)
        entry = averaging_pb2.RoundEntry(
            peer_id=self.peer_id,
            weight=weight,
            base_hash=base_hash,
            timestamp=time.time(),
            reach=self.reach(),
        )
        key = records.round_key(self.run_id, round_no)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(
            None,
            lambda: records.store(
                self.dht, key, self.peer_id, entry.SerializeToString(), ttl_s, timeout_s=5.0
            ),
        )
        if not ok:
            log.debug("round %d entry not stored in the DHT", round_no)

    async def form_group(
        self, round_no: int, request: averaging_pb2.JoinRequest, plan: RoundPlan
    ) -> averaging_pb2.JoinReply:
        """Join (or lead) this round's group; the reply says whether and with whom we average."""
        await asyncio.sleep(time_left(plan.join_at))
        loop = asyncio.get_running_loop()
        try:
            entries = await loop.run_in_executor(
                None,
                lambda: records.read_round_entries(
                    self.dht,
                    self.run_id,
                    round_no,
                    timeout_s=3.0,
                    admit=self.auth.admits,
                ),
            )
        except BarnraiseError as e:
            # Averaging alone would move our params away from a swarm we merely failed to see,
            # and cost a full state sync next round; keep the local progress for the next round.
            log.warning("round %d: could not read who takes part (%s); not averaging this round", round_no, e)
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_REFUSED, reason=f"DHT read failed: {e}")
        if self.peer_id not in {e.peer_id for e in entries}:
            # The lookup missed even the entry we stored a moment ago: it saw too little of the
            # swarm to form the same groups as everyone else.
            log.warning(
                "round %d: the DHT lookup missed our own round entry; not averaging this round", round_no
            )
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_REFUSED, reason="incomplete DHT lookup")
        penalised = self.penalised(round_no)
        ids = sorted({e.peer_id for e in entries if e.peer_id not in penalised} | {self.peer_id})
        reach_of = {e.peer_id: e.reach for e in entries} | {self.peer_id: request.reach}
        group = next(
            g for g in roles.split_groups(ids, reach_of, round_no, self.group_size) if self.peer_id in g
        )
        leader = roles.pick_leader(group, reach_of)
        if leader is None:
            log.warning("round %d: nobody in our group can be dialled; not averaging this round", round_no)
            return averaging_pb2.JoinReply(
                status=averaging_pb2.JOIN_REFUSED, reason="no member can be dialled"
            )
        self.current_round = round_no
        state = self._rounds[round_no]
        state.leader = leader
        if leader == self.peer_id:
            state.is_leader = True
            state.expected = set(group)
            state.joins[self.peer_id] = request
            state.decided.set()
            return await self._lead(round_no, state, plan)
        state.is_leader = False
        state.decided.set()
        reply = await self._ask(leader, request, plan)
        if reply.status == averaging_pb2.JOIN_NOT_LEADER and reply.leader and reply.leader != leader:
            reply = await self._ask(reply.leader, request, plan)
        return reply

    async def _ask(
        self, leader: str, request: averaging_pb2.JoinRequest, plan: RoundPlan
    ) -> averaging_pb2.JoinReply:
        timeout = time_left(plan.close_at, JOIN_REPLY_GRACE_S, 1.0)
        try:
            return await rpc.ask(self.p2p, leader, JOIN, request, access=self.auth, timeout_s=timeout)
        except Exception as e:  # leader gone, frozen or broken: no group this round
            return averaging_pb2.JoinReply(
                status=averaging_pb2.JOIN_REFUSED, reason=f"leader {leader[:12]} unreachable: {e}"
            )

    async def _lead(self, round_no: int, state: _LeaderRound, plan: RoundPlan) -> averaging_pb2.JoinReply:
        while swarmclock.now() < plan.close_at and not state.expected.issubset(state.joins):
            state.any_join.clear()
            try:
                await asyncio.wait_for(state.any_join.wait(), time_left(plan.close_at))
            except (asyncio.TimeoutError, TimeoutError):
                break
        self._close(round_no, state, plan)
        if len(state.joins) == 1 and len(state.expected) > 1:
            # Members announced this round but none reached us (behind NAT before their relay
            # slots, or failing): averaging alone would move our params off the base they share and
            # cost a full state download, which a relay cannot carry (coordinator/dhtnode.py).
            # Keep the progress for the next round, as a group with no dialable member does.
            return averaging_pb2.JoinReply(
                status=averaging_pb2.JOIN_REFUSED,
                reason=f"none of the {len(state.expected) - 1} other members joined",
            )
        return state.replies[self.peer_id]

    def _close(self, round_no: int, state: _LeaderRound, plan: RoundPlan) -> None:
        """Decide the group: the base state most joiners hold (then the newest), capped at twice the target size.

        Counting members, not samples, matters: a peer that fell behind carries many samples and
        must not drag the group back to its stale base.
        """
        state.closed = True
        base = self._pick_base(state.joins.values())
        accepted = sorted(p for p, r in state.joins.items() if base is not None and r.base_hash == base)
        accepted = accepted[: 2 * self.group_size]
        codec = negotiate_codec(self.codec, [state.joins[p].codec for p in accepted])
        fractions = roles.reducer_fractions(
            part_fractions([state.joins[p].bandwidth_bps for p in accepted]),
            [state.joins[p].reach for p in accepted],
        )
        group = averaging_pb2.Group(
            group_id=hashlib.sha256(f"{self.run_id}/{round_no}/{','.join(accepted)}".encode()).hexdigest()[
                :16
            ],
            round=round_no,
            codec=codec,
            base_hash=base or "",
            reduce_deadline=plan.reduce_deadline,
            exchange_s=max(0.0, plan.reduce_deadline - swarmclock.now()),
        )
        for p, fraction in zip(accepted, fractions, strict=True):
            j = state.joins[p]
            group.members.add(
                peer_id=p, weight=j.weight, part_fraction=fraction, bandwidth_bps=j.bandwidth_bps
            )
        for p, req in state.joins.items():
            if p in accepted:
                state.replies[p] = averaging_pb2.JoinReply(
                    status=averaging_pb2.JOIN_ACCEPTED, group=group, leader=self.peer_id
                )
            elif req.base_hash != base:
                why = (
                    f"differs from the group's {base}"
                    if base is not None
                    else f"at round -1 is not the run's seeded start {self.seeded_hash}"
                )
                state.replies[p] = averaging_pb2.JoinReply(
                    status=averaging_pb2.JOIN_STALE_BASE,
                    leader=self.peer_id,
                    reason=f"base {req.base_hash} {why}: sync state",
                )
            else:
                state.replies[p] = averaging_pb2.JoinReply(
                    status=averaging_pb2.JOIN_REFUSED, reason="group full"
                )
        if accepted:
            self.verdicts.open(group)
        state.any_join.set()
        state.closed_ev.set()

    def _pick_base(self, joins: Iterable[averaging_pb2.JoinRequest]) -> str | None:
        """The base most joiners hold, then the newest; None if none may be averaged.

        A base at round -1 is the seeded start every peer computes for itself, so one that differs
        from ours, held by one joiner alone, is no start of this run: it loses a tie (else a group of
        one formed on it would average a broken peer alone and tell an honest one to sync to it) and
        is never averaged. Held by two or more, it is more likely ours that is odd (other libraries
        can seed differently), so votes still come first.
        """
        votes: dict[str, int] = defaultdict(int)
        base_round: dict[str, int] = {}
        for req in joins:
            votes[req.base_hash] += 1
            base_round[req.base_hash] = max(base_round.get(req.base_hash, -1), req.base_round)

        def sound(b: str) -> bool:
            return base_round[b] >= 0 or not self.seeded_hash or b == self.seeded_hash

        base = max(votes, key=lambda b: (votes[b], base_round[b], sound(b), b))
        return base if sound(base) or votes[base] > 1 else None

    async def _answer_join(
        self, stream: rpc.Stream, req: averaging_pb2.JoinRequest
    ) -> averaging_pb2.JoinReply:
        """A member's join, once ``rpc.serve`` has checked its membership."""
        remote = stream.remote
        if req.peer_id != remote or req.run_id != self.run_id:
            return averaging_pb2.JoinReply(
                status=averaging_pb2.JOIN_REFUSED, reason="peer id or run id mismatch"
            )
        if not (math.isfinite(req.weight) and req.weight >= 0):
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_REFUSED, reason="invalid weight")
        if abs(int(req.round) - self.current_round) > 2:
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_WRONG_ROUND, reason="round out of range")
        state = self._rounds[req.round]
        if state.is_leader is None:  # we have not reached this round's join time yet: wait for it
            try:
                await asyncio.wait_for(state.decided.wait(), 10.0)
            except (asyncio.TimeoutError, TimeoutError):
                return averaging_pb2.JoinReply(
                    status=averaging_pb2.JOIN_WRONG_ROUND, reason="not in that round"
                )
        if remote in self.penalised(int(req.round)):
            return averaging_pb2.JoinReply(
                status=averaging_pb2.JOIN_REFUSED,
                reason="left out for a few rounds: misbehaved in a recent round",
            )
        if not state.is_leader:
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_NOT_LEADER, leader=state.leader)
        if state.closed:
            return averaging_pb2.JoinReply(status=averaging_pb2.JOIN_TOO_LATE, reason="group already closed")
        state.joins[remote] = req
        state.any_join.set()
        await state.closed_ev.wait()
        return state.replies.get(remote) or averaging_pb2.JoinReply(status=averaging_pb2.JOIN_TOO_LATE)

    def penalise(self, peer_id: str, until_round: int) -> None:
        if peer_id != self.peer_id:
            self.penalties[peer_id] = max(self.penalties.get(peer_id, 0), until_round)

    def penalised(self, round_no: int) -> set[str]:
        return {p for p, until in self.penalties.items() if until >= round_no}

    def forget_before(self, round_no: int) -> None:
        for r in [r for r in self._rounds if r < round_no]:
            del self._rounds[r]
