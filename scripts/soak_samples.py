"""What ``soak.py`` measures and judges: process samples, DHT records, agreement, the lying reducer.

``ProcessSampler.loop`` samples every host's process tree (the peer, its DHT process, p2pd: found
through /proc parent links) for RSS, open fds and threads, and polls ``barnraise status --json``
for each peer's DHT records stored. ``judge`` turns a run into the issue's verdicts; ``plot``
draws the curves (matplotlib, Agg; no plot without it).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RSS_GROWTH_MAX = 0.10  # the target between minute 10 and the end
FLAT_SLACK = (4, 0.10)  # fds and threads "flat": end - start <= max(4, 10% of start)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _proc(pid: int) -> tuple[float, int, int] | None:
    """(RSS MB, fds, threads) of one process; None if it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status") if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])
    return rss_kb / 1024.0, fds, int(fields.get("Threads", "0").strip())


class ProcessSampler:
    """Samples every host's process tree and the peers' DHT records while a swarm runs."""

    def __init__(self, swarm, net, status_host: str, *, every_s: float, status_every_s: float) -> None:
        self.swarm, self.net, self.status_host = swarm, net, status_host
        self.every_s, self.status_every_s = every_s, status_every_s
        self.samples: list[dict[str, Any]] = []  # t_s, host, rss_mb, fds, threads, procs
        self.dht: list[dict[str, Any]] = []  # t_s, peer_id, records
        self.t0 = time.time()

    def loop(self, stop) -> None:
        last_status = 0.0
        while not stop.wait(self.every_s):
            try:
                self.sample()
                if time.time() - last_status >= self.status_every_s:
                    last_status = time.time()
                    self.poll_status()
            except Exception as e:  # a sample lost is no reason to stop the soak
                logger.warning("sample failed: %s", e)

    def sample(self) -> None:
        kids, t = _children(), time.time() - self.t0
        for host, proc in list(self.swarm.processes.items()):
            if proc.poll() is not None:
                continue
            rows = [r for r in (_proc(p) for p in _tree(proc.pid, kids)) if r is not None]
            if rows:
                self.samples.append(
                    {
                        "t_s": round(t, 1),
                        "host": host,
                        "rss_mb": round(sum(r[0] for r in rows), 1),
                        "fds": sum(r[1] for r in rows),
                        "threads": sum(r[2] for r in rows),
                        "procs": len(rows),
                    }
                )

    def poll_status(self) -> None:
        if self.swarm.initial_peers is None:
            return
        argv = [*self.swarm.config.barnraise, "status", "--initial-peers", self.swarm.initial_peers, "--json"]
        done = self.net.run(self.status_host, argv, timeout_s=60)
        if done.returncode != 0:
            return
        text = done.stdout.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = json.loads(text.splitlines()[-1])
        t = round(time.time() - self.t0, 1)
        for p in data.get("peers", []):
            self.dht.append({"t_s": t, "peer_id": p["peer_id"], "records": p.get("dht_records", 0)})


def peer_ids(events_files: dict[str, Path]) -> dict[str, str]:
    """host -> peer id, from each peer's first ``joined`` event."""
    from barnraise.peer.events import Joined, read_events

    out = {}
    for host, path in events_files.items():
        joined = read_events(path, Joined) if path.exists() else []
        if joined:
            out[host] = joined[0].peer_id
    return out


def _window(rows: list[dict], key: str, start_s: float) -> tuple[float | None, float | None]:
    """Median of ``key`` over the first and the last three samples from ``start_s`` on."""
    seen = [r[key] for r in rows if r["t_s"] >= start_s]
    if len(seen) < 2:
        return None, None
    return statistics.median(seen[:3]), statistics.median(seen[-3:])


def _flat(start: float | None, end: float | None) -> bool:
    return start is None or end is None or end - start <= max(FLAT_SLACK[0], FLAT_SLACK[1] * start)


