"""Export trained weights for use outside barnraise.

For the built-in GPTs: ``model.safetensors`` (the parameters by name) and ``config.json`` (the
model configuration and how to rebuild it), written with the crash-safe writes of
``coordinator/atomic.py`` so an export killed half-way leaves no file that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from google.protobuf.json_format import MessageToDict

from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import ConfigError
from barnraise.protos import manifest_pb2

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.json"


def export_model(
    manifest: manifest_pb2.RunManifest,
    params: dict[str, torch.Tensor],
    out_dir: Path,
    tokenizer_bytes: bytes | None,
) -> list[Path]:
    """Write ``params`` (by parameter name) as a model directory; returns the files written."""
    from safetensors.torch import save

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {out_dir}: {e.strerror}") from e
    config = {
        "barnraise_model": manifest.model.name,
        "architecture": "barnraise.gpt",
        "run_id": manifest.run_id,
        **MessageToDict(manifest.model, preserving_proto_field_name=True),
        "tied_embeddings": True,
    }
    tensors = {k: v.detach().float().contiguous().clone() for k, v in params.items()}
    written = [out_dir / WEIGHTS_FILE, out_dir / CONFIG_FILE]
    write_atomic(written[0], save(tensors, metadata={"format": "pt"}), mode=0o644)
    write_atomic(written[1], (json.dumps(config, indent=1) + "\n").encode(), mode=0o644)
    if tokenizer_bytes is not None:
        written.append(out_dir / TOKENIZER_FILE)
        write_atomic(written[-1], tokenizer_bytes, mode=0o644)
    return written
