"""Each benchmarked system started for real inside its own ``netsim_lib.NetSim``, results collected.

One function per system; each builds a fresh network (peers on shaped links, the bootstrap and the
status host unshaped), caps every machine's CPU, starts real processes, waits with a deadline for
every step, and always tears everything down (``NetSim`` and ``CpuCaps`` are context managers).
What comes back is raw: event files, link byte counters over the measured span, exit codes; the
figures are computed by ``metrics`` afterwards.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from netsim_lib import HostSpec, NetSim, NetSimError, Scenario, Swarm, SwarmConfig
from netsim_lib.swarm import swarm_hosts

from baselines import cpucap
from baselines.events import read_all
from baselines.probe import EVENTS_FILE as PROBE_EVENTS
from baselines.workload import EVENTS_FILE

logger = logging.getLogger(__name__)

_POLL_S = 0.5


@dataclass(frozen=True, kw_only=True)
class BenchEnv:
    """Where and how every system runs; shared by all of them so they differ only in method."""

    run_dir: Path  # pristine run directory from `barnraise init` (never written to)
    work_dir: Path  # one subdirectory per system goes here
    python: str  # interpreter for workers and the instrumented barnraise CLI
    subnet: str  # private /24 for the namespaces
    prefix: str  # netsim name prefix (1-4 letters), for cleanup of crashed runs
    cpus_per_peer: float | None  # CPU quota per emulated machine in cores; None: no caps
    threads: int = 1  # torch threads per peer/worker
    snapshot_every_s: float = 8.0  # seconds between baseline snapshots
    startup_timeout_s: float = 180.0  # seconds for a system to start training
    grace_s: float = 120.0  # seconds past the budget before a system is killed
    down_mbit: float | None = None  # download rate of shaped links in Mbit/s; None: the upload rate
    peer_args: tuple[str, ...] = ()  # extra arguments for every `barnraise peer` (e.g. its bandwidth)

    def host(self, name: str, mbit: float | None) -> HostSpec:
        """A machine whose upload is ``mbit`` (None: unlimited) and download ``down_mbit`` when set."""
        if mbit is None or self.down_mbit is None:
            return HostSpec(name=name, mbit=mbit)
        return HostSpec(name=name, mbit=None, up_mbit=mbit, down_mbit=self.down_mbit)


@dataclass
class SystemRun:
    """Raw outcome of one system's run."""

    name: str  # e.g. "barnraise@25"
    kind: str  # barnraise, hivemind, ddp, solo
    mbit: float | None  # link rate of every peer, None: unlimited
    peers: int  # machines that trained
    out_dir: Path  # logs, events, snapshots
    events: list[dict[str, Any]] = field(default_factory=list)  # all processes' events
    t_zero: float | None = None  # unix time training started (first step or window)
    up_bytes: dict[str, int] = field(default_factory=dict)  # per host, bytes sent over the span
    span_s: float = 0.0  # seconds the byte counters cover
    span: tuple[float, float] | None = None  # (from, to) unix times of the counters
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    error: str = ""  # why the run is incomplete, if it is


