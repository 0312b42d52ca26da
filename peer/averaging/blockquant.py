"""Blockwise absmax quantisation: the arithmetic int8, int4 and top-k values share.

Each block of ``block_size`` values gets one fp16 scale, rounded up so no value overflows the
codec's levels; values are rounded half to even. Decoding checks scale bytes before use (finite,
non-negative) and multiplies on the CPU, so every peer reads the same bytes as the same floats.
"""

from __future__ import annotations

import numpy as np
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.protos import averaging_pb2

MIN_BLOCK_SIZE = 16
MAX_BLOCK_SIZE = 65536
FP16_MAX = 65504.0
CPU_CHUNK = 1 << 18  # elements per pass on the CPU: large enough to amortise, small enough for cache
CUDA_CHUNK = 1 << 24


def block_scales(amax: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 scales (rounded up, so no value overflows ``levels``) and their fp32 reciprocals."""
    want = amax / levels
    want = torch.where(want > 0, want.clamp(max=FP16_MAX), torch.zeros_like(want))  # no -0, NaN
    s16 = want.to(torch.float16)
    low = s16.float() < want  # rounded down: step to the next fp16 (positive, so next bit pattern)
    s16 = torch.where(low, (s16.view(torch.int16) + 1).view(torch.float16), s16)
    s32 = s16.float()
    inv = torch.where(s32 > 0, s32.reciprocal(), torch.zeros_like(s32))
    return s16, inv


def quantize(x: torch.Tensor, block_size: int, levels: int, sink) -> torch.Tensor:
    """Blockwise absmax-quantise flat fp32 ``x`` chunk by chunk; returns the fp16 scales.

    ``sink(start, q)`` receives each chunk's rounded values (fp32 holding integers in
    -levels..levels) and where they start; chunks start at even positions.
    """
    n = x.numel()
    nblocks = -(-n // block_size)
    scales = torch.empty(nblocks, dtype=torch.float16, device=x.device)
    amax_all = torch.empty(nblocks, dtype=torch.float32, device=x.device)
    chunk = CUDA_CHUNK if x.is_cuda else CPU_CHUNK
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
        s16, inv = block_scales(amax, levels)
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


def to_bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().cpu().view(torch.uint8).numpy().tobytes()


def expect_len(what: str, got: int, want: int) -> None:
    if got != want:
        raise ProtocolError(f"{what}: {got} bytes where {want} were expected")


def read_block_size(msg: averaging_pb2.EncodedTensor) -> int:
    bs = msg.block_size
    if not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
        raise ProtocolError(f"block_size {bs} outside {MIN_BLOCK_SIZE}..{MAX_BLOCK_SIZE}")
    return bs


def read_scales(raw: bytes) -> np.ndarray:
    s = np.frombuffer(raw, dtype=np.float16)
    if not np.isfinite(s).all():
        raise ProtocolError("non-finite scale (NaN or Inf)")
    if (s < 0).any():
        raise ProtocolError("negative scale")
    return s.astype(np.float32)


def scale_into(q: np.ndarray, s: np.ndarray, block_size: int, out: np.ndarray) -> None:
    """out = q * (each block's scale), for q holding whole blocks then possibly one short block."""
    full = q.size // block_size
    body = full * block_size
    if full:
        np.multiply(
            q[:body].reshape(full, block_size), s[:full, None], out=out[:body].reshape(full, block_size)
        )
    if body < q.size:
        np.multiply(q[body:], s[full], out=out[body:])
