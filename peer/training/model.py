"""The run's model on a peer: built from the manifest, checked against its fingerprint, and its flat
state viewed as named tensors (what checkpoints and exports hold).

Building lives on the coordinator's side (``coordinator/networks.py``, ``coordinator/gpt.py``)
because ``init`` builds the same model to take its fingerprint; the built-in GPT's names are
re-exported here for the code that builds one directly.
"""

from __future__ import annotations

import torch
from torch import nn

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.gpt import GPT, Block, build_model, count_params
from barnraise.coordinator.modelspec import check_model
from barnraise.coordinator.networks import LanguageModel, build_network, network_of
from barnraise.protos import manifest_pb2

__all__ = [
    "GPT",
    "Block",
    "LanguageModel",
    "build_model",
    "build_run_model",
    "count_params",
    "flat_from_named",
    "load_named",
    "named_state",
    "network_of",
]


def build_run_model(manifest: manifest_pb2.RunManifest) -> nn.Module:
    """The run's model from its seed, called as ``model(idx, targets=None) -> (logits, loss)``.

    Raises ConfigError (one line, naming the first differing parameter) when the model this machine
    builds is not the one the run was initialised with.
    """
    model = build_network(manifest.model, manifest.seed)
    check_model(manifest.model, model)
    return model


def named_state(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A flat state (``GlobalState.params``) as ``{parameter name: tensor}``, in the model's order.

    The names are the network's own (``network_of``); tied parameters appear once, under the first
    name. The tensors are views of ``flat``: clone them before changing them.
    """
    params = list(network_of(model).named_parameters())
    total = sum(p.numel() for _, p in params)
    if total != flat.numel():
        raise ConfigError(f"a state of {flat.numel()} values does not fit this model's {total} parameters")
    out, offset = {}, 0
    for name, p in params:
        out[name] = flat[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    return out


def flat_from_named(model: nn.Module, named: dict[str, torch.Tensor]) -> torch.Tensor:
    """The flat fp32 state from ``{parameter name: tensor}``; ConfigError on a missing or misshapen one."""
    parts = []
    for name, p in network_of(model).named_parameters():
        t = named.get(name)
        if t is None:
            raise ConfigError(f"the state has no parameter {name}")
        if tuple(t.shape) != tuple(p.shape):
            raise ConfigError(
                f"parameter {name} is {list(t.shape)} in the state, {list(p.shape)} in the model"
            )
        parts.append(t.detach().reshape(-1).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0)


def load_named(model: nn.Module, named: dict[str, torch.Tensor]) -> None:
    """Copy ``{parameter name: tensor}`` into the model (every parameter must be there, finite)."""
    flat = flat_from_named(model, named)
    if not torch.isfinite(flat).all():
        raise ConfigError("the state holds non-finite values")
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n
