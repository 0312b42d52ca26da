"""The swarm's round clock: round r is the wall-clock window [genesis + r*T, genesis + (r+1)*T).

Rounds are time boxes, not step counts, so a slow peer never delays a fast one; the bootstrap
publishes ``genesis`` and ``T`` in the DHT and every peer derives the same windows from them. The
windows are in swarm time (``swarmclock.py``): a peer whose clock is off corrects by its offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from barnraise.coordinator import swarmclock


@dataclass(frozen=True, kw_only=True)
class RoundClock:
    genesis: float  # unix seconds at which round 0 began
    round_s: float  # window length, seconds

    def __post_init__(self) -> None:
        if not (math.isfinite(self.genesis) and self.round_s > 0):
            raise ValueError(f"bad round clock genesis={self.genesis} round_s={self.round_s}")

    def round_at(self, t: float | None = None) -> int:
        t = swarmclock.now() if t is None else t
        return max(0, math.floor((t - self.genesis) / self.round_s))

    def start(self, r: int) -> float:
        return self.genesis + r * self.round_s

    def end(self, r: int) -> float:
        return self.genesis + (r + 1) * self.round_s
