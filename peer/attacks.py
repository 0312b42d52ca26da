"""Byzantine peers for tests and benchmarks: what a malicious member sends instead of its update.

Used by the hidden ``barnraise peer --attack NAME`` flag (one line in the daemon hands each round's
update and claimed weight to ``Attacker.forge``) and by ``scripts/bench_attacks.py``, which runs
the same transforms in an in-process swarm. The attacks:

    signflip      -10 x its honest update
    noise         Gaussian noise with 10 x the norm of its honest update
    alie          "a little is enough" (Baruch et al. 2019): mean - z x std of the honest updates,
                  coordinate-wise, against the sign of the mean (z = 1); it stays inside the honest
                  spread so that distance-based defences do not see it. An omniscient attacker
                  (the benchmark) uses the honest updates; a lone peer estimates from its own
    nan           NaN everywhere
    weight        claims 1e9 samples and sends its update negated
    stale         replays the first update it sent, round after round
    lie_round     claims the current round and base but sends an update taken against the base of
                  ``lag_rounds`` rounds earlier, which pulls the model back
    lie_progress  claims 10 x the samples it processed (the update itself is honest)
"""

from __future__ import annotations

import math
from collections import deque

import torch

ATTACKS = ("signflip", "noise", "alie", "nan", "weight", "stale", "lie_round", "lie_progress")


class Attacker:
    def __init__(self, name: str, *, seed: int = 0, scale: float = 10.0, z: float = 1.0, lag_rounds: int = 5):
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}")
        self.name = name
        self.scale = scale  # signflip and noise magnitude, x the honest update's
        self.z = z  # ALIE: standard deviations to move
        self.lag_rounds = lag_rounds  # lie_round: how old the base it pretends is current
        self.gen = torch.Generator().manual_seed(seed)
        self._first: torch.Tensor | None = None
        self._bases: deque[torch.Tensor] = deque(maxlen=lag_rounds + 1)

    def forge(
        self,
        round_no: int,
        update: torch.Tensor,
        weight: float,
        *,
        base: torch.Tensor,
        honest: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, float]:
        """(update, weight) to send instead of the honest ones.

        ``base``: the global parameters the honest update is relative to; ``honest``: rows of the
        honest members' updates, when the attacker can see them (omniscient, benchmark only).
        """
        self._bases.append(base.detach().clone())
        if self._first is None:
            self._first = update.detach().clone()
        u = update.detach().float()
        if self.name == "signflip":
            return -self.scale * u, weight
        if self.name == "noise":
            noise = torch.randn(u.shape, generator=self.gen)
            return noise * (self.scale * u.norm() / max(noise.norm().item(), 1e-30)), weight
        if self.name == "alie":
            if honest is not None and honest.shape[0] >= 2:
                mu, sigma = honest.mean(dim=0), honest.std(dim=0)
            else:
                mu, sigma = u, torch.full_like(u, float(u.pow(2).mean().sqrt()))
            return mu - self.z * sigma * torch.sign(mu), weight
        if self.name == "nan":
            return torch.full_like(u, math.nan), weight
        if self.name == "weight":
            return -u, 1e9
        if self.name == "stale":
            return self._first.clone(), weight
        if self.name == "lie_round":
            # an update relative to an old base b_old, reported as relative to the current base b:
            # (b - local) = (b - b_old) + (b_old - local), i.e. the honest step plus a pull back to b_old
            return u + (base - self._bases[0]), weight
        return u, 10.0 * weight  # lie_progress
