"""The peer daemon: join the swarm, fetch and verify the run, then train round after round.

Each round is a wall-clock window of the swarm's clock: inner steps until the window closes, then
the pseudo-gradient (global params - local params) is averaged with the group, weighted by the
samples each member processed, and the outer Nesterov step is applied on the CPU so that every
member ends with bit-identical parameters. A round that fails leaves the local progress in place;
it is carried into the next round's update.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from coordinator import records
from coordinator.dhtnode import DHTOptions, start_dht
from coordinator.errors import BarnraiseError, PeerUnavailable
from coordinator.runclock import RoundClock
from coordinator.signing import verify_manifest
from peer.averager import Averager, RoundOutcome
from peer.coordinator_client import CoordinatorClient
from peer.device import pick_device
from peer.feed import ShardFeed
from peer.heartbeat import HeartbeatPublisher, PeerStats
from peer.matchmaking import plan_timing
from peer.model import build_model, count_params
from peer.p2ploop import P2PLoop
from peer.shards import ShardCache, ShardSourceRef
from peer.state import GlobalState, flat_params, load_flat
from peer.statesync import StateServer, choose_donors, download_state
from peer.trainer import InnerTrainer
from protos import heartbeat_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PeerConfig:
    initial_peers: tuple[str, ...]  # multiaddrs of any swarm member (usually the bootstrap)
    run_id: str = ""  # which run, if the swarm hosts several
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)  # DHT/P2P listen multiaddrs
    announce: tuple[str, ...] = ()  # public multiaddrs, if behind NAT with port forwarding
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "barnraise")
    identity: Path | None = None  # default: CACHE_DIR/peer.id (same file = same peer id)
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    threads: int = 0  # CPU threads; 0: all cores
    max_rounds: int = 0  # leave after this many rounds (0: run until stopped)
    slowdown: float = 1.0  # >1 throttles compute (heterogeneity benchmarks)
    tamper: bool = False  # start from perturbed parameters (tests of disagreement detection)
    join_timeout_s: float = 30.0  # finding the run in the DHT


class PeerDaemon:
    def __init__(self, cfg: PeerConfig):
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.stats = PeerStats()
        self.dht = self.loop = self.heartbeat = self.client = None

    # --- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        self.dht = start_dht(
            DHTOptions(
                initial_peers=cfg.initial_peers,
                listen=cfg.listen,
                announce=cfg.announce,
                identity=cfg.identity or cfg.cache_dir / "peer.id",
            )
        )
        self.peer_id = self.dht.peer_id.to_base58()
        rec = records.wait_for_run(self.dht, cfg.run_id or None, cfg.join_timeout_s)
        self.client = CoordinatorClient(rec.grpc_addrs)
        signed, genesis = self.client.manifest()
        self.manifest = verify_manifest(signed)
        if self.manifest.run_id != rec.run_id:
            raise PeerUnavailable(
                f"coordinator serves run {self.manifest.run_id}, the DHT announced {rec.run_id}"
            )
        self.clock = RoundClock(genesis=genesis, round_s=self.manifest.training.round_s)
        self.info = pick_device(cfg.device, cfg.threads)
        run_cache = cfg.cache_dir / self.manifest.run_id
        self.cache = ShardCache(run_cache / "shards")
        sources = [ShardSourceRef(name=f"coordinator {self.client.address}", fetch=self.client.fetch_shard)]
        self.feed = ShardFeed(self.manifest, self.cache, sources, self.peer_id)
        model = build_model(self.manifest.model, self.manifest.seed)
        self.state = GlobalState.initial(model)
        if cfg.tamper:
            self.state.params.add_(torch.randn_like(self.state.params) * 1e-3)
            load_flat(model, self.state.params)
        self.trainer = InnerTrainer(model, self.manifest.training, self.info, slowdown=cfg.slowdown)
        self.trainer.fit(self.feed.sample)
        t = self.manifest.training
        self.loop = P2PLoop(self.dht)
        self.averager = Averager(
            p2p=self.loop.p2p,
            dht=self.dht,
            run_id=self.manifest.run_id,
            peer_id=self.peer_id,
            codec=t.codec or "fp32",
            group_size=t.group_size or 32,
            topk_fraction=t.topk_fraction or 0.01,
        )
        self.state_server = StateServer(self.loop.p2p, self.manifest.run_id)
        self.loop.call(self.averager.register(), 10.0)
        self.loop.call(self.state_server.register(), 10.0)
        self.stats.update(
            device=self.info.description,
            device_memory_bytes=self.info.memory_bytes,
            batch_size=t.batch_size,
            micro_batch=self.trainer.micro_batch,
        )
        self._publish_state()
        self.heartbeat = HeartbeatPublisher(self.dht, self.peer_id, self.manifest.run_id, self.stats)
        self.heartbeat.start()
        if not cfg.tamper:
            self.sync_from_swarm()
        log.info(
            "peer %s joined run %s (%s, %d params, device %s)",
            self.peer_id,
            self.manifest.run_id,
            self.manifest.model.name,
            count_params(model),
            self.info.description,
        )

    def _publish_state(self) -> None:
        self.state_server.publish(self.state)
        self.stats.update(params_hash=self.state.params_hash(), hash_round=self.state.round)

    def sync_from_swarm(self, rebase: bool = False) -> bool:
        """Download the swarm's latest agreed state from a peer that holds it; True if we did."""
        self.stats.update(phase=heartbeat_pb2.PHASE_SYNCING)
        try:
            beats = records.read_heartbeats(self.dht, self.manifest.run_id, timeout_s=5.0)
        except BarnraiseError:
            return False
        phash, rnd, donors = choose_donors(beats, self.peer_id)
        if not donors or (phash == self.state.params_hash() and rnd == self.state.round):
            return False
        numel = self.state.params.numel()
        for donor in donors[:3]:
            try:
                new = self.loop.call(
                    download_state(self.loop.p2p, donor, self.manifest.run_id, numel, 60.0), 90.0
                )
            except BarnraiseError as e:
                log.warning("state download from %s failed: %s", donor[:12], e)
                continue
            local_delta = self.state.params - flat_params(self.trainer.model) if rebase else None
            self.state = new
            load_flat(self.trainer.model, new.params if local_delta is None else new.params - local_delta)
            self._publish_state()
            log.info("synced state of round %d (params %s) from %s", new.round, new.params_hash(), donor[:12])
            return True
        return False

    # --- the round loop -----------------------------------------------------------------------
    def run(self) -> None:
        t = self.manifest.training
        carried_samples = 0
        completed = 0
        while not self.stop_event.is_set():
            r = self.clock.round_at()
            end = self.clock.end(r)
            self.stats.update(round=r, phase=heartbeat_pb2.PHASE_TRAINING)
            window = self.trainer.train_until(end, self.feed.next_batch, self.stop_event.is_set)
            if self.stop_event.is_set():
                break
            carried_samples += window.samples
            if window.compute_s > 0:
                sps = window.samples / window.compute_s
                self.stats.update(
                    samples_per_s=sps,
                    loss=window.mean_loss,
                    samples_total=self.stats.samples_total + window.samples,
                )
            self.stats.update(phase=heartbeat_pb2.PHASE_AVERAGING)
            delta = self.state.params - flat_params(self.trainer.model)
            timing = plan_timing(end, t.round_s)
            outcome = self._average(r, delta, float(carried_samples), timing)
            if outcome.ok:
                self.state.outer_step(outcome.average, t.outer_lr, t.outer_momentum, r)
                load_flat(self.trainer.model, self.state.params)
                self._publish_state()
                carried_samples = 0
                completed += 1
                self.stats.update(rounds_joined=self.stats.rounds_joined + 1)
                log.info(
                    "round %d: loss %.3f, %.0f samples/s, averaged with %d peer(s) in %.2f s, params %s",
                    r,
                    window.mean_loss,
                    self.stats.samples_per_s,
                    len(outcome.members),
                    outcome.duration_s,
                    self.state.params_hash(),
                )
            else:
                self.stats.update(
                    rounds_missed=self.stats.rounds_missed + 1, last_exclusion=outcome.reason[:200]
                )
                log.warning(
                    "round %d: not applied (%s); local progress carried to the next round", r, outcome.reason
                )
                if outcome.stale_base:
                    self.sync_from_swarm(rebase=True)
            if self.cfg.max_rounds and completed >= self.cfg.max_rounds:
                log.info("completed %d rounds; leaving", completed)
                break

    def _average(self, r: int, delta: torch.Tensor, weight: float, timing) -> RoundOutcome:
        if not torch.isfinite(delta).all():
            return RoundOutcome(round=r, reason="local update is not finite; not sent")
        budget = timing.confirm_deadline - time.time() + 10.0
        try:
            out = self.loop.call(
                self.averager.average(
                    r,
                    delta,
                    weight,
                    self.state.params_hash(),
                    timing,
                    ttl_s=4 * self.manifest.training.round_s,
                ),
                max(5.0, budget),
            )
        except PeerUnavailable as e:
            out = RoundOutcome(round=r, reason=str(e))
        self.stats.update(bytes_sent=out.bytes_sent, bytes_received=out.bytes_received, codec_sent=out.codec)
        if out.offenders:
            log.warning(
                "round %d: misbehaving peers: %s",
                r,
                "; ".join(f"{p[:12]}: {why}" for p, why in out.offenders.items()),
            )
        if out.ok and not (out.average is not None and math.isfinite(float(out.average.abs().max()))):
            out.ok, out.reason = False, "average is not finite"
        return out

    # --- shutdown -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        for what, fn in (
            ("heartbeat", lambda: self.heartbeat and self.heartbeat.stop()),
            ("p2p", lambda: self.loop and self.loop.stop()),
            ("coordinator client", lambda: self.client and self.client.close()),
            ("dht", lambda: self.dht and self.dht.shutdown()),
        ):
            try:
                fn()
            except Exception as e:
                log.debug("closing %s: %s", what, e)
