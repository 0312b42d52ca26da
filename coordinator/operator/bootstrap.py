"""The bootstrap node: the swarm's entry point and the run's coordinator service.

It runs a hivemind DHT node with a persistent identity, serves the manifest and shards over gRPC
(with grpc.health.v1), announces that service in the DHT in a record sealed by the run key
(``RUN_DIR/run.key`` or ``--run-key FILE``) and keeps a compact per-round history.
Training never depends on it after a peer has joined: averaging and state sync are peer to peer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from barnraise.coordinator import __version__, checkpoints
from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.keys import fingerprint
from barnraise.coordinator.manifest import load_signed_manifest
from barnraise.coordinator.operator.service import CoordinatorServicer, serve
from barnraise.coordinator.records import find_runs, publish_run, read_heartbeats
from barnraise.coordinator.runclock import RoundClock
from barnraise.coordinator.signing import dht_validators, run_authority, verify_manifest
from barnraise.coordinator.versions import local_versions
from barnraise.protos import coordinator_pb2

log = logging.getLogger(__name__)

CLOCK_FILE = "clock.json"
PUBLISH_EVERY_S = 10.0


@dataclass(frozen=True, kw_only=True)
class BootstrapConfig:
    run_dir: Path
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/31337",)  # DHT multiaddrs
    announce: tuple[str, ...] = ()  # public multiaddrs, if behind NAT
    identity: Path | None = None  # default: RUN_DIR/bootstrap.id
    grpc: str = ""  # HOST:PORT; default: the DHT listen host, any port
    initial_peers: tuple[str, ...] = ()  # join an existing swarm
    metrics: str = ""  # [HOST:]PORT to serve Prometheus /metrics on; "": none
    run_key: Path | None = None  # the run key that seals the coordinator record; default RUN_DIR/run.key
    no_relay: bool = False  # True: NAT'd peers may not reserve a relay slot here (coordinator/dhtnode.py)


def grpc_listen_address(cfg: BootstrapConfig) -> str:
    if cfg.grpc:
        if ":" not in cfg.grpc:
            raise ConfigError(f"--grpc {cfg.grpc!r} must be HOST:PORT, e.g. 0.0.0.0:31338")
        return cfg.grpc
    host = "0.0.0.0"
    parts = cfg.listen[0].split("/") if cfg.listen else []
    if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
        host = parts[2] if parts[1] == "ip4" else f"[{parts[2]}]"
    return f"{host}:0"


def announced_grpc_addrs(bound: str, port: int, dht_maddrs: list[str]) -> list[str]:
    """host:port strings a peer can dial: the bound host, or every address the DHT is visible on."""
    host = bound.rsplit(":", 1)[0]
    if host not in ("0.0.0.0", "[::]", ""):
        return [f"{host}:{port}"]
    hosts = []
    for m in dht_maddrs:
        parts = m.split("/")
        if len(parts) > 2 and parts[1] == "ip4" and parts[2] not in hosts:
            hosts.append(parts[2])
    if "127.0.0.1" not in hosts:
        hosts.append("127.0.0.1")
    return [f"{h}:{port}" for h in hosts]


class BootstrapNode:
    def __init__(self, cfg: BootstrapConfig):
        self.cfg = cfg
        self.signed = load_signed_manifest(cfg.run_dir)
        self.manifest = verify_manifest(self.signed)
        self.run_key = run_authority(cfg.run_dir, self.manifest, cfg.run_key)  # registered for sealing
        self.dht = None
        self.server = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.report: dict | None = None  # the latest health report (history loop), for /metrics
        self.metrics = None

    def start(self) -> None:
        identity = self.cfg.identity or self.cfg.run_dir / "bootstrap.id"
        self.dht = start_dht(
            DHTOptions(
                initial_peers=self.cfg.initial_peers,
                listen=self.cfg.listen,
                announce=self.cfg.announce,
                identity=identity,
                relay="" if self.cfg.no_relay else "serve",
                # like every peer's node: refuse records whose owner did not seal them, or a
                # forgery stored on the bootstrap would be served to every reader that asks it
                extra={"record_validators": dht_validators()},
            )
        )
        self.genesis = self._genesis()
        self.clock = RoundClock(genesis=self.genesis, round_s=self.manifest.training.round_s)
        self.servicer = CoordinatorServicer(self.cfg.run_dir, self.signed, self.manifest, self.genesis)
        bound = grpc_listen_address(self.cfg)
        self.server, port = serve(self.servicer, bound)
        self.maddrs = visible_maddrs(self.dht)
        self.grpc_addrs = announced_grpc_addrs(bound, port, self.maddrs)
        self.record = coordinator_pb2.CoordinatorRecord(
            run_id=self.manifest.run_id,
            grpc_addrs=self.grpc_addrs,
            genesis=self.genesis,
            round_s=self.manifest.training.round_s,
            peer_id=self.dht.peer_id.to_base58(),
            version=__version__,
        )
        software = local_versions()
        self.record.python_version, self.record.torch_version = software.python, software.torch
        self.record.hivemind_version = software.hivemind
        self._publish()
        if self.cfg.metrics:
            from barnraise.coordinator.metrics import serve_metrics

            self.metrics = serve_metrics(self.cfg.metrics, lambda: self.report)
        for target in (self._publish_loop, self._history_loop):
            t = threading.Thread(target=target, daemon=True, name=target.__name__)
            t.start()
            self._threads.append(t)
        log.info("run %s: coordinator gRPC on %s", self.manifest.run_id, ", ".join(self.grpc_addrs))

    def _genesis(self) -> float:
        """Round 0's start: kept in RUN_DIR/clock.json; a second entry point adopts the swarm's. Rounds
        are wall-clock windows, so after a full stop the round numbers go on from the clock, past
        every checkpoint's round."""
        path = self.cfg.run_dir / CLOCK_FILE
        if self.cfg.initial_peers:
            for rec in find_runs(self.dht, run_key_fingerprint=fingerprint(self.manifest.run_public_key)):
                if rec.run_id == self.manifest.run_id:
                    return rec.genesis
        if path.exists():
            try:
                return float(json.loads(path.read_text())["genesis"])
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{path} is damaged ({e}): delete it to restart the round clock") from e
        genesis = time.time()
        newest = checkpoints.newest_info(self.cfg.run_dir / "checkpoints")
        if newest is not None:  # a run moved here without its clock: go on after its newest checkpoint
            genesis -= (newest.round + 1) * self.manifest.training.round_s
        write_atomic(path, json.dumps({"genesis": genesis}).encode())
        return genesis

    def _publish(self) -> None:
        self.record.timestamp = time.time()
        if not publish_run(self.dht, self.record, self.manifest.run_public_key):
            log.debug("coordinator record not stored (no other DHT node yet?)")

    def _publish_loop(self) -> None:
        while not self._stop.wait(PUBLISH_EVERY_S):
            try:
                self._publish()
            except Exception as e:  # the DHT may be briefly unavailable; try again next period
                log.warning("could not publish coordinator record: %s", e)

    def _history_loop(self) -> None:
        """A few times per round, build the health report (for /metrics) and keep the round's
        summary (loss, samples/s, live peers) in the history the coordinator serves."""
        from barnraise.coordinator.health import RunInfo, build_report

        period = min(self.manifest.training.round_s, 5.0)
        run = RunInfo.from_record(self.record, group_size=self.manifest.training.group_size)
        while not self._stop.wait(period):
            rejected: list[str] = []
            try:
                beats = read_heartbeats(self.dht, self.manifest.run_id, rejected=rejected)
            except Exception as e:
                log.debug("history: heartbeat read failed: %s", e)
                continue
            self.report = report = build_report(run, beats, time.time(), rejected)
            totals = report["totals"]
            if not totals["peers_alive"]:
                continue
            self.servicer.record_round(
                coordinator_pb2.RoundSummary(
                    round=report["round"],
                    loss=totals["mean_loss"] or 0.0,
                    samples_per_s=totals["samples_per_s"],
                    peers=totals["peers_alive"],
                    timestamp=report["generated_at"],
                )
            )

    def initial_peers_hint(self) -> str:
        return " ".join(self.maddrs[:1] if self.maddrs else [])

    def stop(self) -> None:
        self._stop.set()
        if self.metrics is not None:
            self.metrics.stop()
        if self.server is not None:
            self.server.stop(grace=1.0)
        if self.dht is not None:
            self.dht.shutdown()
