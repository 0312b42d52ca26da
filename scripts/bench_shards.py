#!/usr/bin/env python3
"""Time for a new peer to obtain its first shard: from peers vs from the coordinator alone.

``sudo .venv/bin/python scripts/bench_shards.py [--quick]`` (needs root for network namespaces;
without it the benchmark says why and prints a JSON line with null figures).

Every machine is a network namespace whose link is shaped to 25 Mbit/s each way
(``netsim_lib``). Two scenarios, each with a fresh swarm on the same run:

* ``coordinator``: a bootstrap node and N newcomers started at once; nobody caches anything yet,
  so every first shard comes from the coordinator, whose one uplink the newcomers share.
* ``peers``: the same plus S seeders that hold every shard in their cache (as peers that trained
  an epoch do) and announce it in the DHT; the newcomers pull from the seeders' uplinks.

A newcomer's figure is what its shard feed reports (its ``first_shard`` event, read from the file
``--events`` names): seconds from the trainer's first request for a batch to a verified shard in hand (lease claim in the DHT, lookup of who caches the shard,
transfer, sha256 check). With one newcomer both scenarios move one shard over one 25 Mbit/s
link; the difference is what happens when several join at once. Seeders train under a large
injected slowdown (``--inject``) so their CPU use does not slow the newcomers down on a small machine.

Figures measured on a shared, loaded machine are noisy: rerun on a quiet one before quoting them.
Results go to ``scripts/results/bench_shards-DATE-HOST[-quick].{json,txt}``; the last line printed
is one JSON object with ``first_shard_s_peers`` and ``first_shard_s_coordinator`` (means over the
newcomers) and their maxima.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from barnraise.peer.events import FirstShard, Joined, ShardFetched, read_events

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
RESULTS_DIR = SCRIPTS / "results"
sys.path.insert(0, str(SCRIPTS))

from netsim_lib import HostSpec, NetSim, cleanup_stale, missing_requirements  # noqa: E402

log = logging.getLogger("bench_shards")

INITIAL_PEERS = re.compile(r"--initial-peers (\S+)")
SEEDER_SLOWDOWN = 50  # seeders' compute runs this many times slower


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One benchmark run."""

    quick: bool  # small shards and fewer peers, for CI smoke runs (a few minutes)
    mbit: float = 25.0  # link rate of every machine, each way, Mbit/s
    shard_kib: int = 8192  # shard size, KiB (8 MiB: 2.7 s over one 25 Mbit/s link)
    seeders: int = 3  # peers holding every shard (peers scenario)
    newcomers: int = 3  # peers joining at once, timed
    spare_shards: int = 2  # shards beyond one per peer, so newcomers never wait for a free shard
    start_timeout_s: float = 120.0  # seconds for a process to start and join
    first_shard_timeout_s: float = 180.0  # seconds for every newcomer to get its first shard
    subnet: str = "10.79.0.0/24"  # private /24 for the namespaces
    prefix: str = "bsh"  # netsim name prefix
    keep: bool = False  # keep the work directory (logs)

    def __post_init__(self) -> None:
        if self.shard_kib < 1 or self.seeders < 1 or self.newcomers < 1 or self.mbit <= 0:
            raise ValueError("shard size, seeders, newcomers and link rate must be positive")

    @property
    def n_shards(self) -> int:
        return self.seeders + self.newcomers + self.spare_shards


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 MiB shards, 2 seeders, 2 newcomers")
    p.add_argument("--mbit", type=float, default=25.0, help="link rate each way, Mbit/s")
    p.add_argument("--shard-kib", type=int, default=None, help="shard size, KiB")
    p.add_argument("--seeders", type=int, default=None)
    p.add_argument("--newcomers", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args(argv)
    quick = dict(shard_kib=2048, seeders=2, newcomers=2) if a.quick else {}
    given = {
        k: v for k, v in dict(shard_kib=a.shard_kib, seeders=a.seeders, newcomers=a.newcomers).items() if v
    }
    try:
        return BenchConfig(quick=a.quick, mbit=a.mbit, keep=a.keep, **(quick | given))
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "barnraise.peer.cli.main", *args]


