"""The control socket's framing, where its socket lives, and the switches it sets (a socketpair
stands in for the Unix socket; the real one is exercised by tests/integration/test_controls.py)."""

from __future__ import annotations

import socket

import pytest

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.control import (
    MAX_LINE_BYTES,
    Switches,
    candidates,
    encode,
    parse_request,
    read_line,
    socket_path,
)
from barnraise.peer.schedule import parse_schedule
from barnraise.peer.slots import slot_path


def roundtrip(raw: bytes, close: bool = False) -> dict:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(2.0)
        a.sendall(raw)
        if close:
            a.close()
        return read_line(b)


def test_a_request_is_one_json_line_that_reads_back():
    line = encode({"action": "pause"})
    assert line == b'{"action":"pause"}\n'
    assert parse_request(roundtrip(line)) == "pause"
    assert roundtrip(b'{"ok":true,"message":"paused"}\n') == {"ok": True, "message": "paused"}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"x" * (MAX_LINE_BYTES + 10), "longer than"),
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"action": "pau', "closed before"),
    ],
)
def test_bad_lines_are_refused(raw, says):
    with pytest.raises(ProtocolError, match=says):
        roundtrip(raw, close=True)


def test_unknown_actions_and_oversized_replies_are_refused():
    for bad in ({"action": "format-disk"}, {}, {"action": 1}):
        with pytest.raises(ProtocolError, match="unknown control action"):
            parse_request(bad)
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"message": "x" * MAX_LINE_BYTES})


def test_each_identity_slot_has_its_own_socket_in_the_cache_dir(tmp_path):
    s0 = socket_path(tmp_path, slot_path(tmp_path, 0), 0)
    s1 = socket_path(tmp_path, slot_path(tmp_path, 1), 1)
    named = socket_path(tmp_path, tmp_path / "keys" / "alice.id", None)
    assert s0 == tmp_path / "control.sock" and s1 == tmp_path / "slot-1" / "control.sock"
    assert named.parent == tmp_path and len({s0, s1, named}) == 3
    assert candidates(tmp_path, None)[:2] == [s0, s1]
    assert candidates(tmp_path, tmp_path / "keys" / "alice.id") == [named]
    assert s1 in candidates(tmp_path, slot_path(tmp_path, 1))  # a slot's file names that slot


def test_switches_pause_resume_leave_and_the_schedule():
    minute = [12 * 60]
    sw = Switches(parse_schedule("22:00-06:00"), clock=lambda: minute[0])
    assert sw.paused()  # noon is outside the schedule
    minute[0] = 23 * 60
    assert not sw.paused()
    assert sw.act("pause").startswith("paused") and sw.paused() and sw.changed.is_set()
    assert sw.act("resume") == "resumed" and not sw.paused()
    minute[0] = 7 * 60
    assert "outside its --schedule hours" in sw.act("resume")
    assert not sw.leaving.is_set() and "leaving" in sw.act("leave") and sw.leaving.is_set()


def test_the_cli_offers_exactly_the_actions_the_daemon_understands():
    # commands.py keeps its own copy so that `barnraise --help` imports no control code.
    from barnraise.peer import control
    from barnraise.peer.cli import commands

    assert commands.CONTROL_ACTIONS == control.ACTIONS
