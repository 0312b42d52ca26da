"""Device choice: which device a peer computes on, and in which precision.

``--device`` is ``auto`` (CUDA when visible, else the CPU), ``cpu``, ``cuda`` (any CUDA device) or
``cuda:N`` (that one). Several peers on one machine each take an identity slot (peer/slots.py);
with ``auto`` or ``cuda`` on a box with several GPUs, slot n computes on ``cuda:(n mod count)``,
so plain commands spread over the GPUs instead of piling onto ``cuda:0``. CUDA computes under
autocast: bf16 where the GPU has it natively, else fp16 with a gradient scaler (fp16's range is
too small for raw gradients). On CPU the thread count is set so that several local peers do not
oversubscribe the cores, and nothing else changes: that path is what CI and the demo run.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

import torch

from barnraise.coordinator.errors import ConfigError

log = logging.getLogger(__name__)

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
_SPEC = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True, kw_only=True)
class DeviceSpec:
    """What ``--device`` asked for, checked for syntax only (no device is touched)."""

    kind: str  # "auto", "cpu" or "cuda"
    index: int | None = None  # cuda:N's N; None: chosen from the identity slot


@dataclass(frozen=True, kw_only=True)
class DeviceInfo:
    device: torch.device
    description: str  # shown in status, e.g. "cpu (4 threads)" or "cuda:0 NVIDIA H100"
    memory_bytes: int  # accelerator memory, or 0 on CPU
    autocast_dtype: torch.dtype | None  # bf16 (or fp16 without bf16) on CUDA, None on CPU

    @property
    def precision(self) -> str:
        """What the forward computes in: "fp32", "bf16" or "fp16"."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype, "fp32")

    @property
    def scales_gradients(self) -> bool:
        """fp16 autocast needs a gradient scaler; bf16 has fp32's range and does not."""
        return self.autocast_dtype == torch.float16


def parse_device(text: str) -> DeviceSpec:
    """``--device``'s value; a bad one is a one-line ConfigError."""
    m = _SPEC.fullmatch(text.strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"--device {text!r} is not a device: use {DEVICE_CHOICES}")
    return DeviceSpec(kind=m.group(1), index=None if m.group(2) is None else int(m.group(2)))


def resolve_device(spec: DeviceSpec, cuda_count: int, slot: int = 0) -> str:
    """The device name a peer in identity ``slot`` uses on a machine with ``cuda_count`` GPUs."""
    if spec.kind == "cpu" or (spec.kind == "auto" and cuda_count == 0):
        return "cpu"
    if cuda_count == 0:
        raise ConfigError(
            f"--device {spec.kind} asks for CUDA but no CUDA device is visible; use --device cpu"
        )
    if spec.index is None:
        return f"cuda:{slot % cuda_count}"
    if spec.index >= cuda_count:
        raise ConfigError(
            f"--device cuda:{spec.index} asks for a GPU this machine lacks: it has {cuda_count} "
            f"(cuda:0 to cuda:{cuda_count - 1})"
        )
    return f"cuda:{spec.index}"


def pick_device(requested: str = "auto", threads: int = 0, slot: int = 0) -> DeviceInfo:
    """The device of ``--device requested`` for the peer in identity ``slot``."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = resolve_device(parse_device(requested), count, slot)
    if name.startswith("cuda"):
        return cuda_info(torch.device(name))
    n = threads or max(1, (os.cpu_count() or 1))
    torch.set_num_threads(n)
    return DeviceInfo(
        device=torch.device("cpu"), description=f"cpu ({n} threads)", memory_bytes=0, autocast_dtype=None
    )


def cuda_info(dev: torch.device) -> DeviceInfo:
    """A CUDA device made current (so autocast, the allocator and the scaler all use it)."""
    torch.cuda.set_device(dev)
    props = torch.cuda.get_device_properties(dev)
    try:  # emulated bf16 (pre-Ampere) is slower than fp16 with a scaler
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3
        bf16 = torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16
    log.info("%s %s: %.1f GiB, autocast %s", dev, props.name, props.total_memory / 2**30, dtype)
    return DeviceInfo(
        device=dev, description=f"{dev} {props.name}", memory_bytes=props.total_memory, autocast_dtype=dtype
    )


def synchronize(info: DeviceInfo) -> None:
    """Wait for the device's queued work (a no-op on CPU, which runs in order)."""
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)


def peak_memory(info: DeviceInfo, reset: bool = False) -> int:
    """Peak bytes allocated on the device since the last reset (0 on CPU, where it is not tracked)."""
    if info.device.type != "cuda":
        return 0
    peak = torch.cuda.max_memory_allocated(info.device)
    if reset:
        torch.cuda.reset_peak_memory_stats(info.device)
    return peak
