"""``barnraise init``: dataset -> shards + manifest in a new run directory, all or nothing.

Everything is written into a staging directory next to RUN_DIR and renamed into place at the end,
so a failure (bad dataset, Ctrl-C, full disk) leaves nothing partial behind.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.keys import load_run_key
from barnraise.coordinator.manifest import SHARDS_DIR, TrainingDefaults, build_manifest, save_manifest
from barnraise.coordinator.modelspec import spec_config
from barnraise.coordinator.operator.datasets import (
    BIN_SUFFIXES,
    DEFAULT_SHARD_BYTES,
    TokenSource,
    open_source,
    write_shards,
)
from barnraise.coordinator.operator.heldout import HELD_OUT_FILE, HELD_OUT_SEQS, TailSplit
from barnraise.coordinator.operator.tokenizing import (
    Progress,
    TokenizerChoice,
    encoded_source,
    parse_tokenizer,
    train_bpe,
)
from barnraise.coordinator.runfiles import write_run_file
from barnraise.coordinator.signing import sign_manifest_for_run
from barnraise.coordinator.tokenizer import TOKENIZER_FILE, FileTokenizer
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)


def _no_progress(what: str, done: int) -> None:
    pass


def init_run(
    run_dir: Path,
    *,
    dataset: str = "builtin",
    model: str = "gpt-nano",
    tokenizer: str = "bytes",
    seq_len: int = 0,
    training: TrainingDefaults | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    held_out_seqs: int = HELD_OUT_SEQS,
    seed: int | None = None,
    source_options: dict | None = None,
    closed: bool = False,
    run_key: Path | None = None,
    progress: Progress = _no_progress,
) -> manifest_pb2.RunManifest:
    """Shards and a signed manifest in ``run_dir``.

    ``model``: a built-in name, ``hf:CONFIG.json`` or ``py:module:factory`` (modelspec.py); ``tokenizer``:
    ``bytes``, ``bpe:N`` or a tokenizer.json (operator/tokenizing.py); ``seq_len``: context in tokens, 0 for the model's default. ``run_key``: an existing Ed25519 run
    key (PEM) to sign with; without it a new key is created as ``RUN_DIR/run.key`` (mode 0600).
    ``held_out_seqs``: sequences of the dataset's end kept out of the shards for ``export``'s
    held-out loss (operator/heldout.py), 0: none. ``closed``: only token holders may join.
    ``progress`` hears how much text has been read while a tokenizer trains or encodes.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"{run_dir} already exists and is not empty: pick a new run directory")
    if not run_dir.parent.is_dir():
        raise ConfigError(f"parent directory {run_dir.parent} does not exist: create it first")
    seed = secrets.randbits(31) if seed is None else seed
    choice = parse_tokenizer(tokenizer)
    options = dict(source_options or {})
    source, vocab_size = _open_dataset(dataset, choice, options)
    mc = spec_config(model, vocab_size=vocab_size, seed=seed, seq_len=seq_len)  # refuse a bad model early
    training = training or TrainingDefaults()
    key = load_run_key(Path(run_key)) if run_key is not None else None
    staging = run_dir.with_name(f".{run_dir.name}.init-tmp")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        source, tok_bytes = _tokenized(
            source, choice, vocab_size, lambda: open_source(dataset, **options), progress
        )
        info, shards = _write_data(staging, source, shard_bytes, held_out_seqs, mc.seq_len)
        manifest = build_manifest(
            model=mc, training=training, dataset=info, shards=shards, seed=seed, closed=closed
        )
        _attach_files(staging, manifest, choice, tok_bytes)
        signed = sign_manifest_for_run(staging, manifest, key)
        save_manifest(staging, signed)
        if run_dir.exists():
            run_dir.rmdir()
        staging.rename(run_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("run %s initialised in %s", manifest.run_id, run_dir)
    return manifest


def _write_data(
    staging: Path, source: TokenSource, shard_bytes: int, held_out_seqs: int, seq_len: int
) -> tuple[manifest_pb2.DatasetInfo, list[manifest_pb2.ShardInfo]]:
    """The shards, and the held-out split (the stream's end) as a run file named in the info."""
    split = TailSplit(source, seqs=held_out_seqs, seq_len=seq_len)
    info, shards = write_shards(split.source(), staging / SHARDS_DIR, shard_bytes=shard_bytes)
    if split.held:
        info.held_out.CopyFrom(write_run_file(staging, split.held, HELD_OUT_FILE))
    return info, shards


def _tokenized(
    source: TokenSource,
    choice: TokenizerChoice,
    vocab_size: int,
    reopen: Callable[[], TokenSource],
    progress: Progress,
) -> tuple[TokenSource, bytes | None]:
    """The source as the shards will hold it, and the tokenizer file (None for bytes): a BPE is
    trained on a first pass over the text (``reopen`` gives a second), a text source is encoded."""
    tok_bytes = choice.data
    if choice.kind == "bpe":
        tok_bytes = train_bpe(source, choice.vocab_size, progress)
        source = reopen()
    if tok_bytes is not None and source.token_dtype == "uint8":
        source = encoded_source(source, tok_bytes, vocab_size, progress)
    return source, tok_bytes


def _open_dataset(dataset: str, choice: TokenizerChoice, options: dict) -> tuple[TokenSource, int]:
    """The dataset's source and the vocabulary the model must cover."""
    path = Path(str(dataset)).expanduser()
    token_file = str(dataset) != "builtin" and path.suffix.lower() in BIN_SUFFIXES and path.is_file()
    if not token_file:
        source = open_source(dataset, **options)
        return source, choice.vocab_size
    if choice.kind == "bpe":
        raise ConfigError(
            f"--tokenizer {choice.kind}:{choice.vocab_size} learns from text, and {path} holds token ids "
            "already: pass the tokenizer.json they were made with, or none"
        )
    if choice.kind == "file" and "vocab_size" not in options:
        options["vocab_size"] = choice.vocab_size
    source = open_source(dataset, **options)
    return source, source.vocab_size


def _attach_files(
    staging: Path, manifest: manifest_pb2.RunManifest, choice: TokenizerChoice, tok_bytes: bytes | None
) -> None:
    """Store the tokenizer and the model config as run files and name them in the manifest."""
    if tok_bytes is not None:
        manifest.tokenizer.CopyFrom(
            manifest_pb2.TokenizerInfo(
                kind=choice.kind,
                vocab_size=FileTokenizer(tok_bytes).vocab_size,
                file=write_run_file(staging, tok_bytes, TOKENIZER_FILE),
            )
        )
    if manifest.model.hf_config:
        manifest.model.config_file.CopyFrom(write_run_file(staging, manifest.model.hf_config, "config.json"))
