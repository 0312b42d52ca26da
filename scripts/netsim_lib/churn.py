"""Execute a churn schedule against processes that the caller knows how to start.

The runner does not know what a peer is: the caller hands it ``start_peer(name)``,
``start_bootstrap()`` and optionally ``current_round()``, and the runner kills, freezes, thaws
and (re)starts what those return, on time or on round, logging every event with a timestamp.
This keeps churn testable against ``sleep`` processes and reusable by any benchmark script.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .rounds import RoundReport, RoundSample, RoundWatcher, per_round
from .scenario import BOOTSTRAP, ChurnEvent

logger = logging.getLogger(__name__)

Proc = subprocess.Popen[Any]


@dataclass(frozen=True, kw_only=True)
class EventRecord:
    """What the runner did (or saw) at one moment."""

    t_s: float  # seconds since the runner started
    unix_s: float  # wall-clock time in seconds since the epoch, to line up with peer logs
    round: int | None  # latest round the swarm had reported at that moment
    action: str  # scheduled action, "exited" for an unplanned exit, or "skipped"
    target: str  # host name
    ok: bool  # False when the action could not be carried out (e.g. target not running)
    detail: str  # pid, exit code or error text
    scheduled: str  # the event as written in the scenario ("" for observations)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the report file."""
        return asdict(self)

    def text(self) -> str:
        """Short form for per-round summaries."""
        mark = "" if self.ok else " FAILED"
        return f"+{self.t_s:.1f}s {self.action} {self.target}{mark}: {self.detail}"


