"""The chunk planner of a multi-donor state download: ranking, pulling, reassignment, end game."""

from __future__ import annotations

import pytest

from barnraise.peer.sync.chunkplan import ChunkPlan

pytestmark = pytest.mark.timeout(30)


def drain(plan: ChunkPlan, donor: str, rate: float) -> list[int]:
    """``donor`` takes and delivers chunks at ``rate`` bytes/s until it has nothing to do."""
    got = []
    while (i := plan.take(donor)) is not None:
        plan.finished(donor, i, 1000, 1000 / rate)
        got.append(i)
    return got


def test_donors_are_ranked_by_measured_rate_and_unknown_ones_take_the_median():
    plan = ChunkPlan(10, ["a", "b", "c", "d"], {"a": 1e6, "b": 4e6, "c": 2e6})
    assert plan.ranked() == ["b", "c", "d", "a"]  # d unknown: the median of the known rates (2e6), after c
    assert plan.books["d"].rate == 2e6
    i = plan.take("a")
    plan.finished("a", i, 8_000_000, 1.0)  # a turns out fastest
    assert plan.ranked()[0] == "a"


def test_faster_donors_pull_more_chunks():
    plan = ChunkPlan(30, ["fast", "slow"])
    served = {"fast": 0, "slow": 0}
    t = {"fast": 0.0, "slow": 0.0}
    while not plan.complete:  # simulated clocks: fast takes 1 s a chunk, slow 3 s
        donor = min(t, key=t.get)
        i = plan.take(donor)
        if i is None:
            t[donor] = float("inf")
            continue
        t[donor] += 1.0 if donor == "fast" else 3.0
        assert plan.finished(donor, i, 1000, 1.0 if donor == "fast" else 3.0)
        served[donor] += 1
    assert served["fast"] >= 2 * served["slow"], served
    assert sorted(plan.done) == list(range(30))


def test_a_dropped_donor_gives_its_chunks_to_the_others():
    plan = ChunkPlan(6, ["a", "b"])
    held = [plan.take("a"), plan.take("a")]
    assert held == [0, 1]
    plan.drop("a", "connection lost")
    assert plan.take("a") is None and plan.ranked() == ["b"]
    assert plan.reassigned == 2
    assert sorted(drain(plan, "b", 1e6)) == list(range(6))
    assert plan.complete and set(plan.done.values()) == {"b"}


def test_a_failed_chunk_returns_to_the_pool_unless_another_donor_holds_it():
    plan = ChunkPlan(2, ["a", "b"])
    i = plan.take("a")
    plan.failed("a", i)
    assert plan.pending == [0, 1] and plan.reassigned == 1
    j = plan.take("b")
    assert j == 0
    plan.failed("a", 0)  # a stale failure of a chunk b now holds: stays with b
    assert 0 not in plan.pending


def test_when_every_donor_is_dropped_the_plan_is_stuck_not_complete():
    plan = ChunkPlan(3, ["a", "b"])
    plan.take("a")
    plan.drop("a", "x")
    plan.drop("b", "y")
    assert plan.stuck and not plan.complete
    assert ChunkPlan(0, ["a"]).complete  # nothing to fetch


def test_end_game_a_faster_idle_donor_duplicates_the_slowest_donors_chunk_and_the_first_copy_wins():
    plan = ChunkPlan(3, ["fast", "slow"], {"fast": 10e6, "slow": 1e6})
    slow_chunk = plan.take("slow")
    assert drain(plan, "fast", 10e6)[:2] == [1, 2]  # then steals chunk 0 from the slow donor
    assert plan.duplicated == 1 and plan.done[slow_chunk] == "fast"
    assert plan.finished("slow", slow_chunk, 1000, 1.0) is False  # the late copy is not kept
    assert plan.complete


def test_a_slower_donor_never_duplicates_a_faster_ones_chunk():
    plan = ChunkPlan(1, ["fast", "slow"], {"fast": 10e6, "slow": 1e6})
    assert plan.take("fast") == 0
    assert plan.take("slow") is None and plan.duplicated == 0


def test_bad_plans_are_refused():
    for args in ((-1, ["a"]), (3, []), (3, ["a", "a"])):
        with pytest.raises(ValueError):
            ChunkPlan(*args)
