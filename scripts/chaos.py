#!/usr/bin/env python3
"""Chaos: 8 peers at 25 Mbit/s, one SIGKILLed every 15 s and replaced by a new one, vs a calm run.

``sudo .venv/bin/python scripts/chaos.py [--quick] [--duration S]`` (needs root; not run in CI).

Two runs of the same length from the same initial weights, each on a fresh emulated network
(``netsim_lib``) with every machine's CPU capped alike (``baselines.cpucap``):

- calm: 8 peers train undisturbed;
- churn: from ``--first-kill-s`` on, every ``--kill-every-s`` the longest-lived peer is SIGKILLed
  and a new peer (fresh identity, empty cache, its own namespace) is started in its place.

Peers are the real ``barnraise peer`` with the read-only probe (``baselines.probe``). Reported:
rounds that missed their deadline, whether every round's members ended with the same parameters,
and the held-out loss of the last agreed state of each run (target: churn within 3% of calm).
Results go to ``scripts/results/chaos-DATE.{json,txt,png}``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from baselines import agreement, corpus, cpucap, report  # noqa: E402
from baselines.evaluator import CurvePoint, Evaluator  # noqa: E402
from baselines.events import read_all  # noqa: E402
from baselines.probe import EVENTS_FILE as PROBE_EVENTS  # noqa: E402
from netsim_lib import (  # noqa: E402
    ChurnEvent,
    NetSim,
    Scenario,
    Swarm,
    SwarmConfig,
    cleanup_stale,
    missing_requirements,
)
from netsim_lib.swarm import EVENTS_FILE as PEER_EVENTS  # noqa: E402
from netsim_lib.swarm import default_barnraise_command, swarm_hosts  # noqa: E402

logger = logging.getLogger("chaos")

LOSS_TOLERANCE = 0.03  # the target: churn's final loss within 3% of calm's
FINAL_TAIL = 0.75  # the final loss is taken over the states of the last quarter of a run
FINAL_MIN_POINTS = 3  # ... and over at least this many of them


@dataclass(frozen=True, kw_only=True)
class ChaosConfig:
    """One chaos experiment (two runs)."""

    peers: int = 8  # peers alive at any time
    mbit: float = 25.0  # link rate each way per peer, Mbit/s
    duration_s: float = 600.0  # seconds each run lasts after the bootstrap is up
    kill_every_s: float = 15.0  # seconds between kills
    first_kill_s: float = 30.0  # seconds before the first kill (the swarm forms first)
    model: str = "gpt-micro"  # built-in model (0.8M params: fast state sync for newcomers)
    round_s: float = 10.0  # round length, seconds
    round_delay: int = 1  # averaging overlapped with the next round's compute
    codec: str = "int8"
    batch_size: int = 4  # sequences per inner step (~15 steps a round on a capped core)
    seed: int = 4321  # initial weights, the same in both runs
    outer_lr: float = 1.0  # plain averaging: barnraise's best settings on these budgets (bench_swarm.py)
    outer_momentum: float = 0.0
    cpus_per_peer: float | None = None  # cores per machine; None: 85% of the cores shared out
    status_interval_s: float = 20.0  # seconds between `barnraise status` polls (they cost CPU)
    subnet: str = "10.78.0.0/24"
    prefix: str = "brc"
    keep: bool = False  # keep logs, events and snapshots

    def __post_init__(self) -> None:
        if self.peers < 2 or self.duration_s <= 0 or self.kill_every_s <= 0 or self.first_kill_s < 0:
            raise ValueError("need >= 2 peers and positive duration and kill interval")

    @property
    def cpu_quota(self) -> float:
        return self.cpus_per_peer or min(1.0, 0.85 * (os.cpu_count() or 1) / self.peers)


def churn_events(cfg: ChaosConfig) -> tuple[ChurnEvent, ...]:
    """Kill the longest-lived peer every ``kill_every_s`` and start a new one at the same moment."""
    alive = [f"p{i}" for i in range(1, cfg.peers + 1)]
    events, n, t = [], cfg.peers, cfg.first_kill_s
    while t < cfg.duration_s:
        n += 1
        victim, newcomer = alive.pop(0), f"p{n}"
        alive.append(newcomer)
        events += [
            ChurnEvent(action="kill", target=victim, at_s=t),
            ChurnEvent(action="start", target=newcomer, at_s=t),
        ]
        t += cfg.kill_every_s
    return tuple(events)


class CappedSwarm(Swarm):
    """A netsim swarm whose every peer, replacements included, runs under its machine's CPU cap."""

    def __init__(self, config: SwarmConfig, net: NetSim, caps: cpucap.CpuCaps) -> None:
        super().__init__(config, net)
        self.caps = caps

    def start_peer(self, name: str):
        proc = super().start_peer(name)
        self.caps.assign(name, proc.pid)
        return proc


