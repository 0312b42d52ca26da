"""``barnraise demo``: a real local swarm (bootstrap + N peers as separate processes) training the
smallest built-in model on the built-in corpus for about two minutes, with live progress.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run a local swarm on the built-in corpus for about two minutes")
    p.add_argument("--peers", type=int, default=2, help="number of peer processes (default 2)")
    p.add_argument("--duration", type=float, default=100.0, help="seconds of training (default 100)")
    p.add_argument("--round-s", type=float, default=8.0, help="round length in seconds")
    p.add_argument("--model", default="gpt-nano")
    p.add_argument("--keep", action="store_true", help="keep the run directory and logs")
    p.set_defaults(handler=cmd_demo)


def cmd_demo(args) -> int:
    from barnraise.coordinator.errors import ConfigError
    from barnraise.coordinator.shutdown import stop_on_signals
    from barnraise.peer.cli.launch import Swarm
    from barnraise.peer.cli.status_view import render_text

    if not 1 <= args.peers <= 16:
        raise ConfigError(f"--peers {args.peers}: choose between 1 and 16")
    workdir = Path(tempfile.mkdtemp(prefix="barnraise-demo-"))
    swarm = Swarm(workdir=workdir)
    stop_on_signals(lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(f"demo: run directory {workdir}", flush=True)
    try:
        start_swarm(swarm, workdir / "run", args)
        first_loss, report = watch(swarm, args.duration)
        if report is not None:
            sys.stdout.write(render_text(report))
            final = report["totals"]["mean_loss"]
            if first_loss is not None and final is not None:
                print(
                    f"demo: loss {first_loss:.3f} -> {final:.3f} (a byte-level model starts near ln 256 = 5.55)"
                )
        return 0
    except KeyboardInterrupt:
        print("demo: interrupted; stopping the swarm", file=sys.stderr)
        return 130
    finally:
        swarm.close()
        if args.keep:
            print(f"demo: logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def start_swarm(swarm, run_dir: Path, args) -> None:
    """Create the run in ``run_dir``, then start its bootstrap and ``args.peers`` peers, sharing the
    machine's cores between them."""
    from barnraise.coordinator.manifest import TrainingDefaults
    from barnraise.coordinator.operator.runinit import init_run

    manifest = init_run(run_dir, model=args.model, training=TrainingDefaults(round_s=args.round_s))
    print(
        f"demo: run {manifest.run_id}: {len(manifest.shards)} shards of Python source, model {args.model}",
        flush=True,
    )
    swarm.start_bootstrap(run_dir)
    print(f"demo: bootstrap up at {swarm.initial_peers}", flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.peers)
    for i in range(args.peers):
        swarm.start_peer(f"peer{i + 1}", ["--threads", str(threads)])
    print(f"demo: started {args.peers} peers; training for {args.duration:.0f} s", flush=True)


def watch(swarm, duration_s: float) -> tuple[float | None, dict | None]:
    """Print the swarm's progress every 10 s for ``duration_s``; returns (first mean loss seen, last
    report). ConfigError if a child exits meanwhile."""
    from barnraise.coordinator.errors import ConfigError
    from barnraise.peer.cli.commands import collect_report

    first_loss = report = None
    start = time.monotonic()
    while time.monotonic() - start < duration_s:
        time.sleep(min(10.0, max(0.0, duration_s - (time.monotonic() - start))))
        for c in swarm.children:
            if c.proc.poll() is not None:
                raise ConfigError(f"{c.name} exited with code {c.proc.returncode}; see {c.log_path}")
        try:
            report = collect_report([swarm.initial_peers], timeout_s=10.0)
        except Exception as e:  # status is best effort while the swarm warms up
            log.debug("status failed: %s", e)
            continue
        if first_loss is None:
            first_loss = report["totals"]["mean_loss"]
        print(progress_line(report, time.monotonic() - start), flush=True)
    return first_loss, report


def progress_line(report: dict, elapsed_s: float) -> str:
    t = report["totals"]
    hashes = {p["params_hash"] for p in report["peers"] if p["alive"]}
    loss = f"{t['mean_loss']:.3f}" if t["mean_loss"] is not None else "-"
    return (
        f"demo: {elapsed_s:5.0f} s  round {report['round']:3d}  peers {t['peers_alive']}  "
        f"loss {loss}  samples/s {t['samples_per_s']:.0f}  distinct params {len(hashes)}"
    )
