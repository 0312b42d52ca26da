"""Health report, findings, hostile records, renderers, JSON schema, metrics, plot: no sockets."""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import random
import time

import pytest
from rich.console import Console

from barnraise.coordinator import records
from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.health import DEAD_AFTER_S, RunInfo, build_report, choose_run, sanitize
from barnraise.coordinator.status_schema import schema_errors
from barnraise.peer.cli.status_view import render_rich, render_text
from barnraise.protos import coordinator_pb2, heartbeat_pb2

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: the fixed clock of every test here
RUN = RunInfo(
    run_id="r1", genesis=NOW - 65, round_s=10.0, version="0.1.0", group_size=32, source="coordinator"
)


def beat(pid: str, **kw) -> heartbeat_pb2.Heartbeat:
    fields = dict(
        peer_id=pid,
        run_id="r1",
        version="0.1.0",
        device="cpu",
        samples_per_s=100.0,
        round=6,
        phase=heartbeat_pb2.PHASE_TRAINING,
        loss=2.5,
        params_hash="aaaa",
        hash_round=5,
        init_hash="init",
        timestamp=NOW - 1.0,
        recent_losses=[2.7, 2.6, 2.5],
        compute_fraction=0.8,
        round_wall_s=10.5,
        rounds_joined=5,
        bytes_sent=1_500_000,
    )
    fields.update(kw)
    return heartbeat_pb2.Heartbeat(**fields)


def kinds(report: dict) -> set[tuple[str, str]]:
    return {(f["kind"], f["peer_id"]) for f in report["findings"]}


def test_report_sorts_by_contribution_and_finds_dead_and_disagreeing():
    beats = [
        beat("p1", samples_total=50),
        beat("p2", samples_total=100),
        beat("p3", params_hash="bbbb"),
        beat("p4", timestamp=NOW - 30.0),
    ]
    r = build_report(RUN, beats, NOW)
    assert r["run_id"] == "r1" and r["round"] == 6 and r["run_source"] == "coordinator"
    assert [p["peer_id"] for p in r["peers"]][:2] == ["p2", "p1"]
    assert ("params_disagree", "p3") in kinds(r) and ("dead", "p4") in kinds(r)
    assert r["totals"]["peers_alive"] == 3 and r["totals"]["peers_dead"] == 1
    assert r["totals"]["agreement"] == {"round": 5, "params_hash": "aaaa", "peers": 2, "of": 3}
    assert r["totals"]["loss_trend_label"] == "falling" and r["totals"]["loss_trend"] == pytest.approx(-0.1)
    assert abs(sum(p["contribution"] for p in r["peers"]) - 1.0) < 1e-3
    assert not schema_errors(r)


def test_dead_threshold_is_within_ten_seconds_of_the_last_beat():
    assert DEAD_AFTER_S < 10.0
    r = build_report(RUN, [beat("p1", timestamp=NOW - DEAD_AFTER_S - 0.1)], NOW)
    assert not r["peers"][0]["alive"]


def test_tampered_initial_state_disagrees_with_the_seeded_one():
    """Honest peers moved on to round 3; the tampered one still holds a perturbed round -1 state.
    Every peer's init_hash speaks for round -1, so the tampered peer is outvoted."""
    honest = [
        beat(
            p,
            params_hash="h3",
            hash_round=3,
            recent_hashes=[heartbeat_pb2.RoundHash(round=2, params_hash="h2")],
        )
        for p in ("p1", "p2")
    ]
    tampered = beat(
        "p3", params_hash="evil", hash_round=-1, last_exclusion="base evil differs", exclusion_round=6
    )
    r = build_report(RUN, [*honest, tampered], NOW)
    disagree = [f for f in r["findings"] if f["kind"] == "params_disagree"]
    assert [(f["peer_id"], f["round"]) for f in disagree] == [("p3", -1)]
    assert ("excluded", "p3") in kinds(r)
    assert [p["disagrees"] for p in r["peers"] if p["peer_id"] == "p3"] == [True]


