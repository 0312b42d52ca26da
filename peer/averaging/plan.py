"""Every deadline of one averaging round, in one place.

A round's phases run on the clock of the run (``coordinator.runclock``): the compute window
closes, members read the round's DHT entries and ask the leader to join, the leader closes the
group, parts are reduced and gathered, members report their result hash, the leader decides, and
the training thread applies (or gives up on) the average. ``RoundPlan`` holds the absolute time of
each step, made once when the window closes; the graces below are the only other numbers the
protocol waits by, so that no two parts of the code can disagree about when a phase is over.

Only ``reduce_deadline`` travels (in the ``Group`` message, set by the leader's plan); members and
reducers derive their waits from it, so a member whose clock is slightly off still follows the
leader's schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

from barnraise.coordinator import swarmclock

# After the window closes, members wait this share of the round (0.5 .. 3 s) before reading who
# takes part, so that everyone's DHT entry is there.
JOIN_WAIT_SHARE = 0.15
JOIN_WAIT_RANGE_S = (0.5, 3.0)
# The leader closes as soon as every member it expects has joined, so a long gather window costs
# only when an expected member never comes; a short one splits groups whenever a member's DHT
# lookup is slow (a loaded machine), which costs stale bases and state syncs.
GATHER_SHARE = 0.2
GATHER_RANGE_S = (0.5, 3.0)
# Share of the round the exchange may take: with round delay 1 it overlaps the next window.
REDUCE_SHARE = {0: 0.5, 1: 0.7}
MIN_REDUCE_S = 2.0

JOIN_REPLY_GRACE_S = 2.0  # after the close, how long a member waits for the leader's answer
# After the reduce deadline, how long a leader waits for result hashes; members check reducers
# (verified reduction, audit.py) before they report theirs, which takes its share of this.
DECIDE_GRACE_S = 5.0
VERDICT_SLACK_S = 0.5  # after the decision, how long a member waits for the verdict to arrive
APPLY_GRACE_S = 10.0  # after the confirm deadline, how long the training thread waits for the outcome
CONFIRM_CALL_GRACE_S = 2.0  # a member's confirm call stays open this long past its confirm deadline
COLLECT_GRACE_S = 1.0  # the leader answers a confirmation until this long past the deadline it was given
REMOTE_CONFIRM_WAIT_S = 30.0  # the leader keeps a member's confirm stream at most this long for the verdict

# Per-frame graces of the part exchange, relative to the reduce deadline (a frame already on its
# way is not cut off at the deadline itself).
SEND_GRACE_S = 1.0  # a member's chunks to a reducer
RECEIVE_GRACE_S = 2.0  # a member reading reduced chunks back
REPLY_GRACE_S = 5.0  # a reducer sending reduced chunks and its closing summary
REDUCER_HOLD_S = 10.0  # a reducer keeps a member's stream open for its replies at most this long
GROUP_WAIT_S = 15.0  # a reducer waits this long to learn the group a part is for (its own join)


def _clamp(x: float, lo_hi: tuple[float, float]) -> float:
    return min(lo_hi[1], max(lo_hi[0], x))


@dataclass(frozen=True, kw_only=True)
class RoundPlan:
    """Absolute unix times of one round's phases in swarm time (``coordinator/swarmclock.py``), in
    the order they happen."""

    round: int  # the round these times belong to
    compute_end: float  # the compute window closes and the update is taken
    join_at: float  # read the round's DHT entries, contact the leader
    close_at: float  # the leader closes the group
    reduce_deadline: float  # every part reduced and gathered (sent to members in the Group)
    decide_at: float  # the leader decides the verdict from the result hashes it has
    confirm_deadline: float  # a member that has no verdict by now gives up on the round
    apply_deadline: float  # the training thread stops waiting for the round's outcome

    @classmethod
    def make(
        cls, round_no: int, compute_end: float, round_s: float, reduce_budget_s: float | None = None
    ) -> RoundPlan:
        """The plan of round ``round_no`` whose window closes at ``compute_end``.

        ``reduce_budget_s``: how long the exchange may take (default: ``reduce_budget``).
        """
        join_at = compute_end + _clamp(JOIN_WAIT_SHARE * round_s, JOIN_WAIT_RANGE_S)
        close_at = join_at + _clamp(GATHER_SHARE * round_s, GATHER_RANGE_S)
        budget = reduce_budget_s if reduce_budget_s is not None else reduce_budget(round_s, 0)
        reduce_deadline = close_at + budget
        confirm_deadline = decide_deadline(reduce_deadline) + VERDICT_SLACK_S
        return cls(
            round=round_no,
            compute_end=compute_end,
            join_at=join_at,
            close_at=close_at,
            reduce_deadline=reduce_deadline,
            decide_at=decide_deadline(reduce_deadline),
            confirm_deadline=confirm_deadline,
            apply_deadline=confirm_deadline + APPLY_GRACE_S,
        )


def reduce_budget(round_s: float, round_delay: int) -> float:
    """Seconds the exchange may take: half the round, or 70% when it overlaps the next window."""
    return max(MIN_REDUCE_S, REDUCE_SHARE[round_delay] * round_s)


def decide_deadline(reduce_deadline: float) -> float:
    """When a group's leader decides, from the reduce deadline it sent its members."""
    return reduce_deadline + DECIDE_GRACE_S


def time_left(deadline: float, grace_s: float = 0.0, floor_s: float = 0.0) -> float:
    """Seconds from now until ``deadline + grace_s``, at least ``floor_s`` (a timeout argument)."""
    return max(floor_s, deadline + grace_s - swarmclock.now())
