"""DHT keys and records of a run: where they live, how they are written, read and checked.

Every value we store is the serialized bytes of a message in ``protos/``; every value we read is
untrusted, so it is size-capped and parsed defensively, and a record that fails is skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import Message

from coordinator.errors import PeerUnavailable
from protos import averaging_pb2, coordinator_pb2, heartbeat_pb2

log = logging.getLogger(__name__)

RUNS_KEY = "barnraise/runs"
MAX_RECORD_BYTES = 16 * 1024  # a heartbeat is ~300 bytes; anything above this is hostile
DHT_TIMEOUT_S = 10.0
HEARTBEAT_TTL_S = 15.0
COORDINATOR_TTL_S = 60.0

M = TypeVar("M", bound=Message)


def heartbeats_key(run_id: str) -> str:
    return f"barnraise/{run_id}/heartbeats"


def round_key(run_id: str, round_no: int) -> str:
    return f"barnraise/{run_id}/round/{round_no}"


def dht_time() -> float:
    from hivemind.utils import get_dht_time

    return get_dht_time()


def store(dht, key: str, subkey: str, value: bytes, ttl_s: float, timeout_s: float = DHT_TIMEOUT_S) -> bool:
    """Store ``value`` under ``key``/``subkey`` for ``ttl_s``; False if no DHT node accepted it."""
    fut = dht.store(key, value, expiration_time=dht_time() + ttl_s, subkey=subkey, return_future=True)
    try:
        return bool(fut.result(timeout=timeout_s))
    except TimeoutError:
        fut.cancel()
        return False


def get_dict(dht, key: str, timeout_s: float = DHT_TIMEOUT_S, latest: bool = True) -> dict[str, bytes]:
    """All (subkey -> value bytes) stored under ``key``; {} if nothing is stored."""
    fut = dht.get(key, latest=latest, return_future=True)
    try:
        found = fut.result(timeout=timeout_s)
    except TimeoutError as e:
        fut.cancel()
        raise PeerUnavailable(f"DHT lookup of {key!r} timed out after {timeout_s:.0f} s") from e
    if found is None or not isinstance(found.value, dict):
        return {}
    out: dict[str, bytes] = {}
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        if isinstance(subkey, str) and isinstance(value, bytes | bytearray):
            out[subkey] = bytes(value)
    return out


def parse_record(data: bytes, cls: type[M], check: Callable[[M], str | None] | None = None) -> M | None:
    """Parse an untrusted record; None (and a debug log) if it is oversized, malformed or fails ``check``."""
    if len(data) > MAX_RECORD_BYTES:
        log.debug("dropping oversized %s record (%d bytes)", cls.__name__, len(data))
        return None
    try:
        msg = cls.FromString(data)
    except Exception:
        log.debug("dropping malformed %s record", cls.__name__)
        return None
    if check is not None and (problem := check(msg)) is not None:
        log.debug("dropping %s record: %s", cls.__name__, problem)
        return None
    return msg


def find_runs(dht, timeout_s: float = DHT_TIMEOUT_S) -> list[coordinator_pb2.CoordinatorRecord]:
    """Coordinator records in the DHT, freshest first."""
    records = []
    for subkey, data in get_dict(dht, RUNS_KEY, timeout_s).items():
        rec = parse_record(data, coordinator_pb2.CoordinatorRecord)
        if rec is not None and rec.run_id and rec.peer_id == subkey:
            records.append(rec)
    return sorted(records, key=lambda r: -r.timestamp)


def wait_for_run(dht, run_id: str | None, timeout_s: float) -> coordinator_pb2.CoordinatorRecord:
    """Poll the DHT until a coordinator record (for ``run_id``, if given) appears."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = [r for r in find_runs(dht) if run_id is None or r.run_id == run_id]
        if runs:
            ids = sorted({r.run_id for r in runs})
            if run_id is None and len(ids) > 1:
                from coordinator.errors import ConfigError

                raise ConfigError(f"this swarm hosts several runs ({', '.join(ids)}): pick one with --run-id")
            return runs[0]
        if time.monotonic() > deadline:
            what = f"run {run_id}" if run_id else "any run"
            raise PeerUnavailable(
                f"no coordinator for {what} announced in the DHT within {timeout_s:.0f} s: "
                "is the bootstrap node running (`barnraise bootstrap --run RUN_DIR`)?"
            )
        time.sleep(0.5)


def heartbeat_problem(hb: heartbeat_pb2.Heartbeat) -> str | None:
    """Why a heartbeat cannot be shown, or None. Lies about numbers make a record invalid."""
    import math

    if not hb.peer_id or len(hb.peer_id) > 128:
        return "bad peer_id"
    for name in ("samples_per_s", "loss", "timestamp"):
        v = getattr(hb, name)
        if not math.isfinite(v) or v < 0:
            return f"bad {name}"
    if hb.samples_per_s > 1e9 or hb.round > 1 << 40:
        return "absurd numbers"
    return None


def read_heartbeats(dht, run_id: str, timeout_s: float = DHT_TIMEOUT_S) -> list[heartbeat_pb2.Heartbeat]:
    """Valid heartbeats of a run; a record whose subkey differs from its peer id is a forgery and dropped."""
    from coordinator.signing import open_heartbeat

    beats = []
    for subkey, data in get_dict(dht, heartbeats_key(run_id), timeout_s).items():
        hb = open_heartbeat(data)
        if hb is None or hb.peer_id != subkey or hb.run_id != run_id or heartbeat_problem(hb):
            continue
        beats.append(hb)
    return beats


def read_round_entries(
    dht, run_id: str, round_no: int, timeout_s: float = DHT_TIMEOUT_S
) -> list[averaging_pb2.RoundEntry]:
    entries = []
    for subkey, data in get_dict(dht, round_key(run_id, round_no), timeout_s).items():
        e = parse_record(data, averaging_pb2.RoundEntry)
        if e is not None and e.peer_id == subkey and e.weight >= 0:
            entries.append(e)
    return entries
