"""The built-in corpus with a held-out tail, and the fixed evaluation batch cut from that tail.

The benchmark's run directory is made with ``barnraise init`` from the built-in corpus minus its
last ``heldout_bytes`` (cut at a line break, so the rest stays valid UTF-8 text), so no system can
train on the bytes it is evaluated on. The evaluation batch is ``n_seqs`` windows spread evenly
over the tail: fixed, identical for every system and every snapshot.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

HELDOUT_FILE = "heldout.bin"


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What ``barnraise init`` is asked for; the manifest then carries it to every system."""

    model: str  # built-in model preset, e.g. "gpt-small"
    round_s: float  # seconds of compute per barnraise round
    round_delay: int  # 0: apply an average in its own round; 1: one round late (overlapped)
    codec: str  # barnraise update codec, e.g. "int8"
    batch_size: int  # sequences per inner step, for every system alike
    seed: int  # initial parameters, identical in every system
    outer_lr: float | None = None  # barnraise outer Nesterov learning rate; None: barnraise's default
    outer_momentum: float | None = None  # barnraise outer Nesterov momentum; None: barnraise's default
    heldout_bytes: int = 256 * 1024  # tail of the corpus kept out of training, in bytes

    def __post_init__(self) -> None:
        if self.round_s <= 0 or self.batch_size < 1 or self.heldout_bytes < 4096:
            raise ValueError("round_s must be > 0 s, batch_size >= 1, heldout_bytes >= 4096")
        if self.round_delay not in (0, 1):
            raise ValueError(f"round_delay must be 0 or 1, got {self.round_delay}")


def builtin_bytes() -> bytes:
    """The built-in corpus exactly as ``barnraise init --dataset builtin`` would read it."""
    from barnraise.coordinator.operator.datasets import open_source

    return b"".join(open_source("builtin").chunks)


def prepare_run(work_dir: Path, spec: RunSpec, barnraise: Sequence[str], timeout_s: float = 300.0) -> Path:
    """Write the held-out tail and ``barnraise init`` a run from the rest; returns the run dir."""
    data = builtin_bytes()
    cut = data.rfind(b"\n", 0, len(data) - spec.heldout_bytes) + 1
    if cut <= 0:
        raise RuntimeError("built-in corpus too small to hold out a tail")
    text_dir = work_dir / "corpus"
    text_dir.mkdir(parents=True, exist_ok=True)
    (text_dir / "builtin-train.txt").write_bytes(data[:cut])
    (work_dir / HELDOUT_FILE).write_bytes(data[cut:])
    run_dir = work_dir / "run"
    argv = [
        *barnraise,
        "init",
        str(run_dir),
        "--dataset",
        str(text_dir),
        "--model",
        spec.model,
        "--round-s",
        f"{spec.round_s:g}",
        "--round-delay",
        str(spec.round_delay),
        "--codec",
        spec.codec,
        "--batch-size",
        str(spec.batch_size),
        "--seed",
        str(spec.seed),
        *(["--outer-lr", f"{spec.outer_lr:g}"] if spec.outer_lr is not None else []),
        *(["--outer-momentum", f"{spec.outer_momentum:g}"] if spec.outer_momentum is not None else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"barnraise init failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    logger.info("run dir %s: %d bytes to train on, %d held out", run_dir, cut, len(data) - cut)
    return run_dir


def eval_batch(heldout: Path, seq_len: int, n_seqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_seqs`` (input, target) windows of ``seq_len`` tokens spread evenly over the tail."""
    import numpy as np

    tokens = torch.from_numpy(np.frombuffer(heldout.read_bytes(), dtype=np.uint8).astype(np.int64))
    span = len(tokens) - seq_len - 1
    if span < n_seqs:
        raise ValueError(f"held-out tail of {len(tokens)} tokens is too short for {n_seqs} windows")
    starts = [i * span // max(1, n_seqs - 1) for i in range(n_seqs)]
    x = torch.stack([tokens[s : s + seq_len] for s in starts])
    y = torch.stack([tokens[s + 1 : s + seq_len + 1] for s in starts])
    return x, y
