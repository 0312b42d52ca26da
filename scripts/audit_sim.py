"""Verified reduction in figures: how fast a lying reducer is caught, and what checking costs.

Usage: python scripts/audit_sim.py [--quick] [--trials N] [--seed S]

1. Detection. For parts of n chunks (model sizes from gpt-nano to 1B parameters in groups of 2 to
   16) a lying reducer corrupts ``ceil(n / 100)`` chunks (1%, at least one), chosen at random each
   round; the other members pick their checks with the product's rule
   (``audit.checks_by``, ``audit.pick_segments``). Monte Carlo over ``--trials`` runs:
   the share caught within 5 rounds, against the 0.99 target and the rule's analytic bound.
2. Cost. Bytes of one round's exchange (each member sends N-1 encoded parts and gets N-1 reduced
   parts back: sizes from the real codecs on a real chunk) against the bytes verified reduction
   adds: the commitments on every chunk, and the audit replies of the checks, whose size is
   measured on real evidence (a real reducer's kept inputs, Merkle paths, signatures).
3. Reducer CPU: whole-chunk robust aggregation against the segment-by-segment one audits need.

Writes ``scripts/results/audit_sim-DATE[-quick].{json,txt}``; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
for path in (SCRIPTS, SCRIPTS.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from baselines.report import describe_machine, stamp, write_results  # noqa: E402

from barnraise.coordinator import keys  # noqa: E402
from barnraise.peer.averaging import audit, codecs, commitments  # noqa: E402
from barnraise.peer.averaging.auditor import Auditor  # noqa: E402
from barnraise.peer.averaging.partreducer import CHUNK_VALUES, PartReducer  # noqa: E402
from barnraise.peer.averaging.robust import RobustConfig, aggregate  # noqa: E402
from barnraise.peer.averaging.segmented import aggregate_segments  # noqa: E402
from barnraise.peer.net.auth import OPEN_RUN  # noqa: E402
from barnraise.protos import averaging_pb2  # noqa: E402

MODELS = {"gpt-nano": 0.1e6, "gpt-small": 4.9e6, "gpt-medium": 25e6, "100M": 100e6, "1B": 1e9}
GROUPS = (2, 4, 8, 16)
CODECS = ("fp32", "int8", "int4")


def caught_within(n_chunks: int, members: int, rounds: int, rng: random.Random) -> bool:
    """One lying reducer, one run of ``rounds`` rounds: does any honest member's check land on a lie?"""
    numel = n_chunks * CHUNK_VALUES
    shares = [audit.checks_by(n_chunks, 0, a, members) for a in range(1, members)]  # the reducer is 0
    bad_count = math.ceil(audit.TARGET_CORRUPT * n_chunks)
    for _ in range(rounds):
        bad = set(rng.sample(range(n_chunks), bad_count))
        for k in shares:
            if any(s // audit.SEGMENTS_PER_CHUNK in bad for s in audit.pick_segments(numel, k, rng)):
                return True
    return False


def detection(trials: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for model, params in MODELS.items():
        for members in GROUPS:
            n = max(1, math.ceil(params / members / CHUNK_VALUES))
            k = audit.checks_per_round(n)
            q = math.ceil(audit.TARGET_CORRUPT * n) / n
            caught = sum(caught_within(n, members, audit.TARGET_ROUNDS, rng) for _ in range(trials))
            rows.append(
                {
                    "model": model,
                    "members": members,
                    "chunks_per_part": n,
                    "checks_per_round": k,
                    "analytic_caught_5": 1 - audit.miss_probability(k, q) ** audit.TARGET_ROUNDS,
                    "measured_caught_5": caught / trials,
                    "trials": trials,
                }
            )
    return rows


def evidence_bytes(members: int, codec: str) -> float:
    """Bytes of one checked segment's audit reply (a full chunk, so Merkle paths are at their longest)."""
    people = sorted(
        (keys.peer_id_of(keys.public_bytes(k)), k) for k in (keys.generate() for _ in range(members))
    )
    group = averaging_pb2.Group(group_id="g" * 40, round=1, codec=codec)
    for pid, _ in people:
        group.members.add(peer_id=pid, weight=123.0, part_fraction=1.0 / members)
    r = PartReducer(group=group, index=0, numel=CHUNK_VALUES, topk_fraction=0.01, check_commitments=True)
    for pid, key in people:
        enc = codecs.encode(torch.randn(CHUNK_VALUES), codec)
        x = codecs.decode(enc, CHUNK_VALUES, codec)
        enc.commitment = commitments.commit(key, group.group_id, 0, 0, 123.0, x)
        r.begin(pid, 123.0)
        r.receive_chunk(pid, 0, enc)
    a = Auditor(p2p=None, peer_id="", auth=OPEN_RUN, robust=RobustConfig())
    a.keep(r)
    reply = a._evidence_of(r, list(range(8)))
    return (reply.ByteSize() + 4) / 8


def codec_bytes_per_value(codec: str) -> float:
    enc = codecs.encode(torch.randn(CHUNK_VALUES), codec)
    return (enc.ByteSize() + 8) / CHUNK_VALUES


def cost(quick: bool) -> list[dict]:
    per_value = {c: codec_bytes_per_value(c) for c in CODECS}
    per_check = {(m, c): evidence_bytes(m, c) for m in GROUPS for c in CODECS}
    rows = []
    for model, params in MODELS.items():
        for members in GROUPS:
            part = params / members
            n = max(1, math.ceil(part / CHUNK_VALUES))
            k = audit.checks_per_round(n)
            for codec in CODECS[:1] if quick else CODECS:
                # the whole group's traffic: N(N-1) parts out, N(N-1) reduced parts back
                exchange = 2 * members * (members - 1) * part * per_value[codec]
                commitment = members * (members - 1) * n * (commitments.COMMITMENT_BYTES + 3)
                checks = members * k  # k checks of every reducer, shared among its auditors
                audits = checks * (per_check[(members, codec)] + 40)  # + the request's share
                extra = commitment + audits
                rows.append(
                    {
                        "model": model,
                        "members": members,
                        "codec": codec,
                        "round_mb": exchange / 1e6,
                        "extra_mb": extra / 1e6,
                        "extra_share": extra / exchange,
                    }
                )
    return rows


def reducer_cpu(members: int = 4) -> dict:
    x, w, cfg = torch.randn(members, CHUNK_VALUES), torch.ones(members), RobustConfig()
    t0 = time.perf_counter()
    aggregate(x, w, cfg)
    t1 = time.perf_counter()
    aggregate_segments(x, w, cfg)
    t2 = time.perf_counter()
    return {"members": members, "whole_chunk_ms": (t1 - t0) * 1e3, "by_segment_ms": (t2 - t1) * 1e3}


def table(det: list[dict], costs: list[dict], cpu: dict) -> str:
    lines = ["detection of a reducer corrupting 1% of its chunks (at least one), within 5 rounds"]
    lines.append(f"{'model':<11}{'N':>3}{'chunks':>8}{'checks':>8}{'analytic':>10}{'measured':>10}")
    for r in det:
        lines.append(
            f"{r['model']:<11}{r['members']:>3}{r['chunks_per_part']:>8}{r['checks_per_round']:>8}"
            f"{r['analytic_caught_5']:>10.4f}{r['measured_caught_5']:>10.4f}"
        )
    lines.append("")
    lines.append("extra bytes of verified reduction against the round's exchange (whole group)")
    lines.append(f"{'model':<11}{'N':>3}{'codec':>6}{'round MB':>11}{'extra MB':>10}{'share':>8}")
    for r in costs:
        lines.append(
            f"{r['model']:<11}{r['members']:>3}{r['codec']:>6}{r['round_mb']:>11.2f}{r['extra_mb']:>10.3f}"
            f"{r['extra_share']:>8.2%}"
        )
    lines.append("")
    lines.append(
        f"reducer CPU per chunk ({cpu['members']} members, centered_clip): whole chunk "
        f"{cpu['whole_chunk_ms']:.1f} ms, by segment {cpu['by_segment_ms']:.1f} ms"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 trials, fp32 only")
    parser.add_argument("--trials", type=int, default=0, help="Monte Carlo runs per configuration")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    trials = args.trials or (200 if args.quick else 2000)
    torch.manual_seed(args.seed)
    det, costs, cpu = detection(trials, args.seed), cost(args.quick), reducer_cpu()
    text = table(det, costs, cpu)
    print(text)
    worst_detect = min(r["measured_caught_5"] for r in det)
    realistic = [r for r in costs if r["model"] not in ("gpt-nano",)]
    summary = {
        "machine": describe_machine(),
        "trials": trials,
        "detection": det,
        "cost": costs,
        "reducer_cpu": cpu,
        "worst_measured_caught_5": worst_detect,
        "worst_extra_share": max(r["extra_share"] for r in costs),
        "worst_extra_share_from_gpt_small": max(r["extra_share"] for r in realistic),
    }
    stem = f"audit_sim-{stamp()}{'-quick' if args.quick else ''}"
    paths = write_results(stem, summary, text)
    print(f"wrote {paths['json']}")
    print(json.dumps({k: v for k, v in summary.items() if k.startswith("worst")} | {"trials": trials}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
