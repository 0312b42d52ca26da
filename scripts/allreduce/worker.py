#!/usr/bin/env python3
"""One peer of the all-reduce benchmark: our averaging protocol or hivemind's DecentralizedAverager.

Each worker is a real process with its own DHT node (in a netsim namespace, or on loopback), so
the bytes and the time it spends are what a peer spends. Every member must average the same round
at the same moment; two ways to arrange that:

* controlled (default): one JSON command per line on stdin, one JSON line answered on stdout.
  ``scripts/bench_codecs.py`` drives four workers this way, starting each round only when all
  four are ready, so a slow machine delays rounds instead of splitting groups::

    {"op": "setup", "phase": "a", "system": "ours", "codec": "int4", "numel": 5000000}
    {"op": "prepare", "phase": "a", "round": 0}     # builds the update, answers "prepared"
    {"op": "go", "phase": "a", "round": 0, "start_at": 1790000000.0}   # answers "round"
    {"op": "teardown", "phase": "a"}
    {"op": "quit"}

* standalone: ``--system S --codec C --numel N --rounds R --start-at T --period P`` runs rounds
  at T + r*P; start every member with the same T (e.g. ``$(( $(date +%s) + 30 ))``).

The first line printed is ``{"event": "ready", "peer_id": ..., "maddrs": [...]}``; pass a
``maddrs`` entry of the first worker as ``--initial-peers`` of the others. Round answers carry
``e2e_s`` (from the shared start to the average in hand), ``allreduce_s`` (from the group being
formed to the average in hand: for ours this includes the result-hash check), ``ok``,
``members``, our protocol's own byte counts, and, with ``check``, ``rel_err`` against the exact
mean. Updates are seeded by (round, member index), so both systems average the same tensors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

log = logging.getLogger("allreduce.worker")

BASE_HASH = "bench"  # every member holds the same (notional) base state
TTL_S = 120.0  # lifetime of round entries in the DHT, seconds
STAGE_POLL_S = 0.002  # how often the hivemind stage is sampled, seconds


def emit(event: str, **fields) -> None:
    """One JSON answer line: the orchestrator reads nothing else from stdout."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def update_for(round_no: int, index: int, numel: int) -> torch.Tensor:
    """Member ``index``'s update in ``round_no``: the same bytes in every process and system."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{round_no}/{index}".encode()))
    return torch.randn(numel, generator=gen).mul_(1e-2)


def exact_mean(round_no: int, peers: int, numel: int) -> torch.Tensor:
    total = torch.zeros(numel)
    for i in range(peers):
        total += update_for(round_no, i, numel)
    return total.div_(peers)


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


class Ours:
    """Our protocol (``peer.averager.Averager``) on the worker's P2P loop, one codec per phase.

    The group-formed moment and the exchange's own duration (reduce-scatter and all-gather, without
    the result check) are taken by wrapping this instance's ``matchmaker.form_group`` and
    ``allreduce.run``: the protocol reports only the round's total duration.
    """

    def __init__(self, node: Node, phase: str, codec: str, cfg: argparse.Namespace):
        from barnraise.peer.averaging.averager import Averager
        from barnraise.peer.averaging.robust import RobustConfig
        from barnraise.peer.net.auth import OPEN_RUN

        self.node, self.cfg = node, cfg
        self.av = Averager(
            p2p=node.loop.p2p,
            dht=node.dht,
            run_id=f"bench-{phase}",
            peer_id=node.peer_id,
            codec=codec,
            group_size=cfg.peers,
            topk_fraction=cfg.topk_fraction,
            robust=RobustConfig(aggregator=cfg.aggregator),
            auth=OPEN_RUN,  # a benchmark swarm without membership
        )
        node.loop.call(self.av.register(), timeout_s=30.0)
        self.formed_at: dict[int, float] = {}
        self.exchange_s: dict[int, float] = {}
        form_group, exchange = self.av.matchmaker.form_group, self.av.allreduce.run

        async def timed_form_group(round_no, request, timing):
            reply = await form_group(round_no, request, timing)
            self.formed_at[round_no] = time.time()
            return reply

        async def timed_exchange(group, *args):
            t0 = time.time()
            try:
                return await exchange(group, *args)
            finally:
                self.exchange_s[int(group.round)] = time.time() - t0

        self.av.matchmaker.form_group = timed_form_group
        self.av.allreduce.run = timed_exchange

    def round(self, round_no: int, update: torch.Tensor, start_at: float) -> dict:
        from barnraise.peer.averaging.codecs import ErrorFeedback
        from barnraise.peer.averaging.plan import RoundPlan

        # Each round's inputs are independent, so a residual carried from the last one would only
        # blur the error figure; bytes and time do not depend on it.
        self.av.feedback = ErrorFeedback()
        # A member named in a failed round is left out of the next few; here every member is
        # honest and each round is measured on its own, so one failure (reported) costs one round.
        self.av.matchmaker.penalties.clear()
        timing = RoundPlan.make(
            round_no, start_at, self.cfg.round_s, reduce_budget_s=self.cfg.reduce_budget_s
        )

        async def run():
            out = await self.av.average(round_no, update, 1.0, BASE_HASH, timing, TTL_S)
            return out, time.time()

        sleep_until(start_at)
        called = time.time()
        out, done = self.node.loop.call(run(), timeout_s=timing.confirm_deadline - called + 30.0)
        formed = self.formed_at.pop(round_no, done)
        return {
            "ok": out.ok,
            "members": len(out.members),
            "codec": out.codec,
            "late_s": max(0.0, called - start_at),
            "e2e_s": done - start_at,
            "matchmaking_s": formed - start_at,
            "allreduce_s": done - formed,
            "exchange_s": self.exchange_s.pop(round_no, 0.0),
            "join_wait_s": timing.join_at - start_at,
            "app_bytes_sent": out.bytes_sent,
            "app_bytes_received": out.bytes_received,
            "reason": out.reason,
            "offenders": {p[:12]: why for p, why in out.offenders.items()},
            "average": out.average,
        }

    def close(self) -> None:
        from barnraise.peer.averaging.allreduce import REDUCE_HANDLER
        from barnraise.peer.averaging.gather import GATHER_HANDLER
        from barnraise.peer.averaging.matchmaking import JOIN_HANDLER
        from barnraise.peer.averaging.verdict import CONFIRM_HANDLER

        async def remove() -> None:
            for name in (JOIN_HANDLER, REDUCE_HANDLER, GATHER_HANDLER, CONFIRM_HANDLER):
                await self.node.loop.p2p.remove_binary_stream_handler(name)

        self.node.loop.call(remove(), timeout_s=10.0)


class Hivemind:
    """hivemind's DecentralizedAverager on one shared tensor, with its own matchmaking."""

    def __init__(self, node: Node, phase: str, codec: str, numel: int, cfg: argparse.Namespace):
        from hivemind.averaging import DecentralizedAverager
        from hivemind.compression import Float16Compression, NoCompression

        compression = {"fp32": NoCompression, "fp16": Float16Compression}.get(codec)
        if compression is None:  # its 8-bit codecs decode wrongly on numpy >= 2.4
            raise ValueError(f"hivemind is benchmarked with fp32 or fp16, not {codec}")
        self.cfg, self.codec = cfg, codec
        self.av = DecentralizedAverager(
            averaged_tensors=[torch.zeros(numel)],
            dht=node.dht,
            prefix=f"bench_{phase}".replace("-", "_"),
            target_group_size=cfg.peers,
            min_group_size=cfg.peers,
            min_matchmaking_time=cfg.hivemind_matchmaking_s,
            request_timeout=min(1.0, cfg.hivemind_matchmaking_s / 2),
            allreduce_timeout=cfg.reduce_budget_s,
            compression=compression(),
            start=True,
        )

    def round(self, round_no: int, update: torch.Tensor, start_at: float) -> dict:
        from hivemind.averaging.control import AveragingStage

        with self.av.get_tensors() as tensors:
            tensors[0].copy_(update)
        sleep_until(start_at)
        called = time.time()
        control = self.av.step(wait=False, timeout=self.cfg.reduce_budget_s)
        formed = None
        grouped = (AveragingStage.AWAITING_TRIGGER, AveragingStage.RUNNING_ALLREDUCE)
        deadline = called + 2 * self.cfg.reduce_budget_s + 30.0
        while not control.done() and time.time() < deadline:
            if formed is None and control.stage in grouped:
                formed = time.time()
            time.sleep(STAGE_POLL_S)
        done = time.time()
        reason, members = "", 0
        try:
            gathered = control.result(timeout=1.0)
            members = len(gathered) if gathered else 0
        except Exception as e:  # failed or timed-out step: reported, not fatal
            control.cancel()
            reason = f"{type(e).__name__}: {e}"
        with self.av.get_tensors() as tensors:
            average = tensors[0].clone()
        formed = formed or done
        return {
            "ok": members > 0 and not reason,
            "members": members,
            "codec": self.codec,
            "late_s": max(0.0, called - start_at),
            "e2e_s": done - start_at,
            "matchmaking_s": formed - start_at,
            "allreduce_s": done - formed,
            "exchange_s": done - formed,
            "join_wait_s": 0.0,
            "app_bytes_sent": 0,
            "app_bytes_received": 0,
            "reason": reason,
            "average": average,
        }

    def close(self) -> None:
        self.av.shutdown()


