"""Keeping checkpoints while a run trains: when one is due, writing it off the training thread,
and announcing it in the DHT so a run whose peers all stopped can resume from it.

Two kinds of node keep them. Every peer saves the state it applied every N rounds in its own cache
(``LocalCheckpoints``), so no single machine is needed to resume; the operator's bootstrap pulls
the swarm's agreed state and saves it in ``RUN_DIR/checkpoints`` (``barnraise.peer.sync.puller``).
Both announce their newest checkpoint with a ``CheckpointRecord`` and serve it over state sync.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import BarnraiseError
from barnraise.peer.sync.checkpoint import newest_valid, save_checkpoint
from barnraise.peer.sync.state import GlobalState
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 20.0  # a holder republishes its record (which lives ``rules.RECORD_TTL_S``)
MANIFEST_COPY = "manifest.pb"  # the signed manifest beside a peer's checkpoints (export, sample)


@dataclass(frozen=True, kw_only=True)
class CheckpointPolicy:
    """When to save and how many to keep. Checkpoints fall on the same rounds on every node."""

    every: int  # rounds between checkpoints: saved when round + 1 reaches a multiple of it
    keep: int = rules.DEFAULT_KEEP  # newest checkpoints kept per directory

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"checkpoints every {self.every} rounds: must be 1 or more")
        if self.keep < 1:
            raise ValueError(f"keeping {self.keep} checkpoints: must be 1 or more")

    def due(self, round_no: int, last: int) -> bool:
        """A checkpoint of ``round_no`` is due, the last one being of round ``last`` (-1: none)."""
        return round_no > last and (round_no + 1) // self.every > (last + 1) // self.every


class CheckpointStore:
    """A directory of checkpoints of one run, and the DHT record announcing its newest one."""

    def __init__(self, root: Path, manifest: manifest_pb2.RunManifest, policy: CheckpointPolicy):
        self.root = root
        self.manifest = manifest
        self.policy = policy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def newest(self, numel: int | None = None) -> tuple[GlobalState, rules.CheckpointInfo] | None:
        found = newest_valid(self.root, numel)
        return None if found is None else found[:2]

    def save(self, state: GlobalState, layout, *, loss: float | None, samples: int, position) -> Path:
        info = rules.CheckpointInfo(
            run_id=self.manifest.run_id,
            round=state.round,
            params_hash="",
            samples_seen=int(samples),
            loss=loss if loss is not None and math.isfinite(loss) else None,
            position=position,
            saved_at=time.time(),
            model=self.manifest.model.name,
            files={},
        )
        t0 = time.monotonic()
        path = save_checkpoint(self.root, state, layout, info, self.policy.keep)
        log.info("checkpoint of round %d saved in %s (%.2f s)", state.round, path, time.monotonic() - t0)
        return path

    def keep_manifest(self, signed: manifest_pb2.SignedManifest) -> None:
        """A copy of the signed manifest beside the checkpoints, so they can be read without a swarm."""
        path = self.root / MANIFEST_COPY
        data = signed.SerializeToString()
        if not path.exists() or path.read_bytes() != data:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode=0o644)

    def announce(self, dht, peer_id: str, subkey: str = "") -> None:
        """Republish our newest checkpoint's record (under ``subkey``, default our peer id) in the
        background until ``stop``."""

        def loop() -> None:
            while True:
                try:
                    info = rules.newest_info(self.root)
                    if info is not None:
                        rec = rules.to_record(info, peer_id, len(self.manifest.shards))
                        rules.publish(dht, rec, subkey)
                except BarnraiseError as e:
                    log.debug("checkpoint record not published: %s", e)
                if self._stop.wait(PUBLISH_EVERY_S):
                    return

        self._thread = threading.Thread(target=loop, daemon=True, name="checkpoint-record")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


class LocalCheckpoints:
    """A peer's own checkpoints (``CACHE_DIR/<run>/checkpoints``), written off the training thread.

    States never change once made, so the writer thread needs no copy and no lock on them."""

    def __init__(self, store: CheckpointStore, layout, dht, *, last_round: int = -1, samples: int = 0):
        self.store, self.layout, self.dht = store, layout, dht
        self.last_round = last_round  # round of the newest checkpoint written or resumed from
        self.samples = samples  # samples the run had trained, as this peer counts them
        self._writing: threading.Thread | None = None

    def offer(self, state: GlobalState, loss: float, samples: float) -> None:
        """Called by the training thread after each applied round (``samples``: the group's weight)."""
        self.samples += int(samples)
        if not self.store.policy.due(state.round, self.last_round):
            return
        if self._writing is not None and self._writing.is_alive():
            log.info("checkpoint of round %d skipped: the previous one is still being written", state.round)
            return
        self.last_round = state.round
        samples_now = self.samples
        self._writing = threading.Thread(
            target=self._write, args=(state, loss, samples_now), daemon=True, name="checkpoint-writer"
        )
        self._writing.start()

    def _write(self, state: GlobalState, loss: float, samples: int) -> None:
        try:
            position = rules.read_position(self.dht, self.store.manifest)
        except BarnraiseError as e:
            log.info("data position unreadable (%s); checkpoint saved without it", e)
            position = rules.DataPosition()
        try:
            self.store.save(state, self.layout, loss=loss, samples=samples, position=position)
        except (OSError, BarnraiseError) as e:
            log.warning("checkpoint of round %d not written: %s", state.round, e)

    def close(self, timeout_s: float = 10.0) -> None:
        """Let a write in progress finish (it is atomic either way), stop announcing."""
        if self._writing is not None:
            self._writing.join(timeout_s)
        self.store.stop()
