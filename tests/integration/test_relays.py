"""Every peer behind a home router, only the bootstrap public: the swarm trains through relays (root).

Four peers, each behind its own NAT router (MASQUERADE, no inbound) on a 25 Mbit/s up / 100 down
line, and the bootstrap. Nobody can dial a peer directly, so each reserves a circuit-relay slot on
the bootstrap (``coordinator/dhtnode.py``) and is dialled through it: ``status`` must show every
peer ``relayed``, and all four must then average together and agree on the params hash.

The "internet" here is a public-looking range: go-libp2p's autorelay does not take a relay whose
only addresses are private (we watched it never reserve on 10.x), and a real bootstrap has a
public address. The namespaces are isolated, so the range routes nowhere. A NAT'd peer reserves
its slot about 3 minutes after it starts (autorelay's boot delay while it has fewer than four
candidate relays), which sets this test's length. Skipped with the reason when not root or when
iptables cannot be installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import init_run
from tests.integration.homenet import (
    PEERS,
    NetSim,
    Scenario,
    Swarm,
    SwarmConfig,
    agreed_rounds,
    applied,
    reach_by_host,
    registry,
    skip_reason,
    swarm_hosts,
    wait,
)

PREFIX = "nr"
SUBNET = "45.67.89.0/24"
_REASON = skip_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(_REASON is not None, reason=f"relay tests: {_REASON}"),
]


@pytest.mark.timeout(540)
def test_every_peer_behind_nat_trains_through_relays_and_status_says_so(tmp_path: Path) -> None:
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

        def all_relayed() -> dict[str, str] | None:
            links = reach_by_host(swarm, net)
            return links if len(links) == 4 and set(links.values()) == {"relayed"} else None

        wait(all_relayed, 360, "status to show all four peers as relayed")
        relayed_at = max((max(d) for d in applied(swarm).values() if d), default=-1)

        def agreed_after() -> list[int] | None:
            rounds = [r for r in agreed_rounds(applied(swarm)) if r > relayed_at]
            return rounds if len(rounds) >= 2 else None

        agreed = wait(agreed_after, 120, "all four peers to agree on the params hash for 2 rounds")
    assert len(agreed) >= 2
