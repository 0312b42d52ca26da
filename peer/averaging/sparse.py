"""The ``sparse`` codec: top-k per chunk, 2-bit values, packed in-chunk indices (SparseLoCo's family).

At 25 Mbit/s the bytes of a round decide which models volunteers can train at all, and a dense
codec stops at about half a byte per parameter (int4). This one keeps the ``k`` largest-magnitude
entries of every chunk of ``C`` values (C a power of two up to 4096, so an in-chunk position takes
``log2(C)`` <= 12 bits) and quantises them to 2 bits against one fp16 scale per chunk. At the
default C = 4096, k = 64 (1.56% density) a chunk takes 16 bytes of values, 96 of indices and 2 of
scale: 0.028 bytes per parameter. Error feedback (``codecs.ErrorFeedback``) keeps what was dropped.

Layout of an ``EncodedTensor`` with codec ``sparse`` (``numel`` values):

* ``block_size`` = C; ``nnz`` = k, the values kept per full chunk; the last chunk, of
  ``L = numel mod C`` values when that is not zero, keeps ``min(k, L)``.
* ``scales``: one fp16 scale ``s`` per chunk, finite and non-negative.
* ``data``: one 2-bit code per kept value, four per byte, first value in the lowest bits:
  bit 1 is the sign (1: negative), bit 0 the magnitude (0: ``s``, 1: ``3 s``). Unused bits of the
  last byte are zero.
* ``indices``: the kept positions within their chunk, ``log2(C)`` bits each, chunk after chunk,
  as one big-endian bit stream padded with zero bits to a whole byte. Positions are strictly
  increasing within a chunk (so no position repeats) and below the chunk's length.

Every length is fixed by (numel, C, k), so ``decode`` checks sizes before it parses anything,
then the scales, padding bits, index ranges and order: a hostile message is refused with a
``ProtocolError`` before a value is used. Encoding is deterministic (fixed arithmetic, no
randomness), and decoding is on the CPU, so every member reads the same bytes as the same floats.

The scale is fitted per chunk to the two magnitude levels ``{s, 3 s}`` (two least-squares passes
starting from ``max / 3``), rounded to fp16; each value takes the level nearer to it. What this
costs in accuracy error feedback carries into the next round.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging.blockquant import FP16_MAX, expect_len, read_scales, to_bytes
from barnraise.protos import averaging_pb2

DEFAULT_CHUNK = 4096  # values per chunk: positions fit 12 bits
DEFAULT_PER_CHUNK = 64  # values kept per chunk: 1.56% density
MIN_CHUNK, MAX_CHUNK = 16, 4096
MAX_DENSITY = 0.25  # beyond this a dense int4 part is as small; also bounds what a receiver parses


def index_bits(chunk: int) -> int:
    return chunk.bit_length() - 1


def check_layout(chunk: int, per_chunk: int) -> None:
    """ValueError unless ``chunk`` is a power of two in range and ``per_chunk`` fits its density cap."""
    if not (isinstance(chunk, int) and MIN_CHUNK <= chunk <= MAX_CHUNK and chunk & (chunk - 1) == 0):
        raise ValueError(f"sparse chunk must be a power of two in {MIN_CHUNK}..{MAX_CHUNK}, not {chunk!r}")
    if not (isinstance(per_chunk, int) and 1 <= per_chunk <= max_per_chunk(chunk)):
        raise ValueError(f"values per chunk must be in 1..{max_per_chunk(chunk)}, not {per_chunk!r}")


def max_per_chunk(chunk: int) -> int:
    return max(1, int(chunk * MAX_DENSITY))


def kept_count(numel: int, chunk: int, per_chunk: int) -> int:
    """Values a message of ``numel`` values keeps: ``per_chunk`` per full chunk, fewer in a short last one."""
    full, tail = divmod(numel, chunk)
    return full * per_chunk + min(per_chunk, tail)


def payload_sizes(numel: int, chunk: int, per_chunk: int) -> tuple[int, int, int]:
    """(data, scales, indices) bytes of a valid message."""
    m = kept_count(numel, chunk, per_chunk)
    return -(-m // 4), 2 * -(-numel // chunk), -(-m * index_bits(chunk) // 8)


def bytes_per_param(chunk: int = DEFAULT_CHUNK, per_chunk: int = DEFAULT_PER_CHUNK) -> float:
    """Payload bytes per parameter of long tensors (no framing)."""
    return (per_chunk * (2 + index_bits(chunk)) / 8 + 2) / chunk


# ---------------------------------------------------------------------------------------- encoding


def _fit_scales(mag: torch.Tensor) -> torch.Tensor:
    """fp16 scale per row of kept magnitudes for the levels {s, 3s}: least squares, twice."""
    s = mag.amax(dim=1) / 3
    for _ in range(2):
        level = torch.where(mag >= 2 * s[:, None], 3.0, 1.0)
        denom = (level * level).sum(dim=1)
        s = torch.where(denom > 0, (mag * level).sum(dim=1) / denom, torch.zeros_like(s))
    return s.clamp(0, FP16_MAX).to(torch.float16)


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` (each below 2**bits) as one big-endian bit stream, zero-padded to whole bytes."""
    if values.size == 0:
        return b""
    raw = np.unpackbits(values.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1)
    return np.packbits(raw[:, 16 - bits :].reshape(-1)).tobytes()


