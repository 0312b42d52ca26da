"""Run a barnraise swarm inside a NetSim and report, per round, what churn did to it.

Layout: ``boot`` (bootstrap, unshaped), ``p1..pN`` (peers, shaped per the scenario), ``stat``
(where ``barnraise status`` is polled from, unshaped so polling does not steal peer bandwidth).
The swarm code is reached through its CLI (the command used to run it is configurable); what each
peer did per round is read afterwards from the events file it writes (``--events``, read with
``barnraise.peer.events.read_events``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .churn import ChurnRunner, EventRecord
from .errors import NetSimError, SwarmError
from .rounds import RoundLine, RoundReport, RoundSample, per_round_from_logs
from .scenario import BOOTSTRAP, Scenario
from .topology import HostSpec, NetSim

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
STATUS_HOST = "stat"
EVENTS_FILE = "events.jsonl"  # in each peer's cache dir (LOG_DIR/cache/NAME), kept across restarts
_INITIAL_PEERS_RE = re.compile(r"--initial-peers[= ]+['\"]?(/ip4/[^\s'\",]+)")


def default_barnraise_command() -> tuple[str, ...]:
    """How to run the CLI: $BARNRAISE_CMD, the repo venv's entry point, PATH, or ``-m``."""
    if env := os.environ.get("BARNRAISE_CMD"):
        return tuple(shlex.split(env))
    venv_bin = REPO_ROOT / ".venv" / "bin"
    if (venv_bin / "barnraise").exists():
        return (str(venv_bin / "barnraise"),)
    if found := shutil.which("barnraise"):
        return (found,)
    python = venv_bin / "python"
    return (str(python) if python.exists() else sys.executable, "-m", "barnraise.peer.cli.main")


def parse_initial_peers(line: str) -> str | None:
    """The multiaddr after ``--initial-peers`` in a line the bootstrap printed, if any."""
    match = _INITIAL_PEERS_RE.search(line)
    return match.group(1) if match else None


def parse_status(stdout: str) -> RoundSample | None:
    """Read ``barnraise status --json`` output: ``{"round": N, "peers": [...]}``."""
    text = stdout.strip()
    candidates = [text] + [ln for ln in reversed(text.splitlines()) if ln.lstrip().startswith("{")]
    for chunk in candidates:
        try:
            data = json.loads(chunk)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("round"), int):
            peers = tuple(_peer_label(p) for p in data.get("peers") or [])
            return RoundSample(t_s=0.0, round=data["round"], peers=peers)
    return None


def _peer_label(peer: Any) -> str:
    if isinstance(peer, dict):
        for key in ("name", "peer_id", "id"):
            if key in peer:
                return str(peer[key])
        return json.dumps(peer, sort_keys=True)
    return str(peer)


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    """Everything ``netsim swarm`` needs besides the network itself."""

    run_dir: Path  # passed to `barnraise bootstrap --run`
    log_dir: Path  # per-process logs, peer cache dirs and netsim-report.json go here
    scenario: Scenario  # swarm size, link rates, duration and churn schedule
    barnraise: tuple[str, ...] = field(default_factory=default_barnraise_command)  # CLI argv prefix
    boot_port: int = 31337  # bootstrap libp2p TCP port
    grpc_port: int = 31338  # bootstrap gRPC TCP port
    ready_timeout_s: float = 120.0  # seconds to wait for the bootstrap's initial-peers line
    status_timeout_s: float = 60.0  # seconds one `barnraise status` call may take
    status_interval_s: float = 5.0  # seconds between status polls
    bootstrap_args: tuple[str, ...] = ()  # extra arguments for `barnraise bootstrap`
    peer_args: tuple[str, ...] = ()  # extra arguments for every `barnraise peer`
    status_args: tuple[str, ...] = ()  # extra arguments for `barnraise status`

    def __post_init__(self) -> None:
        if not self.barnraise:
            raise ValueError("barnraise command must not be empty")
        if self.ready_timeout_s <= 0 or self.status_timeout_s <= 0 or self.status_interval_s <= 0:
            raise ValueError("timeouts and intervals must be > 0 seconds")


