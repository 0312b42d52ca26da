"""Robust aggregation of a group's contributions to one part: bound, then combine.

A reducer cannot trust what members send: a claimed sample count may be inflated, an update may be
scaled, flipped, noise, or crafted to sit just inside the honest spread (ALIE). Before combining,
each contribution's weight is capped at ``weight_cap`` x the group's median weight (a liar's
claim is bounded by what the group actually does: heartbeats are self-reported, the median of the
claims is not controlled by a minority; with the default cap of 1 everyone at or above the median
counts the same, as in DiLoCo's uniform average, and slower peers count less) and its norm at
``norm_cap`` x the median norm. Then:

- ``centered_clip`` (default; Karimireddy et al., the rule BTARD uses): start from the weighted
  medoid (the contribution closest to all others: an honest one while honest members are the
  majority), then a few times move to the weighted mean of the contributions, each clipped to
  radius tau around the current point, tau being ``clip_tau`` x the median distance to it. Once the
  point has settled near the honest mean, honest contributions lie within tau and count in full,
  so without attackers the result is (nearly) the mean, while a far-off contribution moves it by
  at most tau x its weight share.
- ``median``: coordinate-wise weighted median.
- ``trimmed_mean``: coordinate-wise weighted mean of what is left after dropping ``trim``
  of the weight at each end.
- ``mean``: the plain weighted mean, without bounds (for comparison).

With fewer than ``min_robust`` contributions there is no majority to lean on (in a pair, either
could be the liar), and the plain weighted mean is used. Everything is vectorised over the (members x elements) matrix; ``clip`` reports, per
contribution, the factor its update was scaled by (1: used as sent), so peers that are clipped
round after round can be reported and banned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from barnraise.coordinator.manifest import AGGREGATORS, DEFAULT_AGGREGATOR

# A contribution scaled by less than this counts as clipped (reported as an offender). Honest
# updates that differ in size (peers that ran more steps) are scaled by 0.5 at worst in practice;
# sign-flipped or noise updates by well under 0.1.
CLIPPED_BELOW = 0.25


@dataclass(frozen=True, kw_only=True)
class RobustConfig:
    """How a reducer bounds and combines contributions."""

    aggregator: str = DEFAULT_AGGREGATOR  # centered_clip, median, trimmed_mean or mean
    weight_cap: float = 1.0  # a weight is capped at this multiple of the group's (lower) median weight
    norm_cap: float = 3.0  # an update's norm is capped at this multiple of the median norm
    clip_tau: float = 1.0  # CenteredClip radius, as a multiple of the median distance to the median
    clip_iters: int = 3  # CenteredClip iterations
    trim: float = 0.25  # trimmed mean: share of the weight dropped at each end
    min_robust: int = 3  # fewer contributions than this: bounded mean

    def __post_init__(self) -> None:
        if self.aggregator not in AGGREGATORS:
            raise ValueError(
                f"unknown aggregator {self.aggregator!r}: choose one of {', '.join(AGGREGATORS)}"
            )
        for name in ("weight_cap", "norm_cap", "clip_tau"):
            if not (getattr(self, name) >= 1.0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 1, got {getattr(self, name)}")
        if self.clip_iters < 1:
            raise ValueError(f"clip_iters must be at least 1, got {self.clip_iters}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")


@dataclass(frozen=True)
class Aggregate:
    """The combined part and what bounding did to each contribution."""

    value: torch.Tensor  # (elements,)
    weights: torch.Tensor  # (members,) weights actually used, after the cap
    clip: torch.Tensor  # (members,) factor each update was scaled by; 1 = used as sent


def bound_weights(w: torch.Tensor, cap: float) -> torch.Tensor:
    """Cap each weight at ``cap`` x the lower median weight."""
    if w.numel() < 2:
        return w.clone()
    return torch.minimum(w, cap * w.median())


def bound_norms(x: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale rows whose norm exceeds ``cap`` x the median row norm down to it; returns (rows, factors)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    limit = cap * norms.median()
    factors = torch.where(norms > limit, limit / norms.clamp_min(1e-30), torch.ones_like(norms))
    over = (factors < 1.0).nonzero().flatten()
    if over.numel() == 0:
        return x, factors
    x = x.clone()  # only when someone is over the limit: the common case copies nothing
    x[over] *= factors[over].unsqueeze(1)
    return x, factors


def weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise weighted (lower) median of the rows of ``x``."""
    if bool((w == w[0]).all()):
        return x.median(dim=0).values
    vals, idx = x.sort(dim=0)
    cw = w[idx].cumsum(dim=0)
    k = (cw < 0.5 * w.sum()).sum(dim=0, keepdim=True).clamp_max(x.shape[0] - 1)
    return vals.gather(0, k).squeeze(0)


