"""This process's view of the swarm's time: its own clock corrected by the offset it estimated.

Rounds are wall-clock windows (``runclock.py``) and home machines' clocks drift by seconds, so a
peer does not trust its own clock: it estimates ``offset = its clock - the swarm's`` from NTP-style
exchanges with the bootstrap and a few peers (``peer/clock.py``) and every deadline of the round
protocol (the compute window, the plan of a round, a leader's reduce deadline sent to its members)
is read in swarm time: ``now()``. Local waits that take a local deadline convert with ``local``.

The estimate is pure arithmetic kept here, apart from the exchanges: one exchange gives a sample
(``sample``: the server's time against the midpoint of our send and receive, the round trip as its
error bar); the best sample per source (smallest round trip) counts once; the estimate is the
median of the sources after dropping those far from it (``estimate``), so one lying or badly
skewed member cannot move it.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

MAX_OFFSET_S = 3600.0  # a source claiming a larger offset than this is broken, not skewed: dropped
MAX_RTT_S = 2.0  # an exchange slower than this says too little about the time: dropped
OUTLIER_FLOOR_S = 0.25  # a source within this of the median is never an outlier (LAN jitter)
OUTLIER_MADS = 3.0  # beyond this many median absolute deviations from the median, a source is dropped
SETTLE_S = 0.02  # a new estimate this close to the one in use keeps the old (no jitter in deadlines)

_lock = threading.Lock()
_offset_s = 0.0  # this machine's clock minus the swarm's, seconds
_skew_s = 0.0  # tests only (peer --inject, kind clock): seconds our clock reads beyond time.time()


@dataclass(frozen=True, kw_only=True)
class ClockSample:
    source: str  # who answered: a peer id or "bootstrap"
    offset_s: float  # our clock minus theirs at the moment they answered, seconds
    rtt_s: float  # round trip of the exchange, seconds: the sample's error is at most half of it


@dataclass(frozen=True, kw_only=True)
class ClockEstimate:
    offset_s: float  # our clock minus the swarm's, seconds
    sources: int  # sources the median was taken over
    dropped: tuple[str, ...] = ()  # sources left out as outliers


def sample(source: str, sent_at: float, server_time: float, received_at: float) -> ClockSample | None:
    """One exchange: we sent at ``sent_at`` and heard back at ``received_at`` (our clock), the server
    said ``server_time``. None when the reply cannot be a time (not finite, absurdly far off) or
    the exchange took too long to say anything."""
    values = (sent_at, server_time, received_at)
    if not all(isinstance(v, float | int) and math.isfinite(v) for v in values):
        return None
    rtt = received_at - sent_at
    if not 0 <= rtt <= MAX_RTT_S or server_time <= 0:
        return None
    offset = (sent_at + received_at) / 2 - server_time
    if abs(offset) > MAX_OFFSET_S:
        return None
    return ClockSample(source=source, offset_s=offset, rtt_s=rtt)


def best_per_source(samples: Iterable[ClockSample]) -> list[ClockSample]:
    """Each source's sample with the shortest round trip (the least uncertain), one per source."""
    best: dict[str, ClockSample] = {}
    for s in samples:
        if s.source not in best or s.rtt_s < best[s.source].rtt_s:
            best[s.source] = s
    return sorted(best.values(), key=lambda s: s.source)


def estimate(samples: Iterable[ClockSample]) -> ClockEstimate | None:
    """The swarm's offset from everyone's samples: the median over sources, outliers dropped; None
    with no usable sample."""
    best = best_per_source(samples)
    if not best:
        return None
    mid = statistics.median(s.offset_s for s in best)
    mad = statistics.median(abs(s.offset_s - mid) for s in best)
    limit = max(OUTLIER_FLOOR_S, OUTLIER_MADS * mad)
    kept = [s for s in best if abs(s.offset_s - mid) <= limit]
    dropped = tuple(s.source for s in best if abs(s.offset_s - mid) > limit)
    return ClockEstimate(
        offset_s=statistics.median(s.offset_s for s in kept), sources=len(kept), dropped=dropped
    )


def offset() -> float:
    """This process's clock minus the swarm's, seconds (0 until corrected)."""
    with _lock:
        return _offset_s


def correct(offset_s: float) -> bool:
    """Use ``offset_s`` from now on; False (and nothing changes) when it is within ``SETTLE_S`` of
    the offset in use or is not a plausible offset."""
    global _offset_s
    if not (math.isfinite(offset_s) and abs(offset_s) <= MAX_OFFSET_S):
        return False
    with _lock:
        if abs(offset_s - _offset_s) < SETTLE_S:
            return False
        _offset_s = offset_s
        return True


def skew(seconds: float) -> None:
    """Tests: make this machine's clock, as barnraise reads it (``reading``), ``seconds`` off."""
    global _skew_s
    if not (math.isfinite(seconds) and abs(seconds) <= MAX_OFFSET_S):
        raise ValueError(f"a clock skew must be within +-{MAX_OFFSET_S:g} s, got {seconds}")
    _skew_s = float(seconds)


def reading() -> float:
    """This machine's clock (unix seconds), uncorrected: what an exchange's sample is taken on."""
    return time.time() + _skew_s


def now() -> float:
    """The swarm's time (unix seconds) as this process knows it."""
    return reading() - offset()


def local(swarm_t: float) -> float:
    """``time.time()``'s reading at swarm time ``swarm_t``: for waits that compare against it."""
    return swarm_t + offset() - _skew_s
