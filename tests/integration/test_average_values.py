"""The average members apply is the group's weighted mean, over real hivemind P2P streams.

The result-hash check only proves that members assembled the same bytes; this checks the bytes are
the right ones, for every codec path that matters: a part reduced remotely, our own part, several
chunks per part, and parts of unequal size.
"""

from __future__ import annotations

import time

import pytest
import torch

from barnraise.coordinator import keys, signing
from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
from barnraise.peer.averaging.averager import Averager
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net.auth import OPEN_RUN, dht_extra
from barnraise.peer.net.p2ploop import P2PLoop

pytestmark = pytest.mark.timeout(120)

NUMEL = 600_000  # three chunks of 262,144 values in the largest part
RUN = "run-average-values"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """Three peers' averaging protocols on real DHT nodes; declared bandwidths make parts unequal."""
    tmp = tmp_path_factory.mktemp("average-values")
    nodes = []
    try:
        for i in range(3):
            entry = tuple(visible_maddrs(nodes[0][0])[:1]) if nodes else ()
            identity = tmp / f"peer{i}.id"
            signing.register_signer(keys.ensure_identity(identity, replace_foreign=False), None)
            opts = DHTOptions(
                initial_peers=entry, listen=("/ip4/127.0.0.1/tcp/0",), identity=identity, extra=dht_extra()
            )
            dht = start_dht(opts)
            loop = P2PLoop(dht)
            averager = Averager(
                p2p=loop.p2p,
                dht=dht,
                run_id=RUN,
                peer_id=dht.peer_id.to_base58(),
                codec="fp32",
                group_size=3,
                topk_fraction=0.01,
                bandwidth_bps=(1 + i) * 10e6,
                auth=OPEN_RUN,
                robust=RobustConfig(aggregator="mean"),
            )
            loop.call(averager.register(), 10.0)
            nodes.append((dht, loop, averager))
        yield nodes
    finally:
        for dht, loop, _ in nodes:
            loop.stop()
            dht.shutdown()


def test_members_apply_the_weighted_mean_of_their_updates(trio):
    torch.manual_seed(0)
    updates = [torch.randn(NUMEL) for _ in trio]
    weights = [1.0, 2.0, 3.0]
    plan = RoundPlan.make(1, time.time(), 10.0, reduce_budget_s=20.0)
    futures = [
        loop.submit(av.average(1, u, w, "base", plan, ttl_s=60.0, base_round=0))
        for (_, loop, av), u, w in zip(trio, updates, weights, strict=True)
    ]
    outcomes = [f.result(timeout=60.0) for f in futures]
    expected = sum(w * u for w, u in zip(weights, updates, strict=True)) / sum(weights)
    for out in outcomes:
        assert out.ok, out.reason
        assert len(out.members) == 3
        assert torch.allclose(out.average, expected, atol=1e-5), (out.average - expected).abs().max()