def agreement(run: dict[str, Any], honest: set[str]) -> tuple[int, list[int]]:
    """(rounds checked, rounds in which honest members of one applied group hold different params)."""
    from barnraise.peer.events import ExchangeDone, RoundApplied, read_events

    by_group: dict[tuple[int, tuple[str, ...]], set[str]] = {}
    for host, path in run["events_files"].items():
        if host not in honest or not path.exists():
            continue
        ok = {e.round: tuple(sorted(e.members)) for e in read_events(path, ExchangeDone) if e.ok}
        for e in read_events(path, RoundApplied):
            if e.round in ok:
                by_group.setdefault((e.round, ok[e.round]), set()).add(e.params_hash)
    return len(by_group), sorted({r for (r, _), hashes in by_group.items() if len(hashes) > 1})


def judge(
    run: dict[str, Any], long_lived, liar: str, rotator: str, *, window_from_s: float
) -> dict[str, Any]:
    """The soak's verdicts on one run."""
    from barnraise.peer.events import ExchangeDone, read_events

    ids = run["ids"]
    rows: dict[str, dict[str, Any]] = {}
    for host in long_lived:
        mine = [s for s in run["samples"] if s["host"] == host]
        rss0, rss1 = _window(mine, "rss_mb", window_from_s)
        fd0, fd1 = _window(mine, "fds", window_from_s)
        th0, th1 = _window(mine, "threads", window_from_s)
        rows[host] = {
            "rss_start_mb": rss0,
            "rss_end_mb": rss1,
            "rss_growth": rss1 / rss0 - 1 if rss0 and rss1 else None,
            "fds": f"{fd0}->{fd1}",
            "threads": f"{th0}->{th1}",
            "fds_flat": _flat(fd0, fd1),
            "threads_flat": _flat(th0, th1),
        }
    honest_hosts = {h for h in run["events_files"] if h not in (liar, rotator)}
    caught: dict[str, set[str]] = {}
    for host in honest_hosts:
        path = run["events_files"][host]
        for e in read_events(path, ExchangeDone) if path.exists() else []:
            for reducer in e.caught:
                caught.setdefault(reducer, set()).add(host)
    honest_ids = {ids[h] for h in honest_hosts if h in ids}
    checked, disagreeing = agreement(run, honest_hosts)
    dht = {}
    for host in long_lived:
        mine = [
            {"t_s": d["t_s"], "records": d["records"]} for d in run["dht"] if d["peer_id"] == ids.get(host)
        ]
        dht[host] = "{}->{}".format(*_window(mine, "records", window_from_s))
    return {
        "window_from_min": window_from_s / 60,
        "long_lived": rows,
        "rss_ok": all(
            r["rss_growth"] is not None and r["rss_growth"] <= RSS_GROWTH_MAX for r in rows.values()
        ),
        "fds_ok": all(r["fds_flat"] for r in rows.values()),
        "threads_ok": all(r["threads_flat"] for r in rows.values()),
        "dht_records": dht,
        "rounds_checked": checked,
        "rounds_disagreeing": disagreeing,
        "agreement_ok": not disagreeing,
        "liar_caught_by": sorted(caught.get(ids.get(liar, "?"), set())),
        "liar_caught_ok": bool(caught.get(ids.get(liar, "?"))),
        "honest_accused": sorted(p[:12] for p in caught if p in honest_ids),
        "no_honest_accused_ok": not any(p in honest_ids for p in caught),
    }


def plot(path: Path, run: dict[str, Any], hosts, *, title: str) -> Path | None:
    """RSS, fds, threads and DHT records over time, one line per long-lived host."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plot")
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, key, label in zip(
        axes.flat[:3], ("rss_mb", "fds", "threads"), ("RSS (MB)", "open fds", "threads"), strict=True
    ):
        for host in hosts:
            mine = [s for s in run["samples"] if s["host"] == host]
            ax.plot([s["t_s"] / 60 for s in mine], [s[key] for s in mine], label=host)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    for host in hosts:
        mine = [d for d in run["dht"] if d["peer_id"] == run["ids"].get(host)]
        ax.plot([d["t_s"] / 60 for d in mine], [d["records"] for d in mine], label=host)
    ax.set_ylabel("DHT records stored")
    ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