def _unpack_bits(raw: bytes, count: int, bits: int) -> np.ndarray:
    stream = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if stream[count * bits :].any():
        raise ProtocolError("sparse indices: padding bits are not zero")
    fields = stream[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    return fields.astype(np.int64) @ weights


def _rows(x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    full = x.numel() // chunk
    body = x[: full * chunk].view(full, chunk)
    tail = x[full * chunk :] if x.numel() % chunk else None
    return body, tail


def _select(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted positions, fp16 scales and 2-bit codes of the ``k`` largest magnitudes of each row."""
    pos = torch.topk(rows.abs(), k, dim=1, sorted=False).indices.sort(dim=1).values
    vals = rows.gather(1, pos)
    mag = vals.abs()
    s16 = _fit_scales(mag)
    s = s16.float()[:, None]
    code = (vals < 0).to(torch.uint8) * 2 + (mag >= 2 * s).to(torch.uint8)
    return pos, s16, code


def encode_sparse(x: torch.Tensor, chunk: int, per_chunk: int) -> averaging_pb2.EncodedTensor:
    """Encode flat fp32 ``x``; ValueError on a bad layout or non-finite input."""
    check_layout(chunk, per_chunk)
    n = x.numel()
    if n and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError("cannot encode non-finite values (NaN or Inf)")
    body, tail = _rows(x.float(), chunk)
    parts = [_select(body, min(per_chunk, chunk))] if body.shape[0] else []
    if tail is not None:
        parts.append(_select(tail[None, :], min(per_chunk, tail.numel())))
    pos = np.concatenate([p.reshape(-1).cpu().numpy() for p, _, _ in parts]) if parts else np.zeros(0)
    scales = torch.cat([s for _, s, _ in parts]) if parts else torch.zeros(0, dtype=torch.float16)
    codes = np.concatenate([c.reshape(-1).cpu().numpy() for _, _, c in parts]) if parts else np.zeros(0)
    padded = np.zeros(-(-codes.size // 4) * 4, dtype=np.uint8)
    padded[: codes.size] = codes
    quads = padded.reshape(-1, 4)
    data = quads[:, 0] | (quads[:, 1] << 2) | (quads[:, 2] << 4) | (quads[:, 3] << 6)
    return averaging_pb2.EncodedTensor(
        codec="sparse",
        numel=n,
        data=data.astype(np.uint8).tobytes(),
        scales=to_bytes(scales),
        indices=_pack_bits(pos.astype(np.int64), index_bits(chunk)),
        block_size=chunk,
        nnz=per_chunk,
    )


# ---------------------------------------------------------------------------------------- decoding


def read_layout(msg: averaging_pb2.EncodedTensor) -> tuple[int, int]:
    """(chunk, values per chunk) of an untrusted message; ProtocolError if out of range."""
    chunk, k = msg.block_size, msg.nnz
    try:
        check_layout(chunk, k)
    except ValueError as e:
        raise ProtocolError(str(e)) from None
    return chunk, k


def decode_positions(msg: averaging_pb2.EncodedTensor, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (global positions ascending, fp32 values) of an untrusted sparse message."""
    chunk, k = read_layout(msg)
    data_len, scales_len, idx_len = payload_sizes(numel, chunk, k)
    expect_len("sparse data", len(msg.data), data_len)
    expect_len("sparse scales", len(msg.scales), scales_len)
    expect_len("sparse indices", len(msg.indices), idx_len)
    m = kept_count(numel, chunk, k)
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scales = read_scales(msg.scales)
    local = _unpack_bits(msg.indices, m, index_bits(chunk))
    full = numel // chunk
    kept_full = full * k
    # Row of each kept value and the length of the chunk it belongs to.
    row = np.empty(m, dtype=np.int64)
    row[:kept_full] = np.arange(kept_full) // k
    row[kept_full:] = full
    length = np.where(row < full, chunk, numel - full * chunk)
    if (local >= length).any():
        raise ProtocolError("sparse index out of range")
    same_row = row[1:] == row[:-1]
    if (same_row & (local[1:] <= local[:-1])).any():
        raise ProtocolError("sparse indices within a chunk are not strictly increasing (duplicate index)")
    codes = np.unpackbits(np.frombuffer(msg.data, dtype=np.uint8), bitorder="little").reshape(-1, 2)
    if codes[m:].any():
        raise ProtocolError("sparse data: padding bits are not zero")
    codes = codes[:m]
    level = np.where(codes[:, 0] == 1, 3.0, 1.0).astype(np.float32)
    values = np.where(codes[:, 1] == 1, -level, level) * scales[row]
    if not np.isfinite(values).all():
        raise ProtocolError("non-finite values (NaN or Inf)")
    return row * chunk + local, values.astype(np.float32)


def decode_sparse(
    msg: averaging_pb2.EncodedTensor, numel: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Dense fp32 tensor of an untrusted sparse message (zeros where nothing was kept)."""
    pos, values = decode_positions(msg, numel)
    out = torch.zeros(numel, dtype=torch.float32) if out is None else out.zero_()
    out.numpy()[pos] = values
    return out


def max_sparse_bytes(numel: int, chunk: int | None = None, per_chunk: int | None = None) -> int:
    """Largest payload (data + scales + indices) ``decode`` accepts for ``numel`` values.

    Without a layout the bound holds for any chunk and density ``decode`` accepts.
    """
    if chunk is not None and per_chunk is not None:
        return sum(payload_sizes(numel, chunk, per_chunk))
    c = MIN_CHUNK
    best = 0
    while c <= MAX_CHUNK:
        best = max(best, sum(payload_sizes(numel, c, max_per_chunk(c))))
        c *= 2
    return best
