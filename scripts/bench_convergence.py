"""Convergence and utilisation of barnraise's training engine.

1. Same total samples, DiLoCo with 4 peers vs synchronous data parallelism (torch.distributed,
   gloo, all-reduce every step) on the built-in corpus: ratio of final held-out losses
   (`loss_ratio`, target <= 1.02). DiLoCo runs in one process with the peer's real trainer, codecs
   and outer step (scripts/diloco_sim.py); DDP runs as 4 real gloo processes.
2. Utilisation: fraction of wall time each peer spends in local compute, in a real local swarm
   (bootstrap + 2 peers as processes), with round delay 0 and 1 (`utilisation_delay0`,
   `utilisation_delay1`).

Usage: python scripts/bench_convergence.py [--quick]. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from diloco_sim import Workload, make_corpus, run_ddp, run_diloco
from local_swarm import run_local_swarm


def utilisation(delay: int, duration_s: float, round_s: float) -> tuple[float, list[float]]:
    peers = {f"p{i}": ["--threads", "1"] for i in (1, 2)}
    recs = run_local_swarm(["--round-s", str(round_s), "--round-delay", str(delay)], peers, duration_s)
    per_peer = [rec.utilisation() for rec in recs.values()]
    return sum(per_peer) / len(per_peer), per_peer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller budget (under 5 minutes on 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Workload(total_steps=200 if args.quick else 1000, inner_steps=20 if args.quick else 50)
    t0 = time.perf_counter()
    corpus = make_corpus(work)
    ddp = run_ddp(work, corpus)
    # The paper's outer Nesterov (lr 0.7, momentum 0.9) and plain averaging (lr 1, no momentum):
    # with only a few outer steps, momentum has no time to pay off.
    variants = {
        "nesterov 0.7/0.9": replace(work),
        "average 1.0/0.0": replace(work, outer_lr=1.0, outer_momentum=0.0),
    }
    results = {name: run_diloco(w, corpus) for name, w in variants.items()}
    best = min(results, key=lambda n: results[n].final_loss)
    diloco = results[best]
    ratio = diloco.final_loss / ddp.final_loss
    duration, round_s = (30.0, 4.0) if args.quick else (90.0, 8.0)
    u0, u0_peers = utilisation(0, duration, round_s)
    u1, u1_peers = utilisation(1, duration, round_s)
    print(f"{'system':28} {'samples':>9} {'final loss':>11} {'wall s':>8}")
    for variant, res in results.items():
        name = f"DiLoCo H={work.inner_steps} {variant}"
        print(f"{name:28} {res.samples:>9} {res.final_loss:>11.4f} {res.wall_s:>8.1f}")
    print(f"{'DDP gloo (4 ranks)':28} {ddp.samples:>9} {ddp.final_loss:>11.4f} {ddp.wall_s:>8.1f}")
    print(f"loss ratio DiLoCo/DDP: {ratio:.4f} (target <= 1.02)")
    print(f"utilisation, round delay 0: {u0:.3f} per peer {[round(u, 3) for u in u0_peers]}")
    print(f"utilisation, round delay 1: {u1:.3f} per peer {[round(u, 3) for u in u1_peers]}")
    print(
        json.dumps(
            {
                "loss_ratio": round(ratio, 4),
                "diloco_final_loss": round(diloco.final_loss, 4),
                "diloco_outer": best,
                "loss_ratio_nesterov": round(results["nesterov 0.7/0.9"].final_loss / ddp.final_loss, 4),
                "ddp_final_loss": round(ddp.final_loss, 4),
                "samples": diloco.samples,
                "inner_steps": work.inner_steps,
                "utilisation_delay0": round(u0, 4),
                "utilisation_delay1": round(u1, 4),
                "wall_s": round(time.perf_counter() - t0, 1),
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
