"""The loss side of ``bench_codecs``: DiLoCo with each codec at equal samples (``diloco_sim``).

Dense codecs run as the daemon runs them: error feedback, DiLoCo's outer Nesterov step. The sparse
codec runs two ways, as SparseLoCo's question asks: with that outer momentum (``sparse``), and with
error feedback in its place (``sparse_ef``: outer lr 1, no momentum, the residual decaying by 0.95
a round, so the accumulator carries a decaying sum of past pseudo-gradients as momentum would).

A sparse update moves 1.56% of each chunk per round, so what it has not sent yet waits in error
feedback for later rounds: with few rounds (H = 50 over 400 steps is 8) much of the run's progress
is still waiting at the end. So the sparse codec is also compared with more, shorter rounds at the
same samples (``sparse_rounds``: fp32 DiLoCo and ``sparse_ef`` both at H = ``sparse_inner_steps``),
each against fp32 at the same H.
"""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace

import torch
from diloco_sim import Corpus, Workload, make_corpus, run_diloco

# name -> (codec, (outer lr, outer momentum) or None for DiLoCo's, error-feedback decay)
VARIANTS = {
    "sparse": ("sparse", None, 1.0),
    "sparse_ef": ("sparse", (1.0, 0.0), 0.95),
}


def _loss_run(work: Workload, corpus: Corpus, name: str, topk_fraction: float) -> dict:
    """One DiLoCo run in a pool process (one thread: the pool runs two at a time on two cores)."""
    torch.set_num_threads(1)
    codec, outer, decay = VARIANTS.get(name, (name, None, 1.0))
    if outer is not None:
        work = replace(work, outer_lr=outer[0], outer_momentum=outer[1])
    res = run_diloco(
        work, corpus, codec=codec, error_feedback=True, topk_fraction=topk_fraction, ef_decay=decay
    )
    return {"final_loss": res.final_loss, "wall_s": res.wall_s, "bytes_per_param_round": res.bytes_per_param_round,
            "curve": res.curve, "codec": codec, "outer": list(outer or (work.outer_lr, work.outer_momentum)),
            "ef_decay": decay}  # fmt: skip


def loss_figures(
    *,
    peers: int,
    steps: int,
    inner_steps: int,
    sparse_inner_steps: int,
    codecs: tuple[str, ...],
    topk_fraction: float,
) -> dict:
    """Final held-out loss of DiLoCo with each codec (same seed, samples and evaluation)."""
    work = Workload(workers=peers, total_steps=steps, inner_steps=inner_steps)
    short = replace(work, inner_steps=sparse_inner_steps)
    names = [c for c in codecs if c != "sparse"] + (list(VARIANTS) if "sparse" in codecs else [])
    extra = [("fp32", short), ("sparse_ef", short)] if "sparse" in codecs else []
    corpus = make_corpus(work)
    try:
        with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {n: pool.submit(_loss_run, work, corpus, n, topk_fraction) for n in names}
            more = {n: pool.submit(_loss_run, w, corpus, n, topk_fraction) for n, w in extra}
            runs = {n: f.result(timeout=3600) for n, f in futures.items()}
            rounds = {n: f.result(timeout=3600) for n, f in more.items()}
    finally:
        shutil.rmtree(corpus.run_dir.parent, ignore_errors=True)
    for group in (runs, rounds):
        for r in group.values():
            r["loss_vs_fp32"] = r["final_loss"] / group["fp32"]["final_loss"] if "fp32" in group else None
    out = {"workload": asdict(work), "runs": runs}
    if rounds:
        out["sparse_rounds"] = {"inner_steps": sparse_inner_steps, "runs": rounds}
    return out


def loss_rows(loss: dict) -> list[str]:
    w = loss["workload"]
    lines = [f"loss: DiLoCo, {w['workers']} peers, {w['model']}, {w['total_steps']} inner steps each, "
             f"H={w['inner_steps']}, same samples, error feedback on",
             "  sparse: with DiLoCo's outer Nesterov (0.7/0.9); sparse_ef: error feedback (decay 0.95) in its place "
             "(outer lr 1, no momentum)",
             f"{'codec':<10} {'final loss':>10} {'vs fp32':>8} {'sim B/param':>11}"]  # fmt: skip
    blocks = [("", loss["runs"])]
    if "sparse_rounds" in loss:
        blocks.append((f" H={loss['sparse_rounds']['inner_steps']}", loss["sparse_rounds"]["runs"]))
    for suffix, runs in blocks:
        for c, r in runs.items():
            lines.append(
                f"{c + suffix:<10} {r['final_loss']:>10.4f} {r['loss_vs_fp32']:>8.4f} {r['bytes_per_param_round']:>11.4f}"
            )
    return lines


def sparse_loss_vs_fp32(loss: dict | None) -> float | None:
    """The sparse codec's loss ratio the target reads: EF in place of momentum, the rounds comparison."""
    runs = (loss or {}).get("sparse_rounds", {}).get("runs", {})
    return runs.get("sparse_ef", {}).get("loss_vs_fp32")
