"""Combining a group's sparse payloads: the density a group uses, robust weights, one exact sum.

Every member of a sparse group receives every other member's payload (``gather.py``) and combines
them itself, so the combination must give the same bits on every machine. It is built so that it
does: the robust part decides only one coefficient per member, from the members x members Gram
matrix, and each coefficient is rounded to a multiple of 2**-30 (far below any effect on training,
far above the float noise different CPUs leave in a Gram matrix). The average is then
``sum_i c_i x_i`` accumulated in float64 in member order: each product of an fp32 value and such a
coefficient is exact in float64, so no CPU (FMA or not, any SIMD width) rounds it differently. The
coefficients go into the result hash beside the payloads' digests, so members that disagree on a
single coefficient report different hashes and the leader's majority verdict decides.

What robust aggregation means on sparse payloads:

- Weight cap and norm cap: as for dense parts (``robust.py``). Every honest payload has the same
  number of values per chunk and 2-bit magnitudes, so its norm is set by its scales; a member that
  inflates its scales is scaled back to ``norm_cap`` x the median norm.
- CenteredClip: its distances are between whole sparse vectors. Members keep different positions,
  so honest payloads are nearly orthogonal and their distances to the centre are all close to
  their own norms: tau (``clip_tau`` x the median distance) then sits at the honest spread and
  clips nobody honest, while a payload far outside it (an inflated or crafted one) moves the
  centre by at most tau x its weight share. Since the centre is a combination of the payloads,
  CenteredClip on sparse payloads is exactly a choice of one coefficient per member.
- A position a member did not keep counts as zero in its contribution, as in SparseLoCo's mean:
  what it left out stays in its error feedback and is sent in a later round.
- Coordinate-wise ``median`` and ``trimmed_mean`` would return zero at every position fewer than
  half the members kept, which is almost every position, and erase the update; a sparse group
  therefore combines with CenteredClip when the run asks for either (``mean`` stays the plain mean).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from barnraise.peer.averaging.robust import RobustConfig, bound_weights, weighted_median
from barnraise.peer.averaging.sparse import DEFAULT_CHUNK, DEFAULT_PER_CHUNK, index_bits
from barnraise.protos import averaging_pb2

COEF_GRID = 2.0**-30  # coefficients are rounded to multiples of this
EXCHANGE_SHARE = 0.5  # the payload should take at most this share of the exchange's time budget
MIN_PER_CHUNK = 8  # 0.2% of a 4096-value chunk: the sparsest a group goes, however slow its links
MAX_PER_CHUNK = 128  # 3.1%: denser costs CPU at both ends (top-k, decoding N - 1 payloads) for little gain


def per_chunk_for(group: averaging_pb2.Group, numel: int, chunk: int = DEFAULT_CHUNK) -> int:
    """Values per chunk this group sends: the densest whose payload fits the slowest uplink.

    Each member uploads its payload to the N - 1 others, so the slowest declared uplink must carry
    (N - 1) x payload within ``EXCHANGE_SHARE`` of the exchange budget the leader set. Every
    member computes this from the same Group, so all agree; with a bandwidth or budget unknown the
    default density (1.56%) is used.
    """
    bws = [m.bandwidth_bps for m in group.members]
    n = len(bws)
    if n < 2 or numel <= 0 or not all(b > 0 and math.isfinite(b) for b in bws) or not group.exchange_s > 0:
        return DEFAULT_PER_CHUNK
    budget_bytes = min(bws) / 8 * EXCHANGE_SHARE * min(group.exchange_s, 3600.0) / (n - 1)
    chunks = -(-numel // chunk)
    per_value = (2 + index_bits(chunk)) / 8
    k = int((budget_bytes / chunks - 2) / per_value)
    return max(MIN_PER_CHUNK, min(MAX_PER_CHUNK, k))


def gram(rows: list[tuple[np.ndarray, np.ndarray]], numel: int) -> np.ndarray:
    """members x members dot products of sparse rows (positions ascending, values), in float64.

    Its last bits may differ between machines (BLAS); the coefficients it leads to are rounded.
    """
    dense = np.zeros((len(rows), numel), dtype=np.float64)
    for i, (pos, vals) in enumerate(rows):
        dense[i, pos] = vals
    return dense @ dense.T


def coefficients(g: np.ndarray, weights: list[float], cfg: RobustConfig) -> tuple[np.ndarray, np.ndarray]:
    """(coefficient per member, clip factor per member) of the robust combination, coefficients rounded.

    The value is ``sum_i coef_i x_i``; a clip factor is what bounding and CenteredClip scaled that
    member's update by (1: used as sent).
    """
    w = torch.tensor(weights, dtype=torch.float64).clamp_min(0.0)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    n = len(weights)
    if cfg.aggregator == "mean" or int((w > 0).sum()) < cfg.min_robust:
        coef = (w / w.sum()).numpy()
        return _round(coef), np.ones(n)
    w = bound_weights(w, cfg.weight_cap)
    share = (w / w.sum()).numpy()
    norms = np.sqrt(np.clip(np.diag(g), 0.0, None))
    live = norms[share > 0]
    limit = cfg.norm_cap * float(np.median(live)) if live.size else 0.0
    bound = np.where(norms > limit, limit / np.maximum(norms, 1e-30), 1.0)
    gs = g * bound[:, None] * bound[None, :]
    a, factors = _centered_clip(gs, share, cfg.clip_tau, cfg.clip_iters)
    return _round(a * bound), bound * factors


def _centered_clip(
    g: np.ndarray, share: np.ndarray, tau_mult: float, iters: int
) -> tuple[np.ndarray, np.ndarray]:
    """CenteredClip on the Gram matrix (as ``robust.centered_clip``): the centre is ``a @ x``."""
    sq = np.diag(g)
    pair = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * g, 0.0, None))
    a = np.zeros_like(share)
    a[int(np.argmin((pair * share[None, :]).sum(axis=1)))] = 1.0
    factors = np.ones_like(share)
    for _ in range(iters):
        xv = g @ a
        dist = np.sqrt(np.clip(sq - 2 * xv + float(a @ xv), 0.0, None))
        med = weighted_median(torch.from_numpy(dist)[:, None].float(), torch.from_numpy(share).float())
        tau = tau_mult * float(med.squeeze())
        if not tau > 0:
            break
        factors = np.minimum(tau / np.maximum(dist, 1e-30), 1.0)
        coef = share * factors
        a = (1.0 - float(coef.sum())) * a + coef
    return a, factors


def _round(coef: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(coef, dtype=np.float64) / COEF_GRID) * COEF_GRID


def combine_into(out: torch.Tensor, rows: list[tuple[np.ndarray, np.ndarray]], coef: np.ndarray) -> None:
    """``out`` (fp32) = sum_i coef_i x_i, accumulated in float64 in member order: the same bits anywhere."""
    acc = np.zeros(out.numel(), dtype=np.float64)
    for (pos, vals), c in zip(rows, coef.tolist(), strict=True):
        if c != 0.0 and pos.size:
            acc[pos] += vals.astype(np.float64) * c  # positions are unique within a payload
    out.numpy()[:] = acc.astype(np.float32)


def result_hash(members: list[str], digests: dict[str, bytes], coef: np.ndarray) -> str:
    """The round's result hash: who is in, each one's payload digest, and its coefficient."""
    h = hashlib.sha256(b"sparse/")
    for p, c in zip(members, coef.tolist(), strict=True):
        h.update(p.encode() + b"/" + digests[p] + np.float64(c).tobytes())
    return h.hexdigest()[:16]