def run_once(cfg: ChaosConfig, label: str, pristine_run: Path, work_dir: Path, churn: bool) -> dict[str, Any]:
    out = work_dir / label
    run_dir = out / "run"
    shutil.copytree(pristine_run, run_dir)
    scenario = Scenario(
        peers=cfg.peers, mbit=cfg.mbit, duration_s=cfg.duration_s, events=churn_events(cfg) if churn else ()
    )
    config = SwarmConfig(
        run_dir=run_dir,
        log_dir=out / "logs",
        scenario=scenario,
        barnraise=(sys.executable, "-m", "baselines.probe", "--snapshots", str(out / "snapshots"), "--"),
        peer_args=("--threads", "1"),
        status_interval_s=cfg.status_interval_s,
    )
    logger.info(
        "%s run: %d peers, %d hosts, %.0f s", label, cfg.peers, len(scenario.all_peers()), cfg.duration_s
    )
    with (
        cpucap.CpuCaps(cpus=cfg.cpu_quota, tag=label) as caps,
        NetSim(hosts=swarm_hosts(scenario), subnet=cfg.subnet, prefix=cfg.prefix) as net,
    ):
        result = CappedSwarm(config, net, caps).run()
        end_unix = time.time()
    peers = scenario.all_peers()
    events = read_all([out / "logs" / "cache" / p / PROBE_EVENTS for p in peers])
    audits = agreement.audit(events, [out / "logs" / "cache" / p / PEER_EVENTS for p in peers])
    return {
        "label": label,
        "out": out,
        "events": events,
        "audits": audits,
        "end_unix": end_unix,
        "churn_events": [e.as_dict() for e in result.events],
        "kills": sum(1 for e in result.events if e.action == "kill" and e.ok),
        "starts": sum(1 for e in result.events if e.action == "start" and e.ok),
        "unplanned_exits": [e.as_dict() for e in result.events if e.action == "exited"],
    }


