"""The peer's heartbeat: its live statistics, published to the DHT every few seconds.

The training thread updates ``PeerStats``; a background thread publishes it, so a slow DHT never
stalls compute. Heartbeats expire after ``HEARTBEAT_TTL_S``: a dead peer disappears by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from coordinator import __version__, records
from coordinator.signing import seal_heartbeat
from protos import heartbeat_pb2

log = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0


@dataclass
class PeerStats:
    """Everything a heartbeat reports; updated by the training thread."""

    device: str = ""
    device_memory_bytes: int = 0
    link: str = "direct"
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
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, **changes) -> None:
        with self.lock:
            for k, v in changes.items():
                setattr(self, k, v)

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
        while not self._stop.is_set():
            try:
                self.publish_now()
            except Exception as e:  # DHT hiccup: the next beat retries
                log.debug("heartbeat not published: %s", e)
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=6.0)
