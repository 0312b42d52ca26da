"""The volunteer's and the observer's subcommands: peer, status (demo lives in its own module; the
operator's init, bootstrap and token in ``barnraise.coordinator.operator.commands``)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.shutdown import stop_on_signals
from barnraise.peer.cli.settings import LAYERS_HELP, add_settings

log = logging.getLogger(__name__)


# --- peer -------------------------------------------------------------------------------------
CONTROL_ACTIONS = ("pause", "resume", "leave")  # peer/control.py
CONTROL_HELP = (
    "`barnraise peer pause|resume|leave [--cache-dir DIR] [--identity FILE]` acts on the running peer: "
    "pause finishes the inner step and stops training and averaging (heartbeats go on), resume goes "
    "on, leave leaves after this round's averaging."
)


def register_peer(sub) -> None:
    p = sub.add_parser(
        "peer",
        help="run a peer daemon that trains with the swarm, or pause, resume or stop a running one",
        description=LAYERS_HELP + " " + CONTROL_HELP,
    )
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR")
    p.add_argument("--run-id", default="", help="which run, if the swarm hosts several")
    p.add_argument("--listen", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR")
    p.add_argument("--announce", nargs="+", default=[], metavar="MADDR")
    p.add_argument(
        "--no-relay",
        action="store_true",
        help="behind NAT, do not reserve a relay slot on the bootstrap (then nobody can dial this peer)",
    )
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "barnraise")
    p.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="private key file (default: CACHE_DIR/peer.id, or CACHE_DIR/slot-N/peer.id while that one is in use)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if visible, else CPU), cpu, cuda or cuda:N; with several GPUs, auto and cuda "
        "put the peer of identity slot n on cuda:(n mod GPUs), so plain peers spread over them",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    p.add_argument("--max-rounds", type=int, default=0, help="leave after N completed rounds")
    # Hidden hooks for tests and benchmarks: faults by (peer, round) (peer/injection.py) and the
    # events the peer writes (peer/events.py). The older fault flags below build the same plan.
    p.add_argument("--inject", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--slowdown", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--tamper", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--token", type=Path, default=None, help="membership token file (closed runs)")
    p.add_argument(
        "--run-key-fingerprint",
        default="",
        metavar="FP",
        help="the run key to trust (printed by `barnraise init`); default: trust the first key seen",
    )
    p.add_argument("--attack", default="", help=argparse.SUPPRESS)  # tests/benchmarks: a Byzantine peer
    p.add_argument(
        "--cache-budget-mb", type=float, default=1024, help="disk for cached shards, MiB (default 1024)"
    )
    p.add_argument("--lease-s", type=float, default=60.0, help=argparse.SUPPRESS)  # shard lease length
    p.add_argument("--ledger", type=Path, default=None, help=argparse.SUPPRESS)  # range_trained events only
    p.add_argument("--serve-corrupt-shards", action="store_true", help=argparse.SUPPRESS)  # tests
    add_link_and_checkpoint_flags(p)
    add_controls(p)  # the positional pause|resume|leave and --schedule
    # Last: --config and --print-config; every visible flag above is also settable from
    # BARNRAISE_<FLAG> and the file (settings.py).
    p.set_defaults(handler=cmd_peer, settings=add_settings(p))


def add_link_and_checkpoint_flags(p) -> None:
    """``peer``'s flags for its uplink (codec, bandwidth, upload limit), its device's duty, metrics and
    own checkpoints."""
    p.add_argument("--codec", default="", help="ask for a smaller update codec than the run's (slow uplink)")
    p.add_argument(
        "--bandwidth-mbit", type=float, default=0.0, help="your upload bandwidth, Mbit/s (optional)"
    )
    p.add_argument(
        "--max-upload-mbit",
        type=float,
        default=0.0,
        metavar="N",
        help="never send faster than N Mbit/s, all protocols together (0: no limit); also the bandwidth declared to groups",
    )
    p.add_argument(
        "--max-compute-share",
        type=float,
        default=1.0,
        metavar="F",
        help="train at most this share (0-1] of each round and rest the device the remaining time "
        "(a cooler, quieter machine; fewer samples to the swarm); default 1",
    )
    p.add_argument(
        "--fault", default="", choices=("", "nan", "shape", "oversize", "stall"), help=argparse.SUPPRESS
    )
    p.add_argument("--metrics-port", default="", metavar="[HOST:]PORT", help="serve Prometheus /metrics")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="rounds between this peer's own checkpoints in CACHE_DIR (default: about 10 minutes of rounds)",
    )
    p.add_argument("--keep-checkpoints", type=int, default=3, help="own checkpoints kept (default 3)")


def add_controls(p) -> None:
    """The good-neighbour controls: ``peer pause|resume|leave`` and ``--schedule``."""
    p.add_argument(
        "action",
        nargs="?",
        choices=CONTROL_ACTIONS,
        default=None,
        help="act on the peer running with --cache-dir (and --identity) instead of starting one",
    )
    p.add_argument(
        "--schedule",
        default="",
        metavar="HH:MM-HH:MM[,...]",
        help="train only in these local hours (a window may cross midnight), paused outside them",
    )


def shard_options(args):
    """``ShardOptions`` from the peer's flags; a bad value is a one-line ConfigError."""
    from barnraise.coordinator.leases import LeaseConfig
    from barnraise.peer.data.feed import ShardOptions

    if not args.cache_budget_mb >= 0:
        raise ConfigError(f"--cache-budget-mb must be 0 or more MiB, got {args.cache_budget_mb:g}")
    try:
        return ShardOptions(
            cache_budget_bytes=int(args.cache_budget_mb * (1 << 20)),
            lease=LeaseConfig(lease_s=args.lease_s),
        )
    except ValueError as e:
        raise ConfigError(f"peer: {e}") from e


