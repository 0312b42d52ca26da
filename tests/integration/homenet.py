"""Shared by the home-router tests (``test_home_routers.py``, ``test_relays.py``): a swarm of
real processes in network namespaces, some peers behind their own NAT router, read back through
the peers' events and ``barnraise status``."""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from barnraise.peer.events import ReachChanged, RoundApplied, read_events
from tests.conftest import init_run

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import iproute, registry  # noqa: E402
from netsim_lib.errors import NeedsRoot  # noqa: E402
from netsim_lib.router import ensure_iptables  # noqa: E402
from netsim_lib.scenario import Scenario  # noqa: E402
from netsim_lib.swarm import STATUS_HOST, Swarm, SwarmConfig, swarm_hosts  # noqa: E402
from netsim_lib.topology import NetSim  # noqa: E402

PEERS = ("p1", "p2", "p3", "p4")


@contextmanager
def home_swarm(
    tmp_path: Path,
    *,
    prefix: str,
    subnet: str,
    nat: tuple[str, ...],
    compute_share: float = 0.25,
    codec: str = "fp32",
) -> Iterator[tuple[Swarm, NetSim]]:
    """A bootstrap and ``PEERS`` on 25 Mbit/s up / 100 down lines, ``nat`` each behind its own router,
    8 s rounds, ``codec`` updates, each peer training ``compute_share`` of a round; namespaces named ``prefix``-*,
    torn down however the test ends."""
    registry.cleanup_stale(prefix)
    run_dir = tmp_path / "run"
    init_run(run_dir, "--round-s", "8", "--codec", codec)
    scenario = Scenario(
        peers=len(PEERS), mbit=None, mbit_per_peer={p: (25.0, 100.0) for p in PEERS}, nat=frozenset(nat)
    )
    config = SwarmConfig(
        run_dir=run_dir,
        log_dir=tmp_path / "logs",
        scenario=scenario,
        peer_args=("--threads", "1", "--max-compute-share", str(compute_share)),
    )
    with NetSim(hosts=swarm_hosts(scenario), subnet=subnet, prefix=prefix) as net:
        swarm = Swarm(config, net)
        swarm.start_bootstrap()
        for name in PEERS:
            swarm.start_peer(name)
        yield swarm, net


def netns_marks(what: str) -> list:
    """A test module's ``pytestmark``: netns, skipped with the reason where these tests cannot run."""
    reason = skip_reason()
    return [pytest.mark.netns, pytest.mark.skipif(reason is not None, reason=f"{what}: {reason}")]


def skip_reason() -> str | None:
    """Why these tests cannot run here (not root, no iptables), or None."""
    reason = iproute.missing_requirements()
    if reason is None:
        try:
            ensure_iptables()
        except NeedsRoot as e:
            reason = str(e)
    return reason


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


def peer_ids(swarm: Swarm) -> dict[str, str]:
    """host name -> peer id, from each peer's events."""
    ids = {}
    for name in PEERS:
        for e in read_events(swarm.events_path(name)):
            if getattr(e, "peer_id", ""):
                ids[name] = e.peer_id
    return ids


def roles_after(swarm: Swarm, after_round: int) -> list[tuple[int, str, list[str]]]:
    """(round, leader, reducers) of every round applied after ``after_round``, as each peer saw it."""
    return [
        (e.round, e.leader, e.reducers)
        for name in PEERS
        for e in read_events(swarm.events_path(name), RoundApplied)
        if e.round > after_round
    ]


def reach_by_events(swarm: Swarm) -> dict[str, str]:
    """host name -> what its own latest probe found (its ``reach_changed`` events). Cheap to poll:
    a ``status`` call costs seconds of CPU, so tests wait on this and then ask ``status`` once."""
    out = {}
    for name in PEERS:
        found = read_events(swarm.events_path(name), ReachChanged)
        if found:
            out[name] = found[-1].reach
    return out


def reach_by_host(swarm: Swarm, net: NetSim) -> dict[str, str]:
    """host name -> its link as ``barnraise status`` shows it (alive peers only)."""
    ids = {pid: name for name, pid in peer_ids(swarm).items()}
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
