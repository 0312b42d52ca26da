"""Update codecs: how a pseudo-gradient part is put on the wire and checked when it comes back.

hivemind's codec set is a closed protobuf enum (and its 8-bit codecs decode wrongly on numpy >= 2.4),
so barnraise carries its own: each codec turns a flat fp32 tensor into an ``EncodedTensor`` and
back, and ``decode`` validates everything an untrusted sender controls (sizes, counts, indices,
finite values) before a single value is used.

Codec names are a wire contract: fp32, fp16, bf16, int8, int4, topk, sparse (more are added, never
renamed).

Layouts (``block_size`` is chosen by the sender and travels in the message):

* ``fp32`` / ``fp16`` / ``bf16``: ``data`` holds the values, little-endian.
* ``int8``: blockwise absmax. ``data`` holds one signed byte per value (-127..127), ``scales`` one
  fp16 scale per block of ``block_size`` values (the last block may be short); value = q * scale.
* ``int4``: as int8 with 4-bit signed values (-7..7), two per byte: even positions in the low
  nibble, odd positions in the high one; an odd count leaves the last high nibble zero.
* ``topk``: the largest-magnitude entries. ``nnz`` values, int8 with one fp16 scale per block of
  ``block_size`` kept values; ``indices`` holds their positions, ascending, as unsigned LEB128
  varints of the gaps (the first position itself, then each difference to the previous one).
* ``sparse``: top-k per chunk of ``block_size`` values, 2-bit values, packed in-chunk indices
  (``peer/averaging/sparse.py``); ``nnz`` is the number kept per chunk.

Scales are rounded up to the next fp16, and values are quantised with that rounded scale, so the
error of every value is at most half its block's scale. Encoding is deterministic (round half to
even, no randomness that depends on anything but the input), so the same update always gives the
same bytes, and decoding runs on the CPU, so every peer reads the same bytes as the same floats.
"""

from __future__ import annotations

__all__ = ["CODECS", "check_codec", "decode", "encode", "ideal_bytes", "max_encoded_bytes"]

import math

import numpy as np
import torch

from barnraise.coordinator.codecspec import CODECS, check_codec
from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging.blockquant import (
    CPU_CHUNK,
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    expect_len,
    quantize,
    read_block_size,
    read_scales,
    scale_into,
    to_bytes,
)
from barnraise.peer.averaging.sparse import (
    DEFAULT_CHUNK,
    DEFAULT_PER_CHUNK,
    decode_sparse,
    encode_sparse,
    max_sparse_bytes,
    payload_sizes,
)
from barnraise.peer.averaging.topk import (
    DEFAULT_TOPK_FRACTION,
    MAX_TOPK_FRACTION,
    decode_topk,
    encode_topk,
    max_index_bytes,
    topk_count,
)
from barnraise.protos import averaging_pb2

_FLOAT_CODECS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_QUANT_LEVELS = {"int8": 127, "int4": 7, "topk": 127}

DEFAULT_BLOCK_SIZE = {"int8": 256, "int4": 64, "topk": 256}
MAX_NUMEL = 1 << 48

_PROTO_OVERHEAD = 64  # field tags and length prefixes of one EncodedTensor, generously


def _check_block_size(block_size: int) -> int:
    if not isinstance(block_size, int) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(
            f"block_size must be an integer in {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}, not {block_size!r}"
        )
    return block_size


# ---------------------------------------------------------------------------------------- encoding


def _encode_int8(x: torch.Tensor, block_size: int) -> tuple[bytes, bytes]:
    q = torch.empty(x.numel(), dtype=torch.int8, device=x.device)

    def sink(start: int, y: torch.Tensor) -> None:
        q[start : start + y.numel()].copy_(y)

    scales = quantize(x, block_size, 127, sink)
    return to_bytes(q), to_bytes(scales)


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

    scales = quantize(x, block_size, 7, sink)
    return to_bytes(packed), to_bytes(scales)


def encode(
    t: torch.Tensor,
    codec: str,
    *,
    topk_fraction: float = DEFAULT_TOPK_FRACTION,
    block_size: int | None = None,
    per_chunk: int = DEFAULT_PER_CHUNK,
) -> averaging_pb2.EncodedTensor:
    """Encode a flat fp32 tensor (any device) for the wire.

    The work runs on ``t``'s device; only the finished bytes move to the CPU. ``block_size``
    (values per fp16 scale; sparse: values per chunk) defaults per codec; ``topk_fraction`` is the
    share of entries topk keeps, ``per_chunk`` the values sparse keeps per chunk.
    Raises ``ValueError`` for an unknown codec, bad options, or non-finite input to int8/int4/topk.
    """
    t = t.detach().reshape(-1)
    if t.numel() > MAX_NUMEL:
        raise ValueError(f"{t.numel()} elements exceed the codec limit of {MAX_NUMEL}")
    if codec in _FLOAT_CODECS:
        payload = t.to(_FLOAT_CODECS[codec])
        return averaging_pb2.EncodedTensor(codec=codec, numel=t.numel(), data=to_bytes(payload))
    if codec == "sparse":
        return encode_sparse(t, DEFAULT_CHUNK if block_size is None else block_size, per_chunk)
    if codec not in _QUANT_LEVELS:
        raise ValueError(f"unknown codec {codec!r}")
    block_size = _check_block_size(DEFAULT_BLOCK_SIZE[codec] if block_size is None else block_size)
    x = t if t.dtype == torch.float32 else t.float()
    if codec == "topk":
        if not 0 < topk_fraction <= MAX_TOPK_FRACTION:
            raise ValueError(f"topk_fraction must be in (0, {MAX_TOPK_FRACTION}], not {topk_fraction!r}")
        return encode_topk(x, block_size, topk_fraction)
    data, scales = (_encode_int8 if codec == "int8" else _encode_int4)(x, block_size)
    return averaging_pb2.EncodedTensor(
        codec=codec, numel=x.numel(), data=data, scales=scales, block_size=block_size
    )


