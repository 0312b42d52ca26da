"""Clock skew on real processes: a peer whose machine clock reads 5 s ahead, and one 5 s behind,
estimate their offset against the swarm, correct their round clock and join every round; status
shows each peer's offset."""

from __future__ import annotations

import pytest

from barnraise.peer.events import ClockEstimated, Joined, RoundApplied, RoundMissed, read_events
from tests.conftest import init_run, inject, run_cli, status_json, wait_for

pytestmark = pytest.mark.timeout(240)

ROUND_S = 6
ROUNDS = 5  # consecutive rounds each skewed peer must apply after its first


def rounds(child, kind) -> list[int]:
    return sorted({e.round for e in read_events(child.events_path, kind)})


def test_peers_with_skewed_clocks_join_every_round(swarm, tmp_path):
    init_run(tmp_path / "run", "--round-s", str(ROUND_S))
    swarm.start_bootstrap(tmp_path / "run")
    honest = swarm.start_peer("p0", ["--threads", "1"])
    skewed = {
        +5.0: swarm.start_peer(
            "ahead", ["--threads", "1", *inject(tmp_path / "ahead.json", {"kind": "clock", "offset_s": 5})]
        ),
        -5.0: swarm.start_peer(
            "behind", ["--threads", "1", *inject(tmp_path / "behind.json", {"kind": "clock", "offset_s": -5})]
        ),
    }

    for skew, child in skewed.items():
        first = wait_for(
            lambda c=child: read_events(c.events_path, ClockEstimated),
            90,
            what=f"{child.name}'s clock estimate",
        )[0]
        assert abs(first.offset_s - skew) < 0.5, (child.name, first)
        assert first.sources >= 1

    def all_applied():
        return all(len(rounds(c, RoundApplied)) >= ROUNDS + 1 for c in skewed.values())

    wait_for(all_applied, 150, what=f"both skewed peers applying {ROUNDS + 1} rounds")
    for child in skewed.values():
        applied = rounds(child, RoundApplied)
        r0 = applied[0]
        window = list(range(r0, r0 + ROUNDS + 1))
        assert [r for r in window if r not in applied] == [], (child.name, applied)
        missed = [r for r in rounds(child, RoundMissed) if r0 <= r <= window[-1]]
        assert not missed, (child.name, missed)
    # the skewed peers averaged with the honest one: same parameters after a common round
    hashes = {
        c.name: {e.round: e.params_hash for e in read_events(c.events_path, RoundApplied)}
        for c in (honest, *skewed.values())
    }
    common = set(hashes["p0"]) & set(hashes["ahead"]) & set(hashes["behind"])
    assert common, hashes
    r = max(common)
    assert hashes["p0"][r] == hashes["ahead"][r] == hashes["behind"][r]

    # status shows each peer's offset, in --json and in text
    ids = {read_events(c.events_path, Joined)[0].peer_id: skew for skew, c in skewed.items()}
    ids[read_events(honest.events_path, Joined)[0].peer_id] = 0.0

    def offsets():
        report = status_json(swarm.initial_peers)
        got = {p["peer_id"]: p["clock_offset_s"] for p in report["peers"] if p["peer_id"] in ids}
        return got if len(got) == 3 and None not in got.values() else None

    got = wait_for(offsets, 40, every_s=2, what="status showing every peer's clock offset")
    for pid, skew in ids.items():
        assert abs(got[pid] - skew) < 0.5, (pid, got[pid], skew)
    text = run_cli("status", "--initial-peers", swarm.initial_peers, timeout=40)
    assert text.returncode == 0, text.stderr
    assert ("clock" in text.stdout and "+5.0" in text.stdout) or "+4.9" in text.stdout, text.stdout
