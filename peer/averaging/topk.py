"""Top-k sparsification on the wire: the largest-magnitude entries, int8 values, varint gaps.

``nnz`` values, int8 with one fp16 scale per block of ``block_size`` kept values (``peer/blockquant.py``);
``indices`` holds their positions, ascending, as unsigned LEB128 varints of the gaps (the first
position itself, then each difference to the previous one). Decoding bounds every count and
length by what ``numel`` allows before it parses, so a hostile message cannot make a receiver
allocate or loop beyond the part it expects.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging.blockquant import (
    CPU_CHUNK,
    expect_len,
    quantize,
    read_block_size,
    read_scales,
    scale_into,
    to_bytes,
)
from barnraise.protos import averaging_pb2

DEFAULT_TOPK_FRACTION = 0.01
# Beyond a quarter of the entries a dense int4/int8 part is as small, so neither side goes there;
# it also bounds what a hostile sender can make a receiver parse.
MAX_TOPK_FRACTION = 0.25
_TOPK_SAMPLE = 1 << 18
_TOPK_SEED = 0x7A9C3


def topk_count(numel: int, topk_fraction: float = DEFAULT_TOPK_FRACTION) -> int:
    """How many entries ``topk`` keeps of ``numel`` at ``topk_fraction`` (at least one, if any)."""
    if numel <= 0:
        return 0
    return min(numel, max(1, math.ceil(topk_fraction * numel)))


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def max_varint_len(numel: int) -> int:
    """Longest varint a valid topk message of ``numel`` values holds: every gap is below numel."""
    return _varint_len(max(0, numel - 1))


def max_index_bytes(numel: int, nnz: int) -> int:
    """Most bytes ``nnz`` strictly increasing positions below ``numel`` can take as gap varints.

    The gaps sum to at most numel - 1. Each extra byte of a varint costs a jump of the gap to the
    next power of 128, so the longest stream lengthens as many varints as the budget allows, cheapest
    level first.
    """
    if nnz <= 0:
        return 0
    total, budget, level = nnz, max(0, numel - nnz), 1
    while budget > 0:
        cost = 128**level - 128 ** (level - 1)
        grown = min(nnz, budget // cost)
        total += grown
        budget -= grown * cost
        if grown < nnz:
            break
        level += 1
    return total


def _topk_positions(x: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending positions of the ``k`` largest-magnitude nonzero entries (fewer if fewer are nonzero).

    On the CPU a full top-k over 10^8 entries takes seconds, so a fixed-seed sample estimates a
    threshold a little below the k-th magnitude, one streaming pass keeps the candidates above it,
    and the exact top-k is taken among those. Any miss falls back to the full top-k.
    """
    n = x.numel()
    if k == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    picked = None
    if not x.is_cuda and n > 8 * _TOPK_SAMPLE and 4 * k < n:
        picked = _topk_by_threshold(x, k)
    if picked is None:
        mag = x.abs()
        top, picked = torch.topk(mag, k, sorted=False)
        picked = picked[top > 0]
    return picked.sort().values


def _topk_by_threshold(x: torch.Tensor, k: int) -> torch.Tensor | None:
    n, m = x.numel(), _TOPK_SAMPLE
    gen = torch.Generator(device=x.device).manual_seed(_TOPK_SEED)
    sample = x[torch.randint(n, (m,), generator=gen, device=x.device)].abs_()
    expected = k * m / n
    rank = math.ceil(1.2 * expected + 4 * math.sqrt(expected) + 16)  # from the top, with margin
    if rank >= m:
        return None
    threshold = float(torch.kthvalue(sample, m - rank + 1).values)
    cap = 4 * k + 4096
    found, count = [], 0
    for e0 in range(0, n, CPU_CHUNK):
        mag = x[e0 : e0 + CPU_CHUNK].abs()
        keep = mag > 0 if threshold == 0 else mag >= threshold
        hits = keep.nonzero().squeeze(1)
        count += hits.numel()
        if count > cap:
            return None
        found.append(hits + e0)
    cand = torch.cat(found)
    if cand.numel() < k and threshold > 0:
        return None
    if cand.numel() > k:
        sel = torch.topk(x[cand].abs(), k, sorted=False).indices
        cand = cand[sel.sort().values]
    return cand


