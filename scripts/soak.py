#!/usr/bin/env python3
"""Soak: 8 peers at 25 Mbit/s for 30 minutes under attack, churn and freezes; nothing may leak.

``sudo .venv/bin/python scripts/soak.py [--minutes M] [--quick] [--no-calm] [--keep]`` (needs
root: network namespaces; not run in CI). ``--quick`` runs 4 minutes.

The swarm (``netsim_lib``, every peer's CPU capped alike as in ``chaos.py``), peers named as the
scenario starts them:

- p1 is frozen (SIGSTOP) for 30 s every 5 minutes; p1, p2, p3 are honest and live the whole run;
- p4 is a lying reducer (``fault: lie``: it reduces its part wrongly, the same bytes to all);
- p5 rotates update attacks (``peer/attacks.py``), a few rounds each;
- p6, p7, p8 churn: every 60 s the oldest of them is SIGKILLed and a new peer replaces it.

Every ``--sample-s`` seconds it samples each process tree (the peer, its DHT process, p2pd): RSS,
open fds and threads; every 30 s ``barnraise status --json`` gives each peer's DHT records
stored. Afterwards it judges the issue's targets: the RSS of the long-lived processes grows at
most 10% from minute 10 (a third of the run with --minutes < 30) to the end; fds and threads stay
flat; the honest members of every applied round agree; the lying reducer is caught and no honest
peer is; and, with a calm run of the same length (8 honest peers, nothing happening), the final
held-out loss is within 3% of it. Results: ``scripts/results/soak-DATE[-quick].{json,txt,png}``;
the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

from baselines import corpus, cpucap, report  # noqa: E402
from baselines.evaluator import Evaluator  # noqa: E402
from baselines.events import read_all  # noqa: E402
from baselines.probe import EVENTS_FILE as PROBE_EVENTS  # noqa: E402
from chaos import CappedSwarm, evaluate  # noqa: E402
from netsim_lib import ChurnEvent, NetSim, Scenario, SwarmConfig, cleanup_stale, missing_requirements  # noqa: E402
from netsim_lib.swarm import STATUS_HOST, default_barnraise_command, swarm_hosts  # noqa: E402
from soak_samples import ProcessSampler, judge, peer_ids, plot  # noqa: E402

logger = logging.getLogger("soak")

FROZEN, LIAR, ROTATOR = "p1", "p4", "p5"
LONG_LIVED = ("boot", "p1", "p2", "p3", "p4", "p5")
CHURN_SLOTS = ("p6", "p7", "p8")
ROTATION = ("signflip", "noise", "alie", "weight", "stale", "lie_round", "lie_progress")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SoakConfig:
    """One soak experiment (and its calm twin)."""

    minutes: float = 30.0  # length of each run after the bootstrap is up
    mbit: float = 25.0  # link rate each way per peer, Mbit/s
    kill_every_s: float = 60.0  # seconds between kills of a churning peer (each replaced at once)
    freeze_every_s: float = 300.0  # seconds between freezes of p1
    freeze_s: float = 30.0  # how long each freeze lasts, seconds
    first_freeze_s: float = 90.0  # seconds before the first freeze
    sample_s: float = 10.0  # seconds between process samples
    status_s: float = 30.0  # seconds between `barnraise status` polls (DHT records)
    attack_rounds: int = 5  # rounds each of p5's attacks lasts before the next
    model: str = "gpt-micro"
    round_s: float = 10.0
    round_delay: int = 1
    codec: str = "int8"
    batch_size: int = 4
    seed: int = 4321
    calm: bool = True  # also run 8 honest peers, nothing happening, for the loss comparison
    cpus_per_peer: float | None = None  # None: 85% of the cores shared out
    subnet: str = "10.79.0.0/24"
    prefix: str = "vesk"  # namespace and veth names start with this
    keep: bool = False  # keep logs, events and snapshots

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def cpu_quota(self) -> float:
        return self.cpus_per_peer or min(1.0, 0.85 * (os.cpu_count() or 1) / 8)


def schedule(cfg: SoakConfig) -> tuple[ChurnEvent, ...]:
    """Kill the oldest churning peer every ``kill_every_s`` (a new one starts at once); freeze p1."""
    alive, n, events = list(CHURN_SLOTS), 8, []
    t = cfg.kill_every_s
    while t < cfg.duration_s:
        n += 1
        victim, newcomer = alive.pop(0), f"p{n}"
        alive.append(newcomer)
        events += [
            ChurnEvent(action="kill", target=victim, at_s=t),
            ChurnEvent(action="start", target=newcomer, at_s=t),
        ]
        t += cfg.kill_every_s
    t = cfg.first_freeze_s
    while t + cfg.freeze_s < cfg.duration_s:
        events.append(ChurnEvent(action="stop", target=FROZEN, at_s=t, for_s=cfg.freeze_s))
        t += cfg.freeze_every_s
    return tuple(sorted(events, key=lambda e: e.at_s or 0.0))


def attack_plans(cfg: SoakConfig, out: Path) -> dict[str, tuple[str, ...]]:
    """``--inject`` flags of the two hostile peers."""
    rounds = int(cfg.duration_s / cfg.round_s) + 50
    rotating = [
        {"kind": "attack", "mode": ROTATION[(r // cfg.attack_rounds) % len(ROTATION)], "from_round": r,
         "to_round": r + cfg.attack_rounds - 1}
        for r in range(0, rounds, cfg.attack_rounds)
    ]  # fmt: skip
    plans = {LIAR: [{"kind": "fault", "mode": "lie"}], ROTATOR: rotating}
    flags = {}
    for name, faults in plans.items():
        path = out / f"{name}-inject.json"
        path.write_text(json.dumps({"faults": faults}))
        flags[name] = ("--inject", str(path))
    return flags


class SoakSwarm(CappedSwarm):
    """A capped netsim swarm whose hostile peers get their fault plans."""

    def __init__(self, config, net, caps, extra: dict[str, tuple[str, ...]]) -> None:
        super().__init__(config, net, caps)
        self.extra = extra

    def start_peer(self, name: str):
        base = self.config
        self.config = dataclasses.replace(base, peer_args=base.peer_args + self.extra.get(name, ()))
        try:
            return super().start_peer(name)
        finally:
            self.config = base


def run_once(cfg: SoakConfig, label: str, pristine: Path, work: Path, hostile: bool) -> dict[str, Any]:
    out = work / label
    run_dir = out / "run"
    shutil.copytree(pristine, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenario = Scenario(
        peers=8, mbit=cfg.mbit, duration_s=cfg.duration_s, events=schedule(cfg) if hostile else ()
    )
    config = SwarmConfig(
        run_dir=run_dir,
        log_dir=out / "logs",
        scenario=scenario,
        barnraise=(sys.executable, "-m", "baselines.probe", "--snapshots", str(out / "snapshots"), "--"),
        peer_args=("--threads", "1"),
        status_interval_s=cfg.status_s,
    )
    extra = attack_plans(cfg, out) if hostile else {}
    logger.info("%s run: %d hosts, %.0f s", label, len(scenario.all_peers()), cfg.duration_s)
    with (
        cpucap.CpuCaps(cpus=cfg.cpu_quota, tag=f"soak{label}") as caps,
        NetSim(hosts=swarm_hosts(scenario), subnet=cfg.subnet, prefix=cfg.prefix) as net,
    ):
        swarm = SoakSwarm(config, net, caps, extra)
        sampler = ProcessSampler(swarm, net, STATUS_HOST, every_s=cfg.sample_s, status_every_s=cfg.status_s)
        stop = threading.Event()
        thread = threading.Thread(target=sampler.loop, args=(stop,), name="sampler", daemon=True)
        thread.start()
        try:
            result = swarm.run()
        finally:
            stop.set()
            thread.join(timeout=cfg.status_s + 60)
        end_unix = time.time()
    peers = scenario.all_peers()
    events_files = {p: out / "logs" / "cache" / p / "events.jsonl" for p in peers}
    run = {
        "events_files": events_files,
        "ids": peer_ids(events_files),
        "samples": sampler.samples,
        "dht": sampler.dht,
    }  # judged now: the events files go with the work directory
    window_s = min(600.0, cfg.duration_s / 3)
    return {
        "label": label,
        "verdict": judge(run, LONG_LIVED, LIAR, ROTATOR, window_from_s=window_s) if hostile else None,
        "events": read_all([out / "logs" / "cache" / p / PROBE_EVENTS for p in peers]),
        "events_files": events_files,
        "ids": peer_ids(events_files),
        "samples": sampler.samples,
        "dht": sampler.dht,
        "t0": sampler.t0,
        "end_unix": end_unix,
        "kills": sum(1 for e in result.events if e.action == "kill" and e.ok),
        "freezes": sum(1 for e in result.events if e.action == "stop" and e.ok),
        "unplanned_exits": [e.as_dict() for e in result.events if e.action == "exited"],
    }


def render(s: dict[str, Any]) -> str:
    f, m, c, v = report.fmt, s["machine"], s["config"], s["verdict"]
    lines = [
        f"soak on {m['cores']} cores {m['cpu_model']}, load {m['loadavg_start']} -> {m['loadavg_end']}; "
        f"commit {m['commit']}",
        f"8 peers at {c['mbit']:g} Mbit/s, {c['model']}, {c['minutes']:g} min, {s['kills']} kills, "
        f"{s['freezes']} freezes of {FROZEN}; {LIAR} lies as a reducer, {ROTATOR} rotates {', '.join(ROTATION)}",
        "",
        f"{'process':<8}{'RSS start MB':>13}{'RSS end MB':>11}{'growth':>8}{'fds':>10}{'threads':>10}",
    ]
    for name, r in v["long_lived"].items():
        lines.append(
            f"{name:<8}{f(r['rss_start_mb'], '.0f'):>13}{f(r['rss_end_mb'], '.0f'):>11}"
            f"{f(r['rss_growth'], '+.1%'):>8}{r['fds']:>10}{r['threads']:>10}"
        )
    lines += [
        f"(window: from minute {v['window_from_min']:.1f} to the end; fds/threads as start->end)",
        "",
        f"RSS growth <= 10%: {v['rss_ok']}; fds flat: {v['fds_ok']}; threads flat: {v['threads_ok']}",
        f"DHT records stored per peer, start -> end of window: {v['dht_records']}",
        f"rounds applied by honest peers: {v['rounds_checked']}, disagreeing: {v['rounds_disagreeing']}",
        f"lying reducer caught by: {v['liar_caught_by']}; honest peers accused: {v['honest_accused']}",
        f"final loss soak {f(s['final_loss_soak'], '.4f')}, calm {f(s['final_loss_calm'], '.4f')}, "
        f"gap {f(s['loss_gap'], '+.2%')} (target within 3%)",
    ]
    return "\n".join(lines)


def summarise(cfg: SoakConfig, runs: dict, losses: dict, machine: dict) -> dict[str, Any]:
    """The result file's content: verdicts, losses, curves, configuration, machine."""
    soak = runs["soak"]
    verdict = soak["verdict"]
    gap = losses["soak"] / losses["calm"] - 1 if losses.get("calm") and losses.get("soak") else None
    summary: dict[str, Any] = {
        "verdict": verdict,
        "final_loss_soak": losses.get("soak"),
        "final_loss_calm": losses.get("calm"),
        "loss_gap": gap,
        "loss_within_3pct": gap is not None and gap <= 0.03,
        "kills": soak["kills"],
        "freezes": soak["freezes"],
        "unplanned_exits": soak["unplanned_exits"],
        "curves": {"samples": soak["samples"], "dht": soak["dht"], "t0": soak["t0"]},
        "config": dataclasses.asdict(cfg),
        "machine": machine,
    }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None, help="minutes per run (default 30)")
    p.add_argument("--quick", action="store_true", help="4 minutes per run")
    p.add_argument("--no-calm", action="store_true", help="skip the calm run (no loss comparison)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between process samples")
    p.add_argument("--keep", action="store_true", help="keep logs, events and snapshots")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    minutes = a.minutes or (4.0 if a.quick else 30.0)
    if minutes <= 0 or a.sample_s <= 0:
        print("soak: --minutes and --sample-s must be positive", file=sys.stderr)
        return 2
    cfg = SoakConfig(minutes=minutes, calm=not a.no_calm, sample_s=a.sample_s, keep=a.keep)
    if reason := missing_requirements():
        print(f"soak: {reason}", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    cleanup_stale(cfg.prefix)
    cpucap.remove_stale()
    machine = report.describe_machine()
    work = Path(tempfile.mkdtemp(prefix="barnraise-soak-"))
    try:
        spec = corpus.RunSpec(
            model=cfg.model, round_s=cfg.round_s, round_delay=cfg.round_delay, codec=cfg.codec,
            batch_size=cfg.batch_size, seed=cfg.seed, outer_lr=1.0, outer_momentum=0.0,
        )  # fmt: skip
        pristine = corpus.prepare_run(work, spec, default_barnraise_command())
        ev = Evaluator(pristine, work / corpus.HELDOUT_FILE, threads=2)
        runs = {"soak": run_once(cfg, "soak", pristine, work, hostile=True)}
        if cfg.calm:
            runs["calm"] = run_once(cfg, "calm", pristine, work, hostile=False)
        losses = {label: evaluate(ev, run)[0] for label, run in runs.items()}
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
        return 130
    finally:
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarise(cfg, runs, losses, machine)
    soak, verdict = runs["soak"], summary["verdict"]
    stem = f"soak-{report.stamp()}{'-quick' if a.quick else ''}"
    png = plot(report.RESULTS_DIR / f"{stem}.png", soak, LONG_LIVED, title=f"soak: {minutes:g} min")
    summary["plot"] = str(png) if png else None
    text = render(summary)
    paths = report.write_results(stem, summary, text)
    print(text)
    keys = ("loss_gap", "loss_within_3pct", "kills", "freezes")
    final = {k: summary[k] for k in keys} | {k: verdict[k] for k in verdict if k.endswith("_ok")}
    final |= {"liar_caught_by": len(verdict["liar_caught_by"]), "honest_accused": verdict["honest_accused"]}
    print(json.dumps(final | {"result_file": str(paths["json"])}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
