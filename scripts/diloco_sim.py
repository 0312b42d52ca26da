"""DiLoCo and synchronous data parallelism on the built-in corpus, for convergence benchmarks.

DiLoCo is simulated in one process with the peer's real parts: the built-in model
(`peer.model`), the inner AdamW trainer (`peer.trainer.InnerTrainer`), the update codecs with
error feedback (`peer.codecs`) and the outer Nesterov step (`peer.state.GlobalState`); only the
network is left out, so the loss it reaches is what the swarm's algorithm reaches for the same
samples. Synchronous data parallelism is real torch.distributed (gloo, all-reduce every step) in
separate processes on 127.0.0.1. Both draw batches from the same shards and are evaluated on the
same held-out shard.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from barnraise.coordinator.manifest import SHARDS_DIR, TrainingDefaults, model_config
from barnraise.coordinator.operator.runinit import init_run
from barnraise.peer.averaging import codecs
from barnraise.peer.data.shards import BatchReader, shard_tokens
from barnraise.peer.sync.state import GlobalState, OuterStep, flat_params, load_flat
from barnraise.peer.training.device import DeviceInfo
from barnraise.peer.training.model import build_model
from barnraise.peer.training.trainer import InnerTrainer

CPU = DeviceInfo(device=torch.device("cpu"), description="cpu", memory_bytes=0, autocast_dtype=None)


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One convergence experiment's shape."""

    model: str = "gpt-nano"  # built-in preset
    workers: int = 4  # DiLoCo peers / DDP ranks
    batch_size: int = 16  # sequences per worker per step
    total_steps: int = 400  # inner steps per worker (DDP: optimizer steps)
    inner_steps: int = 50  # DiLoCo H: inner steps between averaging rounds
    inner_lr: float = 2e-3
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    seed: int = 1
    eval_windows: int = 256  # held-out sequences for the final loss


@dataclass
class Corpus:
    run_dir: Path
    seq_len: int
    train: list[torch.Tensor]  # token tensors of the training shards
    eval_x: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    eval_y: torch.Tensor = field(default_factory=lambda: torch.empty(0))


