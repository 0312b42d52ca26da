"""Faults in a real swarm: bad parts, killed, frozen and late peers.

Each test runs one swarm and checks the protocol's promises: rounds close by their deadline, the
members that complete a round agree on `params_hash`, offenders are named, training goes on, and a
newcomer or a peer that fell behind adopts the swarm's state before contributing.
"""

from __future__ import annotations

import signal
import time

import pytest

from barnraise.peer.events import ExchangeDone, Joined, RoundApplied, StateAdopted, WindowTrained, read_events
from tests.conftest import init_run, inject, wait_for

pytestmark = pytest.mark.timeout(300)


def applied(child) -> dict[int, str]:
    """round -> params hash after that round, from a peer's events."""
    return {e.round: e.params_hash for e in read_events(child.events_path, RoundApplied)}


def agreed_rounds(*children) -> list[int]:
    logs = [applied(c) for c in children]
    common = set(logs[0]).intersection(*logs[1:])
    return sorted(r for r in common if len({log[r] for log in logs}) == 1)


def disagreeing_rounds(*children) -> list[int]:
    """Rounds these peers applied as members of one group, yet ended with different params.

    Peers that averaged in different groups of a round (a peer left out for a few rounds after
    misbehaving forms a group of its own) may legitimately hold different states."""
    logs = [applied(c) for c in children]
    ids = {read_events(c.events_path, Joined)[0].peer_id for c in children}
    together = [
        {e.round for e in read_events(c.events_path, ExchangeDone) if e.ok and ids <= set(e.members)}
        for c in children
    ]
    common = set(logs[0]).intersection(*logs[1:], *together)
    return sorted(r for r in common if len({log[r] for log in logs}) != 1)


def test_bad_parts_are_left_out_and_named(swarm, tmp_path):
    """NaN, wrong-shaped and oversized parts: honest members still agree; offenders are named."""
    init_run(tmp_path / "run", "--round-s", "4", "--round-delay", "1")
    swarm.start_bootstrap(tmp_path / "run")
    honest = [swarm.start_peer(f"honest{i}", ["--threads", "1"]) for i in (1, 2)]
    bad = {
        fault: swarm.start_peer(
            f"bad-{fault}",
            ["--threads", "1", *inject(tmp_path / f"{fault}.json", {"kind": "fault", "mode": fault})],
        )
        for fault in ("nan", "shape", "oversize")
    }

    def ids() -> dict[str, str] | None:
        found = {f: read_events(c.events_path, Joined) for f, c in bad.items()}
        return {f: j[0].peer_id for f, j in found.items()} if all(found.values()) else None

    def offenders() -> dict[str, str]:
        """peer id -> every reason the honest peers' exchanges gave for leaving it out."""
        seen: dict[str, str] = {}
        for c in honest:
            for e in read_events(c.events_path, ExchangeDone):
                for pid, why in e.offenders.items():
                    seen[pid] = f"{seen.get(pid, '')}; {why}"
        return seen

    expected = {"nan": "non-finite", "shape": "elements where", "oversize": "exceeds the cap"}

    def named() -> bool:
        peer_ids, why = ids(), offenders()
        return bool(peer_ids) and all(expected[f] in why.get(pid, "") for f, pid in peer_ids.items())

    wait_for(
        lambda: len(agreed_rounds(*honest)) >= 3 and named(),
        180,
        every_s=2,
        what="3 agreed rounds and every offender named, with its fault, in the honest peers' exchanges",
    )
    assert not disagreeing_rounds(*honest)


def test_killed_frozen_and_late_peers(swarm, tmp_path):
    """SIGKILL and SIGSTOP mid-round: survivors agree and go on; a late joiner and the frozen peer
    (after SIGCONT) adopt the swarm's state."""
    init_run(tmp_path / "run", "--round-s", "4")
    swarm.start_bootstrap(tmp_path / "run")
    p1, p2, victim, frozen = (
        swarm.start_peer(n, ["--threads", "1"]) for n in ("p1", "p2", "victim", "frozen")
    )
    wait_for(lambda: len(agreed_rounds(p1, p2, victim, frozen)) >= 2, 120, every_s=1, what="4 peers agreeing")

    def just_after_a_round_end() -> None:
        n = len(read_events(p1.events_path, WindowTrained))
        wait_for(
            lambda: len(read_events(p1.events_path, WindowTrained)) > n, 20, every_s=0.05, what="round end"
        )

    just_after_a_round_end()
    time.sleep(0.3)  # inside matchmaking / all-reduce
    swarm.signal(victim, signal.SIGKILL)
    swarm.signal(frozen, signal.SIGSTOP)
    t_fault = time.time()
    last = max(applied(p1))
    wait_for(
        lambda: len([r for r in agreed_rounds(p1, p2) if r > last]) >= 3,
        90,
        every_s=1,
        what="survivors agreeing on 3 rounds after the faults",
    )
    assert not [r for r in disagreeing_rounds(p1, p2) if r > last]
    assert time.time() - t_fault < 90

    late = swarm.start_peer("late", ["--threads", "1"])
    wait_for(
        lambda: read_events(late.events_path, StateAdopted) and applied(late),
        90,
        every_s=1,
        what="the late peer to sync and then contribute",
    )
    synced = read_events(late.events_path, StateAdopted)[0]
    assert applied(p1).get(synced.round) == synced.params_hash, "late peer did not adopt the swarm's params"
    assert synced.t < read_events(late.events_path, RoundApplied)[0].t, "contributed before syncing"

    swarm.signal(frozen, signal.SIGCONT)
    wait_for(
        lambda: [r for r in agreed_rounds(p1, frozen) if r > max(applied(p1)) - 3 and r > last + 3],
        90,
        every_s=1,
        what="the frozen peer to catch up after SIGCONT",
    )
    assert frozen.proc.poll() is None, "the frozen peer restarted instead of catching up"
