"""The inner trainer on CPU: the micro-batch probe (an out-of-memory error injected by a test hook),
gradient accumulation, and the step that waits for the device only once a window's loss is read
(peer/training/microbatch.py, peer/training/trainer.py). The same on CUDA: test_cuda.py."""

from __future__ import annotations

import sys
from dataclasses import asdict

import pytest
import torch

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.manifest import TrainingDefaults, model_config
from barnraise.peer.training.device import DeviceInfo
from barnraise.peer.training.microbatch import injected_oom, probe_micro_batch
from barnraise.peer.training.model import build_model
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import manifest_pb2

pytestmark = pytest.mark.timeout(120)

CPU = DeviceInfo(device=torch.device("cpu"), description="cpu", memory_bytes=0, autocast_dtype=None)
MODEL = model_config("gpt-nano", 256)


def training(batch_size: int = 16) -> manifest_pb2.TrainingConfig:
    return manifest_pb2.TrainingConfig(**asdict(TrainingDefaults(batch_size=batch_size)))


def batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def sample(n: int):
        x = torch.randint(0, 256, (n, MODEL.seq_len + 1), generator=g)
        return x[:, :-1], x[:, 1:]

    return sample


def trainer(batch_size: int = 16, model: torch.nn.Module | None = None) -> InnerTrainer:
    return InnerTrainer(model or build_model(MODEL, seed=5), training(batch_size), CPU)


def params(t: InnerTrainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in t.model.parameters()])


def test_the_probe_halves_on_out_of_memory_until_a_try_fits():
    t = trainer(16)
    before = params(t).clone()
    probe = t.fit(batches(), before_try=injected_oom(5))
    assert (probe.micro_batch, probe.tried, probe.accumulation) == (4, (16, 8, 4), 4)
    assert t.micro_batch == 4 and t.probe is probe
    assert "micro-batch 4 of 16 (4 per step; tried 16, 8, 4" in str(probe)
    assert torch.equal(params(t), before), "the probe must not move the parameters"
    assert all(p.grad is None for p in t.model.parameters()), "the probe's gradients are freed"
    assert not t.opt.state


def test_the_probe_keeps_the_whole_batch_when_it_fits_and_refuses_when_nothing_does():
    assert trainer(16).fit(batches(), before_try=injected_oom(16)).tried == (16,)
    with pytest.raises(
        ConfigError, match=r"does not fit this device even with micro-batch 1 \(tried 8, 4, 2, 1\)"
    ):
        trainer(8).fit(batches(), before_try=injected_oom(0))


def test_on_cpu_without_a_hook_nothing_is_tried():
    probe = trainer(16).fit(batches())
    assert (probe.micro_batch, probe.tried, probe.peak_memory_bytes) == (16, (), 0)


def test_a_failed_try_is_freed_after_its_exception_is_gone():
    freed = []

    def try_batch(n: int) -> int:
        if n > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 123

    probe = probe_micro_batch(try_batch, 12, free=lambda: freed.append(sys.exc_info()[1]))
    assert (probe.micro_batch, probe.tried, probe.peak_memory_bytes) == (3, (12, 6, 3), 123)
    assert freed == [None, None], "free() ran inside the except block, where the failed try is still alive"


def grads(t: InnerTrainer) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in t.model.parameters()])


@pytest.mark.parametrize("batch, micro", [(16, 4), (16, 1), (10, 4)])
def test_accumulated_micro_batches_give_one_batchs_gradient_and_step(batch, micro):
    whole, split = trainer(batch), trainer(batch)
    split.micro_batch = micro
    x, y = batches(1)(batch)
    assert float(whole._accumulate(x, y)) == pytest.approx(float(split._accumulate(x, y)), rel=1e-6)
    torch.testing.assert_close(grads(split), grads(whole), rtol=1e-4, atol=1e-8)
    whole._apply_gradients()
    split._apply_gradients()
    sample = batches(2)
    for _ in range(2):
        x, y = sample(batch)
        assert whole.step(x, y) == pytest.approx(split.step(x, y), rel=1e-5)
    # Adam divides by the gradient's own scale, so near-zero gradients amplify rounding: lr-sized atol
    torch.testing.assert_close(params(split), params(whole), rtol=1e-4, atol=5e-5)
    assert not torch.equal(params(whole), params(trainer(batch))), "the steps moved nothing"


class Tight(torch.nn.Module):
    """A model on a device that cannot hold more than ``limit`` sequences at once."""

    def __init__(self, inner: torch.nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x, y):
        injected_oom(self.limit)(x.shape[0])
        return self.inner(x, y)


def test_out_of_memory_mid_step_halves_the_micro_batch_and_redoes_the_step():
    roomy, tight = trainer(16), trainer(16, Tight(build_model(MODEL, seed=5), limit=5))
    x, y = batches(2)(16)
    assert tight.step(x, y) == pytest.approx(roomy.step(x, y), rel=1e-5)
    assert tight.micro_batch == 4
    torch.testing.assert_close(params(tight), params(roomy), rtol=1e-4, atol=5e-5)
    assert all(p.grad is None for p in tight.model.parameters())


def test_a_step_reads_nothing_back_from_the_device(monkeypatch):
    t = trainer(16)
    t.micro_batch = 4
    x, y = batches()(16)

    def sync(*_args, **_kw):
        raise AssertionError("a micro-batch waited for the device")

    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    loss = t._accumulate(x, y)
    monkeypatch.undo()
    assert isinstance(loss, torch.Tensor) and loss.shape == () and loss.requires_grad is False


def test_a_window_counts_steps_and_samples_and_reads_its_loss():
    import time

    t = trainer(8)
    sample, steps = batches(), []

    def next_batch(n):
        return sample(n) if len(steps) < 5 and not steps.append(n) else None

    res = t.train_until(time.time() + 60, next_batch, lambda: False)
    assert (res.steps, res.loss_steps, res.samples, res.peak_memory_bytes) == (5, 5, 40, 0)
    assert 4.0 < res.mean_loss < 6.5 and res.compute_s > 0


class NaNAfter(torch.nn.Module):
    """A model whose loss turns to NaN from its ``n``-th forward on."""

    def __init__(self, inner: torch.nn.Module, n: int):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x, y):
        self.calls += 1
        logits, loss = self.inner(x, y)
        return logits, loss * float("nan") if self.calls >= self.n else loss


def test_a_non_finite_loss_ends_the_window_and_keeps_the_finite_mean():
    import time

    t = trainer(4, NaNAfter(build_model(MODEL, seed=5), n=4))
    res = t.train_until(time.time() + 60, batches(), lambda: False)
    assert (res.steps, res.loss_steps) == (4, 3), "on CPU the loss is read after every step"
    assert 4.0 < res.mean_loss < 6.5


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_the_fp16_path_unscales_clips_and_steps_through_its_scaler():
    """On CPU the scaler is disabled (it has no CUDA to scale on) but the fp16 branch runs whole."""
    info = DeviceInfo(
        device=torch.device("cpu"), description="cpu", memory_bytes=0, autocast_dtype=torch.float16
    )
    t = InnerTrainer(build_model(MODEL, seed=5), training(8), info)
    assert t.scaler is not None
    before = params(t).clone()
    x, y = batches()(8)
    losses = [t.step(x, y) for _ in range(3)]
    assert all(4.0 < v < 6.5 for v in losses) and losses[-1] < losses[0]
    assert not torch.equal(params(t), before)
