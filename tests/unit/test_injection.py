"""Fault injection by (peer, round): plan files, their one-line errors, and the hooks' answers."""

from __future__ import annotations

import json

import pytest
import torch

from barnraise.coordinator.errors import ConfigError, ProtocolError
from barnraise.coordinator.runclock import RoundClock
from barnraise.peer.averaging import codecs
from barnraise.peer.injection import Fault, InjectionPlan, Injector, load_plan, parse_plan
from barnraise.protos import averaging_pb2


def write(tmp_path, data) -> object:
    path = tmp_path / "plan.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_plan_file_answers_by_round(tmp_path):
    plan = load_plan(
        write(
            tmp_path,
            {
                "faults": [
                    {"kind": "slowdown", "factor": 5},
                    {"kind": "slowdown", "factor": 20, "from_round": 4, "to_round": 6},
                    {"kind": "fault", "mode": "nan", "from_round": 3},
                    {"kind": "fault", "mode": "stall", "to_round": 1},
                    {"kind": "attack", "mode": "signflip", "from_round": 2, "to_round": 2},
                    {"kind": "corrupt_shards", "from_round": 10},
                ]
            },
        )
    )
    assert [plan.slowdown(r) for r in (0, 4, 6, 7)] == [5, 20, 20, 5]
    assert (
        plan.modes("fault", 0) == ["stall"]
        and plan.modes("fault", 2) == []
        and plan.modes("fault", 9) == ["nan"]
    )
    assert [bool(plan.modes("attack", r)) for r in (1, 2, 3)] == [False, True, False]
    assert not plan.corrupts_shards(9) and plan.corrupts_shards(10)
    assert not plan.tamper and InjectionPlan((Fault(kind="tamper"),)).tamper
    assert InjectionPlan().slowdown(0) == 1.0


def test_faults_are_keyed_by_peer_and_round():
    plan = parse_plan(
        {
            "faults": [
                {"kind": "slowdown", "factor": 3, "peer": "peerA"},
                {"kind": "fault", "mode": "oversize", "peer": "peerB", "from_round": 5},
                {"kind": "attack", "mode": "noise"},  # every peer given the plan
            ]
        }
    )
    a, b, c = (plan.for_peer(p) for p in ("peerA", "peerB", "peerC"))
    assert (a.slowdown(7), b.slowdown(7), c.slowdown(7)) == (3, 1.0, 1.0)
    assert b.modes("fault", 4) == [] and b.modes("fault", 5) == ["oversize"] and a.modes("fault", 5) == []
    assert all(p.modes("attack", 0) == ["noise"] for p in (a, b, c))


def test_the_hidden_flags_build_the_same_plan_as_a_file(tmp_path):
    from barnraise.peer.cli.commands import injection_plan
    from barnraise.peer.cli.main import build_parser

    def plan_of(*flags: str):
        return injection_plan(build_parser().parse_args(["peer", "--initial-peers", "/ip4/1.2.3.4", *flags]))

    from_file = parse_plan(
        {
            "faults": [
                {"kind": "slowdown", "factor": 10},
                {"kind": "tamper"},
                {"kind": "fault", "mode": "shape"},
                {"kind": "attack", "mode": "weight"},
                {"kind": "corrupt_shards"},
            ]
        }
    )
    old = ["--slowdown", "10", "--tamper", "--fault", "shape", "--attack", "weight", "--serve-corrupt-shards"]
    assert plan_of(*old) == from_file
    assert plan_of() is None and plan_of("--slowdown", "1") is None  # no plan: no hook is installed
    path = write(tmp_path, {"faults": [{"kind": "fault", "mode": "stall", "from_round": 2}]})
    plan = plan_of("--inject", str(path), "--slowdown", "4")  # the file's faults and the flags'
    assert plan.modes("fault", 2) == ["stall"] and plan.modes("fault", 1) == [] and plan.slowdown(0) == 4
    with pytest.raises(ConfigError, match="unknown attack 'meteor'"):
        plan_of("--attack", "meteor")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ([], 'expected an object {"faults": [...]}'),
        ({"faults": [], "extra": 1}, 'expected an object {"faults": [...]}'),
        ({"faults": ["slowdown"]}, "fault 1: expected an object"),
        ({"faults": [{"from_round": 1}]}, "fault 1: no kind: choose one of slowdown, tamper"),
        ({"faults": [{"kind": "fault", "mode": "nan", "factor": 2}]}, "fault 1: unknown key 'factor'"),
        ({"faults": [{"kind": "slowdown", "mode": "nan"}]}, "fault 1: unknown key 'mode'"),
        (
            {"faults": [{"kind": "slowdown", "factor": 2}, {"kind": "slowdwn"}]},
            "fault 2: unknown kind 'slowdwn'",
        ),
        ({"faults": [{"kind": "tamper", "factor": 2}]}, "fault 1: unknown key 'factor'"),
        ({"faults": [{"kind": "slowdown", "factor": 0.5}]}, "slowdown factor must be a number >= 1"),
        ({"faults": [{"kind": "slowdown", "factor": "5"}]}, "slowdown factor must be a number >= 1"),
        ({"faults": [{"kind": "fault", "mode": "fire"}]}, "unknown fault 'fire': choose one of nan, shape"),
        (
            {"faults": [{"kind": "attack", "mode": "meteor"}]},
            "unknown attack 'meteor': choose one of signflip",
        ),
        (
            {"faults": [{"kind": "attack", "mode": "nan", "from_round": -1}]},
            "from_round must be a round number",
        ),
        ({"faults": [{"kind": "corrupt_shards", "to_round": "3"}]}, "to_round must be a round number"),
        ({"faults": [{"kind": "corrupt_shards", "to_round": True}]}, "to_round must be a round number"),
        ({"faults": [{"kind": "fault", "mode": "nan", "from_round": 5, "to_round": 4}]}, "is after to_round"),
        ({"faults": [{"kind": "tamper", "from_round": 2}]}, "tamper takes no round range"),
        ({"faults": [{"kind": "tamper", "peer": 7}]}, "peer must be a peer id string"),
    ],
)
def test_a_bad_plan_file_is_one_config_error_line(tmp_path, content, expected):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_plan(path)
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert message.startswith(str(path))


