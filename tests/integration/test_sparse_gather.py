"""Sparse groups: every member gathers every payload and applies the same, exact weighted mean.

Over real hivemind P2P streams: the sparse codec's all-gather (``peer/averaging/gather.py``), its
validation, its exact combination (the same bits on every member) and its result-hash agreement.
"""

from __future__ import annotations

import time

import pytest
import torch

from barnraise.coordinator import keys, signing
from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.averager import Averager
from barnraise.peer.averaging.plan import RoundPlan
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.net.auth import OPEN_RUN, dht_extra
from barnraise.peer.net.p2ploop import P2PLoop

pytestmark = pytest.mark.timeout(120)

NUMEL = 600_000  # three segments of 262,144 values
RUN = "run-sparse-gather"


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sparse-gather")
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
                codec="sparse",
                group_size=3,
                topk_fraction=0.01,
                auth=OPEN_RUN,
                robust=RobustConfig(aggregator="centered_clip"),
            )
            loop.call(averager.register(), 10.0)
            nodes.append((dht, loop, averager))
        yield nodes
    finally:
        for dht, loop, _ in nodes:
            loop.stop()
            dht.shutdown()


def _round(trio, r: int, updates, weights):
    plan = RoundPlan.make(r, time.time(), 10.0, reduce_budget_s=20.0)
    futures = [
        loop.submit(av.average(r, u, w, "base", plan, ttl_s=60.0, base_round=0))
        for (_, loop, av), u, w in zip(trio, updates, weights, strict=True)
    ]
    return [f.result(timeout=60.0) for f in futures]


def test_members_apply_the_same_robust_mean_of_what_they_sent(trio):
    torch.manual_seed(0)
    updates = [torch.randn(NUMEL) for _ in trio]
    weights = [1.0, 1.0, 1.0]
    outcomes = _round(trio, 1, updates, weights)
    sent = [codecs.decode(codecs.encode(u, "sparse"), NUMEL, "sparse") for u in updates]
    expected = sum(sent) / 3  # honest payloads: CenteredClip ends (nearly) at the mean
    for out in outcomes:
        assert out.ok, out.reason
        assert out.codec == "sparse" and len(out.members) == 3
        assert not out.offenders, out.offenders  # nobody honest is clipped
        err = float((out.average - expected).norm() / expected.norm())
        assert err < 0.05, err
        assert torch.equal(out.average, outcomes[0].average)  # bit for bit on every member
        # each peer sent its payload to 2 others: about 2 x 0.028 bytes per value, plus framing
        assert out.bytes_sent < 2 * 0.032 * NUMEL, out.bytes_sent
    for (_, _, av), u, s in zip(trio, updates, sent, strict=True):
        assert torch.equal(av.feedback.residual, u - s)  # error feedback holds what was dropped


def test_an_inflated_payload_is_clipped_and_the_others_agree(trio):
    torch.manual_seed(1)
    updates = [torch.randn(NUMEL) for _ in trio]
    for _, _, av in trio:
        av.feedback.residual = None
    updates[2] = updates[2] * 1000.0  # one member's update far off the others
    outcomes = _round(trio, 2, updates, [1.0, 1.0, 1.0])
    honest = [codecs.decode(codecs.encode(u, "sparse"), NUMEL, "sparse") for u in updates[:2]]
    for out in outcomes:
        assert out.ok, out.reason
        assert torch.equal(out.average, outcomes[0].average)
        assert float(out.average.norm()) < 3 * float(sum(honest).norm() / 2)  # bounded, not x1000
    offender = outcomes[0].members  # the clipped member is named by the honest ones
    assert any(trio[2][2].allreduce.peer_id in o.offenders for o in outcomes[:2]), offender
