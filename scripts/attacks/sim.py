"""DiLoCo with Byzantine peers in one process, aggregated by the real reducer.

Every round each honest peer starts from the global parameters, runs ``inner_steps`` AdamW steps
on its own shards with ``peer.trainer.InnerTrainer`` and offers ``global - local`` weighted by its
samples. Attackers (the last ``attackers`` peers) send what ``peer.attacks.Attacker`` forges; they
are omniscient (ALIE sees the honest updates), which is the strongest form of each attack. The
updates are cut into the group's parts (``part_bounds``), encoded with the run's codec, checked by
``PartReducer.validate`` and combined by ``PartReducer.finish`` with the aggregator under test,
exactly as each member's reducer does; the parts are reassembled and the outer Nesterov step of
``peer.state.GlobalState`` applied. All reducers are honest here: a Byzantine member corrupting the
part it reduces is a different attack, outside this harness.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.coordinator.manifest import SHARDS_DIR, TrainingDefaults
from barnraise.coordinator.operator.runinit import init_run
from barnraise.peer.attacks import Attacker
from barnraise.peer.averaging import codecs
from barnraise.peer.averaging.allreduce import PartReducer, part_bounds
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.data.shards import shard_tokens
from barnraise.peer.sync.state import GlobalState, OuterStep, flat_params, load_flat
from barnraise.peer.training.device import DeviceInfo
from barnraise.peer.training.model import build_model
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import averaging_pb2, manifest_pb2
from scripts.diloco_sim import Stream

CPU = DeviceInfo(device=torch.device("cpu"), description="cpu", memory_bytes=0, autocast_dtype=None)
NEEDS_OWN_UPDATE = {"signflip", "weight", "stale", "lie_round", "lie_progress"}  # others ignore it


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """One experiment's shape."""

    model: str = "gpt-nano"  # built-in preset
    dataset: str = "builtin"  # what `barnraise init --dataset` takes
    peers: int = 8  # group size, attackers included
    attackers: int = 2  # the last peers of the group
    rounds: int = 12  # averaging rounds
    inner_steps: int = 8  # DiLoCo H: inner steps per round
    batch_size: int = 16  # sequences per inner step
    inner_lr: float = 2e-3
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    codec: str = "fp32"  # update codec on the wire
    seed: int = 1  # model init and attack noise
    eval_windows: int = 128  # held-out sequences for the loss

    def __post_init__(self) -> None:
        if not 0 <= self.attackers < self.peers:
            raise ValueError(f"need 0 <= attackers < peers, got {self.attackers} of {self.peers}")
        if self.rounds < 1 or self.inner_steps < 1:
            raise ValueError("rounds and inner_steps must be at least 1")


@dataclass
class Corpus:
    seq_len: int
    vocab_size: int
    train: list[torch.Tensor]  # token tensors of the training shards
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    model_cfg: manifest_pb2.ModelConfig = field(default_factory=manifest_pb2.ModelConfig)


def make_corpus(cfg: SimConfig, root: Path | None = None) -> Corpus:
    """Shard the corpus with ``barnraise init``'s code; the last shard is held out."""
    root = Path(root or tempfile.mkdtemp(prefix="barnraise-attacks-"))
    manifest = init_run(
        root / "run", dataset=cfg.dataset, model=cfg.model, training=TrainingDefaults(), seed=cfg.seed
    )
    tokens = [
        shard_tokens((root / "run" / SHARDS_DIR / s.sha256).read_bytes(), manifest.dataset.token_dtype)
        for s in manifest.shards
    ]
    L = manifest.model.seq_len
    held = tokens[-1]
    n = min(cfg.eval_windows, (len(held) - 1) // L)
    return Corpus(
        seq_len=L,
        vocab_size=manifest.model.vocab_size,
        train=tokens[:-1],
        eval_x=held[: n * L].view(n, L),
        eval_y=held[1 : n * L + 1].view(n, L),
        model_cfg=manifest.model,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, corpus: Corpus) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(corpus.eval_x), 64):
        x, y = corpus.eval_x[i : i + 64], corpus.eval_y[i : i + 64]
        _, loss = model(x, y)
        total += loss.item() * len(x)
    model.train()
    return total / len(corpus.eval_x)


@dataclass
class SimResult:
    final_loss: float  # held-out loss of the global parameters after the last round
    reduce_s_per_round: float  # seconds one member spends combining its part, mean over rounds
    clipped: dict[str, int]  # peer -> rounds in which a reducer clipped its update
    excluded: dict[str, int]  # peer -> rounds in which its update was refused (invalid)
    wall_s: float
    curve: list[float] = field(default_factory=list)  # held-out loss after each round (if traced)


