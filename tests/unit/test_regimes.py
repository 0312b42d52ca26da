"""The swarm benchmark's regimes: presets, smoothing, loss at equal time, seeds, targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from baselines import regimes
from baselines.evaluator import CurvePoint

pytestmark = pytest.mark.timeout(30)


def _curve(points):
    return [CurvePoint(t_s=t, loss=loss, file="") for t, loss in points]


def test_compute_bound_stays_the_default_run():
    import bench_swarm

    cfg = bench_swarm.parse_args([])
    assert (cfg.regime, cfg.model, cfg.codec, cfg.mbit, cfg.down_mbit, cfg.eval_seqs, cfg.seeds) == (
        "compute-bound", "gpt-small", "int8", 25.0, None, 16, 1,
    )  # fmt: skip
    assert not cfg.declare_bandwidth and cfg.smooth == 1
    bw = bench_swarm.parse_args(["--regime", "bandwidth-bound"])
    assert (bw.model, bw.codec, bw.down_mbit, bw.eval_seqs, bw.seeds) == ("gpt-wide", "sparse", 100.0, 256, 2)
    assert bench_swarm.parse_args(["--regime", "bandwidth-bound", "--codec", "int4"]).codec == "int4"


def test_bandwidth_bound_preset_is_bandwidth_bound():
    from barnraise.coordinator.manifest import MODEL_PRESETS

    p = MODEL_PRESETS["gpt-wide"]
    params = p.n_layer * 12 * p.d_model**2  # blocks dominate
    fp32_allreduce_s = 2 * 3 / 4 * 4 * params * 8 / 25e6  # 4 peers at 25 Mbit/s
    assert fp32_allreduce_s >= 4 * regimes.PRESETS["bandwidth-bound"].round_s


def test_smoothing_and_loss_at_equal_time():
    c = _curve([(0, 5.0), (10, 3.0), (20, 2.0), (30, 4.0)])
    s = regimes.smoothed(c, 3)
    assert [p.loss for p in s] == [5.0, 3.0, 2.5, 3.0]
    eq = regimes.loss_at_equal_time({"a": c, "b": _curve([(0, 5.0), (15, 2.0)]), "c": _curve([(0, 5.0)])})
    assert eq == {"t_s": 15.0, "loss": {"a": 3.0, "b": 2.0, "c": 5.0}}


def test_seeds_combine_to_means_and_targets_read_them():
    out = regimes.combine_seeds([{"vs_ideal": 0.8}, {"vs_ideal": 1.0}, {"vs_ideal": None}], ["vs_ideal"])
    assert out["vs_ideal"] == pytest.approx(0.9) and out["vs_ideal_per_seed"] == [0.8, 1.0, None]
    met = regimes.targets_met({"vs_ideal": 0.9, "utilisation": 0.9}, regimes.BANDWIDTH_TARGETS)
    assert met["vs_ideal"] is True and met["utilisation"] is False and met["speedup_vs_solo"] is None
