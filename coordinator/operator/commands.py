"""The run operator's commands: ``init`` (shards and a signed manifest), ``bootstrap`` (the DHT entry
point and coordinator service) and ``token`` (membership of closed runs).

They sit beside the bootstrap node and the coordinator service and import nothing of the peer
daemon: an operator's machine needs only what the swarm agrees on (``barnraise.coordinator``).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.shutdown import stop_on_signals


def add_training_flags(p) -> None:
    """``init``'s training flags, with the defaults and help of ``TrainingDefaults``."""
    from barnraise.coordinator.manifest import init_flags

    for flag, f in init_flags():
        kw = {k: v for k, v in f.metadata.items() if k != "help"}
        p.add_argument(
            flag,
            type=type(f.default),
            default=f.default,
            help=f"{f.metadata['help']} (default {f.default})",
            **kw,
        )


# --- init -------------------------------------------------------------------------------------
def register_init(sub) -> None:
    p = sub.add_parser("init", help="split a dataset into shards and write a run manifest")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument(
        "--dataset",
        default="builtin",
        help="'builtin' (Python's own sources), or a directory/.jsonl/.bin file",
    )
    p.add_argument("--vocab-size", type=int, default=0, help="vocabulary size of a .bin token file")
    p.add_argument(
        "--model",
        default="gpt-nano",
        help="gpt-nano, gpt-micro, gpt-small, gpt-medium, gpt-wide, gpt-large; hf:CONFIG.json (a "
        "transformers causal LM, needs barnraise[hf]); or py:package.module:factory[?key=value&...]",
    )
    p.add_argument(
        "--tokenizer",
        default="bytes",
        help="bytes (default, vocabulary 256), bpe:N (train a byte-level BPE of N tokens on the "
        "dataset) or a tokenizer.json",
    )
    p.add_argument("--seq-len", type=int, default=0, help="context in tokens (default: the model's)")
    add_training_flags(p)
    p.add_argument("--shard-kib", type=int, default=256, help="shard size in KiB")
    p.add_argument(
        "--held-out-seqs",
        type=int,
        default=64,
        help="sequences from the dataset's end kept out of training for export's held-out loss "
        "(default 64, at most 5%% of the dataset; 0: none)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--closed", action="store_true", help="admit only peers holding a token (`barnraise token issue`)"
    )
    p.add_argument(
        "--run-key",
        type=Path,
        default=None,
        help="sign with this Ed25519 key (PEM) instead of a new RUN_DIR/run.key",
    )
    p.set_defaults(handler=cmd_init)


def cmd_init(args) -> int:
    from barnraise.coordinator.manifest import TrainingDefaults, init_flags, manifest_summary
    from barnraise.coordinator.operator.runinit import init_run

    try:
        training = TrainingDefaults(**{f.name: getattr(args, f.name) for _, f in init_flags()})
    except ValueError as e:
        raise ConfigError(str(e)) from e
    options = {"vocab_size": args.vocab_size} if args.vocab_size else {}
    if args.seq_len < 0:
        raise ConfigError(f"--seq-len must be positive, got {args.seq_len}")
    if not 0 <= args.held_out_seqs <= 100_000:
        raise ConfigError(f"--held-out-seqs {args.held_out_seqs}: give 0 (none) up to 100000")
    progress = TextProgress()
    manifest = init_run(
        args.run_dir,
        dataset=args.dataset,
        model=args.model,
        tokenizer=args.tokenizer,
        seq_len=args.seq_len,
        progress=progress,
        training=training,
        shard_bytes=args.shard_kib * 1024,
        held_out_seqs=args.held_out_seqs,
        seed=args.seed,
        source_options=options,
        closed=args.closed,
        run_key=args.run_key,
    )
    progress.done()
    print(json.dumps(manifest_summary(manifest)))
    if args.run_key is None:
        print(f"run key: {args.run_dir / 'run.key'} (keep it private; it signs the manifest and tokens)")
    run_key = f" --run-key {args.run_key}" if args.run_key is not None else ""  # the bootstrap seals with it
    print(f"next: barnraise bootstrap --run {args.run_dir}{run_key}")
    return 0


