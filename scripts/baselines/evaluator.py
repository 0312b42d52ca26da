"""Held-out loss of every snapshot a system wrote, as a curve over its wall time.

One evaluator scores every system: same model code, same fixed batch from the held-out tail,
evaluation mode, no gradients. It runs after a system's run (not during it), so evaluating costs
the measured systems no CPU. A snapshot's time is the earliest moment any process of the system
reported holding those parameters, relative to the system's time zero.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baselines.corpus import eval_batch
from baselines.events import load_snapshot

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CurvePoint:
    t_s: float  # seconds since the system's time zero
    loss: float  # mean cross-entropy on the evaluation batch, nats per token
    file: str  # snapshot it came from


class Evaluator:
    """The run's model and the evaluation batch, ready to score flat parameter vectors."""

    def __init__(self, run_dir: Path, heldout: Path, *, n_seqs: int = 16, threads: int = 2) -> None:
        from barnraise.coordinator.manifest import load_signed_manifest
        from barnraise.peer.training.model import build_model
        from barnraise.protos import manifest_pb2

        torch.set_num_threads(threads)
        manifest = manifest_pb2.RunManifest.FromString(load_signed_manifest(run_dir).manifest)
        self.model = build_model(manifest.model, manifest.seed)
        self.model.eval()
        self.numel = sum(p.numel() for p in self.model.parameters())
        self.x, self.y = eval_batch(heldout, manifest.model.seq_len, n_seqs)
        self._cache: dict[str, float] = {}

    def loss(self, params: torch.Tensor) -> float:
        """Mean loss of ``params`` on the evaluation batch (in chunks, to bound memory)."""
        from barnraise.peer.sync.state import load_flat

        if params.numel() != self.numel:
            raise ValueError(f"snapshot has {params.numel()} values, the model {self.numel}")
        load_flat(self.model, params)
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.x), 8):
                xb, yb = self.x[i : i + 8], self.y[i : i + 8]
                _, loss = self.model(xb, yb)
                total += float(loss) * len(xb)
                n += len(xb)
        return total / n

    def loss_of_file(self, path: str) -> float:
        if path not in self._cache:
            try:
                self._cache[path] = self.loss(load_snapshot(Path(path)))
            except (OSError, RuntimeError, ValueError) as e:
                logger.warning("snapshot %s unreadable: %s", path, e)
                self._cache[path] = math.nan
        return self._cache[path]

    def curve(self, events: list[dict[str, Any]], t_zero: float) -> list[CurvePoint]:
        """Score each distinct snapshot file once, at the earliest time it was reported."""
        first: dict[str, float] = {}
        for e in events:
            if e.get("kind") == "snapshot" and e.get("file"):
                first[e["file"]] = min(first.get(e["file"], math.inf), float(e["t"]))
        points = []
        for path, t in sorted(first.items(), key=lambda kv: kv[1]):
            loss = self.loss_of_file(path)
            if math.isfinite(loss):
                points.append(CurvePoint(t_s=max(0.0, t - t_zero), loss=loss, file=path))
        return points
