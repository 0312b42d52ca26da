"""``scripts/gpu_check`` works before a GPU is lent: ``--device cpu --quick`` runs its whole flow
(solo peers on two models, then two peers on one device that must agree) on the CPU with tiny
models and writes its result files. Its swarms run init's defaults (int8 updates applied a round
late, a plain average as the outer step), which the other swarm tests pin away. Without CUDA,
asking for a GPU is one line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.timeout(300)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line():
    res = run("--device", "cuda:0", timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "no CUDA device is visible" in res.stderr
    assert res.stdout == ""


def test_the_quick_cpu_flow_passes_and_writes_its_result(tmp_path):
    res = run("--device", "cpu", "--quick", "--out", str(tmp_path), timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    [path] = tmp_path.glob("gpu_check-*-quick.json")
    assert path.with_suffix(".txt").read_text() in res.stdout
    result = json.loads(path.read_text())
    assert result["ok"] and result["machine"]["device"] == "cpu"
    assert [s["model"] for s in result["solo"]] == ["gpt-nano", "gpt-micro"]
    for s in result["solo"]:
        assert (
            s["micro_batch"] == s["batch_size"] == 8 and s["samples_per_s"] > 0 and s["precision"] == "fp32"
        )
    pair = result["pair"]
    assert pair["rounds_together"] and pair["rounds_agreeing"] == pair["rounds_together"]
    assert pair["training"] == {"codec": "int8", "round_delay": 1, "outer_lr": 1.0, "outer_momentum": 0}
    assert pair["peer_ids"] == 2 and pair["exit_codes"] == [0, 0] and result["pair_vs_solo"] > 0
