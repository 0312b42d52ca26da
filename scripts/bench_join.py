#!/usr/bin/env python3
"""How fast a newcomer gets the swarm's state: several donors at once vs one, against its link.

``sudo .venv/bin/python scripts/bench_join.py [--quick]`` (needs root for network namespaces;
without it the benchmark says why and prints a JSON line with null figures).

Four donors with home links (25 Mbit/s up, 100 down) and a newcomer with a 100 Mbit/s downlink,
each a network namespace shaped by tbf (``netsim_lib``). Each donor is ``scripts/state_donor.py``:
the peer's own ``StateServer`` serving one state of the model's size (params and outer momentum,
fp32: 8 bytes per parameter), so the donors' CPUs stay free on a small machine. The newcomer runs
this script's ``--role newcomer`` in its namespace and downloads the state three ways:

* ``multi``: ``donors.fetch_state`` from all four at once, every chunk checked;
* ``single``: the whole state from one donor (``statesync.download_state``), the baseline;
* ``donor_lost``: ``multi`` with one donor SIGKILLed once 30% of the chunks have arrived.

``join_s`` runs from the newcomer's first request to the state verified and loaded into the
model, ready to train; the limit is the state's size over the newcomer's downlink, so
``join_vs_limit`` = ``join_s`` / limit (the target: at most 1.2). A newcomer's first applied round
comes on top of this by at most one round plus that round's averaging, which depend on the round
length and codec, not on state sync. Default model gpt-medium (25.5M parameters, a 204 MB state);
``--quick`` uses gpt-small (4.9M, 39 MB).

Results go to ``scripts/results/bench_join-DATE-HOST[-quick].{json,txt}``; the last line printed is
one JSON object with ``join_vs_limit``, ``speedup_vs_one_donor`` and the load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
RESULTS_DIR = SCRIPTS / "results"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import HostSpec, NetSim, cleanup_stale, missing_requirements  # noqa: E402

log = logging.getLogger("bench_join")

RUN_ID = "state-donor"  # state_donor.py's run id
MODES = ("multi", "single", "donor_lost")


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run."""

    model: str  # model preset whose size the state has
    donors: int = 4  # donor machines
    up_mbit: float = 25.0  # every machine's upload, Mbit/s
    down_mbit: float = 100.0  # every machine's download (the newcomer's is the limit), Mbit/s
    kill_at: float = 0.3  # donor_lost: share of chunks received when one donor is killed
    quick: bool = False  # smaller model
    prefix: str = "do"  # netsim name prefix
    subnet: str = "10.216.16.0/24"  # private addresses of the emulated machines

    def __post_init__(self) -> None:
        if self.donors < 2 or not (0 < self.kill_at < 1) or self.up_mbit <= 0 or self.down_mbit <= 0:
            raise ValueError("need at least 2 donors, positive rates and 0 < kill_at < 1")


def numel_of(model: str) -> int:
    from barnraise.coordinator.manifest import model_config
    from barnraise.peer.training.model import build_model, count_params

    return count_params(build_model(model_config(model, 256), 0))


def newcomer(args) -> dict:
    """In the newcomer's namespace: one download, timed; returns what it measured."""
    import hivemind
    import torch

    from barnraise.coordinator.manifest import model_config
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.p2ploop import P2PLoop
    from barnraise.peer.sync import chunks
    from barnraise.peer.sync.donors import fetch_state
    from barnraise.peer.sync.state import load_flat
    from barnraise.peer.sync.statesync import download_state
    from barnraise.peer.training.model import build_model

    model = build_model(model_config(args.model, 256), 0)
    numel = sum(p.numel() for p in model.parameters())
    dht = hivemind.DHT(start=True, host_maddrs=[f"/ip4/{args.host}/tcp/0"], initial_peers=args.initial_peers)
    loop = P2PLoop(dht)
    total, kept = 2 * chunks.chunks_per_tensor(numel), []

    def on_chunk(donor: str, index: int) -> None:
        kept.append(donor)
        if args.kill_pid and len(kept) == int(args.kill_at * total):
            os.killpg(args.kill_pid, signal.SIGKILL)

    try:
        t0 = time.monotonic()
        if args.mode == "single":
            coro = download_state(loop.p2p, args.donors[0], RUN_ID, numel, 60.0, auth=OPEN_RUN)
            state, out = loop.call(coro, 900.0), {"served": {args.donors[0]: total}}
        else:
            coro = fetch_state(loop.p2p, args.donors, RUN_ID, numel, auth=OPEN_RUN, on_chunk=on_chunk)
            got = loop.call(coro, 900.0)
            state = got.state
            out = {k: getattr(got, k) for k in ("served", "dropped", "reassigned", "duplicated", "verified")}
        t1 = time.monotonic()
        with torch.no_grad():
            load_flat(model, state.params)
        t2 = time.monotonic()
    finally:
        loop.stop()
        dht.shutdown()
    return {
        **out,
        "transfer_s": t1 - t0,
        "adopt_s": t2 - t1,
        "join_s": t2 - t0,
        "params_hash": state.params_hash(),
    }


def start_donors(net: NetSim, cfg: BenchConfig, numel: int) -> list[tuple[subprocess.Popen, dict]]:
    """Every donor, started at once; (process, its hello line) each."""
    procs = []
    for i in range(cfg.donors):
        host = f"d{i + 1}"
        argv = [
            sys.executable,
            str(SCRIPTS / "state_donor.py"),
            "--numel",
            str(numel),
            "--host",
            net.ip(host),
        ]
        procs.append(net.popen(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    hellos: list[dict] = [{} for _ in procs]

    def read(i: int) -> None:
        line = procs[i].stdout.readline()
        hellos[i] = json.loads(line) if line.strip() else {}

    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(procs))]
    for t in readers:
        t.start()
    for t in readers:
        t.join(180.0)
    if not all(hellos):
        raise RuntimeError("a donor did not start within 180 s")
    return list(zip(procs, hellos, strict=True))


