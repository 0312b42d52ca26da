"""State sync from several donors at once, over real hivemind P2P streams between real processes.

Four donor processes (``scripts/state_donor.py``) serve the same state and a fifth serves broken
chunks (a ``corrupt_state`` fault of ``peer/injection.py``); the downloader runs in this process.
One donor is killed (SIGKILL, its whole process group) once a quarter of the chunks have arrived:
the download completes from the others, every chunk checked against the announced hash list.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from barnraise.peer.net.auth import OPEN_RUN
from barnraise.peer.net.p2ploop import P2PLoop
from barnraise.peer.sync import chunks
from barnraise.peer.sync.donors import RateBook, fetch_state

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
NUMEL = 6 * (chunks.CHUNK_BYTES // 4) + 777  # 7 chunks per tensor, the last one short
N_CHUNKS = 2 * chunks.chunks_per_tensor(NUMEL)
RUN = "state-donor"  # scripts/state_donor.py's run id
SEED, ROUND = 3, 7


def _start_donor(initial: list[str], tmp: Path, corrupt: bool) -> subprocess.Popen:
    argv = [sys.executable, str(ROOT / "scripts" / "state_donor.py"), "--numel", str(NUMEL)]
    argv += ["--seed", str(SEED), "--round", str(ROUND), "--initial-peers", *initial]
    if corrupt:
        plan = tmp / "corrupt.json"
        plan.write_text(json.dumps({"faults": [{"kind": "corrupt_state"}]}))
        argv += ["--inject", str(plan)]
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT
    )


def _read_hello(proc: subprocess.Popen, timeout_s: float) -> dict:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not got or not got[0].strip():
        raise AssertionError(f"donor pid {proc.pid} did not start within {timeout_s} s")
    return json.loads(got[0])


def _donor_module():
    spec = importlib.util.spec_from_file_location("state_donor", ROOT / "scripts" / "state_donor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    import hivemind

    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    loop = P2PLoop(dht)
    initial = [str(m) for m in dht.get_visible_maddrs()]
    tmp = tmp_path_factory.mktemp("donors")
    procs = [_start_donor(initial, tmp, corrupt=i == 4) for i in range(5)]
    try:
        ids = [_read_hello(p, 90.0)["peer_id"] for p in procs]
        yield (
            loop,
            dict(zip(ids, procs, strict=True)),
            ids[:4],
            ids[4],
            _donor_module().make_state(NUMEL, SEED, ROUND),
        )
    finally:
        for p in procs:
            _kill(p)
            p.wait(timeout=10)
        loop.stop()
        dht.shutdown()


def _fetch(loop: P2PLoop, donors: list[str], on_chunk=None, rates=None):
    return loop.call(
        fetch_state(
            loop.p2p, donors, RUN, NUMEL, auth=OPEN_RUN, rates=rates, chunk_timeout_s=20.0, on_chunk=on_chunk
        ),
        120.0,
    )


def _same(state, expected) -> None:
    assert state.round == ROUND and state.params_hash() == expected.params_hash()
    assert torch.equal(state.params, expected.params) and torch.equal(state.momentum, expected.momentum)


def test_a_donor_serving_broken_chunks_is_dropped_and_the_others_complete(swarm):
    loop, _, honest, corrupt, expected = swarm
    rates = RateBook()
    got = _fetch(loop, [corrupt, *honest[:2]], rates=rates)
    _same(got.state, expected)
    assert "does not match its hash" in got.dropped[corrupt]
    assert corrupt not in got.served and sum(got.served.values()) == N_CHUNKS
    assert got.verified >= N_CHUNKS
    assert set(rates.rates) == set(got.served)  # measured rates rank these donors next time


def test_a_download_that_loses_a_donor_midway_completes_from_the_others(swarm):
    loop, procs, honest, _, expected = swarm
    kept: list[tuple[str, int]] = []
    killed: list[str] = []

    def on_chunk(donor: str, index: int) -> None:  # on the P2P loop: only a signal, no waiting
        kept.append((donor, index))
        if not killed and len(kept) >= N_CHUNKS // 4:
            victim = max(honest, key=lambda d: sum(1 for k, _ in kept if k == d))
            killed.append(victim)
            _kill(procs[victim])

    got = _fetch(loop, honest, on_chunk=on_chunk)
    _same(got.state, expected)
    victim = killed[0]
    assert victim in got.dropped, got.dropped
    assert got.served.get(victim, 0) >= 1  # it served before it died
    after = [d for d, _ in kept[N_CHUNKS // 4 + DEPTH_SLACK :]]
    assert after and victim not in after  # the rest came from the others
    assert sorted(i for _, i in kept) == list(range(N_CHUNKS))
    assert sum(got.served.values()) == N_CHUNKS and got.verified >= N_CHUNKS


DEPTH_SLACK = 4  # chunks of the victim already on their way when it was killed
