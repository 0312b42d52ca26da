"""Inner step time of a transformers Llama against the built-in GPT of the same parameter count, on
the CPU, through the trainer peers use (forward, backward, clip, AdamW).

Usage: python scripts/bench_model_step.py [--quick] [--steps N] [--threads T]

The GPT is a built-in preset (gpt-small; --quick: gpt-micro); the Llama is built from a
config.json of the same width, depth and heads, with an MLP sized so that the parameter counts
match within a few percent (both byte-level, vocabulary 256, tied embeddings). Each model takes
warm-up steps, then N timed ones (default 20; --quick 5) on random tokens; the figure is the median
step. Prints a table and, as the last line, one JSON object with the ratio Llama / GPT and the load
average; writes scripts/results/bench_model_step-DATE-HOST[-quick].{json,txt}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from baselines.report import stamp, write_results  # noqa: E402

WARMUP_STEPS = 2


def llama_config(d: int, layers: int, heads: int, seq_len: int, target_params: int) -> dict:
    """A Llama config of this shape whose MLP width brings it to about ``target_params``."""
    fixed = 256 * d + layers * (4 * d * d + 2 * d) + d  # embeddings, attention, norms
    intermediate = max(8, round((target_params - fixed) / (3 * d * layers)))
    return {
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": 256,
        "max_position_embeddings": seq_len,
        "tie_word_embeddings": True,
    }


def step_times(model, batch: int, seq_len: int, steps: int, threads: int) -> list[float]:
    import torch

    from barnraise.peer.training.device import pick_device
    from barnraise.peer.training.trainer import InnerTrainer
    from barnraise.protos import manifest_pb2

    cfg = manifest_pb2.TrainingConfig(inner_lr=1e-3, inner_weight_decay=0.01, batch_size=batch, grad_clip=1.0)
    trainer = InnerTrainer(model, cfg, pick_device("cpu", threads))
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(WARMUP_STEPS + steps):
        x = torch.randint(0, 256, (batch, seq_len + 1), generator=gen)
        t0 = time.perf_counter()
        trainer.step(x[:, :-1], x[:, 1:])
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    return times


def measure(preset: str, steps: int, batch: int, threads: int) -> dict:
    from barnraise.coordinator.manifest import MODEL_PRESETS
    from barnraise.coordinator.modelspec import spec_config
    from barnraise.peer.training.model import build_run_model
    from barnraise.protos import manifest_pb2

    p = MODEL_PRESETS[preset]
    gpt_cfg = spec_config(preset, vocab_size=256, seed=0)
    config = llama_config(p.d_model, p.n_layer, p.n_head, p.seq_len, gpt_cfg.n_params)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-model-step-{os.getpid()}.json"
    path.write_text(json.dumps(config))
    try:
        llama_cfg = spec_config(f"hf:{path}", vocab_size=256, seed=0, seq_len=p.seq_len)
    finally:
        path.unlink()
    out = {"preset": preset, "seq_len": p.seq_len, "batch": batch, "llama_config": config}
    for name, cfg in (("gpt", gpt_cfg), ("llama", llama_cfg)):
        model = build_run_model(manifest_pb2.RunManifest(seed=0, model=cfg))
        times = step_times(model, batch, p.seq_len, steps, threads)
        out[f"{name}_params"] = cfg.n_params
        out[f"{name}_step_s"] = statistics.median(times)
        out[f"{name}_step_times_s"] = times
    out["llama_vs_gpt"] = out["llama_step_s"] / out["gpt_step_s"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="gpt-micro size, 5 steps")
    parser.add_argument(
        "--steps", type=int, default=0, help="timed steps per model (default 20; 5 with --quick)"
    )
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    preset = "gpt-micro" if args.quick else "gpt-small"
    result = measure(preset, args.steps or (5 if args.quick else 20), args.batch, args.threads)
    result.update(
        threads=args.threads,
        quick=args.quick,
        machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        load_average=list(os.getloadavg()),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    text = "\n".join(
        [
            f"bench_model_step: {preset} size, batch {args.batch} x {result['seq_len']} tokens, "
            f"{args.threads} threads, {result['machine']}, load {result['load_average'][0]:.2f}",
            f"  built-in GPT        {result['gpt_params']:>10,} params  {result['gpt_step_s'] * 1e3:8.1f} ms/step",
            f"  transformers Llama  {result['llama_params']:>10,} params  {result['llama_step_s'] * 1e3:8.1f} ms/step",
            f"  Llama / GPT         {result['llama_vs_gpt']:8.2f}",
        ]
    )
    print(text)
    write_results(f"bench_model_step-{stamp()}{'-quick' if args.quick else ''}", result, text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
