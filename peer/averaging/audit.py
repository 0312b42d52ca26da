"""Verified reduction: how many segments to check, which ones, and whether a reducer's output holds.

The result-hash check (``verdict.py``) proves only that members received the same bytes; a
reducer that combines its part wrongly but sends the same wrong bytes to everyone passes it. So
after the exchange, and before it confirms its result hash, every member checks every other
reducer of its group on a few segments of its part:

1. Each input chunk a reducer combined carries its sender's signed commitment (a Merkle root
   over its segments, ``commitments.py``); the reducer refused any chunk without one.
2. The member picks segments with its own private randomness, drawn after the reduced part
   arrived, so the reducer could not know which segments would be checked when it reduced. It
   asks the reducer for the committed inputs of those segments (``auditor.py``).
3. It recomputes each segment with the run's aggregator: reducers combine segment by segment
   (``segmented.py``), so a segment's output depends only on the inputs of that segment, and
   in group order, so the recomputation repeats the reducer's arithmetic. It compares with what
   it received, allowing only the rounding of the group's codec (``tolerance``).
4. A mismatch is evidence anyone in the group can check (``check_evidence``): the inputs are
   signed by their senders, and every member in the majority holds the same delivered bytes.
   It travels to the leader with the member's confirmation and back to every member with the
   verdict; each member checks it itself, does not apply the round, and bans the reducer.

How many segments. A reducer whose part has ``n`` chunks and which corrupts even 1% of them
corrupts ``m = ceil(n / 100)`` chunks. A check picks a chunk uniformly, then a segment of it, so
it lands on a corrupt chunk with probability ``q = m / n >= max(0.01, 1/n)`` whatever the
chunks' sizes (a reducer cannot hide in the short last chunk). ``checks_per_round`` is the least
``K`` with ``(1 - q)^(5 K) <= 0.005`` (half the promised 0.01, so that a measurement does not sit at
the edge): ``K`` checks of a reducer a round, by its ``A`` auditors together, miss a lie five rounds
running with at most that chance. For n >= 100 chunks, K = 106 (0.99^530 < 0.005); for a part of
24 chunks (25M parameters in groups of 4) q = 1/24 and K = 25; for a part of one chunk (small
models) K = 1 and every check lands on it, so a lie is caught in the very round it is told.
``checks_by`` shares the K among the auditors: each makes ``K // A``, and the ``K mod A`` members
right after the reducer in group order make one more, so a round holds exactly K checks of each
reducer (not ``A`` times the share that one auditor would need alone, which for small parts cost
more bytes than the exchange itself). Who checks is known in advance; which segments is not.
A wrongly reduced chunk is meant as wrong throughout; a reducer that falsifies a share ``phi`` of a
chunk's segments is caught per check with ``q * phi``.
Measured by ``scripts/audit_sim.py`` (detection, Monte Carlo, and bytes against the round's).

What it does not cover: the reducer's own input is one contribution among the others (robust
aggregation bounds it like any member's); a colluding auditor removes its own share of checks
(for a one-chunk part, the one check: the lie then waits for a group with an honest neighbour),
and so does a designated auditor that dropped out of the round; a
leader that drops an accusation leaves the accuser alone not applying (the others keep the
round); with ``topk`` only the kept values are compared.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs, commitments
from barnraise.peer.averaging.partreducer import CHUNK_VALUES, WEIGHT_TOLERANCE, chunk_bounds
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.averaging.segmented import SEGMENT_VALUES, aggregate_segments, segment_bounds
from barnraise.protos import audit_pb2, averaging_pb2

TARGET_MISS = 0.005  # chance a lying reducer goes unnoticed for TARGET_ROUNDS rounds: half the promised 0.01
TARGET_ROUNDS = 5
TARGET_CORRUPT = 0.01  # the smallest share of its chunks a lying reducer corrupts that we promise to catch
MAX_CHECKS = 256  # checks of one reducer per round, whatever the rule says
FLOAT_NOISE = 1e-5  # relative: what platforms' float arithmetic may differ by, never a lie
HONEST, LIE, INVALID = "honest", "lie", "invalid"


def miss_probability(checks: int, q: float) -> float:
    """Chance that ``checks`` checks of a round all miss a share ``q`` of corrupt chunks."""
    return (1.0 - q) ** checks


def checks_per_round(chunks: int) -> int:
    """Checks of one reducer's part of ``chunks`` chunks that a round needs, all auditors together."""
    if chunks <= 0:
        return 0
    q = math.ceil(TARGET_CORRUPT * chunks) / chunks
    k = 1
    while k < MAX_CHECKS and miss_probability(k, q) ** TARGET_ROUNDS > TARGET_MISS:
        k += 1
    return k


