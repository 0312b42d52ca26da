"""The benchmark's figures, as pure functions of events, curves and byte counters.

Definitions (the report states them too):

- time to target: first time a system's held-out loss curve reaches the target, interpolated
  linearly between the two snapshots around the crossing.
- utilisation: per peer, compute seconds over wall seconds, counted over whole cycles (from the
  first window's start to the last window's start), so every window's averaging gap is included.
- all-reduce vs limit: the exchange's duration over 2(N-1)/N x payload / link rate, where payload
  is the encoded size of the whole update in the round's codec; median over rounds and peers.
- bytes per parameter per round: bytes a peer put on its link (its interface counter, so headers,
  DHT and heartbeats included) per averaging round, over the parameter count.
- comm/compute ratio: the physical limit of one uncompressed fp32 all-reduce at the link rate over
  the median compute seconds of a window: ~1 means that a plain fp32 all-reduce would take as long
  as a round of compute, as for a 1B-parameter model on a home GPU at 25 Mbit/s.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from baselines.evaluator import CurvePoint


def time_to_target(points: Sequence[CurvePoint], target: float) -> float | None:
    """Seconds until the curve first reaches ``target``; None if it never does."""
    prev: CurvePoint | None = None
    for p in points:
        if p.loss <= target:
            if prev is None or prev.loss <= p.loss:
                return p.t_s
            frac = (prev.loss - target) / (prev.loss - p.loss)
            return prev.t_s + frac * (p.t_s - prev.t_s)
        prev = p
    return None


def best_loss(points: Sequence[CurvePoint]) -> float:
    return min((p.loss for p in points), default=math.inf)


def allreduce_limit_s(payload_bytes: float, members: int, mbit: float) -> float:
    """Physical lower bound of a butterfly/ring all-reduce: 2(N-1)/N x payload / rate."""
    return 2 * (members - 1) / members * payload_bytes / (mbit * 1e6 / 8)


def utilisation(windows: Sequence[dict[str, Any]]) -> float | None:
    """Compute share of wall time over whole cycles of one peer's windows (None: too few)."""
    ws = sorted(windows, key=lambda w: w["t0"])
    if len(ws) < 2:
        return None
    span = ws[-1]["t0"] - ws[0]["t0"]
    return sum(w["compute_s"] for w in ws[:-1]) / span if span > 0 else None


def median_window_compute_s(windows: Sequence[dict[str, Any]]) -> float | None:
    """Median compute seconds of full windows (each peer's first, partial window left out)."""
    by_peer: dict[str, list[dict[str, Any]]] = {}
    for w in windows:
        if w.get("kind", "window") == "window":
            by_peer.setdefault(w.get("source", ""), []).append(w)
    full = [w["compute_s"] for ws in by_peer.values() for w in sorted(ws, key=lambda w: w["t0"])[1:]]
    return statistics.median(full) if full else None


@dataclass(frozen=True, kw_only=True)
class AllreduceFigures:
    rounds: int  # exchanges that succeeded (over all peers)
    median_s: float  # median exchange duration
    median_vs_limit: float | None  # median of duration / limit (None: no link rate)
    members: int  # most common group size
    payload_bytes: int  # encoded size of the whole update in the round's codec


def allreduce_figures(events: Sequence[dict[str, Any]], mbit: float | None) -> AllreduceFigures | None:
    from barnraise.peer.averaging import codecs

    ok = [e for e in events if e.get("kind") == "allreduce" and e.get("ok") and e.get("members", 0) > 1]
    if not ok:
        return None
    members = statistics.mode(e["members"] for e in ok)
    codec, numel = ok[0]["codec"], ok[0]["numel"]
    payload = codecs.ideal_bytes(codec, numel)
    durations = [e["t1"] - e["t0"] for e in ok]
    ratios = (
        [
            (e["t1"] - e["t0"])
            / allreduce_limit_s(codecs.ideal_bytes(e["codec"], e["numel"]), e["members"], mbit)
            for e in ok
        ]
        if mbit
        else []
    )
    return AllreduceFigures(
        rounds=len(ok),
        median_s=statistics.median(durations),
        median_vs_limit=statistics.median(ratios) if ratios else None,
        members=members,
        payload_bytes=payload,
    )


def comm_compute_ratio(numel: int, members: int, mbit: float, window_compute_s: float) -> float:
    """fp32 all-reduce limit at ``mbit`` over one window's compute."""
    return allreduce_limit_s(4 * numel, members, mbit) / window_compute_s


def bytes_per_param_round(up_bytes: float, rounds: int, numel: int) -> float | None:
    return up_bytes / rounds / numel if rounds > 0 else None


def speedup(baseline_s: float | None, ours_s: float | None) -> float | None:
    if baseline_s is None or ours_s is None or ours_s <= 0:
        return None
    return baseline_s / ours_s
