"""Robust aggregation segment by segment, batched: what makes a reducer's work checkable in small pieces.

A reducer combines each chunk of its part as independent segments of ``SEGMENT_VALUES`` values:
every statistic the aggregator needs (norm caps, the CenteredClip medoid and radius) is taken
within the segment. So the reduced values of one segment depend only on the members' values of
that same segment and their weights, and a verifier holding those few kilobytes can recompute
them (``peer/averaging/audit.py``) instead of fetching whole chunks.

The rules are those of ``robust.py`` (weight cap, norm cap, centered_clip / median /
trimmed_mean / mean), run on all segments of a chunk at once as (segments x members x members)
batches, so the cost stays close to one whole-chunk aggregation. The final combination of
CenteredClip is an ordered sum of scaled rows (elementwise operations, member order), so a
segment's value does not depend on how many segments were combined together.
"""

from __future__ import annotations

import torch

from barnraise.peer.averaging.robust import RobustConfig, bound_weights, trimmed_mean, weighted_median

SEGMENT_VALUES = 1024  # values per segment: 4 KiB of fp32; a multiple of every default codec block size


def segment_bounds(numel: int, segment_values: int = SEGMENT_VALUES) -> list[tuple[int, int]]:
    """[start, end) of each segment of a chunk of ``numel`` values (the last one may be shorter)."""
    return [(s, min(numel, s + segment_values)) for s in range(0, numel, segment_values)]


def _bound_norms(x: torch.Tensor) -> torch.Tensor:
    """Per-segment norms of ``x`` (members x segments x values): (members x segments)."""
    return torch.linalg.vector_norm(x, dim=2)


def _centered_clip(x: torch.Tensor, share: torch.Tensor, tau_mult: float, iters: int) -> tuple:
    """CenteredClip of each segment of ``x`` (members x segments x values); see ``robust.centered_clip``.

    Returns (values: segments x values, clip factors: members x segments)."""
    n, b, _ = x.shape
    xb = x.transpose(0, 1)  # segments x members x values (a view)
    gram = torch.bmm(xb, xb.transpose(1, 2)).double()  # segments x members x members
    sq = gram.diagonal(dim1=1, dim2=2)  # segments x members
    pair = (sq[:, :, None] + sq[:, None, :] - 2 * gram).clamp_min(0.0).sqrt()
    sh = share.double()
    medoid = (pair * sh[None, None, :]).sum(dim=2).argmin(dim=1)  # segments
    a = torch.zeros(b, n, dtype=torch.float64)
    a[torch.arange(b), medoid] = 1.0
    factors = torch.ones(b, n, dtype=torch.float64)
    live = torch.ones(b, dtype=torch.bool)
    for _ in range(iters):
        xv = torch.bmm(gram, a[:, :, None]).squeeze(2)  # segments x members
        dist = (sq - 2 * xv + (a * xv).sum(dim=1, keepdim=True)).clamp_min(0.0).sqrt()
        tau = tau_mult * weighted_median(dist.T.float(), share.float()).double()  # segments
        live = live & (tau > 0)
        new = torch.clamp(tau[:, None] / dist.clamp_min(1e-30), max=1.0)
        factors = torch.where(live[:, None], new, factors)
        coef = sh[None, :] * factors
        moved = (1.0 - coef.sum(dim=1, keepdim=True)) * a + coef
        a = torch.where(live[:, None], moved, a)
    a32 = a.float()
    value = torch.zeros(b, x.shape[2])
    for i in range(n):  # ordered, elementwise: the same bits whatever the number of segments
        value += a32[:, i : i + 1] * x[i]
    return value, factors.float().T


def aggregate_segments(
    x: torch.Tensor, w: torch.Tensor, cfg: RobustConfig, segment_values: int = SEGMENT_VALUES
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine rows of ``x`` (members x values, finite) segment by segment.

    Returns (value: values, clip factor per member: its median over the segments, 1 = as sent)."""
    if x.ndim != 2 or w.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(
            f"expected (members x values) and (members,), got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    n, numel = x.shape
    x = x.float()
    w = torch.nan_to_num(w.float(), nan=0.0, posinf=0.0).clamp_min(0.0)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    if cfg.aggregator == "mean" or int((w > 0).sum()) < cfg.min_robust:
        share = w / w.sum()
        value = torch.zeros(numel)
        for i in range(n):
            value += share[i] * x[i]
        return value, torch.ones(n)
    keep = w > 0  # a zero-weight contribution (a newcomer's empty update) takes no part
    if not bool(keep.all()):
        value, inner = aggregate_segments(x[keep], w[keep], cfg, segment_values)
        clip = torch.ones(n)
        clip[keep] = inner
        return value, clip
    value = torch.empty(numel)
    clips = []
    full = numel // segment_values * segment_values
    for lo, hi, seg in ((0, full, segment_values), (full, numel, numel - full)):
        if hi > lo:
            v, c = _combine(x[:, lo:hi].reshape(n, (hi - lo) // seg, seg), w, cfg)
            value[lo:hi] = v.reshape(-1)
            clips.append(c)
    return value, torch.cat(clips, dim=1).median(dim=1).values


def _combine(x: torch.Tensor, w: torch.Tensor, cfg: RobustConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of equal segments ``x`` (members x segments x values): (values, clip factors)."""
    w = bound_weights(w, cfg.weight_cap)
    norms = _bound_norms(x)  # members x segments
    limit = cfg.norm_cap * norms.median(dim=0).values  # segments
    clip = torch.where(
        norms > limit[None, :], limit[None, :] / norms.clamp_min(1e-30), torch.ones_like(norms)
    )
    x = x * clip[:, :, None]
    if cfg.aggregator == "centered_clip":
        value, factors = _centered_clip(x, w / w.sum(), cfg.clip_tau, cfg.clip_iters)
        return value, clip * factors
    flat = x.reshape(x.shape[0], -1)
    if cfg.aggregator == "median":
        value = weighted_median(flat, w)
    else:
        value = trimmed_mean(flat, w, cfg.trim)
    return value.reshape(x.shape[1], x.shape[2]), clip
