"""Inner (local) steps: AdamW on this peer's own batches until the round's compute window closes.

One step reads top to bottom: batch to the device, forward (autocast on CUDA), backward, clip,
step. The batch is made up by gradient accumulation of micro-batches (peer/training/microbatch.py
finds the largest that fits), so every peer's step means the same number of sequences whatever its
memory. Nothing in a step waits for the device: the loss is summed on the device and read on the
host every ``LOSS_READ_STEPS`` steps and at the window's end, so a GPU is never idle while the
host asks how the last micro-batch went. On CPU, which runs in order, a read costs nothing, so the
loss is read after every step and a non-finite one ends the window at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from barnraise.peer.training.device import DeviceInfo, peak_memory, synchronize
from barnraise.peer.training.microbatch import ProbeResult, probe_micro_batch, release_memory
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

LOSS_READ_STEPS = (
    8  # CUDA inner steps between host reads of the window's loss (each read waits for the device)
)


@dataclass
class WindowResult:
    """What one compute window produced."""

    steps: int = 0  # inner steps taken
    samples: int = 0  # sequences trained
    loss_sum: float = 0.0  # sum of the steps' mean losses, over ``loss_steps`` steps
    loss_steps: int = 0  # steps in ``loss_sum``: all, unless a read found a non-finite loss
    compute_s: float = 0.0  # seconds computing (the device's queue drained at the end)
    peak_memory_bytes: int = 0  # device memory at the window's peak (0 on CPU)

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.loss_steps if self.loss_steps else math.nan


def grad_scaler():
    """fp16's gradient scaler (``torch.amp`` has it from torch 2.3; ``torch.cuda.amp`` before)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


class InnerTrainer:
    def __init__(
        self,
        model: torch.nn.Module,
        cfg: manifest_pb2.TrainingConfig,
        info: DeviceInfo,
    ):
        self.model = model.to(info.device)
        self.cfg = cfg
        self.info = info
        self.opt = torch.optim.AdamW(
            model.parameters(),
            lr=cfg.inner_lr,
            weight_decay=cfg.inner_weight_decay,
            **({"fused": True} if info.device.type == "cuda" else {}),
        )
        self.scaler = grad_scaler() if info.scales_gradients else None
        self.micro_batch = cfg.batch_size
        self.probe: ProbeResult | None = None  # what fit() found

    def fit(
        self,
        sample_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        before_try: Callable[[int], None] | None = None,
    ) -> ProbeResult:
        """Probe the largest micro-batch that fits (microbatch.py). On CPU the whole batch is used,
        unless a test hook (``before_try``, e.g. ``injected_oom``) stands for a small GPU."""
        bs = self.cfg.batch_size
        if self.info.device.type != "cuda" and before_try is None:
            self.probe = ProbeResult(micro_batch=bs, batch_size=bs, tried=(), peak_memory_bytes=0)
            return self.probe

        def try_batch(n: int) -> int:
            peak_memory(self.info, reset=True)
            x, y = (t.to(self.info.device) for t in sample_batch(n))
            with self._autocast():
                _, loss = self.model(x, y)
            loss.backward()
            synchronize(self.info)
            return peak_memory(self.info)

        def free() -> None:
            self.model.zero_grad(set_to_none=True)
            release_memory(self.info.device)

        reserve = self._optimizer_reserve()  # AdamW's moments, allocated at the first real step
        try:
            self.probe = probe_micro_batch(try_batch, bs, free, before_try)
        finally:
            del reserve
            free()
        self.micro_batch = self.probe.micro_batch
        log.info("%s on %s", self.probe, self.info.description)
        return self.probe

    def _optimizer_reserve(self) -> torch.Tensor | None:
        """Device memory standing for the optimizer state the probe's tries must leave room for."""
        if self.info.device.type != "cuda" or self.opt.state:
            return None
        numel = sum(p.numel() for p in self.model.parameters())
        return torch.empty(2 * numel, dtype=torch.float32, device=self.info.device)

    def _autocast(self):
        if self.info.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.info.autocast_dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on (x, y); returns the mean loss (waiting for the device)."""
        return float(self.step_async(x, y))

    def step_async(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on (x, y), accumulated over micro-batches; the mean loss stays on the
        device. An out-of-memory error mid-step (fragmentation, another process on the GPU) halves
        the micro-batch and redoes the step from its start."""
        self.model.train()
        x = x.to(self.info.device, non_blocking=True)
        y = y.to(self.info.device, non_blocking=True)
        while True:
            failed = False
            try:
                loss = self._accumulate(x, y)
            except torch.cuda.OutOfMemoryError:
                if self.micro_batch == 1:
                    raise
                failed = True
            if not failed:
                break
            self.opt.zero_grad(set_to_none=True)  # outside the except block, so the memory goes
            release_memory(self.info.device)
            self.micro_batch //= 2
            log.warning("out of memory in an inner step; micro-batch now %d", self.micro_batch)
        self._apply_gradients()
        return loss

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradients of the whole batch's mean loss, one micro-batch at a time; that loss, on the device."""
        n, m = x.shape[0], self.micro_batch
        total: torch.Tensor | None = None
        for i in range(0, n, m):
            xb, yb = x[i : i + m], y[i : i + m]
            with self._autocast():
                _, loss = self.model(xb, yb)
            share = loss * (xb.shape[0] / n)
            (share if self.scaler is None else self.scaler.scale(share)).backward()
            total = share.detach() if total is None else total + share.detach()
        return total

    def _apply_gradients(self) -> None:
        params = self.model.parameters()
        if self.scaler is None:
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.opt.step()
        else:  # fp16: clip the true gradients; the scaler skips a step whose gradients overflowed
            self.scaler.unscale_(self.opt)
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)

    def train_until(
        self,
        deadline: float,
        next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor] | None],
        should_stop: Callable[[], bool],
        slowdown: float = 1.0,
    ) -> WindowResult:
        """Inner steps until ``deadline``. ``slowdown`` > 1 sleeps (slowdown - 1) x each step's time
        after it: ``peer --max-compute-share`` (a device that rests), or an injected fault
        (peer/injection.py) for tests and benchmarks of slow peers."""
        res = WindowResult()
        start = time.perf_counter()
        peak_memory(self.info, reset=True)
        loss_sum: torch.Tensor | None = None
        every = LOSS_READ_STEPS if self.info.device.type == "cuda" else 1
        while time.time() < deadline and not should_stop():
            t0 = time.perf_counter()
            batch = next_batch(self.cfg.batch_size)
            if batch is None:
                break
            loss = self.step_async(*batch)
            loss_sum = loss if loss_sum is None else loss_sum + loss
            res.steps += 1
            res.samples += batch[0].shape[0]
            if slowdown > 1.0:
                synchronize(self.info)
                dt = time.perf_counter() - t0
                time.sleep(min(dt * (slowdown - 1.0), max(0.0, deadline - time.time())))
            if res.steps % every == 0 and not self._read_loss(res, loss_sum):
                break
        if loss_sum is not None and res.steps % every:
            self._read_loss(res, loss_sum)
        res.compute_s = time.perf_counter() - start
        res.peak_memory_bytes = peak_memory(self.info)
        return res

    def _read_loss(self, res: WindowResult, loss_sum: torch.Tensor) -> bool:
        """Read the window's loss sum on the host (waits for the device). Non-finite: the window's
        loss stays what it was at the last finite read, and the window ends."""
        value = float(loss_sum)
        if math.isfinite(value):
            res.loss_sum, res.loss_steps = value, res.steps
            return True
        log.warning("non-finite inner loss; skipping the rest of this window")
        return False
