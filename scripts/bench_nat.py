#!/usr/bin/env python3
"""Home routers: round wall time of a swarm with peers behind NAT vs the same swarm all public.

``sudo .venv/bin/python scripts/bench_nat.py [--quick]`` (needs root and iptables, which the
harness installs from Debian's packages when missing; not run in CI).

Three runs of the same length, each on a fresh emulated network (``netsim_lib``), bootstrap plus
four peers on 25 Mbit/s up / 100 Mbit/s down lines:

- public: every peer can be dialled (the baseline, measured in the same invocation);
- mixed: p1, p2 public, p3, p4 each behind its own home router (MASQUERADE, no inbound);
- all-nat: every peer behind its own router, only the bootstrap public: peers reach each other
  through circuit-relay slots on the bootstrap, which they reserve about 3 minutes after they
  start (``coordinator/dhtnode.py``), so this run first waits ``RELAY_WARMUP_S``.

Reported per run: how ``status`` says each peer is reached, rounds every peer applied with one
params hash, and the round's averaging wall time (window close to the group's verdict, the
slowest member's, median over rounds), and the bytes the bootstrap's link carried (what relaying
costs its host: every relayed byte comes in and goes out again). Target: mixed within 1.25x of
public. The emulated internet uses a public-looking range (isolated namespaces, it routes
nowhere): go-libp2p's autorelay takes no relay whose only addresses are private. Results go to
``scripts/results/bench_nat-DATE[-quick].{json,txt}``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import NetSim, Scenario, Swarm, SwarmConfig, cleanup_stale, missing_requirements  # noqa: E402
from netsim_lib.router import ensure_iptables  # noqa: E402
from netsim_lib.swarm import STATUS_HOST, default_barnraise_command, swarm_hosts  # noqa: E402

logger = logging.getLogger("bench_nat")

PEERS = ("p1", "p2", "p3", "p4")
LAYOUTS = {"public": (), "mixed": ("p3", "p4"), "all-nat": PEERS}
TARGET_RATIO = 1.25  # the target: mixed within 1.25x of all public
PREFIX, SUBNET = "na", "45.67.88.0/24"
RELAY_WARMUP_S = 210.0  # NAT'd peers reserve relay slots ~180 s after start; then they probe (10 s)


def link_bytes(net: NetSim, host: str) -> int:
    """Bytes the host's link has carried both ways so far."""
    total = 0
    for counter in ("tx_bytes", "rx_bytes"):
        done = net.run(host, ["cat", f"/sys/class/net/eth0/statistics/{counter}"], timeout_s=10)
        total += int(done.stdout.strip() or 0)
    return total


def events_of(swarm: Swarm) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in PEERS:
        path = swarm.events_path(name)
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        out[name] = [json.loads(line) for line in lines if line.strip().startswith("{")]
    return out


