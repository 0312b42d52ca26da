"""Time ``barnraise status --json`` against 1,000 synthetic peers' heartbeats in a real hivemind DHT.

Usage: python scripts/bench_status.py [--quick] [--peers N] [--nodes K] [--repeats R]

Starts K DHT nodes (separate processes, barnraise's record validator installed, as in a swarm),
stores a signed coordinator record and, for each of N synthetic peers (own Ed25519 key), a sealed
heartbeat and a run beacon, exactly as peer daemons do. Then it measures:

- the CLI: wall time of ``barnraise status --json`` as a user runs it (a fresh process: Python
  start-up, ``import hivemind``, DHT client start-up, lookups, report, DHT shutdown); median of R;
  and the CPU time (user + system) its processes used, which a busy machine inflates far less;
- inside one fresh process: ``import hivemind``, DHT client start-up, then ``query_report`` end
  to end (lookups + report: the part barnraise controls, cold as in the CLI), then each phase
  apart: the heartbeat lookup (``latest=True`` as status does; ``latest=False`` on a second cold
  client for comparison: it stops at the first answer and may miss replicas' records), opening
  the sealed records (signature checks), ``find_runs``, ``read_beacons`` (used only without a
  coordinator record), ``read_heartbeats``, building the report, JSON encoding, a warm
  ``query_report`` (record verdicts remembered), DHT shutdown.

Prints a table; writes scripts/results/bench_status-DATE-HOST.{json,txt}; the last line printed is
one JSON object with ``status_1000_s`` (CLI wall time, seconds) and the phase times. Timings on a
shared or loaded machine are noisy: rerun on a quiet one before quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "scripts" / "results"
RUN_ID = "bench-status"
STORE_BATCH = 100  # synthetic peers stored per call (one store_many per DHT key)
TTL_S = 900.0  # synthetic records outlive the benchmark


def heartbeat(peer_id: str, i: int, now: float):
    """A heartbeat as a busy peer sends it (every list field filled to its usual length)."""
    from barnraise.protos import heartbeat_pb2

    return heartbeat_pb2.Heartbeat(
        peer_id=peer_id,
        version="0.1.0",
        run_id=RUN_ID,
        device="cuda:0 (NVIDIA GeForce RTX 4090)",
        device_memory_bytes=24 << 30,
        link="direct",
        samples_per_s=500.0 + i % 97,
        round=1200,
        phase=heartbeat_pb2.PHASE_TRAINING,
        loss=2.5 + (i % 13) / 100,
        params_hash="3f9a1c0d7e5b2a44",
        hash_round=1199,
        bytes_sent=48 << 20,
        bytes_received=48 << 20,
        rounds_joined=1100 + i % 50,
        rounds_missed=i % 5,
        last_exclusion="" if i % 10 else "leader 12D3KooWQm7x unreachable: timed out",
        exclusion_round=1198 if i % 10 == 0 else 0,
        timestamp=now,
        samples_total=600_000 + 17 * i,
        codec_sent="int8",
        codec_received="int8",
        batch_size=16,
        micro_batch=16,
        compute_fraction=0.92,
        round_wall_s=31.0,
        init_hash="9d0e4b7c1a2f3e65",
        recent_hashes=[heartbeat_pb2.RoundHash(round=r, params_hash=f"{r:016x}") for r in range(1196, 1200)],
        recent_losses=[2.6 - 0.01 * k for k in range(8)],
    )


def peer_key(i: int):
    """The i-th synthetic peer's Ed25519 key, the same in every process."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"bench-status/{i}".encode()).digest())


async def store_peers(_dht, node, start: int, count: int, genesis: float, round_s: float) -> int:
    """Runs inside a DHT node's process: seal and store peers [start, start+count) in two batches.

    Built there, not sent through hivemind's command pipe, which breaks on messages of a few kB.
    """
    from barnraise.coordinator import keys, records, signing
    from barnraise.protos import heartbeat_pb2

    now = time.time()
    expiration = records.dht_time() + TTL_S
    batch: list[tuple[str, str, bytes]] = []
    for i in range(start, start + count):
        key = peer_key(i)
        signing.register_signer(key)
        pid = keys.peer_id_of(keys.public_bytes(key))
        beacon = heartbeat_pb2.RunBeacon(
            run_id=RUN_ID, genesis=genesis, round_s=round_s, group_size=32, timestamp=now
        )
        batch.append((records.heartbeats_key(RUN_ID), pid, heartbeat(pid, i, now).SerializeToString()))
        batch.append((records.RUN_BEACONS_KEY, pid, beacon.SerializeToString()))
    stored = 0
    for dht_key in (records.heartbeats_key(RUN_ID), records.RUN_BEACONS_KEY):
        part = [(k, sub, v) for k, sub, v in batch if k == dht_key]
        result = await node.store_many(
            [k for k, _, _ in part],
            [signing.seal(k, sub, expiration, v) for k, sub, v in part],
            expiration,
            subkeys=[sub for _, sub, _ in part],
        )
        stored += sum(bool(ok) for ok in result.values())
    return stored