def _varint_encode(values: torch.Tensor, max_len: int) -> torch.Tensor:
    """Unsigned LEB128 of non-negative int64 ``values`` (each below 128**max_len), as uint8."""
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8, device=values.device)
    lengths = torch.ones_like(values)
    for j in range(1, max_len):
        lengths += values >= (1 << (7 * j))
    ends = lengths.cumsum(0)
    starts = ends - lengths
    out = torch.empty(int(ends[-1]), dtype=torch.uint8, device=values.device)
    for j in range(max_len):
        if j:
            sel = (lengths > j).nonzero().squeeze(1)
            if sel.numel() == 0:
                break
            v, s, n = values[sel], starts[sel], lengths[sel]
        else:
            v, s, n = values, starts, lengths
        byte = ((v >> (7 * j)) & 0x7F) | ((n > j + 1).to(torch.int64) << 7)
        out[s + j] = byte.to(torch.uint8)
    return out


def encode_topk(x: torch.Tensor, block_size: int, topk_fraction: float) -> averaging_pb2.EncodedTensor:
    n = x.numel()
    total = x.sum()  # one cheap pass: finite iff every entry is
    if not math.isfinite(float(total)) and not bool(torch.isfinite(x).all()):
        raise ValueError("cannot encode non-finite values (NaN or Inf)")
    pos = _topk_positions(x, topk_count(n, topk_fraction))
    vals = x[pos]
    q = torch.empty(vals.numel(), dtype=torch.int8, device=x.device)

    def sink(start: int, y: torch.Tensor) -> None:
        q[start : start + y.numel()].copy_(y)

    scales = quantize(vals, block_size, 127, sink)
    gaps = torch.diff(pos, prepend=pos.new_zeros(1)) if pos.numel() else pos
    indices = _varint_encode(gaps, max_varint_len(n))
    return averaging_pb2.EncodedTensor(
        codec="topk",
        numel=n,
        data=to_bytes(q),
        scales=to_bytes(scales),
        indices=to_bytes(indices),
        block_size=block_size,
        nnz=pos.numel(),
    )


def _decode_varints(raw: bytes, nnz: int, max_len: int) -> np.ndarray:
    b = np.frombuffer(raw, dtype=np.uint8)
    if b[-1] & 0x80:
        raise ProtocolError("index stream ends inside a varint")
    ends = np.flatnonzero(b < 0x80)
    if ends.size != nnz:
        raise ProtocolError(f"index stream holds {ends.size} varints where nnz is {nnz}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > max_len:
        raise ProtocolError(f"index varint longer than {max_len} bytes")
    if ((lengths > 1) & (b[ends] == 0)).any():
        raise ProtocolError("index varint is not minimally encoded")
    values = (b[starts] & 0x7F).astype(np.int64)
    for j in range(1, max_len):
        sel = np.flatnonzero(lengths > j)
        if sel.size == 0:
            break
        values[sel] |= (b[starts[sel] + j] & 0x7F).astype(np.int64) << (7 * j)
    return values


def decode_topk(msg: averaging_pb2.EncodedTensor, numel: int) -> torch.Tensor:
    bs = read_block_size(msg)
    nnz = msg.nnz
    limit = topk_count(numel, MAX_TOPK_FRACTION)
    if nnz > limit:
        raise ProtocolError(f"nnz {nnz} exceeds the limit of {limit} for {numel} elements")
    data, raw_scales, raw_idx = msg.data, msg.scales, msg.indices
    expect_len("topk data", len(data), nnz)
    expect_len("topk scales", len(raw_scales), 2 * -(-nnz // bs))
    max_len = max_varint_len(numel)
    if not nnz <= len(raw_idx) <= max_index_bytes(numel, nnz):
        raise ProtocolError(f"topk indices: {len(raw_idx)} bytes cannot hold {nnz} positions below {numel}")
    if nnz == 0:
        return torch.zeros(numel, dtype=torch.float32)
    scales = read_scales(raw_scales)
    gaps = _decode_varints(raw_idx, nnz, max_len)
    if (gaps[1:] == 0).any():
        raise ProtocolError("topk indices are not strictly increasing")
    if int(gaps.max()) >= numel:
        raise ProtocolError("topk index out of range")
    pos = np.cumsum(gaps)
    # Each gap is below numel, so a sum can only wrap after passing numel: bounds on all catch it.
    if int(pos.max()) >= numel or int(pos.min()) < 0:
        raise ProtocolError("topk index out of range")
    vals = np.empty(nnz, dtype=np.float32)
    scale_into(np.frombuffer(data, dtype=np.int8), scales, bs, vals)
    if not np.isfinite(vals).all():
        raise ProtocolError("non-finite values (NaN or Inf)")
    out = torch.zeros(numel, dtype=torch.float32)
    out.numpy()[pos] = vals
    return out
