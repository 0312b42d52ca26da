"""State sync between peers: a newcomer (or a peer that fell behind) downloads the global state
from a donor peer, not only from the bootstrap, and checks it against the hash the donor announces.

With averaging overlapped with compute (round delay 1), the state a group starts round k from is
the one it applies at the end of round k: it exists nowhere before then, so a plain download is
always one round stale and the peer chases the swarm round after round. A donor therefore also
serves the state it is *about to* hold: once its averaging of the requested round has finished it
serves the round's ``next_state`` (``barnraise.peer.sync.rounds``: the same deterministic outer step
every member takes, computed once and applied by the daemon too), so the requester can join the
very next round. The donor serialises on demand, off the P2P loop; the training thread never
waits for a download.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.sync.rounds import LaunchedRound
from barnraise.peer.sync.state import GlobalState, tensor_hash
from barnraise.protos import averaging_pb2, heartbeat_pb2

log = logging.getLogger(__name__)

STATE_HANDLER = "barnraise.state"
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 4096  # a request or a header: ids, numbers and a signed membership token
MAX_DONOR_WAIT_S = 30.0  # a requester cannot hold a donor's stream open longer than this
POLL_S = 0.05  # how often a waiting donor looks at its averaging round
CHECKPOINT_SHARE = 0.25  # share of the donor's uplink a checkpoint pull may take (peer/sync/puller.py)
HOME_UPLINK_BPS = 25e6 / 8  # bytes/s assumed for a donor that declares no bandwidth
STATE = rpc.Method(
    name=STATE_HANDLER,
    request=averaging_pb2.StateRequest,
    max_request_bytes=MAX_MESSAGE_BYTES,
    refusal=lambda why: averaging_pb2.StateHeader(ok=False, reason=why),
)


class StateServer:
    def __init__(self, p2p, run_id: str, *, auth: PeerAuth | OpenRun, uplink_bps: float = 0.0):
        self.p2p = p2p
        self.run_id = run_id
        self.auth = auth  # who may download our state (OPEN_RUN: anyone)
        # checkpoint pulls' pace, bytes/s: a bounded share of our uplink (declared, or a home link's)
        self.checkpoint_bps = CHECKPOINT_SHARE * (uplink_bps or HOME_UPLINK_BPS)
        self._checkpoint_busy = False  # one checkpoint pull served at a time
        self._lock = threading.Lock()
        self._current: GlobalState | None = None  # the state this peer holds (states never change)
        self._inflight: LaunchedRound | None = None  # the round launched from it, if any
        self._blob: tuple[GlobalState, bytes] | None = None  # the last state served, serialized

    async def register(self) -> None:
        await rpc.serve(self.p2p, STATE, self._serve, access=self.auth)

    def publish(self, state: GlobalState) -> None:
        """Called by the training thread after each outer step (or sync). States are immutable, so
        this keeps a reference, serialized only when a peer asks; a finished round is dropped here."""
        with self._lock:
            self._current = state
            if self._inflight is not None and self._inflight.round <= state.round:
                self._inflight = None

    def track(self, launched: LaunchedRound) -> None:
        """Called by the training thread when it launches a round from the published state."""
        with self._lock:
            self._inflight = launched

    async def _choose(self, min_round: int, wait_s: float) -> GlobalState | None:
        """The state of ``min_round`` if we hold it or our averaging produces it within ``wait_s``
        (the requester needs it by then); otherwise the newest state we have when the wait ends."""
        deadline = time.monotonic() + min(max(0.0, wait_s), MAX_DONOR_WAIT_S)
        while True:
            with self._lock:
                current, inflight = self._current, self._inflight
            if current is None:
                return None
            if current.round >= min_round:
                return current
            ours = inflight is not None and inflight.round > current.round and inflight.base is current
            if ours and inflight.future.done():
                nxt = await asyncio.to_thread(inflight.next_state)  # the outer step, once, off the loop
                if inflight.round >= min_round or time.monotonic() >= deadline:
                    return nxt or current  # done, for better or worse: no point waiting
            elif time.monotonic() >= deadline:
                return current
            await asyncio.sleep(POLL_S)

    def _serialized(self, state: GlobalState) -> bytes:
        with self._lock:
            cached = self._blob
        if cached is not None and cached[0] is state:
            return cached[1]
        blob = state.to_bytes()
        with self._lock:
            self._blob = (state, blob)
        return blob

    async def _serve(
        self, stream: rpc.Stream, req: averaging_pb2.StateRequest
    ) -> averaging_pb2.StateHeader | None:
        """A member's request, once ``rpc.serve`` has checked its membership: a header, then the state."""
        state = await self._choose(req.min_round, req.wait_s) if req.run_id == self.run_id else None
        if state is None or state.round < 0:
            return averaging_pb2.StateHeader(ok=False, reason="no state for that run")
        if req.checkpoint and self._checkpoint_busy:
            return averaging_pb2.StateHeader(ok=False, reason="busy serving another checkpoint pull")
        blob = await asyncio.to_thread(self._serialized, state)
        header = averaging_pb2.StateHeader(
            ok=True, round=state.round, params_hash=state.params_hash(), total_bytes=len(blob)
        )
        await stream.write(header, STATE.reply_timeout_s)
        if not req.checkpoint:
            await self._send(stream, blob, pace_bps=0.0)
            return None
        self._checkpoint_busy = True
        try:
            await self._send(stream, blob, pace_bps=self.checkpoint_bps)
        finally:
            self._checkpoint_busy = False
        return None

    @staticmethod
    async def _send(stream: rpc.Stream, blob: bytes, pace_bps: float) -> None:
        """The state in frames; with ``pace_bps`` no faster than that many bytes/s on average."""
        t0 = time.monotonic()
        for i in range(0, len(blob), CHUNK_BYTES):
            await stream.write(blob[i : i + CHUNK_BYTES], 60.0)
            sent = i + CHUNK_BYTES
            if pace_bps > 0 and sent < len(blob):
                await asyncio.sleep(max(0.0, t0 + sent / pace_bps - time.monotonic()))


