"""Resuming a run from a checkpoint when no live peer holds a newer state.

At start-up a peer compares three things: the newest state live peers agree on (their heartbeats),
its own newest checkpoint (``CACHE_DIR/<run>/checkpoints``), and the checkpoints other nodes
announce (``CheckpointRecord``; the operator's bootstrap serves its own). If a checkpoint is newer
than anything live, the run goes on from it: its round, parameters, outer momentum and place in the
data. A remote checkpoint is trusted when its record is sealed by the run key (the operator's bootstrap)
or when two holders announce the same round and hash; its state must match the hash announced.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator import records
from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.checkpointer import CheckpointStore
from barnraise.peer.sync.puller import PULL_TIMEOUT_S, pull_state
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.sync.statesync import choose_donors
from barnraise.protos import checkpoint_pb2, manifest_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Resumed:
    """A checkpoint to go on from."""

    state: GlobalState  # its state
    source: str  # "local checkpoint" or the holder's peer id
    position: rules.DataPosition  # its place in the data
    samples: int  # samples the run had trained


def trusted_records(
    found: list[tuple[str, checkpoint_pb2.CheckpointRecord]], run_public_key: bytes, me: str
) -> list[checkpoint_pb2.CheckpointRecord]:
    """Records sealed by the run key (the operator's bootstrap), or announced alike by two
    holders; newest first."""
    agree = Counter((r.round, r.params_hash) for _, r in found)
    return [
        r
        for subkey, r in found
        if r.peer_id != me
        and (
            subkey == rules.operator_subkey(run_public_key, r.peer_id) or agree[(r.round, r.params_hash)] > 1
        )
    ]


class ResumePoint:
    """What a starting peer needs from checkpoints: the state to resume from, and the data floor."""

    def __init__(
        self,
        *,
        loop: P2PLoop,
        dht,
        manifest: manifest_pb2.RunManifest,
        peer_id: str,
        auth,
        store: CheckpointStore,
    ):
        self.loop, self.dht, self.manifest, self.peer_id, self.auth, self.store = (
            loop,
            dht,
            manifest,
            peer_id,
            auth,
            store,
        )
        self.records: list[checkpoint_pb2.CheckpointRecord] = []

    def find(self, numel: int) -> Resumed | None:
        """The newest checkpoint if it is newer than every live peer's state, else None."""
        run_id = self.manifest.run_id
        try:
            beats = records.read_heartbeats(self.dht, run_id, timeout_s=5.0, admit=self.auth.admits)
            recs = rules.read_records(self.dht, run_id, len(self.manifest.shards))
        except BarnraiseError as e:
            log.info("checkpoint records unreadable (%s)", e)
            beats, recs = [], []
        _, live_round, _ = choose_donors(beats, self.peer_id)
        self.records = trusted_records(recs, self.manifest.run_public_key, self.peer_id)
        local = self.store.newest(numel)
        local_round = local[0].round if local is not None else -1
        for rec in self.records:
            if rec.round <= max(live_round, local_round):
                break
            found = self._pull(rec, numel)
            if found is not None:
                return found
        if local is not None and local_round > live_round:
            state, info = local
            log.info(
                "resuming from our checkpoint of round %d (live peers hold round %d)", state.round, live_round
            )
            return Resumed(
                state=state, source="local checkpoint", position=info.position, samples=info.samples_seen
            )
        return None

    def _pull(self, rec: checkpoint_pb2.CheckpointRecord, numel: int) -> Resumed | None:
        holders = [
            r.peer_id for r in self.records if (r.round, r.params_hash) == (rec.round, rec.params_hash)
        ]
        coro = pull_state(self.loop.p2p, holders, self.manifest.run_id, numel, auth=self.auth)
        try:
            state, holder = self.loop.call(coro, PULL_TIMEOUT_S)
        except BarnraiseError as e:
            log.warning("checkpoint of round %d not pulled: %s", rec.round, e)
            return None
        if (state.round, state.params_hash()) != (rec.round, rec.params_hash):
            log.warning("checkpoint from %s refused: it does not match its record", holder[:12])
            return None
        log.info("resuming from the checkpoint of round %d held by %s", rec.round, holder[:12])
        return Resumed(state=state, source=holder, position=rules.position_of(rec), samples=rec.samples_seen)

    def floor(self) -> rules.DataPosition | None:
        """The newest place in the data any checkpoint we know records (local or trusted remote)."""
        local = rules.newest_info(self.store.root)
        best = (local.round, local.position) if local is not None else (-1, None)
        for rec in self.records[:1]:
            if rec.round > best[0]:
                best = (rec.round, rules.position_of(rec))
        return best[1]
