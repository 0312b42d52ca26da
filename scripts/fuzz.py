"""Long fuzz run over every parser of network input (the targets in tests/fuzz/).

Usage: python scripts/fuzz.py [--count N] [--seed S] [--target NAME ...] [--quick] [--list]

Feeds N generated inputs in all (split evenly across the chosen targets) to the parsers of frames,
protobuf messages, request frames, codec payloads, part-reducer headers and chunks, state blobs and
transfers, shard transfers, DHT records (sealed or not), the DHT nodes' record validator, the
run's revocation record, tokens, signed requests, manifests, and verified reduction's audit
requests, evidence and accusations.
Each must return a valid result or raise one of our protocol errors, within its deadline. A target
stops at its first failure (hypothesis then shrinks it to a small input, printed with the failure).
``--quick`` runs 20 inputs per target. Prints per-target counts and failures, writes
``scripts/results/fuzz-DATE[-quick].{json,txt}``; the last line printed is one JSON object.
The same seed gives the same inputs; the suite runs a small, derandomized subset
(tests/unit/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
for path in (SCRIPTS, SCRIPTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from baselines.report import describe_machine, stamp, write_results  # noqa: E402

from tests.fuzz.targets import all_targets, run_target  # noqa: E402

QUICK_PER_TARGET = 20


def fuzz(names: list[str], count: int, seed: int) -> dict:
    targets = all_targets()
    per_target = max(1, -(-count // len(names)))  # rounded up: at least ``count`` in all
    rows, t_start = {}, time.perf_counter()
    for name in names:
        t0, failure = time.perf_counter(), None
        ran = 0
        try:
            ran = run_target(targets[name], per_target, seed)
        except Exception as e:  # the failure, already shrunk by hypothesis
            failure = f"{type(e).__name__}: {e}"[:2000]
        rows[name] = {
            "parser": targets[name].parser,
            "inputs": ran,
            "failure": failure,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name:<20} {ran:>8} inputs {rows[name]['seconds']:>7.1f} s  {failure or 'ok'}", flush=True)
    return {
        "seed": seed,
        "count_requested": count,
        "inputs": sum(r["inputs"] for r in rows.values()),
        "failures": sum(r["failure"] is not None for r in rows.values()),
        "seconds": round(time.perf_counter() - t_start, 1),
        "targets": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000, help="inputs in all, split across targets")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same seed, the same inputs")
    parser.add_argument("--target", action="append", default=[], help="run only this target (repeatable)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PER_TARGET} inputs per target")
    parser.add_argument("--list", action="store_true", help="list the targets and the parser each covers")
    args = parser.parse_args()
    targets = all_targets()
    if args.list:
        for name, t in targets.items():
            print(f"{name:<20} {t.parser}")
        return 0
    unknown = [n for n in args.target if n not in targets]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    names = args.target or list(targets)
    count = QUICK_PER_TARGET * len(names) if args.quick else args.count
    summary = fuzz(names, count, args.seed)
    summary["machine"] = describe_machine()
    text = (
        f"fuzz: {summary['inputs']:,} inputs over {len(names)} targets, seed {args.seed}, "
        f"{summary['failures']} failing target(s), {summary['seconds']:.0f} s on "
        f"{summary['machine']['cores']} cores {summary['machine']['cpu_model']}\n"
        + "\n".join(
            f"{n:<20} {r['inputs']:>8} {r['seconds']:>7.1f} s  {r['failure'] or 'ok'}"
            for n, r in summary["targets"].items()
        )
    )
    paths = write_results(f"fuzz-{stamp()}{'-quick' if args.quick else ''}", summary, text)
    print(f"wrote {paths['json']}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("targets", "machine")}))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
