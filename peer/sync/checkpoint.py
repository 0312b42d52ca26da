"""Checkpoint files: the global state as safetensors, written atomically, read back verified.

``model.safetensors`` holds the parameters by name (the model's ``named_parameters`` order is kept
in its metadata, so the flat state can be rebuilt without building the model), ``outer.safetensors``
the outer optimizer's momentum under the same names. The layout, ``state.json`` and pruning rules
are ``barnraise.coordinator.checkpoints``; a write goes into a temporary directory, every file
fsynced, then renamed into place whole, so a write killed half-way leaves only a temporary
directory that no reader opens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator.atomic import fsync_dir
from barnraise.coordinator.errors import BarnraiseError, IntegrityError
from barnraise.peer.sync.state import GlobalState, tensor_hash

log = logging.getLogger(__name__)

ORDER_KEY = "barnraise.order"  # safetensors metadata: the parameter names in flat order (JSON list)


def param_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each parameter in ``flat_params`` order (tied weights once), named as the
    network names them (``named_state``, what exports hold)."""
    from barnraise.peer.training.model import network_of

    return [(name, tuple(p.shape)) for name, p in network_of(model).named_parameters()]


def run_layout(manifest) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """(parameter count, layout) of the run's model, built from its seed (no training state);
    ConfigError if this machine builds a model unlike the run's."""
    from barnraise.peer.training.model import build_run_model

    layout = param_layout(build_run_model(manifest))
    return sum(int(torch.Size(s).numel()) for _, s in layout), layout


def split_flat(flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Named tensors (copies, so safetensors sees no shared storage) from a flat state."""
    out, offset = {}, 0
    for name, shape in layout:
        n = int(torch.Size(shape).numel())
        out[name] = flat[offset : offset + n].reshape(shape).clone()
        offset += n
    if offset != flat.numel():
        raise IntegrityError(f"a state of {flat.numel()} values does not fit a model of {offset}")
    return out


def _safetensors_bytes(tensors: dict[str, torch.Tensor], order: list[str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata={ORDER_KEY: json.dumps(order)})


def _write_synced(path: Path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(
    root: Path,
    state: GlobalState,
    layout: list[tuple[str, tuple[int, ...]]],
    info: rules.CheckpointInfo,
    keep: int = rules.DEFAULT_KEEP,
) -> Path:
    """Write ``state`` as ``ROOT/round-NNNNNN`` (``info`` gives the rest of state.json; its round,
    hash and file digests are filled in here), then keep the ``keep`` newest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / rules.dir_name(state.round)
    if final.exists():
        return final  # states are immutable: that round's checkpoint is this one
    tmp = root / f"{rules.TMP_PREFIX}{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        order = [name for name, _ in layout]
        files = {
            rules.MODEL_FILE: _write_synced(
                tmp / rules.MODEL_FILE, _safetensors_bytes(split_flat(state.params, layout), order)
            ),
            rules.OUTER_FILE: _write_synced(
                tmp / rules.OUTER_FILE, _safetensors_bytes(split_flat(state.momentum, layout), order)
            ),
        }
        info = replace(info, round=state.round, params_hash=state.params_hash(), files=files)
        _write_synced(tmp / rules.STATE_FILE, info.to_json())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    rules.prune(root, keep)
    return final


def _order_of(data: bytes) -> list[str]:
    """The parameter order from a safetensors file's metadata."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        order = json.loads(header["__metadata__"][ORDER_KEY])
        if not (isinstance(order, list) and all(isinstance(x, str) for x in order)):
            raise ValueError("not a list of names")
        return order
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(f"not a checkpoint tensor file ({e})") from e


def _read_flat(path: Path, expected_sha256: str) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as e:
        raise IntegrityError(f"{path.name} is unreadable ({e.strerror})") from e
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise IntegrityError(f"{path.name} does not match the sha256 in state.json")
    order = _order_of(data)
    try:
        tensors = load(data)
        flat = torch.cat([tensors[n].reshape(-1).float() for n in order]) if order else torch.zeros(0)
    except Exception as e:  # safetensors raises its own errors on a damaged file
        raise IntegrityError(f"{path.name} is damaged ({e})") from e
    return flat, order, tensors


def load_checkpoint(path: Path, numel: int | None = None) -> tuple[GlobalState, rules.CheckpointInfo]:
    """A checkpoint directory's state, every file checked; IntegrityError if anything is off."""
    info = rules.read_info(path)
    params, order, _ = _read_flat(path / rules.MODEL_FILE, info.files.get(rules.MODEL_FILE, ""))
    momentum, order2, _ = _read_flat(path / rules.OUTER_FILE, info.files.get(rules.OUTER_FILE, ""))
    if order != order2 or params.numel() != momentum.numel():
        raise IntegrityError("model and outer state files do not match")
    if numel is not None and params.numel() != numel:
        raise IntegrityError(f"checkpoint holds {params.numel()} parameters, the run's model {numel}")
    if not (torch.isfinite(params).all() and torch.isfinite(momentum).all()):
        raise IntegrityError("checkpoint holds non-finite values")
    if tensor_hash(params) != info.params_hash:
        raise IntegrityError("checkpoint params do not match the hash in state.json")
    return GlobalState(params=params, momentum=momentum, round=info.round), info


def newest_valid(
    root: Path, numel: int | None = None, round_no: int | None = None
) -> tuple[GlobalState, rules.CheckpointInfo, Path] | None:
    """The newest checkpoint under ``root`` that loads and checks out (or round ``round_no``'s);
    each one refused is logged in one line and the one before it tried."""
    for r, path in rules.list_checkpoints(root):
        if round_no is not None and r != round_no:
            continue
        try:
            state, info = load_checkpoint(path, numel)
        except BarnraiseError as e:
            log.warning("checkpoint %s refused: %s", path, e)
            continue
        return state, info, path
    return None


def named_params(path: Path) -> dict[str, torch.Tensor]:
    """The parameters of a checkpoint directory by name, checked (export, sample)."""
    info = rules.read_info(path)
    _, _, tensors = _read_flat(path / rules.MODEL_FILE, info.files.get(rules.MODEL_FILE, ""))
    return tensors
