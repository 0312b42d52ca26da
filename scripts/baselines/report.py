"""Result files: the machine they were measured on, a plain-text table, JSON and a loss plot.

Results are dated and name the machine (cores, CPU model, memory, kernel, load) because on a
shared 2-core box the same code gives different figures from one hour to the next; a reader
needs to know what was measured where before comparing two result files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from baselines.evaluator import CurvePoint

logger = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=Path(__file__).parent, check=False
        )
        return done.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def describe_machine() -> dict[str, Any]:
    """What the figures were measured on (read-only; git is only queried)."""
    import torch

    try:
        import hivemind

        hivemind_version = hivemind.__version__
    except ImportError:
        hivemind_version = "not installed"
    return {
        "cores": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": round(_mem_bytes() / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "hivemind": hivemind_version,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain")),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def stamp() -> str:
    return time.strftime("%Y-%m-%d-%H%M%S")


def write_results(
    stem: str, summary: Mapping[str, Any], table: str, results_dir: Path = RESULTS_DIR
) -> dict[str, Path]:
    """Write ``STEM.json`` (everything) and ``STEM.txt`` (the table); returns their paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": results_dir / f"{stem}.json", "txt": results_dir / f"{stem}.txt"}
    paths["json"].write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    paths["txt"].write_text(table + "\n", encoding="utf-8")
    return paths


def plot_curves(
    path: Path,
    curves: Mapping[str, Sequence[CurvePoint]],
    *,
    title: str,
    target: float | None = None,
    xlabel: str = "wall time since training started (s)",
) -> Path | None:
    """Held-out loss vs wall time, one line per system, the target as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in curves.items():
        if points:
            ax.plot([p.t_s for p in points], [p.loss for p in points], marker=".", label=label)
    if target is not None:
        ax.axhline(target, linestyle="--", color="grey", linewidth=1, label=f"target {target:.3f}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    """Format a figure for a table; None (not measured) prints as ``none``."""
    if value is None:
        return none
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)
