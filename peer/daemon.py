"""The peer daemon: join the swarm, fetch and verify the run, then train round after round.

Each round is a wall-clock window of the swarm's clock: inner steps until the window closes, then
the pseudo-gradient (global params - local params) is averaged with the group, weighted by the
samples each member processed, and the outer Nesterov step is applied on the CPU so that every
member ends with bit-identical parameters. A round that fails leaves the local progress in place;
it is carried into the next round's update.

One round in six files: this loop (``run``), ``peer/averaging/plan.py`` (every deadline),
``peer/averaging/averager.py`` (matchmaking, exchange, verdict), ``peer/averaging/allreduce.py``
(the butterfly exchange), ``peer/sync/rounds.py`` (the state the round leads to, shared with the
state server) and ``peer/sync/state.py`` (the outer step).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from barnraise.coordinator import swarmclock
from barnraise.coordinator.dhtnode import DHTOptions, start_dht
from barnraise.coordinator.manifest import DEFAULT_AGGREGATOR
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer import events
from barnraise.peer.averaging.averager import Averager, RoundOutcome
from barnraise.peer.averaging.plan import RoundPlan, reduce_budget
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.checkpoints import PeerCheckpoints
from barnraise.peer.clock import ClockKeeper
from barnraise.peer.config import PeerConfig
from barnraise.peer.control import ControlServer, Switches, socket_path
from barnraise.peer.data.feed import ShardFeed
from barnraise.peer.data.shards import ShardSourceRef
from barnraise.peer.heartbeat import HeartbeatPublisher, PeerStats
from barnraise.peer.injection import InjectionPlan, Injector
from barnraise.peer.net.auth import PeerAuth, dht_extra
from barnraise.peer.net.coordinator_client import open_run
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.slots import open_peer_identity
from barnraise.peer.sync.catchup import CatchUp
from barnraise.peer.sync.rounds import LaunchedRound, finished
from barnraise.peer.sync.state import GlobalState, OuterStep, all_finite, flat_params, load_flat
from barnraise.peer.sync.statesync import StateServer
from barnraise.peer.training.device import pick_device
from barnraise.peer.training.model import build_run_model, count_params
from barnraise.peer.training.trainer import InnerTrainer
from barnraise.protos import heartbeat_pb2

__all__ = ["PeerConfig", "PeerDaemon"]

log = logging.getLogger(__name__)


class PeerDaemon:
    """One volunteer's peer. Threads: the caller's (``run``: training, applying rounds), the P2P loop
    (averaging, serving state and shards), the heartbeat, lease and cache-announcement threads,
    and hivemind's DHT process; the README's "Concurrency" section says what each may touch."""

    def __init__(self, cfg: PeerConfig, events: events.EventLog = events.NO_EVENTS):
        self.cfg = cfg
        self.events = events  # what tests and benchmarks read (--events)
        self.stop_event = threading.Event()  # leave now
        self.switches = Switches(cfg.schedule)  # pause, leave after this round (peer/control.py)
        self.control: ControlServer | None = None
        self.carried = 0.0  # samples in the live params that no applied average has taken yet
        self.completed = 0  # rounds applied
        self.stats = PeerStats(upload_limit_mbit=cfg.max_upload_mbit)
        self.dht = self.loop = self.heartbeat = self.client = self.feed = self.checkpoints = None
        self.clock_keeper = None
        self.auth = self.identity_lock = None

    # --- start-up -------------------------------------------------------------------------------
    def start(self) -> None:
        self._join_run()
        model = build_run_model(self.manifest)  # a model unlike the run's is refused before any lease
        self.loop = P2PLoop(self.dht)
        self._open_data()
        self._build_training(model)
        self._start_averaging()
        self.clock_keeper = ClockKeeper(daemon=self).start()  # our clock's offset, now and every 30 s
        self.heartbeat = HeartbeatPublisher(self.dht, self.peer_id, self.manifest.run_id, self.stats)
        self.heartbeat.start()
        if not self.inject.tamper:
            self.sync_from_swarm()
        log.info(
            "peer %s joined run %s (%s, %d params, device %s)",
            self.peer_id,
            self.manifest.run_id,
            self.manifest.model.name,
            count_params(model),
            self.info.description,
        )
        self.events.emit(events.Joined(peer_id=self.peer_id, run_id=self.manifest.run_id))

    def _join_run(self) -> None:
        """Start our DHT node, find the run, fetch and verify its manifest, check our membership."""
        cfg = self.cfg
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        taken = open_peer_identity(cfg.cache_dir, cfg.identity)  # a free slot unless --identity
        self.identity, self.identity_lock, self.slot = taken.key, taken.lock, taken.slot or 0
        self.control = ControlServer(socket_path(cfg.cache_dir, taken.path, taken.slot), self.switches)
        self.control.start()
        self.dht = start_dht(
            DHTOptions(
                initial_peers=cfg.initial_peers,
                listen=cfg.listen,
                announce=cfg.announce,
                identity=taken.path,
                relay="" if cfg.no_relay else "use",
                extra=dht_extra(),
            )
        )
        self.peer_id = self.dht.peer_id.to_base58()
        found = open_run(self.dht, cfg.run_id or None, cfg.join_timeout_s, cfg.run_key_fingerprint)
        self.client, self.signed, self.manifest, genesis = found
        token, pin = cfg.token, cfg.run_key_fingerprint
        self.auth = PeerAuth.join(
            self.manifest, self.identity, cache_dir=cfg.cache_dir, token_file=token, run_key_fingerprint=pin
        )
        self.auth.attach_to_client(self.client)
        self.auth.start(self.dht)
        t = self.manifest.training
        self.clock = RoundClock(genesis=genesis, round_s=t.round_s)
        self.inject = Injector(cfg.inject or InjectionPlan(), self.peer_id, self.clock)
        self.outer = OuterStep(lr=t.outer_lr, momentum=t.outer_momentum)
        self.stats.update(genesis=genesis, round_s=t.round_s, group_size=t.group_size or 32)

    def _open_data(self) -> None:
        """Shards: cached, leased, served to other peers, fetched from peers or the coordinator."""
        sources = [ShardSourceRef(name=f"coordinator {self.client.address}", fetch=self.client.fetch_shard)]
        self.feed = ShardFeed.open(
            dht=self.dht,
            loop=self.loop,
            manifest=self.manifest,
            peer_id=self.peer_id,
            cache_dir=self.cfg.cache_dir / self.manifest.run_id,
            sources=sources,
            options=self.cfg.shards,
            auth=self.auth,
            events=self.events,
            corrupt_shards=self.inject.corrupts_shards if self.cfg.inject else None,
        )
        self.cache = self.feed.cache

    def _build_training(self, model: torch.nn.Module) -> None:
        """The initial global state from the run's seeded model, and the inner trainer on our device."""
        cfg, t = self.cfg, self.manifest.training
        self.info = pick_device(cfg.device, cfg.threads, self.slot)  # slots spread over GPUs
        self.state = GlobalState.initial(model)
        self.stats.update(init_hash=self.state.params_hash())
        if self.inject.tamper:
            self.state = self.state.perturbed(1e-3)
            load_flat(model, self.state.params)
        self.trainer = InnerTrainer(model, t, self.info)
        probe = self.trainer.fit(self.feed.sample)
        self.events.emit(events.DeviceReady.of(self.info, probe, count_params(model)), log)
        self.stats.update(device=self.info.description, device_memory_bytes=self.info.memory_bytes)
        self.stats.update(batch_size=t.batch_size, micro_batch=probe.micro_batch)

    def _start_averaging(self) -> None:
        """The averaging protocol and the state server on the P2P loop; background catch-up."""
        cfg, t = self.cfg, self.manifest.training
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
            faults=self.inject if cfg.inject else None,
            auth=self.auth,
            robust=RobustConfig(aggregator=t.aggregator or DEFAULT_AGGREGATOR),
            on_reach=self._reach_changed,
            seeded_hash=self.stats.init_hash,
        )
        self.feed.announcer.serving = self.averager.reachability.can_be_dialled
        serve = dict(auth=self.auth, corrupt_state=self.inject.corrupts_state if cfg.inject else None)
        self.state_server = StateServer(self.loop.p2p, self.manifest.run_id, **serve)
        self.loop.call(self.averager.register(), 10.0)
        self.loop.call(self.state_server.register(), 10.0)
        self.catchup = CatchUp(
            loop=self.loop,
            dht=self.dht,
            run_id=self.manifest.run_id,
            peer_id=self.peer_id,
            clock=self.clock,
            auth=self.auth,
            link_mbit=cfg.bandwidth_mbit,
            held=lambda: self.state,
            outer=self.outer,
        )
        self._publish_state()
        self.checkpoints = PeerCheckpoints(cfg, self.manifest, self.signed, self.catchup, self.trainer.model)

    def _reach_changed(self, reach: str, detail: str) -> None:
        self.stats.update(link=reach)  # the heartbeat's link
        self.events.emit(events.ReachChanged(reach=reach, detail=detail), log)

    def _publish_state(self) -> None:
        self.state_server.publish(self.state)
        self.stats.update(params_hash=self.state.params_hash(), hash_round=self.state.round)

    # --- catching up ----------------------------------------------------------------------------
    def sync_from_swarm(self) -> bool:
        """Start from the newest state a donor has at hand, and fetch the next round's in the background
        while training (waiting would idle the device for up to a round); True if we adopted one now."""
        self.stats.update(phase=heartbeat_pb2.PHASE_SYNCING)
        found = self.checkpoints.resume(self.feed, self.state.params.numel()) or self.catchup.now()
        if found is not None:
            self._adopt(*found, rebase=False)
        self.catchup.start()
        return found is not None

    def _adopt(self, new: GlobalState, donor: str, rebase: bool) -> None:
        """Take ``new`` as our global state; with ``rebase`` the live params keep their progress."""
        local_delta = self.state.params - flat_params(self.trainer.model) if rebase else None
        self.state = new
        load_flat(self.trainer.model, new.params if local_delta is None else new.params - local_delta)
        self._publish_state()
        self.events.emit(
            events.StateAdopted(round=new.round, params_hash=new.params_hash(), donor=donor), log
        )

    def _finish_sync(self) -> bool:
        """Adopt a background sync's state if it has arrived; True while one is still running."""
        running, found = self.catchup.poll()
        if found is not None and found[0].round > self.state.round:  # we may have averaged our way there
            self._adopt(*found, rebase=True)
        return running

    # --- the round loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Train window after window; average each window's update with delay 0 or 1 round.

        With delay 1 the averaging of round r runs on the P2P loop while round r+1 computes, and
        its result is applied at the end of r+1: the global params move by the outer step and the
        live params keep the progress made since the update was taken (a one-round-delayed outer
        update), so a slow link does not idle the device.
        """
        t, sw = self.manifest.training, self.switches
        pending: LaunchedRound | None = None
        last_end = time.time()
        try:
            while not (self.stop_event.is_set() or self._cut_short()):
                if pending is not None and (sw.paused() or sw.leaving.is_set()):
                    pending = self._settle(pending)  # its group counts on us
                if sw.leaving.is_set():
                    self.events.emit(events.Leaving(round=self.stats.round, rounds=self.completed), log)
                    break
                if sw.paused():
                    self._pause()
                    continue
                r = self.clock.round_at()
                # micro_batch: an out-of-memory step mid-run halves it (training/trainer.py)
                self.stats.update(
                    round=r, phase=heartbeat_pb2.PHASE_TRAINING, micro_batch=self.trainer.micro_batch
                )
                end = swarmclock.local(self.clock.end(r))  # the window's end, read on our clock
                rest = self.inject.slowdown(r) / self.cfg.max_compute_share  # --max-compute-share
                window = self.trainer.train_until(end, self.feed.next_batch, self._interrupted, rest)
                if self.stop_event.is_set():
                    break
                self.carried += window.samples
                if self._interrupted():  # paused mid-window: the samples stay carried
                    continue
                if pending is not None:
                    pending = self._settle(pending)
                if not (self._finish_sync() and self.state.round < r - 1):  # else our stale base's new
                    pending = self._launch(r, self.carried)  # one is on its way: a round with the old
                    if t.round_delay == 0:  # base would only be refused
                        pending = self._settle(pending)
                now = time.time()
                self._report(r, window, max(1e-9, now - last_end))
                last_end = now
                if self.cfg.max_rounds and self.completed >= self.cfg.max_rounds:
                    log.info("completed %d rounds; leaving", self.completed)
                    break
        finally:
            if pending is not None:
                pending.future.cancel()
            self.catchup.cancel()

    def _settle(self, launched: LaunchedRound) -> None:
        """Apply a launched round (``_apply``) and count it; None, for the loop's ``pending``."""
        applied, self.carried = self._apply(launched, self.carried)
        self.completed += applied

    def _interrupted(self) -> bool:
        """Stop the window after this inner step: leave now, or paused (unless leaving at its end)."""
        sw = self.switches
        return self.stop_event.is_set() or self._cut_short() or (sw.paused() and not sw.leaving.is_set())

    def _cut_short(self) -> bool:
        """Asked to leave, but a signal to our process group already ended the DHT process."""
        return self.switches.leaving.is_set() and not self.dht.is_alive()

    def _pause(self) -> None:
        """Paused: heartbeats and serving go on, no training or averaging; after it, catch up."""
        since = self.clock.round_at()
        self.stats.update(phase=heartbeat_pb2.PHASE_PAUSED)
        why = "pause" if self.switches.held.is_set() else "schedule"
        self.events.emit(events.Paused(round=since, why=why), log)
        while self.switches.paused() and not (self.stop_event.is_set() or self.switches.leaving.is_set()):
            self.switches.wait(1.0)
        if self.stop_event.is_set() or self.switches.leaving.is_set():
            return
        r = self.clock.round_at()
        self.events.emit(events.Resumed(round=r), log)
        if r > since + 1 and not self.inject.tamper:
            self.catchup.start()

    def _report(self, r: int, window, wall_s: float) -> None:
        self.stats.note_window(window, wall_s)
        self.events.emit(events.WindowTrained.of(r, window, self.stats.samples_per_s, wall_s), log)

    def _launch(self, r: int, weight: float) -> LaunchedRound:
        """Start averaging the update (global - live params) on the P2P loop."""
        t = self.manifest.training
        plan = RoundPlan.make(r, self.clock.end(r), t.round_s, reduce_budget(t.round_s, t.round_delay))
        base, live = self.state, flat_params(self.trainer.model)
        delta = base.params - live
        if not all_finite(delta):
            fut = finished(RoundOutcome(round=r, reason="local update is not finite; not sent"))
        else:
            delta, weight = self.inject.forge(r, delta, weight, base=base.params)  # tests: attacks
            fut = self.loop.submit(
                self.averager.average(
                    r, delta, weight, base.params_hash(), plan, ttl_s=4 * t.round_s, base_round=base.round
                )
            )
        launched = LaunchedRound(plan=plan, base=base, future=fut, live=live, weight=weight, outer=self.outer)
        self.state_server.track(launched)
        self.stats.watch_deadline(r, fut, plan.confirm_deadline)
        return launched

    def _apply(self, launched: LaunchedRound, carried: float) -> tuple[int, float]:
        """Wait (until the plan's apply deadline) for a launched round and apply it; returns
        (1 if applied, samples still carried)."""
        self.stats.update(phase=heartbeat_pb2.PHASE_AVERAGING)
        out = launched.outcome()
        self.stats.note_exchange(out)
        self.events.emit(events.ExchangeDone.of(out))
        new = launched.next_state()
        if new is not None:
            local_progress = flat_params(self.trainer.model) - launched.live
            self.state = new
            load_flat(self.trainer.model, new.params + local_progress)
            self._publish_state()
            self.checkpoints.offer(new, self.stats.loss, out.total_weight)
            self.stats.update(rounds_joined=self.stats.rounds_joined + 1)
            h, n = new.params_hash(), len(out.members)
            self.events.emit(
                events.RoundApplied(round=launched.round, members=n, params_hash=h, **out.applied_fields()),
                log,
            )
            return 1, max(0.0, carried - launched.weight)
        self.stats.update(rounds_missed=self.stats.rounds_missed + 1, last_exclusion=out.reason[:200])
        self.events.emit(events.RoundMissed(round=launched.round, reason=out.reason), log, logging.WARNING)
        if out.stale_base and not self.inject.tamper and self.catchup.start():
            self.stats.update(phase=heartbeat_pb2.PHASE_SYNCING)
        return 0, carried

    # --- shutdown -------------------------------------------------------------------------------
    def stop(self) -> None:
        """Leave now (the second Ctrl-C)."""
        self.stop_event.set()
        self.switches.changed.set()

    def leave(self) -> bool:
        """Leave after this round's averaging (``leave``, the first Ctrl-C); False if already asked."""
        return self.switches.leave()

    def close(self) -> None:
        """Leave cleanly and quickly; steps that would only wait on a DHT process already gone are cut short."""
        dht_alive = self.dht is not None and self.dht.is_alive()
        if self.feed is not None and not dht_alive:
            log.info("the DHT process is gone: leases expire by themselves")
        for what, fn in (
            ("heartbeat", lambda: self.heartbeat and self.heartbeat.stop(wait=dht_alive)),
            ("clock", lambda: self.clock_keeper and self.clock_keeper.stop()),
            ("shard feed", lambda: self.feed and dht_alive and self.feed.close()),  # leases, via the DHT
            ("checkpoints", lambda: self.checkpoints and self.checkpoints.close()),
            ("p2p", lambda: self.loop and self.loop.stop()),
            ("coordinator client", lambda: self.client and self.client.close()),
            ("dht", lambda: self.dht and self.dht.shutdown()),
            ("auth", lambda: self.auth and self.auth.stop()),
            ("control socket", lambda: self.control and self.control.close()),
            ("identity lock", lambda: self.identity_lock and self.identity_lock.release()),
        ):
            try:
                fn()
            except Exception as e:
                log.debug("closing %s: %s", what, e)
