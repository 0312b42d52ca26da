"""Several peers on one machine: two plain ``barnraise peer --initial-peers X`` with one home
directory both join, train and agree (peer/slots.py); their settings come from the environment
and from a config file (peer/cli/settings.py)."""

from __future__ import annotations

import pytest

from barnraise.peer.events import Joined, RoundApplied, read_events
from tests.conftest import init_run, wait_for

pytestmark = pytest.mark.timeout(150)

MAX_ROUNDS = 5


def applied(child) -> dict[int, tuple[str, int]]:
    """round -> (params hash after it, group size), from a peer's events."""
    return {e.round: (e.params_hash, e.members) for e in read_events(child.events_path, RoundApplied)}


def test_two_plain_peers_share_a_home_and_agree(swarm, tmp_path):
    init_run(tmp_path / "run", "--round-s", "3")
    swarm.start_bootstrap(tmp_path / "run")
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "volunteer.toml"
    config.write_text(f"initial-peers = ['{swarm.initial_peers}']\nmax_rounds = {MAX_ROUNDS}\nthreads = 1\n")
    env = {"HOME": str(home), "BARNRAISE_LISTEN": "/ip4/127.0.0.1/tcp/0"}
    peers = []
    for name, settings in [
        ("first", {"BARNRAISE_MAX_ROUNDS": str(MAX_ROUNDS), "BARNRAISE_THREADS": "1"}),
        ("second", {"BARNRAISE_CONFIG": str(config)}),
    ]:
        child = swarm.spawn(
            name,
            [
                "peer",
                "--initial-peers",
                swarm.initial_peers,
                "--events",
                str(tmp_path / f"{name}.events.jsonl"),
            ],
            env={**env, **settings},
        )
        child.events_path = tmp_path / f"{name}.events.jsonl"
        peers.append(child)

    wait_for(
        lambda: all(p.proc.poll() is not None for p in peers),
        120,
        what="both peers to leave after their rounds",
    )
    assert [p.proc.returncode for p in peers] == [0, 0], [p.log_path.read_text()[-2000:] for p in peers]

    cache = home / ".cache" / "barnraise"
    ids = {read_events(p.events_path, Joined)[0].peer_id for p in peers}
    assert len(ids) == 2, "both peers ran with one identity"
    logs = "".join(p.log_path.read_text() for p in peers)
    assert f"identity {cache / 'peer.id'} (slot 0" in logs
    assert f"identity {cache / 'slot-1' / 'peer.id'} (slot 1" in logs
    assert len(list((cache).glob("*/shards"))) == 1, "the run's shard cache is shared"

    first, second = (applied(p) for p in peers)
    together = [r for r in set(first) & set(second) if first[r] == second[r] and first[r][1] == 2]
    assert together, f"no round averaged together with one result: {first} {second}"
    assert all(first[r][0] == second[r][0] for r in set(first) & set(second) if first[r][1] == 2)
