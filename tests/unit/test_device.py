"""``--device``: parsing, which device a peer in a given identity slot takes, and the CPU pick
(peer/training/device.py). No device is needed: GPU counts are arguments of ``resolve_device``."""

from __future__ import annotations

import pytest
import torch

from barnraise.coordinator.errors import ConfigError
from barnraise.peer.cli.main import main
from barnraise.peer.training.device import DeviceInfo, DeviceSpec, parse_device, pick_device, resolve_device

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "text, spec",
    [
        ("auto", DeviceSpec(kind="auto")),
        ("cpu", DeviceSpec(kind="cpu")),
        ("cuda", DeviceSpec(kind="cuda")),
        ("cuda:0", DeviceSpec(kind="cuda", index=0)),
        ("CUDA:3", DeviceSpec(kind="cuda", index=3)),
        (" cuda:12 ", DeviceSpec(kind="cuda", index=12)),
    ],
)
def test_device_specs_parse(text, spec):
    assert parse_device(text) == spec


@pytest.mark.parametrize("text", ["", "gpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "auto:1", "cuda0", "mps"])
def test_bad_device_specs_are_one_line_errors(text):
    with pytest.raises(ConfigError, match="is not a device: use auto, cpu, cuda or cuda:N"):
        parse_device(text)


def test_auto_is_the_cpu_without_gpus_and_spreads_slots_over_gpus():
    auto = DeviceSpec(kind="auto")
    assert [resolve_device(auto, 0, slot) for slot in range(3)] == ["cpu"] * 3
    assert [resolve_device(auto, 1, slot) for slot in range(3)] == ["cuda:0"] * 3
    assert [resolve_device(auto, 2, slot) for slot in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert [resolve_device(DeviceSpec(kind="cuda"), 3, slot) for slot in (0, 4, 5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
    ]


def test_a_named_device_is_taken_whatever_the_slot():
    spec = parse_device("cuda:1")
    assert [resolve_device(spec, 2, slot) for slot in range(3)] == ["cuda:1"] * 3
    assert resolve_device(parse_device("cpu"), 8, 3) == "cpu"


def test_missing_gpus_are_one_line_errors():
    with pytest.raises(ConfigError, match="no CUDA device is visible; use --device cpu"):
        resolve_device(parse_device("cuda"), 0)
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_device(parse_device("cuda:0"), 0)
    with pytest.raises(
        ConfigError, match=r"cuda:2 asks for a GPU this machine lacks: it has 2 \(cuda:0 to cuda:1\)"
    ):
        resolve_device(parse_device("cuda:2"), 2)


def test_the_cpu_pick_sets_threads_and_computes_in_fp32():
    before = torch.get_num_threads()
    try:
        info = pick_device("cpu", threads=1, slot=3)
        assert info.device == torch.device("cpu") and torch.get_num_threads() == 1
        assert (info.autocast_dtype, info.precision, info.scales_gradients, info.memory_bytes) == (
            None,
            "fp32",
            False,
            0,
        )
        assert info.description == "cpu (1 threads)"
    finally:
        torch.set_num_threads(before)


def test_precision_names_and_gradient_scaling_follow_the_autocast_dtype():
    def info(dtype):
        return DeviceInfo(device=torch.device("cpu"), description="x", memory_bytes=0, autocast_dtype=dtype)

    assert (info(torch.bfloat16).precision, info(torch.bfloat16).scales_gradients) == ("bf16", False)
    assert (info(torch.float16).precision, info(torch.float16).scales_gradients) == ("fp16", True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_it_is_refused():
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        pick_device("cuda:0")


@pytest.mark.parametrize("value", ["gpu", "cuda:x"])
def test_peer_refuses_a_bad_device_with_exit_2(value, capsys):
    assert (
        main(["peer", "--initial-peers", "/ip4/10.0.0.1/tcp/31337", "--device", value, "--print-config"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--device {value!r} is not a device" in err
