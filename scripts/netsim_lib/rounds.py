"""Track the swarm's training round in the background and report what happened per round.

The round comes from a caller-supplied probe (for barnraise: ``barnraise status --json``),
so this module knows nothing about the swarm. Probing runs on its own thread because a status
call can take seconds, and time-keyed churn events must not wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RoundSample:
    """One observation of the swarm."""

    t_s: float  # seconds since the run started
    round: int  # training round the swarm reported
    peers: tuple[str, ...] = ()  # peers the swarm reported as members, if the probe knows


class RoundWatcher:
    """Polls a probe every ``interval_s`` on a daemon thread and keeps every distinct sample."""

    def __init__(
        self, probe: Callable[[], int | RoundSample | None], *, interval_s: float, t0: float
    ) -> None:
        self._probe = probe
        self._interval_s = interval_s  # seconds between probe calls
        self._t0 = t0  # time.monotonic() at run start; samples are relative to it
        self._samples: list[RoundSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-watcher", daemon=True)

    def start(self) -> None:
        """Begin probing."""
        self._thread.start()

    def stop(self) -> None:
        """Stop probing; waits for an in-flight probe at most one interval."""
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 1.0)

    def poll_once(self) -> RoundSample | None:
        """Probe now (also used by the loop); failures are logged and count as no answer."""
        try:
            raw = self._probe()
        except Exception:
            logger.warning("round probe failed", exc_info=True)
            return None
        if raw is None:
            return None
        now = time.monotonic() - self._t0
        sample = raw if isinstance(raw, RoundSample) else RoundSample(t_s=now, round=int(raw))
        sample = RoundSample(t_s=now, round=sample.round, peers=sample.peers)
        with self._lock:
            last = self._samples[-1] if self._samples else None
            if last is None or (last.round, last.peers) != (sample.round, sample.peers):
                self._samples.append(sample)
                logger.info("t=%.1fs round %d, %d peers", now, sample.round, len(sample.peers))
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self._interval_s)

    @property
    def latest_round(self) -> int | None:
        """Most recent round seen, or None before the first answer."""
        with self._lock:
            return self._samples[-1].round if self._samples else None

    @property
    def samples(self) -> list[RoundSample]:
        """Every change observed, oldest first."""
        with self._lock:
            return list(self._samples)


@dataclass(frozen=True, kw_only=True)
class RoundReport:
    """What happened during one round, as seen from outside the swarm."""

    round: int | None  # None: before the swarm reported any round
    first_seen_s: float  # seconds since start when this round was first observed
    last_seen_s: float  # seconds since start when the next round was first observed (or run end)
    peers: tuple[str, ...]  # members at the last observation within the round
    events: tuple[str, ...] = field(default=())  # churn events that fired during the round

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the report file."""
        return {
            "round": self.round,
            "first_seen_s": round(self.first_seen_s, 2),
            "last_seen_s": round(self.last_seen_s, 2),
            "duration_s": round(self.last_seen_s - self.first_seen_s, 2),
            "peers": list(self.peers),
            "events": list(self.events),
        }


def per_round(
    samples: Sequence[RoundSample], events: Sequence[tuple[float, str]], end_s: float
) -> list[RoundReport]:
    """Group samples into rounds and attach each event (``(t_s, text)``) to its round."""
    spans: list[tuple[int | None, float, tuple[str, ...]]] = []
    for s in samples:
        if spans and spans[-1][0] == s.round:
            spans[-1] = (s.round, spans[-1][1], s.peers)
        else:
            spans.append((s.round, s.t_s, s.peers))
    if not spans or (events and events[0][0] < spans[0][1]):
        spans.insert(0, (None, 0.0, ()))
    reports = []
    for i, (rnd, start, peers) in enumerate(spans):
        stop = spans[i + 1][1] if i + 1 < len(spans) else end_s
        inside = tuple(text for t, text in events if start <= t < stop or (i + 1 == len(spans) and t >= stop))
        reports.append(
            RoundReport(round=rnd, first_seen_s=start, last_seen_s=stop, peers=peers, events=inside)
        )
    return reports


@dataclass(frozen=True, kw_only=True)
class RoundLine:
    """A peer's report about a round: one of its events, worded as its log line says it
    (e.g. "round 8: averaged with 2 peer(s) in 1.20 s, params ...")."""

    t_s: float  # seconds since the run started
    host: str  # host name of the peer that logged it
    round: int  # round number in the line
    text: str  # the rest of the line after "round N:"


def per_round_from_logs(
    lines: Sequence[RoundLine], events: Sequence[tuple[float, str]], end_s: float
) -> list[RoundReport]:
    """Rounds as peers logged them: round r runs from the first "round r-1" line to the first
    "round r" line; events in that window belong to r. Finer than status polls, which on a busy
    machine may see only every third round."""
    first: dict[int, float] = {}
    done_by: dict[int, list[str]] = {}
    for line in sorted(lines, key=lambda ln: ln.t_s):
        first.setdefault(line.round, line.t_s)
        hosts = done_by.setdefault(line.round, [])
        if line.host not in hosts:
            hosts.append(line.host)
    reports = []
    start = 0.0
    for rnd in sorted(first):
        stop = first[rnd]
        inside = tuple(text for t, text in events if start <= t < stop)
        reports.append(
            RoundReport(
                round=rnd, first_seen_s=start, last_seen_s=stop, peers=tuple(done_by[rnd]), events=inside
            )
        )
        start = max(start, stop)
    tail = tuple(text for t, text in events if t >= start)
    if tail or not reports:
        reports.append(
            RoundReport(round=None, first_seen_s=start, last_seen_s=max(end_s, start), peers=(), events=tail)
        )
    return reports


def format_rounds(reports: Sequence[RoundReport], *, show_peers: bool = False) -> str:
    """A plain-text table, one line per round, for the terminal."""
    lines = [f"{'round':>6} {'from_s':>8} {'to_s':>8} {'len_s':>7} {'peers':>5}  events"]
    for r in reports:
        label = "-" if r.round is None else str(r.round)
        who = f" [{' '.join(r.peers)}]" if show_peers and r.peers else ""
        lines.append(
            f"{label:>6} {r.first_seen_s:8.1f} {r.last_seen_s:8.1f} "
            f"{r.last_seen_s - r.first_seen_s:7.1f} {len(r.peers):5d}  " + ("; ".join(r.events) or "-") + who
        )
    return "\n".join(lines)