def injection_plan(args):
    """The faults of ``--inject FILE`` plus those the older hidden flags stand for, each for every
    round (peer/injection.py); None if there are none."""
    from barnraise.peer.injection import Fault, InjectionPlan, load_plan

    aliases = [
        (args.slowdown > 1, {"kind": "slowdown", "factor": args.slowdown}),
        (args.tamper, {"kind": "tamper"}),
        (args.fault, {"kind": "fault", "mode": args.fault}),
        (args.attack, {"kind": "attack", "mode": args.attack}),
        (args.serve_corrupt_shards, {"kind": "corrupt_shards"}),
    ]
    try:
        flags = InjectionPlan(tuple(Fault(**fault) for given, fault in aliases if given))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    plan = load_plan(args.inject) + flags if args.inject else flags
    return plan if plan.faults else None


def peer_config(args):
    """``PeerConfig`` from the merged flags, each checked; a bad value is a one-line ConfigError."""
    from barnraise.peer.config import PeerConfig
    from barnraise.peer.schedule import parse_schedule
    from barnraise.peer.training.device import parse_device

    parse_device(args.device)
    if args.run_key_fingerprint:
        from barnraise.coordinator.keys import parse_fingerprint

        parse_fingerprint(args.run_key_fingerprint)
    if args.codec:
        from barnraise.peer.averaging import codecs

        try:
            codecs.check_codec(args.codec)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if args.metrics_port:
        from barnraise.coordinator.metrics import parse_metrics_address

        parse_metrics_address(args.metrics_port)
    if args.checkpoint_every < 0 or args.keep_checkpoints < 1:
        raise ConfigError("--checkpoint-every must be 0 or more rounds and --keep-checkpoints 1 or more")
    for flag, value in (
        ("--bandwidth-mbit", args.bandwidth_mbit),
        ("--max-upload-mbit", args.max_upload_mbit),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} must be 0 (none) or a positive number of Mbit/s, got {value:g}")
    if not (math.isfinite(args.max_compute_share) and 0 < args.max_compute_share <= 1):
        raise ConfigError(f"--max-compute-share must be in (0, 1], got {args.max_compute_share:g}")
    return PeerConfig(
        initial_peers=tuple(args.initial_peers),
        run_id=args.run_id,
        listen=tuple(args.listen),
        announce=tuple(args.announce),
        no_relay=args.no_relay,
        cache_dir=args.cache_dir,
        identity=args.identity,
        device=args.device,
        threads=args.threads,
        max_rounds=args.max_rounds,
        shards=shard_options(args),
        codec=args.codec,
        bandwidth_mbit=declared_bandwidth(args.bandwidth_mbit, args.max_upload_mbit),
        max_upload_mbit=args.max_upload_mbit,
        max_compute_share=args.max_compute_share,
        token=args.token,
        run_key_fingerprint=args.run_key_fingerprint,
        schedule=parse_schedule(args.schedule),
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        inject=injection_plan(args),
    )


def declared_bandwidth(bandwidth_mbit: float, max_upload_mbit: float) -> float:
    """The upload bandwidth declared to groups: the smaller of ``--bandwidth-mbit`` and
    ``--max-upload-mbit`` where given (we never send faster than the limit), else 0 (unknown)."""
    given = [v for v in (bandwidth_mbit, max_upload_mbit) if v > 0]
    return min(given, default=0.0)


def control_peer(args) -> int:
    """``barnraise peer pause|resume|leave``: one line of what the running peer did."""
    from barnraise.peer.control import command

    args, _ = args.settings.resolve(args, os.environ, require=False)
    print(command(args.cache_dir, args.identity, args.action), flush=True)
    return 0


