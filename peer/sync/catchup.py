"""Catching up with the swarm: which state to download, from whom, and when it has arrived.

A newcomer, or a peer whose base fell behind, downloads the swarm's state from several donors at
once (``barnraise.peer.sync.donors``; one after another from donors that predate it) while it
keeps training (at 25 Mbit/s a gpt-small state takes ~15 s: waiting would idle the device for a
round or more); a peer only a few rounds behind replays those rounds' averages instead when they
are smaller (``barnraise.peer.sync.replay``). ``CatchUp`` runs the download on the P2P loop and
the training thread polls it between windows; the state it brings is adopted there, never on the
P2P loop.

Cross-thread reads go through ``held``, a callable returning the state the training thread holds
now: states never change once made (``barnraise.peer.sync.state``), so the P2P loop reads one
consistent (round, params hash) pair however the training thread moves on meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable

from barnraise.coordinator import records
from barnraise.coordinator.errors import BarnraiseError
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.donors import RateBook, fetch_state, select_donors
from barnraise.peer.sync.replay import fetch_updates
from barnraise.peer.sync.state import GlobalState, OuterStep
from barnraise.peer.sync.statesync import download_state, sync_target
from barnraise.peer.sync.updatelog import KEEP_ROUNDS

log = logging.getLogger(__name__)

MAX_DONORS_TRIED = 3  # donors asked in turn (whole state each) when chunked sync fails
DOWNLOAD_TIMEOUT_S = 60.0  # per frame of a state download
FIRST_SYNC_TIMEOUT_S = 200.0  # the blocking sync at start-up
MAX_PARALLEL_DONORS = 4  # a state from this many donors at once arrives about this many times faster

Found = tuple[GlobalState, str]  # (state, donor peer id)


class CatchUp:
    """Finds and downloads the state the swarm's next round starts from."""

    def __init__(
        self,
        *,
        loop: P2PLoop,
        dht,
        run_id: str,
        peer_id: str,
        clock: RoundClock,
        auth,
        link_mbit: float,
        held: Callable[[], GlobalState],
        outer: OuterStep | None = None,
    ):
        self.loop, self.dht, self.run_id, self.peer_id = loop, dht, run_id, peer_id
        self.clock = clock
        self.auth = auth  # barnraise.peer.net.auth.PeerAuth: signs our requests, filters heartbeats
        self.link_mbit = link_mbit  # our declared link, Mbit/s (0: assume a home uplink)
        self.held = held  # the training thread's current state (read, never written, here)
        self.outer = outer  # the run's outer step, to replay missed rounds (None: always the state)
        self._running: concurrent.futures.Future | None = None  # a background download
        self.rates = RateBook()  # how fast each donor served us, to rank them next time

    def now(self) -> Found | None:
        """The newest state a donor has at hand, waited for (start-up); None if none or ours is it."""
        try:
            return self.loop.call(self._fetch(wait=False), FIRST_SYNC_TIMEOUT_S)
        except BarnraiseError as e:
            log.warning("state sync failed: %s", e)
            return None

    def start(self) -> bool:
        """Fetch the next round's base in the background, unless a download is running already;
        True if this started one."""
        if self._running is not None:
            return False
        self._running = self.loop.submit(self._fetch())
        return True

    @property
    def running(self) -> bool:
        return self._running is not None

    def poll(self) -> tuple[bool, Found | None]:
        """(a download is still running, what a finished one brought)."""
        if self._running is None:
            return False, None
        if not self._running.done():
            return True, None
        try:
            found = self._running.result()
        except Exception as e:  # a failed download: the next stale round starts another
            log.warning("state sync failed: %s", e)
            found = None
        self._running = None
        return False, found

    def cancel(self) -> None:
        if self._running is not None:
            self._running.cancel()

    async def _fetch(self, wait: bool = True) -> Found | None:
        """On the P2P loop: (the state the swarm's next round starts from, its donor), or None if we
        hold it already or no donor has it. ``wait=False``: the newest state a donor has at hand."""
        try:
            beats = await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: records.read_heartbeats(self.dht, self.run_id, timeout_s=5.0, admit=self.auth.admits),
            )
        except BarnraiseError:
            return None
        held = self.held()
        phash, rnd, donors = select_donors(beats, self.peer_id, self.rates)
        min_round, wait_s = sync_target(self.clock, time.time(), held.params.numel(), self.link_mbit)
        forked = rnd >= held.round and phash != held.params_hash()  # the majority moved elsewhere
        if not donors or (held.round >= min_round and not forked):
            return None
        wait_s = wait_s if wait else 0.0
        replayed = await self._replay(
            donors[0], held, min_round if wait else rnd, wait_s, (rnd, phash), len(donors)
        )
        if replayed is not None:
            return replayed
        try:
            got = await fetch_state(
                self.loop.p2p,
                donors,
                self.run_id,
                held.params.numel(),
                auth=self.auth,
                min_round=min_round,
                wait_s=wait_s,
                agreed=(rnd, phash),
                rates=self.rates,
                chunk_timeout_s=DOWNLOAD_TIMEOUT_S,
            )
        except BarnraiseError as e:  # donors that predate chunked sync, or all of them failed
            log.warning("state download from %d donors failed: %s", len(donors), e)
            return await self._one_by_one(donors, held, min_round, wait_s)
        return self._newer(got.state, got.donor)

    async def _replay(
        self,
        donor: str,
        held: GlobalState,
        to_round: int,
        wait_s: float,
        agreed: tuple[int, str],
        n_donors: int,
    ) -> Found | None:
        """The state of ``to_round`` by replaying the rounds we missed from ``donor``'s update log,
        when they are fewer bytes than the state would take from ``n_donors`` at once; None if not."""
        if self.outer is None or not 0 < to_round - held.round <= KEEP_ROUNDS:
            return None
        max_bytes = 8 * held.params.numel() // min(n_donors, MAX_PARALLEL_DONORS)
        try:
            state = await fetch_updates(
                self.loop.p2p,
                donor,
                self.run_id,
                held,
                to_round,
                self.outer,
                auth=self.auth,
                max_bytes=max_bytes,
                wait_s=wait_s,
            )
        except BarnraiseError as e:
            log.info("catching up by rounds from %s: %s; downloading the state", donor[:12], e)
            return None
        if state.round == agreed[0] and agreed[1] and state.params_hash() != agreed[1]:
            log.warning("rounds replayed from %s do not lead to the swarm's agreed state", donor[:12])
            return None
        log.info(
            "caught up from round %d to %d by replaying %s's rounds", held.round, state.round, donor[:12]
        )
        return self._newer(state, donor)

    async def _one_by_one(
        self, donors: list[str], held: GlobalState, min_round: int, wait_s: float
    ) -> Found | None:
        """The whole state from one donor after another (donors without chunked sync)."""
        for donor in donors[:MAX_DONORS_TRIED]:
            try:
                state = await download_state(
                    self.loop.p2p,
                    donor,
                    self.run_id,
                    held.params.numel(),
                    DOWNLOAD_TIMEOUT_S,
                    auth=self.auth,
                    min_round=min_round,
                    wait_s=wait_s,
                )
            except BarnraiseError as e:
                log.warning("state download from %s failed: %s", donor[:12], e)
                continue
            found = self._newer(state, donor)
            if found is not None:
                return found
        return None

    def _newer(self, state: GlobalState, donor: str) -> Found | None:
        held = self.held()
        if state.round < held.round:
            log.info("donor %s served round %d, older than ours (%d)", donor[:12], state.round, held.round)
            return None
        return state, donor
