"""State sync over real hivemind P2P streams between two DHT nodes in this process.

With averaging overlapped with compute, the state a round starts from exists only once the
previous round's averaging has finished; a donor asked for that round waits for its averaging and
serves the state its outer step leads to, so a peer that fell behind can join the next round.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
import torch

from barnraise.coordinator.errors import PeerUnavailable
from barnraise.peer.averaging.averager import RoundOutcome
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.rounds import LaunchedRound
from barnraise.peer.sync.state import GlobalState, OuterStep
from barnraise.peer.sync.statesync import StateServer, download_state

pytestmark = pytest.mark.timeout(120)

NUMEL = 5000
RUN = "run-statesync"
OUTER = OuterStep(lr=0.7, momentum=0.9)


@pytest.fixture(scope="module")
def pair():
    import hivemind

    a = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    b = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=a.get_visible_maddrs())
    loops = [P2PLoop(a), P2PLoop(b)]
    server = StateServer(loops[0].p2p, RUN, auth=OPEN_RUN)
    loops[0].call(server.register(), 10.0)
    try:
        yield server, loops[1], loops[0].p2p.peer_id.to_base58()
    finally:
        for loop in loops:
            loop.stop()
        for dht in (a, b):
            dht.shutdown()


def _fetch(loop: P2PLoop, donor: str, min_round: int, wait_s: float) -> GlobalState:
    return loop.call(
        download_state(loop.p2p, donor, RUN, NUMEL, 20.0, auth=OPEN_RUN, min_round=min_round, wait_s=wait_s),
        40.0,
    )


def _track(server: StateServer, base: GlobalState, round_no: int, fut: concurrent.futures.Future) -> None:
    """The donor launched round ``round_no`` from ``base``; ``fut`` resolves to its outcome."""
    plan = RoundPlan.make(round_no, time.time(), 10.0)
    server.track(LaunchedRound(plan=plan, base=base, future=fut, live=base.params, weight=1.0, outer=OUTER))


def _finish_later(fut: concurrent.futures.Future, after_s: float, outcome: RoundOutcome) -> None:
    threading.Timer(after_s, fut.set_result, args=(outcome,)).start()


def test_donor_serves_the_state_its_running_round_leads_to(pair):
    server, requester, donor = pair
    torch.manual_seed(0)
    state = GlobalState(params=torch.randn(NUMEL), momentum=torch.randn(NUMEL), round=3)
    server.publish(state)
    avg = torch.randn(NUMEL) * 1e-2
    expected = OUTER.apply(state, avg, 4)

    fut: concurrent.futures.Future = concurrent.futures.Future()
    _track(server, state, 4, fut)
    assert _fetch(requester, donor, min_round=-1, wait_s=5.0).round == 3  # nothing asked for: current state

    _finish_later(fut, 1.0, RoundOutcome(round=4, ok=True, average=avg))
    t0 = time.monotonic()
    got = _fetch(requester, donor, min_round=4, wait_s=10.0)
    waited = time.monotonic() - t0
    assert got.round == 4 and got.params_hash() == expected.params_hash()
    assert torch.equal(got.momentum, expected.momentum)
    assert 0.9 <= waited < 5.0, waited  # served as soon as the round finished, not at the deadline
    # the donor's own state is untouched
    assert state.round == 3 and state.params_hash() != expected.params_hash()


def test_failed_or_unrelated_round_serves_the_current_state_without_waiting_out(pair):
    server, requester, donor = pair
    state = GlobalState(params=torch.randn(NUMEL), momentum=torch.zeros(NUMEL), round=7)
    server.publish(state)

    failed: concurrent.futures.Future = concurrent.futures.Future()
    _track(server, state, 8, failed)
    _finish_later(failed, 0.5, RoundOutcome(round=8, reason="deadline"))
    t0 = time.monotonic()
    assert _fetch(requester, donor, min_round=8, wait_s=10.0).params_hash() == state.params_hash()
    assert time.monotonic() - t0 < 5.0

    # a round launched from another base (the donor resynced since) cannot produce our next state
    other: concurrent.futures.Future = concurrent.futures.Future()
    other.set_result(RoundOutcome(round=8, ok=True, average=torch.ones(NUMEL)))
    _track(server, GlobalState(params=torch.zeros(NUMEL), momentum=torch.zeros(NUMEL), round=7), 8, other)
    assert _fetch(requester, donor, min_round=8, wait_s=10.0).params_hash() == state.params_hash()

    # a round that never finishes: the donor serves what it has once the requester's wait is over
    hung: concurrent.futures.Future = concurrent.futures.Future()
    _track(server, state, 8, hung)
    t0 = time.monotonic()
    assert _fetch(requester, donor, min_round=8, wait_s=1.0).round == 7
    assert 0.9 <= time.monotonic() - t0 < 5.0


def test_non_finite_average_is_never_served_and_wrong_run_is_refused(pair):
    server, requester, donor = pair
    state = GlobalState(params=torch.randn(NUMEL), momentum=torch.zeros(NUMEL), round=11)
    server.publish(state)
    bad: concurrent.futures.Future = concurrent.futures.Future()
    bad.set_result(RoundOutcome(round=12, ok=True, average=torch.full((NUMEL,), float("nan"))))
    _track(server, state, 12, bad)
    assert _fetch(requester, donor, min_round=12, wait_s=5.0).round == 11
    with pytest.raises(PeerUnavailable, match="no state"):
        requester.call(download_state(requester.p2p, donor, "another-run", NUMEL, 5.0, auth=OPEN_RUN), 20.0)


def test_a_peer_a_few_rounds_behind_replays_them_from_the_donors_log(pair):
    from barnraise.peer.sync.replay import fetch_updates
    from tests.unit.test_updatelog import OUTER as LOG_OUTER
    from tests.unit.test_updatelog import donor_history, launched_round

    server, requester, donor = pair
    states, _ = donor_history(0)
    held, numel = states[0], states[0].params.numel()
    server.publish(held)
    for r in (4, 5):  # the donor applies rounds 4 and 5 as its daemon does: launch, then publish
        lr = launched_round(states[-1], r)
        server.track(lr)
        states.append(lr.next_state())
        server.publish(states[-1])
    running = launched_round(states[-1], 6)  # averaged, not yet applied: served all the same
    server.track(running)

    def fetch(to_round: int, max_bytes: int = 8 * numel) -> GlobalState:
        coro = fetch_updates(
            requester.p2p, donor, RUN, held, to_round, LOG_OUTER, auth=OPEN_RUN, max_bytes=max_bytes
        )
        return requester.call(coro, 40.0)

    got = fetch(5)
    assert got.round == 5 and got.params_hash() == states[2].params_hash()
    assert torch.equal(got.momentum, states[2].momentum)
    assert fetch(6).params_hash() == running.next_state().params_hash()
    with pytest.raises(PeerUnavailable, match="no kept rounds"):
        fetch(5, max_bytes=1000)  # bigger than the state would be: the donor says so