class TextProgress:
    """``init``'s progress while a tokenizer learns or encodes: one line redrawn on a terminal,
    nothing when stderr is not one (logs and pipes stay clean)."""

    def __init__(self, every_s: float = 0.5):
        self.tty = sys.stderr.isatty()
        self.every_s = every_s  # seconds between redraws
        self.t0 = self.last = time.monotonic()
        self.what = ""
        self.shown = False

    def __call__(self, what: str, done: int) -> None:
        now = time.monotonic()
        if what != self.what:
            self.what, self.t0 = what, now
        if not self.tty or now - self.last < self.every_s:
            return
        self.last, self.shown = now, True
        rate = done / max(1e-9, now - self.t0) / 1e6
        print(
            f"\r{what}: {done / 1e6:,.0f} MB read ({rate:.1f} MB/s)   ", end="", file=sys.stderr, flush=True
        )

    def done(self) -> None:
        if self.shown:
            print(file=sys.stderr)


# --- bootstrap --------------------------------------------------------------------------------
def register_bootstrap(sub) -> None:
    p = sub.add_parser("bootstrap", help="run a bootstrap node: DHT entry point + coordinator service")
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR")
    p.add_argument("--listen", nargs="+", default=["/ip4/0.0.0.0/tcp/31337"], metavar="MADDR")
    p.add_argument(
        "--announce", nargs="+", default=[], metavar="MADDR", help="public multiaddrs (behind NAT)"
    )
    p.add_argument(
        "--identity", type=Path, default=None, help="private key file (default RUN_DIR/bootstrap.id)"
    )
    p.add_argument(
        "--grpc", default="", metavar="HOST:PORT", help="coordinator gRPC address (default: listen host)"
    )
    p.add_argument("--initial-peers", nargs="+", default=[], metavar="MADDR", help="join an existing swarm")
    p.add_argument("--metrics-port", default="", metavar="[HOST:]PORT", help="serve Prometheus /metrics")
    p.add_argument(
        "--run-key",
        type=Path,
        default=None,
        metavar="FILE",
        help="the run key (PEM) that seals the coordinator record (default RUN_DIR/run.key)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="save the swarm's agreed state in RUN_DIR/checkpoints every N rounds (default: about 10 minutes)",
    )
    p.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept (default 3)")
    p.add_argument(
        "--no-relay",
        action="store_true",
        help="do not relay for peers behind NAT (each relayed byte crosses this node's link twice)",
    )
    p.set_defaults(handler=cmd_bootstrap)


def cmd_bootstrap(args, attach=None) -> int:
    """Run the bootstrap node until a signal. ``attach(node)``, if given, starts more work in this
    process once the node is up (the checkpoint puller, which the CLI adds) and returns its stop."""
    from barnraise.coordinator.operator.bootstrap import BootstrapConfig, BootstrapNode

    if args.checkpoint_every < 0 or args.keep_checkpoints < 1:
        raise ConfigError("--checkpoint-every must be 0 or more rounds and --keep-checkpoints 1 or more")

    node = BootstrapNode(
        BootstrapConfig(
            run_dir=args.run,
            listen=tuple(args.listen),
            announce=tuple(args.announce),
            identity=args.identity,
            grpc=args.grpc,
            initial_peers=tuple(args.initial_peers),
            metrics=args.metrics_port,
            run_key=args.run_key,
            no_relay=args.no_relay,
        )
    )
    if args.metrics_port:
        from barnraise.coordinator.metrics import parse_metrics_address

        parse_metrics_address(args.metrics_port)
    done = threading.Event()
    stop_on_signals(done.set)
    node.start()
    detach = None
    try:
        detach = attach(node) if attach is not None else None
        print(f"run {node.manifest.run_id}: coordinator at {', '.join(node.grpc_addrs)}")
        if node.metrics is not None:
            print(f"metrics at {node.metrics.url}")
        print(f"peer id {node.record.peer_id}; listening on:")
        for m in node.maddrs:
            print(f"  {m}")
        print(
            f"volunteers join with:\n  barnraise peer --initial-peers {node.initial_peers_hint()}", flush=True
        )
        while not done.wait(1.0):
            pass
    finally:
        if detach is not None:
            detach()
        node.stop()
    return 0


def register_token(sub) -> None:
    from barnraise.coordinator.operator.membership import register

    register(sub)
