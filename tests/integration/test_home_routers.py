"""Peers behind home routers are full members: a real swarm in network namespaces (root).

Bootstrap, two public peers and two peers each behind its own NAT router (MASQUERADE, no inbound),
every peer on a 25 Mbit/s up / 100 Mbit/s down line. The NAT'd peers can dial out but nobody can
dial them; they must learn that (``status`` shows ``client``), never lead or reduce, and still
apply the rounds everyone agrees on. Then a public peer's router starts dropping inbound
connections: it must find out and rounds must go on. Skipped with the reason when not root or
when iptables cannot be installed.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from barnraise.peer.events import RoundApplied, WindowTrained, read_events
from tests.conftest import init_run

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import iproute, registry  # noqa: E402
from netsim_lib.errors import NeedsRoot  # noqa: E402
from netsim_lib.router import ensure_iptables  # noqa: E402
from netsim_lib.scenario import Scenario  # noqa: E402
from netsim_lib.swarm import STATUS_HOST, Swarm, SwarmConfig, swarm_hosts  # noqa: E402
from netsim_lib.topology import NetSim  # noqa: E402

PREFIX = "na"
SUBNET = "10.81.0.0/24"
PEERS = ("p1", "p2", "p3", "p4")
NATTED = ("p3", "p4")


def _skip_reason() -> str | None:
    reason = iproute.missing_requirements()
    if reason is None:
        try:
            ensure_iptables()
        except NeedsRoot as e:
            reason = str(e)
    return reason


_REASON = _skip_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_REASON is not None, reason=f"home-router tests: {_REASON}"),
]


def applied(swarm: Swarm) -> dict[str, dict[int, str]]:
    """peer -> {round: params_hash after it} from each peer's events."""
    return {
        name: {e.round: e.params_hash for e in read_events(swarm.events_path(name), RoundApplied)}
        for name in PEERS
    }


def agreed_rounds(done: dict[str, dict[int, str]]) -> list[int]:
    """Rounds that every peer applied with one and the same params hash."""
    by_round: dict[int, set[str]] = defaultdict(set)
    for rounds in done.values():
        for r, h in rounds.items():
            by_round[r].add(h)
    return sorted(
        r for r, hashes in by_round.items() if len(hashes) == 1 and all(r in d for d in done.values())
    )


def status(swarm: Swarm, net: NetSim) -> dict:
    cfg = swarm.config
    argv = [*cfg.barnraise, "status", "--initial-peers", swarm.initial_peers, "--json"]
    done = net.run(STATUS_HOST, argv, timeout_s=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def reach_by_host(swarm: Swarm, net: NetSim) -> dict[str, str]:
    ids = {}
    for name in PEERS:
        for e in read_events(swarm.events_path(name)):
            if getattr(e, "peer_id", ""):
                ids[e.peer_id] = name
    return {
        ids.get(p["peer_id"], p["peer_id"][:8]): p["link"] for p in status(swarm, net)["peers"] if p["alive"]
    }


def wait(predicate, timeout_s: float, what: str):
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; last: {last!r}")


@pytest.mark.timeout(300)
def test_nat_peers_are_full_members_and_a_closing_router_is_noticed(tmp_path: Path) -> None:
    registry.cleanup_stale(PREFIX)
    run_dir = tmp_path / "run"
    init_run(run_dir, "--round-s", "8")
    scenario = Scenario(
        peers=len(PEERS), mbit=None, mbit_per_peer={p: (25.0, 100.0) for p in PEERS}, nat=frozenset(NATTED)
    )
    config = SwarmConfig(
        run_dir=run_dir, log_dir=tmp_path / "logs", scenario=scenario, peer_args=("--threads", "1")
    )
    with NetSim(hosts=swarm_hosts(scenario), subnet=SUBNET, prefix=PREFIX) as net:
        swarm = Swarm(config, net)
        swarm.start_bootstrap()
        for name in PEERS:
            swarm.start_peer(name)

        def three_agreed() -> list[int] | None:
            rounds = agreed_rounds(applied(swarm))
            return rounds if len(rounds) >= 3 else None

        agreed = wait(three_agreed, 150, "all four peers to agree on the params hash for 3 rounds")

        def four_in_status() -> dict[str, str] | None:
            links = reach_by_host(swarm, net)
            return links if len(links) == 4 and "unknown" not in links.values() else None

        links = wait(four_in_status, 30, "four probed peers in status")
        assert links == {"p1": "public", "p2": "public", "p3": "client", "p4": "client"}, links

        done = applied(swarm)
        last = max(max(done[p]) for p in ("p1", "p2"))
        for name in NATTED:
            first = min(done[name])
            expected = range(first, last + 1)
            share = sum(r in done[name] for r in expected) / len(expected)
            assert share >= 0.9, f"{name} applied {sorted(done[name])} of rounds {first}..{last}"

        # p1's router starts dropping inbound: within a probe or two (10 s each) it says so, it
        # is no longer chosen to lead or reduce, and rounds go on for everyone.
        net.block_inbound("p1")
        blocked_at = max(max(d) for d in applied(swarm).values())
        wait(lambda: reach_by_host(swarm, net).get("p1") == "client", 40, "p1 to find it is not dialable")
        wait(
            lambda: [r for r in agreed_rounds(applied(swarm)) if r > blocked_at + 2][:2] or None,
            60,
            "two more rounds agreed by all four after p1's router closed",
        )
    assert len(agreed) >= 3


@pytest.mark.timeout(240)
def test_every_peer_behind_nat_trains_and_status_says_so(tmp_path: Path) -> None:
    """With only the bootstrap public (and no relay it can reserve), nobody can be dialled: every
    peer must find out, say ``client``, and keep training instead of waiting on groups that
    cannot meet."""
    registry.cleanup_stale(PREFIX)
    run_dir = tmp_path / "run"
    init_run(run_dir, "--round-s", "8")
    scenario = Scenario(
        peers=len(PEERS), mbit=None, mbit_per_peer={p: (25.0, 100.0) for p in PEERS}, nat=frozenset(PEERS)
    )
    config = SwarmConfig(
        run_dir=run_dir, log_dir=tmp_path / "logs", scenario=scenario, peer_args=("--threads", "1")
    )
    with NetSim(hosts=swarm_hosts(scenario), subnet=SUBNET, prefix=PREFIX) as net:
        swarm = Swarm(config, net)
        swarm.start_bootstrap()
        for name in PEERS:
            swarm.start_peer(name)

        def all_clients() -> dict[str, str] | None:
            links = reach_by_host(swarm, net)
            return links if len(links) == 4 and set(links.values()) == {"client"} else None

        wait(all_clients, 150, "status to show all four peers as client")
        trained = {n: len(read_events(swarm.events_path(n), WindowTrained)) for n in PEERS}
        wait(
            lambda: all(len(read_events(swarm.events_path(n), WindowTrained)) > trained[n] for n in PEERS),
            40,
            "every peer to train another window",
        )