def _counters(net: NetSim, hosts: Sequence[str]) -> dict[str, int]:
    """Bytes each host has sent: rx of its root-side veth (named like its namespace)."""
    out = {}
    for h in hosts:
        path = Path("/sys/class/net") / net.netns(h) / "statistics" / "rx_bytes"
        try:
            out[h] = int(path.read_text())
        except OSError:
            out[h] = 0
    return out


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, alive: Callable[[], str]) -> None:
    """Poll ``predicate`` until true; raise if it times out or ``alive`` reports a dead process."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dead = alive()
        if dead:
            raise RuntimeError(f"{what}: {dead}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(_POLL_S)


def _first(events: list[dict[str, Any]], kind: str, key: str) -> float | None:
    times = [e[key] for e in events if e.get("kind") == kind]
    return min(times) if times else None


def _log(out_dir: Path, name: str) -> IO[str]:
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    return open(out_dir / "logs" / f"{name}.log", "a", encoding="utf-8")


def _wait_exit(procs: dict[str, subprocess.Popen[Any]], timeout_s: float) -> dict[str, int | None]:
    deadline = time.monotonic() + timeout_s
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return {n: p.poll() for n, p in procs.items()}


def _dead(procs: dict[str, subprocess.Popen[Any]]) -> str:
    bad = {n: p.returncode for n, p in procs.items() if p.poll() not in (None, 0)}
    return ", ".join(f"{n} exited with {rc}" for n, rc in bad.items())


# ----- barnraise ------------------------------------------------------------------------------


def run_barnraise(env: BenchEnv, name: str, *, mbit: float | None, peers: int, budget_s: float) -> SystemRun:
    """Bootstrap + ``peers`` instrumented ``barnraise peer`` processes for ``budget_s`` of training."""
    out = env.work_dir / name
    res = SystemRun(name=name, kind="barnraise", mbit=mbit, peers=peers, out_dir=out)
    run_copy = out / "run"  # the bootstrap writes genesis/identity into its run dir: keep the pristine one
    shutil.copytree(env.run_dir, run_copy, dirs_exist_ok=True)
    down = env.down_mbit if mbit is not None and env.down_mbit is not None else mbit
    rates = {n: (mbit, down) for n in Scenario(peers=peers, mbit=mbit).initial_peers()}
    scenario = Scenario(peers=peers, mbit=mbit, duration_s=budget_s, mbit_per_peer=rates)
    probe = (env.python, "-m", "baselines.probe", "--snapshots", str(out / "snapshots"), "--")
    config = SwarmConfig(
        run_dir=run_copy,
        log_dir=out / "logs",
        scenario=scenario,
        barnraise=probe,
        peer_args=("--threads", str(env.threads), *(env.peer_args if mbit is not None else ())),
        ready_timeout_s=env.startup_timeout_s,
    )
    names = scenario.initial_peers()
    events_paths = [out / "logs" / "cache" / n / PROBE_EVENTS for n in names]
    with (
        cpucap.CpuCaps(cpus=env.cpus_per_peer, tag=name.replace("@", "-")) as caps,
        NetSim(hosts=swarm_hosts(scenario), subnet=env.subnet, prefix=env.prefix) as net,
    ):
        swarm = Swarm(config, net)
        procs: dict[str, subprocess.Popen[Any]] = {}
        try:
            swarm.processes["boot"] = swarm.start_bootstrap()
            for n in names:
                procs[n] = swarm.processes[n] = swarm.start_peer(n)
                caps.assign(n, procs[n].pid)
            _wait_for(
                lambda: all(any(e["kind"] == "window" for e in read_all([p])) for p in events_paths),
                env.startup_timeout_s,
                "every peer to finish a compute window",
                lambda: _dead(procs),
            )
            res.t_zero = _first(read_all(events_paths), "window", "t0")
            start, t_from = _counters(net, names), time.time()
            end_at = (res.t_zero or t_from) + budget_s
            _wait_for(lambda: time.time() >= end_at, budget_s + 5, "the budget", lambda: _dead(procs))
            stop, t_to = _counters(net, names), time.time()
            res.up_bytes = {n: stop[n] - start[n] for n in names}
            res.span, res.span_s = (t_from, t_to), t_to - t_from
        except (RuntimeError, TimeoutError, NetSimError) as e:
            res.error = str(e)
            logger.error("%s: %s", name, e)
        res.exit_codes = {n: p.poll() for n, p in procs.items()}
    res.events = read_all(events_paths)
    return res


# ----- baselines in namespaces ----------------------------------------------------------------


def _worker_argv(
    env: BenchEnv, module: str, out: Path, worker: str, budget_s: float, slot: str = "0/1"
) -> list[str]:
    return [
        env.python,
        "-m",
        f"baselines.{module}",
        "--run-dir",
        str(env.run_dir),
        "--out-dir",
        str(out / worker),
        "--name",
        worker,
        "--budget-s",
        f"{budget_s:g}",
        "--threads",
        str(env.threads),
        "--snapshot-every-s",
        f"{env.snapshot_every_s:g}",
        "--slot",
        slot,
    ]


def _run_workers(
    env: BenchEnv,
    res: SystemRun,
    budget_s: float,
    hosts: list[str],
    argv_for: Callable[[NetSim, str, int], list[str]],
    *,
    first_alone: Callable[[NetSim], bool] | None = None,
) -> None:
    """Start one worker per host (the first one first if ``first_alone`` must see it ready)."""
    out = res.out_dir
    with (
        cpucap.CpuCaps(cpus=env.cpus_per_peer, tag=res.name.replace("@", "-")) as caps,
        NetSim(hosts=[env.host(h, res.mbit) for h in hosts], subnet=env.subnet, prefix=env.prefix) as net,
    ):
        procs: dict[str, subprocess.Popen[Any]] = {}
        logs = []
        try:
            for i, h in enumerate(hosts):
                log = _log(out, h)
                logs.append(log)
                procs[h] = net.popen(h, argv_for(net, h, i), stdout=log, stderr=subprocess.STDOUT)
                caps.assign(h, procs[h].pid)
                if i == 0 and first_alone is not None:
                    _wait_for(
                        lambda: first_alone(net),
                        env.startup_timeout_s,
                        f"{h} to be ready",
                        lambda: _dead(procs),
                    )
            paths = [out / h / EVENTS_FILE for h in hosts]
            _wait_for(
                lambda: all(any(e["kind"] == "start" for e in read_all([p])) for p in paths),
                env.startup_timeout_s,
                "every worker to start training",
                lambda: _dead(procs),
            )
            start, t_from = _counters(net, hosts), time.time()
            _wait_for(
                lambda: any(any(e["kind"] == "end" for e in read_all([p])) for p in paths),
                budget_s + env.grace_s,
                "a worker to finish its budget",
                lambda: _dead(procs),
            )
            stop, t_to = _counters(net, hosts), time.time()
            res.up_bytes = {h: stop[h] - start[h] for h in hosts}
            res.span, res.span_s = (t_from, t_to), t_to - t_from
            res.exit_codes = _wait_exit(procs, env.grace_s)
            if _dead(procs):
                res.error = _dead(procs)
        except (RuntimeError, TimeoutError, NetSimError) as e:
            res.error = str(e)
            logger.error("%s: %s", res.name, e)
            res.exit_codes = {h: p.poll() for h, p in procs.items()}
        finally:
            for log in logs:
                log.close()
    res.events = read_all([out / h / EVENTS_FILE for h in hosts])
    res.t_zero = _first(res.events, "start", "t")


def run_ddp(env: BenchEnv, name: str, *, mbit: float | None, peers: int, budget_s: float) -> SystemRun:
    """Synchronous DDP over gloo, one rank per namespace."""
    res = SystemRun(name=name, kind="ddp", mbit=mbit, peers=peers, out_dir=env.work_dir / name)
    hosts = [f"d{i}" for i in range(peers)]

    def argv(net: NetSim, host: str, rank: int) -> list[str]:
        return [
            *_worker_argv(env, "ddp", res.out_dir, host, budget_s, f"{rank}/{peers}"),
            "--rank",
            str(rank),
            "--world",
            str(peers),
            "--master",
            f"{net.ip(hosts[0])}:29500",
            "--timeout-s",
            f"{max(300.0, budget_s):g}",
        ]

    _run_workers(env, res, budget_s, hosts, argv)
    return res


def run_hivemind(
    env: BenchEnv,
    name: str,
    *,
    mbit: float | None,
    peers: int,
    budget_s: float,
    mode: str,
    target_batch_size: int,
    matchmaking_s: float,
    averaging_timeout_s: float,
) -> SystemRun:
    """``peers`` hivemind.Optimizer workers; the first one's DHT is everyone's entry point."""
    res = SystemRun(name=name, kind="hivemind", mbit=mbit, peers=peers, out_dir=env.work_dir / name)
    hosts = [f"h{i}" for i in range(1, peers + 1)]
    maddrs = res.out_dir / "maddrs.txt"
    maddrs.parent.mkdir(parents=True, exist_ok=True)
    maddrs.unlink(missing_ok=True)

    def argv(net: NetSim, host: str, i: int) -> list[str]:
        extra = (
            ["--snapshots", "--maddrs-file", str(maddrs)]
            if i == 0
            else ["--initial-peers", *maddrs.read_text().split()]
        )
        return [
            *_worker_argv(env, "hivemind_worker", res.out_dir, host, budget_s, f"{i}/{peers}"),
            "--host",
            net.ip(host),
            "--mode",
            mode,
            "--target-batch-size",
            str(target_batch_size),
            "--matchmaking-s",
            f"{matchmaking_s:g}",
            "--averaging-timeout-s",
            f"{averaging_timeout_s:g}",
            "--workers",
            str(peers),
            "--ready-timeout-s",
            f"{env.startup_timeout_s:g}",
            *extra,
        ]

    _run_workers(env, res, budget_s, hosts, argv, first_alone=lambda net: maddrs.exists())
    return res


# ----- solo: no network at all ----------------------------------------------------------------


@dataclass
class SoloHandle:
    """A solo worker running in the background (it needs no network, so it can overlap a run
    that is bound by its links rather than its CPU)."""

    res: SystemRun
    proc: subprocess.Popen[Any]
    caps: cpucap.CpuCaps
    log: IO[str]

    def abort(self) -> None:
        """Kill the worker if it still runs (the benchmark failed or was interrupted)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()
        self.caps.close()