def test_two_peers_apart_split_without_majority_and_many_groups_are_not_judged():
    r = build_report(RUN, [beat("p1"), beat("p2", params_hash="bbbb")], NOW)
    assert {f["kind"] for f in r["findings"]} == {"params_split"}
    several_groups = RunInfo(run_id="r1", genesis=RUN.genesis, round_s=10.0, group_size=2)
    beats = [beat("p1"), beat("p2"), beat("p3", params_hash="bbbb")]
    assert not [f for f in build_report(several_groups, beats, NOW)["findings"] if "params" in f["kind"]]


def test_findings_for_deadlines_exclusions_versions_stragglers_and_offenders():
    beats = [
        beat("p1", rounds_late=2, late_round=5, offenders=["p4: non-finite values in part 1"]),
        beat("p2", rounds_late=1, late_round=5, last_exclusion="leader unreachable", exclusion_round=5),
        beat("p3", version="0.0.9", last_exclusion="old news", exclusion_round=1),
        beat("p4", round=3, compute_fraction=0.2, samples_per_s=5.0),
    ]
    r = build_report(RUN, beats, NOW)
    found = kinds(r)
    assert ("deadline_missed", "") in found and ("excluded", "p2") in found
    assert ("excluded", "p3") not in found  # round 1 is history, not news
    assert ("version_mismatch", "p3") in found and ("reported_offender", "p4") in found
    straggler = next(f for f in r["findings"] if f["kind"] == "straggler")
    assert straggler["peer_id"] == "p4"
    assert "round 3" in straggler["detail"] and "waits on averaging" in straggler["detail"]
    assert "samples/s" in straggler["detail"]
    order = [f["kind"] for f in r["findings"]]
    assert order.index("reported_offender") < order.index("deadline_missed") < order.index("straggler")
    assert not schema_errors(r)


def test_lies_about_time_and_round_are_dropped_and_counted():
    beats = [beat("p1"), beat("p2", timestamp=NOW + 3600), beat("p3", round=10**6)]
    r = build_report(RUN, beats, NOW, rejected=["malformed or oversized"])
    assert [p["peer_id"] for p in r["peers"]] == ["p1"]
    assert r["records"] == {
        "shown": 1,
        "ignored": 3,
        "reasons": {"malformed or oversized": 1, "dated in the future": 1, "round ahead of the clock": 1},
    }
    assert ("records_ignored", "") in kinds(r)


@pytest.mark.parametrize(
    "lie",
    [
        {"samples_per_s": -1.0},
        {"loss": float("nan")},
        {"timestamp": float("inf")},
        {"compute_fraction": 3.0},
        {"round": 1 << 50},
        {"hash_round": -7},
        {"bytes_sent": 1 << 60},
        {"device": "x" * 10_000},
        {"recent_losses": [float("-inf")]},
        {"recent_hashes": [heartbeat_pb2.RoundHash(round=-9, params_hash="a")]},
        {"offenders": ["a"] * 100},
    ],
)
def test_heartbeat_lies_are_rejected(lie):
    assert records.heartbeat_problem(beat("p1", **lie)) is not None
    assert records.heartbeat_problem(beat("p1")) is None


def test_hostile_text_never_reaches_the_terminal_or_the_json():
    hostile = beat(
        "p1\x1b[2J",
        params_hash="\x1b]0;pwned\x07",
        device="\u202egpu\x9b31m",
        last_exclusion="\x1b[31mred",
        exclusion_round=6,
    )
    r = build_report(RUN, [hostile], NOW)
    dumped = json.dumps(r, ensure_ascii=False)
    for bad in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert bad not in dumped
        assert bad not in render_text(r)
    console = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    console.print(render_rich(r))
    assert "\x1b" not in console.export_text()
    assert len(sanitize("y" * 1000, 40)) == 40


def test_garbage_records_never_crash_the_reader():
    rng = random.Random(7)
    good = beat("p1").SerializeToString()
    for _ in range(500):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        hb = records.parse_record(bytes(blob), heartbeat_pb2.Heartbeat)
        if records.heartbeat_rejection(hb, "p1", "r1") is None:
            build_report(RUN, [hb], NOW)
    assert records.parse_record(b"\x00" * (records.MAX_RECORD_BYTES + 1), heartbeat_pb2.Heartbeat) is None