async def download_state(
    p2p,
    donor: str,
    run_id: str,
    numel: int,
    timeout_s: float,
    *,
    auth: PeerAuth | OpenRun,
    min_round: int = -1,
    wait_s: float = 0.0,
    checkpoint: bool = False,
) -> GlobalState:
    """Download ``donor``'s state; with ``min_round``, the donor may wait ``wait_s`` for that round's.

    ``timeout_s``: the most seconds between two frames of the state."""
    request = averaging_pb2.StateRequest(
        run_id=run_id, min_round=min_round, wait_s=wait_s, checkpoint=checkpoint
    )
    async with rpc.call(
        p2p, donor, STATE, request, access=auth, connect_timeout_s=10.0, send_timeout_s=5.0
    ) as stream:
        wait = 10.0 + min(wait_s, MAX_DONOR_WAIT_S)
        head = await stream.read(averaging_pb2.StateHeader, MAX_MESSAGE_BYTES, wait)
        if not head.ok:
            raise PeerUnavailable(f"donor {donor[:12]} has no state: {head.reason}")
        if head.total_bytes > 8 * numel + 64:
            raise IntegrityError(
                f"donor {donor[:12]} announced {head.total_bytes} bytes of state, more than the model needs"
            )
        buf = bytearray()
        while len(buf) < head.total_bytes:
            chunk = await stream.read_bytes(CHUNK_BYTES, timeout_s)
            if not chunk:  # empty frames, each on time, would hold us forever
                raise ProtocolError(f"donor {donor[:12]} sent an empty frame")
            buf += chunk
    state = GlobalState.from_bytes(bytes(buf), numel)
    if state.params_hash() != head.params_hash or state.round != head.round:
        raise IntegrityError(f"state from {donor[:12]} does not match the hash it announced")
    return state


def sync_target(clock: RoundClock, now: float, numel: int, mbit: float) -> tuple[int, float]:
    """(the round whose state a syncing peer needs, how long a donor may wait for it).

    A peer launches round j at the end of round j from the state the swarm applies at that same
    moment (round j-1's, with averaging overlapped), so it asks for round j-1's state, for the
    first launch it can make: that state exists once the donor's averaging has finished (about
    half a round into round j) and must then download (``mbit``: the peer's link; 0: a home uplink)
    before round j ends. A state too big for that is a moving target: take the newest at hand.
    """
    transfer_s = 1.5 * 8 * 8 * numel / ((mbit or 25.0) * 1e6) + 1.0  # params + momentum, fp32
    averaging_s = 0.5 * clock.round_s
    j = clock.round_at(now)
    if averaging_s + transfer_s > clock.round_s:
        return j - 1, 0.0
    while max(now, clock.start(j) + averaging_s) + transfer_s > clock.end(j):
        j += 1
    return j - 1, max(0.0, clock.end(j) - now - transfer_s)


def choose_donors(beats: list[heartbeat_pb2.Heartbeat], me: str) -> tuple[str, int, list[str]]:
    """The swarm's latest agreed state (majority hash at the highest round) and peers that hold it."""
    done = [b for b in beats if b.peer_id != me and b.params_hash and b.hash_round >= 0]
    if not done:
        return "", -1, []
    top = max(b.hash_round for b in done)
    at_top = [b for b in done if b.hash_round == top]
    phash, _ = Counter(b.params_hash for b in at_top).most_common(1)[0]
    return phash, top, [b.peer_id for b in at_top if b.params_hash == phash]


def verify_against(state: GlobalState, expected_hash: str) -> None:
    if expected_hash and tensor_hash(state.params) != expected_hash:
        raise IntegrityError("downloaded state's params_hash differs from the swarm's")
