"""The round's verdict: did a strict majority of the group assemble the same average?

After the exchange every member sends the hash of its assembled average to the group leader,
which answers with a verdict: the hash reported by a strict majority of the group. A member
applies the average only if the verdict is positive and its own hash matches, so a partially
averaged round is never applied silently. The leader opens a book for each group it closes
(``open``, called by the matchmaker), decides when every member has reported or at the plan's
decide deadline, and answers every member's ``CONFIRM`` with that one verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from barnraise.peer.averaging.plan import (
    COLLECT_GRACE_S,
    CONFIRM_CALL_GRACE_S,
    REMOTE_CONFIRM_WAIT_S,
    decide_deadline,
    time_left,
)
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.protos import averaging_pb2

BOOK_TTL_S = 120.0  # a closed group's book is forgotten after this long
MAX_ACCUSATIONS = 4  # accusations a leader relays per group (each carries one segment's inputs)
MAX_EVIDENCE_BYTES = 1 << 20  # one accusation: a segment's inputs for a large group, with paths
MAX_CONFIRM_BYTES = rpc.MAX_CONTROL_BYTES + MAX_EVIDENCE_BYTES
MAX_VERDICT_BYTES = rpc.MAX_CONTROL_BYTES + MAX_ACCUSATIONS * MAX_EVIDENCE_BYTES
CONFIRM_HANDLER = "barnraise.confirm"
CONFIRM = rpc.Method(
    name=CONFIRM_HANDLER,
    request=averaging_pb2.Confirm,
    max_request_bytes=MAX_CONFIRM_BYTES,
    refusal=lambda why: averaging_pb2.Verdict(ok=False, reason=why),
    request_timeout_s=30.0,
    reply=averaging_pb2.Verdict,
)


@dataclass
class _Confirmations:
    expected: set[str]
    hashes: dict[str, str] = field(default_factory=dict)
    offenders: dict[str, str] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    verdict: averaging_pb2.Verdict | None = None
    decided: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None  # the leader's decision
    accusations: list = field(default_factory=list)  # evidence of lying reducers, relayed to every member


class Verdicts:
    """Runs on the P2P loop: the leader's books of result hashes, and a member's confirmation."""

    def __init__(self, *, p2p, peer_id: str, auth: PeerAuth | OpenRun):
        self.p2p = p2p
        self.peer_id = peer_id
        self.auth = auth  # signs our confirmations, checks others' (OPEN_RUN: anyone)
        self._confirms: dict[str, _Confirmations] = {}

    async def register(self) -> None:
        await rpc.serve(self.p2p, CONFIRM, self._answer_confirm, access=self.auth)

    def open(self, group: averaging_pb2.Group) -> None:
        """As a group's leader (member or not), collect its members' result hashes and decide.

        The decision comes when every member has confirmed or at the deadline, whichever is first.
        """
        book = _Confirmations(expected={m.peer_id for m in group.members})
        self._confirms[group.group_id] = book
        loop = asyncio.get_running_loop()
        book.task = loop.create_task(self._decide(book, decide_deadline(group.reduce_deadline)))
        loop.call_later(BOOK_TTL_S, self._confirms.pop, group.group_id, None)

    async def _decide(self, book: _Confirmations, deadline: float) -> None:
        while time.time() < deadline and set(book.hashes) != book.expected:
            book.changed.clear()
            try:
                await asyncio.wait_for(book.changed.wait(), time_left(deadline))
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
            accusations=book.accusations,
        )
        book.decided.set()

    async def confirm(
        self,
        leader: str,
        group,
        own_hash: str,
        failure: str,
        offenders: list[str],
        confirm_deadline: float,
        accusations: list | None = None,
    ) -> averaging_pb2.Verdict:
        """Report our result hash to the group's leader (ourselves, maybe) and wait for its verdict."""
        msg = averaging_pb2.Confirm(
            group_id=group.group_id,
            sender=self.peer_id,
            result_hash=own_hash,
            failure=failure,
            offenders=offenders,
            accusations=accusations or [],
        )
        deadline = confirm_deadline
        if leader == self.peer_id:
            return await self._collect(group.group_id, self.peer_id, msg, deadline)
        timeout = time_left(deadline, CONFIRM_CALL_GRACE_S, 0.5)
        try:
            return await rpc.ask(
                self.p2p,
                leader,
                CONFIRM,
                msg,
                access=self.auth,
                timeout_s=timeout,
                max_reply_bytes=MAX_VERDICT_BYTES,
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
            for acc in msg.accusations[:1]:  # one per member, in its own name
                if len(book.accusations) < MAX_ACCUSATIONS and acc.ByteSize() <= MAX_EVIDENCE_BYTES:
                    acc.accuser = sender
                    book.accusations.append(acc)
            book.changed.set()
        try:
            await asyncio.wait_for(book.decided.wait(), time_left(deadline, COLLECT_GRACE_S, 0.5))
        except (asyncio.TimeoutError, TimeoutError):
            return averaging_pb2.Verdict(ok=False, reason="leader did not decide in time")
        return book.verdict

    async def _answer_confirm(self, stream: rpc.Stream, msg: averaging_pb2.Confirm) -> averaging_pb2.Verdict:
        """A member's result hash, once ``rpc.serve`` has checked its membership: the verdict, when known."""
        if msg.sender != stream.remote:
            return averaging_pb2.Verdict(ok=False, reason="sender mismatch")
        return await self._collect(msg.group_id, stream.remote, msg, time.time() + REMOTE_CONFIRM_WAIT_S)