GOLDEN = """\
run r1  round 6 (10 s rounds, 10.5 s actual)  peers alive 3 (1 dead)  samples/s 300.0
mean loss 2.500 falling (-0.1000/round)  params agree 2/3 at round 5
peer       device             round  phase      loss  samples/s  share    sent  params  joined/missed   seen  status
…Peer1111  cpu                    6  training  2.500      100.0    43%  1.5 MB  aaaa@5            5/0   1.0s  ok
…Peer2222  cpu                    6  training  2.500      100.0    38%  1.5 MB  aaaa@5            5/0   1.0s  ok
…ePeer333  cuda:0 (?[31mRTX)      6  training  2.500      100.0    14%  1.5 MB  bbbb@5            5/0   1.0s  DISAGREES
…eer44444  cpu                    6  training  2.500      100.0     5%  1.5 MB  aaaa@5            5/0  20.0s  DEAD
! params_disagree: …ePeer333: holds params bbbb after round 5; 2 of 3 peers hold aaaa
! dead: …eer44444: no heartbeat for 20 s (last seen in round 6)
updated 22:13:20 UTC
"""


def test_rich_table_with_a_fixed_clock():
    beats = [
        beat("12D3KooWAlphaPeer1111", samples_total=900),
        beat("12D3KooWBravoPeer2222", samples_total=800),
        beat("12D3KooWCharliePeer333", samples_total=300, params_hash="bbbb", device="cuda:0 (\x1b[31mRTX)"),
        beat("12D3KooWDeltaPeer44444", samples_total=100, timestamp=NOW - 20),
    ]
    report = build_report(RUN, beats, NOW)
    from barnraise.peer.cli.status_view import utc_clock

    console = Console(file=io.StringIO(), width=120, color_system=None, record=True)
    console.print(render_rich(report, footer=f"updated {utc_clock(report['generated_at'])}"))
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert text == GOLDEN


def test_plain_text_empty_runs():
    assert "no peers" in render_text(build_report(RUN, [], NOW))
    assert "no run found" in render_text(build_report(None, [], NOW))
    assert not schema_errors(build_report(None, [], NOW))


def test_schema_catches_a_broken_report():
    r = build_report(RUN, [beat("p1")], NOW)
    r["peers"][0]["alive"] = 1
    r["totals"].pop("mean_loss")
    r["findings"].append({"kind": "gossip", "peer_id": "", "round": None, "detail": ""})
    errors = schema_errors(r)
    assert any("alive" in e for e in errors) and any("mean_loss" in e for e in errors)
    assert any("gossip" in e for e in errors)


def test_run_from_coordinator_else_from_peer_beacons():
    rec = coordinator_pb2.CoordinatorRecord(
        run_id="r1", genesis=5.0, round_s=10.0, peer_id="boot", grpc_addrs=["h:1"]
    )
    beacons = [heartbeat_pb2.RunBeacon(run_id="r1", genesis=7.0, round_s=4.0, group_size=8) for _ in range(2)]
    run = choose_run([rec], beacons)
    assert (run.source, run.genesis, run.group_size, run.grpc_addrs) == ("coordinator", 5.0, 8, ("h:1",))
    run = choose_run([], beacons)  # the bootstrap is gone: the peers still say which run and clock
    assert (run.source, run.run_id, run.genesis, run.round_s) == ("peers", "r1", 7.0, 4.0)
    assert choose_run([], [], run_id="r9").source == "none"
    assert choose_run([], []) is None
    with pytest.raises(ConfigError, match="several runs"):
        choose_run([rec], [heartbeat_pb2.RunBeacon(run_id="r2", genesis=1.0, round_s=1.0)])


