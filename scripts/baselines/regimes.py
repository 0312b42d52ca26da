"""The swarm benchmark's two regimes, and the figures that make runs comparable across seeds.

- ``compute-bound`` (the default, unchanged): gpt-small, one fp32 all-reduce at 25 Mbit/s about one
  round of compute; symmetric 25 Mbit/s links; int8.
- ``bandwidth-bound``: one fp32 all-reduce at 25 Mbit/s at least 4x a round's compute, as for a 1B
  model on a home GPU averaging every few minutes: gpt-wide (25M parameters, short sequences so a
  round still holds several steps on a capped core) and 10 s rounds (48 s of fp32 all-reduce for 4
  peers), links 25 Mbit/s up and 100 down, the sparse codec with plain averaging (outer lr 1, no
  momentum: error feedback carries what the codec drops), each peer declaring its uplink so the
  group's density follows it. The held-out evaluation is a moving average over three snapshots
  of 64 sequences (192 sequences per point) in quick runs and of 256 in full ones.

Loss at equal wall time: each system's smoothed held-out loss at the same moment, the end of the
shortest budget that every system ran (``loss_at_equal_time``), so a system that starts fast and one
that finishes fast are compared at one instant and not only through a target.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from baselines.evaluator import CurvePoint

REGIMES = ("compute-bound", "bandwidth-bound")

COMPUTE_TARGETS = {
    "speedup_vs_hivemind": (">=", 5.0),
    "speedup_vs_ddp": (">=", 20.0),
    "speedup_vs_solo": (">", 1.0),
    "vs_ideal": (">=", 0.9),
    "utilisation": (">=", 0.97),
    "allreduce_vs_limit": ("<=", 1.3),
}
BANDWIDTH_TARGETS = {
    "vs_ideal": (">=", 0.9),
    "speedup_vs_hivemind": (">=", 2.0),
    "speedup_vs_solo": (">=", 2.0),
    "utilisation": (">=", 0.95),
    "ideal_speedup_vs_solo": (">=", 2.5),
}


@dataclass(frozen=True, kw_only=True)
class Regime:
    """Defaults of one regime; explicit flags override them."""

    model: str  # built-in model preset
    round_s: float  # barnraise round, seconds
    codec: str  # barnraise update codec
    up_mbit: float  # link upload, Mbit/s
    down_mbit: float | None  # link download, Mbit/s (None: as upload)
    eval_seqs: int  # held-out sequences per evaluation
    eval_seqs_quick: int  # the same in quick runs
    smooth: int  # snapshots per moving-average point (1: raw)
    seeds: int  # runs of every system with different seeds (quick runs: one)
    declare_bandwidth: bool  # peers pass --bandwidth-mbit (their uplink) so groups size payloads


PRESETS = {
    "compute-bound": Regime(
        model="gpt-small", round_s=10.0, codec="int8", up_mbit=25.0, down_mbit=None, eval_seqs=16, eval_seqs_quick=8,
        smooth=1, seeds=1, declare_bandwidth=False,
    ),
    "bandwidth-bound": Regime(
        model="gpt-wide", round_s=10.0, codec="sparse", up_mbit=25.0, down_mbit=100.0, eval_seqs=256, eval_seqs_quick=64,
        smooth=3, seeds=2, declare_bandwidth=True,
    ),
}  # fmt: skip


def smoothed(points: Sequence[CurvePoint], width: int) -> list[CurvePoint]:
    """Trailing moving average of ``width`` snapshots (the first point, the initial state, kept)."""
    if width <= 1 or len(points) < 2:
        return list(points)
    out = [points[0]]
    for i in range(1, len(points)):
        window = points[max(1, i - width + 1) : i + 1]
        out.append(CurvePoint(t_s=points[i].t_s, loss=statistics.fmean(p.loss for p in window), file=""))
    return out


def loss_at(points: Sequence[CurvePoint], t_s: float) -> float | None:
    """The latest loss at or before ``t_s`` (None before the first point)."""
    before = [p.loss for p in points if p.t_s <= t_s + 1e-9 and math.isfinite(p.loss)]
    return before[-1] if before else None


def loss_at_equal_time(curves: Mapping[str, Sequence[CurvePoint]]) -> dict[str, Any]:
    """Every system's loss at the end of the shortest curve that got past its initial state (``t_s``)."""
    ends = [c[-1].t_s for c in curves.values() if c and c[-1].t_s > 0]
    if not ends:
        return {}
    t = min(ends)
    return {"t_s": round(t, 1), "loss": {k: loss_at(c, t) for k, c in curves.items() if c}}


def combine_seeds(summaries: Sequence[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Mean of each figure over the seeds that measured it, and every seed's value beside it."""
    out: dict[str, Any] = {}
    for k in keys:
        values = [s.get(k) for s in summaries]
        nums = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
        out[k] = statistics.fmean(nums) if nums else None
        out[f"{k}_per_seed"] = values
    return out


def targets_met(
    figures: Mapping[str, Any], targets: Mapping[str, tuple[str, float]]
) -> dict[str, bool | None]:
    met: dict[str, bool | None] = {}
    for key, (op, threshold) in targets.items():
        value = figures.get(key)
        if value is None:
            met[key] = None
        elif op == ">=":
            met[key] = value >= threshold
        elif op == ">":
            met[key] = value > threshold
        else:
            met[key] = value <= threshold
    return met


def add_regime_figures(
    summary: dict[str, Any], curves: Mapping[str, Sequence[CurvePoint]], regime: str
) -> None:
    """The regime's keys: ``regime``, ``loss_at_equal_time``, hivemind's own ``vs_ideal``, its targets."""
    summary["regime"] = regime
    summary["loss_at_equal_time"] = loss_at_equal_time(curves)
    t = summary.get("time_to_target_s", {})
    basis = summary.get("time_basis", {})
    if basis.get("hivemind") == "measured" and basis.get("ddp_unlimited") == "measured" and t.get("hivemind"):
        summary["hivemind_vs_ideal"] = t["ddp_unlimited"] / t["hivemind"]
    if regime == "bandwidth-bound":
        summary["targets_met"] = targets_met(summary, BANDWIDTH_TARGETS)
