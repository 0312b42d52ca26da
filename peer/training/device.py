"""Device choice and batch fitting: every peer's inner step means the same batch size.

On CUDA the largest micro-batch that fits is found by probing (halving on out-of-memory) and the
configured batch is made up by gradient accumulation, under bf16 autocast; on CPU the thread count
is set so that several local peers do not oversubscribe the cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    device: torch.device
    description: str  # shown in status, e.g. "cpu (4 threads)" or "cuda:0 NVIDIA H100"
    memory_bytes: int  # accelerator memory, or 0 on CPU
    autocast_dtype: torch.dtype | None  # bf16 on CUDA, None on CPU


def pick_device(requested: str = "auto", threads: int = 0) -> DeviceInfo:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            from barnraise.coordinator.errors import ConfigError

            raise ConfigError("--device cuda requested but no CUDA device is visible; use --device cpu")
        dev = torch.device(requested if ":" in requested else "cuda:0")
        props = torch.cuda.get_device_properties(dev)
        bf16 = torch.cuda.is_bf16_supported()
        return DeviceInfo(
            device=dev,
            description=f"{dev} {props.name}",
            memory_bytes=props.total_memory,
            autocast_dtype=torch.bfloat16 if bf16 else torch.float16,
        )
    n = threads or max(1, (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return DeviceInfo(
        device=torch.device("cpu"), description=f"cpu ({n} threads)", memory_bytes=0, autocast_dtype=None
    )


def fit_micro_batch(step_fn, batch_size: int, info: DeviceInfo) -> int:
    """Largest micro-batch (a divisor-friendly power-of-two split of ``batch_size``) that runs.

    ``step_fn(n)`` runs forward+backward on ``n`` sequences; on CPU the whole batch is used.
    """
    if info.device.type != "cuda":
        return batch_size
    micro = batch_size
    while micro >= 1:
        try:
            step_fn(micro)
            torch.cuda.synchronize(info.device)
            return micro
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            micro //= 2
            log.info("out of memory; trying micro-batch %d", micro)
    from barnraise.coordinator.errors import ConfigError

    raise ConfigError(
        "the model does not fit this GPU even with micro-batch 1; use a smaller model or --device cpu"
    )
