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

from tests.integration.homenet import (
    PEERS,
    agreed_rounds,
    applied,
    home_swarm,
    netns_marks,
    reach_by_events,
    reach_by_host,
    wait,
)

PREFIX = "nr"
SUBNET = "45.67.89.0/24"
pytestmark = netns_marks("relay tests")


@pytest.mark.timeout(540)
def test_every_peer_behind_nat_trains_through_relays_and_status_says_so(tmp_path: Path) -> None:
    # The peers wait 3 minutes for their relay slots: a tenth of each round's compute is plenty.
    # The sparse codec keeps each pair's relayed bytes per round far below the relay's 128 KiB per
    # relayed connection (coordinator/dhtnode.py), as an all-NAT swarm needs.
    with home_swarm(tmp_path, prefix=PREFIX, subnet=SUBNET, nat=PEERS, compute_share=0.1, codec="sparse") as (
        swarm,
        net,
    ):
        every = {name: "relayed" for name in PEERS}
        wait(lambda: reach_by_events(swarm) == every, 360, "every peer's probe to find it relayed")
        wait(lambda: reach_by_host(swarm, net) == every, 45, "status to show all four peers as relayed")
        relayed_at = max((max(d) for d in applied(swarm).values() if d), default=-1)

        def agreed_after() -> list[int] | None:
            rounds = [r for r in agreed_rounds(applied(swarm)) if r > relayed_at]
            return rounds if len(rounds) >= 2 else None

        agreed = wait(agreed_after, 120, "all four peers to agree on the params hash for 2 rounds")
    assert len(agreed) >= 2
