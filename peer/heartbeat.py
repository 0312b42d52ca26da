"""The peer's heartbeat: its live statistics, published to the DHT every few seconds.

The training thread updates ``PeerStats``; a background thread publishes it, so a slow DHT never
stalls compute. Heartbeats expire after ``HEARTBEAT_TTL_S``: a dead peer disappears by itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from barnraise.coordinator import __version__, records
from barnraise.coordinator.signing import seal_heartbeat
from barnraise.protos import heartbeat_pb2

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
RECENT_HASHES = 4  # states listed in a heartbeat, so status can compare peers a round apart
RECENT_LOSSES = 8  # per-round losses listed in a heartbeat, for the swarm's loss trend
MAX_CAUGHT = 16  # lying reducers a heartbeat names
BEACON_EVERY = 5  # heartbeats between two run beacons (one every 10 s, they live 30 s)


@dataclass
class PeerStats:
    """Everything a heartbeat reports; updated by the training thread."""

    device: str = ""
    device_memory_bytes: int = 0
    link: str = "unknown"  # how others reach us: public, relayed, client (peer/net/reachability.py)
    samples_per_s: float = 0.0
    round: int = 0
    phase: int = heartbeat_pb2.PHASE_IDLE
    loss: float = 0.0
    params_hash: str = ""
    hash_round: int = -1
    bytes_sent: int = 0
    bytes_received: int = 0
    rounds_joined: int = 0
    rounds_missed: int = 0
    last_exclusion: str = ""
    samples_total: int = 0
    codec_sent: str = ""
    batch_size: int = 0
    micro_batch: int = 0
    compute_fraction: float = 0.0
    offenders: list[str] = field(default_factory=list)
    codec_received: str = ""
    round_wall_s: float = 0.0
    init_hash: str = ""  # hash of the seeded initial state, before anything touched it
    recent_hashes: deque = field(default_factory=lambda: deque(maxlen=RECENT_HASHES))  # (round, hash)
    recent_losses: deque = field(default_factory=lambda: deque(maxlen=RECENT_LOSSES))
    exclusion_round: int = 0
    rounds_late: int = 0
    late_round: int = 0
    genesis: float = 0.0  # the run's clock (unix s) and round length (s), for the run beacon
    round_s: float = 0.0
    group_size: int = 0
    caught_reducers: dict = field(default_factory=dict)  # reducer -> what it did, for the rest of the run
    dht_records: int = 0  # records its DHT node stores (a leak shows as growth over hours)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, **changes) -> None:
        """Set fields. A new state, a new loss or an exclusion also lands in the short histories a
        heartbeat carries, so the training loop needs no extra book-keeping."""
        with self.lock:
            for k, v in changes.items():
                setattr(self, k, v)
            if "params_hash" in changes:
                entry = (int(self.hash_round), str(self.params_hash))
                if not self.recent_hashes or self.recent_hashes[-1] != entry:
                    self.recent_hashes.append(entry)
            if "loss" in changes and math.isfinite(self.loss):
                self.recent_losses.append(float(self.loss))
            if "last_exclusion" in changes and "exclusion_round" not in changes:
                self.exclusion_round = self.round

    def note_window(self, window, wall_s: float) -> None:
        """A closed compute window (the trainer's ``WindowResult``) that took ``wall_s`` since the last."""
        changes = {"compute_fraction": min(1.0, window.compute_s / wall_s), "round_wall_s": wall_s}
        if window.compute_s > 0:
            changes.update(
                samples_per_s=window.samples / window.compute_s,
                loss=window.mean_loss,
                samples_total=self.samples_total + window.samples,
            )
        self.update(**changes)

    def note_exchange(self, out) -> None:
        """What a round's exchange (``RoundOutcome``) leaves in the heartbeat: bytes, codecs,
        misbehaving peers (also logged)."""
        self.update(
            bytes_sent=out.bytes_sent,
            bytes_received=out.bytes_received,
            codec_sent=out.codec,
            codec_received=out.codec if out.ok else "",
            offenders=[f"{peer}: {why}"[:200] for peer, why in out.offenders.items()],
        )
        with self.lock:
            for peer, why in getattr(out, "caught", {}).items():
                if len(self.caught_reducers) < MAX_CAUGHT:
                    self.caught_reducers.setdefault(peer, why)
        if out.offenders:
            log.warning(
                "round %d: misbehaving peers: %s",
                out.round,
                "; ".join(f"{peer[:12]}: {why}" for peer, why in out.offenders.items()),
            )

    def watch_deadline(self, round_no: int, future, deadline: float) -> None:
        """Count ``round_no`` as late if its averaging ``future`` is not done by ``deadline`` (unix s);
        a future cancelled after a timed-out wait counts too."""

        def done(_future) -> None:
            if time.time() > deadline:
                with self.lock:
                    self.rounds_late += 1
                    self.late_round = round_no

        future.add_done_callback(done)

    def to_proto(self, peer_id: str, run_id: str) -> heartbeat_pb2.Heartbeat:
        with self.lock:
            return heartbeat_pb2.Heartbeat(
                peer_id=peer_id,
                version=__version__,
                run_id=run_id,
                device=self.device,
                device_memory_bytes=self.device_memory_bytes,
                link=self.link,
                samples_per_s=self.samples_per_s,
                round=self.round,
                phase=self.phase,
                loss=self.loss if self.loss == self.loss else 0.0,
                params_hash=self.params_hash,
                hash_round=self.hash_round,
                bytes_sent=self.bytes_sent,
                bytes_received=self.bytes_received,
                rounds_joined=self.rounds_joined,
                rounds_missed=self.rounds_missed,
                last_exclusion=self.last_exclusion,
                timestamp=time.time(),
                samples_total=self.samples_total,
                codec_sent=self.codec_sent,
                batch_size=self.batch_size,
                micro_batch=self.micro_batch,
                compute_fraction=self.compute_fraction,
                offenders=self.offenders,
                codec_received=self.codec_received,
                round_wall_s=self.round_wall_s,
                init_hash=self.init_hash,
                recent_hashes=[
                    heartbeat_pb2.RoundHash(round=r, params_hash=h) for r, h in self.recent_hashes
                ],
                recent_losses=list(self.recent_losses),
                exclusion_round=self.exclusion_round,
                rounds_late=self.rounds_late,
                late_round=self.late_round,
                group_size=self.group_size,
                caught_reducers=[f"{peer}: {why}"[:200] for peer, why in self.caught_reducers.items()],
                dht_records_stored=self.dht_records,
            )

    def beacon(self, run_id: str) -> heartbeat_pb2.RunBeacon | None:
        """The run beacon to publish, once the daemon has set the run's clock."""
        with self.lock:
            if self.round_s <= 0:
                return None
            return heartbeat_pb2.RunBeacon(
                run_id=run_id,
                genesis=self.genesis,
                round_s=self.round_s,
                group_size=self.group_size,
                timestamp=time.time(),
            )


async def stored_records(dht, node) -> int:
    """Runs in the DHT process: records its node stores, each subkey of a dictionary value counted."""
    from hivemind.dht.storage import DictionaryDHTValue

    return sum(
        len(item.value) if isinstance(item.value, DictionaryDHTValue) else 1
        for _key, item in node.protocol.storage.items()
    )


class HeartbeatPublisher:
    def __init__(self, dht, peer_id: str, run_id: str, stats: PeerStats, every_s: float = HEARTBEAT_EVERY_S):
        self.dht, self.peer_id, self.run_id, self.stats, self.every_s = dht, peer_id, run_id, stats, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="heartbeat")

    def start(self) -> None:
        self._thread.start()

    def publish_now(self) -> None:
        hb = self.stats.to_proto(self.peer_id, self.run_id)
        records.store(
            self.dht,
            records.heartbeats_key(self.run_id),
            self.peer_id,
            seal_heartbeat(hb),
            records.HEARTBEAT_TTL_S,
            timeout_s=5.0,
        )

    def _loop(self) -> None:
        beats = 0
        while not self._stop.is_set():
            try:
                self.publish_now()
                if beats % BEACON_EVERY == 0 and (beacon := self.stats.beacon(self.run_id)) is not None:
                    records.publish_beacon(self.dht, self.peer_id, beacon)
                if beats % BEACON_EVERY == 1:
                    counted = self.dht.run_coroutine(stored_records, return_future=True)
                    self.stats.update(dht_records=counted.result(timeout=5.0))
            except Exception as e:  # DHT hiccup: the next beat retries
                log.debug("heartbeat not published: %s", e)
            beats += 1
            self._stop.wait(self.every_s)

    def stop(self, wait: bool = True) -> None:
        """Stop publishing; ``wait=False`` when the DHT is gone and a beat in flight would only time out."""
        self._stop.set()
        if wait:
            self._thread.join(timeout=6.0)
