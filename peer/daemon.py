"""The peer daemon: join the swarm, fetch and verify the run, then train round after round.

Each round is a wall-clock window of the swarm's clock: inner steps until the window closes, then
the pseudo-gradient (global params - local params) is averaged with the group, weighted by the
samples each member processed, and the outer Nesterov step is applied on the CPU so that every
member ends with bit-identical parameters. A round that fails leaves the local progress in place;
it is carried into the next round's update.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from barnraise.coordinator import records
from barnraise.coordinator.dhtnode import DHTOptions, start_dht
from barnraise.coordinator.errors import BarnraiseError, PeerUnavailable
from barnraise.coordinator.manifest import DEFAULT_AGGREGATOR
from barnraise.coordinator.runclock import RoundClock
from barnraise.coordinator.signing import verify_manifest
from barnraise.peer.attacks import Attacker
from barnraise.peer.averaging.averager import Averager, RoundOutcome
from barnraise.peer.averaging.matchmaking import RoundTiming, plan_timing
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.data.feed import ShardFeed, ShardOptions
from barnraise.peer.data.shards import ShardSourceRef
from barnraise.peer.heartbeat import HeartbeatPublisher, PeerStats
from barnraise.peer.net.auth import PeerAuth, dht_extra, open_identity
from barnraise.peer.net.coordinator_client import CoordinatorClient
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync.statesync import StateServer, choose_donors, download_state, sync_target
from barnraise.peer.training.device import pick_device
from barnraise.peer.training.model import build_model, count_params
from barnraise.peer.training.state import GlobalState, all_finite, flat_params, load_flat
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import heartbeat_pb2

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
    codec: str = ""  # ask groups for a smaller update codec than the run's (slow uplink)
    bandwidth_mbit: float = 0.0  # declared upload bandwidth, Mbit/s: parts reduced follow it (0 = unknown)
    fault: str = ""  # protocol fault to inject when averaging (tests): nan, shape, oversize, stall
    shards: ShardOptions = field(default_factory=ShardOptions)  # leases, shard cache budget, serving
    token: Path | None = None  # membership token file (closed runs)
    run_key_fingerprint: str = ""  # the run key to trust; "" = trust on first use (CACHE_DIR/known_runs.json)
    attack: str = ""  # tests and benchmarks only: behave as a Byzantine peer (peer/attacks.py)


@dataclass
class _Pending:
    """An averaging round launched on the P2P loop, not yet applied."""

    round: int
    future: concurrent.futures.Future  # -> RoundOutcome
    snapshot: torch.Tensor  # live params when the update was taken
    weight: float  # samples the update carries
    timing: RoundTiming


class PeerDaemon:
    def __init__(self, cfg: PeerConfig):
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.stats = PeerStats()
        self.dht = self.loop = self.heartbeat = self.client = self.feed = None
        self.auth = self.identity_lock = None
        self._sync: concurrent.futures.Future | None = None  # a state download running on the P2P loop

    # --- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        identity = cfg.identity or cfg.cache_dir / "peer.id"
        self.identity, self.identity_lock = open_identity(identity, default_location=cfg.identity is None)
        self.dht = start_dht(
            DHTOptions(
                initial_peers=cfg.initial_peers,
                listen=cfg.listen,
                announce=cfg.announce,
                identity=identity,
                extra=dht_extra(),
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
        self.auth = PeerAuth.join(
            self.manifest,
            self.identity,
            cache_dir=cfg.cache_dir,
            token_file=cfg.token,
            run_key_fingerprint=cfg.run_key_fingerprint,
        )
        self.auth.attach_to_client(self.client)
        self.auth.start(self.dht)
        self.attack = Attacker(cfg.attack) if cfg.attack else None
        self.clock = RoundClock(genesis=genesis, round_s=self.manifest.training.round_s)
        self.info = pick_device(cfg.device, cfg.threads)
        run_cache = cfg.cache_dir / self.manifest.run_id
        self.loop = P2PLoop(self.dht)
        sources = [ShardSourceRef(name=f"coordinator {self.client.address}", fetch=self.client.fetch_shard)]
        self.feed = ShardFeed.open(
            dht=self.dht,
            loop=self.loop,
            manifest=self.manifest,
            peer_id=self.peer_id,
            cache_dir=run_cache,
            sources=sources,
            options=cfg.shards,
            auth=self.auth,
        )
        self.cache = self.feed.cache
        model = build_model(self.manifest.model, self.manifest.seed)
        self.state = GlobalState.initial(model)
        self.stats.update(
            init_hash=self.state.params_hash(),
            genesis=genesis,
            round_s=self.manifest.training.round_s,
            group_size=self.manifest.training.group_size or 32,
        )
        if cfg.tamper:
            self.state = GlobalState.initial(model)  # a fresh state: no cached hash
            self.state.params.add_(torch.randn_like(self.state.params) * 1e-3)
            load_flat(model, self.state.params)
        self.trainer = InnerTrainer(model, self.manifest.training, self.info, slowdown=cfg.slowdown)
        self.trainer.fit(self.feed.sample)
        t = self.manifest.training
        self.averager = Averager(
            p2p=self.loop.p2p,
            dht=self.dht,
            run_id=self.manifest.run_id,
            peer_id=self.peer_id,
            codec=t.codec or "fp32",
            group_size=t.group_size or 32,
            topk_fraction=t.topk_fraction or 0.01,
            ask_codec=cfg.codec,
            bandwidth_bps=cfg.bandwidth_mbit * 1e6,
            fault=cfg.fault,
            auth=self.auth,
            robust=RobustConfig(aggregator=t.aggregator or DEFAULT_AGGREGATOR),
        )
        self.state_server = StateServer(
            self.loop.p2p, self.manifest.run_id, t.outer_lr, t.outer_momentum, auth=self.auth
        )
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

    def sync_from_swarm(self) -> bool:
        """Start from the newest state a donor has at hand, and fetch the state the next round starts
        from in the background while training (waiting for it would idle the device for up to a
        round); True if we adopted a state now."""
        self.stats.update(phase=heartbeat_pb2.PHASE_SYNCING)
        try:
            found = self.loop.call(self._fetch_state(wait=False), 200.0)
        except BarnraiseError as e:
            log.warning("state sync failed: %s", e)
            found = None
        if found is not None:
            self._adopt(*found, rebase=False)
        self._sync = self.loop.submit(self._fetch_state())
        return found is not None

    async def _fetch_state(self, wait: bool = True) -> tuple[GlobalState, str] | None:
        """On the P2P loop: (the state the swarm's next round starts from, its donor), or None if we
        hold it already or no donor has it. ``wait=False``: the newest state a donor has at hand."""
        run_id, me = self.manifest.run_id, self.peer_id
        try:
            beats = await asyncio.get_running_loop().run_in_executor(
                None, lambda: records.read_heartbeats(self.dht, run_id, timeout_s=5.0, admit=self.auth.admits)
            )
        except BarnraiseError:
            return None
        phash, rnd, donors = choose_donors(beats, me)
        numel = self.state.params.numel()
        min_round, wait_s = sync_target(self.clock, time.time(), numel, self.cfg.bandwidth_mbit)
        forked = rnd >= self.state.round and phash != self.state.params_hash()  # the majority moved elsewhere
        if not donors or (self.state.round >= min_round and not forked):
            return None
        for donor in donors[:3]:
            try:
                state = await download_state(
                    self.loop.p2p,
                    donor,
                    run_id,
                    numel,
                    60.0,
                    auth=self.auth,
                    min_round=min_round,
                    wait_s=wait_s if wait else 0.0,
                )
            except BarnraiseError as e:
                log.warning("state download from %s failed: %s", donor[:12], e)
                continue
            if state.round < self.state.round:
                log.info(
                    "donor %s served round %d, older than ours (%d)",
                    donor[:12],
                    state.round,
                    self.state.round,
                )
                continue
            return state, donor
        return None

    def _adopt(self, new: GlobalState, donor: str, rebase: bool) -> None:
        """Take ``new`` as our global state; with ``rebase`` the live params keep their progress."""
        local_delta = self.state.params - flat_params(self.trainer.model) if rebase else None
        self.state = new
        load_flat(self.trainer.model, new.params if local_delta is None else new.params - local_delta)
        self._publish_state()
        log.info("synced state of round %d (params %s) from %s", new.round, new.params_hash(), donor[:12])

    def _finish_sync(self) -> bool:
        """Adopt a background sync's state if it has arrived; True while one is still running."""
        if self._sync is None:
            return False
        if not self._sync.done():
            return True
        try:
            found = self._sync.result()
        except Exception as e:  # a failed download: the next stale round starts another
            log.warning("state sync failed: %s", e)
            found = None
        self._sync = None
        if found is not None and found[0].round > self.state.round:  # we may have averaged our way there
            self._adopt(*found, rebase=True)
        return False

    # --- the round loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Train window after window; average each window's update with delay 0 or 1 round.

        With delay 1 the averaging of round r runs on the P2P loop while round r+1 computes, and
        its result is applied at the end of r+1: the global params move by the outer step and the
        live params keep the progress made since the update was taken (a one-round-delayed outer
        update), so a slow link does not idle the device.
        """
        t = self.manifest.training
        carried = 0.0  # samples in the live params that no applied average has taken yet
        pending: _Pending | None = None
        completed = 0
        last_end = time.time()
        try:
            while not self.stop_event.is_set():
                r = self.clock.round_at()
                end = self.clock.end(r)
                self.stats.update(round=r, phase=heartbeat_pb2.PHASE_TRAINING)
                window = self.trainer.train_until(end, self.feed.next_batch, self.stop_event.is_set)
                if self.stop_event.is_set():
                    break
                carried += window.samples
                if pending is not None:
                    applied, carried = self._apply(pending, carried)
                    completed += applied
                    pending = None
                if self._finish_sync() and self.state.round < r - 1:  # our base is stale and the new one is
                    now = time.time()  # on its way: a round with the old base would only be refused
                    self._report(r, window, max(1e-9, now - last_end))
                    last_end = now
                    continue
                live = flat_params(self.trainer.model)
                budget = max(2.0, (0.5 if t.round_delay == 0 else 0.7) * t.round_s)
                timing = plan_timing(end, t.round_s, reduce_budget_s=budget)
                pending = self._launch(r, live, carried, timing)
                if t.round_delay == 0:
                    applied, carried = self._apply(pending, carried)
                    completed += applied
                    pending = None
                now = time.time()
                wall = max(1e-9, now - last_end)
                last_end = now
                self._report(r, window, wall)
                if self.cfg.max_rounds and completed >= self.cfg.max_rounds:
                    log.info("completed %d rounds; leaving", completed)
                    break
        finally:
            if pending is not None:
                pending.future.cancel()
            if self._sync is not None:
                self._sync.cancel()

    def _report(self, r: int, window, wall_s: float) -> None:
        changes = {"compute_fraction": min(1.0, window.compute_s / wall_s), "round_wall_s": wall_s}
        if window.compute_s > 0:
            changes.update(
                samples_per_s=window.samples / window.compute_s,
                loss=window.mean_loss,
                samples_total=self.stats.samples_total + window.samples,
            )
        self.stats.update(**changes)
        log.info(
            "round %d: loss %.3f, %.0f samples/s, compute %.2f s of %.2f s",
            r,
            window.mean_loss,
            self.stats.samples_per_s,
            window.compute_s,
            wall_s,
        )

    def _launch(self, r: int, live: torch.Tensor, weight: float, timing: RoundTiming) -> _Pending:
        """Start averaging the update (global - live params) on the P2P loop."""
        snapshot, delta = live, self.state.params - live
        if not all_finite(delta):
            fut: concurrent.futures.Future = concurrent.futures.Future()
            fut.set_result(RoundOutcome(round=r, reason="local update is not finite; not sent"))
        else:
            if self.attack is not None:  # tests and benchmarks only: send what a Byzantine peer would
                delta, weight = self.attack.forge(r, delta, weight, base=self.state.params)
            fut = self.loop.submit(
                self.averager.average(
                    r,
                    delta,
                    weight,
                    self.state.params_hash(),
                    timing,
                    ttl_s=4 * self.manifest.training.round_s,
                    base_round=self.state.round,
                )
            )
            self.state_server.track(r, fut, self.state.params_hash())
        self.stats.watch_deadline(r, fut, timing.confirm_deadline)
        return _Pending(round=r, future=fut, snapshot=snapshot, weight=weight, timing=timing)

    def _apply(self, p: _Pending, carried: float) -> tuple[int, float]:
        """Wait (bounded) for a launched round and apply it; returns (1 if applied, samples still carried)."""
        t = self.manifest.training
        self.stats.update(phase=heartbeat_pb2.PHASE_AVERAGING)
        try:
            out = p.future.result(timeout=max(1.0, p.timing.confirm_deadline - time.time() + 10.0))
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError) as e:
            p.future.cancel()
            out = RoundOutcome(round=p.round, reason=f"averaging did not finish in time ({type(e).__name__})")
        self.stats.update(
            bytes_sent=out.bytes_sent,
            bytes_received=out.bytes_received,
            codec_sent=out.codec,
            codec_received=out.codec if out.ok else "",
            offenders=[f"{peer}: {why}"[:200] for peer, why in out.offenders.items()],
        )
        if out.offenders:
            log.warning(
                "round %d: misbehaving peers: %s",
                p.round,
                "; ".join(f"{peer[:12]}: {why}" for peer, why in out.offenders.items()),
            )
        if out.ok and out.average is not None and all_finite(out.average):
            local_progress = flat_params(self.trainer.model) - p.snapshot
            self.state.outer_step(out.average, t.outer_lr, t.outer_momentum, p.round)
            load_flat(self.trainer.model, self.state.params + local_progress)
            self._publish_state()
            self.stats.update(rounds_joined=self.stats.rounds_joined + 1)
            log.info(
                "round %d: averaged with %d peer(s) in %.2f s, params %s",
                p.round,
                len(out.members),
                out.duration_s,
                self.state.params_hash(),
            )
            return 1, max(0.0, carried - p.weight)
        self.stats.update(rounds_missed=self.stats.rounds_missed + 1, last_exclusion=out.reason[:200])
        log.warning(
            "round %d: not applied (%s); local progress carried to the next round", p.round, out.reason
        )
        if out.stale_base and not self.cfg.tamper and self._sync is None:
            # Download the swarm's state on the P2P loop while training goes on (at 25 Mbit/s a
            # gpt-small state takes ~15 s: blocking would idle the device for a round or more).
            self.stats.update(phase=heartbeat_pb2.PHASE_SYNCING)
            self._sync = self.loop.submit(self._fetch_state())
        return 0, carried

    # --- shutdown -------------------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Leave cleanly and quickly. When a signal to the whole process group already ended the
        DHT process, steps that would only wait on it are cut short."""
        dht_alive = self.dht is not None and self.dht.is_alive()
        if self.feed is not None and not dht_alive:
            log.info("the DHT process is gone: leases expire by themselves")
        for what, fn in (
            ("heartbeat", lambda: self.heartbeat and self.heartbeat.stop(wait=dht_alive)),
            (
                "shard feed",
                lambda: self.feed and dht_alive and self.feed.close(),
            ),  # releases leases via the DHT
            ("p2p", lambda: self.loop and self.loop.stop()),
            ("coordinator client", lambda: self.client and self.client.close()),
            ("dht", lambda: self.dht and self.dht.shutdown()),
            ("auth", lambda: self.auth and self.auth.stop()),
            ("identity lock", lambda: self.identity_lock and self.identity_lock.release()),
        ):
            try:
                fn()
            except Exception as e:
                log.debug("closing %s: %s", what, e)
