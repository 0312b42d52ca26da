"""Drive N all-reduce workers in netsim namespaces and count the bytes each one moves.

Each worker runs in its own namespace (``netsim_lib.NetSim``), so its traffic, and only its
traffic, crosses its veth pair. Bytes are read from the root-side end of each pair
(``/sys/class/net/<veth>/statistics``): what the veth receives is what the namespace sent, and the
other way round. They are interface counts, so they include TCP/IP headers, ACKs, libp2p
framing and encryption, and the protocol's own control messages (DHT records, joins, result
hashes): everything a peer's link carries for a round.

Rounds are started from here: every worker first builds its update (``prepare``), then all are
told the same start moment a little ahead (``go``). The counters are read just before ``go`` and
after the last worker has answered, and the traffic of an idle window of the same harness (DHT
upkeep with nobody averaging), measured once before the first round, is subtracted pro rata.
"""

from __future__ import annotations

import json
import logging
import queue
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netsim_lib import HostSpec, NetSim

log = logging.getLogger(__name__)

WORKER = Path(__file__).resolve().parent / "worker.py"


@dataclass(frozen=True, kw_only=True)
class Phase:
    """One system with one codec and update size; its rounds all average ``numel`` values."""

    name: str  # unique within a run; also keys DHT records, so no two phases share one
    system: str  # "ours" or "hivemind"
    codec: str
    numel: int  # parameters in the averaged update
    check: bool = True  # workers compare the average with the exact mean (costs time between rounds)


@dataclass(frozen=True, kw_only=True)
class SwarmConfig:
    """The emulated network and the pacing of rounds."""

    peers: int = 4  # workers, all in one group
    mbit: float | None = None  # link rate each way, Mbit/s; None: unshaped (CPU and protocol bound)
    rounds: int = 3  # rounds per phase
    idle_s: float = 5.0  # length of the idle window whose traffic is the baseline, seconds
    lead_s: float = 0.5  # from "go" to the shared start moment, seconds
    start_timeout_s: float = 300.0  # for a worker to start its DHT node (slow on a loaded machine)
    round_timeout_s: float = 240.0  # for every worker to answer one command
    subnet: str = "10.79.4.0/24"  # private /24 for the namespaces
    prefix: str = "bcq"  # netsim name prefix
    worker_args: tuple[str, ...] = ()  # passed to every worker (aggregator, topk fraction, ...)

    def __post_init__(self) -> None:
        if self.peers < 2 or self.rounds < 1 or self.idle_s <= 0 or self.lead_s < 0:
            raise ValueError("need at least 2 peers, 1 round, a positive idle window and lead >= 0")


@dataclass
class SwarmRun:
    """Everything measured: the idle rates and, per round, each host's bytes and each worker's answer."""

    idle: dict[str, dict[str, float]] = field(default_factory=dict)  # host -> sent/received bytes per second
    rounds: list[dict] = field(default_factory=list)
    setup_s: dict[str, float] = field(default_factory=dict)  # phase -> slowest worker's setup, seconds


class WorkerFailed(RuntimeError):
    """A worker exited, reported an error, or did not answer in time."""


class WorkerPipe:
    """A worker process: commands to its stdin, JSON answers from its stdout through a reader thread."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path):
        self.name, self.proc, self.log_path = name, proc, log_path
        self.answers: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"read-{name}").start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.answers.put(json.loads(line))
            except json.JSONDecodeError:
                log.debug("%s: %s", self.name, line.rstrip())
        self.answers.put(None)  # end of output: the worker exited

    def send(self, op: str, **fields) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerFailed(f"{self.name} is gone ({e}); see {self.log_path}") from e

    def expect(self, event: str, timeout_s: float, tolerate_error: bool = False) -> dict:
        try:
            answer = self.answers.get(timeout=timeout_s)
        except queue.Empty:
            raise WorkerFailed(
                f"{self.name}: no {event!r} within {timeout_s:.0f} s; see {self.log_path}"
            ) from None
        if answer is None:
            raise WorkerFailed(f"{self.name} exited ({self.proc.poll()}); see {self.log_path}")
        if tolerate_error and answer.get("event") == "error":
            return answer
        if answer.get("event") != event:
            raise WorkerFailed(f"{self.name}: expected {event!r}, got {answer}")
        return answer


def counters(net: NetSim, hosts: list[str]) -> dict[str, tuple[int, int]]:
    """(bytes sent, bytes received) by each host so far, from the root-side end of its veth."""
    out = {}
    for h in hosts:
        stats = Path("/sys/class/net") / net.netns(h) / "statistics"
        received_by_veth = int((stats / "rx_bytes").read_text())
        sent_by_veth = int((stats / "tx_bytes").read_text())
        out[h] = (received_by_veth, sent_by_veth)
    return out


def _all(workers: list[WorkerPipe], event: str, timeout_s: float) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    return [w.expect(event, max(1.0, deadline - time.monotonic())) for w in workers]


def _rounds(workers: list[WorkerPipe], timeout_s: float) -> list[dict]:
    """Every worker's round answer; one that failed its round (it still lives) counts as not ok."""
    deadline = time.monotonic() + timeout_s
    answers = []
    for i, w in enumerate(workers):
        a = w.expect("round", max(1.0, deadline - time.monotonic()), tolerate_error=True)
        if a["event"] == "error":
            times = dict.fromkeys(("late_s", "e2e_s", "matchmaking_s", "allreduce_s", "exchange_s"), 0.0)
            a = {"index": i, "ok": False, "members": 0, "reason": a["error"], "app_bytes_sent": 0,
                 "app_bytes_received": 0, **times}  # fmt: skip
        answers.append(a)
    return answers


