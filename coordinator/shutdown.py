"""Leaving on SIGTERM/SIGINT, for every long-running command (bootstrap, peer, status --watch)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def stop_on_signals(stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT ask the component to leave cleanly.

    Child processes forked later (hivemind's DHT process) inherit Python handlers; there the
    default action is restored so that they still die when signalled.
    """
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