def make_corpus(work: Workload, root: Path | None = None) -> Corpus:
    """Shard the built-in corpus into a fresh run; the last shard is held out for evaluation."""
    root = Path(root or tempfile.mkdtemp(prefix="barnraise-bench-"))
    manifest = init_run(root / "run", model=work.model, training=TrainingDefaults(), seed=work.seed)
    tokens = [
        shard_tokens((root / "run" / SHARDS_DIR / s.sha256).read_bytes(), "uint8") for s in manifest.shards
    ]
    L = manifest.model.seq_len
    held = tokens[-1]
    n = min(work.eval_windows, (len(held) - 1) // L)
    x = held[: n * L].view(n, L)
    y = held[1 : n * L + 1].view(n, L)
    return Corpus(run_dir=root / "run", seq_len=L, train=tokens[:-1], eval_x=x, eval_y=y)


class Stream:
    """A worker's batches: its own shards (every ``workers``-th, by index), read in order, round-robin;
    all shards when there are fewer shards than workers. ``corpus`` needs ``train`` and ``seq_len``
    (the attack simulation's corpus has them too)."""

    def __init__(self, corpus: Corpus, worker: int, workers: int):
        self.shards = [t for i, t in enumerate(corpus.train) if i % workers == worker] or corpus.train
        self.seq_len = corpus.seq_len
        self.i = 0
        self.reader = BatchReader(self.shards[0], self.seq_len)

    def next_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        while (batch := self.reader.next_batch(n)) is None:
            self.i = (self.i + 1) % len(self.shards)
            self.reader = BatchReader(self.shards[self.i], self.seq_len)
        return batch


@torch.no_grad()
def evaluate(model: torch.nn.Module, corpus: Corpus) -> float:
    model.eval()
    losses = []
    for i in range(0, len(corpus.eval_x), 64):
        _, loss = model(corpus.eval_x[i : i + 64], corpus.eval_y[i : i + 64])
        losses.append(loss.item() * len(corpus.eval_x[i : i + 64]))
    model.train()
    return sum(losses) / len(corpus.eval_x)


@dataclass
class RunResult:
    final_loss: float
    wall_s: float
    samples: int
    curve: list[tuple[int, float]]  # (samples, eval loss)
    bytes_per_param_round: float = 0.0


def run_diloco(
    work: Workload,
    corpus: Corpus,
    codec: str = "fp32",
    error_feedback: bool = True,
    topk_fraction: float = 0.01,
    ef_decay: float = 1.0,
    per_chunk: int | None = None,
) -> RunResult:
    """DiLoCo with ``work.workers`` peers, H = ``work.inner_steps``, equal weights (same batch sizes).

    ``ef_decay`` < 1 lets error feedback's residue fade (SparseLoCo's accumulator, used in place of
    outer momentum); ``per_chunk`` is the sparse codec's values kept per chunk (default: its own)."""
    torch.manual_seed(work.seed)
    cfg = model_config(work.model, 256)
    train_cfg = TrainingDefaults(inner_lr=work.inner_lr, batch_size=work.batch_size)
    from barnraise.protos import manifest_pb2

    tcfg = manifest_pb2.TrainingConfig(
        inner_lr=train_cfg.inner_lr,
        inner_weight_decay=train_cfg.inner_weight_decay,
        batch_size=work.batch_size,
        grad_clip=train_cfg.grad_clip,
    )
    models = [build_model(cfg, work.seed) for _ in range(work.workers)]
    trainers = [InnerTrainer(m, tcfg, CPU) for m in models]
    streams = [Stream(corpus, w, work.workers) for w in range(work.workers)]
    feedback = [codecs.ErrorFeedback(decay=ef_decay) for _ in range(work.workers)]
    state = GlobalState.initial(models[0])
    kwargs = {"topk_fraction": topk_fraction} if codec == "topk" else {}
    if codec == "sparse" and per_chunk is not None:
        kwargs["per_chunk"] = per_chunk
    rounds = math.ceil(work.total_steps / work.inner_steps)
    curve, sent_bytes, t0 = [], 0, time.perf_counter()
    for r in range(rounds):
        steps = min(work.inner_steps, work.total_steps - r * work.inner_steps)
        deltas = []
        for w in range(work.workers):
            for _ in range(steps):
                trainers[w].step(*streams[w].next_batch(work.batch_size))
            delta = state.params - flat_params(models[w])
            comp = feedback[w].compensate(delta) if error_feedback else delta
            enc = codecs.encode(comp, codec, **kwargs)
            sent_bytes += len(enc.SerializeToString())
            sent = codecs.decode(enc, comp.numel(), codec)
            if error_feedback:
                feedback[w].remember(comp, sent)
            deltas.append(sent)
        avg = torch.stack(deltas).mean(0)
        state = OuterStep(lr=work.outer_lr, momentum=work.outer_momentum).apply(state, avg, r)
        for m in models:
            load_flat(m, state.params)
        samples = (r * work.inner_steps + steps) * work.batch_size * work.workers
        curve.append((samples, evaluate(models[0], corpus)))
    numel = state.params.numel()
    return RunResult(
        final_loss=curve[-1][1],
        wall_s=time.perf_counter() - t0,
        samples=curve[-1][0],
        curve=curve,
        bytes_per_param_round=sent_bytes / (numel * rounds * work.workers),
    )


def _ddp_rank(rank: int, work: Workload, corpus: Corpus, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=work.workers)
    model = build_model(model_config(work.model, 256), work.seed)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(
        model.parameters(), lr=work.inner_lr, weight_decay=TrainingDefaults().inner_weight_decay
    )
    stream = Stream(corpus, rank, work.workers)
    for _ in range(work.total_steps):
        x, y = stream.next_batch(work.batch_size)
        _, loss = ddp(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainingDefaults().grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if rank == 0:
        torch.save(flat_params(model), out)
    dist.barrier()
    dist.destroy_process_group()


def run_ddp(work: Workload, corpus: Corpus) -> RunResult:
    """Synchronous data parallelism: ``work.workers`` gloo ranks, all-reduce every step."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = os.path.join(tempfile.mkdtemp(prefix="barnraise-ddp-"), "params.pt")
    t0 = time.perf_counter()
    mp.spawn(_ddp_rank, args=(work, corpus, port, out), nprocs=work.workers, join=True)
    wall = time.perf_counter() - t0
    model = build_model(model_config(work.model, 256), work.seed)
    load_flat(model, torch.load(out))
    loss = evaluate(model, corpus)
    samples = work.total_steps * work.batch_size * work.workers
    return RunResult(final_loss=loss, wall_s=wall, samples=samples, curve=[(samples, loss)])
