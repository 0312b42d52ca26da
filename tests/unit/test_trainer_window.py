"""A compute window ends near its deadline even when one inner step takes a large share of it."""

from __future__ import annotations

import time

import pytest
import torch

from barnraise.coordinator.manifest import model_config
from barnraise.peer.training.device import DeviceInfo
from barnraise.peer.training.model import build_model
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import manifest_pb2

pytestmark = pytest.mark.timeout(60)

CPU = DeviceInfo(device=torch.device("cpu"), description="cpu", memory_bytes=0, autocast_dtype=None)


def _trainer(step_s: float) -> InnerTrainer:
    cfg = manifest_pb2.TrainingConfig(inner_lr=1e-3, batch_size=1, grad_clip=1.0)
    t = InnerTrainer(build_model(model_config("gpt-nano", 256), 1), cfg, CPU)

    def slow_step(x, y) -> torch.Tensor:
        time.sleep(step_s)
        return torch.tensor(1.0)

    t.step_async = slow_step
    return t


def _batch(n: int):
    return torch.zeros(n, 64, dtype=torch.long), torch.zeros(n, 64, dtype=torch.long)


def test_a_step_that_would_overrun_by_more_than_half_is_not_started():
    t = _trainer(0.4)
    t.train_until(time.time() + 0.5, _batch, lambda: False)  # learns the step time
    start = time.time()
    deadline = start + 1.1  # room for 2.75 steps: the third would end 0.1 s late, a fourth 0.5 s
    res = t.train_until(deadline, _batch, lambda: False)
    assert res.steps == 3
    assert time.time() - deadline < 0.3  # never a whole step past the deadline
    assert t.step_s == pytest.approx(0.4, abs=0.1)


def test_the_first_window_starts_a_step_without_a_history():
    t = _trainer(0.05)
    res = t.train_until(time.time() + 0.3, _batch, lambda: False)
    assert res.steps >= 3