def run_swarm(cfg: SwarmConfig, blocks: list[list[Phase]], work_dir: Path) -> SwarmRun:
    """Start the workers, measure the idle baseline, then run each block's phases round by round.

    The phases of a block are set up together and their rounds interleaved (round 0 of each, then
    round 1, ...), so two systems compared in one block see the same machine load. A block holds
    at most one phase of our protocol (its handlers have fixed names).
    """
    for block in blocks:
        if sum(p.system == "ours" for p in block) > 1:
            raise ValueError("a block holds at most one phase of our protocol")
    hosts = [f"p{i}" for i in range(cfg.peers)]
    env = {"PYTHONWARNINGS": "ignore::DeprecationWarning", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    result = SwarmRun()
    with NetSim(
        hosts=[HostSpec(name=h, mbit=cfg.mbit) for h in hosts], subnet=cfg.subnet, prefix=cfg.prefix
    ) as net:
        workers: list[WorkerPipe] = []

        def start(i: int, initial: list[str]) -> WorkerPipe:
            h = hosts[i]
            argv = [sys.executable, str(WORKER), "--index", str(i), "--peers", str(cfg.peers), "--host", net.ip(h),
                    "--work-dir", str(work_dir), *cfg.worker_args]  # fmt: skip
            if initial:
                argv += ["--initial-peers", *initial]
            log_path = work_dir / f"{h}.log"
            with open(log_path, "wb") as log_file:
                proc = net.popen(h, argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=log_file, text=True)  # fmt: skip
            return WorkerPipe(h, proc, log_path)

        try:
            workers.append(start(0, []))
            first = workers[0].expect("ready", cfg.start_timeout_s)
            initial = [m for m in first["maddrs"] if f"/{net.ip(hosts[0])}/" in m][:1] or first["maddrs"][:1]
            workers += [start(i, initial) for i in range(1, cfg.peers)]
            _all(workers[1:], "ready", cfg.start_timeout_s)
            log.info("%d workers up; idle baseline for %.0f s", cfg.peers, cfg.idle_s)
            result.idle = _idle_rates(net, hosts, cfg.idle_s)
            for block in blocks:
                _run_block(cfg, net, hosts, workers, block, result)
            for w in workers:
                w.send("quit")
            for w in workers:
                try:
                    w.proc.wait(timeout=30.0)
                except subprocess.TimeoutExpired:
                    log.warning("%s did not exit after quit; netsim teardown kills it", w.name)
        finally:
            for w in workers:
                if w.proc.stdin and not w.proc.stdin.closed:
                    try:
                        w.proc.stdin.close()
                    except OSError:
                        pass
    return result


def _idle_rates(net: NetSim, hosts: list[str], idle_s: float) -> dict[str, dict[str, float]]:
    time.sleep(1.0)  # let start-up traffic (DHT joins) settle
    c0, t0 = counters(net, hosts), time.monotonic()
    time.sleep(idle_s)
    c1, t1 = counters(net, hosts), time.monotonic()
    return {
        h: {"sent_Bps": (c1[h][0] - c0[h][0]) / (t1 - t0), "received_Bps": (c1[h][1] - c0[h][1]) / (t1 - t0)}
        for h in hosts
    }


def _run_block(cfg: SwarmConfig, net: NetSim, hosts: list[str], workers: list[WorkerPipe], block: list[Phase],
               result: SwarmRun) -> None:  # fmt: skip
    for p in block:
        t0 = time.monotonic()
        for w in workers:
            w.send("setup", phase=p.name, system=p.system, codec=p.codec, numel=p.numel, check=p.check)
        _all(workers, "setup", cfg.round_timeout_s)
        result.setup_s[p.name] = time.monotonic() - t0
        log.info("phase %s: %s %s, %d values", p.name, p.system, p.codec, p.numel)
    for r in range(cfg.rounds):
        for p in block:
            for w in workers:
                w.send("prepare", phase=p.name, round=r)
            _all(workers, "prepared", cfg.round_timeout_s)
            c0, t0 = counters(net, hosts), time.monotonic()
            start_at = time.time() + cfg.lead_s
            for w in workers:
                w.send("go", phase=p.name, round=r, start_at=start_at)
            answers = _rounds(workers, cfg.round_timeout_s)
            c1, t1 = counters(net, hosts), time.monotonic()
            result.rounds.append({
                "phase": p.name, "round": r, "window_s": t1 - t0,
                "hosts": {h: {"sent": c1[h][0] - c0[h][0], "received": c1[h][1] - c0[h][1]} for h in hosts},
                "workers": answers,
            })  # fmt: skip
            slowest = max(a["allreduce_s"] for a in answers)
            log.info(
                "phase %s round %d: ok=%s, all-reduce %.2f s",
                p.name,
                r,
                all(a["ok"] for a in answers),
                slowest,
            )
    for p in block:
        for w in workers:
            w.send("teardown", phase=p.name)
        _all(workers, "teardown", cfg.round_timeout_s)


def summarize(run: SwarmRun, phase: Phase, peers: int) -> dict:
    """One phase's figures over its complete rounds (every member ok, in one group of ``peers``).

    ``wire_bytes_per_peer`` is (sent + received) / 2 per peer per round from the interface
    counters, less the idle baseline; ``allreduce_s`` and ``e2e_s`` are medians over rounds of
    the slowest member's time.
    """
    rounds = [r for r in run.rounds if r["phase"] == phase.name]
    good = [r for r in rounds if all(a["ok"] and a["members"] == peers for a in r["workers"])]
    out: dict = {"rounds": len(rounds), "ok_rounds": len(good), "numel": phase.numel, "system": phase.system,
                 "codec": phase.codec}  # fmt: skip
    out["failures"] = sorted({a["reason"] for r in rounds for a in r["workers"] if a["reason"]})[:5]
    if not good:
        return out
    wire, sent, app = [], [], []
    for r in good:
        for h, b in r["hosts"].items():
            idle = run.idle.get(h, {"sent_Bps": 0.0, "received_Bps": 0.0})
            s = b["sent"] - idle["sent_Bps"] * r["window_s"]
            v = b["received"] - idle["received_Bps"] * r["window_s"]
            wire.append((s + v) / 2)
            sent.append(s)
        # what the protocol itself reports (RoundOutcome), for comparison with the interface counters
        app += [(a["app_bytes_sent"] + a["app_bytes_received"]) / 2 for a in r["workers"]]
    out |= {
        "allreduce_s": statistics.median(max(a["allreduce_s"] for a in r["workers"]) for r in good),
        "e2e_s": statistics.median(max(a["e2e_s"] for a in r["workers"]) for r in good),
        "exchange_s": statistics.median(max(a["exchange_s"] for a in r["workers"]) for r in good),
        "matchmaking_s": statistics.median(max(a["matchmaking_s"] for a in r["workers"]) for r in good),
        "allreduce_s_rounds": [round(max(a["allreduce_s"] for a in r["workers"]), 3) for r in good],
        "wire_bytes_per_peer": statistics.mean(wire),
        "wire_sent_per_peer": statistics.mean(sent),
        "app_bytes_per_peer": statistics.mean(app),
        "late_s": max(a["late_s"] for r in good for a in r["workers"]),
    }
    errs = [a["rel_err"] for r in good for a in r["workers"] if "rel_err" in a]
    if errs:
        out["rel_err_max"] = max(errs)
        out["members_agree"] = all(len({a["result_crc"] for a in r["workers"]}) == 1 for r in good)
    return out
