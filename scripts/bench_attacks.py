#!/usr/bin/env python3
"""Byzantine peers vs robust aggregation: final loss under each attack, and what robustness costs.

Usage: python scripts/bench_attacks.py [--quick] [--jobs N] [--attacks signflip noise ...]

8 peers, 2 of them attackers, train gpt-nano with DiLoCo on the built-in corpus. The swarm runs
in one process per experiment (scripts/attacks/sim.py): the real model, inner trainer, codec,
reducer (``PartReducer.validate`` + ``finish`` with ``peer/robust.py``) and outer step, without the
network; attackers are omniscient. For each attack in ``peer/attacks.py`` it reports the held-out
loss after the last round with plain weighted averaging (``mean``: validation still drops
non-finite updates) and with the run default ``centered_clip`` (``robust``), next to a clean run
(8 honest peers, plain mean) and to the 6 honest peers alone (``honest_only``). Overhead: the loss of robust aggregation without attackers relative
to the clean run, and the extra seconds per round one member spends combining its part (timed
apart, best of several repeats, for this model and for a 25M-parameter one). Experiments run in
``--jobs`` processes of one torch thread each.

Prints a table, writes ``scripts/results/bench_attacks-DATE-HOST.json`` (unless --quick), and prints
one JSON object as its last line: {"attacks": {name: {"clean", "mean", "robust"}},
"robust_overhead_loss", "robust_overhead_s", ...}. A loss of null means training diverged.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from barnraise.peer.attacks import ATTACKS  # noqa: E402
from barnraise.peer.training.model import build_model  # noqa: E402
from scripts.attacks.sim import SimConfig, make_corpus, reduce_round, run  # noqa: E402

QUICK = SimConfig(rounds=12, inner_steps=8)
FULL = SimConfig(rounds=30, inner_steps=16)
TARGET_GAP = 0.02  # robust within 2% of clean
LABELS = {None: "clean", "absent": "honest only"}
_corpus = None


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _experiment(job: tuple[SimConfig, str, str | None]) -> dict:
    cfg, aggregator, attack = job
    absent = attack == "absent"
    res = run(cfg, _corpus, aggregator=aggregator, attack=None if absent else attack, absent=absent)
    loss = res.final_loss if math.isfinite(res.final_loss) else None
    return {
        "attack": attack,
        "aggregator": aggregator,
        "loss": loss,
        "wall_s": res.wall_s,
        "clipped": res.clipped,
        "excluded": res.excluded,
    }


def time_reduction(numel: int, peers: int, aggregator: str, repeats: int) -> float:
    """Seconds one member spends combining its part (numel / peers elements from each of ``peers``)."""
    from barnraise.peer.averaging.robust import RobustConfig

    g = torch.Generator().manual_seed(0)
    mean = torch.randn(numel, generator=g)
    updates = [mean + 0.5 * torch.randn(numel, generator=g) for _ in range(peers)]
    best = math.inf
    for _ in range(repeats):
        _, per_member = reduce_round(
            0, updates, [1.0] * peers, RobustConfig(aggregator=aggregator), "fp32", {}, {}
        )
        best = min(best, per_member)
    return best


def fmt(x: float | None) -> str:
    return "diverged" if x is None else f"{x:.4f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"{QUICK.rounds} rounds x {QUICK.inner_steps} steps")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=ATTACKS)
    p.add_argument("--robust", default="centered_clip", choices=("centered_clip", "median", "trimmed_mean"))
    p.add_argument("--peers", type=int, default=8)
    p.add_argument("--attackers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    p.add_argument("--inner-steps", type=int, default=0, help="override H")
    p.add_argument("--model", default="gpt-nano")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="experiments in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per experiment")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # reducers warn about every refused part; the table says it all

    cfg = replace(QUICK if args.quick else FULL, peers=args.peers, attackers=args.attackers, model=args.model)
    if args.rounds:
        cfg = replace(cfg, rounds=args.rounds)
    if args.inner_steps:
        cfg = replace(cfg, inner_steps=args.inner_steps)
    started = time.perf_counter()
    root = tempfile.mkdtemp(prefix="barnraise-attacks-")
    global _corpus
    corpus = _corpus = make_corpus(cfg, Path(root))  # the forked workers inherit it
    jobs = [(cfg, "mean", None), (cfg, args.robust, None), (cfg, "mean", "absent")]
    jobs += [(cfg, agg, a) for a in args.attacks for agg in ("mean", args.robust)]
    print(
        f"{len(jobs)} experiments: {cfg.peers} peers ({cfg.attackers} attackers), {cfg.rounds} rounds x "
        f"{cfg.inner_steps} inner steps, {cfg.model}; {args.jobs} job(s) x {args.threads} thread(s)",
        flush=True,
    )
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs, initializer=_init_worker, initargs=(args.threads,)) as pool:
        results = []
        for res in pool.imap_unordered(_experiment, jobs):
            results.append(res)
            print(
                f"  {LABELS.get(res['attack'], res['attack']):>12} {res['aggregator']:>13}: loss {fmt(res['loss'])} "
                f"({res['wall_s']:.0f} s)",
                flush=True,
            )
    by = {(r["attack"], r["aggregator"]): r for r in results}
    clean = by[(None, "mean")]["loss"]
    honest_only = by[("absent", "mean")]["loss"]
    robust_clean = by[(None, args.robust)]["loss"]

    torch.set_num_threads(args.threads)
    numel = sum(p.numel() for p in build_model(corpus.model_cfg, 0).parameters())
    t_mean = time_reduction(numel, cfg.peers, "mean", 5)
    t_robust = time_reduction(numel, cfg.peers, args.robust, 5)
    big = 25_000_000
    t_mean_big = time_reduction(big, cfg.peers, "mean", 1 if args.quick else 3)
    t_robust_big = time_reduction(big, cfg.peers, args.robust, 1 if args.quick else 3)

    attacks = {}
    lines = [
        f"{'attack':>13} | {'clean':>8} | {'mean':>8} | {'robust':>8} | robust vs clean | attackers clipped/refused",
        "-" * 90,
    ]
    ok = True
    for a in args.attacks:
        m, rb = by[(a, "mean")], by[(a, args.robust)]
        attacks[a] = {"clean": clean, "mean": m["loss"], "robust": rb["loss"]}
        gap = None if rb["loss"] is None or clean is None else rb["loss"] / clean - 1.0
        ok &= gap is not None and gap <= TARGET_GAP
        bad = [f"p{i}" for i in range(cfg.peers - cfg.attackers, cfg.peers)]
        seen = ", ".join(
            f"{p}: {rb['clipped'].get(p, 0)}/{rb['excluded'].get(p, 0)} of {cfg.rounds}" for p in bad
        )
        lines.append(
            f"{a:>13} | {fmt(clean):>8} | {fmt(m['loss']):>8} | {fmt(rb['loss']):>8} | "
            f"{'' if gap is None else f'{100 * gap:+.2f} %':>15} | {seen}"
        )
    overhead_loss = None if clean is None or robust_clean is None else robust_clean / clean
    lines += [
        "-" * 90,
        f"no attackers: mean {fmt(clean)}, {args.robust} {fmt(robust_clean)}"
        + ("" if overhead_loss is None else f" (ratio {overhead_loss:.4f}, target <= 1.005)"),
        f"the {cfg.peers - cfg.attackers} honest peers alone (attackers absent), mean: {fmt(honest_only)}",
        f"combining one member's part per round ({numel:,} params, {cfg.peers} peers): mean "
        f"{1e3 * t_mean:.2f} ms, {args.robust} {1e3 * t_robust:.2f} ms (+{1e3 * (t_robust - t_mean):.2f} ms)",
        f"same for {big:,} params: mean {t_mean_big:.3f} s, {args.robust} {t_robust_big:.3f} s "
        f"(+{t_robust_big - t_mean_big:.3f} s)",
        f"robust within {100 * TARGET_GAP:.0f}% of clean under every attack: {'yes' if ok else 'NO'}",
        f"total {time.perf_counter() - started:.0f} s on {platform.node()} ({os.cpu_count()} cpus); "
        "timings on a shared machine are noisy",
    ]
    print("\n".join(lines))
    summary = {
        "attacks": attacks,
        "robust_overhead_loss": overhead_loss,
        "robust_overhead_s": max(0.0, t_robust - t_mean),
        "robust_overhead_s_25m_params": max(0.0, t_robust_big - t_mean_big),
        "honest_only": honest_only,
        "robust_aggregator": args.robust,
        "robust_within_2pct": ok,
        "mode": "in-process simulation of the group (real reducer, aggregator, model and training)",
        "config": asdict(cfg),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if not args.quick:
        out = (
            ROOT / "scripts" / "results" / f"bench_attacks-{date.today().isoformat()}-{platform.node()}.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {out.relative_to(ROOT)}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
