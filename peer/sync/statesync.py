"""State sync between peers: a newcomer (or a peer that fell behind) downloads the global state
from donor peers, not from the bootstrap. The donor side lives here: the whole state on one
stream (``download_state``, for donors and callers that predate chunked sync), its chunk hash list
and chunks for downloads from several donors at once (``barnraise.peer.sync.donors``), and the
last rounds' averages for peers catching up by rounds (``barnraise.peer.sync.updatelog``).

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
from collections.abc import Callable

from barnraise.coordinator.errors import IntegrityError, PeerUnavailable, ProtocolError
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.net import rpc
from barnraise.peer.net.auth import OpenRun, PeerAuth
from barnraise.peer.net.reachability import CLIENT
from barnraise.peer.sync import chunks
from barnraise.peer.sync.rounds import LaunchedRound
from barnraise.peer.sync.state import GlobalState, tensor_hash
from barnraise.peer.sync.updatelog import UPDATES, Kept, UpdateLog
from barnraise.protos import averaging_pb2, heartbeat_pb2, statechunks_pb2

log = logging.getLogger(__name__)

STATE_HANDLER = "barnraise.state"
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 4096  # a request or a header: ids, numbers and a signed membership token
MAX_DONOR_WAIT_S = 30.0  # a requester cannot hold a donor's stream open longer than this
POLL_S = 0.05  # how often a waiting donor looks at its averaging round
ANNOUNCED_STATES = 2  # states whose chunks a donor keeps at hand (its current one and the next)
STATE = rpc.Method(
    name=STATE_HANDLER,
    request=averaging_pb2.StateRequest,
    max_request_bytes=MAX_MESSAGE_BYTES,
    refusal=lambda why: averaging_pb2.StateHeader(ok=False, reason=why),
)


class StateServer:
    """Serves the state whole (``barnraise.state``) and in hashed chunks to syncing peers that fetch
    from several donors at once (``barnraise.state.manifest`` and ``barnraise.state.chunks``)."""

    def __init__(
        self,
        p2p,
        run_id: str,
        *,
        auth: PeerAuth | OpenRun,
        corrupt_state: Callable[[], bool] | None = None,
    ):
        self.p2p = p2p
        self.run_id = run_id
        self.auth = auth  # who may download our state (OPEN_RUN: anyone)
        self.corrupt_state = corrupt_state  # tests: whether to serve broken chunks now
        self._announced: dict[tuple[int, str], tuple[GlobalState, statechunks_pb2.StateManifest]] = {}
        self.updates = UpdateLog()  # our last rounds' averages, for peers catching up by rounds
        self._lock = threading.Lock()
        self._current: GlobalState | None = None  # the state this peer holds (states never change)
        self._inflight: LaunchedRound | None = None  # the round launched from it, if any
        self._blob: tuple[GlobalState, bytes] | None = None  # the last state served, serialized

    async def register(self) -> None:
        await rpc.serve(self.p2p, STATE, self._serve, access=self.auth)
        await rpc.serve(self.p2p, chunks.MANIFEST, self._serve_manifest, access=self.auth)
        await rpc.serve(self.p2p, chunks.CHUNKS, self._serve_chunks, access=self.auth)
        await rpc.serve(self.p2p, UPDATES, self._serve_updates, access=self.auth)

    def publish(self, state: GlobalState) -> None:
        """Called by the training thread after each outer step (or sync). States are immutable, so
        this keeps a reference, serialized only when a peer asks; a finished round is dropped here."""
        with self._lock:
            self._current, done = state, self._inflight
            if done is not None and done.round <= state.round:
                self._inflight = None
        if done is not None and done.round == state.round and done.next_state() is state:
            kept = Kept.of(done, state)  # the round we just applied: keep its average as received
            if kept is not None:
                self.updates.record(kept, state.params.numel())

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
        blob = await asyncio.to_thread(self._serialized, state)
        header = averaging_pb2.StateHeader(
            ok=True, round=state.round, params_hash=state.params_hash(), total_bytes=len(blob)
        )
        await stream.write(header, STATE.reply_timeout_s)
        for i in range(0, len(blob), CHUNK_BYTES):
            await stream.write(blob[i : i + CHUNK_BYTES], 60.0)
        return None

    async def _serve_manifest(
        self, stream: rpc.Stream, req: averaging_pb2.StateRequest
    ) -> statechunks_pb2.StateManifest:
        """The chunk hash list of the state ``req`` asks for; that state stays at hand for chunks."""
        state = await self._choose(req.min_round, req.wait_s) if req.run_id == self.run_id else None
        if state is None or state.round < 0:
            return statechunks_pb2.StateManifest(ok=False, reason="no state for that run")
        key = (state.round, state.params_hash())
        with self._lock:
            known = self._announced.get(key)
        if known is None:
            known = (state, await asyncio.to_thread(chunks.manifest_of, state))
            with self._lock:
                self._announced[key] = known
                while len(self._announced) > ANNOUNCED_STATES:
                    self._announced.pop(next(iter(self._announced)))
        return known[1]

    async def _serve_updates(
        self, stream: rpc.Stream, req: statechunks_pb2.UpdatesRequest
    ) -> statechunks_pb2.UpdatesHeader | None:
        """The kept rounds from the requester's state to ``to_round`` (waiting for our averaging of
        it as for a state), as a header and then every round's reduced chunks."""
        if req.run_id != self.run_id:
            return statechunks_pb2.UpdatesHeader(ok=False, reason="not our run")
        await self._choose(req.to_round, req.wait_s)
        with self._lock:
            current, inflight = self._current, self._inflight
        extra = None
        if inflight is not None and inflight.base is current and inflight.future.done():
            nxt = await asyncio.to_thread(inflight.next_state)
            extra = Kept.of(inflight, nxt) if nxt is not None else None
        rounds = self.updates.chain(req.from_round, req.base_hash, req.to_round, extra)
        if not rounds or sum(k.nbytes for k in rounds) > req.max_bytes:
            return statechunks_pb2.UpdatesHeader(ok=False, reason="no kept rounds from there within the size")
        head = statechunks_pb2.UpdatesHeader(ok=True, rounds=[k.header() for k in rounds])
        await stream.write(head, UPDATES.reply_timeout_s)
        for k in rounds:
            for part in k.parts:
                for enc in part:
                    await stream.write(enc, 60.0)
        return None

    async def _serve_chunks(
        self, stream: rpc.Stream, req: statechunks_pb2.ChunkRequest
    ) -> statechunks_pb2.ChunkReply | None:
        """The chunks asked for, in order, of a state we announced."""
        with self._lock:
            known = self._announced.get((req.round, req.params_hash))
        if known is None or req.run_id != self.run_id:
            return statechunks_pb2.ChunkReply(ok=False, reason="no such state announced here")
        state, manifest = known
        if len(req.chunks) > chunks.MAX_CHUNKS_PER_REQUEST:
            return statechunks_pb2.ChunkReply(ok=False, reason="too many chunks in one request")
        total = 2 * len(manifest.param_chunks)
        for index in req.chunks:
            if index >= total:
                return statechunks_pb2.ChunkReply(ok=False, reason=f"no chunk {index}")
            data = chunks.chunk_bytes_of(state, index)
            if self.corrupt_state is not None and self.corrupt_state():
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            await stream.write(statechunks_pb2.ChunkReply(ok=True, index=index, data=data), 60.0)
        return None


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
) -> GlobalState:
    """Download ``donor``'s state; with ``min_round``, the donor may wait ``wait_s`` for that round's.

    ``timeout_s``: the most seconds between two frames of the state."""
    request = averaging_pb2.StateRequest(run_id=run_id, min_round=min_round, wait_s=wait_s)
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
    holders = [b for b in at_top if b.params_hash == phash]
    # Donors others can dial first: a peer behind a home router serves only over a connection
    # we happen to have, so it is asked last (sorted() keeps the order among equals).
    return phash, top, [b.peer_id for b in sorted(holders, key=lambda b: b.link == CLIENT)]


def verify_against(state: GlobalState, expected_hash: str) -> None:
    if expected_hash and tensor_hash(state.params) != expected_hash:
        raise IntegrityError("downloaded state's params_hash differs from the swarm's")