def evaluate(ev: Evaluator, run: dict[str, Any]) -> tuple[float | None, dict | None, list[CurvePoint]]:
    """(final loss, last agreed state, curve): the final loss is the median held-out loss of the
    states most peers held over the last quarter of the run, because one round's loss swings by
    more than the 3% being tested (small groups, few inner steps), and a median of the tail does not.
    """
    windows = [e["t0"] for e in run["events"] if e["kind"] == "window"]
    t_zero = min(windows) if windows else run["end_unix"]
    curve = ev.curve(agreement.majority_snapshots(run["events"]), t_zero)
    final = agreement.final_state(run["events"], before=run["end_unix"])
    if not curve:
        return None, final, curve
    tail = [p.loss for p in curve if p.t_s >= FINAL_TAIL * curve[-1].t_s]
    if len(tail) < FINAL_MIN_POINTS:
        tail = [p.loss for p in curve[-FINAL_MIN_POINTS:]]
    return statistics.median(tail), final, curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="150 s per run instead of 600 s")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 600)")
    p.add_argument("--peers", type=int, default=8)
    p.add_argument("--kill-every-s", type=float, default=15.0)
    p.add_argument("--first-kill-s", type=float, default=30.0)
    p.add_argument("--model", default="gpt-micro")
    p.add_argument("--cpus-per-peer", type=float, default=None)
    p.add_argument(
        "--outer-lr", type=float, default=1.0, help="outer learning rate (default 1: plain averaging)"
    )
    p.add_argument("--outer-momentum", type=float, default=0.0, help="outer Nesterov momentum (default 0)")
    p.add_argument("--codec", default="int8", help="update codec (sparse: the all-gather of sparse payloads)")
    p.add_argument("--subnet", default="10.78.0.0/24")
    p.add_argument(
        "--prefix", default="brc", help="netsim name prefix (1-4 letters) of this run's namespaces"
    )
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = ChaosConfig(
        peers=a.peers,
        duration_s=a.duration or (150.0 if a.quick else 600.0),
        kill_every_s=a.kill_every_s,
        first_kill_s=a.first_kill_s,
        model=a.model,
        cpus_per_peer=a.cpus_per_peer,
        outer_lr=a.outer_lr,
        outer_momentum=a.outer_momentum,
        codec=a.codec,
        subnet=a.subnet,
        prefix=a.prefix,
        keep=a.keep,
    )
    if reason := missing_requirements():
        print(f"chaos: {reason}", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    cleanup_stale(cfg.prefix)
    cpucap.remove_stale()
    machine = report.describe_machine()
    work_dir = Path(tempfile.mkdtemp(prefix="barnraise-chaos-"))
    try:
        spec = corpus.RunSpec(
            model=cfg.model,
            round_s=cfg.round_s,
            round_delay=cfg.round_delay,
            codec=cfg.codec,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            outer_lr=cfg.outer_lr,
            outer_momentum=cfg.outer_momentum,
        )
        pristine = corpus.prepare_run(work_dir, spec, default_barnraise_command())
        ev = Evaluator(pristine, work_dir / corpus.HELDOUT_FILE, threads=2)
        runs = {
            label: run_once(cfg, label, pristine, work_dir, churn)
            for label, churn in (("calm", False), ("churn", True))
        }
        scored = {label: evaluate(ev, run) for label, run in runs.items()}
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        if not cfg.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    calm_loss, churn_loss = scored["calm"][0], scored["churn"][0]
    gap = churn_loss / calm_loss - 1 if calm_loss and churn_loss else None
    summary: dict[str, Any] = {
        "final_loss_calm": calm_loss,
        "final_loss_churn": churn_loss,
        "loss_gap": gap,
        "within_3pct": gap is not None and gap <= LOSS_TOLERANCE,
        "final_state": {label: s[1] for label, s in scored.items()},
        "kills": runs["churn"]["kills"],
        "replacements": runs["churn"]["starts"],
    }
    for label, run in runs.items():
        summary[label] = agreement.summarise(run["audits"])
        summary[label]["unplanned_exits"] = run["unplanned_exits"]
        summary[label]["per_round"] = [a.as_dict() for a in run["audits"]]
    summary["config"] = asdict(cfg) | {"cpu_quota": cfg.cpu_quota}
    summary["machine"] = machine
    summary["curves"] = {k: [(round(p.t_s, 2), round(p.loss, 4)) for p in s[2]] for k, s in scored.items()}
    text = render(summary)
    stem = f"chaos-{report.stamp()}-{cfg.duration_s:.0f}s"
    report.plot_curves(
        report.RESULTS_DIR / f"{stem}.png",
        {k: s[2] for k, s in scored.items()},
        title=f"chaos: {cfg.peers} peers, one killed every {cfg.kill_every_s:g} s",
    )
    paths = report.write_results(stem, summary, text)
    print(text)
    keys = ("final_loss_calm", "final_loss_churn", "loss_gap", "within_3pct", "kills", "replacements")
    final = {k: summary[k] for k in keys}
    for label in ("calm", "churn"):
        final[label] = {
            k: summary[label][k] for k in ("rounds", "rounds_missed_deadline", "rounds_all_agreed")
        }
    final["result_file"] = str(paths["json"])
    print(json.dumps(final))
    return 0


def render(s: dict[str, Any]) -> str:
    f, m, c = report.fmt, s["machine"], s["config"]
    lines = [
        f"chaos on {m['cores']} cores {m['cpu_model']}, {m['ram_gib']} GiB, kernel {m['kernel']}, load "
        f"{m['loadavg_start']} -> {m['loadavg_end']}; commit {m['commit']}",
        f"{c['peers']} peers at {c['mbit']:g} Mbit/s, {c['model']}, rounds of {c['round_s']:g} s, "
        f"{c['duration_s']:g} s per run, CPU cap {c['cpu_quota']:.2f} cores/peer, outer step "
        f"{c.get('outer_lr', 0.7):g}/{c.get('outer_momentum', 0.9):g}; churn: one SIGKILL every "
        f"{c['kill_every_s']:g} s from t={c['first_kill_s']:g} s ({s['kills']} kills, {s['replacements']} new peers)",
        "",
        f"{'run':<6} {'rounds':>6} {'agreed':>6} {'missed deadline':>15} {'peer-rounds applied/missed':>27}  final loss*",
    ]
    for label in ("calm", "churn"):
        r = s[label]
        lines.append(
            f"{label:<6} {r['rounds']:>6} {r['rounds_all_agreed']:>6} {r['rounds_missed_deadline']:>15} "
            f"{r['peer_rounds_applied']:>13}/{r['peer_rounds_missed']:<13}  {f(s[f'final_loss_{label}'], '.4f')}"
        )
    lines += [
        "* median held-out loss of the majority states of the run's last quarter",
        "",
        f"loss gap churn vs calm: {f(s['loss_gap'], '+.2%')} (target within {LOSS_TOLERANCE:.0%}: "
        f"{'met' if s['within_3pct'] else 'not met'})",
        f"miss reasons: calm {s['calm']['miss_reasons']}, churn {s['churn']['miss_reasons']}",
        f"rounds that disagreed: calm {s['calm']['rounds_disagreed']}, churn {s['churn']['rounds_disagreed']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
