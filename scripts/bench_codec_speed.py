"""Time every update codec on one CPU core and compare its size on the wire with the ideal.

Usage: python scripts/bench_codec_speed.py [--numel N] [--quick] [--repeats R]

Encodes and decodes N random fp32 values (default 100,000,000; --quick 10,000,000) with
``torch.set_num_threads(1)``, prints a table, and prints one JSON object as its last line:
{"encode_decode_s": {...}, "encode_s": {...}, "decode_s": {...}, "bytes_per_param": {...},
"ideal_bytes_per_param": {...}, "numel": N, ...}. Times are the best of R runs.
``measure(numel)`` returns the same dict for other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from barnraise.peer.averaging import codecs  # noqa: E402

DEFAULT_NUMEL = 100_000_000
QUICK_NUMEL = 10_000_000


def measure(
    numel: int,
    *,
    codec_names: tuple[str, ...] = codecs.CODECS,
    repeats: int = 2,
    topk_fraction: float = codecs.DEFAULT_TOPK_FRACTION,
    seed: int = 0,
) -> dict:
    """Encode+decode seconds and bytes/param of ``numel`` random fp32 values, per codec, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(numel, generator=torch.Generator().manual_seed(seed))
        enc_s, dec_s, per_param, ideal = {}, {}, {}, {}
        for name in codec_names:
            best_enc = best_dec = float("inf")
            size = 0
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                msg = codecs.encode(x, name, topk_fraction=topk_fraction)
                t1 = time.perf_counter()
                out = codecs.decode(msg, numel, name)
                t2 = time.perf_counter()
                best_enc, best_dec = min(best_enc, t1 - t0), min(best_dec, t2 - t1)
                size = msg.ByteSize()
                del msg, out
            enc_s[name], dec_s[name] = best_enc, best_dec
            per_param[name] = size / numel
            ideal[name] = codecs.ideal_bytes(name, numel, topk_fraction) / numel
    finally:
        torch.set_num_threads(threads)
    return {
        "encode_decode_s": {k: round(enc_s[k] + dec_s[k], 4) for k in enc_s},
        "encode_s": {k: round(v, 4) for k, v in enc_s.items()},
        "decode_s": {k: round(v, 4) for k, v in dec_s.items()},
        "bytes_per_param": {k: round(v, 6) for k, v in per_param.items()},
        "ideal_bytes_per_param": {k: round(v, 6) for k, v in ideal.items()},
        "numel": numel,
        "threads": 1,
        "topk_fraction": topk_fraction,
        "repeats": max(1, repeats),
    }


def _table(result: dict) -> str:
    cols = ("encode s", "decode s", "total s", "B/param", "ideal", "ratio")
    head = f"{'codec':<6} " + " ".join(f"{c:>{w}}" for c, w in zip(cols, (9, 9, 8, 9, 9, 6), strict=True))
    lines = [f"{result['numel']:,} fp32 values, 1 thread, best of {result['repeats']}", head]
    for name, total in result["encode_decode_s"].items():
        size, ideal = result["bytes_per_param"][name], result["ideal_bytes_per_param"][name]
        ratio = size / ideal if ideal else float("nan")
        lines.append(
            f"{name:<6} {result['encode_s'][name]:>9.3f} {result['decode_s'][name]:>9.3f} {total:>8.3f} "
            f"{size:>9.5f} {ideal:>9.5f} {ratio:>6.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--numel", type=int, default=None, help=f"values to encode (default {DEFAULT_NUMEL:,})"
    )
    parser.add_argument("--quick", action="store_true", help=f"use {QUICK_NUMEL:,} values")
    parser.add_argument("--repeats", type=int, default=2, help="runs per codec; the best counts")
    parser.add_argument("--topk-fraction", type=float, default=codecs.DEFAULT_TOPK_FRACTION)
    args = parser.parse_args()
    numel = args.numel if args.numel is not None else QUICK_NUMEL if args.quick else DEFAULT_NUMEL
    result = measure(numel, repeats=args.repeats, topk_fraction=args.topk_fraction)
    print(_table(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
