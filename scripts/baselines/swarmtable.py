"""The swarm benchmark's table: every system's time to target, the ratios against their targets, notes.

Kept apart from ``bench_swarm.py`` so the orchestration stays readable; the keys it reads are
``figures.summarise``'s and ``regimes.add_regime_figures``'s.
"""

from __future__ import annotations

import json

from baselines import figures, regimes, report
from baselines.figures import DDP_SLOW, HIVEMIND, IDEAL, OURS, OURS_FREE, SOLO

LABELS = {
    OURS: "barnraise @25 Mbit/s",
    HIVEMIND: "hivemind.Optimizer @25 Mbit/s",
    DDP_SLOW: "DDP @25 Mbit/s",
    SOLO: "one peer alone",
    IDEAL: "DDP unlimited (ideal)",
    OURS_FREE: "barnraise unlimited",
}


def verdict(met: bool | None, value: float | None) -> str:
    if value is None:
        return "not measured"
    return "undecided" if met is None else "met" if met else "not met"


def table(s: dict) -> str:
    f, t, basis = report.fmt, s.get("time_to_target_s", {}), s.get("time_basis", {})
    m = s.get("machine", {})
    regime = s.get("regime", "compute-bound")
    targets = regimes.BANDWIDTH_TARGETS if regime == "bandwidth-bound" else figures.TARGETS
    eq = s.get("loss_at_equal_time") or {}
    lines = [
        f"bench_swarm {regime} {'(quick) ' if s['config']['quick'] else ''}on {m.get('cores')} cores "
        f"{m.get('cpu_model')}, {m.get('ram_gib')} GiB, kernel {m.get('kernel')}, load "
        f"{m.get('loadavg_start')} -> {m.get('loadavg_end')}; commit {m.get('commit')}"
        f"{' + local changes' if m.get('uncommitted_changes') else ''}",
        f"model {s['config']['model']} ({s['numel']} params), {s['peers']} peers at {s['mbit']:g} Mbit/s up, "
        f"{s['config'].get('down_mbit') or s['mbit']:g} down, codec {s['config']['codec']}, "
        f"{s['config'].get('eval_seqs')} held-out sequences x {s['config'].get('smooth', 1)} snapshots per point, "
        f"CPU cap {s['config']['cpus_per_peer']} cores/peer; target held-out loss {f(s.get('target_loss'), '.3f')}",
        "quick mode: a smoke run of the first minute of training; compare systems with a full run"
        if s["config"]["quick"]
        else "times exclude start-up (joining, loading); each system's clock starts at its first step",
        f"budgets: {s['config']['budget_s']:g} s per system, hivemind.Optimizer "
        f"{s['config'].get('hivemind_budget_s') or s['config']['budget_s']:g} s, barnraise unlimited "
        f"{s['config']['unlimited_budget_s']:g} s",
        "",
        f"{'system':<32} {'to target (s)':>14} {'basis':>12} {'best loss':>10} "
        f"{'loss @' + format(eq.get('t_s', 0), '.0f') + ' s':>12}",
    ]
    for key, label in LABELS.items():
        lines.append(
            f"{label:<32} {f(t.get(key), '.1f'):>14} {basis.get(key, '-'):>12} "
            f"{f(s.get('best_loss', {}).get(key), '.3f'):>10} {f(eq.get('loss', {}).get(key), '.3f'):>12}"
        )
    lines.append("")
    against = {"speedup_vs_hivemind": HIVEMIND, "speedup_vs_ddp": DDP_SLOW, "speedup_vs_solo": SOLO,
               "vs_ideal": IDEAL}  # fmt: skip
    for key, (op, thr) in targets.items():
        met = s.get("targets_met", {}).get(key)
        how = basis.get(against.get(key, ""), "measured")
        note = {"lower_bound": " (at least: it never reached the target)", "estimated": " (estimated)"}
        lines.append(
            f"{key:<24} {f(s.get(key), '.3f'):>8}  target {op} {thr:g}: "
            f"{verdict(met, s.get(key))}{note.get(how, '')}"
        )
    notes = {
        "bytes_per_param_round": "bytes a peer sent per training round / params (interface counter)",
        "bytes_per_param_exchange": "same, per exchange with >= 2 members",
        "bytes_per_param_exchange_ideal": "2(N-1)/N x encoded payload / params",
        "comm_compute_ratio": "fp32 all-reduce limit at the link rate / median window compute",
        "fp32_allreduce_limit_s": "2(N-1)/N x 4 bytes x params / link rate",
        "window_compute_s": "median compute seconds of a round (window)",
        "compute_speed_vs_solo": "samples/s while computing, swarm peer vs solo peer (same CPU cap)",
        "ideal_speedup_vs_solo": "solo's time / the ideal's: what data parallelism gains at all here",
        "allreduce_s": "median exchange seconds at the link rate",
        "allreduce_limit_s": "its physical limit",
        "allreduce_s_unlimited": "median exchange seconds on unlimited links (CPU and protocol)",
        "allreduce_floor_vs_limit": "unlimited-link exchange time / the 25 Mbit/s limit",
        "utilisation_unlimited": "compute share of wall time on unlimited links",
        "bytes_per_param_round_unlimited": "bytes per param per round on unlimited links",
        "group_size": "most common averaging group size",
        "hivemind_vs_ideal": "hivemind.Optimizer's own vs_ideal (the ideal's time / its time)",
    }
    lines.append("")
    for key, note in notes.items():
        lines.append(f"{key:<32} {f(s.get(key), 'd' if key == 'group_size' else '.3f'):>8}  {note}")
    if s.get("errors"):
        lines += ["", "errors: " + json.dumps(s["errors"])]
    return "\n".join(lines)