class Node:
    """This worker's DHT node, signing key and P2P loop, shared by every phase."""

    def __init__(self, cfg: argparse.Namespace):
        from barnraise.coordinator import keys, signing
        from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
        from barnraise.peer.net.auth import dht_extra
        from barnraise.peer.net.p2ploop import P2PLoop

        work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="barnraise-allreduce-"))
        identity = work / f"peer{cfg.index}.id"
        signing.register_signer(keys.ensure_identity(identity, replace_foreign=False))
        opts = DHTOptions(
            initial_peers=tuple(cfg.initial_peers),
            listen=(f"/ip4/{cfg.host}/tcp/0",),
            identity=identity,
            extra=dht_extra(),
        )
        self.dht = start_dht(opts)
        self.peer_id = self.dht.peer_id.to_base58()
        self.maddrs = visible_maddrs(self.dht)
        self.loop = P2PLoop(self.dht)

    def close(self) -> None:
        self.loop.stop()
        self.dht.shutdown()


class Worker:
    """Runs the commands: phases (a system with a codec and size), rounds within them."""

    def __init__(self, cfg: argparse.Namespace):
        self.cfg = cfg
        self.node = Node(cfg)
        self.phases: dict[str, tuple[Ours | Hivemind, int, bool]] = {}  # phase -> (system, numel, check)
        self.updates: dict[tuple[str, int], torch.Tensor] = {}

    def setup(self, phase: str, system: str, codec: str, numel: int, check: bool = False) -> dict:
        t0 = time.perf_counter()
        if system == "ours":
            impl: Ours | Hivemind = Ours(self.node, phase, codec, self.cfg)
        elif system == "hivemind":
            impl = Hivemind(self.node, phase, codec, numel, self.cfg)
        else:
            raise ValueError(f"unknown system {system!r}")
        self.phases[phase] = (impl, numel, check)
        return {"phase": phase, "setup_s": time.perf_counter() - t0}

    def prepare(self, phase: str, round_no: int) -> dict:
        _, numel, _ = self.phases[phase]
        self.updates[(phase, round_no)] = update_for(round_no, self.cfg.index, numel)
        return {"phase": phase, "round": round_no}

    def go(self, phase: str, round_no: int, start_at: float) -> dict:
        impl, numel, check = self.phases[phase]
        update = self.updates.pop((phase, round_no), None)
        if update is None:
            update = update_for(round_no, self.cfg.index, numel)
        res = impl.round(round_no, update, start_at)
        average = res.pop("average")
        if check and average is not None:
            exact = exact_mean(round_no, self.cfg.peers, numel)
            res["rel_err"] = float((average - exact).norm() / exact.norm().clamp_min(1e-30))
            res["result_crc"] = zlib.crc32(average.numpy().tobytes())
        return {"phase": phase, "round": round_no, "index": self.cfg.index, **res}

    def teardown(self, phase: str) -> dict:
        impl, _, _ = self.phases.pop(phase)
        impl.close()
        return {"phase": phase}

    def close(self) -> None:
        for phase in list(self.phases):
            try:
                self.teardown(phase)
            except Exception as e:  # shutting down anyway: note it and go on
                log.warning("teardown of %s failed: %s", phase, e)
        self.node.close()

    def serve(self, lines) -> None:
        """Controlled mode: answer commands until ``quit`` or end of input."""
        for line in lines:
            if not line.strip():
                continue
            cmd = json.loads(line)
            op = cmd.pop("op")
            if "round" in cmd:
                cmd["round_no"] = cmd.pop("round")
            if op == "quit":
                return
            handler = {"setup": self.setup, "prepare": self.prepare, "go": self.go, "teardown": self.teardown}
            answer = {"setup": "setup", "prepare": "prepared", "go": "round", "teardown": "teardown"}
            try:
                emit(answer[op], **handler[op](**cmd))
            except Exception as e:  # a failed command is answered, so the orchestrator never hangs on it
                log.exception("%s failed", op)
                emit("error", op=op, phase=cmd.get("phase"), error=f"{type(e).__name__}: {e}")

    def standalone(self) -> None:
        cfg = self.cfg
        phase = f"{cfg.system}-{cfg.codec}"
        emit("setup", **self.setup(phase, cfg.system, cfg.codec, cfg.numel, cfg.check))
        start = cfg.start_at or time.time() + 5.0
        for r in range(cfg.rounds):
            self.prepare(phase, r)
            emit("round", **self.go(phase, r, start + r * cfg.period))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from barnraise.coordinator.manifest import DEFAULT_AGGREGATOR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=int, default=0, help="this member's index (seeds its updates)")
    p.add_argument("--peers", type=int, default=4, help="group size (and members whose mean is checked)")
    p.add_argument("--host", default="127.0.0.1", help="IPv4 address to listen on")
    p.add_argument("--initial-peers", nargs="*", default=[], help="multiaddrs of a running worker")
    p.add_argument("--work-dir", default="", help="where the identity file goes (default: a temp dir)")
    p.add_argument("--topk-fraction", type=float, default=0.01)
    p.add_argument("--aggregator", default=DEFAULT_AGGREGATOR, help="our reducers' robust aggregator")
    p.add_argument("--round-s", type=float, default=2.0, help="round length our timing plan assumes, s")
    p.add_argument("--reduce-budget-s", type=float, default=60.0, help="deadline of one all-reduce, s")
    p.add_argument("--hivemind-matchmaking-s", type=float, default=2.0, help="hivemind min_matchmaking_time")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--debug", action="store_true", help="log our protocol's debug messages")
    # standalone mode
    p.add_argument("--system", choices=("ours", "hivemind"), default=None)
    p.add_argument("--codec", default="fp32")
    p.add_argument("--numel", type=int, default=5_000_000)
    p.add_argument("--rounds", type=int, default=0, help="standalone: rounds to run (0: controlled mode)")
    p.add_argument("--start-at", type=float, default=0.0, help="standalone: unix time of round 0")
    p.add_argument("--period", type=float, default=15.0, help="standalone: seconds between round starts")
    p.add_argument("--check", action="store_true", help="compare the average with the exact mean")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    if cfg.debug:
        for name in ("peer", "coordinator"):
            logging.getLogger(name).setLevel(logging.DEBUG)
    torch.set_num_threads(cfg.threads)
    worker = Worker(cfg)
    try:
        emit("ready", peer_id=worker.node.peer_id, maddrs=worker.node.maddrs, index=cfg.index)
        if cfg.system and cfg.rounds:
            worker.standalone()
        else:
            worker.serve(sys.stdin)
    finally:
        worker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
