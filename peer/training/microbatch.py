"""The micro-batch probe: the largest micro-batch whose forward and backward fit the device.

Every peer's inner step means the same number of sequences (the run's ``batch_size``), whatever
its memory: a peer whose GPU cannot hold the whole batch splits it into micro-batches and
accumulates their gradients (peer/training/trainer.py). The probe tries the whole batch, then
halves on out-of-memory, freeing what the failed try held before the next one; it reports every
size it tried, the one that fit and the peak memory of that try.

The probe runs where memory is finite and an out-of-memory error is recoverable: on CUDA. On CPU
the whole batch is used (an allocation failure there is the operating system's, not ours to
catch). Tests stand for a small GPU with ``oom_above``: a try larger than it fails as CUDA would.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from barnraise.coordinator.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProbeResult:
    micro_batch: int  # sequences per forward/backward; the batch is accumulated over ceil(batch / this)
    batch_size: int  # the run's sequences per inner step
    tried: tuple[int, ...]  # micro-batches tried, largest first; the last one fit
    peak_memory_bytes: int  # device memory at the peak of the try that fit (0 on CPU)

    @property
    def accumulation(self) -> int:
        """Micro-batches per inner step."""
        return -(-self.batch_size // self.micro_batch)

    def __str__(self) -> str:
        tried = ", ".join(map(str, self.tried)) or "none"
        return (
            f"micro-batch {self.micro_batch} of {self.batch_size} ({self.accumulation} per step; "
            f"tried {tried}; peak {self.peak_memory_bytes / 2**20:.0f} MiB)"
        )


def injected_oom(limit: int) -> Callable[[int], None]:
    """A test hook: a try of more than ``limit`` sequences fails as a CUDA out-of-memory would."""

    def check(n: int) -> None:
        if n > limit:
            raise torch.cuda.OutOfMemoryError(f"injected: micro-batch {n} > {limit}")

    return check


def probe_micro_batch(
    try_batch: Callable[[int], int],
    batch_size: int,
    free: Callable[[], None],
    before_try: Callable[[int], None] | None = None,
) -> ProbeResult:
    """The largest of ``batch_size``, ``batch_size // 2``, ..., 1 for which ``try_batch(n)`` (a
    forward and backward on ``n`` sequences, returning the peak memory it took) raises no
    out-of-memory error. ``free()`` releases what a failed try held; ``before_try(n)`` is the test
    hook that may fail a try first. Raises ConfigError when even one sequence does not fit."""
    tried: list[int] = []
    n = batch_size
    while n >= 1:
        tried.append(n)
        failed = False
        try:
            if before_try is not None:
                before_try(n)
            peak = try_batch(n)
        except torch.cuda.OutOfMemoryError as e:
            failed = True
            log.info("micro-batch %d does not fit (%s); trying %d", n, str(e).split("\n")[0][:120], n // 2)
        if not failed:
            return ProbeResult(
                micro_batch=n, batch_size=batch_size, tried=tuple(tried), peak_memory_bytes=peak
            )
        free()  # outside the except block: its traceback no longer pins the failed try's tensors
        n //= 2
    raise ConfigError(
        f"the model does not fit this device even with micro-batch 1 (tried {', '.join(map(str, tried))}); "
        "use a smaller model, a larger GPU, or --device cpu"
    )


def release_memory(device: torch.device) -> None:
    """Return a failed try's memory: collect its garbage and empty the CUDA allocator's cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
