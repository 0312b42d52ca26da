"""One launched round, from its plan to the state it leads to: the single owner of a round's life.

The training thread launches a round when its window closes (``LaunchedRound``): the plan holds
every deadline, the future the averaging outcome (group, verdict, average) computed on the P2P
loop, and ``next_state`` the state after the outer step. That state is computed once, here, and
shared: the daemon applies it when the round ends, and the state server hands it to a peer that
asks for the round's state before the donor has applied it itself (``barnraise.peer.sync.statesync``).
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field

import torch

from barnraise.coordinator import swarmclock
from barnraise.peer.averaging.averager import RoundOutcome
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.sync.state import GlobalState, OuterStep, all_finite


def finished(outcome: RoundOutcome) -> concurrent.futures.Future:
    """A future that already holds ``outcome`` (a round decided without the network)."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    fut.set_result(outcome)
    return fut


@dataclass(eq=False)
class LaunchedRound:
    """A round in flight or done. Shared by the training thread and the P2P loop: its fields are
    set at launch and never change; ``next_state`` is computed once under a lock."""

    plan: RoundPlan  # every deadline of the round
    base: GlobalState  # the state the round was launched from
    future: concurrent.futures.Future  # -> RoundOutcome, resolved on the P2P loop
    live: torch.Tensor  # the live params when the update was taken
    weight: float  # samples the update carries
    outer: OuterStep  # the run's outer optimizer
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next: GlobalState | None = field(default=None, repr=False)
    _computed: bool = field(default=False, repr=False)

    @property
    def round(self) -> int:
        return self.plan.round

    def outcome(self) -> RoundOutcome:
        """The averaging outcome, waiting at most until the plan's apply deadline; a round still
        running then is cancelled and reported as not finished in time."""
        try:
            return self.future.result(timeout=max(0.0, self.plan.apply_deadline - swarmclock.now()))
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError) as e:
            self.future.cancel()
            return RoundOutcome(
                round=self.round, reason=f"averaging did not finish in time ({type(e).__name__})"
            )

    def succeeded(self) -> bool:
        """True once the round is done with a verified, finite average to apply."""
        if not self.future.done() or self.future.cancelled():
            return False
        try:
            out = self.future.result()
        except Exception:  # a failed round is simply not applied
            return False
        return out.ok and out.average is not None and all_finite(out.average)

    def next_state(self) -> GlobalState | None:
        """The base after the outer step with the group's average, or None while the round runs
        or if it failed. Every member of the group computes the same bytes from the same inputs."""
        with self._lock:
            if not self._computed and self.future.done():
                if self.succeeded():
                    self._next = self.outer.apply(self.base, self.future.result().average, self.round)
                self._computed = True
            return self._next
