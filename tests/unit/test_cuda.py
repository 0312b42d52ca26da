"""The GPU path on a real CUDA device: device pick, autocast (bf16, or fp16 with a gradient
scaler), the micro-batch probe against real memory, gradient accumulation, and windows that
read the loss lazily. Skipped where no CUDA device is visible (CI's CPU runners): the same logic
is covered there by test_trainer.py and test_device.py; ``scripts/gpu_check`` runs whole peers."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import pytest
import torch

from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.manifest import TrainingDefaults, model_config
from barnraise.peer.training.device import pick_device
from barnraise.peer.training.microbatch import injected_oom
from barnraise.peer.training.model import build_model
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import manifest_pb2

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none is visible)"),
]

MODEL = model_config("gpt-micro", 256)


def training(batch_size: int = 16) -> manifest_pb2.TrainingConfig:
    return manifest_pb2.TrainingConfig(**asdict(TrainingDefaults(batch_size=batch_size)))


def sample(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, MODEL.seq_len + 1), generator=g)
    return x[:, :-1], x[:, 1:]


def test_auto_picks_cuda_with_bf16_or_scaled_fp16():
    info = pick_device("auto")
    assert info.device.type == "cuda" and info.memory_bytes > 0
    assert info.precision in ("bf16", "fp16") and info.scales_gradients == (info.precision == "fp16")
    assert pick_device("cuda", slot=torch.cuda.device_count()).device == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="asks for a GPU this machine lacks"):
        pick_device(f"cuda:{torch.cuda.device_count()}")


def test_the_probe_measures_real_memory_and_frees_failed_tries():
    t = InnerTrainer(build_model(MODEL, 1), training(16), pick_device("cuda:0"))
    probe = t.fit(lambda n: sample(n))
    assert probe.micro_batch == 16 and probe.tried == (16,) and probe.peak_memory_bytes > 0
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    probe = t.fit(lambda n: sample(n), before_try=injected_oom(3))
    assert (probe.micro_batch, probe.tried) == (2, (16, 8, 4, 2))
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= held, "the probe left memory behind"


def test_accumulation_on_cuda_gives_one_batchs_gradient():
    info = replace(pick_device("cuda:0"), autocast_dtype=None)  # fp32, to compare closely
    whole, split = (InnerTrainer(build_model(MODEL, 1), training(16), info) for _ in range(2))
    split.micro_batch = 4
    x, y = (v.cuda() for v in sample(16))
    assert float(whole._accumulate(x, y)) == pytest.approx(float(split._accumulate(x, y)), rel=1e-5)
    g_whole, g_split = (torch.cat([p.grad.flatten() for p in t.model.parameters()]) for t in (whole, split))
    torch.testing.assert_close(g_split, g_whole, rtol=1e-3, atol=1e-7)


def test_a_window_with_lazy_loss_reads_still_ends_on_time():
    """The host queues steps ahead of the device and reads the loss every few steps: the window
    must still close close to its deadline (the queue is drained at its end)."""
    t = InnerTrainer(build_model(model_config("gpt-small", 256), 1), training(16), pick_device("cuda:0"))
    x, y = sample(16)
    t.step(x, y)
    deadline = time.time() + 3
    res = t.train_until(deadline, lambda n: (x, y), lambda: False)
    assert res.steps > 0 and time.time() - deadline < 2.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_window_trains_under_autocast(dtype):
    info = replace(pick_device("cuda:0"), autocast_dtype=dtype)
    t = InnerTrainer(build_model(MODEL, 1), training(16), info)
    assert (t.scaler is not None) == (dtype == torch.float16)
    t.fit(lambda n: sample(n))
    x, y = sample(16, seed=3)
    first = t.step(x, y)
    res = t.train_until(time.time() + 5, lambda n: (x, y), lambda: False)
    assert res.steps > 8 and res.loss_steps == res.steps and res.peak_memory_bytes > 0
    assert res.mean_loss < first, "training on one batch must lower its loss"
