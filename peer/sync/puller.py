"""The operator's checkpoints: the bootstrap process pulls the swarm's agreed state every N rounds,
checks it against the hash the round's members report, saves it in ``RUN_DIR/checkpoints`` and
serves the newest one over state sync, so peers that all stopped can resume from it.

What a pull costs a donor: one state (8 bytes per parameter: params and outer momentum, fp32) every
N rounds, served paced to ``statesync.CHECKPOINT_SHARE`` of its declared uplink (a quarter of a
25 Mbit/s home link when it declares none), one checkpoint pull at a time. Donors are tried in an
order that puts directly reachable peers first and rotates with the round, so the pulls spread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from pathlib import Path

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator import records
from barnraise.coordinator.errors import BarnraiseError, PeerUnavailable
from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.checkpoint import run_layout
from barnraise.peer.sync.checkpointer import CheckpointPolicy, CheckpointStore
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.sync.statesync import StateServer, choose_donors, download_state
from barnraise.protos import heartbeat_pb2, manifest_pb2

log = logging.getLogger(__name__)

FRAME_TIMEOUT_S = 60.0  # the most seconds between two frames of a pulled state
PULL_TIMEOUT_S = 900.0  # a whole pull, paced, of the largest state we expect


async def pull_state(
    p2p, donors: list[str], run_id: str, numel: int, *, auth, min_round: int = -1, checkpoint: bool = True
) -> tuple[GlobalState, str]:
    """The one place checkpoints use state sync: the state of ``min_round`` (or newer) from the
    first of ``donors`` that serves one; PeerUnavailable if none does."""
    errors = []
    for donor in donors:
        try:
            state = await download_state(
                p2p,
                donor,
                run_id,
                numel,
                FRAME_TIMEOUT_S,
                auth=auth,
                min_round=min_round,
                checkpoint=checkpoint,
            )
            return state, donor
        except BarnraiseError as e:
            errors.append(f"{donor[:12]}: {e}")
    raise PeerUnavailable("no donor served the state (" + "; ".join(errors[-3:]) + ")")


def agreed_hash(beats: list[heartbeat_pb2.Heartbeat], round_no: int) -> str | None:
    """The params hash a strict majority of the peers that report one for ``round_no`` hold."""
    votes = {}
    for b in beats:
        if b.hash_round == round_no and b.params_hash:
            votes[b.peer_id] = b.params_hash
        for h in b.recent_hashes:
            if h.round == round_no and h.params_hash:
                votes.setdefault(b.peer_id, h.params_hash)
    if not votes:
        return None
    phash, n = Counter(votes.values()).most_common(1)[0]
    return phash if 2 * n > len(votes) else None


def rank_donors(beats: list[heartbeat_pb2.Heartbeat], donors: list[str], round_no: int) -> list[str]:
    """Directly reachable donors first (a relayed one's uplink is a home link behind a relay), then
    an order that changes with the round, so the same peer does not serve every pull."""
    link = {b.peer_id: b.link for b in beats}

    def key(peer: str) -> tuple[bool, str]:
        return link.get(peer) == "relayed", hashlib.sha256(f"{round_no}/{peer}".encode()).hexdigest()

    return sorted(donors, key=key)


class CheckpointPuller:
    """Runs in the bootstrap process, on its DHT node: pulls, checks, saves, serves, announces."""

    def __init__(
        self,
        *,
        dht,
        signed: manifest_pb2.SignedManifest,
        manifest: manifest_pb2.RunManifest,
        run_dir: Path,
        policy: CheckpointPolicy,
    ):
        self.dht, self.manifest, self.policy = dht, manifest, policy
        self.store = CheckpointStore(run_dir / "checkpoints", manifest, policy)
        self.store.keep_manifest(signed)
        self.peer_id = dht.peer_id.to_base58()
        self.auth = OPEN_RUN  # open runs only (``start`` says why)
        self.numel, self.layout = run_layout(manifest)
        self.last_round = -1
        self.samples, self._seen = 0, {}  # samples the run trained; peer -> its last samples_total
        self._stop = threading.Event()
        self.loop: P2PLoop | None = None

    def start(self) -> bool:
        """Start pulling and serving; False in a closed run, where the bootstrap cannot take part
        in state sync (its libp2p identity is not an Ed25519 key a membership token can name): its
        peers' own checkpoints are what a closed run resumes from."""
        if not self.manifest.membership.open:
            log.warning("closed run: the bootstrap keeps no checkpoints; every peer keeps its own")
            return False
        self.loop = P2PLoop(self.dht)
        self.server = StateServer(self.loop.p2p, self.manifest.run_id, auth=self.auth)
        self.loop.call(self.server.register(), 10.0)
        found = self.store.newest(self.numel)
        if found is not None:
            state, info = found
            self.server.publish(state)
            self.last_round, self.samples = state.round, info.samples_seen
            log.info("newest checkpoint: round %d (%s)", state.round, info.params_hash)
        self.store.announce(
            self.dht, self.peer_id, rules.operator_subkey(self.manifest.run_public_key, self.peer_id)
        )
        threading.Thread(target=self._run, daemon=True, name="checkpoint-puller").start()
        return True

    def _run(self) -> None:
        period = min(self.manifest.training.round_s, 5.0)
        while not self._stop.wait(period):
            try:
                self.tick()
            except BarnraiseError as e:
                log.warning("checkpoint pull failed: %s", e)

    def _count(self, beats: list[heartbeat_pb2.Heartbeat]) -> None:
        for b in beats:
            before = self._seen.get(b.peer_id)
            if before is not None and b.samples_total >= before:
                self.samples += b.samples_total - before
            self._seen[b.peer_id] = b.samples_total

    def tick(self) -> None:
        """Pull and save the agreed state if a checkpoint is due."""
        beats = records.read_heartbeats(self.dht, self.manifest.run_id, timeout_s=5.0, admit=self.auth.admits)
        self._count(beats)
        phash, rnd, donors = choose_donors(beats, self.peer_id)
        if not donors or not self.policy.due(rnd, self.last_round):
            return
        order = rank_donors(beats, donors, rnd)
        coro = pull_state(
            self.loop.p2p, order, self.manifest.run_id, self.numel, auth=self.auth, min_round=rnd
        )
        state, donor = self.loop.call(coro, PULL_TIMEOUT_S)
        if not self.policy.due(state.round, self.last_round):
            return
        beats = records.read_heartbeats(self.dht, self.manifest.run_id, timeout_s=5.0, admit=self.auth.admits)
        agreed = agreed_hash(beats, state.round) or (phash if state.round == rnd else None)
        if agreed != state.params_hash():
            log.warning(
                "state of round %d from %s refused: hash %s, the round's members agree on %s",
                state.round,
                donor[:12],
                state.params_hash(),
                agreed,
            )
            return
        losses = [b.loss for b in beats if b.loss > 0]
        loss = sum(losses) / len(losses) if losses else None
        position = rules.read_position(self.dht, self.manifest)
        self.store.save(state, self.layout, loss=loss, samples=self.samples, position=position)
        self.server.publish(state)
        self.last_round = state.round

    def stop(self) -> None:
        self._stop.set()
        self.store.stop()
        if self.loop is not None:
            self.loop.stop()
