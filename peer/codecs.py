"""Update codecs: how a pseudo-gradient part is put on the wire and checked when it comes back.

hivemind's codec set is a closed protobuf enum (and its 8-bit codecs decode wrongly on numpy >= 2.4),
so barnraise carries its own: each codec turns a flat fp32 tensor into an ``EncodedTensor`` and
back, and ``decode`` validates everything an untrusted sender controls (sizes, counts, indices,
finite values) before a single value is used.

Codec names are a wire contract: fp32, fp16, bf16, int8, int4, topk (more are added, never renamed).

Layouts (``block_size`` is chosen by the sender and travels in the message):

* ``fp32`` / ``fp16`` / ``bf16``: ``data`` holds the values, little-endian.
* ``int8``: blockwise absmax. ``data`` holds one signed byte per value (-127..127), ``scales`` one
  fp16 scale per block of ``block_size`` values (the last block may be short); value = q * scale.
* ``int4``: as int8 with 4-bit signed values (-7..7), two per byte: even positions in the low
  nibble, odd positions in the high one; an odd count leaves the last high nibble zero.
* ``topk``: the largest-magnitude entries. ``nnz`` values, int8 with one fp16 scale per block of
  ``block_size`` kept values; ``indices`` holds their positions, ascending, as unsigned LEB128
  varints of the gaps (the first position itself, then each difference to the previous one).

Scales are rounded up to the next fp16, and values are quantised with that rounded scale, so the
error of every value is at most half its block's scale. Encoding is deterministic (round half to
even, no randomness that depends on anything but the input), so the same update always gives the
same bytes, and decoding runs on the CPU, so every peer reads the same bytes as the same floats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from coordinator.errors import ProtocolError
from protos import averaging_pb2

_FLOAT_CODECS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_QUANT_LEVELS = {"int8": 127, "int4": 7, "topk": 127}
CODECS = (*_FLOAT_CODECS, "int8", "int4", "topk")

DEFAULT_BLOCK_SIZE = {"int8": 256, "int4": 64, "topk": 256}
MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 65536
DEFAULT_TOPK_FRACTION = 0.01
# Beyond a quarter of the entries a dense int4/int8 part is as small, so neither side goes there;
# it also bounds what a hostile sender can make a receiver parse.
MAX_TOPK_FRACTION = 0.25
MAX_NUMEL = 1 << 48

_FP16_MAX = 65504.0
_PROTO_OVERHEAD = 64  # field tags and length prefixes of one EncodedTensor, generously
_CPU_CHUNK = 1 << 18  # elements per pass on the CPU: large enough to amortise, small enough for cache
_CUDA_CHUNK = 1 << 24
_TOPK_SAMPLE = 1 << 18
_TOPK_SEED = 0x7A9C3


def check_codec(name: str) -> str:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return name


def topk_count(numel: int, topk_fraction: float = DEFAULT_TOPK_FRACTION) -> int:
    """How many entries ``topk`` keeps of ``numel`` at ``topk_fraction`` (at least one, if any)."""
    if numel <= 0:
        return 0
    return min(numel, max(1, math.ceil(topk_fraction * numel)))


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _max_varint_len(numel: int) -> int:
    """Longest varint a valid topk message of ``numel`` values holds: every gap is below numel."""
    return _varint_len(max(0, numel - 1))


def _max_index_bytes(numel: int, nnz: int) -> int:
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


def _check_block_size(block_size: int) -> int:
    if not isinstance(block_size, int) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block_size must be an integer in {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}, not {block_size!r}"
        )
    return block_size


# ---------------------------------------------------------------------------------------- encoding


def _block_scales(amax: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 scales (rounded up, so no value overflows ``levels``) and their fp32 reciprocals."""
    want = amax / levels
    want = torch.where(want > 0, want.clamp(max=_FP16_MAX), torch.zeros_like(want))  # no -0, NaN
    s16 = want.to(torch.float16)
    low = s16.float() < want  # rounded down: step to the next fp16 (positive, so next bit pattern)
    s16 = torch.where(low, (s16.view(torch.int16) + 1).view(torch.float16), s16)
    s32 = s16.float()
    inv = torch.where(s32 > 0, s32.reciprocal(), torch.zeros_like(s32))
    return s16, inv


