"""A lying reducer in a real swarm: one member of a 4-peer group reduces its part wrongly but
consistently (the same wrong bytes to everyone, so the result-hash check passes). The honest
members check it on signed inputs, catch it, name it, never apply an average it reduced, ban it,
and go on averaging without it; no honest peer is ever accused."""

from __future__ import annotations

import pytest

from barnraise.peer.events import ExchangeDone, Joined, RoundApplied, read_events
from tests.conftest import init_run, inject, status_json, wait_for

pytestmark = pytest.mark.timeout(240)


def peer_id(child) -> str | None:
    joined = read_events(child.events_path, Joined)
    return joined[0].peer_id if joined else None


def test_a_lying_reducer_is_caught_named_banned_and_its_average_never_applied(swarm, tmp_path):
    init_run(tmp_path / "run", "--round-s", "4")
    swarm.start_bootstrap(tmp_path / "run")
    honest = [swarm.start_peer(f"honest{i}", ["--threads", "1"]) for i in (1, 2, 3)]
    liar = swarm.start_peer(
        "liar", ["--threads", "1", *inject(tmp_path / "lie.json", {"kind": "fault", "mode": "lie"})]
    )
    wait_for(lambda: peer_id(liar) and all(peer_id(c) for c in honest), 90, what="every peer joined")
    liar_id, honest_ids = peer_id(liar), {peer_id(c) for c in honest}

    def exchanges(child) -> list[ExchangeDone]:
        return read_events(child.events_path, ExchangeDone)

    def caught_by(child) -> set[str]:
        return {p for e in exchanges(child) for p in e.caught}

    def rounds_without_liar_applied(child) -> list[int]:
        alone = {
            e.round for e in exchanges(child) if e.ok and liar_id not in e.members and len(e.members) >= 2
        }
        return sorted(alone & {e.round for e in read_events(child.events_path, RoundApplied)})

    wait_for(
        lambda: (
            all(liar_id in caught_by(c) for c in honest)
            and all(len(rounds_without_liar_applied(c)) >= 2 for c in honest)
        ),
        180,
        every_s=2,
        what="every honest peer to catch the liar, then average twice without it",
    )
    for c in honest:
        assert caught_by(c) == {liar_id}, "an honest peer was accused"
        with_liar = [e for e in exchanges(c) if liar_id in e.members]
        assert with_liar, "the liar was never in a group with the honest peers"
        applied = {e.round for e in read_events(c.events_path, RoundApplied)}
        poisoned = [e.round for e in with_liar if e.round in applied]
        assert not poisoned, f"applied rounds {poisoned} that the liar reduced"
        assert all(liar_id in e.caught and not e.ok for e in with_liar), (
            "a round with the liar went unchecked"
        )
        after = min(e.round for e in with_liar if e.caught)
        assert not [e for e in exchanges(c) if e.round > after + 1 and liar_id in e.members], (
            "liar not banned"
        )

    report = status_json(swarm.initial_peers)
    named = {p["peer_id"]: p["caught_reducers"] for p in report["peers"] if p["peer_id"] in honest_ids}
    assert any(any(entry.startswith(liar_id) for entry in v) for v in named.values()), named
    assert any(f["kind"] == "lying_reducer" and f["peer_id"] == liar_id for f in report["findings"])
    assert not [f for f in report["findings"] if f["kind"] == "lying_reducer" and f["peer_id"] != liar_id]