def run_newcomer(net: NetSim, cfg: BenchConfig, donors, mode: str) -> dict:
    """One download by a fresh newcomer process in its namespace."""
    ids = [h["peer_id"] for _, h in donors]
    peers = [m for _, h in donors for m in h["maddrs"]]
    argv = [sys.executable, str(Path(__file__).resolve()), "--role", "newcomer", "--mode", mode]
    argv += ["--model", cfg.model, "--host", net.ip("nw"), "--kill-at", str(cfg.kill_at)]
    argv += ["--donors", *ids, "--initial-peers", *peers]
    if mode == "donor_lost":
        argv += ["--kill-pid", str(donors[0][0].pid)]
    done = net.run("nw", argv, timeout_s=900.0)
    if done.returncode != 0:
        raise RuntimeError(f"newcomer ({mode}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(cfg: BenchConfig, numel: int) -> dict[str, dict]:
    hosts = [
        HostSpec(name=f"d{i + 1}", up_mbit=cfg.up_mbit, down_mbit=cfg.down_mbit) for i in range(cfg.donors)
    ]
    hosts.append(HostSpec(name="nw", up_mbit=cfg.up_mbit, down_mbit=cfg.down_mbit))
    results = {}
    with NetSim(hosts=hosts, subnet=cfg.subnet, prefix=cfg.prefix) as net:
        donors = start_donors(net, cfg, numel)
        for mode in MODES:  # donor_lost last: it kills a donor
            results[mode] = run_newcomer(net, cfg, donors, mode)
            log.info("%s: %.1f s", mode, results[mode]["join_s"])
        for proc, _ in donors:
            if proc.poll() is None:
                proc.stdin.close()
    return results


def summarize(cfg: BenchConfig, numel: int, runs: dict[str, dict], load: dict) -> dict:
    state_bytes = 8 * numel
    limit_s = state_bytes * 8 / (cfg.down_mbit * 1e6)
    multi, single, lost = runs["multi"], runs["single"], runs["donor_lost"]
    same = len({r["params_hash"] for r in runs.values()}) == 1
    return {
        "config": asdict(cfg),
        "machine": socket.gethostname(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "numel": numel,
        "state_bytes": state_bytes,
        "limit_s": round(limit_s, 2),
        "runs": runs,
        "join_s": round(multi["join_s"], 2),
        "join_s_one_donor": round(single["join_s"], 2),
        "join_s_donor_lost": round(lost["join_s"], 2),
        "join_vs_limit": round(multi["join_s"] / limit_s, 3),
        "one_donor_vs_limit": round(single["join_s"] / limit_s, 3),
        "donor_lost_vs_limit": round(lost["join_s"] / limit_s, 3),
        "speedup_vs_one_donor": round(single["join_s"] / multi["join_s"], 2),
        "donor_lost_completed": bool(lost.get("dropped")) and same,
        "same_state_every_run": same,
        **load,
    }


def table(s: dict) -> str:
    rows = [
        f"state {s['state_bytes'] / 1e6:.0f} MB ({s['numel']} params), limit {s['limit_s']:.1f} s "
        f"at {s['config']['down_mbit']:g} Mbit/s down; donors {s['config']['donors']} x {s['config']['up_mbit']:g} up",
        f"{'mode':<12}{'join s':>9}{'vs limit':>10}{'transfer s':>12}{'adopt s':>9}  served by",
    ]
    for mode, r in s["runs"].items():
        served = ", ".join(f"{d[:8]}:{n}" for d, n in sorted(r["served"].items()))
        rows.append(
            f"{mode:<12}{r['join_s']:>9.1f}{r['join_s'] / s['limit_s']:>10.2f}{r['transfer_s']:>12.1f}"
            f"{r['adopt_s']:>9.2f}  {served}"
        )
    rows.append(
        f"speedup vs one donor {s['speedup_vs_one_donor']:.2f}; load {s['loadavg_before']} -> {s['loadavg_after']}"
    )
    return "\n".join(rows)


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="gpt-small instead of gpt-medium")
    ap.add_argument("--model", default="", help="model preset (default gpt-medium; --quick: gpt-small)")
    ap.add_argument("--role", choices=("bench", "newcomer"), default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=MODES, default="multi", help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--donors", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--initial-peers", nargs="*", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--kill-pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--kill-at", type=float, default=0.3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.model = args.model or ("gpt-small" if args.quick else "gpt-medium")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "newcomer":
        print(json.dumps(newcomer(args)), flush=True)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    reason = missing_requirements()
    if reason:
        print(json.dumps({"join_vs_limit": None, "skipped": reason}))
        return 0
    cfg = BenchConfig(model=args.model, quick=args.quick)
    cleanup_stale(cfg.prefix)
    numel = numel_of(cfg.model)
    before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    runs = measure(cfg, numel)
    load = {
        "loadavg_before": before,
        "loadavg_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    summary = summarize(cfg, numel, runs, load)
    text = table(summary)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    stem = f"bench_join-{time.strftime('%Y%m%d-%H%M%S')}-{summary['machine']}{'-quick' if cfg.quick else ''}"
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS_DIR / f"{stem}.txt").write_text(text + "\n")
    keys = (
        "join_vs_limit",
        "speedup_vs_one_donor",
        "join_s",
        "limit_s",
        "join_s_one_donor",
        "join_s_donor_lost",
    )
    final = {k: summary[k] for k in keys}
    final.update(donor_lost_completed=summary["donor_lost_completed"], model=cfg.model, **load)
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
