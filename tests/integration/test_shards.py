"""Data shards across real peers: leases survive a SIGKILL, bad copies are never trained, peers
serve each other when the coordinator is gone.

Peers run with ``--ledger FILE``: one JSON line per trained step (shard, token range, sha256 of the
bytes read), flushed at once, so even a SIGKILLed peer's ledger says what it trained. Coverage of
an epoch is computed from the ledgers of all peers: a gap is a trainable token no peer trained, a
duplicate is a token trained more than once.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.conftest import init_run, wait_for

SEQ_LEN = 64  # gpt-nano's context
STEP = 4 * SEQ_LEN  # tokens per step at --batch-size 4
STEPS_LEFT = 3  # kill a peer with at least this many steps of its shard left: it surely holds a lease
PEER_FLAGS = ["--threads", "1", "--lease-s", "4", "--slowdown", "5"]


def corpus(tmp_path: Path, n_bytes: int = 34_000) -> Path:
    """A small text corpus: ~9 shards of 4 KiB, a few seconds of training each."""
    src = tmp_path / "corpus"
    src.mkdir()
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(4000))
    (src / "a.py").write_text(text[:n_bytes])
    return src


def make_run(tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    init_run(
        run, "--dataset", str(corpus(tmp_path)), "--shard-kib", "4", "--batch-size", "4", "--round-s", "3"
    )
    return run, json.loads((run / "manifest.json").read_text())


def ledger(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trainable(n_tokens: int) -> int:
    return max(0, (n_tokens - 1) // SEQ_LEN) * SEQ_LEN


def coverage(
    rows: list[dict], manifest: dict, epoch: int
) -> tuple[int, int, dict[tuple[int, int], set[str]]]:
    """(gaps, duplicates, who trained each duplicated (shard, token)) for one epoch."""
    counts: dict[int, Counter] = defaultdict(Counter)
    who: dict[tuple[int, int], set[str]] = defaultdict(set)
    for r in rows:
        if r["epoch"] == epoch:
            for t in range(r["start"], r["end"]):
                counts[r["shard"]][t] += 1
                who[(r["shard"], t)].add(r["peer"])
    gaps = dups = 0
    for s in manifest["shards"]:
        c = counts[s.get("index", 0)]
        gaps += sum(1 for t in range(trainable(int(s["n_tokens"]))) if c[t] == 0)
        dups += sum(v - 1 for v in c.values() if v > 1)
    dup_who = {k: v for k, v in who.items() if counts[k[0]][k[1]] > 1}
    return gaps, dups, dup_who


def peer_id_in(log_path: Path, timeout_s: float = 60) -> str:
    found = wait_for(
        lambda: re.search(r"peer (\w+) joined run", log_path.read_text()), timeout_s, 0.5, "peer to join"
    )
    return found.group(1)


def seed_cache(peer_dir: Path, run: Path, run_id: str) -> None:
    """Give a peer every shard before it starts, as if it had trained an epoch already."""
    dest = peer_dir / run_id / "shards"
    dest.mkdir(parents=True)
    for shard in (run / "shards").iterdir():
        shutil.copy(shard, dest / shard.name)


@pytest.mark.timeout(150)
def test_killed_peer_shards_are_re_leased_and_the_epoch_is_covered_once(swarm, tmp_path, capsys):
    run, manifest = make_run(tmp_path)
    swarm.start_bootstrap(run)
    names = ("p1", "p2", "p3")
    peers = {n: swarm.start_peer(n, [*PEER_FLAGS, "--ledger", str(tmp_path / f"{n}.ledger")]) for n in names}
    sizes = {s.get("index", 0): int(s["n_tokens"]) for s in manifest["shards"]}

    def mid_shard():
        # a victim that has trained a few steps of a shard it has not finished: it holds a lease
        for n in names:
            rows = ledger(tmp_path / f"{n}.ledger")
            if len(rows) >= 3 and rows[-1]["end"] < trainable(sizes[rows[-1]["shard"]]) - STEPS_LEFT * STEP:
                return n
        return None

    victim = wait_for(mid_shard, 90, 0.1, "a peer in the middle of a shard")
    swarm.signal(peers[victim], signal.SIGKILL)
    killed_at = time.time()
    peers[victim].proc.wait(timeout=10)
    last = ledger(tmp_path / f"{victim}.ledger")[-1]  # what it trained up to the kill
    epoch = last["epoch"]
    survivors = [n for n in names if n != victim]
    wait_for(
        lambda: any(f"epoch {epoch} complete" in (tmp_path / f"{n}.log").read_text() for n in survivors),
        90,
        1.0,
        f"epoch {epoch} to complete without {victim}",
    )
    swarm.close()

    rows = [r for n in names for r in ledger(tmp_path / f"{n}.ledger")]
    victim_id = ledger(tmp_path / f"{victim}.ledger")[0]["peer"]
    gaps, dups, dup_who = coverage(rows, manifest, epoch)
    taken_over = [
        r for r in rows if r["epoch"] == epoch and r["shard"] == last["shard"] and r["peer"] != victim_id
    ]
    resumed_at = min((r["start"] for r in taken_over), default=None)
    with capsys.disabled():
        print(
            f"\n[shards] epoch {epoch}: killed {victim} in shard {last['shard']} at token {last['end']}; "
            f"re-leased from token {resumed_at}; gaps {gaps} tokens, duplicates {dups} tokens"
        )
    assert gaps == 0
    assert taken_over, "the killed peer's shard was never re-leased"
    assert min(r["t"] for r in taken_over) > killed_at, "re-leased before the victim died"
    assert 0 <= resumed_at <= last["end"]
    # duplicates only where the victim trained past the offset it last recorded
    for (shard, t), who in dup_who.items():
        assert victim_id in who and shard == last["shard"] and resumed_at <= t < last["end"], (shard, t, who)
    assert dups == last["end"] - resumed_at
    assert all(r["end"] - r["start"] > 0 for r in rows)


@pytest.mark.timeout(120)
def test_corrupted_copy_from_a_peer_is_discarded_and_fetched_elsewhere(swarm, tmp_path):
    run, manifest = make_run(tmp_path)
    swarm.start_bootstrap(run)
    seed_cache(tmp_path / "liar", run, manifest["run_id"])
    liar = swarm.start_peer("liar", [*PEER_FLAGS, "--slowdown", "20", "--serve-corrupt-shards"])
    honest = swarm.start_peer(
        "honest", [*PEER_FLAGS, "--slowdown", "1", "--ledger", str(tmp_path / "honest.ledger")]
    )
    liar_id = peer_id_in(liar.log_path)
    bad = re.compile(rf"shard (\d+) \(\w+\) from peer {liar_id} failed its sha256 check")

    def refetched():
        text = honest.log_path.read_text()
        return [
            int(s) for s in bad.findall(text) if re.search(rf"shard {s}: \d+ bytes from coordinator", text)
        ]

    shards = wait_for(refetched, 90, 0.5, "a bad copy from the liar, then a good one from the coordinator")
    wait_for(lambda: {r["shard"] for r in ledger(tmp_path / "honest.ledger")} & set(shards), 30, 0.5)
    swarm.close()
    digests = {s.get("index", 0): s["sha256"] for s in manifest["shards"]}
    rows = ledger(tmp_path / "honest.ledger")
    assert rows and all(r["sha256"] == digests[r["shard"]] for r in rows), (
        "trained on bytes that fail the hash"
    )
    cached = {p.name for p in (tmp_path / "honest" / manifest["run_id"] / "shards").iterdir()}
    assert cached <= set(digests.values())


@pytest.mark.timeout(120)
def test_peers_keep_getting_shards_from_each_other_without_the_coordinator(swarm, tmp_path):
    run, manifest = make_run(tmp_path)
    boot = swarm.start_bootstrap(run)
    seed_cache(tmp_path / "seeder", run, manifest["run_id"])
    seeder = swarm.start_peer("seeder", [*PEER_FLAGS, "--slowdown", "20"])
    newcomer = swarm.start_peer(
        "newcomer", [*PEER_FLAGS, "--slowdown", "1", "--ledger", str(tmp_path / "new.ledger")]
    )
    seeder_id = peer_id_in(seeder.log_path)
    peer_id_in(newcomer.log_path)  # both have the manifest: the coordinator is not needed any more
    swarm.signal(boot, signal.SIGKILL)
    boot.proc.wait(timeout=10)
    stopped_at, log_mark = time.time(), len(newcomer.log_path.read_text())

    def after_stop() -> str:
        return newcomer.log_path.read_text()[log_mark:]

    wait_for(
        lambda: len(re.findall(rf"bytes from peer {seeder_id}", after_stop())) >= 2,
        60,
        0.5,
        "two shards from the seeder with the coordinator gone",
    )
    swarm.close()
    assert not re.search(r"bytes from coordinator", after_stop()), (
        "the coordinator served shards after it died"
    )
    digests = {s.get("index", 0): s["sha256"] for s in manifest["shards"]}
    rows = [r for r in ledger(tmp_path / "new.ledger") if r["t"] > stopped_at]
    assert len({r["shard"] for r in rows}) >= 2
    assert all(r["sha256"] == digests[r["shard"]] for r in rows)
