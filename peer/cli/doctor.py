"""``barnraise doctor --initial-peers MADDR [--json]``: will this machine work with the swarm?

Before a volunteer joins, doctor checks what makes a peer fail or crawl, each as PASS, WARN or
FAIL with what to do (``peer/diagnosis.py`` judges): Python, torch and hivemind against the run's
(the bootstrap's coordinator record carries them), the device's memory against the run's model and
the micro-batch it allows, free disk for the shard cache, the run key's fingerprint, then against
live swarm members (``barnraise.probe``, ``peer/net/probe.py``): the clock offset, upload and
download bandwidth (a timed 2 MiB transfer each way) and whether a member can dial us back.

It finishes within ``BUDGET_S``: every wait takes what is left of it. Exit 0 when nothing FAILs,
1 otherwise; unreachable initial peers are one FAIL line.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from barnraise.peer.diagnosis import Check, failed, render_json, render_text

BUDGET_S = (
    20.0  # the waits of all checks, seconds (the promise is under 30 s, start-up and shutdown included)
)
TRANSFER_BYTES = 2 << 20  # each way, for the bandwidth checks
MAX_PEERS = 3  # swarm members asked for their time


class Budget:
    """What is left of ``BUDGET_S``: every wait takes ``left(cap)``."""

    def __init__(self, total_s: float):
        self.deadline = time.monotonic() + total_s

    def left(self, cap_s: float) -> float:
        return max(0.5, min(cap_s, self.deadline - time.monotonic()))


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check whether this machine will work with the swarm, before joining")
    p.add_argument("--initial-peers", nargs="+", required=True, metavar="MADDR")
    p.add_argument("--run-id", default="", help="which run, if the swarm hosts several")
    p.add_argument("--listen", nargs="+", default=["/ip4/0.0.0.0/tcp/0"], metavar="MADDR")
    p.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "barnraise")
    p.add_argument(
        "--cache-budget-mb", type=float, default=1024, help="disk the peer may use for shards, MiB"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--run-key-fingerprint", default="", metavar="FP", help="the run key you were given")
    p.add_argument("--json", action="store_true", help='one JSON object: {"ok": ..., "checks": [...]}')
    p.add_argument("--inject", type=Path, default=None, help=argparse.SUPPRESS)  # tests: a clock fault
    p.add_argument(
        "--memory-limit-mb", type=float, default=0, help=argparse.SUPPRESS
    )  # tests: a small device
    p.set_defaults(handler=cmd_doctor)


def cmd_doctor(args) -> int:
    if args.inject is not None:
        from barnraise.peer.injection import load_plan, skew_clock

        skew_clock(load_plan(args.inject).clock_skew_s)
    checks = run_checks(args, Budget(BUDGET_S))
    print(render_json(checks) if args.json else render_text(checks), end="", flush=True)
    return 1 if failed(checks) else 0


def run_checks(args, budget: Budget) -> list[Check]:
    from barnraise.coordinator import records
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht
    from barnraise.coordinator.errors import BarnraiseError, ConfigError
    from barnraise.coordinator.signing import verify_manifest
    from barnraise.peer.diagnosis import unreachable
    from barnraise.peer.net.auth import dht_extra
    from barnraise.peer.net.coordinator_client import CoordinatorClient

    try:
        opts = DHTOptions(
            initial_peers=tuple(args.initial_peers),
            listen=tuple(args.listen),
            extra=dht_extra(),
            start_timeout_s=budget.left(15),
        )
        dht = start_dht(opts)
    except ConfigError:  # a mistake in the flags: one line, exit 2 (main)
        raise
    except BarnraiseError as e:
        return [unreachable(str(e))]
    client = None
    try:
        rec = records.wait_for_run(dht, args.run_id or None, budget.left(10), args.run_key_fingerprint)
        client = CoordinatorClient(rec.grpc_addrs, connect_timeout_s=budget.left(5))
        manifest = verify_manifest(client.manifest()[0])
        checks = machine_checks(args, rec, manifest)
        return checks + swarm_checks(dht, client, manifest.run_id, budget)
    except BarnraiseError as e:
        return [unreachable(str(e))]
    finally:
        if client is not None:
            client.close()
        dht.shutdown()


def machine_checks(args, rec, manifest) -> list[Check]:
    """This machine against the run: versions, device and memory, disk, run key."""
    from barnraise.coordinator import __version__
    from barnraise.coordinator.errors import BarnraiseError
    from barnraise.coordinator.versions import local_versions
    from barnraise.peer import diagnosis
    from barnraise.peer.training import memoryfit
    from barnraise.peer.training.device import pick_device

    checks = diagnosis.versions(local_versions(), rec, __version__)
    try:
        info = pick_device(args.device)
        available = memoryfit.available_memory(info.device)
        if args.memory_limit_mb > 0:
            available = min(available, int(args.memory_limit_mb * (1 << 20)))
        params = memoryfit.count_model_params(manifest.model)
        on_cuda = info.device.type == "cuda"
        batch = manifest.training.batch_size or 1
        fit = memoryfit.fit(params, manifest.model, batch, info.device.type, available)
        if on_cuda and fit.micro_batch and not args.memory_limit_mb:  # measure what was estimated
            fit = dataclasses.replace(fit, micro_batch=memoryfit.probe_micro_batch(manifest, info))
        checks.append(diagnosis.device(info.description, manifest.model, fit, on_cuda))
    except BarnraiseError as e:
        checks.append(Check(name="device", status=diagnosis.FAIL, detail=str(e)))
    budget_bytes = int(max(0.0, args.cache_budget_mb) * (1 << 20))
    checks.append(diagnosis.disk(args.cache_dir.expanduser(), budget_bytes, manifest))
    checks.append(diagnosis.run_key(manifest, args.cache_dir.expanduser(), args.run_key_fingerprint))
    return checks


def swarm_checks(dht, client, run_id: str, budget: Budget) -> list[Check]:
    """Against live members: clock offset, bandwidth both ways, dial-back."""
    from barnraise.coordinator import records
    from barnraise.coordinator.errors import BarnraiseError
    from barnraise.peer import diagnosis
    from barnraise.peer.net.p2ploop import P2PLoop

    try:
        beats = records.read_heartbeats(dht, run_id, timeout_s=budget.left(4))
    except BarnraiseError:
        beats = []
    peers = sorted({hb.peer_id for hb in beats if time.time() - hb.timestamp < 10})[:MAX_PEERS]
    loop = P2PLoop(dht)
    try:
        samples = bootstrap_samples(client) + loop.call(peer_samples(loop.p2p, peers), budget.left(6))
        checks = [diagnosis.clock(samples)]
        answered = sorted({s.source for s in samples} - {"bootstrap"})
        target = answered[0] if answered else ""
        up = down = dialed = None
        error = "" if target else "no live peer answered"
        if target:
            try:
                up, down = loop.call(transfers(loop.p2p, target), budget.left(12))
                dialed = loop.call(dial_back(loop.p2p, target, our_addresses(dht)), budget.left(5))
            except BarnraiseError as e:
                error = str(e)
        checks.append(diagnosis.bandwidth("upload", up, target, error))
        checks.append(diagnosis.bandwidth("download", down, target, error))
        checks.append(diagnosis.reachability(dialed, target, error))
        return checks
    finally:
        loop.stop()


def bootstrap_samples(client, tries: int = 3) -> list:
    from barnraise.coordinator import swarmclock
    from barnraise.coordinator.errors import BarnraiseError

    out = []
    for _ in range(tries):
        sent_at = swarmclock.reading()
        try:
            server_time = client.time(timeout_s=2.0)
        except BarnraiseError:
            break
        if (s := swarmclock.sample("bootstrap", sent_at, server_time, swarmclock.reading())) is not None:
            out.append(s)
    return out


async def peer_samples(p2p, peers: list[str]) -> list:
    import asyncio

    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.probe import clock_samples

    results = await asyncio.gather(
        *(clock_samples(p2p, p, access=OPEN_RUN) for p in peers), return_exceptions=True
    )
    return [s for r in results if isinstance(r, list) for s in r]


async def transfers(p2p, peer: str) -> tuple[float, float]:
    """(upload, download) in Mbit/s: a timed transfer each way, less the round trip of an empty probe."""
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.probe import probe
    from barnraise.protos import clock_pb2

    _, t0, t1 = await probe(p2p, peer, clock_pb2.ProbeRequest(), access=OPEN_RUN, timeout_s=3.0)
    rtt = t1 - t0
    rates = []
    for req in (
        clock_pb2.ProbeRequest(padding=bytes(TRANSFER_BYTES)),
        clock_pb2.ProbeRequest(download_bytes=TRANSFER_BYTES),
    ):
        _, sent_at, received_at = await probe(p2p, peer, req, access=OPEN_RUN, timeout_s=10.0)
        rates.append(TRANSFER_BYTES * 8 / max(1e-3, received_at - sent_at - rtt) / 1e6)
    return rates[0], rates[1]


async def dial_back(p2p, peer: str, addresses: list[str]) -> dict[str, bool]:
    from barnraise.peer.net.auth import OPEN_RUN
    from barnraise.peer.net.probe import probe
    from barnraise.protos import clock_pb2

    req = clock_pb2.ProbeRequest(dial_back=addresses)
    reply, _, _ = await probe(p2p, peer, req, access=OPEN_RUN, timeout_s=5.0)
    return dict(zip(addresses, reply.dialed, strict=False))


def our_addresses(dht) -> list[str]:
    """Up to two /ip4/A/tcp/P addresses we listen on, others' before loopback."""
    from barnraise.coordinator.dhtnode import visible_maddrs
    from barnraise.peer.net.probe import MAX_DIAL_BACK, dial_target

    plain = ["/".join(m.split("/")[:5]) for m in visible_maddrs(dht)]
    return [m for m in dict.fromkeys(plain) if dial_target(m) is not None][:MAX_DIAL_BACK]