def _quantize(x: torch.Tensor, block_size: int, levels: int, sink) -> torch.Tensor:
    """Blockwise absmax-quantise flat fp32 ``x`` chunk by chunk; returns the fp16 scales.

    ``sink(start, q)`` receives each chunk's rounded values (fp32 holding integers in
    -levels..levels) and where they start; chunks start at even positions.
    """
    n = x.numel()
    nblocks = -(-n // block_size)
    scales = torch.empty(nblocks, dtype=torch.float16, device=x.device)
    amax_all = torch.empty(nblocks, dtype=torch.float32, device=x.device)
    chunk = _CUDA_CHUNK if x.is_cuda else _CPU_CHUNK
    step = max(2, chunk // block_size)
    step += step % 2
    for b0 in range(0, nblocks, step):
        b1 = min(nblocks, b0 + step)
        e0, e1 = b0 * block_size, min(n, b1 * block_size)
        full = (e1 - e0) // block_size
        seg = x[e0:e1]
        body = seg[: full * block_size].view(full, block_size)
        amax = amax_all[b0:b1]
        # amax and amin as two reductions: far faster on the CPU than torch.aminmax or abs().amax()
        if full:
            torch.maximum(body.amax(1), body.amin(1).neg_(), out=amax[:full])
        if full < b1 - b0:  # the short last block
            rest = seg[full * block_size :]
            amax[full] = torch.maximum(rest.amax(), rest.amin().neg_())
        s16, inv = _block_scales(amax, levels)
        scales[b0:b1] = s16
        y = torch.empty(e1 - e0, dtype=torch.float32, device=x.device)
        if full:
            torch.mul(body, inv[:full, None], out=y[: full * block_size].view(full, block_size))
        if full < b1 - b0:
            torch.mul(seg[full * block_size :], inv[full], out=y[full * block_size :])
        y.round_().clamp_(-levels, levels)
        sink(e0, y)
    if nblocks and not bool(torch.isfinite(amax_all).all()):
        raise ValueError("cannot encode non-finite values (NaN or Inf)")
    return scales


def _to_bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _encode_int8(x: torch.Tensor, block_size: int) -> tuple[bytes, bytes]:
    q = torch.empty(x.numel(), dtype=torch.int8, device=x.device)

    def sink(start: int, y: torch.Tensor) -> None:
        q[start : start + y.numel()].copy_(y)

    scales = _quantize(x, block_size, 127, sink)
    return _to_bytes(q), _to_bytes(scales)


def _encode_int4(x: torch.Tensor, block_size: int) -> tuple[bytes, bytes]:
    n = x.numel()
    packed = torch.empty((n + 1) // 2, dtype=torch.int8, device=x.device)

    def sink(start: int, y: torch.Tensor) -> None:
        q = y.to(torch.int8)
        if q.numel() % 2:
            q = torch.cat((q, q.new_zeros(1)))
        low = q[0::2].bitwise_and(0x0F)
        high = q[1::2].bitwise_left_shift(4)
        torch.bitwise_or(low, high, out=packed[start // 2 : start // 2 + low.numel()])

    scales = _quantize(x, block_size, 7, sink)
    return _to_bytes(packed), _to_bytes(scales)


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
    for e0 in range(0, n, _CPU_CHUNK):
        mag = x[e0 : e0 + _CPU_CHUNK].abs()
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


def _encode_topk(x: torch.Tensor, block_size: int, topk_fraction: float) -> averaging_pb2.EncodedTensor:
    n = x.numel()
    total = x.sum()  # one cheap pass: finite iff every entry is
    if not math.isfinite(float(total)) and not bool(torch.isfinite(x).all()):
        raise ValueError("cannot encode non-finite values (NaN or Inf)")
    pos = _topk_positions(x, topk_count(n, topk_fraction))
    vals = x[pos]
    q = torch.empty(vals.numel(), dtype=torch.int8, device=x.device)

    def sink(start: int, y: torch.Tensor) -> None:
        q[start : start + y.numel()].copy_(y)

    scales = _quantize(vals, block_size, 127, sink)
    gaps = torch.diff(pos, prepend=pos.new_zeros(1)) if pos.numel() else pos
    indices = _varint_encode(gaps, _max_varint_len(n))
    return averaging_pb2.EncodedTensor(
        codec="topk",
        numel=n,
        data=_to_bytes(q),
        scales=_to_bytes(scales),
        indices=_to_bytes(indices),
        block_size=block_size,
        nnz=pos.numel(),
    )


def encode(
    t: torch.Tensor,
    codec: str,
    *,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
    block_size: int | None = None,
) -> averaging_pb2.EncodedTensor:
    """Encode a flat fp32 tensor (any device) for the wire.

    The work runs on ``t``'s device; only the finished bytes move to the CPU. ``block_size``
    (values per fp16 scale) defaults per codec; ``topk_fraction`` is the share of entries topk keeps.
    Raises ``ValueError`` for an unknown codec, bad options, or non-finite input to int8/int4/topk.
    """
    t = t.detach().reshape(-1)
    if t.numel() > MAX_NUMEL:
        raise ValueError(f"{t.numel()} elements exceed the codec limit of {MAX_NUMEL}")
    if codec in _FLOAT_CODECS:
        payload = t.to(_FLOAT_CODECS[codec])
        return averaging_pb2.EncodedTensor(codec=codec, numel=t.numel(), data=_to_bytes(payload))
    if codec not in _QUANT_LEVELS:
        raise ValueError(f"unknown codec {codec!r}")
    block_size = _check_block_size(DEFAULT_BLOCK_SIZE[codec] if block_size is None else block_size)
    x = t if t.dtype == torch.float32 else t.float()
    if codec == "topk":
        if not 0 < topk_fraction <= MAX_TOPK_FRACTION:
            raise ValueError(f"topk_fraction must be in (0, {MAX_TOPK_FRACTION}], not {topk_fraction!r}")
        return _encode_topk(x, block_size, topk_fraction)
    data, scales = (_encode_int8 if codec == "int8" else _encode_int4)(x, block_size)
    return averaging_pb2.EncodedTensor(
        codec=codec, numel=x.numel(), data=data, scales=scales, block_size=block_size
    )


# ---------------------------------------------------------------------------------------- decoding


def _fail_if_set(msg: averaging_pb2.EncodedTensor, codec: str, *fields: str) -> None:
    for name in fields:
        if getattr(msg, name):
            raise ProtocolError(f"{codec} message carries an unexpected {name} field")


def _expect_len(what: str, got: int, want: int) -> None:
    if got != want:
        raise ProtocolError(f"{what}: {got} bytes where {want} were expected")


def _read_block_size(msg: averaging_pb2.EncodedTensor) -> int:
    bs = msg.block_size
    if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
        raise ProtocolError(f"block_size {bs} outside {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    return bs


def _read_scales(raw: bytes) -> np.ndarray:
    s = np.frombuffer(raw, dtype=np.float16)
    if not np.isfinite(s).all():
        raise ProtocolError("non-finite scale (NaN or Inf)")
    if (s < 0).any():
        raise ProtocolError("negative scale")
    return s.astype(np.float32)


def _scale_into(q: np.ndarray, s: np.ndarray, block_size: int, out: np.ndarray) -> None:
    """out = q * (each block's scale), for q holding whole blocks then possibly one short block."""
    full = q.size // block_size
    body = full * block_size
    if full:
        np.multiply(
            q[:body].reshape(full, block_size), s[:full, None], out=out[:body].reshape(full, block_size)
        )
    if body < q.size:
        np.multiply(q[body:], s[full], out=out[body:])


def _check_finite(out: torch.Tensor) -> None:
    # A finite sum proves every term finite; only an overflowing or non-finite sum needs a full look.
    if out.numel() and not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
        raise ProtocolError("non-finite values (NaN or Inf)")


def _decode_float(data: bytes, numel: int, codec: str, out: torch.Tensor | None = None) -> torch.Tensor:
    dtype = _FLOAT_CODECS[codec]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    _expect_len(f"{codec} data", len(data), numel * itemsize)
    out = torch.empty(numel, dtype=torch.float32) if out is None else out
    if codec == "fp32":
        out.numpy()[:] = np.frombuffer(data, dtype=np.float32)
    elif codec == "bf16":
        raw = np.frombuffer(data, dtype=np.uint16)
        np.left_shift(raw, np.uint32(16), out=out.numpy().view(np.uint32))
    else:  # fp16: torch converts far faster than numpy; copy through a small writable buffer
        raw = np.frombuffer(data, dtype=np.float16)
        buf = np.empty(min(numel, _CPU_CHUNK), dtype=np.float16)
        tbuf = torch.from_numpy(buf)
        for e0 in range(0, numel, _CPU_CHUNK):
            m = min(_CPU_CHUNK, numel - e0)
            buf[:m] = raw[e0 : e0 + m]
            out[e0 : e0 + m].copy_(tbuf[:m])
    return out


def _decode_int8(data: bytes, scales: np.ndarray, numel: int, block_size: int) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32)
    _scale_into(np.frombuffer(data, dtype=np.int8), scales, block_size, out.numpy())
    return out


def _decode_int4(data: bytes, scales: np.ndarray, numel: int, block_size: int) -> torch.Tensor:
    packed = np.frombuffer(data, dtype=np.int8)
    if numel % 2 and packed[-1] >> 4:
        raise ProtocolError("int4 padding nibble is not zero")
    out = torch.empty(numel, dtype=torch.float32)
    o = out.numpy()
    # Chunks cover an even number of whole blocks, so each starts on a byte and a block boundary.
    step = max(2, _CPU_CHUNK // block_size)
    step += step % 2
    span = step * block_size
    buf = np.empty(min(span, numel + 1), dtype=np.int8)
    for e0 in range(0, numel, span):
        e1 = min(numel, e0 + span)
        src = packed[e0 // 2 : (e1 + 1) // 2]
        q = buf[: 2 * src.size]
        np.left_shift(src, 4, out=q[0::2])
        np.right_shift(q[0::2], 4, out=q[0::2])
        np.right_shift(src, 4, out=q[1::2])
        b0 = e0 // block_size
        _scale_into(q[: e1 - e0], scales[b0 : b0 + -(-(e1 - e0) // block_size)], block_size, o[e0:e1])
    return out


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


def _decode_topk(msg: averaging_pb2.EncodedTensor, numel: int) -> torch.Tensor:
    bs = _read_block_size(msg)
    nnz = msg.nnz
    limit = topk_count(numel, MAX_TOPK_FRACTION)
    if nnz > limit:
        raise ProtocolError(f"nnz {nnz} exceeds the limit of {limit} for {numel} elements")
    data, raw_scales, raw_idx = msg.data, msg.scales, msg.indices
    _expect_len("topk data", len(data), nnz)
    _expect_len("topk scales", len(raw_scales), 2 * -(-nnz // bs))
    max_len = _max_varint_len(numel)
    if not nnz <= len(raw_idx) <= _max_index_bytes(numel, nnz):
        raise ProtocolError(f"topk indices: {len(raw_idx)} bytes cannot hold {nnz} positions below {numel}")
    if nnz == 0:
        return torch.zeros(numel, dtype=torch.float32)
    scales = _read_scales(raw_scales)
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
    _scale_into(np.frombuffer(data, dtype=np.int8), scales, bs, vals)
    if not np.isfinite(vals).all():
        raise ProtocolError("non-finite values (NaN or Inf)")
    out = torch.zeros(numel, dtype=torch.float32)
    out.numpy()[pos] = vals
    return out


def decode(
    msg: averaging_pb2.EncodedTensor, numel: int, codec: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Decode and validate an untrusted tensor that must hold ``numel`` values in ``codec``.

    Returns a CPU fp32 tensor of ``numel`` values (topk: dense, zeros where nothing was sent),
    written into ``out`` (contiguous fp32, ``numel`` values) when given: the all-reduce decodes
    straight into its buffers. Raises ``ProtocolError`` naming the problem: wrong codec, sizes,
    counts, scales, indices, or non-finite values (``out`` may then hold partial values).
    Nothing is allocated beyond the output before the sizes have been checked.
    """
    if out is not None and (out.numel() != numel or out.dtype != torch.float32 or not out.is_contiguous()):
        raise ValueError(f"out must be a contiguous fp32 tensor of {numel} values")
    result = _decode(msg, numel, codec, out)
    if out is not None and result is not out:
        out.copy_(result)
        return out
    return result


def _decode(
    msg: averaging_pb2.EncodedTensor, numel: int, codec: str, out: torch.Tensor | None
) -> torch.Tensor:
    if msg.codec != codec:
        raise ProtocolError(f"codec {msg.codec[:32]!r} where {codec!r} was agreed")
    if codec not in CODECS:
        raise ProtocolError(f"unknown codec {codec[:32]!r}")
    if msg.numel != numel:
        raise ProtocolError(f"{msg.numel} elements where {numel} were expected")
    if numel > MAX_NUMEL:
        raise ProtocolError(f"{numel} elements exceed the codec limit of {MAX_NUMEL}")
    if codec in _FLOAT_CODECS:
        _fail_if_set(msg, codec, "scales", "indices", "block_size", "nnz")
        out = _decode_float(msg.data, numel, codec, out)
    elif codec == "topk":
        return _decode_topk(msg, numel)
    else:
        _fail_if_set(msg, codec, "indices", "nnz")
        bs = _read_block_size(msg)
        data, raw_scales = msg.data, msg.scales
        _expect_len(f"{codec} data", len(data), numel if codec == "int8" else (numel + 1) // 2)
        _expect_len(f"{codec} scales", len(raw_scales), 2 * -(-numel // bs))
        if numel == 0:
            return torch.zeros(0)
        scales = _read_scales(raw_scales)
        out = (_decode_int8 if codec == "int8" else _decode_int4)(data, scales, numel, bs)
    _check_finite(out)
    return out


# ---------------------------------------------------------------------------------------- sizes


def max_encoded_bytes(
    codec: str, numel: int, *, block_size: int | None = None, topk_fraction: float | None = None
) -> int:
    """Upper bound of an encoded message's size: the frame cap for a part of ``numel`` values.

    Without ``block_size`` the bound holds for any block size ``decode`` accepts (the smallest one
    has the most scales); without ``topk_fraction`` it holds for any topk message ``decode`` accepts
    (up to ``MAX_TOPK_FRACTION``). Pass the run's settings for a tighter cap.
    """
    if codec in _FLOAT_CODECS:
        itemsize = torch.tensor([], dtype=_FLOAT_CODECS[codec]).element_size()
        return numel * itemsize + _PROTO_OVERHEAD
    check_codec(codec)
    bs = MIN_BLOCK_SIZE if block_size is None else _check_block_size(block_size)
    if codec == "int8":
        return numel + 2 * -(-numel // bs) + _PROTO_OVERHEAD
    if codec == "int4":
        return (numel + 1) // 2 + 2 * -(-numel // bs) + _PROTO_OVERHEAD
    k = topk_count(numel, MAX_TOPK_FRACTION if topk_fraction is None else topk_fraction)
    return k + 2 * -(-k // bs) + _max_index_bytes(numel, k) + _PROTO_OVERHEAD


def ideal_bytes(
    codec: str, numel: int, topk_fraction: float = DEFAULT_TOPK_FRACTION, *, block_size: int | None = None
) -> int:
    """Theoretical size of ``numel`` values in ``codec``: payload + scales + indices, no framing.

    For topk the index part is the information-theoretic minimum, log2(C(numel, k)) bits, so
    the gap between the encoded size and this shows what the varint index coding costs.
    """
    if codec in _FLOAT_CODECS:
        return numel * torch.tensor([], dtype=_FLOAT_CODECS[codec]).element_size()
    check_codec(codec)
    bs = DEFAULT_BLOCK_SIZE[codec] if block_size is None else _check_block_size(block_size)
    if codec == "int8":
        return numel + 2 * -(-numel // bs)
    if codec == "int4":
        return (numel + 1) // 2 + 2 * -(-numel // bs)
    k = topk_count(numel, topk_fraction)
    if k == 0:
        return 0
    log2_choose = (math.lgamma(numel + 1) - math.lgamma(k + 1) - math.lgamma(numel - k + 1)) / math.log(2)
    return k + 2 * -(-k // bs) + math.ceil(log2_choose / 8)


class ErrorFeedback:
    """What compression dropped, kept locally and added to the next update (EF-SGD).

    Per step: ``c = ef.compensate(update)``, send ``encode(c, codec)``, and
    ``ef.remember(c, decode(...))`` with what the receivers will actually read.
    """

    def __init__(self) -> None:
        self.residual: torch.Tensor | None = None

    def compensate(self, update: torch.Tensor) -> torch.Tensor:
        """``update`` plus what was dropped before (``update`` itself, not a copy, when nothing was)."""
        if self.residual is None or self.residual.shape != update.shape:
            return update
        return update + self.residual.to(device=update.device, dtype=update.dtype)

    def remember(self, compensated: torch.Tensor, transmitted: torch.Tensor) -> None:
        if transmitted.data_ptr() == compensated.data_ptr() and transmitted.numel() == compensated.numel():
            # what was sent is the update itself (fp32): nothing dropped
            self.residual = None
            return
        transmitted = transmitted.to(device=compensated.device, dtype=compensated.dtype)
        self.residual = compensated - transmitted.reshape(compensated.shape)
