"""Build the run's network from the manifest's model config: a built-in GPT, a transformers causal
LM from its ``config.json``, or a Python factory (``py:package.module:factory?key=value``).

Every kind is built under the run's seed on the CPU in fp32 and answers one calling convention,
``model(idx, targets=None) -> (logits, loss)``, the one the trainer, export and sampling use. The
built-in GPT already does; the others are wrapped in ``LanguageModel``, whose parameters are the
wrapped network's (``network_of`` reaches it), so parameter names are the network's own:
``model.layers.0.mlp.up_proj.weight`` for a transformers Llama, exactly as ``save_pretrained`` names
them.

The ``py:`` contract: ``factory(**kwargs)`` returns a ``torch.nn.Module``. kwargs are the spec's
``key=value`` pairs (values read as JSON scalars where they parse: ``7``, ``0.5``, ``true``; else
strings) plus ``vocab_size`` (the tokenizer's) when the factory takes that parameter and the spec
does not set it. ``module(idx)`` takes token ids (int64, ``[batch, seq]``) and returns logits
``[batch, seq, vocab]``; a module whose ``forward`` takes a second parameter ``targets`` is called
as ``module(idx, targets)`` while training and may return the loss (a scalar), ``(logits, loss)`` or
logits. barnraise computes the next-token cross-entropy whenever only logits come back.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from barnraise.coordinator.errors import ConfigError
from barnraise.protos import manifest_pb2

HF_INSTALL_HINT = "pip install 'barnraise[hf]'"


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` and leave the caller's RNG state as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


class LanguageModel(nn.Module):
    """A transformers causal LM or a ``py:`` module, called as ``(idx, targets) -> (logits, loss)``."""

    def __init__(self, net: nn.Module, kind: str):
        super().__init__()
        self.net = net
        self.kind = kind  # "hf" or "py"
        self._takes_targets = kind == "py" and _takes_targets(net)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if self.kind == "hf":
            logits, loss = self.net(input_ids=idx, use_cache=False).logits, None
        elif targets is not None and self._takes_targets:
            logits, loss = _split_output(self.net(idx, targets))
        else:
            logits, loss = _split_output(self.net(idx))
        if targets is not None and loss is None:
            if logits is None:
                raise ConfigError("the py: model returned neither logits nor a loss")
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss


def _takes_targets(net: nn.Module) -> bool:
    try:
        params = list(inspect.signature(net.forward).parameters)
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and params[1] == "targets"


def _split_output(out) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(logits, loss) from what a ``py:`` module returned: logits, a scalar loss, a pair, or an
    object with ``logits``/``loss`` attributes (a transformers output)."""
    if isinstance(out, torch.Tensor):
        return (None, out) if out.dim() == 0 else (out, None)
    if isinstance(out, (tuple, list)) and len(out) == 2:
        return out[0], out[1]
    if hasattr(out, "logits"):
        return out.logits, getattr(out, "loss", None)
    raise ConfigError(f"the py: model returned a {type(out).__name__}: return logits, a loss or both")


def network_of(model: nn.Module) -> nn.Module:
    """The module whose parameter names are the run's state names (the wrapped one, if wrapped)."""
    return model.net if isinstance(model, LanguageModel) else model


def build_network(cfg: manifest_pb2.ModelConfig, seed: int) -> nn.Module:
    """The run's model, identical on every machine with the same libraries (CPU RNG, seeded, fp32)."""
    spec = cfg.spec
    if spec.startswith("hf:"):
        return build_hf(cfg.hf_config, seed, where=spec)
    if spec.startswith("py:"):
        return build_py(spec, seed, vocab_size=cfg.vocab_size)
    from barnraise.coordinator.gpt import build_model

    return build_model(cfg, seed)


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"hf: models need the transformers library: {HF_INSTALL_HINT}") from None
    return transformers


def hf_config(config_bytes: bytes, where: str):
    """A transformers config object from ``config.json`` bytes; ConfigError naming what is wrong."""
    transformers = import_transformers()
    try:
        data = json.loads(config_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not a JSON config ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{where}: a transformers config.json needs a string 'model_type'")
    model_type = data.pop("model_type")
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).split(". ")[0][:160]
        raise ConfigError(
            f"{where}: transformers {transformers.__version__} cannot read this config ({first})"
        ) from None


def build_hf(config_bytes: bytes, seed: int, *, where: str = "hf config") -> LanguageModel:
    transformers = import_transformers()
    config = hf_config(config_bytes, where)
    try:
        with seeded(seed):
            net = transformers.AutoModelForCausalLM.from_config(
                config, **{_dtype_kw(transformers): torch.float32}
            )
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).split("\n")[0].split(". ")[0][:200]
        raise ConfigError(f"{where}: not a causal LM transformers can build ({first})") from None
    return LanguageModel(net.float(), "hf")


def _dtype_kw(transformers) -> str:
    """transformers 5 names the dtype argument ``dtype``; 4.x calls it ``torch_dtype``."""
    return "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


_ENTRY = re.compile(r"^py:([A-Za-z_][\w.]*):([A-Za-z_]\w*)(?:\?(.*))?$")


def parse_py_spec(spec: str) -> tuple[str, str, dict]:
    """``py:package.module:factory?k=v&k2=v2`` -> (module, factory, kwargs)."""
    m = _ENTRY.match(spec)
    if m is None:
        raise ConfigError(
            f"model {spec!r}: write a Python entry point as py:package.module:factory[?key=value&...]"
        )
    kwargs: dict = {}
    for pair in filter(None, (m.group(3) or "").split("&")):
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise ConfigError(f"model {spec!r}: argument {pair!r} is not key=value")
        kwargs[key] = _scalar(value)
    return m.group(1), m.group(2), kwargs


def _scalar(text: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (int, float, bool)) else text


def build_py(spec: str, seed: int, *, vocab_size: int) -> LanguageModel:
    module_name, factory_name, kwargs = parse_py_spec(spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"model {spec}: cannot import {module_name} ({e}); install the package that provides it"
        ) from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ConfigError(f"model {spec}: {module_name} has no callable {factory_name}")
    if "vocab_size" not in kwargs and _accepts(factory, "vocab_size"):
        kwargs["vocab_size"] = vocab_size
    try:
        with seeded(seed):
            net = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {spec}: {factory_name}() refused its arguments ({e})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(
            f"model {spec}: {factory_name}() returned a {type(net).__name__}, not a torch module"
        )
    return LanguageModel(net.float(), "py")


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def param_shapes(model: nn.Module) -> list[manifest_pb2.ParamShape]:
    """Every parameter's name, shape and dtype, in the order the flat state lays them out."""
    return [
        manifest_pb2.ParamShape(name=name, shape=list(p.shape), dtype=str(p.dtype).removeprefix("torch."))
        for name, p in network_of(model).named_parameters()
    ]
