"""Which round's state a syncing peer asks for, and how long a donor may wait for it."""

from __future__ import annotations

import pytest

from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.sync.statesync import sync_target

CLOCK = RoundClock(genesis=1000.0, round_s=10.0)
MICRO = 842_496  # gpt-micro: params + momentum download in ~2.2 s at 25 Mbit/s (x1.5, +1 s: 4.2 s)


def test_early_in_a_round_asks_for_the_base_of_this_rounds_launch():
    # t = 1051: round 5, which launches at 1060 from round 4's state
    min_round, wait_s = sync_target(CLOCK, 1051.0, MICRO, 25.0)
    assert min_round == 4
    assert wait_s == pytest.approx(1060.0 - 1051.0 - (1.5 * 64 * MICRO / 25e6 + 1.0))


def test_too_late_for_this_launch_asks_for_the_next_one():
    # t = 1057: 3 s left, less than the download plus the donor's averaging: aim at round 6's launch
    min_round, wait_s = sync_target(CLOCK, 1057.0, MICRO, 25.0)
    assert min_round == 5
    assert 0 < wait_s < 10.0


def test_a_state_too_big_for_a_round_takes_what_is_at_hand_and_a_fast_link_aims_nearer():
    assert sync_target(CLOCK, 1051.0, 5_000_000, 25.0) == (4, 0.0)  # 16 s download: no round fits
    assert sync_target(CLOCK, 1057.0, MICRO, 1000.0)[0] == 4  # 1 Gbit/s: 1.1 s download fits
    assert sync_target(CLOCK, 1051.0, MICRO, 0.0) == sync_target(CLOCK, 1051.0, MICRO, 25.0)  # unknown link
