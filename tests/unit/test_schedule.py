"""``--schedule``: parsing and the inside-the-window rule, midnight included; no sockets."""

from __future__ import annotations

import pytest

from barnraise.coordinator.errors import ConfigError
from barnraise.peer.schedule import Window, inside, local_minute, parse_schedule


def at(hh: int, mm: int = 0) -> int:
    return hh * 60 + mm


def test_a_day_window_holds_from_its_start_up_to_not_including_its_end():
    ws = parse_schedule("09:00-17:30")
    assert ws == (Window(at(9), at(17, 30)),)
    assert not inside(ws, at(8, 59)) and inside(ws, at(9)) and inside(ws, at(17, 29))
    assert not inside(ws, at(17, 30)) and not inside(ws, at(23, 59))


def test_a_window_crossing_midnight_holds_on_both_sides_of_it():
    ws = parse_schedule("22:00-06:00")
    assert inside(ws, at(22)) and inside(ws, at(23, 59)) and inside(ws, at(0)) and inside(ws, at(5, 59))
    assert not inside(ws, at(6)) and not inside(ws, at(12)) and not inside(ws, at(21, 59))
    to_midnight = parse_schedule("23:00-00:00")
    assert inside(to_midnight, at(23, 30)) and not inside(to_midnight, at(0))


def test_several_windows_and_spaces():
    ws = parse_schedule(" 22:00-07:00 , 12:00-13:30")
    assert len(ws) == 2 and str(ws[0]) == "22:00-07:00" and str(ws[1]) == "12:00-13:30"
    assert inside(ws, at(12, 15)) and inside(ws, at(3)) and not inside(ws, at(9))


def test_no_schedule_always_trains():
    assert parse_schedule("") == () and inside((), at(3))
    assert 0 <= local_minute() < 24 * 60


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("25:00-01:00", "'25:00' is not a time"),
        ("9-17", "'9' is not a time"),
        ("09:00", "not a window"),
        ("10:60-11:00", "not a time"),
        ("08:00-08:00", "is empty"),
        (",", "no window"),
        ("08:00-09:00-10:00", "not a time"),
    ],
)
def test_a_bad_spec_is_one_line_saying_what_is_wrong(spec, says):
    with pytest.raises(ConfigError, match=says) as e:
        parse_schedule(spec)
    assert "\n" not in str(e.value)