def test_a_missing_plan_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read injection plan .*nope\.json"):
        load_plan(tmp_path / "nope.json")


def _enc(numel: int) -> averaging_pb2.EncodedTensor:
    return codecs.encode(torch.ones(numel), "fp32")


def test_the_injector_breaks_only_its_rounds():
    clock = RoundClock(genesis=0.0, round_s=10.0)  # long past: round_at() is large
    plan = parse_plan(
        {
            "faults": [
                {"kind": "fault", "mode": "nan", "from_round": 3, "to_round": 4},
                {"kind": "fault", "mode": "stall", "from_round": 4},
                {"kind": "attack", "mode": "signflip", "from_round": 1, "to_round": 1},
                {"kind": "corrupt_shards", "peer": "other"},
            ]
        }
    )
    inj = Injector(plan, "me", clock)
    enc = _enc(8)
    assert inj.corrupt_part(2, 0, enc, "fp32", 8) is enc
    broken = averaging_pb2.EncodedTensor.FromString(inj.corrupt_part(3, 0, enc, "fp32", 8))
    with pytest.raises(ProtocolError, match="non-finite"):  # what a reducer's validation says
        codecs.decode(broken, 8, "fp32")
    assert inj.corrupt_part(3, 1, enc, "fp32", 8) is enc  # only a part's first chunk is broken
    assert inj.corrupt_part(4, 0, enc, "fp32", 8) != enc  # nan wins over stall for what is sent
    assert [inj.stalls(r) for r in (3, 4, 99)] == [False, True, True]
    liar = Injector(parse_plan({"faults": [{"kind": "fault", "mode": "lie", "from_round": 2}]}), "me", clock)
    assert [liar.lies(r) for r in (1, 2)] == [False, True] and not inj.lies(4)
    assert liar.corrupt_part(2, 0, enc, "fp32", 8) is enc  # a liar sends honest parts: it lies as a reducer
    u, base = torch.ones(4), torch.zeros(4)
    assert torch.equal(inj.forge(0, u, 2.0, base)[0], u)
    forged, weight = inj.forge(1, u, 2.0, base)
    assert torch.equal(forged, -10 * u) and weight == 2.0
    assert not inj.corrupts_shards()  # that fault is another peer's
    assert Injector(plan, "other", clock).corrupts_shards()
    assert (
        Injector(
            parse_plan({"faults": [{"kind": "corrupt_shards", "to_round": 0}]}), "x", clock
        ).corrupts_shards()
        is False
    )


def test_broken_parts_are_what_reducers_refuse():
    from barnraise.peer.injection import broken_part

    enc = _enc(100)
    short = averaging_pb2.EncodedTensor.FromString(broken_part("shape", enc, "fp32", 100))
    assert short.numel == 99
    assert len(broken_part("oversize", enc, "fp32", 100)) > codecs.max_encoded_bytes("fp32", 100)