def populate(nodes, n_peers: int) -> float:
    """Store the coordinator record and N peers' heartbeats and beacons; returns seconds taken."""
    import functools

    from barnraise.coordinator import keys, records, signing
    from barnraise.protos import coordinator_pb2

    started = time.perf_counter()
    run_key = keys.generate()
    signing.register_signer(run_key)
    record = coordinator_pb2.CoordinatorRecord(
        run_id=RUN_ID,
        grpc_addrs=["127.0.0.1:1"],
        genesis=time.time() - 1200 * 30.0,
        round_s=30.0,
        peer_id=nodes[0].peer_id.to_base58(),
        timestamp=time.time(),
        version="0.1.0",
    )
    if not records.publish_run(nodes[0], record, keys.public_bytes(run_key)):
        raise SystemExit("bench: the coordinator record was not stored")
    futures = [
        nodes[k % len(nodes)].run_coroutine(
            functools.partial(
                store_peers,
                start=start,
                count=min(STORE_BATCH, n_peers - start),
                genesis=record.genesis,
                round_s=30.0,
            ),
            return_future=True,
        )
        for k, start in enumerate(range(0, n_peers, STORE_BATCH))
    ]
    stored = sum(f.result(timeout=300) for f in futures)
    if stored != 2 * n_peers:
        raise SystemExit(f"bench: {2 * n_peers - stored} of {2 * n_peers} records were not stored")
    return time.perf_counter() - started


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def probe(entry: str) -> dict:
    """Phase times inside one fresh process (run as ``--probe ENTRY``)."""
    t0 = time.perf_counter()
    import hivemind  # noqa: F401

    out = {"import_hivemind_s": time.perf_counter() - t0}
    from barnraise.coordinator import records
    from barnraise.coordinator.health import build_report, choose_run, query_report
    from barnraise.coordinator.signing import open_sealed
    from barnraise.peer.cli.status_watch import StatusClient

    key = records.heartbeats_key(RUN_ID)
    with StatusClient((entry,)) as other:  # a separate cold client: latest=False stops at the first answer
        _, out["get_latest_False_s"] = timed(other.dht.get, key, latest=False)
    client, out["dht_start_s"] = timed(StatusClient((entry,)).__enter__)  # as the CLI starts it
    dht = client.dht
    try:
        report, out["query_report_s"] = timed(query_report, dht)  # cold, as in the CLI: the headline
        out["peers_in_report"] = len(report["peers"])
        found, out["get_latest_True_s"] = timed(dht.get, key, latest=True)
        items = [(k, v.value, v.expiration_time) for k, v in found.value.items()]
        opened, out["open_verify_s"] = timed(lambda: [open_sealed(key, k, e, v) for k, v, e in items])
        rejected: list[str] = []
        runs, out["find_runs_s"] = timed(records.find_runs, dht)
        beacons, out["read_beacons_s"] = timed(records.read_beacons, dht)
        beats, out["read_heartbeats_s"] = timed(records.read_heartbeats, dht, RUN_ID, rejected=rejected)
        run = choose_run(runs, beacons, "")
        report, out["build_report_s"] = timed(build_report, run, beats, time.time(), rejected)
        _, out["json_dumps_s"] = timed(json.dumps, report)
        # again, with every record's verdict remembered (a --watch refresh between heartbeat updates)
        out["query_report_warm_s"] = min(timed(query_report, dht)[1] for _ in range(2))
        out["records_opened"] = sum(o is not None for o in opened)
    finally:
        _, out["dht_shutdown_s"] = timed(client.__exit__, None, None, None)
    return out