def round_figures(events: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Rounds all peers applied with one hash, and the slowest member's averaging time per round."""
    hashes: dict[int, set[str]] = defaultdict(set)
    durations: dict[int, list[float]] = defaultdict(list)
    applied: dict[str, set[int]] = {}
    for name, evs in events.items():
        mine = [e for e in evs if e.get("event") == "round_applied"]
        applied[name] = {e["round"] for e in mine}
        for e in mine:
            hashes[e["round"]].add(e["params_hash"])
            durations[e["round"]].append(float(e["duration_s"]))
    agreed = sorted(r for r, h in hashes.items() if len(h) == 1 and all(r in a for a in applied.values()))
    walls = [max(durations[r]) for r in agreed]
    return {
        "rounds_agreed": len(agreed),
        "rounds_applied": {n: len(a) for n, a in applied.items()},
        "round_wall_s_median": statistics.median(walls) if walls else None,
        "round_wall_s": [round(w, 3) for w in walls],
    }


def reach_of(swarm: Swarm, net: NetSim) -> dict[str, str]:
    argv = [*swarm.config.barnraise, "status", "--initial-peers", swarm.initial_peers or "", "--json"]
    try:
        done = net.run(STATUS_HOST, argv, timeout_s=60)
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return {}
    ids = {}
    for name, evs in events_of(swarm).items():
        ids.update({e["peer_id"]: name for e in evs if e.get("event") == "joined"})
    return {ids.get(p["peer_id"], p["peer_id"][:8]): p["link"] for p in report["peers"] if p["alive"]}


def run_layout(label: str, nat: tuple[str, ...], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    run_dir = work / label / "run"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    init = [*default_barnraise_command(), "init", str(run_dir), "--model", args.model]
    subprocess.run(
        [*init, "--round-s", str(args.round_s), "--codec", args.codec], check=True, capture_output=True
    )
    scenario = Scenario(
        peers=len(PEERS), mbit=None, mbit_per_peer={p: (25.0, 100.0) for p in PEERS}, nat=frozenset(nat)
    )
    config = SwarmConfig(
        run_dir=run_dir, log_dir=work / label / "logs", scenario=scenario, peer_args=("--threads", "1")
    )
    logger.info(
        "%s: %d peers, behind NAT: %s, %.0f s", label, len(PEERS), ",".join(nat) or "none", args.duration
    )
    with NetSim(hosts=swarm_hosts(scenario), subnet=SUBNET, prefix=PREFIX) as net:
        swarm = Swarm(config, net)
        swarm.start_bootstrap()
        for name in PEERS:
            swarm.start_peer(name)
        if len(nat) == len(PEERS):
            time.sleep(RELAY_WARMUP_S)
        boot_before, t0 = link_bytes(net, "boot"), time.time()
        time.sleep(args.duration)
        boot_bytes = link_bytes(net, "boot") - boot_before
        reach = reach_of(swarm, net)
        figures = round_figures(events_of(swarm))
    rounds = max(1.0, (time.time() - t0) / args.round_s)
    return {
        "layout": label,
        "nat": list(nat),
        "reach": reach,
        "bootstrap_mb_per_round": round(boot_bytes / rounds / 1e6, 3),
        **figures,
    }


def report_text(result: dict) -> str:
    """The result file's table: one line per layout, then the ratios."""
    r = result
    lines = [
        f"bench_nat {r['model']}, codec {r['codec']}, {r['round_s']:.0f} s rounds, {r['duration_s']:.0f} s per run;"
        f" load {' '.join(r['loadavg_before'])} -> {' '.join(r['loadavg_after'])}",
        f"{'layout':8} {'agreed':>6} {'wall s (median)':>16} {'boot MB/round':>13}  reach",
    ]
    for run in r["runs"]:
        wall = "-" if run["round_wall_s_median"] is None else f"{run['round_wall_s_median']:.2f}"
        reach = " ".join(f"{k}={v}" for k, v in sorted(run["reach"].items()))
        lines.append(
            f"{run['layout']:8} {run['rounds_agreed']:>6} {wall:>16} {run['bootstrap_mb_per_round']:>13.2f}  {reach}"
        )
    ratio, nat = r["mixed_vs_public"], r["all_nat_vs_public"]
    lines.append(
        f"mixed / public round wall time: {ratio:.2f}x (target <= {TARGET_RATIO})" if ratio else "no ratio"
    )
    if nat:
        lines.append(f"all-NAT / public round wall time: {nat:.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, smaller model")
    parser.add_argument("--duration", type=float, help="seconds each run lasts (default 240, quick 100)")
    parser.add_argument("--model", help="built-in model (default gpt-small, quick gpt-micro)")
    parser.add_argument("--round-s", type=float, help="round length, seconds (default 30, quick 12)")
    parser.add_argument(
        "--codec",
        default="fp32",
        help="update codec (default fp32; sparse keeps relayed pairs under the relay's 128 KiB budget)",
    )
    parser.add_argument(
        "--layouts", nargs="+", choices=list(LAYOUTS), default=list(LAYOUTS), help="which runs (default all)"
    )
    args = parser.parse_args()
    args.duration = args.duration or (100.0 if args.quick else 240.0)
    args.model = args.model or ("gpt-micro" if args.quick else "gpt-small")
    args.round_s = args.round_s or (12.0 if args.quick else 30.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if reason := missing_requirements():
        print(f"bench_nat: {reason}", file=sys.stderr)
        return 2
    ensure_iptables()
    cleanup_stale(PREFIX)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="bench_nat-") as tmp:
        runs = [run_layout(label, LAYOUTS[label], args, Path(tmp)) for label in args.layouts]
    wall = {r["layout"]: r["round_wall_s_median"] for r in runs}
    base, mixed, nat = (wall.get(k) for k in LAYOUTS)
    ratio = mixed / base if base and mixed else None
    result = {
        "bench": "bench_nat",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "quick": args.quick,
        "model": args.model,
        "codec": args.codec,
        "round_s": args.round_s,
        "duration_s": args.duration,
        "links": "25 Mbit/s up / 100 Mbit/s down per peer",
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "runs": runs,
        "mixed_vs_public": ratio,
        "all_nat_vs_public": nat / base if base and nat else None,
        "target_ratio": TARGET_RATIO,
        "met": ratio is not None and ratio <= TARGET_RATIO,
    }
    text = report_text(result)
    stamp = time.strftime("%Y-%m-%d-%H%M%S") + ("-quick" if args.quick else "")
    results = SCRIPTS / "results"
    (results / f"bench_nat-{stamp}.txt").write_text(text + "\n", encoding="utf-8")
    (results / f"bench_nat-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
