"""Command line for the network emulator: ``scripts/netsim selfcheck|run|swarm|cleanup|delay-proxy``.

Exit codes: 0 success, 1 a check or a command failed, 2 a usage or harness error (one line on
stderr, no traceback), 130 interrupted. Everything created is torn down on every exit path.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from . import latency, registry
from .errors import NetSimError
from .rounds import format_rounds
from .scenario import BOOTSTRAP, Scenario, load_scenario, parse_rate_overrides
from .swarm import SwarmConfig, default_barnraise_command, hosts_summary, run_swarm, swarm_hosts
from .throughput import measure
from .topology import DEFAULT_SUBNET, HostSpec, NetSim

logger = logging.getLogger(__name__)


def _rate(text: str) -> float | None:
    return None if text.lower() in ("none", "inf") else float(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="private IPv4 subnet for the hosts")
    parser.add_argument(
        "--prefix",
        default=registry.DEFAULT_PREFIX,
        help="1-4 letters starting every namespace/link name (for cleanup)",
    )


def _size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--peers",
        type=int,
        default=argparse.SUPPRESS,
        help="number of peers p1..pN (default 4, or the scenario's)",
    )
    parser.add_argument(
        "--mbit",
        type=_rate,
        default=argparse.SUPPRESS,
        help="peer link rate both ways in Mbit/s; 'none' = unlimited (default 25)",
    )
    parser.add_argument(
        "--mbit-per-peer",
        default="",
        metavar="p1=10,p2=100,p3=10/100",
        help="per-peer overrides; UP/DOWN sets directions apart",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; separate so tests can check usage without running anything."""
    parser = argparse.ArgumentParser(
        prog="netsim",
        description="Emulate home links with network "
        "namespaces and tbf (needs root). Latency is user space only.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every ip/tc command")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("selfcheck", help="shape two hosts and measure TCP throughput both ways")
    p.add_argument("--mbit", type=float, default=25.0, help="rate to shape to, Mbit/s")
    p.add_argument("--bytes", type=int, default=4_000_000, help="bytes per transfer")
    _common(p)

    p = sub.add_parser("run", help="run CMD on hosts of a shaped network ({host} {ip} {boot_ip} expand)")
    _size(p)
    p.add_argument("--on", default="peers", help="'peers', 'all', or a comma list of host names")
    p.add_argument("--duration", type=float, help="kill everything after this many seconds")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    _common(p)

    p = sub.add_parser("swarm", help="run a barnraise swarm under a churn scenario")
    _size(p)
    p.add_argument("--run", required=True, type=Path, help="run directory for `barnraise bootstrap --run`")
    p.add_argument("--scenario", type=Path, help="scenario JSON (see scripts/scenarios/)")
    p.add_argument("--duration", type=float, help="seconds to run after the swarm is up")
    p.add_argument("--log-dir", type=Path, help="process logs and report (default RUN/netsim)")
    p.add_argument(
        "--barnraise",
        help="command that runs the barnraise CLI "
        f"(default: $BARNRAISE_CMD or {shlex.join(default_barnraise_command())})",
    )
    p.add_argument("--status-interval", type=float, default=5.0, help="seconds between status polls")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for bootstrap")
    for who in ("bootstrap", "peer", "status"):
        p.add_argument(
            f"--{who}-arg",
            action="append",
            default=[],
            metavar="ARG",
            help=f"extra argument for `barnraise {who}` (repeatable)",
        )
    _common(p)

    p = sub.add_parser("cleanup", help="remove namespaces/links left by crashed runs")
    p.add_argument("--force", action="store_true", help="also remove runs whose owner is still alive")
    p.add_argument("--prefix", default=registry.DEFAULT_PREFIX)

    p = sub.add_parser("delay-proxy", help="user-space TCP delay proxy (run it inside a namespace)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--listen IP:PORT --target IP:PORT --delay-ms MS")
    return parser


def _scenario(args: argparse.Namespace, base: Scenario | None = None) -> Scenario:
    """Scenario file values, overridden by whichever size flags were given."""
    base = base or Scenario()
    overrides = dict(base.mbit_per_peer)
    overrides.update(parse_rate_overrides(args.mbit_per_peer))
    given = vars(args)
    return Scenario(
        peers=given.get("peers", base.peers),
        mbit=given.get("mbit", base.mbit),
        mbit_per_peer=overrides,
        duration_s=given.get("duration") or base.duration_s,
        events=base.events,
        nat=base.nat,
    )


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """Measure both directions through one shaped pair; pass if within 80-100% of the rate."""
    hosts = [HostSpec(name="a", mbit=args.mbit), HostSpec(name="b", mbit=args.mbit)]
    ok = True
    with NetSim(hosts=hosts, subnet=args.subnet, prefix=args.prefix) as net:
        for src, dst in (("a", "b"), ("b", "a")):
            r = measure(net, src, dst, args.bytes)
            good = 0.8 * args.mbit <= r.mbit_per_s <= 1.02 * args.mbit
            ok &= good
            print(
                f"{src} -> {dst}: {r.nbytes} bytes in {r.seconds:.3f} s = {r.mbit_per_s:.2f} Mbit/s "
                f"(shaped to {args.mbit:g}) {'OK' if good else 'OFF'}"
            )
    return 0 if ok else 1


