"""Run a real swarm on 127.0.0.1 for a while and read what each peer did, round by round.

Benchmarks that measure the daemon itself (utilisation, throughput under heterogeneity) use real
`barnraise bootstrap` and `barnraise peer` processes; this module starts them, waits, stops them
and parses the per-round lines each peer logs.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from barnraise.peer.cli.launch import Swarm, barnraise_argv

WINDOW = re.compile(r"round (\d+): loss ([0-9.na]+), ([0-9.]+) samples/s, compute ([0-9.]+) s of ([0-9.]+) s")
APPLIED = re.compile(r"round (\d+): averaged with (\d+) peer\(s\) in ([0-9.]+) s, params (\w+)")


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


def parse_log(name: str, text: str) -> PeerRecord:
    rec = PeerRecord(name=name)
    for r, loss, sps, compute, wall in WINDOW.findall(text):
        rec.windows.append(
            {
                "round": int(r),
                "loss": float(loss),
                "samples_per_s": float(sps),
                "compute_s": float(compute),
                "wall_s": float(wall),
            }
        )
    for r, _, _, h in APPLIED.findall(text):
        rec.applied[int(r)] = h
    return rec


def run_local_swarm(
    init_args: list[str], peers: dict[str, list[str]], duration_s: float, workdir: Path | None = None
) -> dict[str, PeerRecord]:
    """Init a run, start a bootstrap and the named peers (with their extra flags), run, stop, parse."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="barnraise-swarm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        barnraise_argv("init", str(workdir / "run"), *init_args), check=True, capture_output=True, timeout=120
    )
    swarm = Swarm(workdir=workdir)
    try:
        swarm.start_bootstrap(workdir / "run")
        children = {name: swarm.start_peer(name, extra) for name, extra in peers.items()}
        time.sleep(duration_s)
    finally:
        swarm.close()
    return {name: parse_log(name, c.log_path.read_text()) for name, c in children.items()}
