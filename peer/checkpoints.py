"""A peer's checkpoints: its own every N rounds, announced and served, and resuming from the newest
checkpoint at start-up when no live peer holds a newer state (``peer/sync/resume.py``).

The daemon calls three things: ``resume`` once before its first round, ``offer`` after each applied
round, ``close`` when it leaves.
"""

from __future__ import annotations

import logging

from barnraise.coordinator import checkpoints as rules
from barnraise.peer.data.feed import ShardFeed
from barnraise.peer.sync.catchup import CatchUp
from barnraise.peer.sync.checkpoint import param_layout
from barnraise.peer.sync.checkpointer import CheckpointPolicy, CheckpointStore, LocalCheckpoints
from barnraise.peer.sync.resume import ResumePoint
from barnraise.peer.sync.state import GlobalState
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)


class PeerCheckpoints:
    """Reaches the swarm the way the peer's catch-up does (its P2P loop, DHT, peer id, membership)."""

    def __init__(self, cfg, manifest: manifest_pb2.RunManifest, signed, catchup: CatchUp, model):
        loop, dht, peer_id, auth = catchup.loop, catchup.dht, catchup.peer_id, catchup.auth
        every = cfg.checkpoint_every or rules.default_every(manifest.training.round_s)
        policy = CheckpointPolicy(every=every, keep=cfg.keep_checkpoints)
        self.store = CheckpointStore(cfg.cache_dir / manifest.run_id / "checkpoints", manifest, policy)
        self.store.keep_manifest(signed)
        self.local = LocalCheckpoints(self.store, param_layout(model), dht)
        self.point = ResumePoint(
            loop=loop, dht=dht, manifest=manifest, peer_id=peer_id, auth=auth, store=self.store
        )
        self.store.announce(dht, peer_id)

    def resume(self, feed: ShardFeed, numel: int) -> tuple[GlobalState, str] | None:
        """(the checkpoint's state, where it came from) if the run goes on from a checkpoint; the
        feed starts no earlier in the data than the newest checkpoint we know records, either way."""
        found = self.point.find(numel)
        position = found.position if found is not None else self.point.floor()
        if position is not None:
            feed.restore(position)
        if found is None:
            return None
        self.local.last_round, self.local.samples = found.state.round, found.samples
        return found.state, found.source

    def offer(self, state: GlobalState, loss: float, samples: float) -> None:
        self.local.offer(state, loss, samples)

    def close(self) -> None:
        self.local.close()
