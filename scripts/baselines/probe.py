"""The real ``barnraise`` CLI, with read-only instrumentation for benchmarks.

``python -m baselines.probe [--snapshots DIR] -- peer --initial-peers ... --cache-dir DIR ...``
runs exactly ``barnraise peer`` (any other subcommand runs unchanged) and, for ``peer``, records
to ``CACHE_DIR/probe-events.jsonl``:

- every compute window (``InnerTrainer.train_until``): its span, compute seconds, samples;
- every all-reduce exchange (``AllReduce.run``): its span, group size, codec, bytes, success;
- every published global state (``PeerDaemon._publish_state``): round, hash and, with
  ``--snapshots``, a snapshot file named by the hash (written once per swarm-wide state).

The hooks wrap those methods and call the originals unchanged: nothing the peer computes,
sends or decides differs from an uninstrumented one. They measure what logs and heartbeats
cannot: the exchange alone without the matchmaking waits around it, and the agreed parameters
for a held-out evaluation. If a hooked method is renamed the probe says which and refuses to run,
rather than measuring nothing.
"""

from __future__ import annotations

import argparse
import functools
import queue
import sys
import threading
import time
from pathlib import Path

EVENTS_FILE = "probe-events.jsonl"


def _cache_dir(peer_argv: list[str]) -> Path:
    """The ``--cache-dir`` the peer was given (where its events file goes)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "barnraise")
    known, _ = parser.parse_known_args(peer_argv)
    return known.cache_dir


def install(events_path: Path, snapshots: Path | None) -> None:
    """Wrap the three methods; raises RuntimeError naming any that this barnraise lacks."""
    import torch

    from barnraise.peer import daemon
    from barnraise.peer.averaging import allreduce
    from barnraise.peer.training import trainer
    from baselines.events import EventLog, save_snapshot

    targets = [
        (trainer, "InnerTrainer", "train_until"),
        (allreduce, "AllReduce", "run"),
        (daemon, "PeerDaemon", "_publish_state"),
    ]
    missing = [f"{m.__name__}.{c}.{f}" for m, c, f in targets if not hasattr(getattr(m, c, None), f)]
    if missing:
        raise RuntimeError(f"probe cannot instrument this barnraise: missing {', '.join(missing)}")
    events = EventLog(events_path)

    orig_train = trainer.InnerTrainer.train_until

    @functools.wraps(orig_train)
    def train_until(self, *args, **kwargs):
        t0 = time.time()
        res = orig_train(self, *args, **kwargs)
        events.write(
            "window",
            t0=t0,
            t1=time.time(),
            compute_s=res.compute_s,
            samples=res.samples,
            steps=res.steps,
            loss=res.mean_loss,
        )
        return res

    orig_run = allreduce.AllReduce.run

    @functools.wraps(orig_run)
    async def run(self, group, update, weight, stats):
        t0 = time.time()
        out = None
        try:
            out = await orig_run(self, group, update, weight, stats)
            return out
        finally:
            events.write(
                "allreduce",
                t0=t0,
                t1=time.time(),
                round=int(group.round),
                group=group.group_id,
                members=len(group.members),
                codec=group.codec,
                numel=int(update.numel()),
                ok=bool(out is not None and out[0] is not None and not out[2]),
                bytes_sent=stats.bytes_sent,
                bytes_received=stats.bytes_received,
            )

    orig_publish = daemon.PeerDaemon._publish_state
    writes: queue.Queue[tuple[Path, torch.Tensor]] = queue.Queue()

    def writer() -> None:  # disk writes off the training thread: the peer does not wait for them
        while True:
            path, params = writes.get()
            save_snapshot(path, params)

    if snapshots is not None:
        threading.Thread(target=writer, name="probe-snapshots", daemon=True).start()

    @functools.wraps(orig_publish)
    def publish(self):
        orig_publish(self)
        digest = self.state.params_hash()
        fields = {"t": time.time(), "round": int(self.state.round), "hash": digest}
        if snapshots is not None:
            path = snapshots / f"state-{digest}.pt"
            if not path.exists():
                writes.put((path, self.state.params.clone()))
            fields["file"] = str(path)
        events.write("snapshot", **fields)

    trainer.InnerTrainer.train_until = train_until
    allreduce.AllReduce.run = run
    daemon.PeerDaemon._publish_state = publish


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m baselines.probe [--snapshots DIR] -- BARNRAISE_ARGS...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="baselines.probe")
    parser.add_argument("--snapshots", type=Path, default=None, help="write agreed states here")
    opts = parser.parse_args(argv[:split])
    cli_argv = argv[split + 1 :]
    command = next((a for a in cli_argv if not a.startswith("-")), "")
    if command == "peer":
        peer_argv = cli_argv[cli_argv.index("peer") + 1 :]
        cache = _cache_dir(peer_argv)
        cache.mkdir(parents=True, exist_ok=True)
        install(cache / EVENTS_FILE, opts.snapshots)
    from barnraise.peer.cli.main import main as barnraise_main

    return barnraise_main(cli_argv)


if __name__ == "__main__":
    raise SystemExit(main())