def reduce_round(
    round_no: int,
    updates: list[torch.Tensor],
    weights: list[float],
    robust: RobustConfig,
    codec: str,
    clipped: dict[str, int],
    excluded: dict[str, int],
) -> tuple[torch.Tensor | None, float]:
    """What the group's reducers produce for one round; (average or None, seconds per member)."""
    n = len(updates)
    numel = updates[0].numel()
    group = averaging_pb2.Group(group_id=f"sim-{round_no}", round=round_no, codec=codec)
    for i, w in enumerate(weights):
        group.members.add(peer_id=f"p{i}", weight=w, part_fraction=1.0 / n)
    parts, reduce_s = [], 0.0
    for j, (s, e) in enumerate(part_bounds(numel, group)):
        reducer = PartReducer(group=group, index=j, numel=e - s, topk_fraction=0.01, robust=robust)
        for i, u in enumerate(updates):
            msg = averaging_pb2.PartMessage(
                group_id=group.group_id,
                sender=f"p{i}",
                part_index=j,
                weight=weights[i],
                tensor=codecs.encode(u[s:e], codec),
            )
            try:
                w, t = reducer.validate(msg, f"p{i}")
                reducer.add(f"p{i}", w, t)
            except ProtocolError as err:
                reducer.exclude(f"p{i}", str(err))
        reducer.finish()
        reduce_s += reducer.reduce_s
        for p in reducer.clipped:
            clipped[p] = clipped.get(p, 0) + (j == 0)
        for p in reducer.excluded:
            excluded[p] = excluded.get(p, 0) + (j == 0)
        if reducer.result.status != averaging_pb2.PART_OK:
            return None, reduce_s / n
        parts.append(reducer.value())
    return torch.cat(parts), reduce_s / n


def run(
    cfg: SimConfig,
    corpus: Corpus,
    *,
    aggregator: str,
    attack: str | None,
    absent: bool = False,
    trace: bool = False,
) -> SimResult:
    """Train the simulated swarm; ``attack`` None: every peer is honest; ``absent``: the would-be
    attackers are simply not there (the honest peers alone, for reference)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    training = manifest_pb2.TrainingConfig(
        inner_lr=cfg.inner_lr,
        inner_weight_decay=0.01,
        batch_size=cfg.batch_size,
        grad_clip=1.0,
        round_s=1.0,
        outer_lr=cfg.outer_lr,
        outer_momentum=cfg.outer_momentum,
    )
    n_bad = cfg.attackers if attack else 0
    peers = []
    for i in range(cfg.peers - (cfg.attackers if absent else 0)):
        model = build_model(corpus.model_cfg, cfg.seed)
        peers.append((InnerTrainer(model, training, CPU), Stream(corpus, i, cfg.peers)))
    state = GlobalState.initial(peers[0][0].model)
    attackers = [Attacker(attack, seed=cfg.seed + k) for k in range(n_bad)] if attack else []
    robust = RobustConfig(aggregator=aggregator)
    clipped: dict[str, int] = {}
    excluded: dict[str, int] = {}
    reduce_times, curve = [], []
    samples = float(cfg.inner_steps * cfg.batch_size)
    for r in range(cfg.rounds):
        updates: list[torch.Tensor] = []
        for i, (trainer, stream) in enumerate(peers):
            is_bad = i >= len(peers) - n_bad
            if is_bad and attack not in NEEDS_OWN_UPDATE:
                updates.append(torch.zeros(0))  # filled in below from the honest updates
                continue
            load_flat(trainer.model, state.params)
            for _ in range(cfg.inner_steps):
                trainer.step(*stream.next_batch(cfg.batch_size))
            updates.append(state.params - flat_params(trainer.model))
        weights = [samples] * len(peers)
        honest = torch.stack(updates[: len(peers) - n_bad])
        for k, attacker in enumerate(attackers):
            i = len(peers) - n_bad + k
            own = updates[i] if updates[i].numel() else honest.mean(dim=0)
            updates[i], weights[i] = attacker.forge(r, own, samples, base=state.params, honest=honest)
        average, reduce_s = reduce_round(r, updates, weights, robust, cfg.codec, clipped, excluded)
        reduce_times.append(reduce_s)
        if average is not None and bool(torch.isfinite(average).all()):
            state = OuterStep(lr=cfg.outer_lr, momentum=cfg.outer_momentum).apply(state, average, r)
        if trace:
            load_flat(peers[0][0].model, state.params)
            curve.append(evaluate(peers[0][0].model, corpus))
    load_flat(peers[0][0].model, state.params)
    final = evaluate(peers[0][0].model, corpus)
    return SimResult(
        final_loss=final if math.isfinite(final) else float("inf"),
        reduce_s_per_round=sum(reduce_times) / len(reduce_times),
        clipped=clipped,
        excluded=excluded,
        wall_s=time.perf_counter() - started,
        curve=curve,
    )