def test_metrics_collector_exposes_swarm_and_peer_gauges():
    from prometheus_client import CollectorRegistry, generate_latest

    from barnraise.coordinator.metrics import ReportCollector, parse_metrics_address

    report = build_report(RUN, [beat("p1", samples_total=10), beat("p2", timestamp=NOW - 30)], NOW)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReportCollector(lambda: report))
    text = generate_latest(registry).decode()
    assert 'barnraise_peers{run="r1",state="alive"} 1.0' in text
    assert 'barnraise_peer_up{peer="p2",run="r1"} 0.0' in text
    assert 'barnraise_findings{kind="dead",run="r1"} 1.0' in text
    assert "barnraise_report_ok 1.0" in text
    failing = CollectorRegistry(auto_describe=False)
    failing.register(ReportCollector(lambda: 1 / 0))
    assert "barnraise_report_ok 0.0" in generate_latest(failing).decode()
    assert parse_metrics_address("9100") == ("0.0.0.0", 9100)
    assert parse_metrics_address("127.0.0.1:9") == ("127.0.0.1", 9)
    with pytest.raises(ConfigError):
        parse_metrics_address("http://x")


def test_peer_stats_keep_short_histories_and_count_late_rounds():
    from barnraise.peer.heartbeat import RECENT_HASHES, PeerStats

    stats = PeerStats()
    stats.update(round=3)
    for r in range(-1, 6):
        stats.update(params_hash=f"h{r}", hash_round=r, loss=float(10 - r))
    stats.update(last_exclusion="stale base")
    hb = stats.to_proto("p1", "r1")
    assert [(h.round, h.params_hash) for h in hb.recent_hashes] == [
        (r, f"h{r}") for r in range(6 - RECENT_HASHES, 6)
    ]
    assert list(hb.recent_losses)[-1] == 5.0 and hb.exclusion_round == 3
    on_time, late = concurrent.futures.Future(), concurrent.futures.Future()
    stats.watch_deadline(7, on_time, time.time() + 60)
    stats.watch_deadline(8, late, time.time() - 1)
    on_time.set_result(None)
    late.cancel()
    hb = stats.to_proto("p1", "r1")
    assert (hb.rounds_late, hb.late_round) == (1, 8)
    assert records.heartbeat_problem(hb) is None


def test_plot_draws_loss_and_throughput(tmp_path):
    from barnraise.peer.cli.status_plot import clean_history, draw

    rounds = [
        coordinator_pb2.RoundSummary(round=r, loss=5.0 - 0.1 * r, samples_per_s=100 + r, peers=2)
        for r in range(20)
    ]
    rounds.append(coordinator_pb2.RoundSummary(round=30, loss=math.nan, samples_per_s=1, peers=1))
    rows = clean_history(rounds)
    assert len(rows) == 20
    out = tmp_path / "h.png"
    draw(rows, out, "run r1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_paused_peer_is_shown_paused_and_never_called_a_straggler_or_dead():
    # p4 paused rounds ago: behind the clock, no compute, slow; but still beating.
    paused = dict(round=3, compute_fraction=0.1, samples_per_s=1.0, phase=heartbeat_pb2.PHASE_PAUSED)
    beats = [beat("p1"), beat("p2"), beat("p3"), beat("p4", **paused), beat("p5", round=3)]
    r = build_report(RUN, beats, NOW)
    row = next(p for p in r["peers"] if p["peer_id"] == "p4")
    assert row["phase"] == "paused" and row["paused"] is True and row["alive"] and not row["straggler"]
    assert ("straggler", "p4") not in kinds(r) and ("dead", "p4") not in kinds(r)
    assert ("straggler", "p5") in kinds(r)  # the same lag unpaused is one
    assert not any(p["paused"] for p in r["peers"] if p["peer_id"] != "p4")
    assert "paused" in render_text(r)
    assert not schema_errors(r)


def test_a_reducer_caught_lying_is_a_finding_with_its_catchers_and_dht_records_are_shown():
    beats = [
        beat("p1", caught_reducers=["p4: lied as a reducer: segment 3"], dht_records_stored=41),
        beat("p2", caught_reducers=["p4: lied as a reducer: segment 9"]),
        beat("p3"),
        beat("p4"),
    ]
    r = build_report(RUN, beats, NOW)
    lying = [f for f in r["findings"] if f["kind"] == "lying_reducer"]
    assert [f["peer_id"] for f in lying] == ["p4"] and "caught by 2 peer(s)" in lying[0]["detail"]
    row = next(p for p in r["peers"] if p["peer_id"] == "p1")
    assert row["dht_records"] == 41 and row["caught_reducers"] == ["p4: lied as a reducer: segment 3"]
    assert not schema_errors(r)
