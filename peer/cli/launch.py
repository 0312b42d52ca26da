"""Start barnraise components as child processes and always reap them (demo, tests, benchmarks).

Each child runs in its own session so that its whole process tree (the DHT process, p2pd) can be
signalled as one group; ``Swarm.close`` asks politely (SIGTERM), then insists (SIGKILL).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from barnraise.coordinator.errors import PeerUnavailable

MADDR_LINE = re.compile(r"--initial-peers (\S+)")


def barnraise_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "barnraise.peer.cli.main", *args]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path | None = None
    events_path: Path | None = None  # a peer's events (peer/events.py: read_events)


@dataclass
class Swarm:
    """Bootstrap and peers as real OS processes on this machine."""

    workdir: Path
    children: list[Child] = field(default_factory=list)
    initial_peers: str = ""

    def spawn(self, name: str, args: list[str], *, capture: bool = False, env: dict | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        out = subprocess.PIPE if capture else open(log_path, "ab")
        proc = subprocess.Popen(
            barnraise_argv(*args),
            stdout=out,
            stderr=subprocess.STDOUT if capture else out,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            text=capture,
        )
        child = Child(name=name, proc=proc, log_path=None if capture else log_path)
        self.children.append(child)
        return child

    def start_bootstrap(
        self, run_dir: Path, timeout_s: float = 60.0, extra: list[str] | None = None
    ) -> Child:
        child = self.spawn(
            "bootstrap",
            [
                "bootstrap",
                "--run",
                str(run_dir),
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--grpc",
                "127.0.0.1:0",
                *(extra or []),
            ],
            capture=True,
        )
        deadline = time.monotonic() + timeout_s
        lines = []
        os.set_blocking(child.proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            line = child.proc.stdout.readline()
            if line:
                lines.append(line)
                if m := MADDR_LINE.search(line):
                    self.initial_peers = m.group(1)
                    self._drain(child, lines)
                    return child
            elif child.proc.poll() is not None:
                break
            else:
                time.sleep(0.1)
        raise PeerUnavailable("bootstrap did not start: " + "".join(lines[-5:]).strip())

    def _drain(self, child: Child, seen: list[str]) -> None:
        """Keep copying a captured child's output to its log file, so its pipe never fills up."""
        child.log_path = self.workdir / f"{child.name}.log"
        log_file = open(child.log_path, "a")
        log_file.writelines(seen)
        log_file.flush()
        os.set_blocking(child.proc.stdout.fileno(), True)

        def copy() -> None:
            with log_file:
                for line in child.proc.stdout:
                    log_file.write(line)
                    log_file.flush()

        threading.Thread(target=copy, daemon=True, name=f"drain-{child.name}").start()

    def start_peer(self, name: str, extra: list[str] | None = None, env: dict | None = None) -> Child:
        """A peer named ``name`` that writes its events to WORKDIR/NAME.events.jsonl (appended to
        when a peer of that name is started again)."""
        events = self.workdir / f"{name}.events.jsonl"
        child = self.spawn(
            name,
            [
                "peer",
                "--initial-peers",
                self.initial_peers,
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--cache-dir",
                str(self.workdir / name),
                "--events",
                str(events),
                *(extra or []),
            ],
            env=env,
        )
        child.events_path = events
        return child

    def signal(self, child: Child, sig: int) -> None:
        try:
            os.killpg(child.proc.pid, sig)
        except ProcessLookupError:
            pass

    def close(self, grace_s: float = 10.0) -> None:
        for c in self.children:
            if c.proc.poll() is None:
                self.signal(c, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in self.children:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for c in self.children:  # whatever is left of each group, the DHT process and p2pd included
            self.signal(c, signal.SIGKILL)
            try:
                c.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
