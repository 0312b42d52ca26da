"""``peer --schedule 'HH:MM-HH:MM[,...]'``: the local hours in which a peer trains.

A window ``22:00-06:00`` crosses midnight. Outside every window the peer is paused as by
``barnraise peer pause`` (peer/control.py). ``parse_schedule`` checks a spec; ``inside`` is the pure
rule the daemon asks once a second.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from barnraise.coordinator.errors import ConfigError

_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
DAY_MIN = 24 * 60


@dataclass(frozen=True)
class Window:
    start_min: int  # minutes after local midnight at which training starts
    end_min: int  # minutes after local midnight at which it stops; before start_min: crosses midnight

    def holds(self, minute: int) -> bool:
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def __str__(self) -> str:
        return f"{self.start_min // 60:02d}:{self.start_min % 60:02d}-{self.end_min // 60:02d}:{self.end_min % 60:02d}"


def _minutes(text: str, spec: str) -> int:
    m = _TIME.match(text.strip())
    if not m:
        raise ConfigError(f"--schedule {spec!r}: {text.strip()!r} is not a time HH:MM (00:00 to 23:59)")
    return int(m.group(1)) * 60 + int(m.group(2))


def parse_schedule(spec: str) -> tuple[Window, ...]:
    """The windows of ``spec`` ('' for none: always train); a bad spec is a one-line ConfigError."""
    windows = []
    for part in (p for p in spec.split(",") if p.strip()) if spec.strip() else ():
        start, sep, end = part.partition("-")
        if not sep:
            raise ConfigError(f"--schedule {spec!r}: {part.strip()!r} is not a window HH:MM-HH:MM")
        w = Window(_minutes(start, spec), _minutes(end, spec))
        if w.start_min == w.end_min:
            raise ConfigError(
                f"--schedule {spec!r}: window {w} is empty; leave --schedule out to train all day"
            )
        windows.append(w)
    if spec.strip() and not windows:
        raise ConfigError(f"--schedule {spec!r}: no window; write e.g. 22:00-07:00,12:00-13:30")
    return tuple(windows)


def inside(windows: tuple[Window, ...], minute: int) -> bool:
    """True if ``minute`` (after local midnight) is in a window, or if there are no windows."""
    return not windows or any(w.holds(minute % DAY_MIN) for w in windows)


def local_minute(now: float | None = None) -> int:
    t = time.localtime(now)
    return t.tm_hour * 60 + t.tm_min
