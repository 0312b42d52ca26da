"""``init --model``: a built-in name, ``hf:PATH`` (a transformers ``config.json``) or ``py:ENTRY``,
turned into the manifest's ``ModelConfig``, and the fingerprint every peer checks before training.

``init`` builds the model once, so a config transformers cannot build is refused there, and records
every parameter's name, shape and dtype with their hash (the fingerprint). A peer builds the model
from the same spec and refuses to train when its own list differs (another transformers version,
another version of a ``py:`` package), naming the first parameter that differs: averaging parameters
laid out differently would mix unrelated numbers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from torch import nn

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.manifest import MODEL_PRESETS, model_config
from barnraise.coordinator.networks import build_network, hf_config, param_shapes, parse_py_spec
from barnraise.protos import manifest_pb2

MAX_CONFIG_BYTES = 1 << 20  # a config.json larger than this is not a config
HF_DEFAULT_SEQ_LEN = 512  # hf: context when --seq-len is not given, at most the model's own
PY_DEFAULT_SEQ_LEN = 256  # py: context when neither --seq-len nor the spec's seq_len says


def fingerprint(shapes: list[manifest_pb2.ParamShape]) -> str:
    h = hashlib.sha256()
    for s in shapes:
        h.update(f"{s.name}:{','.join(map(str, s.shape))}:{s.dtype}\n".encode())
    return h.hexdigest()


def first_mismatch(expected: list[manifest_pb2.ParamShape], got: list[manifest_pb2.ParamShape]) -> str | None:
    """What differs first between the run's parameter list and ours, in words; None if nothing."""

    def show(s: manifest_pb2.ParamShape) -> str:
        return f"{s.name} {list(s.shape)} {s.dtype}"

    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if (a.name, list(a.shape), a.dtype) != (b.name, list(b.shape), b.dtype):
            return f"parameter {i}: the run has {show(a)}, this peer builds {show(b)}"
    if len(expected) != len(got):
        more = expected[len(got)] if len(expected) > len(got) else got[len(expected)]
        side = "the run has" if len(expected) > len(got) else "this peer builds"
        return f"{side} {max(len(expected), len(got)) - min(len(expected), len(got))} more parameter(s), first {show(more)}"
    return None


def check_model(cfg: manifest_pb2.ModelConfig, model: nn.Module) -> None:
    """Refuse a model built here that differs from the one the run was initialised with."""
    if not cfg.fingerprint:
        return  # a manifest from before fingerprints: nothing to compare
    shapes = param_shapes(model)
    if fingerprint(shapes) == cfg.fingerprint:
        return
    why = first_mismatch(list(cfg.params), shapes) or "the fingerprints differ"
    built = f" (the run was built with {cfg.built_with})" if cfg.built_with else ""
    raise ConfigError(f"this peer's model {cfg.spec or cfg.name} differs from the run's{built}: {why}")


def _read_config(path_text: str, spec: str) -> tuple[Path, bytes]:
    path = Path(path_text).expanduser()
    if path.is_dir():
        path = path / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"model {spec}: {path} is over {MAX_CONFIG_BYTES >> 20} MiB; pass a config.json"
            )
        return path, path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"model {spec}: {path} does not exist; pass a transformers config.json") from None
    except OSError as e:
        raise ConfigError(f"model {spec}: cannot read {path}: {e.strerror}") from None


def _hf_seq_len(config, seq_len: int, spec: str) -> int:
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if seq_len and limit and seq_len > limit:
        raise ConfigError(f"model {spec}: --seq-len {seq_len} exceeds the config's {limit} positions")
    return seq_len or min(limit or HF_DEFAULT_SEQ_LEN, HF_DEFAULT_SEQ_LEN)


def _package_version(module_name: str) -> str:
    top = module_name.split(".")[0]
    try:
        return f"{top} {importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        return top


def spec_config(model: str, *, vocab_size: int, seed: int, seq_len: int = 0) -> manifest_pb2.ModelConfig:
    """The manifest's model config for ``--model`` (built once here to take its fingerprint)."""
    if model.startswith("hf:"):
        path, data = _read_config(model[3:], model)
        config = hf_config(data, model)
        size = getattr(config, "vocab_size", 0) or 0
        if size < vocab_size:
            raise ConfigError(
                f"model {model}: vocab_size {size} is smaller than the tokenizer's {vocab_size}; "
                f'set "vocab_size": {vocab_size} in {path}'
            )
        import transformers

        cfg = manifest_pb2.ModelConfig(
            name=f"hf:{config.model_type}",
            spec=f"hf:{path.name}",
            hf_config=data,
            vocab_size=size,
            seq_len=_hf_seq_len(config, seq_len, model),
            d_model=getattr(config, "hidden_size", 0) or 0,
            n_layer=getattr(config, "num_hidden_layers", 0) or 0,
            n_head=getattr(config, "num_attention_heads", 0) or 0,
            built_with=f"transformers {transformers.__version__}",
        )
    elif model.startswith("py:"):
        module_name, _, kwargs = parse_py_spec(model)
        given = kwargs.get("seq_len")
        cfg = manifest_pb2.ModelConfig(
            name=model.split("?")[0],
            spec=model,
            vocab_size=vocab_size,
            seq_len=seq_len or (given if isinstance(given, int) and given > 0 else PY_DEFAULT_SEQ_LEN),
            built_with=_package_version(module_name),
        )
    elif model in MODEL_PRESETS:
        cfg = model_config(model, vocab_size)
        if seq_len:
            cfg.seq_len = seq_len
    else:
        known = ", ".join(MODEL_PRESETS)
        raise ConfigError(
            f"unknown model {model!r}: choose one of {known}, hf:CONFIG.json or py:module:factory"
        )
    built = build_network(cfg, seed)
    shapes = param_shapes(built)
    cfg.params.extend(shapes)
    cfg.fingerprint = fingerprint(shapes)
    cfg.n_params = sum(p.numel() for p in built.parameters())
    return cfg