def signal_group(proc: Proc, sig: int) -> None:
    """Signal the process's whole group (its children too), or just it if it leads none."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(sig)


class ChurnRunner:
    """Fires ChurnEvents at the right time or round and keeps an event log.

    Events and the start callbacks run on the thread that calls ``run``, one at a time, so a
    slow start (a bootstrap that needs seconds to print its address) delays the events after
    it; each record carries the time it actually happened. ``current_round`` runs on a
    separate thread and may be slow.
    """

    def __init__(
        self,
        events: Sequence[ChurnEvent],
        *,
        start_peer: Callable[[str], Proc],
        start_bootstrap: Callable[[], Proc],
        current_round: Callable[[], int | RoundSample | None] | None = None,
        processes: MutableMapping[str, Proc] | None = None,
        send_signal: Callable[[Proc, int], object] = signal_group,
        bootstrap_name: str = BOOTSTRAP,
        tick_s: float = 0.05,
        round_poll_s: float = 2.0,
        reap_timeout_s: float = 5.0,
        term_grace_s: float = 15.0,
        set_inbound: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._pending = list(events)
        self._start_peer = start_peer
        self._start_bootstrap = start_bootstrap
        self._current_round = current_round
        # Live handles by host name; shared with the caller so both see restarts.
        self.processes: MutableMapping[str, Proc] = processes if processes is not None else {}
        self._send_signal = send_signal
        self._set_inbound = set_inbound  # (host, allowed): its router lets new connections in or not
        self._bootstrap_name = bootstrap_name
        self._tick_s = tick_s  # seconds between schedule checks
        self._round_poll_s = round_poll_s  # seconds between current_round() calls
        self._reap_timeout_s = reap_timeout_s  # seconds to wait for a SIGKILLed process to exit
        self._term_grace_s = term_grace_s  # seconds a SIGTERMed process may take before SIGKILL
        self._escalations: list[tuple[float, str, Proc]] = []  # (deadline t_s, host, process)
        self._log: list[EventRecord] = []
        self._seen_exits: set[int] = set()
        self._t0 = time.monotonic()
        self._end_s = 0.0
        self._watcher: RoundWatcher | None = None

    @property
    def t0(self) -> float:
        """``time.monotonic()`` when ``run`` started; every ``t_s`` is relative to it."""
        return self._t0

    @property
    def end_s(self) -> float:
        """Seconds from start to the end of the schedule (0 before ``run`` returns)."""
        return self._end_s

    @property
    def log(self) -> list[EventRecord]:
        """Every event so far, oldest first."""
        return list(self._log)

    @property
    def samples(self) -> list[RoundSample]:
        """Round observations, oldest first (empty without ``current_round``)."""
        return self._watcher.samples if self._watcher is not None else []

    def report(self) -> list[RoundReport]:
        """Per-round view of the run: how long each round took, who was in, what happened."""
        events = [(r.t_s, r.text()) for r in self._log]
        return per_round(self.samples, events, self._end_s)

    def run(self, duration_s: float, *, stop: threading.Event | None = None) -> list[EventRecord]:
        """Run the schedule for ``duration_s`` seconds (or until ``stop`` is set); return the log."""
        self._t0 = time.monotonic()
        if self._current_round is not None:
            self._watcher = RoundWatcher(self._current_round, interval_s=self._round_poll_s, t0=self._t0)
            self._watcher.start()
        try:
            while (now := self._now()) < duration_s and not (stop is not None and stop.is_set()):
                self._note_unplanned_exits()
                self._escalate_overdue_terms(now)
                for event in self._due(now):
                    self._pending.remove(event)
                    self._execute(event)
                time.sleep(self._tick_s)
        finally:
            self._end_s = self._now()
            if self._watcher is not None:
                self._watcher.stop()
            for event in self._pending:
                self._record(
                    event.action,
                    event.target,
                    ok=False,
                    detail="not reached",
                    event=event,
                    action_label="skipped",
                )
            self._pending.clear()
        return self.log

    # ----- internals -------------------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _round(self) -> int | None:
        return self._watcher.latest_round if self._watcher is not None else None

    def _due(self, now: float) -> list[ChurnEvent]:
        rnd = self._round()
        due = [
            e
            for e in self._pending
            if (e.at_s is not None and now >= e.at_s)
            or (e.at_round is not None and rnd is not None and rnd >= e.at_round)
        ]
        return sorted(due, key=lambda e: e.at_s if e.at_s is not None else now)

    def _record(
        self,
        action: str,
        target: str,
        *,
        ok: bool,
        detail: str,
        event: ChurnEvent | None = None,
        action_label: str | None = None,
    ) -> None:
        rec = EventRecord(
            t_s=self._now(),
            unix_s=time.time(),
            round=self._round(),
            action=action_label or action,
            target=target,
            ok=ok,
            detail=detail,
            scheduled=event.describe() if event is not None else "",
        )
        self._log.append(rec)
        log = logger.info if ok and rec.action != "exited" else logger.warning
        log("t=%.1fs round=%s %s %s: %s", rec.t_s, rec.round, rec.action, target, detail)

    def _running(self, target: str) -> Proc | None:
        proc = self.processes.get(target)
        return proc if proc is not None and proc.poll() is None else None

    def _note_unplanned_exits(self) -> None:
        """Log processes that died without the schedule killing them: those are findings too."""
        for name, proc in list(self.processes.items()):
            if proc.poll() is not None and proc.pid not in self._seen_exits:
                self._seen_exits.add(proc.pid)
                self._record("exited", name, ok=True, detail=f"pid {proc.pid} exited with {proc.returncode}")

    def _execute(self, event: ChurnEvent) -> None:
        action, target = event.action, event.target
        try:
            if action in ("kill", "term"):
                ok = self._stop_process(event, graceful=action == "term")
            elif action in ("stop", "cont"):
                ok = self._signal(event, signal.SIGSTOP if action == "stop" else signal.SIGCONT)
            elif action == "start":
                ok = self._start(event)
            elif action in ("block_inbound", "allow_inbound"):
                ok = self._inbound(event, allowed=action == "allow_inbound")
            else:  # restart
                if self._running(target) is not None:
                    self._stop_process(event, graceful=False)
                ok = self._start(event)
        except Exception as exc:  # one failed event must not end the run: it is reported instead
            logger.exception("event %s failed", event.describe())
            self._record(action, target, ok=False, detail=f"{type(exc).__name__}: {exc}", event=event)
            return
        if ok and event.for_s is not None:
            undo = "cont" if action == "stop" else "start"
            self._pending.append(ChurnEvent(action=undo, target=target, at_s=self._now() + event.for_s))

    def _inbound(self, event: ChurnEvent, *, allowed: bool) -> bool:
        if self._set_inbound is None:
            self._record(event.action, event.target, ok=False, detail="no network to change", event=event)
            return False
        self._set_inbound(event.target, allowed)
        self._record(event.action, event.target, ok=True, detail="router changed", event=event)
        return True

    def _signal(self, event: ChurnEvent, sig: int) -> bool:
        proc = self._running(event.target)
        if proc is None:
            self._record(event.action, event.target, ok=False, detail="not running", event=event)
            return False
        self._send_signal(proc, sig)
        self._record(event.action, event.target, ok=True, detail=f"pid {proc.pid}", event=event)
        return True

    def _escalate_overdue_terms(self, now: float) -> None:
        """SIGKILL processes that ignored SIGTERM for ``term_grace_s``; the kill is logged."""
        for item in list(self._escalations):
            deadline, host, proc = item
            if proc.poll() is not None:
                self._escalations.remove(item)
            elif now >= deadline:
                self._escalations.remove(item)
                self._seen_exits.add(proc.pid)
                self._send_signal(proc, signal.SIGKILL)
                self._record(
                    "kill",
                    host,
                    ok=True,
                    detail=f"pid {proc.pid} still up {self._term_grace_s:g}s after SIGTERM",
                )

    def _stop_process(self, event: ChurnEvent, *, graceful: bool) -> bool:
        proc = self._running(event.target)
        label = "term" if graceful else "kill"
        if proc is None:
            self._record(label, event.target, ok=False, detail="not running", event=event)
            return False
        if graceful:
            # Do not wait here: a graceful leave may take a round, and the schedule must go on.
            # The exit is logged as "exited" when it happens; SIGKILL follows after the grace.
            self._send_signal(proc, signal.SIGTERM)
            self._send_signal(proc, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self._escalations.append((self._now() + self._term_grace_s, event.target, proc))
            self._record(label, event.target, ok=True, detail=f"SIGTERM to pid {proc.pid}", event=event)
            return True
        self._seen_exits.add(proc.pid)
        self._send_signal(proc, signal.SIGKILL)
        try:
            rc: int | None = proc.wait(timeout=self._reap_timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        self._record(label, event.target, ok=rc is not None, detail=f"pid {proc.pid} exit {rc}", event=event)
        return rc is not None

    def _start(self, event: ChurnEvent) -> bool:
        target = event.target
        if self._running(target) is not None:
            self._record("start", target, ok=False, detail="already running", event=event)
            return False
        proc = self._start_bootstrap() if target == self._bootstrap_name else self._start_peer(target)
        self.processes[target] = proc
        self._record("start", target, ok=True, detail=f"pid {proc.pid}", event=event)
        return True
