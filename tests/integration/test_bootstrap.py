"""Bootstrap node: persistent identity, refusal to serve corrupted shards, bad input."""

from __future__ import annotations

import re
import time

import pytest

from barnraise.peer.cli.launch import Swarm
from barnraise.peer.events import RoundApplied, ShardSkipped, read_events
from tests.conftest import init_run, run_cli, wait_for

pytestmark = pytest.mark.timeout(180)


def peer_id_of(maddr: str) -> str:
    return maddr.rsplit("/p2p/", 1)[1]


def test_restarted_bootstrap_keeps_its_peer_id(tmp_path):
    """Also: the run key may live outside the run directory (``--run-key FILE``); with none, the
    bootstrap refuses to start, in one line saying what to do."""
    init_run(tmp_path / "run")
    ids = []
    for attempt in range(2):
        s = Swarm(workdir=tmp_path / f"s{attempt}")
        s.workdir.mkdir()
        try:
            s.start_bootstrap(
                tmp_path / "run", extra=["--run-key", str(tmp_path / "kept.key")] if attempt else None
            )
            ids.append(peer_id_of(s.initial_peers))
        finally:
            s.close()
        if not attempt:
            (tmp_path / "run" / "run.key").rename(tmp_path / "kept.key")
            res = run_cli("bootstrap", "--run", str(tmp_path / "run"), "--listen", "/ip4/127.0.0.1/tcp/0")
            lines = res.stderr.strip().splitlines()
            assert res.returncode != 0 and len(lines) == 1, res.stderr
            assert "no run key at" in lines[0] and "--run-key FILE" in lines[0], res.stderr
    assert ids[0] == ids[1]
    assert (tmp_path / "run" / "bootstrap.id").exists()


def small_corpus(tmp_path, n_bytes: int = 200_000):
    src = tmp_path / "corpus"
    src.mkdir()
    text = "".join(f"def f{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(20_000))
    (src / "a.py").write_text(text[:n_bytes])
    return src


def edit_manifest(run, edit, resign: bool) -> None:
    """Change the manifest on disk; with ``resign`` the run authority signs the edit (a bad run)."""
    from barnraise.coordinator import keys
    from barnraise.coordinator.signing import sign_manifest
    from barnraise.protos import manifest_pb2

    signed = manifest_pb2.SignedManifest.FromString((run / "manifest.pb").read_bytes())
    m = manifest_pb2.RunManifest.FromString(signed.manifest)
    edit(m)
    if resign:
        signed = sign_manifest(m, keys.load_run_key(run / keys.RUN_KEY_FILE))
    else:
        signed.manifest = m.SerializeToString()
    (run / "manifest.pb").write_bytes(signed.SerializeToString())


def test_edited_manifest_is_refused_by_the_bootstrap(tmp_path):
    run = tmp_path / "run"
    init_run(run, "--shard-kib", "64", "--dataset", str(small_corpus(tmp_path, 100_000)))

    def edit(m):
        m.shards[0].sha256 = "f" * 64

    edit_manifest(run, edit, resign=False)
    res = run_cli("bootstrap", "--run", str(run), "--listen", "/ip4/127.0.0.1/tcp/0", timeout=60)
    assert res.returncode != 0
    assert "signature does not verify" in res.stderr and "Traceback" not in res.stderr


def test_corrupted_shard_and_edited_hash_are_never_trained_on(swarm, tmp_path):
    run = tmp_path / "run"
    init_run(run, "--round-s", "4", "--shard-kib", "32", "--dataset", str(small_corpus(tmp_path)))
    shards = sorted((run / "shards").iterdir())
    assert len(shards) >= 4
    victim = shards[0]
    victim.write_bytes(victim.read_bytes()[:-10] + b"XXXXXXXXXX")
    edited = "f" * 64
    bad = set()

    def edit(m):
        bad.update({m.shards[-1].index, next(s.index for s in m.shards if s.sha256 == victim.name)})
        m.shards[-1].sha256 = edited

    edit_manifest(run, edit, resign=True)
    swarm.start_bootstrap(run)
    peer = swarm.start_peer("peer1", ["--threads", "1"])

    def skipped() -> set[int]:
        return {e.index for e in read_events(peer.events_path, ShardSkipped)}

    wait_for(
        lambda: skipped() == bad and read_events(peer.events_path, RoundApplied),
        120,
        what="the peer to skip both bad shards and train",
    )
    swarm.close(grace_s=2.0)
    boot_log = (tmp_path / "bootstrap.log").read_text()
    assert "does not match its sha256" in boot_log
    cached = {p.name for p in (tmp_path / "peer1").rglob("*") if p.is_file()}
    assert victim.name not in cached and edited not in cached


def test_peer_refuses_a_run_with_no_valid_shard(swarm, tmp_path):
    run = tmp_path / "run"
    init_run(run, "--round-s", "4", "--shard-kib", "64", "--dataset", str(small_corpus(tmp_path, 100_000)))
    for shard in (run / "shards").iterdir():
        shard.write_bytes(b"corrupted" + shard.read_bytes()[9:])
    swarm.start_bootstrap(run)
    peer = swarm.start_peer("peer1", ["--threads", "1"])
    code = peer.proc.wait(timeout=90)
    text = peer.log_path.read_text()
    assert code != 0
    assert "refusing to train" in text and "Traceback" not in text


def test_init_missing_dataset_exits_2_with_one_line(tmp_path):
    res = run_cli("init", str(tmp_path / "run"), "--dataset", str(tmp_path / "nope"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], res.stderr
    assert not (tmp_path / "run").exists()


def test_peer_with_unreachable_initial_peers_fails_fast(tmp_path):
    dead = "/ip4/127.0.0.1/tcp/9/p2p/QmVEbitXwHQcQVBTkxwgm2geLdtPSQSDVfkcy9iQkVWNy8"
    t0 = time.monotonic()
    res = run_cli("peer", "--initial-peers", dead, "--cache-dir", str(tmp_path / "c"), timeout=60)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0
    assert elapsed < 30, elapsed
    assert re.search(r"could not reach any initial peer", res.stderr), res.stderr
    assert "Traceback" not in res.stderr
