"""Robust aggregation, the reducer that uses it, attacks, and the clip-then-ban bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from barnraise.coordinator import keys
from barnraise.peer.attacks import ATTACKS, Attacker
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import PartReducer
from barnraise.peer.averaging.robust import RobustConfig, aggregate, trimmed_mean, weighted_median
from barnraise.peer.net.auth import BanPolicy, PeerAuth
from barnraise.protos import averaging_pb2, manifest_pb2


def honest(n: int = 8, d: int = 1000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g)
    return mean + 0.5 * torch.randn(n, d, generator=g)


def test_mean_is_the_weighted_mean():
    x, w = honest(), torch.arange(1.0, 9.0)
    got = aggregate(x, w, RobustConfig(aggregator="mean")).value
    assert torch.allclose(got, (w[:, None] * x).sum(0) / w.sum(), atol=1e-5)


def spread(x: torch.Tensor) -> float:
    return float((x - x.mean(0)).norm(dim=1).mean())


def test_centered_clip_is_nearly_the_mean_without_attackers():
    x, w = honest(), torch.full((8,), 5.0)
    agg = aggregate(x, w, RobustConfig())
    assert (agg.value - x.mean(0)).norm() < 0.02 * spread(x)
    assert bool((agg.clip > 0.9).all())
    wide = aggregate(x, w, RobustConfig(clip_tau=2.0))  # a wider radius clips no honest member
    assert torch.allclose(wide.value, x.mean(0), atol=1e-4) and bool((wide.clip == 1.0).all())


def test_weighted_median_and_trimmed_mean_match_a_reference():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(7, 50, generator=g), torch.rand(7, generator=g) + 0.1
    med = weighted_median(x, w).numpy()
    tm = trimmed_mean(x, w, 0.2).numpy()
    for j in range(50):
        order = np.argsort(x[:, j].numpy())
        vals, ws = x[order, j].numpy(), w[order].numpy()
        cw = np.cumsum(ws)
        assert med[j] == vals[np.searchsorted(cw, 0.5 * ws.sum())]
        lo, hi = 0.2 * ws.sum(), 0.8 * ws.sum()
        inner = np.clip(cw, lo, hi) - np.clip(cw - ws, lo, hi)
        assert math.isclose(tm[j], (vals * inner).sum() / (hi - lo), rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("aggregator", ["centered_clip", "median", "trimmed_mean"])
def test_two_attackers_of_eight_move_the_result_little(aggregator):
    x = honest()
    clean = x[:6].mean(0)
    spread = (x[:6] - clean).norm(dim=1).mean()
    for bad in (-10 * x[6:], 1e3 * torch.randn(2, x.shape[1]), x[6:] * 0 + 50.0):
        attacked = torch.cat([x[:6], bad])
        w = torch.tensor([1.0] * 6 + [1e9, 1e9])  # and they claim absurd weights
        robust = aggregate(attacked, w, RobustConfig(aggregator=aggregator)).value
        plain = aggregate(attacked, w, RobustConfig(aggregator="mean")).value
        assert (robust - clean).norm() < 0.7 * spread, aggregator
        assert (plain - clean).norm() > 10 * spread


def test_clip_factors_name_the_attackers_and_weights_are_capped():
    x = honest()
    x[7] = -10 * x[7]
    agg = aggregate(x, torch.tensor([10.0] * 7 + [1e9]), RobustConfig())
    assert agg.clip[7] < 0.2 and bool((agg.clip[:7] > 0.9).all())
    assert agg.weights[7] == 10.0  # the median weight


def test_small_groups_and_zero_weights():
    x = honest(n=2)
    assert torch.allclose(aggregate(x, torch.tensor([1.0, 3.0]), RobustConfig()).value, (x[0] + 3 * x[1]) / 4)
    x = honest(n=5)
    agg = aggregate(x, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0]), RobustConfig())
    assert (agg.value - x[1:].mean(0)).norm() < 0.05 * spread(x[1:]) and agg.weights[0] == 0.0
    with pytest.raises(ValueError, match="unknown aggregator"):
        RobustConfig(aggregator="krum")


def group(n: int) -> averaging_pb2.Group:
    g = averaging_pb2.Group(group_id="g", round=4, codec="fp32")
    for i in range(n):
        g.members.add(peer_id=f"p{i}", weight=10.0, part_fraction=1.0 / n)
    return g


def test_reducer_combines_robustly_and_reports_clipped_senders():
    x = honest(d=64)
    x[6:] = -10 * x[6:]
    r = PartReducer(group=group(8), index=0, numel=64, topk_fraction=0.01)
    for i in range(8):
        msg = averaging_pb2.PartMessage(
            group_id="g", sender=f"p{i}", part_index=0, weight=10.0, tensor=codecs.encode(x[i], "fp32")
        )
        w, t = r.validate(msg, f"p{i}")
        r.add(f"p{i}", w, t)
    assert r.done.is_set() and r.result.status == averaging_pb2.PART_OK
    out = r.value()
    assert (out - x[:6].mean(0)).norm() < 0.7 * (x[:6] - x[:6].mean(0)).norm(dim=1).mean()
    assert sorted(r.clipped) == ["p6", "p7"]


def test_attacks_transform_update_and_weight():
    base = torch.zeros(10)
    u = torch.randn(10)
    for name in ATTACKS:
        a = Attacker(name, lag_rounds=2)
        for r in range(4):
            out, w = a.forge(r, u, 100.0, base=base + r, honest=torch.randn(6, 10))
            assert w > 0
            assert out.shape == u.shape
    assert torch.isnan(Attacker("nan").forge(0, u, 1.0, base=base)[0]).all()
    assert Attacker("weight").forge(0, u, 1.0, base=base)[1] == 1e9
    assert torch.equal(Attacker("signflip").forge(0, u, 1.0, base=base)[0], -10 * u)
    lie = Attacker("lie_round", lag_rounds=2)
    for r in range(3):
        out, _ = lie.forge(r, u, 1.0, base=base + r)
    assert torch.allclose(out, u + 2.0)  # pulled back to the base of 2 rounds earlier
    with pytest.raises(ValueError, match="unknown attack"):
        Attacker("meteor")


def test_repeatedly_clipped_peers_are_reported_then_banned():
    run = manifest_pb2.RunManifest(run_id="r", run_public_key=keys.public_bytes(keys.generate()))
    run.membership.open = True
    auth = PeerAuth(
        manifest=run, identity=keys.generate(), bans=BanPolicy(window=20, suspect_after=2, ban_after=3)
    )
    bad = keys.peer_id_of(keys.public_bytes(keys.generate()))
    auth.note_clipped(1, {bad: 0.1})
    assert auth.suspects(1) == []
    auth.note_clipped(30, {bad: 0.1})  # long ago is forgotten
    assert auth.suspects(30) == []
    auth.note_clipped(35, {bad: 0.1})
    assert auth.suspects(35) == [bad] and bad not in auth.local_bans
    auth.note_clipped(40, {bad: 0.1})
    assert bad in auth.local_bans
    req = averaging_pb2.StateRequest(run_id="r")
    assert auth.refuse(req, "barnraise.state", bad).startswith("banned by this peer")


def test_attack_harness_runs_the_real_reducer(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from scripts.attacks.sim import SimConfig, make_corpus, run

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text(
        "".join(f"line {i}: the quick brown fox\n" for i in range(40_000))
    )
    cfg = SimConfig(
        dataset=str(tmp_path / "text"),
        peers=4,
        attackers=1,
        rounds=2,
        inner_steps=1,
        batch_size=2,
        eval_windows=4,
    )
    corpus = make_corpus(cfg, tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add overhead
    try:
        robust = run(cfg, corpus, aggregator="centered_clip", attack="signflip")
        plain = run(cfg, corpus, aggregator="mean", attack="signflip")
        refused = run(cfg, corpus, aggregator="mean", attack="nan")
    finally:
        torch.set_num_threads(threads)
    assert robust.clipped.get("p3") == 2 and not plain.clipped
    assert robust.final_loss < plain.final_loss
    assert refused.excluded.get("p3") == 2
