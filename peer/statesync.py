"""State sync between peers: a newcomer (or a peer that fell behind) downloads the global state
from a donor peer, not only from the bootstrap, and checks it against the hash the swarm reports.

The donor serves a snapshot serialised once per round on its P2P loop thread; the training
thread never waits for a download.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter

from coordinator.errors import BarnraiseError, IntegrityError, PeerUnavailable
from peer.state import GlobalState, tensor_hash
from peer.wire import close_writer, finish_stream, read_frame, read_frame_bytes, write_frame
from protos import averaging_pb2, heartbeat_pb2

log = logging.getLogger(__name__)

STATE_HANDLER = "barnraise.state"
CHUNK_BYTES = 1 << 20


class StateServer:
    def __init__(self, p2p, run_id: str, auth=None):
        self.p2p = p2p
        self.run_id = run_id
        self.auth = auth  # peer.auth.PeerAuth: who may download our state (None: anyone)
        self._lock = threading.Lock()
        self._snapshot: GlobalState | None = None
        self._blob: tuple[GlobalState, bytes] | None = None  # the snapshot serialized, once asked for

    async def register(self) -> None:
        await self.p2p.add_binary_stream_handler(STATE_HANDLER, self._handle)

    def publish(self, state: GlobalState) -> None:
        """Called by the training thread after each outer step (or sync): a copy, serialized only
        when a peer asks for it, so the training thread pays two memory copies per round."""
        snap = state.snapshot()
        with self._lock:
            self._snapshot = snap

    def _serialized(self) -> tuple[int, str, bytes] | None:
        with self._lock:
            snap, cached = self._snapshot, self._blob
        if snap is None:
            return None
        if cached is None or cached[0] is not snap:
            cached = (snap, snap.to_bytes())
            with self._lock:
                self._blob = cached
        return snap.round, snap.params_hash(), cached[1]

    async def _handle(self, stream_info, reader, writer) -> None:
        try:
            req = await read_frame(reader, averaging_pb2.StateRequest, 4096, 10.0)
            remote = stream_info.peer_id.to_base58()
            if self.auth is not None and (refused := self.auth.refuse(req, STATE_HANDLER, remote)) is not None:
                await write_frame(writer, averaging_pb2.StateHeader(ok=False, reason=refused), 5.0)
                return
            snap = self._serialized() if req.run_id == self.run_id else None
            if snap is None:
                await write_frame(
                    writer, averaging_pb2.StateHeader(ok=False, reason="no state for that run"), 5.0
                )
                return
            round_no, phash, blob = snap
            await write_frame(
                writer,
                averaging_pb2.StateHeader(ok=True, round=round_no, params_hash=phash, total_bytes=len(blob)),
                5.0,
            )
            for i in range(0, len(blob), CHUNK_BYTES):
                await write_frame(writer, blob[i : i + CHUNK_BYTES], 60.0)
        except BarnraiseError as e:
            log.debug("state request from %s failed: %s", stream_info.peer_id.to_base58()[:12], e)
        except Exception:  # a bug here must not pass for a closed stream on the other side
            log.exception("handle handler failed")
        finally:
            await finish_stream(reader, writer)


async def download_state(p2p, donor: str, run_id: str, numel: int, timeout_s: float, auth=None) -> GlobalState:
    from hivemind.p2p import PeerID

    writer = None
    try:
        _, reader, writer = await asyncio.wait_for(
            p2p.call_binary_stream_handler(PeerID.from_base58(donor), STATE_HANDLER), 10.0
        )
        request = averaging_pb2.StateRequest(run_id=run_id)
        if auth is not None:
            auth.attach(request, STATE_HANDLER)
        await write_frame(writer, request, 5.0)
        head = await read_frame(reader, averaging_pb2.StateHeader, 4096, 10.0)
        expected = 8 * numel + 64
        if not head.ok:
            raise PeerUnavailable(f"donor {donor[:12]} has no state: {head.reason}")
        if head.total_bytes > expected:
            raise IntegrityError(
                f"donor {donor[:12]} announced {head.total_bytes} bytes of state, more than the model needs"
            )
        buf = bytearray()
        while len(buf) < head.total_bytes:
            buf += await read_frame_bytes(reader, CHUNK_BYTES, timeout_s)
        state = GlobalState.from_bytes(bytes(buf), numel)
        if state.params_hash() != head.params_hash or state.round != head.round:
            raise IntegrityError(f"state from {donor[:12]} does not match the hash it announced")
        return state
    except (asyncio.TimeoutError, TimeoutError) as e:
        raise PeerUnavailable(f"donor {donor[:12]} did not answer in time") from e
    finally:
        if writer is not None:
            close_writer(writer)


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