def checks_by(chunks: int, reducer: int, auditor: int, members: int) -> int:
    """Checks the member at group position ``auditor`` makes of the reducer at position ``reducer``:
    an even share of ``checks_per_round``, the remainder by the members right after the reducer."""
    if members < 2 or auditor == reducer:
        return 0
    share, rest = divmod(checks_per_round(chunks), members - 1)
    return share + (1 if (auditor - reducer) % members <= rest else 0)


SEGMENTS_PER_CHUNK = CHUNK_VALUES // SEGMENT_VALUES
assert SEGMENTS_PER_CHUNK * SEGMENT_VALUES == CHUNK_VALUES, "a chunk must hold whole segments"


def segment_count(numel: int) -> int:
    """Segments of a part of ``numel`` values, numbered chunk by chunk."""
    full, rest = divmod(numel, CHUNK_VALUES)
    return full * SEGMENTS_PER_CHUNK + -(-rest // SEGMENT_VALUES)


def segment_at(numel: int, number: int) -> tuple[int, int, int] | None:
    """(chunk, start, end) of segment ``number`` of a part of ``numel`` values, start/end within
    the part; None if there is no such segment."""
    if not 0 <= number < segment_count(numel):
        return None
    c, k = divmod(number, SEGMENTS_PER_CHUNK)
    lo = c * CHUNK_VALUES + k * SEGMENT_VALUES
    return c, lo, min(numel, lo + SEGMENT_VALUES, (c + 1) * CHUNK_VALUES)


def part_segments(numel: int) -> list[tuple[int, int, int]]:
    """(chunk, start, end) of every segment of a part (small parts: tests, tools)."""
    return [segment_at(numel, i) for i in range(segment_count(numel))]


def pick_segments(numel: int, count: int, rng: random.Random) -> list[int]:
    """``count`` draws of a segment of a part: a chunk uniformly, then a segment of it (sorted, distinct)."""
    chunks = -(-numel // CHUNK_VALUES)
    picked = set()
    for _ in range(count if chunks else 0):
        c = rng.randrange(chunks)
        in_chunk = -(-(min(numel, (c + 1) * CHUNK_VALUES) - c * CHUNK_VALUES) // SEGMENT_VALUES)
        picked.add(c * SEGMENTS_PER_CHUNK + rng.randrange(in_chunk))
    return sorted(picked)


def segment_slice(
    enc: averaging_pb2.EncodedTensor, codec: str, lo: int, hi: int
) -> averaging_pb2.EncodedTensor | None:
    """Values [lo, hi) of chunk encoding ``enc`` as an encoding of their own, where the codec is
    block-local and the bounds fall on its blocks; None where they do not (send fp32 values then)."""
    width = {"fp32": 4, "fp16": 2, "bf16": 2}.get(codec)
    if width is not None:
        return averaging_pb2.EncodedTensor(codec=codec, numel=hi - lo, data=enc.data[lo * width : hi * width])
    bs = enc.block_size
    if codec not in ("int8", "int4") or bs <= 0 or lo % bs or lo % 2 or (hi % bs and hi != enc.numel):
        return None
    data = enc.data[lo:hi] if codec == "int8" else enc.data[lo // 2 : (hi + 1) // 2]
    scales = enc.scales[2 * (lo // bs) : 2 * -(-hi // bs)]
    return averaging_pb2.EncodedTensor(codec=codec, numel=hi - lo, data=data, scales=scales, block_size=bs)


def tolerance(codec: str, value: torch.Tensor, delivered: torch.Tensor, chunk_absmax: float) -> torch.Tensor:
    """Per value, how far an honest reducer's delivered value may lie from the recomputed ``value``:
    the codec's rounding of it, plus float noise. ``inf`` where the codec may have dropped it (topk)."""
    noise = FLOAT_NOISE * (float(value.abs().max()) if value.numel() else 0.0) + 1e-30
    if codec == "fp32":
        return torch.full_like(value, noise)
    if codec in ("fp16", "bf16"):
        rel = 2.0**-11 if codec == "fp16" else 2.0**-8
        return value.abs() * rel * 1.05 + noise + 6e-8
    if codec in ("int8", "int4"):
        enc = codecs.encode(value, codec)
        scales = torch.from_numpy(np.frombuffer(enc.scales, dtype=np.float16).astype(np.float32))
        per_value = scales.repeat_interleave(enc.block_size)[: value.numel()]
        return 0.5 * per_value * 1.05 + noise
    if codec == "topk":  # kept values are int8 against their block's scale, at most the chunk's largest
        step = chunk_absmax / 127.0
        return torch.where(delivered != 0, torch.full_like(value, 0.5 * step * 1.05 + noise), torch.inf)
    return torch.full_like(value, torch.inf)  # a codec whose rounding we do not bound: nothing to compare


def _decode_inputs(
    group: averaging_pb2.Group, evidence: audit_pb2.SegmentInputs, width: int
) -> tuple[list[torch.Tensor], list[float], str]:
    """Each input's values and signed weight, or why the evidence does not hold together."""
    members = [m.peer_id for m in group.members]
    announced = {m.peer_id: m.weight for m in group.members}
    order = [inp.sender for inp in evidence.inputs]
    if not order or len(set(order)) != len(order) or any(p not in announced for p in order):
        return [], [], "inputs are not distinct group members"
    if order != sorted(order, key=members.index):
        return [], [], "inputs are not in group order"
    rows, weights = [], []
    for inp in evidence.inputs:
        w = inp.weight
        if not (math.isfinite(w) and abs(w - announced[inp.sender]) <= WEIGHT_TOLERANCE * max(1.0, abs(w))):
            return [], [], f"weight {w} of {inp.sender[:12]} differs from the group's"
        values = _values_of(group.codec, inp, width)
        if values is None:
            return [], [], f"values of {inp.sender[:12]} are not a segment of {width} in {group.codec}"
        if not bool(torch.isfinite(values).all()):
            return [], [], "non-finite input values"
        rows.append(values)
        weights.append(w)
    return rows, weights, ""


def _values_of(codec: str, inp: audit_pb2.CommittedInput, width: int) -> torch.Tensor | None:
    """An input's values, sent as fp32 or as the sender encoded them; None if malformed."""
    if inp.data or inp.scales:
        if inp.values:
            return None
        enc = averaging_pb2.EncodedTensor(
            codec=codec, numel=width, data=inp.data, scales=inp.scales, block_size=inp.block_size
        )
        try:
            return codecs.decode(enc, width, codec)
        except (ProtocolError, ValueError):
            return None
    if len(inp.values) != 4 * width:
        return None
    return torch.from_numpy(np.frombuffer(inp.values, dtype="<f4").copy())


def check_evidence(
    group: averaging_pb2.Group,
    part: int,
    part_numel: int,
    evidence: audit_pb2.SegmentInputs,
    delivered: torch.Tensor,
    robust: RobustConfig,
    contributors: list[str] | None = None,
) -> tuple[str, str]:
    """(HONEST | LIE | INVALID, why) for one segment of reducer ``part``'s output, ``delivered``
    being the whole part as this member decoded it; ``contributors`` those the reducer's summary
    says are in (each must be among the segment's inputs)."""
    where = segment_at(part_numel, evidence.segment)
    if where is None or delivered.numel() != part_numel:
        return INVALID, f"segment {evidence.segment} outside the part"
    c, lo, hi = where
    rows, weights, why = _decode_inputs(group, evidence, hi - lo)
    if why:
        return INVALID, why
    senders = [inp.sender for inp in evidence.inputs]
    if contributors and not set(contributors) <= set(senders):
        return INVALID, "inputs of contributors are missing"
    cs, ce = chunk_bounds(part_numel)[c]
    leaf_index, leaf_count = (lo - cs) // SEGMENT_VALUES, len(segment_bounds(ce - cs))
    for inp, row in zip(evidence.inputs, rows, strict=True):
        got = commitments.root_from_path(commitments.leaves(row)[0], leaf_index, leaf_count, list(inp.path))
        if got is None or got != inp.root:
            return INVALID, f"Merkle path of {inp.sender[:12]} does not lead to its root"
        statement = commitments.statement(group.group_id, part, c, inp.weight, inp.root)
        if why := commitments.verify(inp.sender, inp.signature, statement):
            return INVALID, why
    value, _ = aggregate_segments(torch.stack(rows), torch.tensor(weights, dtype=torch.float32), robust)
    got = delivered[lo:hi]
    chunk_absmax = float(delivered[cs:ce].abs().max()) if ce > cs else 0.0
    off = (got - value).abs() - tolerance(group.codec, value, got, chunk_absmax)
    if bool((off > 0).any()):
        worst = int(off.argmax())
        return LIE, (
            f"segment {evidence.segment} (chunk {c + 1}): value {float(got[worst]):.6g} delivered, "
            f"{float(value[worst]):.6g} from the signed inputs"
        )
    return HONEST, ""
