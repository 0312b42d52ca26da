"""``barnraise status --plot FILE.png``: loss and throughput per round, from the coordinator's history.

The per-round history is kept by the bootstrap node (``coordinator/bootstrap.py``) and served by its
coordinator gRPC service; the DHT alone holds only the present. So unlike the rest of ``status``
this needs a live bootstrap, and says so plainly when there is none. The history is checked like
any remote input (finite values, one entry per round) before it is drawn with matplotlib's Agg
backend, which needs no display.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from barnraise.coordinator.errors import ConfigError, PeerUnavailable

log = logging.getLogger(__name__)

FORMATS = (".png", ".svg", ".pdf")
MAX_ROUNDS = 10_000  # rounds asked for (the service keeps at most this many)


def check_output(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"--plot {path}: the file name must end in {', '.join(FORMATS)}")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: directory {path.parent} does not exist")


def fetch_history(report: dict, timeout_s: float) -> list:
    """The coordinator's RoundSummary list for the report's run; PeerUnavailable says why not."""
    from barnraise.peer.net.coordinator_client import CoordinatorClient

    coordinator = report.get("coordinator")
    run = report.get("run_id") or "this swarm"
    if not coordinator or not coordinator["grpc_addrs"]:
        raise PeerUnavailable(
            f"no coordinator (bootstrap node) is announced for {run}: --plot needs the round history "
            "it keeps; the rest of `barnraise status` works without one"
        )
    try:
        client = CoordinatorClient(coordinator["grpc_addrs"], connect_timeout_s=min(5.0, timeout_s))
    except PeerUnavailable as e:
        raise PeerUnavailable(f"round history unavailable: {e}") from e
    try:
        return client.history(MAX_ROUNDS)
    finally:
        client.close()


def clean_history(rounds) -> list[tuple[int, float, float, int]]:
    """(round, loss, samples/s, peers) sorted by round, one per round, finite values only."""
    by_round = {}
    for s in rounds:
        if math.isfinite(s.loss) and math.isfinite(s.samples_per_s) and s.loss >= 0 and s.samples_per_s >= 0:
            by_round[s.round] = (s.round, s.loss, s.samples_per_s, s.peers)
    return [by_round[r] for r in sorted(by_round)]


def draw(rows: list[tuple[int, float, float, int]], path: Path, title: str) -> None:
    """Loss (top) and swarm samples/s with live peers (bottom) per round, saved to ``path``."""
    from matplotlib.figure import Figure

    rounds = [r[0] for r in rows]
    fig = Figure(figsize=(8, 6), layout="constrained")
    loss_ax, speed_ax = fig.subplots(2, 1, sharex=True)
    losses = [(r, v) for r, v, _, _ in rows if v > 0]
    loss_ax.plot([r for r, _ in losses], [v for _, v in losses], marker=".", color="tab:blue")
    loss_ax.set_ylabel("mean loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.set_title(title)
    speed_ax.plot(rounds, [r[2] for r in rows], marker=".", color="tab:green", label="samples/s")
    speed_ax.set_ylabel("samples/s (swarm)")
    speed_ax.set_xlabel("round")
    speed_ax.grid(alpha=0.3)
    peers_ax = speed_ax.twinx()
    peers_ax.step(rounds, [r[3] for r in rows], where="mid", color="tab:gray", alpha=0.6, label="peers")
    peers_ax.set_ylabel("live peers")
    peers_ax.set_ylim(bottom=0)
    fig.savefig(path, dpi=100)


def plot_status(report: dict, path: Path, timeout_s: float) -> str:
    """Fetch the history, draw it to ``path``; returns the line to print."""
    check_output(path)
    rows = clean_history(fetch_history(report, timeout_s))
    if not rows:
        raise PeerUnavailable(
            "the coordinator has no round history yet (it records one entry per round once peers train)"
        )
    from barnraise.coordinator.health import sanitize

    draw(rows, path, f"run {sanitize(report['run_id'], 60)}")
    return f"plotted rounds {rows[0][0]}..{rows[-1][0]} ({len(rows)} rounds) to {path}"
