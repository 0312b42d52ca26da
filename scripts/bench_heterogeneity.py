"""Heterogeneous peers: does a 10x slower peer slow the others down?

Runs a real local swarm twice: two fast peers alone, then the same two with a third peer
throttled to 1/10 of their speed (a slowdown fault injected with `--inject`). Rounds are wall-clock windows, so the slow
peer contributes whatever it computed in each window and nobody waits for it. Reports the fast
peers' throughput (samples per wall second) in both runs and `fast_peer_slowdown`, the fraction
they lost (target <= 0.05). On a 2-core machine the third process also takes some CPU; the
report says how much of the window the slow peer computed.

Usage: python scripts/bench_heterogeneity.py [--quick]. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_swarm import run_local_swarm


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 5 minutes on 2 cores)")
    args = parser.parse_args()
    duration, round_s = (40.0, 4.0) if args.quick else (120.0, 8.0)
    init = ["--round-s", str(round_s), "--round-delay", "1"]
    fast = {f"fast{i}": ["--threads", "1"] for i in (1, 2)}
    alone = run_local_swarm(init, fast, duration)
    slow_peer = {"slow": [{"kind": "slowdown", "factor": 10}]}
    mixed = run_local_swarm(init, {**fast, "slow": ["--threads", "1"]}, duration, inject=slow_peer)
    base = sum(alone[n].samples_per_s() for n in fast) / len(fast)
    with_slow = sum(mixed[n].samples_per_s() for n in fast) / len(fast)
    slow = mixed["slow"].samples_per_s()
    slowdown = max(0.0, 1.0 - with_slow / base) if base else None
    joined = {n: len(r.applied) for n, r in mixed.items()}
    print(f"fast peers alone:          {base:8.1f} samples/s each")
    print(f"fast peers with slow peer: {with_slow:8.1f} samples/s each")
    print(f"slow peer:                 {slow:8.1f} samples/s ({slow / base if base else 0:.2f}x a fast peer)")
    print(f"fast peers' slowdown: {slowdown:.3f} (target <= 0.05); rounds applied {joined}")
    print(
        json.dumps(
            {
                "fast_peer_slowdown": round(slowdown, 4) if slowdown is not None else None,
                "fast_samples_per_s_alone": round(base, 1),
                "fast_samples_per_s_with_slow": round(with_slow, 1),
                "slow_samples_per_s": round(slow, 1),
                "slow_rounds_applied": joined.get("slow", 0),
                "fast_rounds_applied": min(joined[n] for n in fast),
                "quick": args.quick,
            }
        )
    )


if __name__ == "__main__":
    main()
