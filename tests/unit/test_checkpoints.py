"""Checkpoint files and rules: round trip, keep last K, damaged files refused, temporary ones
never read, the policy's rounds, the DHT record's data position, the status entry."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
import torch

from barnraise.coordinator import checkpoints as rules
from barnraise.coordinator.errors import IntegrityError
from barnraise.coordinator.health import build_report
from barnraise.coordinator.manifest import model_config
from barnraise.coordinator.status_schema import schema_errors
from barnraise.peer.sync.checkpoint import load_checkpoint, newest_valid, param_layout, save_checkpoint
from barnraise.peer.sync.checkpointer import CheckpointPolicy
from barnraise.peer.sync.state import GlobalState
from barnraise.peer.training.model import build_model

pytestmark = pytest.mark.timeout(60)


def nano():
    return build_model(model_config("gpt-nano", 256), 3)


def info(**kw) -> rules.CheckpointInfo:
    base = dict(
        run_id="r1",
        round=0,
        params_hash="",
        samples_seen=100,
        loss=2.5,
        position=rules.DataPosition(epoch=1, done=(0, 2), offsets={1: 512}),
        saved_at=time.time(),
        model="gpt-nano",
        files={},
    )
    return rules.CheckpointInfo(**{**base, **kw})


def state_at(model, round_no: int) -> GlobalState:
    s = GlobalState.initial(model)
    gen = torch.Generator().manual_seed(round_no)
    return GlobalState(
        params=s.params + torch.randn(s.params.shape, generator=gen) * 0.01,
        momentum=torch.randn(s.params.shape, generator=gen),
        round=round_no,
    )


def test_round_trip_keeps_params_momentum_and_info(tmp_path):
    model = nano()
    s = state_at(model, 9)
    path = save_checkpoint(tmp_path, s, param_layout(model), info())
    assert path.name == "round-000009"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "outer.safetensors", "state.json"]
    t, i = load_checkpoint(path, s.params.numel())
    assert torch.equal(t.params, s.params) and torch.equal(t.momentum, s.momentum) and t.round == 9
    assert i.params_hash == s.params_hash() and i.samples_seen == 100 and i.loss == 2.5
    assert i.position == rules.DataPosition(epoch=1, done=(0, 2), offsets={1: 512})
    with pytest.raises(IntegrityError):
        load_checkpoint(path, s.params.numel() + 1)


def test_keeps_the_last_k_and_drops_leftovers(tmp_path):
    model = nano()
    (tmp_path / f"{rules.TMP_PREFIX}round-000001-1-1").mkdir(parents=True)  # a killed write
    for r in range(5):
        save_checkpoint(tmp_path, state_at(model, r), param_layout(model), info(), keep=3)
    assert [r for r, _ in rules.list_checkpoints(tmp_path)] == [4, 3, 2]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(rules.TMP_PREFIX)]


@pytest.mark.parametrize("damage", ["flip_model", "truncate_outer", "state_json", "remove_model"])
def test_damaged_newest_is_refused_and_the_previous_used(tmp_path, caplog, damage):
    model = nano()
    for r in (4, 9):
        save_checkpoint(tmp_path, state_at(model, r), param_layout(model), info())
    newest = tmp_path / "round-000009"
    if damage == "flip_model":
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-3] ^= 0xFF
        (newest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "truncate_outer":
        (newest / "outer.safetensors").write_bytes((newest / "outer.safetensors").read_bytes()[:100])
    elif damage == "state_json":
        (newest / "state.json").write_text("{not json")
    else:
        (newest / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        state, _, path = newest_valid(tmp_path, state_at(model, 0).params.numel())
    assert state.round == 4 and path.name == "round-000004"
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "round-000009" in refusals[0].getMessage()
    assert "\n" not in refusals[0].getMessage()


def test_a_temporary_directory_is_never_read(tmp_path):
    model = nano()
    save_checkpoint(tmp_path, state_at(model, 2), param_layout(model), info())
    partial = tmp_path / f"{rules.TMP_PREFIX}round-000005-77-1"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert [r for r, _ in rules.list_checkpoints(tmp_path)] == [2]
    assert newest_valid(tmp_path)[0].round == 2


def test_policy_falls_on_the_same_rounds_everywhere():
    p = CheckpointPolicy(every=5)
    assert [r for r in range(20) if p.due(r, -1)] == list(range(4, 20))
    last, saved = -1, []
    for r in range(20):
        if p.due(r, last):
            saved.append(r)
            last = r
    assert saved == [4, 9, 14, 19]
    assert p.due(12, 7) and not p.due(8, 7)  # a peer that missed round 9 saves at the next one
    assert rules.default_every(10.0) == 60 and rules.default_every(1000.0) == 1
    with pytest.raises(ValueError):
        CheckpointPolicy(every=0)


def test_state_json_refuses_unknown_format():
    data = json.loads(info().to_json())
    data["format"] = 99
    with pytest.raises(IntegrityError):
        rules.CheckpointInfo.from_json(json.dumps(data).encode())


def test_record_carries_the_data_position_and_is_checked():
    i = info(round=12, params_hash="abcd")
    rec = rules.to_record(i, "peerA", n_shards=10)
    assert rules.position_of(rec) == i.position
    assert rules.record_problem(rec, "peerA", "r1", 10) is None
    assert rules.record_problem(rec, "peerB", "r1", 10) is not None  # not its holder's subkey
    assert rules.record_problem(rec, "peerA", "r1", 1) is not None  # more shards than the run has
    operator = rules.operator_subkey(b"\x01" * 32, "peerA")  # sealed by the run key, naming the holder
    assert rules.record_problem(rec, operator, "r1", 10) is None
    assert rules.record_problem(rec, rules.operator_subkey(b"\x01" * 32, "peerB"), "r1", 10) is not None
    rec.round = -3
    assert rules.record_problem(rec, "peerA", "r1", 10) is not None


def test_only_the_run_key_or_two_holders_are_trusted():
    from barnraise.peer.sync.resume import trusted_records

    key = b"\x02" * 32
    rec = lambda p, r, h: rules.to_record(info(round=r, params_hash=h), p, 10)  # noqa: E731
    found = [
        ("liar", rec("liar", 99, "aa")),  # one peer's word
        (rules.operator_subkey(key, "boot"), rec("boot", 19, "bb")),
        ("p1", rec("p1", 14, "cc")),
        ("p2", rec("p2", 14, "cc")),
        (rules.operator_subkey(b"\x03" * 32, "x"), rec("x", 50, "dd")),  # another run key
    ]
    assert [(r.peer_id, r.round) for r in trusted_records(found, key, "me")] == [
        ("boot", 19),
        ("p1", 14),
        ("p2", 14),
    ]


def test_status_shows_the_newest_checkpoint_round_and_age():
    now = time.time()
    recs = [
        (p, rules.to_record(info(round=19, params_hash="ff", saved_at=now - 30), p, 10)) for p in ("a", "b")
    ] + [("c", rules.to_record(info(round=9, params_hash="ee", saved_at=now - 300), "c", 10))]
    entry = rules.status_entry(recs, now)
    assert entry["round"] == 19 and entry["holders"] == 2 and 29 <= entry["age_s"] <= 31
    report = build_report(None, [], now, checkpoint=entry)
    assert not schema_errors(report)
    assert not schema_errors(build_report(None, [], now))
    from barnraise.peer.cli.status_view import checkpoint_cell

    assert checkpoint_cell(entry) == "checkpoint round 19 (30 s ago, 2 holders)"
    assert checkpoint_cell(None) == "checkpoint none"
    assert rules.status_entry([], now) is None
    assert math.isfinite(entry["loss"])


def test_pulled_state_is_checked_against_the_rounds_majority_and_donors_spread():
    from barnraise.peer.sync.puller import agreed_hash, rank_donors
    from barnraise.protos import heartbeat_pb2

    def beat(peer, hash_round, phash, recent=(), link="direct"):
        hb = heartbeat_pb2.Heartbeat(peer_id=peer, hash_round=hash_round, params_hash=phash, link=link)
        hb.recent_hashes.extend(heartbeat_pb2.RoundHash(round=r, params_hash=h) for r, h in recent)
        return hb

    beats = [beat("a", 9, "x"), beat("b", 9, "x"), beat("c", 10, "z", recent=[(9, "y")])]
    assert agreed_hash(beats, 9) == "x"  # 2 of the 3 that report round 9
    assert agreed_hash(beats, 10) == "z"
    assert agreed_hash([beat("a", 9, "x"), beat("b", 9, "y")], 9) is None  # no strict majority
    assert agreed_hash(beats, 3) is None
    beats = [beat(p, 9, "x", link="relayed" if p == "r" else "direct") for p in ("r", "a", "b", "c")]
    orders = {tuple(rank_donors(beats, ["r", "a", "b", "c"], rnd)) for rnd in range(20)}
    assert all(order[-1] == "r" for order in orders)  # a relayed donor last
    assert len({order[0] for order in orders}) > 1  # the first donor changes with the round