def _pipe_lines(prefix: str, stream: IO[str], out: IO[str]) -> None:
    for line in stream:
        out.write(f"[{prefix}] {line}")
        out.flush()


def cmd_run(args: argparse.Namespace) -> int:
    """Run a command on several hosts at once with output prefixed by host name."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise NetSimError("give a command after --, e.g. netsim run --peers 2 -- sh -c 'ip addr'")
    scenario = _scenario(args)
    hosts = [h for h in swarm_hosts(scenario) if h.name != "stat"]
    names = [h.name for h in hosts]
    targets = (
        names
        if args.on == "all"
        else [n for n in names if n != BOOTSTRAP]
        if args.on == "peers"
        else [n.strip() for n in args.on.split(",") if n.strip()]
    )
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise NetSimError(f"--on names unknown hosts {unknown}; hosts are {names}")
    print("hosts:\n" + hosts_summary(hosts), flush=True)
    with NetSim(hosts=hosts, subnet=args.subnet, prefix=args.prefix) as net:
        procs: list[tuple[str, subprocess.Popen[Any]]] = []
        for name in targets:
            values = {"host": name, "ip": net.ip(name), "boot_ip": net.ip(BOOTSTRAP)}
            argv = [part.format(**values) for part in command]
            env = {"NETSIM_HOST": name, "NETSIM_IP": net.ip(name), "NETSIM_BOOT_IP": net.ip(BOOTSTRAP)}
            proc = net.popen(name, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            threading.Thread(target=_pipe_lines, args=(name, proc.stdout, sys.stdout), daemon=True).start()
            procs.append((name, proc))
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while any(p.poll() is None for _, p in procs):
            if deadline is not None and time.monotonic() > deadline:
                print(f"duration {args.duration:g}s reached, stopping", flush=True)
                break
            time.sleep(0.1)
        codes = {name: p.poll() for name, p in procs}
    print("exit codes: " + ", ".join(f"{n}={c}" for n, c in codes.items()), flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


def cmd_swarm(args: argparse.Namespace) -> int:
    """Run the barnraise swarm under the scenario and print the per-round report."""
    base = load_scenario(args.scenario) if args.scenario else None
    scenario = _scenario(args, base)
    barnraise = tuple(shlex.split(args.barnraise)) if args.barnraise else default_barnraise_command()
    config = SwarmConfig(
        run_dir=args.run,
        log_dir=args.log_dir or args.run / "netsim",
        scenario=scenario,
        barnraise=barnraise,
        status_interval_s=args.status_interval,
        ready_timeout_s=args.ready_timeout,
        bootstrap_args=tuple(args.bootstrap_arg),
        peer_args=tuple(args.peer_arg),
        status_args=tuple(args.status_arg),
    )
    print(f"barnraise: {shlex.join(barnraise)}\nhosts:\n" + hosts_summary(swarm_hosts(scenario)), flush=True)
    for ev in scenario.events:
        print(f"  scheduled {ev.describe()}")
    result = run_swarm(config, subnet=args.subnet, prefix=args.prefix, duration_s=scenario.duration_s)
    print("\nevents:")
    for e in result.events:
        print(f"  {e.text()}" + (f"   [{e.scheduled}]" if e.scheduled else ""))
    print(
        "\nrounds, from peers' round events (peers = who reported it):\n"
        + format_rounds(result.rounds, show_peers=True)
    )
    print(
        "\nrounds as `barnraise status` saw them (polled; may skip rounds):\n"
        + format_rounds(result.status_rounds)
    )
    print(f"\nreport: {result.report_path}")
    return 0 if all(e.ok for e in result.events) else 1


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove leftovers and say what was removed."""
    removed = registry.cleanup_stale(args.prefix, force=args.force)
    print("\n".join(f"removed {r}" for r in removed) or "nothing to clean up")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, configure logging, dispatch; our errors become one-line messages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handlers = {"selfcheck": cmd_selfcheck, "run": cmd_run, "swarm": cmd_swarm, "cleanup": cmd_cleanup}
    try:
        if args.cmd == "delay-proxy":
            return latency.main(args.rest)
        return handlers[args.cmd](args)
    except NetSimError as exc:
        print(f"netsim: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"netsim: invalid setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netsim: interrupted; everything was torn down", file=sys.stderr)
        return 130
