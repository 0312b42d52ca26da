"""Will the run's model train on this device, and with what micro-batch? An estimate, before joining.

``barnraise doctor`` estimates first, then on CUDA runs the probe the peer itself runs
(``probe_micro_batch``: ``device.fit_micro_batch`` through ``InnerTrainer.fit``): memory = weights, gradients and AdamW's two moments (16 bytes a
parameter, fp32), plus on the CPU the global state the outer step keeps (parameters and momentum)
and the update vectors of averaging (20 bytes a parameter), plus activations per sequence of the
micro-batch: per block 34·s·h + 5·a·s² values (Korthikanti et al., 2022) in the compute dtype, and
the logits with their gradient. ``HEADROOM`` leaves room for the allocator and the framework.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from barnraise.protos import manifest_pb2

HEADROOM = 0.85  # share of the available memory the estimate may fill
STATIC_BYTES_PER_PARAM = {"cuda": 16, "cpu": 16 + 20}  # weights, grads, AdamW (+ CPU: state, averaging)
ACTIVATION_BYTES = {"cuda": 2, "cpu": 4}  # bf16 autocast on CUDA, fp32 on the CPU


@dataclass(frozen=True, kw_only=True)
class MemoryFit:
    params: int  # the model's parameters
    need_bytes: int  # estimated memory to train with ``micro_batch`` (or with 1 when nothing fits)
    available_bytes: int  # memory the device offers
    micro_batch: int  # largest micro-batch that fits; 0: not even one sequence


def count_model_params(model: manifest_pb2.ModelConfig) -> int:
    """Parameters of the run's model, built on the meta device (no memory, no init cost)."""
    from barnraise.peer.training.model import GPT

    with torch.device("meta"):
        return sum(p.numel() for p in GPT(model).parameters())


def activation_bytes(model: manifest_pb2.ModelConfig, device_type: str) -> int:
    """Activation memory of one sequence through forward and backward."""
    s, h, a, n = model.seq_len, model.d_model, model.n_head, model.n_layer
    per_block = 34 * s * h + 5 * a * s * s
    logits = 3 * s * model.vocab_size  # logits, softmax and their gradient
    return (n * per_block + logits) * ACTIVATION_BYTES.get(device_type, 4)


def training_bytes(params: int, model: manifest_pb2.ModelConfig, device_type: str, micro_batch: int) -> int:
    static = params * STATIC_BYTES_PER_PARAM.get(device_type, STATIC_BYTES_PER_PARAM["cpu"])
    return static + micro_batch * activation_bytes(model, device_type)


def fit(
    params: int, model: manifest_pb2.ModelConfig, batch_size: int, device_type: str, available_bytes: int
) -> MemoryFit:
    """The largest power-of-two micro-batch up to ``batch_size`` that fits. On the CPU the whole
    batch runs at once (``fit_micro_batch``), so it fits with ``batch_size`` or not at all."""
    budget = HEADROOM * available_bytes
    sizes = [batch_size] if device_type != "cuda" else _halvings(batch_size)
    for b in sizes:
        need = training_bytes(params, model, device_type, b)
        if need <= budget:
            return MemoryFit(params=params, need_bytes=need, available_bytes=available_bytes, micro_batch=b)
    need = training_bytes(params, model, device_type, 1 if device_type == "cuda" else batch_size)
    return MemoryFit(params=params, need_bytes=need, available_bytes=available_bytes, micro_batch=0)


def _halvings(n: int) -> list[int]:
    out = []
    while n >= 1:
        out.append(n)
        n //= 2
    return out


def available_memory(device: torch.device) -> int:
    """Free memory of a CUDA device, or the system's available RAM for the CPU (bytes)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def probe_micro_batch(manifest: manifest_pb2.RunManifest, info) -> int:
    """On CUDA, the probe the peer itself runs (``InnerTrainer.fit``: forward and backward, halving
    on out-of-memory) on random tokens through the run's model; the micro-batch found. ConfigError
    when not even one sequence fits. The memory is given back before returning."""
    from barnraise.peer.training.model import build_model
    from barnraise.peer.training.trainer import InnerTrainer

    model, vocab, seq = manifest.model, manifest.model.vocab_size, manifest.model.seq_len
    trainer = InnerTrainer(build_model(model, manifest.seed), manifest.training, info)
    try:
        trainer.fit(lambda n: (torch.randint(0, vocab, (n, seq)), torch.randint(0, vocab, (n, seq))))
        return trainer.micro_batch
    finally:
        del trainer
        torch.cuda.empty_cache()