def start_solo(env: BenchEnv, name: str, *, budget_s: float) -> SoloHandle:
    res = SystemRun(name=name, kind="solo", mbit=None, peers=1, out_dir=env.work_dir / name)
    caps = cpucap.CpuCaps(cpus=env.cpus_per_peer, tag=name)
    log = _log(res.out_dir, "solo")
    proc = subprocess.Popen(
        _worker_argv(env, "solo", res.out_dir, "solo", budget_s),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    caps.assign("solo", proc.pid)
    return SoloHandle(res=res, proc=proc, caps=caps, log=log)


def finish_solo(env: BenchEnv, handle: SoloHandle, budget_s: float) -> SystemRun:
    res = handle.res
    try:
        handle.proc.wait(timeout=budget_s + env.startup_timeout_s + env.grace_s)
    except subprocess.TimeoutExpired:
        handle.proc.kill()
        handle.proc.wait(timeout=10)
        res.error = "solo worker did not finish in time"
    finally:
        handle.log.close()
        handle.caps.close()
    res.exit_codes = {"solo": handle.proc.returncode}
    if handle.proc.returncode not in (0, None) and not res.error:
        res.error = f"solo worker exited with {handle.proc.returncode}"
    res.events = read_all([res.out_dir / "solo" / EVENTS_FILE])
    res.t_zero = _first(res.events, "start", "t")
    return res
