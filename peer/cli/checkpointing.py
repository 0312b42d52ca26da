"""Checkpoints on the command line: the bootstrap keeps them, ``export`` writes the weights out,
``sample`` prints what the model learnt.

``bootstrap`` is the operator's command (``barnraise.coordinator.operator.commands``), which imports
nothing of the peer; the checkpoint puller needs the model and state sync, so the CLI, which
reaches both sides, attaches it to the bootstrap process here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from barnraise.coordinator.errors import ConfigError

SAMPLE_SEED = 0


# --- bootstrap, with the checkpoint puller ------------------------------------------------------
def register_bootstrap(sub) -> None:
    from barnraise.coordinator.operator import commands as operator

    operator.register_bootstrap(sub)
    sub.choices["bootstrap"].set_defaults(handler=cmd_bootstrap)


def cmd_bootstrap(args) -> int:
    from barnraise.coordinator.operator.commands import cmd_bootstrap as run_bootstrap

    return run_bootstrap(args, attach=lambda node: start_puller(node, args))


def start_puller(node, args):
    """Start pulling checkpoints into RUN_DIR/checkpoints; returns its stop."""
    from barnraise.coordinator.checkpoints import default_every
    from barnraise.peer.sync.checkpointer import CheckpointPolicy
    from barnraise.peer.sync.puller import CheckpointPuller

    every = args.checkpoint_every or default_every(node.manifest.training.round_s)
    puller = CheckpointPuller(
        dht=node.dht,
        signed=node.signed,
        manifest=node.manifest,
        run_dir=node.cfg.run_dir,
        policy=CheckpointPolicy(every=every, keep=args.keep_checkpoints),
    )
    if puller.start():
        print(f"checkpoints every {every} rounds in {puller.store.root} (keeping {args.keep_checkpoints})")
    return puller.stop


# --- where the weights come from ----------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Weights:
    """A state to export or sample from, and what is known about it."""

    manifest: object  # the run's RunManifest
    params: dict  # parameter name -> tensor
    round: int  # round whose average produced them
    loss: float | None  # the swarm's mean inner loss at that round
    source: str  # where they came from, for the user
    tokenizer_bytes: bytes | None = None  # the run's tokenizer file, if it has one and it was found
    held_out_bytes: bytes | None = None  # the run's held-out split, if it has one and it was found


def add_source_flags(p, *, checkpoint_dir: bool) -> None:
    p.add_argument("run_dir", nargs="?", type=Path, default=None, metavar="RUN_DIR")
    p.add_argument("--initial-peers", nargs="+", default=None, metavar="MADDR", help="take the swarm's state")
    if checkpoint_dir:
        p.add_argument(
            "--checkpoint", type=Path, default=None, metavar="DIR", help="a round-NNNNNN directory"
        )
    p.add_argument("--round", type=int, default=None, help="that round's checkpoint (default: the newest)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the swarm")


def load_weights(args) -> Weights:
    """The state named by RUN_DIR, --checkpoint DIR or --initial-peers; one-line errors otherwise."""
    given = [x for x in (args.run_dir, getattr(args, "checkpoint", None), args.initial_peers) if x]
    if len(given) != 1:
        raise ConfigError("give exactly one of RUN_DIR, --initial-peers MADDR or --checkpoint DIR")
    if args.initial_peers:
        from barnraise.peer.cli.swarmstate import pull_weights

        return pull_weights(args.initial_peers, args.round, args.timeout, Weights)
    if args.run_dir is not None:
        return _from_dir(args.run_dir / "checkpoints", args.run_dir, args.round)
    path = args.checkpoint
    return _from_dir(path.parent, path.parent.parent, _round_of(path))


def _round_of(path: Path) -> int:
    from barnraise.coordinator.checkpoints import DIR_RE

    m = DIR_RE.match(path.name)
    if m is None or not path.is_dir():
        raise ConfigError(f"{path} is not a checkpoint directory (round-NNNNNN)")
    return int(m.group(1))


def _manifest_near(*dirs: Path):
    from barnraise.coordinator.manifest import MANIFEST_FILE
    from barnraise.coordinator.signing import verify_manifest
    from barnraise.peer.sync.checkpointer import MANIFEST_COPY
    from barnraise.protos import manifest_pb2

    for d in dirs:
        for name in (MANIFEST_FILE, MANIFEST_COPY):
            if (d / name).is_file():
                return verify_manifest(manifest_pb2.SignedManifest.FromString((d / name).read_bytes()))
    raise ConfigError(f"no run manifest beside the checkpoints in {dirs[0]}")


def _from_dir(root: Path, run_dir: Path, round_no: int | None) -> Weights:
    from barnraise.peer.sync.checkpoint import newest_valid, run_layout, split_flat

    if not root.is_dir():
        raise ConfigError(
            f"no checkpoint in {root}: the bootstrap writes one every --checkpoint-every rounds"
        )
    manifest = _manifest_near(root, run_dir)
    numel, layout = run_layout(manifest)
    found = newest_valid(root, numel, round_no)
    if found is None:
        which = f"of round {round_no} " if round_no is not None else ""
        raise ConfigError(f"no usable checkpoint {which}in {root}")
    state, info, path = found
    return Weights(
        manifest=manifest,
        params=split_flat(state.params, layout),
        round=state.round,
        loss=info.loss,
        source=str(path),
        tokenizer_bytes=_file_near(manifest.tokenizer, "file", run_dir),
        held_out_bytes=_file_near(manifest.dataset, "held_out", run_dir),
    )


def _file_near(message, field: str, run_dir: Path) -> bytes | None:
    """A run file the manifest names in ``message.field`` from RUN_DIR/files, if it is there."""
    from barnraise.coordinator.errors import BarnraiseError
    from barnraise.coordinator.runfiles import read_run_file

    if not message.HasField(field):
        return None
    try:
        return read_run_file(run_dir, getattr(message, field))
    except BarnraiseError:
        return None


def measure_held_out(w: Weights) -> float | None:
    """The weights' loss on the run's held-out split; None when the run has none (or it is missing)."""
    from barnraise.peer.training.heldout import held_out_loss, split_sequences
    from barnraise.peer.training.model import build_run_model, load_named

    if w.held_out_bytes is None:
        return None
    m = w.manifest
    seqs = split_sequences(w.held_out_bytes, m.dataset.token_dtype, m.model.seq_len, m.model.vocab_size)
    model = build_run_model(m)
    load_named(model, w.params)
    return held_out_loss(model, seqs)


# --- export -------------------------------------------------------------------------------------
def register_export(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's weights out (safetensors + config)")
    add_source_flags(p, checkpoint_dir=False)
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from barnraise.peer.training.export import export_model

    w = load_weights(args)
    if w.manifest.tokenizer.HasField("file") and w.tokenizer_bytes is None:
        raise ConfigError("the run's tokenizer file was not found beside the checkpoint (RUN_DIR/files)")
    files = export_model(w.manifest, w.params, args.out, w.tokenizer_bytes)
    held_out = measure_held_out(w)
    summary = {
        "round": w.round,
        "loss": w.loss,
        "held_out_loss": held_out,
        "source": w.source,
        "files": [str(f) for f in files],
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    for f in files:
        print(f"wrote {f} ({f.stat().st_size} bytes)")
    loss = f"{w.loss:.4f}" if w.loss is not None else "unknown"
    held = f"{held_out:.4f}" if held_out is not None else "unknown (the run has no held-out split)"
    print(f"round {w.round} from {w.source}; training loss {loss}; held-out loss {held}")
    return 0


# --- sample -------------------------------------------------------------------------------------
def register_sample(sub) -> None:
    p = sub.add_parser("sample", help="print text the model generates from a prompt")
    add_source_flags(p, checkpoint_dir=True)
    p.add_argument("--prompt", required=True, metavar="TEXT")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--seed", type=int, default=SAMPLE_SEED, help="sampling seed")
    p.set_defaults(handler=cmd_sample)


def cmd_sample(args) -> int:
    from barnraise.coordinator.tokenizer import load_tokenizer
    from barnraise.peer.training.generate import generate
    from barnraise.peer.training.model import build_run_model, load_named

    if not 0 < args.tokens <= 100_000:
        raise ConfigError(f"--tokens {args.tokens}: must be between 1 and 100000")
    w = load_weights(args)
    tokenizer = load_tokenizer(w.manifest.tokenizer, w.tokenizer_bytes)
    model = build_run_model(w.manifest)
    load_named(model, w.params)
    text = generate(model, tokenizer, args.prompt, args.tokens, args.seed, seq_len=w.manifest.model.seq_len)
    print(args.prompt + text, flush=True)
    return 0
