"""The peer's clock: its offset against the swarm, estimated at start and every ``EVERY_S`` after.

Rounds are wall-clock windows, and a home machine's clock can be seconds off: a peer 5 s behind
would close its window 5 s late and miss the round's join. So a peer does not trust its clock. It
asks the bootstrap (the coordinator service's ``GetTime``, when it is there) and up to
``MAX_PEERS`` live peers (``barnraise.probe``, ``peer/net/probe.py``) for their time, three
exchanges each, and takes the median over sources of the best exchange per source
(``coordinator/swarmclock.py``), outliers dropped. Every deadline of the round protocol is then read
in swarm time (``swarmclock.now()``), and the offset goes into the heartbeat, so ``status`` shows it.

The peer also answers probes (``serve_probe``): every member is a time source for the others, so
the swarm keeps one time once the bootstrap is gone. A peer answers with its corrected time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading

from barnraise.coordinator import records, swarmclock
from barnraise.coordinator.errors import BarnraiseError
from barnraise.coordinator.swarmclock import ClockEstimate, ClockSample
from barnraise.peer import events
from barnraise.peer.net.probe import clock_samples, serve_probe

log = logging.getLogger(__name__)

EVERY_S = 30.0  # seconds between two estimates
MAX_PEERS = 5  # peers asked per estimate (besides the bootstrap)
TRIES = 3  # exchanges per source; the one with the shortest round trip counts
GATHER_TIMEOUT_S = 10.0  # every probe of one estimate together
WARN_OFFSET_S = 1.0  # an offset beyond this is worth telling the volunteer about


class ClockKeeper:
    """Estimates the offset now (``start``), then every ``every_s`` on its own ``clock`` thread."""

    def __init__(self, *, daemon, every_s: float = EVERY_S):
        self.loop, self.dht, self.client = daemon.loop, daemon.dht, daemon.client
        self.run_id, self.peer_id, self.auth = daemon.manifest.run_id, daemon.peer_id, daemon.auth
        self.stats, self.events = daemon.stats, daemon.events
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="clock")

    def start(self) -> ClockKeeper:
        """Serve probes, estimate once (before the first round), then keep estimating; returns self."""
        self.loop.call(serve_probe(self.loop.p2p, self.auth), 10.0)
        self.estimate_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.estimate_once()
            except Exception as e:  # a DHT or network hiccup: the next estimate retries
                log.debug("clock estimate failed: %s", e)

    def estimate_once(self) -> ClockEstimate | None:
        """Estimate, correct the process's swarm time and report; None when no source answered."""
        est = swarmclock.estimate(self._bootstrap_samples() + self._peer_samples())
        if est is None:
            log.debug("clock: no source answered; keeping offset %+.3f s", swarmclock.offset())
            return None
        changed = swarmclock.correct(est.offset_s)
        self.stats.update(clock_offset_s=swarmclock.offset(), clock_sources=est.sources)
        event = events.ClockEstimated(offset_s=est.offset_s, sources=est.sources, dropped=list(est.dropped))
        self.events.emit(event, log if changed else None)
        if changed and abs(est.offset_s) > WARN_OFFSET_S:
            log.warning(
                "this machine's clock is %+.1f s off the swarm's: rounds are corrected for it, but "
                "turn on time synchronisation (NTP) so other programs agree",
                est.offset_s,
            )
        return est

    def _bootstrap_samples(self) -> list[ClockSample]:
        out = []
        for _ in range(TRIES):
            sent_at = swarmclock.reading()
            try:
                server_time = self.client.time()
            except BarnraiseError:  # the bootstrap is gone: the peers keep the time
                break
            s = swarmclock.sample("bootstrap", sent_at, server_time, swarmclock.reading())
            if s is not None:
                out.append(s)
        return out

    def _peer_samples(self) -> list[ClockSample]:
        try:
            beats = records.read_heartbeats(self.dht, self.run_id, timeout_s=5.0, admit=self.auth.admits)
        except BarnraiseError:
            return []
        peers = sorted({hb.peer_id for hb in beats} - {self.peer_id})
        peers = random.sample(peers, min(MAX_PEERS, len(peers)))

        async def gather() -> list:
            return await asyncio.gather(
                *(clock_samples(self.loop.p2p, p, access=self.auth, tries=TRIES) for p in peers),
                return_exceptions=True,
            )

        try:
            results = self.loop.call(gather(), GATHER_TIMEOUT_S)
        except BarnraiseError:
            return []
        return [s for r in results if isinstance(r, list) for s in r]
