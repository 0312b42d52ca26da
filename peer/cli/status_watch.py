"""``barnraise status``: a DHT client session and the live view (``--watch``).

The status CLI joins the DHT as a client and needs nothing else: no bootstrap, no gRPC. One
session serves every refresh of the live view, so a refresh costs a few DHT lookups, not a
DHT start-up. Ctrl-C must stop the view, not the DHT process under it: the DHT process is started
with SIGINT ignored (it inherits that, and so does its p2pd), and the session shuts it down.

A lookup of the heartbeats (``latest=True``) receives the same records from every replica, and the
DHT node checks every record's seal in every answer; ``VerifiedOnce`` remembers verdicts, so a
record costs one signature check however many replicas return it.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from barnraise.coordinator.errors import BarnraiseError, ConfigError
from barnraise.peer.cli.status_view import render_rich, render_text, utc_clock

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5  # --watch refreshes no faster than this
VERDICTS_KEPT = 100_000  # record verdicts remembered by VerifiedOnce (about 10 MB at most)


class VerifiedOnce:
    """A hivemind record validator: ``inner``'s verdict, computed once per distinct record.

    A record is (DHT key, subkey, expiration, value); a forged or altered one differs in one of
    them, so it gets its own verdict. Runs inside the DHT process.
    """

    def __init__(self, inner):
        self.inner = inner
        self.priority = inner.priority
        self._verdicts: dict[tuple, bool] = {}

    def validate(self, record) -> bool:
        import hashlib

        key = (record.key, record.subkey, record.expiration_time, hashlib.blake2b(record.value).digest())
        ok = self._verdicts.get(key)
        if ok is None:
            ok = bool(self.inner.validate(record))
            if len(self._verdicts) >= VERDICTS_KEPT:
                self._verdicts.clear()
            self._verdicts[key] = ok
        return ok

    def sign_value(self, record) -> bytes:
        return self.inner.sign_value(record)

    def strip_value(self, record) -> bytes:
        return self.inner.strip_value(record)

    def merge_with(self, other) -> bool:
        return False


class StatusClient:
    """A client-mode DHT node for reading health reports; use as a context manager."""

    def __init__(self, initial_peers: Sequence[str], run_id: str = "", timeout_s: float = 15.0):
        if not timeout_s > 0:
            raise ConfigError(f"--timeout {timeout_s}: must be a positive number of seconds")
        self.initial_peers = tuple(initial_peers)
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.dht = None

    def __enter__(self) -> StatusClient:
        from barnraise.coordinator.dhtnode import DHTOptions, start_dht
        from barnraise.coordinator.signing import dht_validators

        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self.dht = start_dht(
                DHTOptions(
                    initial_peers=self.initial_peers,
                    listen=("/ip4/127.0.0.1/tcp/0",),
                    client_mode=True,
                    start_timeout_s=self.timeout_s,
                    # drop answers holding forged records, checking each distinct record once
                    extra={"record_validators": [VerifiedOnce(v) for v in dht_validators()]},
                )
            )
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)
        return self

    def report(self) -> dict:
        from barnraise.coordinator.health import query_report

        return query_report(self.dht, self.run_id, self.timeout_s)

    def __exit__(self, *exc) -> None:
        if self.dht is not None:
            self.dht.shutdown()
            self.dht = None


def check_interval(interval_s: float) -> None:
    if not interval_s >= MIN_INTERVAL_S:
        raise ConfigError(f"--interval {interval_s}: refresh at most every {MIN_INTERVAL_S} s")


def watch(
    client: StatusClient,
    interval_s: float,
    stop: threading.Event,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
    as_json: bool = False,
) -> int:
    """Redraw the report every ``interval_s`` until ``stop`` is set (Ctrl-C); plain without a TTY,
    one JSON object per line with ``as_json``."""
    check_interval(interval_s)
    out = out or sys.stdout
    if as_json or not out.isatty():
        return _watch_plain(client, interval_s, stop, out, clock, as_json)
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    refresh = 0
    report = None
    with Live(console=console, auto_refresh=False, vertical_overflow="ellipsis") as live:
        while not stop.is_set():
            refresh += 1
            error = ""
            try:
                report = client.report()
            except BarnraiseError as e:  # a DHT hiccup: keep the last view and say so
                error = str(e)
            footer = (
                f"updated {utc_clock(clock())}  refresh {refresh}  every {interval_s:g} s  Ctrl-C to quit"
            )
            if report is None:
                from rich.text import Text

                live.update(Text(f"waiting for the DHT... {error}\n{footer}"), refresh=True)
            else:
                rows = max(3, console.size.height - 8 - min(len(report["findings"]), 13))
                live.update(render_rich(report, footer=footer, error=error, max_rows=rows), refresh=True)
            stop.wait(interval_s)
    return 0


def _watch_plain(
    client: StatusClient,
    interval_s: float,
    stop: threading.Event,
    out: TextIO,
    clock: Callable[[], float],
    as_json: bool,
) -> int:
    refresh = 0
    while not stop.is_set():
        refresh += 1
        try:
            report = client.report()
        except BarnraiseError as e:  # a DHT hiccup: say so and try again next time
            if not as_json:
                out.write(f"--- {utc_clock(clock())}  refresh {refresh}\nrefresh failed: {e}\n")
            log.warning("status refresh failed: %s", e)
        else:
            if as_json:
                out.write(json.dumps(report) + "\n")
            else:
                out.write(f"--- {utc_clock(clock())}  refresh {refresh}\n{render_text(report)}")
        out.flush()
        stop.wait(interval_s)
    return 0
