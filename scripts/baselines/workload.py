"""Model, data and the timed training loop shared by the baseline workers.

A baseline worker trains exactly what a barnraise peer trains: the run manifest's model built from
the run seed, batches of ``batch_size`` sequences of the run directory's shards (each checked
against the manifest's sha256), AdamW with the manifest's inner learning rate, weight decay and
gradient clipping. Workers of one system split the shards between them (worker i of n takes every
n-th shard of a seeded shuffle), as barnraise's shard leases keep its peers off each other's
shards. Only what happens around the step differs (nothing, DDP's all-reduce, hivemind.Optimizer),
so differences in the results come from that.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from baselines.events import EventLog, save_snapshot

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
SNAPSHOT_DIR = "snapshots"


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    """Settings every baseline worker takes on its command line."""

    run_dir: Path  # barnraise run directory (manifest.pb + shards/)
    out_dir: Path  # this worker's events.jsonl; snapshots go to out_dir/../snapshots
    name: str  # worker name, in events and snapshot file names
    budget_s: float  # seconds of training from the first step
    threads: int = 1  # torch CPU threads
    snapshot_every_s: float = 8.0  # seconds between parameter snapshots (0: none)
    slot: int = 0  # this worker's share of the shards: slot of ``slots``
    slots: int = 1  # workers the shards are split between

    def __post_init__(self) -> None:
        if self.budget_s <= 0 or self.threads < 1 or self.snapshot_every_s < 0:
            raise ValueError("budget_s must be > 0 s, threads >= 1, snapshot_every_s >= 0 s")
        if not 0 <= self.slot < self.slots:
            raise ValueError(f"slot must be in [0, {self.slots}), got {self.slot}")


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--budget-s", type=float, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--snapshot-every-s", type=float, default=8.0)
    parser.add_argument("--slot", default="0/1", metavar="I/N", help="take shard share I of N")


def worker_config(args: argparse.Namespace, *, snapshots: bool = True) -> WorkerConfig:
    slot, _, slots = args.slot.partition("/")
    return WorkerConfig(
        run_dir=args.run_dir,
        out_dir=args.out_dir,
        name=args.name,
        budget_s=args.budget_s,
        threads=args.threads,
        snapshot_every_s=args.snapshot_every_s if snapshots else 0.0,
        slot=int(slot),
        slots=int(slots or 1),
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ShardStream:
    """Non-overlapping ``seq_len + 1`` windows of this worker's shards, in order, round and round."""

    def __init__(self, manifest, shards_dir: Path, slot: int, slots: int) -> None:
        rng = random.Random(manifest.seed)
        shuffled = sorted(manifest.shards, key=lambda s: s.index)
        rng.shuffle(shuffled)
        self._mine = shuffled[slot::slots]
        if not self._mine:
            raise ValueError(f"no shard for slot {slot} of {slots}: the run has {len(shuffled)} shards")
        self._dir = shards_dir
        self._seq = manifest.model.seq_len
        self._dtype = np.uint16 if manifest.dataset.token_dtype == "uint16" else np.uint8
        self._next_shard = 0
        self._tokens = torch.empty(0, dtype=torch.int64)
        self._offset = 0

    def _load_next(self) -> None:
        info = self._mine[self._next_shard % len(self._mine)]
        self._next_shard += 1
        data = (self._dir / info.sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise ValueError(f"shard {info.index} does not match its sha256 in the manifest")
        self._tokens = torch.from_numpy(np.frombuffer(data, dtype=self._dtype).astype(np.int64))
        self._offset = 0

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(len(self._mine) + 1):
            n = min(batch_size, (len(self._tokens) - self._offset - 1) // self._seq)
            if n > 0:
                span = self._tokens[self._offset : self._offset + n * self._seq + 1]
                self._offset += n * self._seq
                return span[:-1].view(n, self._seq), span[1:].unfold(0, self._seq, self._seq)[:n].contiguous()
            self._load_next()
        raise ValueError("shards are shorter than one window of the model's context")


class Workload:
    """The run's model and this worker's batch stream."""

    def __init__(self, cfg: WorkerConfig) -> None:
        from barnraise.coordinator.manifest import load_signed_manifest
        from barnraise.peer.training.model import build_model
        from barnraise.protos import manifest_pb2

        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        signed = load_signed_manifest(cfg.run_dir)
        self.manifest = manifest_pb2.RunManifest.FromString(signed.manifest)
        self.training = self.manifest.training
        self.batch_size = self.training.batch_size
        self.model = build_model(self.manifest.model, self.manifest.seed)
        self.feed = ShardStream(self.manifest, cfg.run_dir / "shards", cfg.slot, cfg.slots)

    def make_adamw(self, params) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            params, lr=self.training.inner_lr, weight_decay=self.training.inner_weight_decay
        )

    def forward_backward(self, model: torch.nn.Module) -> tuple[float, int]:
        """Loss and backward on the next batch; returns (loss, samples)."""
        x, y = self.feed.next_batch(self.batch_size)
        model.train()
        _, loss = model(x, y)
        loss.backward()
        if self.training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.training.grad_clip)
        return float(loss.item()), int(x.shape[0])

    def flat_params(self) -> torch.Tensor:
        from barnraise.peer.sync.state import flat_params

        return flat_params(self.model)


@dataclass(frozen=True, kw_only=True)
class StepResult:
    loss: float  # training loss of the step's batch (before the update)
    samples: int  # sequences in the batch
    compute_s: float  # seconds of local compute in the step (the rest is waiting on peers)


def train_loop(
    work: Workload,
    step: Callable[[], StepResult],
    *,
    snapshots: bool,
    agree_stop: Callable[[bool], bool] | None = None,
    on_step: Callable[[], None] | None = None,
) -> int:
    """Run ``step`` until ``budget_s`` has passed since the first one; returns the step count.

    ``agree_stop`` turns this worker's wish to stop into the group's decision (synchronous
    workers must all stop after the same step, or one would wait forever in a collective).
    """
    cfg = work.cfg
    events = EventLog(cfg.out_dir / EVENTS_FILE)
    snap_dir = cfg.out_dir.parent / SNAPSHOT_DIR
    t_start = time.time()
    events.write("start", t=t_start, worker=cfg.name, batch_size=work.batch_size)
    taken = 0

    def snapshot() -> None:
        path = snap_dir / f"{cfg.name}-{taken:06d}.pt"
        save_snapshot(path, work.flat_params())
        events.write("snapshot", t=time.time(), file=str(path), step=taken)

    if snapshots:
        snapshot()
    next_snap = t_start + cfg.snapshot_every_s
    while True:
        t0 = time.time()
        res = step()
        t1 = time.time()
        taken += 1
        events.write(
            "step", t0=t0, t1=t1, compute_s=res.compute_s, loss=res.loss, samples=res.samples, step=taken
        )
        if on_step is not None:
            on_step()
        if snapshots and cfg.snapshot_every_s > 0 and t1 >= next_snap:
            snapshot()
            next_snap = max(next_snap + cfg.snapshot_every_s, t1)
        want_stop = t1 - t_start >= cfg.budget_s or not math.isfinite(res.loss)
        if agree_stop(want_stop) if agree_stop is not None else want_stop:
            break
    if snapshots:
        snapshot()
    events.write("end", t=time.time(), steps=taken)
    events.close()
    logger.info("%s: %d steps in %.1f s", cfg.name, taken, time.time() - t_start)
    return taken