def cmd_peer(args) -> int:
    if args.action is not None:
        return control_peer(args)
    args, origin = args.settings.resolve(args, os.environ)
    cfg = peer_config(args)  # every value checked, for --print-config too
    if args.print_config:
        sys.stdout.write(args.settings.render(args, origin))
        return 0
    from barnraise.peer.injection import skew_clock
    from barnraise.peer.net.uplink import UPLOAD

    skew_clock(cfg.inject.clock_skew_s if cfg.inject else 0.0)  # tests: a machine whose clock is off
    UPLOAD.set_limit_mbit(cfg.max_upload_mbit)  # the process's one bucket: every protocol's bytes
    from barnraise.peer.daemon import PeerDaemon
    from barnraise.peer.events import open_events

    events = open_events(args.events, ledger=args.ledger)
    daemon = PeerDaemon(cfg, events)
    running = threading.Event()
    metrics = None

    def stop() -> None:
        if not running.is_set():  # still joining: abort start-up at once
            raise KeyboardInterrupt
        if daemon.leave():  # the first Ctrl-C; the second leaves now
            log.info("leaving after this round; Ctrl-C again to leave now")
        else:
            daemon.stop()

    stop_on_signals(stop)
    try:
        daemon.start()
        running.set()
        if args.metrics_port:
            metrics = serve_peer_metrics(daemon, args.metrics_port)
        daemon.run()
    finally:
        if metrics is not None:
            metrics.stop()
        daemon.close()
        events.close()
    return 0


def serve_peer_metrics(daemon, address: str):
    """/metrics of the swarm as this peer's DHT sees it (read at scrape time, at most every 5 s)."""
    from barnraise.coordinator.health import query_report
    from barnraise.coordinator.metrics import serve_metrics

    return serve_metrics(address, lambda: query_report(daemon.dht, daemon.manifest.run_id, 5.0), cache_s=5.0)


# --- status -----------------------------------------------------------------------------------
def register_status(sub) -> None:
    p = sub.add_parser("status", help="show swarm health (needs only the DHT)")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR")
    p.add_argument("--run-id", default="")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object on stdout (schema: coordinator/status_schema.json)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="redraw a live view until Ctrl-C (with --json: a JSON line per refresh)",
    )
    p.add_argument("--interval", type=float, default=2.0, help="seconds between --watch refreshes")
    p.add_argument(
        "--plot", type=Path, default=None, metavar="FILE.png", help="draw loss and samples/s per round"
    )
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the DHT")
    p.set_defaults(handler=cmd_status)


def collect_report(initial_peers, run_id: str = "", timeout_s: float = 15.0) -> dict:
    from barnraise.peer.cli.status_watch import StatusClient

    with StatusClient(initial_peers, run_id, timeout_s) as client:
        return client.report()


def cmd_status(args) -> int:
    from barnraise.peer.cli.status_watch import StatusClient, check_interval, watch

    if args.plot is not None and (args.json or args.watch):
        raise ConfigError("--plot does not combine with --json or --watch")
    if args.watch:
        check_interval(args.interval)
    if args.plot is not None:
        from barnraise.peer.cli.status_plot import check_output, plot_status

        check_output(args.plot)
    with StatusClient(args.initial_peers, args.run_id, args.timeout) as client:
        if args.watch:
            stop = threading.Event()
            stop_on_signals(stop.set)
            return watch(client, args.interval, stop, as_json=args.json)
        report = client.report()
        if args.plot is not None:
            print(plot_status(report, args.plot, args.timeout))
        elif args.json:
            print(json.dumps(report), flush=True)
        elif sys.stdout.isatty():
            from rich.console import Console

            from barnraise.peer.cli.status_view import render_rich

            Console().print(render_rich(report))
        else:
            from barnraise.peer.cli.status_view import render_text

            sys.stdout.write(render_text(report))
            sys.stdout.flush()
    return 0


def register_demo(sub) -> None:
    from barnraise.peer.cli.demo import register

    register(sub)


def register_doctor(sub) -> None:
    from barnraise.peer.cli.doctor import register

    register(sub)


def registry() -> list:
    """Every subcommand's ``register(sub)``, in the order ``barnraise --help`` lists them."""
    from barnraise.coordinator.operator import commands as operator
    from barnraise.peer.cli import checkpointing

    return [
        operator.register_init,
        checkpointing.register_bootstrap,  # the operator's, with the checkpoint puller attached
        register_peer,
        register_status,
        checkpointing.register_export,
        checkpointing.register_sample,
        register_doctor,
        register_demo,
        operator.register_token,
    ]