def children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_wall(entry: str, n_peers: int) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of the whole process tree, report) of one ``status --json``."""
    argv = [sys.executable, "-m", "barnraise.peer.cli.main", "status", "--initial-peers", entry, "--json"]
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    took, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    if res.returncode != 0:
        raise SystemExit(f"bench: status failed: {res.stderr.strip()[-500:]}")
    report = json.loads(res.stdout.strip().splitlines()[-1])
    if len(report["peers"]) != n_peers:
        raise SystemExit(f"bench: status listed {len(report['peers'])} peers, expected {n_peers}")
    return took, cpu, report


def python_startup() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one CLI run instead of several (same 1,000 peers)")
    p.add_argument("--peers", type=int, default=1000, help="synthetic peers (default 1000)")
    p.add_argument("--nodes", type=int, default=3, help="DHT nodes holding the records (default 3)")
    p.add_argument("--repeats", type=int, default=5, help="CLI runs, median reported (--quick: 1)")
    p.add_argument("--probe", default="", help=argparse.SUPPRESS)  # internal: phase times in a fresh process
    args = p.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe)))
        return 0
    if not (1 <= args.peers <= 100_000 and 1 <= args.nodes <= 16 and args.repeats >= 1):
        p.error("--peers 1..100000, --nodes 1..16, --repeats >= 1")
    repeats = 1 if args.quick else args.repeats
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")

    from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
    from barnraise.coordinator.signing import dht_validators
    from barnraise.coordinator.status_schema import schema_errors

    nodes = []
    try:
        for _ in range(args.nodes):
            entry_peers = tuple(visible_maddrs(nodes[0])[:1]) if nodes else ()
            nodes.append(
                start_dht(
                    DHTOptions(
                        initial_peers=entry_peers,
                        listen=("/ip4/127.0.0.1/tcp/0",),
                        extra={"record_validators": dht_validators()},
                    )
                )
            )
        entry = visible_maddrs(nodes[0])[0]
        populate_s = populate(nodes, args.peers)
        walls, cpus, report = [], [], None
        for _ in range(repeats):
            took, cpu, report = cli_wall(entry, args.peers)
            walls.append(took)
            cpus.append(cpu)
        errors = schema_errors(report)
        if errors:
            raise SystemExit(f"bench: the report breaks the schema: {errors[:3]}")
        res = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--probe", entry],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        if res.returncode != 0:
            raise SystemExit(f"bench: probe failed: {res.stderr.strip()[-800:]}")
        phases = json.loads(res.stdout.strip().splitlines()[-1])
        startup = python_startup()
    finally:
        for node in nodes:
            node.shutdown()

    summary = {
        "status_1000_s" if args.peers == 1000 else f"status_{args.peers}_s": statistics.median(walls),
        "status_runs_s": walls,
        "status_cpu_s": statistics.median(cpus),
        **phases,
        "python_startup_s": startup,
        "populate_s": populate_s,
        "peers": args.peers,
        "dht_nodes": args.nodes,
        "report_bytes": len(json.dumps(report)),
        "quick": args.quick,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpu",
        "load_average": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    rows = [
        ("status --json, CLI wall (median)", summary[next(iter(summary))]),
        ("status --json, CPU of its processes (median)", summary["status_cpu_s"]),
        ("  python start-up", startup),
        ("  import hivemind", phases["import_hivemind_s"]),
        ("  DHT client start-up", phases["dht_start_s"]),
        ("  DHT shutdown", phases["dht_shutdown_s"]),
        ("query_report (lookups + report), cold as in the CLI", phases["query_report_s"]),
        ("query_report, verdicts remembered", phases["query_report_warm_s"]),
        ("  get heartbeats, latest=True", phases["get_latest_True_s"]),
        ("  get heartbeats, latest=False", phases["get_latest_False_s"]),
        ("  open sealed heartbeats (signatures)", phases["open_verify_s"]),
        ("  find_runs", phases["find_runs_s"]),
        ("  read_beacons", phases["read_beacons_s"]),
        ("  read_heartbeats (get+open+parse+check)", phases["read_heartbeats_s"]),
        ("  build_report", phases["build_report_s"]),
        ("  json.dumps", phases["json_dumps_s"]),
    ]
    table = "\n".join(
        [
            f"bench_status: {args.peers} peers on {args.nodes} DHT nodes, {summary['machine']}, "
            f"load {summary['load_average']:.1f}",
            f"{'phase':48} {'seconds':>8}",
            *(f"{name:48} {value:8.3f}" for name, value in rows),
        ]
    )
    print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"bench_status-{time.strftime('%Y%m%d-%H%M%S')}-{platform.node() or 'host'}{'-quick' if args.quick else ''}"
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS_DIR / f"{stem}.txt").write_text(table + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
