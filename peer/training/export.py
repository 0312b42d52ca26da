"""Write a run's parameters out as files other tools load.

* ``hf:`` models: a directory ``AutoModelForCausalLM.from_pretrained(DIR)`` and
  ``AutoTokenizer.from_pretrained(DIR)`` load (``config.json``, ``model.safetensors``,
  ``generation_config.json``, the tokenizer files), written by transformers' own ``save_pretrained``.
* built-in and ``py:`` models: ``model.safetensors`` (tensors named as the network names its
  parameters) and ``config.json`` saying how to build the network, plus ``tokenizer.json`` when the
  run has one.

All or nothing: everything is written into a hidden sibling directory, fsynced, and renamed to
``out_dir`` at the end, so a reader never sees half an export.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from barnraise.coordinator.atomic import fsync_dir
from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.tokenizer import TOKENIZER_FILE, byte_tokenizer_json, special_tokens
from barnraise.peer.training.model import build_run_model, load_named, network_of
from barnraise.protos import manifest_pb2

EXPORT_FORMAT = "barnraise-export-1"


def export_model(
    manifest: manifest_pb2.RunManifest,
    params: dict[str, torch.Tensor],
    out_dir: Path,
    tokenizer_bytes: bytes | None,
) -> list[Path]:
    """Write the model with ``params`` (keyed by the run's parameter names) into ``out_dir``, which
    must not exist or be empty; returns the files written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not empty: pick a new output directory")
    if not out_dir.parent.is_dir():
        raise ConfigError(f"parent directory {out_dir.parent} does not exist: create it first")
    model = build_run_model(manifest)
    load_named(model, params)
    staging = out_dir.with_name(f".{out_dir.name}.export-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        if manifest.model.spec.startswith("hf:"):
            _write_hf(model, manifest, staging, tokenizer_bytes)
        else:
            _write_plain(model, manifest, staging, tokenizer_bytes)
        for path in staging.rglob("*"):
            if path.is_file():
                with open(path, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
        fsync_dir(out_dir.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def _write_hf(
    model, manifest: manifest_pb2.RunManifest, staging: Path, tokenizer_bytes: bytes | None
) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our CLI prints what was written; no bars on stderr
    network_of(model).save_pretrained(staging, safe_serialization=True)
    data = tokenizer_bytes if tokenizer_bytes is not None else byte_tokenizer_json()
    specials = special_tokens(data)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(data.decode("utf-8")),
        model_max_length=manifest.model.seq_len,
        eos_token=specials[0] if specials else None,
        model_input_names=["input_ids", "attention_mask"],  # a causal LM takes no token_type_ids
    )
    tok.save_pretrained(staging)


def _write_plain(
    model, manifest: manifest_pb2.RunManifest, staging: Path, tokenizer_bytes: bytes | None
) -> None:
    from safetensors.torch import save_file

    net = network_of(model)
    tensors = {name: p.detach().clone().contiguous() for name, p in net.named_parameters()}
    md = manifest.model
    save_file(
        tensors, str(staging / "model.safetensors"), metadata={"format": "pt", "run_id": manifest.run_id}
    )
    config = {
        "format": EXPORT_FORMAT,
        "model": md.spec or md.name,
        "vocab_size": md.vocab_size,
        "seq_len": md.seq_len,
        "tokenizer": manifest.tokenizer.kind or "bytes",
        "fingerprint": md.fingerprint,
        "run_id": manifest.run_id,
    }
    if not md.spec:  # built-in GPT: its shape, so it can be rebuilt without barnraise's presets
        config.update(d_model=md.d_model, n_layer=md.n_layer, n_head=md.n_head, tied_embeddings=True)
    (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer_bytes is not None:
        (staging / TOKENIZER_FILE).write_bytes(tokenizer_bytes)
