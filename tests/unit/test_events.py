"""Typed events: the one sink, its JSON Lines files, and the reader tests and benchmarks share."""

from __future__ import annotations

import json
import logging
import math

import pytest

from barnraise.coordinator.errors import ConfigError
from barnraise.peer.events import (
    KINDS,
    NO_EVENTS,
    EpochComplete,
    EventLog,
    ExchangeDone,
    FirstShard,
    RangeTrained,
    RoundApplied,
    RoundMissed,
    ShardFetched,
    StateAdopted,
    WindowTrained,
    open_events,
    read_events,
)


def test_each_event_is_one_flushed_json_line_that_reads_back_typed(tmp_path):
    path = tmp_path / "p.events.jsonl"
    sink = open_events(path)
    applied = RoundApplied(round=3, members=2, params_hash="ab12", duration_s=1.5)
    sink.emit(applied)
    line = json.loads(path.read_text())  # readable before close: flushed per event
    assert list(line)[:2] == ["event", "t"] and line["event"] == "round_applied" and line["members"] == 2
    sink.emit(RoundMissed(round=4, reason="averaging did not finish in time"))
    sink.emit(WindowTrained(round=5, loss=math.nan, samples=0, samples_per_s=0.0, compute_s=0.0, wall_s=3.0))
    sink.close()
    assert read_events(path)[0] == applied
    assert [e.round for e in read_events(path, RoundMissed)] == [4]
    assert math.isnan(read_events(path, WindowTrained)[0].loss)


def test_the_reader_skips_a_cut_line_and_unknown_kinds_but_not_a_mismatch(tmp_path):
    path = tmp_path / "e.jsonl"
    good = {"event": "state_adopted", "t": 1.0, "round": 7, "params_hash": "ff", "donor": "peerX"}
    path.write_text(
        json.dumps({"event": "from_a_newer_version", "t": 0.5})
        + "\n"
        + json.dumps(good)
        + "\n"
        + '{"event": "round_applied", "t": 2.0, "rou'  # killed mid-write
    )
    assert read_events(path) == [StateAdopted(t=1.0, round=7, params_hash="ff", donor="peerX")]
    assert read_events(tmp_path / "missing.jsonl") == []
    path.write_text(json.dumps({"event": "round_missed", "t": 1.0, "round": 1}) + "\n")
    with pytest.raises(TypeError):
        read_events(path)


def test_without_a_file_nothing_is_written(tmp_path):
    assert open_events(None) is NO_EVENTS and not NO_EVENTS.enabled
    NO_EVENTS.emit(RoundMissed(round=1, reason="x"))
    NO_EVENTS.close()
    assert list(tmp_path.iterdir()) == []


def test_the_ledger_alias_gets_only_trained_ranges(tmp_path):
    events, ledger = tmp_path / "all.jsonl", tmp_path / "ledger.jsonl"
    sink = open_events(events, ledger=ledger)
    rng = RangeTrained(peer="p", epoch=0, shard=2, start=0, end=256, sha256="00")
    sink.emit(RoundMissed(round=1, reason="x"))
    sink.emit(rng)
    sink.close()
    assert read_events(ledger) == [rng] and len(read_events(events)) == 2
    row = json.loads(ledger.read_text())  # the old ledger's keys are all there
    assert {"peer", "epoch", "shard", "start", "end", "sha256", "t"} <= set(row)


def test_an_unwritable_events_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot open events file"):
        open_events(tmp_path / "no" / "such" / "dir.jsonl")


def test_logged_events_keep_the_daemons_lines(caplog):
    log = logging.getLogger("barnraise.peer.daemon")
    with caplog.at_level(logging.INFO, logger=log.name):
        for event in (
            WindowTrained(round=3, loss=2.5, samples=64, samples_per_s=120.4, compute_s=3.2, wall_s=4.0),
            RoundApplied(round=3, members=2, params_hash="ab12", duration_s=1.25),
            RoundMissed(round=4, reason="not in a group: JOIN_TOO_LATE"),
            StateAdopted(round=5, params_hash="cd34", donor="12D3KooWabcdefghijklmnop"),
            FirstShard(seconds=1.234),
            ShardFetched(index=2, bytes=4096, source="peer 12D3KooWx", seconds=0.5),
            EpochComplete(epoch=1, shards=9),
        ):
            NO_EVENTS.emit(event, log)  # logged even when no file is written
    assert caplog.messages == [
        "round 3: loss 2.500, 120 samples/s, compute 3.20 s of 4.00 s",
        "round 3: averaged with 2 peer(s) in 1.25 s, params ab12",
        "round 4: not applied (not in a group: JOIN_TOO_LATE); local progress carried to the next round",
        "synced state of round 5 (params cd34) from 12D3KooWabcd",
        "first shard in hand 1.23 s after the trainer asked",
        "shard 2: 4096 bytes from peer 12D3KooWx in 0.50 s",
        "epoch 1 complete: all 9 shards trained",
    ]


def test_exchange_done_comes_from_an_outcome():
    from barnraise.peer.averaging.averager import RoundOutcome

    out = RoundOutcome(round=2, members=["a", "b"], reason="x", offenders={"b": "non-finite values"})
    e = ExchangeDone.of(out)
    assert (e.round, e.members, e.ok, e.offenders) == (2, ["a", "b"], False, {"b": "non-finite values"})


def test_every_kind_is_registered_once():
    assert len(KINDS) == len(set(KINDS.values())) and all(name == cls.kind for name, cls in KINDS.items())
    assert isinstance(NO_EVENTS, EventLog)
