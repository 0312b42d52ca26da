"""How fast ``init --tokenizer`` turns text into shards of token ids, against reading the same text
byte-level (``--tokenizer bytes``) in the same run.

Usage: python scripts/bench_tokenize.py [--quick] [--mb N] [--vocab N] [--threads T]

Builds a corpus of N MB (default 64; --quick 8) from this machine's Python standard library
sources, trains a byte-level BPE of ``--vocab`` tokens on it (timed apart: training reads at most
``BPE_TRAIN_MAX_BYTES``), then times init's shard path (``write_shards`` over ``encoded_source``)
with T encoding processes (default 2) and the tokenizers thread pool limited to T threads, and the
byte-level path as the baseline. Besides wall-clock MB/s it reports MB per CPU second (this process
and its workers), which a machine busy with other work changes far less: times T, it is the rate
T idle cores reach. Prints a table and, as the last line, one JSON object; writes
scripts/results/bench_tokenize-DATE-HOST[-quick].{json,txt}. Record the load average with a figure:
a busy machine lowers it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from baselines.report import stamp, write_results  # noqa: E402


def build_corpus(directory: Path, total_bytes: int) -> int:
    """Copies of the standard library's sources in ``directory`` until ``total_bytes``; bytes written."""
    from barnraise.coordinator.operator.datasets import builtin_source

    written, i = 0, 0
    while written < total_bytes:
        for chunk in builtin_source().chunks:
            if written >= total_bytes:
                break
            (directory / f"{i:06d}.py").write_bytes(chunk)
            written += len(chunk)
            i += 1
    return written


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the encoding workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_shards(source, out: Path) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds to write the source's shards into ``out``, and the tokens written."""
    from barnraise.coordinator.operator.datasets import write_shards

    t0, c0 = time.perf_counter(), cpu_seconds()
    info, _ = write_shards(source, out)
    return time.perf_counter() - t0, cpu_seconds() - c0, info.total_tokens


def measure(mb: int, vocab: int, workers: int) -> dict:
    from barnraise.coordinator.operator.datasets import text_dir_source
    from barnraise.coordinator.operator.tokenizing import encoded_source, train_bpe

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        corpus = Path(tmp) / "text"
        corpus.mkdir()
        size = build_corpus(corpus, mb * 1_000_000)
        bytes_s, _, _ = timed_shards(text_dir_source(corpus), Path(tmp) / "bytes")
        t0 = time.perf_counter()
        tokenizer = train_bpe(text_dir_source(corpus), vocab)
        train_s = time.perf_counter() - t0
        bpe_s, bpe_cpu_s, tokens = timed_shards(
            encoded_source(text_dir_source(corpus), tokenizer, vocab, workers=workers), Path(tmp) / "bpe"
        )
    return {
        "text_bytes": size,
        "vocab": vocab,
        "tokens": tokens,
        "bytes_per_token": size / tokens,
        "train_bpe_s": train_s,
        "bytes_path_s": bytes_s,
        "bpe_path_s": bpe_s,
        "bytes_path_mb_s": size / bytes_s / 1e6,
        "bpe_path_mb_s": size / bpe_s / 1e6,
        "bpe_path_cpu_s": bpe_cpu_s,
        "bpe_mb_per_cpu_s": size / bpe_cpu_s / 1e6,
        "bpe_vs_bytes": bytes_s / bpe_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 MB of text")
    parser.add_argument("--mb", type=int, default=0, help="MB of text (default 64; 8 with --quick)")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary")
    parser.add_argument("--threads", type=int, default=2, help="tokenizer threads (RAYON_NUM_THREADS)")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when the tokenizers pool starts
    mb = args.mb or (8 if args.quick else 64)
    result = measure(mb, args.vocab, args.threads)
    result.update(
        threads=args.threads,
        quick=args.quick,
        machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        load_average=list(os.getloadavg()),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    lines = [
        f"bench_tokenize: {result['text_bytes'] / 1e6:.0f} MB of Python source, BPE vocabulary {args.vocab}, "
        f"{args.threads} tokenizer threads, {result['machine']}, load {result['load_average'][0]:.2f}",
        f"  train BPE             {result['train_bpe_s']:8.1f} s",
        f"  shards, bytes         {result['bytes_path_mb_s']:8.1f} MB/s  (baseline: no tokenizer)",
        f"  shards, BPE           {result['bpe_path_mb_s']:8.1f} MB/s  ({result['bytes_per_token']:.2f} bytes/token)",
        f"  BPE, per CPU second   {result['bpe_mb_per_cpu_s']:8.1f} MB  (x{args.threads} cores: "
        f"{args.threads * result['bpe_mb_per_cpu_s']:.1f} MB/s on an idle machine)",
        f"  BPE / bytes speed     {result['bpe_vs_bytes']:8.2f}",
    ]
    text = "\n".join(lines)
    print(text)
    write_results(f"bench_tokenize-{stamp()}{'-quick' if args.quick else ''}", result, text)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
