"""The clock offset estimate (coordinator/swarmclock.py) and what it corrects: pure arithmetic."""

from __future__ import annotations

import math

import pytest

from barnraise.coordinator import swarmclock
from barnraise.coordinator.runclock import RoundClock
from barnraise.coordinator.swarmclock import ClockSample, best_per_source, estimate, sample

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def no_offset():
    swarmclock.correct(0.0)
    yield
    swarmclock._offset_s = 0.0


def test_one_exchange_is_the_midpoint_against_the_server():
    s = sample("a", sent_at=100.0, server_time=95.2, received_at=100.4)
    assert s.source == "a" and s.rtt_s == pytest.approx(0.4) and s.offset_s == pytest.approx(5.0)


@pytest.mark.parametrize(
    "sent, server, received",
    [
        (100.0, math.nan, 100.1),  # not a time
        (100.0, math.inf, 100.1),
        (100.0, 0.0, 100.1),  # no time at all
        (100.0, 99.0, 99.0),  # received before sent
        (100.0, 99.0, 103.0),  # too slow to say anything
        (100.0, 100.0 - 2 * swarmclock.MAX_OFFSET_S, 100.1),  # absurdly far
    ],
)
def test_replies_that_cannot_be_a_time_are_dropped(sent, server, received):
    assert sample("a", sent, server, received) is None


def test_best_exchange_per_source_counts_once():
    samples = [
        ClockSample(source="a", offset_s=5.3, rtt_s=0.5),
        ClockSample(source="a", offset_s=5.0, rtt_s=0.01),
        ClockSample(source="b", offset_s=4.9, rtt_s=0.02),
    ]
    best = best_per_source(samples)
    assert [(s.source, s.offset_s) for s in best] == [("a", 5.0), ("b", 4.9)]


def test_median_over_sources_and_a_liar_is_dropped():
    offsets = {"boot": 5.0, "p1": 5.02, "p2": 4.97, "p3": 5.01, "liar": -300.0}
    est = estimate(ClockSample(source=k, offset_s=v, rtt_s=0.01) for k, v in offsets.items())
    assert est.dropped == ("liar",) and est.sources == 4
    assert est.offset_s == pytest.approx(5.005, abs=0.01)
    assert estimate([]) is None


def test_a_correction_moves_round_windows_and_small_changes_keep_the_old_offset():
    clock = RoundClock(genesis=1000.0, round_s=10.0)
    assert swarmclock.correct(5.0)  # our clock is 5 s ahead of the swarm's
    assert swarmclock.now() == pytest.approx(__import__("time").time() - 5.0, abs=0.05)
    assert swarmclock.local(clock.end(3)) == pytest.approx(1045.0)  # round 3 ends at 1040 swarm time
    assert not swarmclock.correct(5.01)  # jitter: the deadlines stay put
    assert swarmclock.offset() == 5.0
    assert not swarmclock.correct(math.nan) and not swarmclock.correct(1e9)
    assert swarmclock.offset() == 5.0