# ---------------------------------------------------------------------------------------- decoding


def _fail_if_set(msg: averaging_pb2.EncodedTensor, codec: str, *fields: str) -> None:
    for name in fields:
        if getattr(msg, name):
            raise ProtocolError(f"{codec} message carries an unexpected {name} field")


def _check_finite(out: torch.Tensor) -> None:
    # A finite sum proves every term finite; only an overflowing or non-finite sum needs a full look.
    if out.numel() and not math.isfinite(float(out.sum())) and not bool(torch.isfinite(out).all()):
        raise ProtocolError("non-finite values (NaN or Inf)")


def _decode_float(data: bytes, numel: int, codec: str, out: torch.Tensor | None = None) -> torch.Tensor:
    dtype = _FLOAT_CODECS[codec]
    itemsize = torch.tensor([], dtype=dtype).element_size()
    expect_len(f"{codec} data", len(data), numel * itemsize)
    out = torch.empty(numel, dtype=torch.float32) if out is None else out
    if codec == "fp32":
        out.numpy()[:] = np.frombuffer(data, dtype=np.float32)
    elif codec == "bf16":
        raw = np.frombuffer(data, dtype=np.uint16)
        np.left_shift(raw, np.uint32(16), out=out.numpy().view(np.uint32))
    else:  # fp16: torch converts far faster than numpy; copy through a small writable buffer
        raw = np.frombuffer(data, dtype=np.float16)
        buf = np.empty(min(numel, CPU_CHUNK), dtype=np.float16)
        tbuf = torch.from_numpy(buf)
        for e0 in range(0, numel, CPU_CHUNK):
            m = min(CPU_CHUNK, numel - e0)
            buf[:m] = raw[e0 : e0 + m]
            out[e0 : e0 + m].copy_(tbuf[:m])
    return out


def _decode_int8(data: bytes, scales: np.ndarray, numel: int, block_size: int) -> torch.Tensor:
    out = torch.empty(numel, dtype=torch.float32)
    scale_into(np.frombuffer(data, dtype=np.int8), scales, block_size, out.numpy())
    return out


def _decode_int4(data: bytes, scales: np.ndarray, numel: int, block_size: int) -> torch.Tensor:
    packed = np.frombuffer(data, dtype=np.int8)
    if numel % 2 and packed[-1] >> 4:
        raise ProtocolError("int4 padding nibble is not zero")
    out = torch.empty(numel, dtype=torch.float32)
    o = out.numpy()
    # Chunks cover an even number of whole blocks, so each starts on a byte and a block boundary.
    step = max(2, CPU_CHUNK // block_size)
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
        scale_into(q[: e1 - e0], scales[b0 : b0 + -(-(e1 - e0) // block_size)], block_size, o[e0:e1])
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
        return decode_topk(msg, numel)
    elif codec == "sparse":
        return decode_sparse(msg, numel, out)
    else:
        _fail_if_set(msg, codec, "indices", "nnz")
        bs = read_block_size(msg)
        data, raw_scales = msg.data, msg.scales
        expect_len(f"{codec} data", len(data), numel if codec == "int8" else (numel + 1) // 2)
        expect_len(f"{codec} scales", len(raw_scales), 2 * -(-numel // bs))
        if numel == 0:
            return torch.zeros(0)
        scales = read_scales(raw_scales)
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
    if codec == "sparse":
        return max_sparse_bytes(numel) + _PROTO_OVERHEAD
    bs = MIN_BLOCK_SIZE if block_size is None else _check_block_size(block_size)
    if codec == "int8":
        return numel + 2 * -(-numel // bs) + _PROTO_OVERHEAD
    if codec == "int4":
        return (numel + 1) // 2 + 2 * -(-numel // bs) + _PROTO_OVERHEAD
    k = topk_count(numel, MAX_TOPK_FRACTION if topk_fraction is None else topk_fraction)
    return k + 2 * -(-k // bs) + max_index_bytes(numel, k) + _PROTO_OVERHEAD


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
    if codec == "sparse":
        return sum(payload_sizes(numel, block_size or DEFAULT_CHUNK, DEFAULT_PER_CHUNK))
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
    ``ef.remember(c, decode(...))`` with what the receivers will actually read. ``decay`` < 1
    (SparseLoCo's beta) lets old residue fade: the accumulator then also does what outer momentum
    does, carrying a decaying sum of past pseudo-gradients into each round.
    """

    def __init__(self, decay: float = 1.0) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"error feedback decay must be in (0, 1], not {decay!r}")
        self.decay = decay  # share of the residual carried into the next round
        self.residual: torch.Tensor | None = None

    def compensate(self, update: torch.Tensor) -> torch.Tensor:
        """``update`` plus what was dropped before (``update`` itself, not a copy, when nothing was)."""
        if self.residual is None or self.residual.shape != update.shape:
            return update
        residual = self.residual.to(device=update.device, dtype=update.dtype)
        return update + (residual if self.decay == 1.0 else self.decay * residual)

    def remember(self, compensated: torch.Tensor, transmitted: torch.Tensor) -> None:
        if transmitted.data_ptr() == compensated.data_ptr() and transmitted.numel() == compensated.numel():
            # what was sent is the update itself (fp32): nothing dropped
            self.residual = None
            return
        transmitted = transmitted.to(device=compensated.device, dtype=compensated.dtype)
        self.residual = compensated - transmitted.reshape(compensated.shape)