def swarm_hosts(scenario: Scenario) -> list[HostSpec]:
    """Hosts for a scenario: unshaped boot and stat, every peer it may ever start, shaped."""
    hosts = [HostSpec(name=BOOTSTRAP, mbit=None)]
    for name in scenario.all_peers():
        up, down = scenario.rate(name)
        hosts.append(HostSpec(name=name, mbit=None, up_mbit=up, down_mbit=down, nat=name in scenario.nat))
    hosts.append(HostSpec(name=STATUS_HOST, mbit=None))
    return hosts


@dataclass(frozen=True, kw_only=True)
class SwarmResult:
    """Outcome of one ``netsim swarm`` run."""

    initial_peers: str  # bootstrap multiaddr at the end of the run
    events: list[EventRecord]  # everything the churn runner did or saw
    rounds: list[RoundReport]  # per round, from peers' round events (windows, applied, missed)
    status_rounds: list[RoundReport]  # per round as `barnraise status` saw it (coarser)
    report_path: Path  # JSON file with all of the above


class Swarm:
    """Starts bootstrap and peers in their namespaces and polls the swarm's round."""

    def __init__(self, config: SwarmConfig, net: NetSim) -> None:
        self.config = config
        self.net = net
        self.initial_peers: str | None = None
        self.processes: dict[str, subprocess.Popen[Any]] = {}
        config.log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(
        self, name: str, argv: Sequence[str], on_line: Callable[[str], None] | None = None
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``name`` with output appended to ``LOG_DIR/name.log`` line by line.

        A reader thread copies the output so each line can also be inspected as it arrives.
        """
        log = open(self.config.log_dir / f"{name}.log", "a", encoding="utf-8")
        log.write(
            f"=== netsim: starting {name} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(argv)}\n"
        )
        log.flush()
        try:
            proc = self.net.popen(
                name, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
            )
        except BaseException:
            log.close()
            raise

        def tee() -> None:
            assert proc.stdout is not None
            with log:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        on_line(line)

        threading.Thread(target=tee, name=f"log-{name}", daemon=True).start()
        return proc

    def events_path(self, name: str) -> Path:
        return self.config.log_dir / "cache" / name / EVENTS_FILE

    def round_lines(self, t0_unix: float) -> list[RoundLine]:
        """What each peer reported about a round since ``t0_unix``, as its log line says it
        ("round N: <text>"), timed in seconds since ``t0_unix``."""
        from barnraise.peer.events import RoundApplied, RoundMissed, WindowTrained, read_events

        lines = []
        for name in self.config.scenario.all_peers():
            for e in read_events(self.events_path(name)):
                if isinstance(e, WindowTrained | RoundApplied | RoundMissed) and e.t >= t0_unix:
                    text = str(e).split(": ", 1)[1]
                    lines.append(RoundLine(t_s=e.t - t0_unix, host=name, round=e.round, text=text))
        return sorted(lines, key=lambda ln: ln.t_s)

    def start_bootstrap(self) -> subprocess.Popen[Any]:
        """Start the bootstrap and block until it prints its ``--initial-peers`` multiaddr."""
        cfg, ip = self.config, self.net.ip(BOOTSTRAP)
        argv = [
            *cfg.barnraise,
            "bootstrap",
            "--run",
            str(cfg.run_dir),
            "--listen",
            f"/ip4/{ip}/tcp/{cfg.boot_port}",
            "--grpc",
            f"{ip}:{cfg.grpc_port}",
            *cfg.bootstrap_args,
        ]
        found = threading.Event()
        addr: list[str] = []

        def on_line(line: str) -> None:
            if not found.is_set() and (maddr := parse_initial_peers(line)):
                addr.append(maddr)
                found.set()

        proc = self._spawn(BOOTSTRAP, argv, on_line)
        deadline = time.monotonic() + cfg.ready_timeout_s
        while not found.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise SwarmError(
                    f"bootstrap {why} before printing '--initial-peers /ip4/...'; "
                    f"see {cfg.log_dir / 'boot.log'}"
                )
        self.initial_peers = addr[0]
        logger.info("bootstrap up: --initial-peers %s", self.initial_peers)
        return proc

    def start_peer(self, name: str) -> subprocess.Popen[Any]:
        """Start ``barnraise peer`` on host ``name``, keeping its cache dir across restarts."""
        if self.initial_peers is None:
            raise SwarmError("start the bootstrap before peers")
        cfg = self.config
        cache = cfg.log_dir / "cache" / name
        cache.mkdir(parents=True, exist_ok=True)
        argv = [
            *cfg.barnraise,
            "peer",
            "--initial-peers",
            self.initial_peers,
            "--cache-dir",
            str(cache),
            "--listen",
            f"/ip4/{self.net.ip(name)}/tcp/0",
            "--events",
            str(self.events_path(name)),
            *cfg.peer_args,
        ]
        return self._spawn(name, argv)

    def set_inbound(self, name: str, allowed: bool) -> None:
        """Let new connections reach ``name`` or drop them at its router (churn actions)."""
        if allowed:
            self.net.allow_inbound(name)
        else:
            self.net.block_inbound(name)

    def probe(self) -> RoundSample | None:
        """Ask the swarm for its round from the status namespace; None when it does not answer."""
        if self.initial_peers is None:
            return None
        cfg = self.config
        argv = [*cfg.barnraise, "status", "--initial-peers", self.initial_peers, "--json", *cfg.status_args]
        try:
            done = self.net.run(STATUS_HOST, argv, timeout_s=cfg.status_timeout_s, cwd=REPO_ROOT)
        except subprocess.TimeoutExpired:
            logger.warning("barnraise status timed out after %.0fs", cfg.status_timeout_s)
            return None
        except NetSimError:  # the network is being torn down under a last in-flight poll
            return None
        if done.returncode != 0 and self.net.closed:
            return None
        if done.returncode != 0:
            logger.warning("barnraise status exited %d: %s", done.returncode, done.stderr.strip()[-300:])
            return None
        return parse_status(done.stdout)

    def run(self, duration_s: float | None = None) -> SwarmResult:
        """Bring the swarm up, play the scenario for its duration, write and return the report."""
        scenario = self.config.scenario
        self.processes[BOOTSTRAP] = self.start_bootstrap()
        for name in scenario.initial_peers():
            self.processes[name] = self.start_peer(name)
        runner = ChurnRunner(
            scenario.events,
            start_peer=self.start_peer,
            start_bootstrap=self.start_bootstrap,
            current_round=self.probe,
            processes=self.processes,
            round_poll_s=self.config.status_interval_s,
            set_inbound=self.set_inbound,
        )
        events = runner.run(duration_s if duration_s is not None else scenario.duration_s)
        lines = self.round_lines(time.time() - (time.monotonic() - runner.t0))
        rounds = per_round_from_logs(lines, [(e.t_s, e.text()) for e in events], runner.end_s)
        status_rounds = runner.report()
        report_path = self.config.log_dir / "netsim-report.json"
        report = {
            "initial_peers": self.initial_peers,
            "hosts": {
                name: {
                    "ip": h.ip,
                    "public_ip": h.public_ip,
                    "nat": h.spec.nat,
                    "up_mbit": h.spec.upload_mbit,
                    "down_mbit": h.spec.download_mbit,
                }
                for name, h in self.net.hosts.items()
            },
            "events": [e.as_dict() for e in events],
            "rounds": [r.as_dict() for r in rounds],
            "status_rounds": [r.as_dict() for r in status_rounds],
            "round_lines": [
                {"t_s": round(ln.t_s, 2), "host": ln.host, "round": ln.round, "text": ln.text} for ln in lines
            ],
        }
        report_path.write_text(json.dumps(report, indent=2), encoding="utf-8")
        assert self.initial_peers is not None
        return SwarmResult(
            initial_peers=self.initial_peers,
            events=events,
            rounds=rounds,
            status_rounds=status_rounds,
            report_path=report_path,
        )


def run_swarm(
    config: SwarmConfig, *, subnet: str, prefix: str, duration_s: float | None = None
) -> SwarmResult:
    """Build the network for ``config.scenario``, run the swarm in it, always tear down."""
    with NetSim(hosts=swarm_hosts(config.scenario), subnet=subnet, prefix=prefix) as net:
        return Swarm(config, net).run(duration_s)


def hosts_summary(hosts: Sequence[HostSpec]) -> str:
    """One line per host with its rates, printed before a run so the setup is on record."""

    def fmt(rate: float | None) -> str:
        return "unlimited" if rate is None else f"{rate:g} Mbit/s"

    return "\n".join(
        f"  {h.name:<6} up {fmt(h.upload_mbit):>14}  down {fmt(h.download_mbit):>14}"
        + ("  behind NAT" if h.nat else "")
        for h in hosts
    )
