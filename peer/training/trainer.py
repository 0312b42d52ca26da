"""Inner (local) steps: AdamW on this peer's own batches until the round's compute window closes.

One step reads top to bottom: batch, forward (bf16 autocast on CUDA), backward, clip, step. The
batch is made up by gradient accumulation of micro-batches, so every peer's step means the same
number of sequences whatever its memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from barnraise.peer.training.device import DeviceInfo, fit_micro_batch
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)


@dataclass
class WindowResult:
    """What one compute window produced."""

    steps: int = 0
    samples: int = 0
    loss_sum: float = 0.0
    compute_s: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.steps if self.steps else math.nan


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
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.inner_lr, weight_decay=cfg.inner_weight_decay)
        self.micro_batch = cfg.batch_size

    def fit(self, sample_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Probe the largest micro-batch on CUDA (no-op on CPU)."""

        def probe(n: int) -> None:
            x, y = sample_batch(n)
            with self._autocast():
                _, loss = self.model(x.to(self.info.device), y.to(self.info.device))
            loss.backward()
            self.model.zero_grad(set_to_none=True)

        self.micro_batch = fit_micro_batch(probe, self.cfg.batch_size, self.info)

    def _autocast(self):
        if self.info.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.info.autocast_dtype)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step on (x, y), accumulated over micro-batches; returns the mean loss."""
        self.model.train()
        n = x.shape[0]
        total = 0.0
        for i in range(0, n, self.micro_batch):
            xb = x[i : i + self.micro_batch].to(self.info.device, non_blocking=True)
            yb = y[i : i + self.micro_batch].to(self.info.device, non_blocking=True)
            with self._autocast():
                _, loss = self.model(xb, yb)
            (loss * (xb.shape[0] / n)).backward()
            total += loss.item() * xb.shape[0]
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return total / n

    def train_until(
        self,
        deadline: float,
        next_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor] | None],
        should_stop: Callable[[], bool],
        slowdown: float = 1.0,
    ) -> WindowResult:
        """Inner steps until ``deadline``. ``slowdown`` > 1 sleeps (slowdown - 1) x each step's time
        after it: an injected fault (peer/injection.py) for tests and benchmarks of slow peers."""
        res = WindowResult()
        while time.time() < deadline and not should_stop():
            t0 = time.perf_counter()
            batch = next_batch(self.cfg.batch_size)
            if batch is None:
                break
            loss = self.step(*batch)
            if not math.isfinite(loss):
                log.warning("non-finite inner loss; skipping the rest of this window")
                break
            res.steps += 1
            res.samples += batch[0].shape[0]
            res.loss_sum += loss
            dt = time.perf_counter() - t0
            if slowdown > 1.0:
                time.sleep(min(dt * (slowdown - 1.0), max(0.0, deadline - time.time())))
            res.compute_s += time.perf_counter() - t0
        return res
