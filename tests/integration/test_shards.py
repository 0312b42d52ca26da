"""Data shards across real peers: leases survive a SIGKILL, bad copies are never trained, peers
serve each other when the coordinator is gone.

Every peer writes its events (``--events``, passed by ``Swarm.start_peer``), among them one
``range_trained`` per trained step (shard, token range, sha256 of the bytes read), flushed at once,
so even a SIGKILLed peer's file says what it trained. Coverage of an epoch is computed from the
ranges of all peers: a gap is a trainable token no peer trained, a duplicate is a token trained
more than once. Peers are slowed down by injected faults (``--inject``) so they train for longer.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from barnraise.peer.events import BadCopy, EpochComplete, Joined, RangeTrained, ShardFetched, read_events
from tests.conftest import init_run, inject, wait_for

SEQ_LEN = 64  # gpt-nano's context
STEP = 4 * SEQ_LEN  # tokens per step at --batch-size 4
STEPS_LEFT = 3  # kill a peer with at least this many steps of its shard left: it surely holds a lease
LEASE_S = 5.0  # short, so a dead peer's shard comes back soon; renewals every LEASE_S / 3
RECORDED_AFTER_S = LEASE_S / 3 + 1.5  # a renewal has recorded progress this long into a shard
PATIENCE_S = 30.0  # on a machine too fast for that, settle for a peer halfway through a shard
PEER_FLAGS = ["--threads", "1", "--lease-s", str(LEASE_S)]


def slowed(tmp_path: Path, name: str, factor: float, *more: dict) -> list[str]:
    """Flags for a peer whose compute runs ``factor`` times slower, with ``more`` faults."""
    return [
        *PEER_FLAGS,
        *inject(tmp_path / f"{name}.inject.json", {"kind": "slowdown", "factor": factor}, *more),
    ]


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


def ranges(child) -> list[RangeTrained]:
    return read_events(child.events_path, RangeTrained)


def trainable(n_tokens: int) -> int:
    return max(0, (n_tokens - 1) // SEQ_LEN) * SEQ_LEN


def coverage(
    rows: list[RangeTrained], manifest: dict, epoch: int
) -> tuple[int, int, dict[tuple[int, int], set[str]]]:
    """(gaps, duplicates, who trained each duplicated (shard, token)) for one epoch."""
    counts: dict[int, Counter] = defaultdict(Counter)
    who: dict[tuple[int, int], set[str]] = defaultdict(set)
    for r in rows:
        if r.epoch == epoch:
            for t in range(r.start, r.end):
                counts[r.shard][t] += 1
                who[(r.shard, t)].add(r.peer)
    gaps = dups = 0
    for s in manifest["shards"]:
        c = counts[s.get("index", 0)]
        gaps += sum(1 for t in range(trainable(int(s["n_tokens"]))) if c[t] == 0)
        dups += sum(v - 1 for v in c.values() if v > 1)
    dup_who = {k: v for k, v in who.items() if counts[k[0]][k[1]] > 1}
    return gaps, dups, dup_who


def peer_id_of(child, timeout_s: float = 60) -> str:
    joined = wait_for(lambda: read_events(child.events_path, Joined), timeout_s, 0.5, "peer to join")
    return joined[0].peer_id


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
    peers = {n: swarm.start_peer(n, slowed(tmp_path, n, 10)) for n in names}
    sizes = {s.get("index", 0): int(s["n_tokens"]) for s in manifest["shards"]}

    began = time.monotonic()

    def mid_shard():
        # a peer in the middle of a shard (it holds a lease), ideally one whose progress a renewal
        # has recorded already; returns (peer, whether a renewal surely recorded progress)
        for n in names:
            rows = ranges(peers[n])
            if not rows or rows[-1].end >= trainable(sizes[rows[-1].shard]) - STEPS_LEFT * STEP:
                continue
            here = [r for r in rows if (r.epoch, r.shard) == (rows[-1].epoch, rows[-1].shard)]
            if time.time() - here[0].t > RECORDED_AFTER_S:
                return n, True
            halfway = rows[-1].end >= trainable(sizes[rows[-1].shard]) // 2
            if halfway and time.monotonic() - began > PATIENCE_S:
                return n, False
        return None

    victim, recorded = wait_for(mid_shard, 90, 0.1, "a peer in the middle of a shard")
    swarm.signal(peers[victim], signal.SIGKILL)
    killed_at = time.time()
    peers[victim].proc.wait(timeout=10)
    last = ranges(peers[victim])[-1]  # what it trained up to the kill
    epoch = last.epoch
    survivors = [n for n in names if n != victim]
    wait_for(
        lambda: any(
            e.epoch == epoch for n in survivors for e in read_events(peers[n].events_path, EpochComplete)
        ),
        90,
        1.0,
        f"epoch {epoch} to complete without {victim}",
    )
    swarm.close(grace_s=1.0)  # events are flushed line by line: no need for a clean exit

    rows = [r for n in names for r in ranges(peers[n])]
    victim_id = last.peer
    gaps, dups, dup_who = coverage(rows, manifest, epoch)
    taken_over = [r for r in rows if r.epoch == epoch and r.shard == last.shard and r.peer != victim_id]
    resumed_at = min((r.start for r in taken_over), default=None)
    with capsys.disabled():
        print(
            f"\n[shards] epoch {epoch}: killed {victim} in shard {last.shard} at token {last.end}; "
            f"re-leased from token {resumed_at}; gaps {gaps} tokens, duplicates {dups} tokens"
        )
    assert gaps == 0
    assert taken_over, "the killed peer's shard was never re-leased"
    assert min(r.t for r in taken_over) > killed_at, "re-leased before the victim died"
    assert 0 <= resumed_at <= last.end
    if recorded:
        assert resumed_at > 0, "the next owner did not resume from the offset the victim recorded"
    # duplicates only where the victim trained past the offset it last recorded
    for (shard, t), who in dup_who.items():
        assert victim_id in who and shard == last.shard and resumed_at <= t < last.end, (shard, t, who)
    assert dups == last.end - resumed_at
    assert all(r.end - r.start > 0 for r in rows)


@pytest.mark.timeout(120)
def test_corrupted_copy_from_a_peer_is_discarded_and_fetched_elsewhere(swarm, tmp_path):
    run, manifest = make_run(tmp_path)
    swarm.start_bootstrap(run)
    seed_cache(tmp_path / "liar", run, manifest["run_id"])
    liar = swarm.start_peer("liar", slowed(tmp_path, "liar", 20, {"kind": "corrupt_shards"}))
    honest = swarm.start_peer("honest", PEER_FLAGS)
    liar_id = peer_id_of(liar)

    def refetched() -> list[int]:
        bad = {e.index for e in read_events(honest.events_path, BadCopy) if e.source == f"peer {liar_id}"}
        good = read_events(honest.events_path, ShardFetched)
        return sorted(
            i for i in bad if any(e.index == i and e.source.startswith("coordinator ") for e in good)
        )

    shards = wait_for(refetched, 90, 0.5, "a bad copy from the liar, then a good one from the coordinator")
    wait_for(lambda: {r.shard for r in ranges(honest)} & set(shards), 30, 0.5)
    swarm.close(grace_s=1.0)
    digests = {s.get("index", 0): s["sha256"] for s in manifest["shards"]}
    rows = ranges(honest)
    assert rows and all(r.sha256 == digests[r.shard] for r in rows), "trained on bytes that fail the hash"
    cached = {p.name for p in (tmp_path / "honest" / manifest["run_id"] / "shards").iterdir()}
    assert cached <= set(digests.values())


@pytest.mark.timeout(120)
def test_peers_keep_getting_shards_from_each_other_without_the_coordinator(swarm, tmp_path):
    run, manifest = make_run(tmp_path)
    boot = swarm.start_bootstrap(run)
    seed_cache(tmp_path / "seeder", run, manifest["run_id"])
    seeder = swarm.start_peer("seeder", slowed(tmp_path, "seeder", 20))
    newcomer = swarm.start_peer("newcomer", PEER_FLAGS)
    seeder_id = peer_id_of(seeder)
    peer_id_of(newcomer)  # both have the manifest: the coordinator is not needed any more
    swarm.signal(boot, signal.SIGKILL)
    boot.proc.wait(timeout=10)
    stopped_at = time.time()

    def after_stop() -> list[ShardFetched]:
        return [e for e in read_events(newcomer.events_path, ShardFetched) if e.t > stopped_at]

    def kept_going() -> bool:
        fetched = [e for e in after_stop() if e.source == f"peer {seeder_id}"]
        trained = {r.shard for r in ranges(newcomer) if r.t > stopped_at}
        return len(fetched) >= 2 and len(trained) >= 2  # a range is recorded once it is trained

    wait_for(kept_going, 60, 0.5, "two shards from the seeder, trained, with the coordinator gone")
    swarm.close(grace_s=1.0)
    assert not [e for e in after_stop() if e.source.startswith("coordinator ")], (
        "the coordinator served shards after it died"
    )
    digests = {s.get("index", 0): s["sha256"] for s in manifest["shards"]}
    rows = [r for r in ranges(newcomer) if r.t > stopped_at]
    assert len({r.shard for r in rows}) >= 2
    assert all(r.sha256 == digests[r.shard] for r in rows)


@pytest.mark.timeout(90)
def test_claims_race_on_a_real_dht_with_one_winner_and_expired_leases_resume(tmp_path):
    """Three DHT nodes claim one shard at the same moment: exactly one wins; the offset it
    recorded survives its silence, and the next owner resumes from it after expiry."""
    from concurrent.futures import ThreadPoolExecutor

    from barnraise.coordinator import keys, signing
    from barnraise.coordinator.dhtnode import DHTOptions, start_dht, visible_maddrs
    from barnraise.coordinator.leases import LeaseConfig
    from barnraise.peer.data.leasing import LeaseClient
    from barnraise.peer.net.auth import dht_extra
    from barnraise.protos import manifest_pb2

    def node(i: int, entry: tuple[str, ...] = ()):
        """A DHT node whose identity signs the lease records it stores, as a peer daemon's does."""
        path = tmp_path / f"node{i}.id"
        signing.register_signer(keys.ensure_identity(path, replace_foreign=False))
        local = ("/ip4/127.0.0.1/tcp/0",)
        return start_dht(DHTOptions(initial_peers=entry, listen=local, identity=path, extra=dht_extra()))

    nodes = [node(0)]
    try:
        entry = tuple(visible_maddrs(nodes[0])[:1])
        nodes += [node(i, entry) for i in (1, 2)]
        shards = [
            manifest_pb2.ShardInfo(sha256=f"{i:064x}", size_bytes=4000, n_tokens=4000, index=i)
            for i in range(3)
        ]
        manifest = manifest_pb2.RunManifest(run_id="race", seed=1, shards=shards)
        cfg = LeaseConfig(lease_s=3.0, settle_s=0.3)
        clients = [LeaseClient(n, manifest, n.peer_id.to_base58(), cfg) for n in nodes]

        with ThreadPoolExecutor(len(clients)) as pool:
            held = list(pool.map(lambda c: c.claim(0, 1), clients))
        winners = [i for i, h in enumerate(held) if h is not None]
        assert len(winners) == 1, f"{len(winners)} peers hold shard 1"
        w = winners[0]
        losers = [c for i, c in enumerate(clients) if i != w]
        lease = held[w]
        lease.offset = 1280
        assert clients[w].renew(lease) and not lease.lost
        assert all(c.claim(0, 1) is None for c in losers)  # held: nobody else gets it

        time.sleep(cfg.lease_s + 0.5)  # the holder goes silent past its expiry
        taken = losers[0].claim(0, 1)
        assert taken is not None and taken.offset == 1280
        assert not clients[w].renew(lease) and lease.lost  # the old holder learns it lost the shard

        assert losers[0].mark_done(0, 1) and clients[w].read_done(0) == {1}
        assert clients[w].publish_epoch(4) and losers[1].read_epoch_hint() == 4
    finally:
        for n in nodes:
            n.shutdown()
