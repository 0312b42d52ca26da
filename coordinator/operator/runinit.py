"""``barnraise init``: dataset -> shards + manifest in a new run directory, all or nothing.

Everything is written into a staging directory next to RUN_DIR and renamed into place at the end,
so a failure (bad dataset, Ctrl-C, full disk) leaves nothing partial behind.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.keys import load_run_key
from barnraise.coordinator.manifest import (
    SHARDS_DIR,
    TrainingDefaults,
    build_manifest,
    model_config,
    save_manifest,
)
from barnraise.coordinator.operator.datasets import DEFAULT_SHARD_BYTES, open_source, write_shards
from barnraise.coordinator.signing import sign_manifest_for_run
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)


def init_run(
    run_dir: Path,
    *,
    dataset: str = "builtin",
    model: str = "gpt-nano",
    training: TrainingDefaults | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    seed: int | None = None,
    source_options: dict | None = None,
    closed: bool = False,
    run_key: Path | None = None,
) -> manifest_pb2.RunManifest:
    """Shards and a signed manifest in ``run_dir``.

    ``run_key``: an existing Ed25519 run key (PEM) to sign with; without it a new key is created as
    ``RUN_DIR/run.key`` (mode 0600). ``closed``: only holders of a membership token may join.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"{run_dir} already exists and is not empty: pick a new run directory")
    if not run_dir.parent.is_dir():
        raise ConfigError(f"parent directory {run_dir.parent} does not exist: create it first")
    source = open_source(dataset, **(source_options or {}))
    mc = model_config(model, source.vocab_size)
    training = training or TrainingDefaults()
    key = load_run_key(Path(run_key)) if run_key is not None else None
    staging = run_dir.with_name(f".{run_dir.name}.init-tmp")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir()
        info, shards = write_shards(source, staging / SHARDS_DIR, shard_bytes=shard_bytes)
        manifest = build_manifest(
            model=mc, training=training, dataset=info, shards=shards, seed=seed, closed=closed
        )
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
