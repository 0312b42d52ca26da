"""Checkpoint files through real processes: a write killed half-way, export and sample (no swarm)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator.manifest import load_signed_manifest, model_config
from barnraise.coordinator.signing import verify_manifest
from barnraise.peer.sync.checkpoint import newest_valid, param_layout, save_checkpoint
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.training.model import build_model
from tests.conftest import ROOT, init_run, run_cli

pytestmark = pytest.mark.timeout(300)

WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch
    from barnraise.coordinator import checkpoints as rules
    from barnraise.coordinator.manifest import model_config
    from barnraise.peer.sync.checkpoint import param_layout, save_checkpoint
    from barnraise.peer.sync.state import GlobalState
    from barnraise.peer.training.model import build_model

    root = Path(sys.argv[1])
    model = build_model(model_config("gpt-nano", 256), 3)
    info = rules.CheckpointInfo(run_id="r1", round=0, params_hash="", samples_seen=0, loss=None,
        position=rules.DataPosition(), saved_at=time.time(), model="gpt-nano", files={})
    s = GlobalState.initial(model)
    save_checkpoint(root, GlobalState(params=s.params, momentum=s.momentum, round=4), param_layout(model), info)
    real_fsync, calls = os.fsync, []
    def fsync_then_hang(fd):  # the first file of the next checkpoint is on disk: be killed here
        real_fsync(fd)
        calls.append(fd)
        if len(calls) == 1:
            print("half-way", flush=True)
            time.sleep(120)
    os.fsync = fsync_then_hang
    save_checkpoint(root, GlobalState(params=s.params + 1, momentum=s.momentum, round=9), param_layout(model), info)
    print("finished", flush=True)
    """
)


def test_a_write_killed_half_way_leaves_the_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "half-way"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = [p for p in root.iterdir() if p.name.startswith(rules.TMP_PREFIX)]
    assert len(partial) == 1 and (partial[0] / "model.safetensors").exists()  # really half-way
    assert [r for r, _ in rules.list_checkpoints(root)] == [4]
    state, info, _ = newest_valid(root)
    assert state.round == 4 and info.params_hash == state.params_hash()
    model = build_model(model_config("gpt-nano", 256), 3)  # the next write clears the leftover
    nxt = GlobalState(params=state.params, momentum=state.momentum, round=14)
    save_checkpoint(root, nxt, param_layout(model), info)
    assert not [p for p in root.iterdir() if p.name.startswith(rules.TMP_PREFIX)]
    assert [r for r, _ in rules.list_checkpoints(root)] == [14, 4]


def save_run_checkpoints(run_dir, rounds):
    """Checkpoints of ``rounds`` in RUN_DIR/checkpoints, as the bootstrap writes them."""
    manifest = verify_manifest(load_signed_manifest(run_dir))
    model = build_model(manifest.model, manifest.seed)
    base = GlobalState.initial(model)
    states = {}
    for r in rounds:
        s = GlobalState(params=base.params + 0.001 * r, momentum=base.momentum + r, round=r)
        info = rules.CheckpointInfo(
            run_id=manifest.run_id,
            round=r,
            params_hash="",
            samples_seen=10 * r,
            loss=3.0 - 0.1 * r,
            position=rules.DataPosition(),
            saved_at=time.time(),
            model=manifest.model.name,
            files={},
        )
        save_checkpoint(run_dir / "checkpoints", s, param_layout(model), info)
        states[r] = s
    return model, states


def held_out_of(run_dir, state):
    """The loss of ``state`` on the run's held-out split, computed here: what export must print."""
    from barnraise.coordinator.runfiles import read_run_file
    from barnraise.peer.training.heldout import held_out_loss, split_sequences
    from barnraise.peer.training.model import named_state

    m = verify_manifest(load_signed_manifest(run_dir))
    assert m.dataset.HasField("held_out"), "init kept no held-out split"
    data = read_run_file(run_dir, m.dataset.held_out)
    seqs = split_sequences(data, m.dataset.token_dtype, m.model.seq_len, m.model.vocab_size)
    assert len(seqs) == 64
    model = build_model(m.model, m.seed)
    with torch.no_grad():
        for p, v in zip(model.parameters(), named_state(model, state.params).values(), strict=True):
            p.copy_(v)
    return held_out_loss(model, seqs)


def test_export_without_a_checkpoint_exits_2_in_one_line(tmp_path):
    init_run(tmp_path / "run")
    res = run_cli("export", str(tmp_path / "run"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "no checkpoint" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()  # nothing half-written
    res = run_cli("export", "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_export_and_sample_a_builtin_model(tmp_path):
    run = tmp_path / "run"
    init_run(run)
    model, states = save_run_checkpoints(run, [4, 9])
    res = run_cli("export", str(run), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "round 9" in res.stdout and "loss 2.1000" in res.stdout and "held-out loss" in res.stdout
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "model.safetensors")
    names = [n for n, _ in model.named_parameters()]
    assert sorted(weights) == sorted(names)
    flat = torch.cat([weights[n].reshape(-1) for n in names])
    assert torch.equal(flat, states[9].params)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model"] == "gpt-nano" and config["vocab_size"] == 256

    # the newest damaged: refused in one line, the previous one exported
    (run / "checkpoints" / "round-000009" / "outer.safetensors").write_bytes(b"\0" * 64)
    res = run_cli("export", str(run), "--out", str(tmp_path / "out2"), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["round"] == 4
    assert summary["held_out_loss"] == pytest.approx(held_out_of(run, states[4]), abs=1e-6)
    assert sum("refused" in line for line in res.stderr.splitlines()) == 1

    res = run_cli("export", str(run), "--out", str(tmp_path / "out3"), "--round", "7")
    assert res.returncode == 2 and "of round 7" in res.stderr

    ckpt = run / "checkpoints" / "round-000004"
    res = run_cli("sample", "--checkpoint", str(ckpt), "--prompt", "def ", "--tokens", "16")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("def ") and len(res.stdout.encode()) > len("def ")
    again = run_cli("sample", "--checkpoint", str(ckpt), "--prompt", "def ", "--tokens", "16")
    assert again.stdout == res.stdout  # seeded