def trimmed_mean(x: torch.Tensor, w: torch.Tensor, trim: float) -> torch.Tensor:
    """Coordinate-wise weighted mean of the middle ``1 - 2 trim`` of the weight."""
    if trim == 0.0:
        return (w.unsqueeze(1) * x).sum(dim=0) / w.sum()
    vals, idx = x.sort(dim=0)
    ws = w[idx]
    total = w.sum()
    lo, hi = trim * total, (1.0 - trim) * total
    cw = ws.cumsum(dim=0)
    inner = cw.clamp(lo, hi) - (cw - ws).clamp(lo, hi)  # each sorted entry's weight inside [lo, hi]
    return (vals * inner).sum(dim=0) / (hi - lo)


def centered_clip(
    x: torch.Tensor, w: torch.Tensor, tau_mult: float, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CenteredClip from the weighted medoid; returns (value, clip factor per row).

    The current point is always a combination ``a @ x`` of the rows (it starts at one row and
    moves to weighted means of clipped differences), so every distance it needs follows from the
    members x members Gram matrix: ``x @ v = G a`` and ``v . v = a' G a``. The iterations run on
    that small matrix and the elements are touched twice in all (the Gram matrix, then the result),
    whatever the number of iterations. tau is ``tau_mult`` x the weighted median distance to the
    current point, recomputed each iteration: it shrinks to the honest spread as the point
    settles, and a majority of honest members keeps it there.
    """
    share = (w / w.sum()).double()
    gram = (x @ x.T).double()
    sq = gram.diagonal()
    pair = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0.0).sqrt()
    medoid = int((pair * share[None, :]).sum(dim=1).argmin())
    a = torch.zeros_like(share)  # the current point is a @ x
    a[medoid] = 1.0
    factors = torch.ones_like(share)
    for _ in range(iters):
        xv = gram @ a
        dist = (sq - 2 * xv + float(a @ xv)).clamp_min(0.0).sqrt()
        tau = tau_mult * float(weighted_median(dist[:, None], share.float()).squeeze())
        if not tau > 0:
            break
        factors = torch.clamp(tau / dist.clamp_min(1e-30), max=1.0)
        coef = share * factors
        a = (1.0 - float(coef.sum())) * a + coef
    return a.float() @ x, factors.float()


def aggregate(x: torch.Tensor, w: torch.Tensor, cfg: RobustConfig) -> Aggregate:
    """Combine rows of ``x`` (members x elements, finite) with weights ``w`` (members,) by ``cfg``."""
    if x.ndim != 2 or w.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(
            f"expected (members x elements) and (members,), got {tuple(x.shape)} and {tuple(w.shape)}"
        )
    x = x.float()
    w = torch.nan_to_num(w.float(), nan=0.0, posinf=0.0).clamp_min(0.0)
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    if cfg.aggregator == "mean" or int((w > 0).sum()) < cfg.min_robust:
        return Aggregate(value=(w / w.sum()) @ x, weights=w, clip=torch.ones_like(w))
    keep = w > 0  # a zero-weight contribution (a newcomer's empty update) takes no part
    if not bool(keep.all()):
        inner = aggregate(x[keep], w[keep], cfg)
        clip = torch.ones_like(w)
        clip[keep] = inner.clip
        weights = torch.zeros_like(w)
        weights[keep] = inner.weights
        return Aggregate(value=inner.value, weights=weights, clip=clip)
    w = bound_weights(w, cfg.weight_cap)
    x, clip = bound_norms(x, cfg.norm_cap)
    if cfg.aggregator == "median":
        value = weighted_median(x, w)
    elif cfg.aggregator == "trimmed_mean":
        value = trimmed_mean(x, w, cfg.trim)
    else:
        value, factors = centered_clip(x, w, cfg.clip_tau, cfg.clip_iters)
        clip = clip * factors
    return Aggregate(value=value, weights=w, clip=clip)