def make_run(cfg: BenchConfig, work: Path) -> tuple[Path, str]:
    """A run whose dataset is exactly ``n_shards`` shards of ``shard_kib`` KiB of text."""
    corpus = work / "corpus"
    corpus.mkdir()
    words = [f"w{i:03d}" for i in range(500)]
    size = cfg.n_shards * cfg.shard_kib * 1024 - 2  # the text directory adds a 2-byte separator
    line = " ".join(words) + "\n"
    text = (line * (size // len(line) + 1))[:size]
    (corpus / "a.txt").write_text(text)
    run = work / "run"
    res = subprocess.run(
        cli("init", str(run), "--dataset", str(corpus), "--shard-kib", str(cfg.shard_kib), "--round-s", "30"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    if res.returncode != 0:
        raise RuntimeError(f"barnraise init failed: {res.stderr.strip()[-500:]}")
    manifest = json.loads((run / "manifest.json").read_text())
    return run, manifest["run_id"]


def wait_for_line(path: Path, pattern: re.Pattern, timeout_s: float, proc=None) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if m := pattern.search(text):
            return m
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{path.stem} exited ({proc.returncode}): {text.strip()[-400:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{path.stem}: no {pattern.pattern!r} within {timeout_s:.0f} s")


def wait_for_event(events_path: Path, kind: type, timeout_s: float, proc, log_path: Path):
    """The first event of class ``kind`` a peer wrote to ``events_path``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := read_events(events_path, kind):
            return found[0]
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace") if log_path.exists() else ""
            raise RuntimeError(f"{log_path.stem} exited ({proc.returncode}): {text.strip()[-400:]}")
        time.sleep(0.2)
    raise TimeoutError(f"{log_path.stem}: no {kind.kind} event within {timeout_s:.0f} s")


def run_scenario(cfg: BenchConfig, work: Path, run: Path, run_id: str, scenario: str) -> dict:
    """Start a swarm in namespaces; returns per-newcomer first-shard times and sources."""
    out = work / scenario
    out.mkdir()
    seeders = [f"s{i}" for i in range(cfg.seeders)] if scenario == "peers" else []
    newcomers = [f"n{i}" for i in range(cfg.newcomers)]
    hosts = [HostSpec(name=h, mbit=cfg.mbit) for h in ["boot", *seeders, *newcomers]]
    env = {"PYTHONWARNINGS": "ignore::DeprecationWarning", "PYTHONUNBUFFERED": "1"}

    with NetSim(hosts=hosts, subnet=cfg.subnet, prefix=cfg.prefix) as net:

        def start(host: str, argv: list[str]):
            log_file = open(out / f"{host}.log", "wb")
            return net.popen(host, argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)

        ip = net.ip("boot")
        boot = start(
            "boot", cli("bootstrap", "--run", str(run), "--listen", f"/ip4/{ip}/tcp/0", "--grpc", f"{ip}:0")
        )
        initial = wait_for_line(out / "boot.log", INITIAL_PEERS, cfg.start_timeout_s, boot).group(1)

        def peer(host: str, *extra: str):
            cache = out / host
            extra += ("--events", str(out / f"{host}.events.jsonl"))
            return start(
                host,
                cli(
                    "peer",
                    "--initial-peers",
                    initial,
                    "--listen",
                    f"/ip4/{net.ip(host)}/tcp/0",
                    "--cache-dir",
                    str(cache),
                    "--threads",
                    "1",
                    *extra,
                ),
            )

        for host in seeders:
            shutil.copytree(run / "shards", out / host / run_id / "shards")
        plan = out / "seeder.inject.json"
        plan.write_text(json.dumps({"faults": [{"kind": "slowdown", "factor": SEEDER_SLOWDOWN}]}))
        procs = {h: peer(h, "--inject", str(plan)) for h in seeders}
        for h in seeders:
            wait_for_event(out / f"{h}.events.jsonl", Joined, cfg.start_timeout_s, procs[h], out / f"{h}.log")
        if seeders:
            time.sleep(2.0)  # the seeders' cache announcements reach the DHT
        procs |= {h: peer(h) for h in newcomers}
        results = {}
        for h in newcomers:
            events = out / f"{h}.events.jsonl"
            first = wait_for_event(events, FirstShard, cfg.first_shard_timeout_s, procs[h], out / f"{h}.log")
            fetched = next(iter(read_events(events, ShardFetched)), None)
            results[h] = {
                "first_shard_s": first.seconds,
                "transfer_s": fetched.seconds if fetched else None,
                "source": fetched.source.split()[0] if fetched else "cache",
                "bytes": fetched.bytes if fetched else None,
            }
        return results


def summarize(cfg: BenchConfig, scenarios: dict[str, dict]) -> dict:
    shard_bytes = cfg.shard_kib * 1024
    out = {
        "config": asdict(cfg),
        "machine": socket.gethostname(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "one_link_s": shard_bytes * 8 / (cfg.mbit * 1e6),  # one shard over one idle link
        "scenarios": scenarios,
    }
    for name, res in scenarios.items():
        times = [r["first_shard_s"] for r in res.values()]
        out[f"first_shard_s_{name}"] = round(statistics.mean(times), 3)
        out[f"first_shard_s_{name}_max"] = round(max(times), 3)
    return out


def table(s: dict) -> str:
    cfg = s["config"]
    lines = [
        f"first shard of a newcomer at {cfg['mbit']:g} Mbit/s: {cfg['newcomers']} newcomers at once, "
        f"{cfg['shard_kib']} KiB shards ({s['one_link_s']:.2f} s over one idle link), "
        f"{cfg['seeders']} seeders in the peers scenario",
        f"{'scenario':<12} {'newcomer':<9} {'first shard s':>13} {'transfer s':>10}  source",
    ]
    for name, res in s["scenarios"].items():
        for host, r in res.items():
            transfer = f"{r['transfer_s']:.2f}" if r["transfer_s"] is not None else "-"
            lines.append(f"{name:<12} {host:<9} {r['first_shard_s']:>13.2f} {transfer:>10}  {r['source']}")
    for name in s["scenarios"]:
        lines.append(
            f"{name:<12} {'mean':<9} {s[f'first_shard_s_{name}']:>13.2f}   (max {s[f'first_shard_s_{name}_max']:.2f})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    reason = missing_requirements()
    if reason:
        print(f"bench_shards: skipped: {reason}", file=sys.stderr)
        print(json.dumps({"first_shard_s_peers": None, "first_shard_s_coordinator": None, "skipped": reason}))
        return 0
    cleanup_stale(cfg.prefix)
    work = Path(tempfile.mkdtemp(prefix="barnraise-bench-shards-"))
    try:
        run, run_id = make_run(cfg, work)
        scenarios = {}
        for name in ("coordinator", "peers"):
            log.info("scenario %s", name)
            scenarios[name] = run_scenario(cfg, work, run, run_id, name)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"bench_shards: failed: {e} (logs in {work})", file=sys.stderr)
        print(json.dumps({"first_shard_s_peers": None, "first_shard_s_coordinator": None, "error": str(e)}))
        return 1
    except KeyboardInterrupt:
        print("bench_shards: interrupted", file=sys.stderr)
        return 130
    finally:
        if cfg.keep:
            log.info("work directory kept: %s", work)
    if not cfg.keep:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(cfg, scenarios)
    text = table(summary)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = (
        f"bench_shards-{time.strftime('%Y%m%d-%H%M%S')}-{summary['machine']}{'-quick' if cfg.quick else ''}"
    )
    (RESULTS_DIR / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS_DIR / f"{stem}.txt").write_text(text + "\n")
    print(text)
    keys = ("first_shard_s_peers", "first_shard_s_coordinator", "first_shard_s_peers_max")
    final = {k: summary[k] for k in (*keys, "first_shard_s_coordinator_max", "one_link_s")}
    final |= {"newcomers": cfg.newcomers, "seeders": cfg.seeders, "shard_bytes": cfg.shard_kib * 1024}
    final["result_file"] = str(RESULTS_DIR / f"{stem}.json")
    print(json.dumps(final))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
