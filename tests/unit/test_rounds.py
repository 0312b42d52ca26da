"""One owner for a round's life: its plan, its outcome and the state it leads to."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import torch

from barnraise.peer.averaging.averager import RoundOutcome
from barnraise.peer.averaging.plan import (
    APPLY_GRACE_S,
    DECIDE_GRACE_S,
    RoundPlan,
    decide_deadline,
    reduce_budget,
)
from barnraise.peer.sync.rounds import LaunchedRound, finished
from barnraise.peer.sync.state import GlobalState, OuterStep

OUTER = OuterStep(lr=0.7, momentum=0.9)


def launched(fut, round_no: int = 5, apply_in_s: float = 30.0) -> LaunchedRound:
    base = GlobalState(params=torch.ones(8), momentum=torch.zeros(8), round=round_no - 1)
    plan = RoundPlan.make(round_no, time.time(), 10.0)
    plan = RoundPlan(**{**plan.__dict__, "apply_deadline": time.time() + apply_in_s})
    return LaunchedRound(plan=plan, base=base, future=fut, live=base.params, weight=4.0, outer=OUTER)


def test_plan_orders_every_phase_and_holds_every_grace():
    p = RoundPlan.make(7, 100.0, 10.0, reduce_budget(10.0, 1))
    assert p.round == 7
    assert (
        100.0
        < p.join_at
        < p.close_at
        < p.reduce_deadline
        < p.decide_at
        < p.confirm_deadline
        < p.apply_deadline
    )
    assert p.reduce_deadline - p.close_at == 7.0  # 70% of the round with delay 1
    assert p.decide_at == decide_deadline(p.reduce_deadline) == p.reduce_deadline + DECIDE_GRACE_S
    assert p.apply_deadline == p.confirm_deadline + APPLY_GRACE_S
    assert reduce_budget(1.0, 0) == 2.0  # never under the floor


def test_next_state_is_computed_once_and_shared():
    avg = torch.full((8,), 0.25)
    r = launched(finished(RoundOutcome(round=5, ok=True, average=avg)))
    first = r.next_state()
    assert first is not None and first.round == 5
    assert first is r.next_state()  # the daemon and the state server get the very same object
    assert torch.equal(first.params, OUTER.apply(r.base, avg, 5).params)
    assert torch.equal(r.base.params, torch.ones(8))  # the base is untouched


def test_failed_nonfinite_or_running_rounds_lead_nowhere():
    assert launched(finished(RoundOutcome(round=5, reason="deadline"))).next_state() is None
    nan = torch.full((8,), float("nan"))
    assert launched(finished(RoundOutcome(round=5, ok=True, average=nan))).next_state() is None
    running = launched(concurrent.futures.Future())
    assert running.next_state() is None
    running.future.set_result(RoundOutcome(round=5, ok=True, average=torch.zeros(8)))
    assert running.next_state() is not None  # computed once it is done, not cached as missing


def test_outcome_waits_until_the_apply_deadline_then_gives_up():
    fut: concurrent.futures.Future = concurrent.futures.Future()
    r = launched(fut, apply_in_s=0.3)
    t0 = time.monotonic()
    out = r.outcome()
    assert 0.25 <= time.monotonic() - t0 < 2.0
    assert not out.ok and "did not finish in time" in out.reason and fut.cancelled()

    later: concurrent.futures.Future = concurrent.futures.Future()
    threading.Timer(0.1, later.set_result, args=(RoundOutcome(round=5, ok=True),)).start()
    assert launched(later, apply_in_s=5.0).outcome().ok
