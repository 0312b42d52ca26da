"""A full stop and a resume: kill -9 every process mid-run, start the bootstrap and the peers again
on the same run directory, and the run goes on from the newest checkpoint: round numbers after it,
its loss (not the untrained model's), its place in the data."""

from __future__ import annotations

import json
import math
import signal
import time

import pytest

from barnraise.coordinator import checkpoints as rules
from barnraise.peer.events import RangeTrained, RoundApplied, StateAdopted, WindowTrained, read_events
from tests.conftest import init_run, run_cli, status_json, wait_for

pytestmark = pytest.mark.timeout(300)

EVERY = ["--checkpoint-every", "2"]
PEER = ["--threads", "1", "--max-compute-share", "1", *EVERY]  # it watches the loss fall


def after(events, t0):
    return [e for e in events if e.t >= t0]


def test_kill_everything_and_resume_from_the_checkpoint(swarm, tmp_path):
    run = tmp_path / "run"
    init_run(run, "--round-s", "3", "--inner-lr", "0.003")
    swarm.start_bootstrap(run, extra=EVERY)
    peers = [swarm.start_peer(f"peer{i}", PEER) for i in (1, 2)]

    def saved():
        newest = rules.newest_info(run / "checkpoints")
        return newest if newest is not None and newest.round >= 7 and newest.loss else None

    before = wait_for(saved, 150, every_s=1, what="the bootstrap's checkpoint of round 7 or later")
    for child in swarm.children:  # every process, mid-run, no goodbye
        swarm.signal(child, signal.SIGKILL)
    for child in swarm.children:
        child.proc.wait(10)
    newest = rules.newest_info(run / "checkpoints")
    assert newest.round >= before.round and newest.loss < 0.8 * math.log(256)
    losses_before = [
        e.loss for e in read_events(peers[0].events_path, WindowTrained) if math.isfinite(e.loss)
    ]
    assert newest.loss < losses_before[0] - 0.3  # the run had learnt something worth keeping

    t0 = time.time()
    swarm.start_bootstrap(run, extra=EVERY)
    restarted = [swarm.start_peer(f"peer{i}", PEER) for i in (1, 2)]

    def applied():
        got = [after(read_events(c.events_path, RoundApplied), t0) for c in restarted]
        return got if all(got) else None

    rounds = wait_for(applied, 120, every_s=1, what="a round applied after the restart")
    for child, got in zip(restarted, rounds, strict=True):
        adopted = after(read_events(child.events_path, StateAdopted), t0)
        assert adopted and adopted[0].round >= newest.round, adopted  # went on from a checkpoint
        assert got[0].round > adopted[0].round  # numbered after the checkpoint's round
    # The checkpoint's loss within noise, far from the untrained model's ln(256) = 5.55. A first
    # window can be a single batch, and one batch from a hard stretch of a shard can sit near
    # ln(256) however trained the model is; from scratch, both peers' first windows would.
    firsts = [
        next(e.loss for e in after(read_events(c.events_path, WindowTrained), t0) if math.isfinite(e.loss))
        for c in restarted
    ]
    assert abs(min(firsts) - newest.loss) < 0.5 * (math.log(256) - newest.loss), (firsts, newest.loss)
    check_data_position(restarted[0], run, t0)
    report = status_json(swarm.initial_peers)
    assert report["checkpoint"] is not None and report["checkpoint"]["round"] >= newest.round
    res = run_cli("export", "--initial-peers", swarm.initial_peers, "--out", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["round"] >= newest.round


def check_data_position(child, run, t0):
    """Shards the checkpoint had partly trained go on from its offsets, not from token 0."""
    adopted = after(read_events(child.events_path, StateAdopted), t0)[0]
    roots = [run / "checkpoints", *(child.events_path.parent / child.name).glob("*/checkpoints")]
    infos = [
        rules.read_info(r / rules.dir_name(adopted.round))
        for r in roots
        if (r / rules.dir_name(adopted.round)).exists()
    ]
    assert infos, roots
    position = infos[0].position
    ranges = [e for e in after(read_events(child.events_path, RangeTrained), t0) if e.epoch == position.epoch]
    for shard, offset in position.offsets.items():
        starts = [e.start for e in ranges if e.shard == shard]
        assert not starts or min(starts) >= offset, (shard, offset, starts)
    assert not {e.shard for e in ranges} & set(position.done)
