"""Run a real swarm on 127.0.0.1 for a while and read what each peer did, round by round.

Benchmarks that measure the daemon itself (utilisation, throughput under heterogeneity) use real
`barnraise bootstrap` and `barnraise peer` processes; this module starts them (with faults injected
by ``--inject`` where asked), waits, stops them and reads the per-round events each peer wrote.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from barnraise.peer.cli.launch import Swarm, barnraise_argv
from barnraise.peer.events import RoundApplied, WindowTrained, read_events


@dataclass
class PeerRecord:
    name: str
    windows: list[dict] = field(default_factory=list)  # round, loss, samples_per_s, compute_s, wall_s
    applied: dict[int, str] = field(default_factory=dict)  # round -> params hash

    def steady(self, skip: int = 2) -> list[dict]:
        """Windows after start-up (the first ``skip`` rounds are partial)."""
        return self.windows[skip:]

    def utilisation(self, skip: int = 2) -> float:
        w = self.steady(skip)
        return sum(x["compute_s"] for x in w) / max(1e-9, sum(x["wall_s"] for x in w)) if w else 0.0

    def samples_per_s(self, skip: int = 2) -> float:
        """Throughput over wall time (not only compute time): what the peer contributes."""
        w = self.steady(skip)
        return (
            sum(x["samples_per_s"] * x["compute_s"] for x in w) / max(1e-9, sum(x["wall_s"] for x in w))
            if w
            else 0.0
        )


def read_record(name: str, events_path: Path) -> PeerRecord:
    rec = PeerRecord(name=name)
    for w in read_events(events_path, WindowTrained):
        rec.windows.append(
            {
                "round": w.round,
                "loss": w.loss,
                "samples_per_s": w.samples_per_s,
                "compute_s": w.compute_s,
                "wall_s": w.wall_s,
            }
        )
    rec.applied = {a.round: a.params_hash for a in read_events(events_path, RoundApplied)}
    return rec


def run_local_swarm(
    init_args: list[str],
    peers: dict[str, list[str]],
    duration_s: float,
    workdir: Path | None = None,
    inject: dict[str, list[dict]] | None = None,
) -> dict[str, PeerRecord]:
    """Init a run, start a bootstrap and the named peers (with their extra flags and, for those
    named in ``inject``, the faults listed there: peer/injection.py), run, stop, read their events."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="barnraise-swarm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        barnraise_argv("init", str(workdir / "run"), *init_args), check=True, capture_output=True, timeout=120
    )
    swarm = Swarm(workdir=workdir)
    try:
        swarm.start_bootstrap(workdir / "run")
        children = {}
        for name, extra in peers.items():
            if name in (inject or {}):
                plan = workdir / f"{name}.inject.json"
                plan.write_text(json.dumps({"faults": inject[name]}))
                extra = [*extra, "--inject", str(plan)]
            children[name] = swarm.start_peer(name, extra)
        time.sleep(duration_s)
    finally:
        swarm.close()
    return {name: read_record(name, c.events_path) for name, c in children.items()}
