from __future__ import annotations

from coordinator.health import build_report
from peer.cli.status_view import render_text
from protos import coordinator_pb2, heartbeat_pb2

NOW = 1_000_000.0


def beat(
    pid: str, phash: str = "aaaa", hash_round: int = 5, age: float = 1.0, **kw
) -> heartbeat_pb2.Heartbeat:
    return heartbeat_pb2.Heartbeat(
        peer_id=pid,
        run_id="r1",
        device="cpu",
        samples_per_s=100.0,
        round=6,
        loss=2.5,
        params_hash=phash,
        hash_round=hash_round,
        timestamp=NOW - age,
        **kw,
    )


RUN = coordinator_pb2.CoordinatorRecord(run_id="r1", genesis=NOW - 65, round_s=10.0, peer_id="boot")


def test_report_fields_dead_and_disagreement():
    beats = [
        beat("p1", samples_total=50),
        beat("p2", samples_total=100),
        beat("p3", phash="bbbb"),
        beat("p4", age=30.0),
    ]
    r = build_report(RUN, beats, NOW)
    assert r["run_id"] == "r1" and r["round"] == 6
    assert [p["peer_id"] for p in r["peers"]][:2] == ["p2", "p1"]
    kinds = {(f["kind"], f["peer_id"]) for f in r["findings"]}
    assert ("params_disagree", "p3") in kinds and ("dead", "p4") in kinds
    assert r["totals"]["peers_alive"] == 3


def test_render_strips_terminal_escapes():
    hostile = beat("p1\x1b[2J", phash="\x1b]0;pwned\x07")
    text = render_text(build_report(RUN, [hostile], NOW))
    assert "\x1b" not in text and "\x07" not in text


def test_render_empty():
    assert "no peers" in render_text(build_report(RUN, [], NOW))
