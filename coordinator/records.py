"""DHT keys and records of a run: where they live, how they are written, read and checked.

Every value we store is the serialized bytes of a message in ``protos/``; every value we read is
untrusted, so it is size-capped and parsed defensively, and a record that fails is skipped.
A record under a subkey that names its owner (a peer id, or ``runkey:...``) is sealed with the
owner's key by ``store`` and its seal checked by ``get_dict`` (see ``coordinator/signing.py``), so
a record that claims to be some peer's was written by that peer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message

from barnraise.coordinator.errors import PeerUnavailable
from barnraise.protos import averaging_pb2, coordinator_pb2, heartbeat_pb2

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


def lease_key(run_id: str, epoch: int, shard: int) -> str:
    """Claims on one shard for one epoch (``ShardLease``), subkey = holder's peer id."""
    return f"barnraise/{run_id}/lease/{epoch}/{shard}"


def done_key(run_id: str, epoch: int) -> str:
    """Shards finished in an epoch (``ShardDone``), subkey = ``done_subkey(writer, shard)``."""
    return f"barnraise/{run_id}/done/{epoch}"


def done_subkey(peer_id: str, shard: int) -> str:
    """``<writer's peer id>/<shard index>``: owned by the writer, so the record is sealed by it."""
    from barnraise.coordinator.signing import peer_subkey

    return peer_subkey(peer_id, str(shard))


def epoch_key(run_id: str) -> str:
    """The epoch each peer works on (``EpochMark``), subkey = peer id."""
    return f"barnraise/{run_id}/epoch"


def caches_key(run_id: str) -> str:
    """Which shards each peer can serve (``CacheAnnouncement``), subkey = peer id."""
    return f"barnraise/{run_id}/caches"


def dht_time() -> float:
    from hivemind.utils import get_dht_time

    return get_dht_time()


def store(dht, key: str, subkey: str, value: bytes, ttl_s: float, timeout_s: float = DHT_TIMEOUT_S) -> bool:
    """Store ``value`` under ``key``/``subkey`` for ``ttl_s``; False if no DHT node accepted it.

    Under an owned subkey the value is sealed with the owner's registered key (AuthError if this
    process holds none).
    """
    from barnraise.coordinator.signing import seal

    expiration = dht_time() + ttl_s
    value = seal(key, subkey, expiration, value)
    fut = dht.store(key, value, expiration_time=expiration, subkey=subkey, return_future=True)
    try:
        return bool(fut.result(timeout=timeout_s))
    except TimeoutError:
        fut.cancel()
        return False


def get_dict(dht, key: str, timeout_s: float = DHT_TIMEOUT_S, latest: bool = True) -> dict[str, bytes]:
    """All (subkey -> record bytes) stored under ``key``, seals checked and removed; {} if none."""
    return {subkey: opened.record for subkey, opened in get_opened(dht, key, timeout_s, latest).items()}


def get_opened(dht, key: str, timeout_s: float = DHT_TIMEOUT_S, latest: bool = True) -> dict:
    """(subkey -> ``signing.Opened``) under ``key``: owned records whose seal fails are dropped."""
    from barnraise.coordinator.signing import open_sealed

    fut = dht.get(key, latest=latest, return_future=True)
    try:
        found = fut.result(timeout=timeout_s)
    except TimeoutError as e:
        fut.cancel()
        raise PeerUnavailable(f"DHT lookup of {key!r} timed out after {timeout_s:.0f} s") from e
    if found is None or not isinstance(found.value, dict):
        return {}
    out = {}
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        expiration = getattr(item, "expiration_time", None)
        if isinstance(subkey, str) and isinstance(value, bytes | bytearray) and isinstance(expiration, float):
            opened = open_sealed(key, subkey, expiration, bytes(value))
            if opened is not None:
                out[subkey] = opened
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


def publish_run(dht, record: coordinator_pb2.CoordinatorRecord, run_public_key: bytes) -> bool:
    """Store a coordinator record sealed by the run key (registered with ``signing.register_signer``).

    The record names the key (``run_public_key``) and sits under the subkey
    ``runkey:<hex>/<bootstrap peer id>``, which lets several entry points of one run coexist while
    nobody without the run key can write, overwrite or prolong them.
    """
    from barnraise.coordinator.signing import runkey_subkey

    record.run_public_key = run_public_key
    subkey = runkey_subkey(run_public_key, record.peer_id)
    return store(dht, RUNS_KEY, subkey, record.SerializeToString(), COORDINATOR_TTL_S)


def find_runs(
    dht, timeout_s: float = DHT_TIMEOUT_S, run_key_fingerprint: str = ""
) -> list[coordinator_pb2.CoordinatorRecord]:
    """Coordinator records in the DHT sealed by the run key they name, freshest first.

    Why a reader can trust one before it knows the run key: a record is used only if the key that
    sealed it is the key it names (``run_public_key``) and its subkey (``runkey:<that key>/<peer
    id>``), so an unsealed record, or one sealed by a key other than the one it names, is dropped
    here. Anyone can make a key and announce a run id under it, though, so the named key must then
    be the run's: with ``run_key_fingerprint`` (a pinned key) records of other keys are dropped at
    once; without one the reader fetches the manifest from the record's coordinator and
    ``check_announced_key`` refuses the record unless the manifest is signed by the key it names
    (the manifest's key is then pinned as usual); and ``pick_run`` refuses to guess between
    records of one run id that name different keys.
    """
    from barnraise.coordinator.keys import fingerprint, parse_fingerprint
    from barnraise.coordinator.signing import runkey_subkey

    pinned = parse_fingerprint(run_key_fingerprint) if run_key_fingerprint else ""
    found = []
    for subkey, opened in get_opened(dht, RUNS_KEY, timeout_s).items():
        rec = parse_record(opened.record, coordinator_pb2.CoordinatorRecord)
        if rec is None or not rec.run_id or not rec.peer_id or opened.owner is None:
            continue
        if rec.run_public_key != opened.owner or subkey != runkey_subkey(opened.owner, rec.peer_id):
            continue
        if not pinned or fingerprint(opened.owner) == pinned:
            found.append(rec)
    return sorted(found, key=lambda rec: -rec.timestamp)


def announced_keys(runs: Iterable[coordinator_pb2.CoordinatorRecord], run_id: str) -> set[bytes]:
    """The run keys that coordinator records of ``run_id`` name (more than one: someone lies)."""
    return {r.run_public_key for r in runs if r.run_id == run_id}


def check_announced_key(record: coordinator_pb2.CoordinatorRecord, run_public_key: bytes) -> None:
    """AuthError unless the coordinator record names the key that signed the run's manifest."""
    from barnraise.coordinator.errors import AuthError
    from barnraise.coordinator.keys import fingerprint

    if record.run_public_key != run_public_key:
        raise AuthError(
            f"the coordinator record of run {record.run_id} is sealed by key "
            f"{fingerprint(record.run_public_key)}, but the run's manifest is signed by "
            f"{fingerprint(run_public_key)}: refusing it (pass --run-key-fingerprint to pick the run's key)"
        )


def pick_run(
    found: list[coordinator_pb2.CoordinatorRecord], run_id: str | None, run_key_fingerprint: str = ""
) -> coordinator_pb2.CoordinatorRecord | None:
    """The record to join among ``find_runs``'s (for ``run_id``, if given); None if none is there yet.

    AuthError if records of the run exist but none names the pinned key; ConfigError if the swarm
    hosts several runs and none was asked for, or if records of the run name different run keys
    and no ``run_key_fingerprint`` says which one to trust.
    """
    from barnraise.coordinator.errors import AuthError, ConfigError
    from barnraise.coordinator.keys import fingerprint, parse_fingerprint

    runs = [r for r in found if run_id is None or r.run_id == run_id]
    if runs and run_key_fingerprint:
        pinned = parse_fingerprint(run_key_fingerprint)
        if not (mine := [r for r in runs if fingerprint(r.run_public_key) == pinned]):
            fps = ", ".join(sorted({fingerprint(r.run_public_key) for r in runs}))
            raise AuthError(
                f"run {runs[0].run_id} is announced under key {fps}, not by {run_key_fingerprint} "
                "(--run-key-fingerprint): this is not the run you were invited to, or someone is "
                "impersonating it"
            )
        runs = mine
    if not runs:
        return None
    ids = sorted({r.run_id for r in runs})
    if run_id is None and len(ids) > 1:
        raise ConfigError(f"this swarm hosts several runs ({', '.join(ids)}): pick one with --run-id")
    if len(named := announced_keys(runs, ids[0])) > 1:
        fps = ", ".join(sorted(fingerprint(k) for k in named))
        raise ConfigError(
            f"run {ids[0]} is announced under several run keys ({fps}): pass --run-key-fingerprint "
            "with the one its owner gave you"
        )
    return runs[0]


def wait_for_run(
    dht, run_id: str | None, timeout_s: float, run_key_fingerprint: str = ""
) -> coordinator_pb2.CoordinatorRecord:
    """Poll the DHT until a coordinator record (for ``run_id``, if given) appears (see ``pick_run``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if (rec := pick_run(find_runs(dht), run_id, run_key_fingerprint)) is not None:
            return rec
        if time.monotonic() > deadline:
            what = f"run {run_id}" if run_id else "any run"
            raise PeerUnavailable(
                f"no coordinator for {what} announced in the DHT within {timeout_s:.0f} s: "
                "is the bootstrap node running (`barnraise bootstrap --run RUN_DIR`)?"
            )
        time.sleep(0.5)


MAX_ROUND = 1 << 40  # a round number past this is a lie (a 1 s round clock would need 35,000 years)
MAX_COUNT = 1 << 53  # byte and sample counters beyond this are lies (and would lose JSON precision)
MAX_TEXT = {  # longest text a heartbeat field may hold, characters
    "version": 64,
    "device": 128,
    "link": 32,
    "params_hash": 128,
    "codec_sent": 32,
    "codec_received": 32,
    "last_exclusion": 400,
    "init_hash": 128,
}
MAX_LISTED = 32  # entries in a heartbeat's repeated fields


def heartbeat_problem(hb: heartbeat_pb2.Heartbeat) -> str | None:
    """Why a heartbeat cannot be shown, or None. Lies about numbers make a record invalid."""
    import math

    if not hb.peer_id or len(hb.peer_id) > 128:
        return "bad peer_id"
    for name in ("samples_per_s", "loss", "timestamp", "compute_fraction", "round_wall_s"):
        v = getattr(hb, name)
        if not math.isfinite(v) or v < 0:
            return f"bad {name}"
    if hb.samples_per_s > 1e9 or hb.round > MAX_ROUND or hb.compute_fraction > 1.0 or hb.round_wall_s > 1e7:
        return "absurd numbers"
    if hb.group_size > 1 << 20:
        return "absurd numbers"
    if not -1 <= hb.hash_round <= MAX_ROUND or hb.exclusion_round > MAX_ROUND or hb.late_round > MAX_ROUND:
        return "absurd round"
    for name in (
        "samples_total",
        "bytes_sent",
        "bytes_received",
        "device_memory_bytes",
        "dht_records_stored",
    ):
        if getattr(hb, name) > MAX_COUNT:
            return f"absurd {name}"
    for name, limit in MAX_TEXT.items():
        if len(getattr(hb, name)) > limit:
            return f"oversized {name}"
    if (
        max(len(hb.offenders), len(hb.recent_hashes), len(hb.recent_losses), len(hb.caught_reducers))
        > MAX_LISTED
    ):
        return "too many list entries"
    if any(len(o) > 400 for o in (*hb.offenders, *hb.caught_reducers)):
        return "oversized offenders"
    if any(not -1 <= h.round <= MAX_ROUND or len(h.params_hash) > 128 for h in hb.recent_hashes):
        return "bad recent_hashes"
    if any(not math.isfinite(v) or v < 0 for v in hb.recent_losses):
        return "bad recent_losses"
    return None


Admit = Callable[[str, object], bool]  # (peer id, its membership token or None) -> may it take part?


def read_heartbeats(
    dht,
    run_id: str,
    timeout_s: float = DHT_TIMEOUT_S,
    admit: Admit | None = None,
    rejected: list[str] | None = None,
) -> list[heartbeat_pb2.Heartbeat]:
    """Valid heartbeats of a run, each sealed by the peer it names (a forgery is dropped).

    ``admit`` (closed runs) also drops heartbeats of peers without a valid membership token.
    ``rejected``, if given, receives one short reason per record dropped after its seal was checked.
    """
    from barnraise.coordinator.signing import open_heartbeat

    beats = []
    for subkey, opened in get_opened(dht, heartbeats_key(run_id), timeout_s).items():
        hb = open_heartbeat(opened.record)
        why = heartbeat_rejection(hb, subkey, run_id)
        if why is None and (opened.owner is None or (admit is not None and not admit(subkey, opened.token))):
            why = "not a member"
        if why is not None:
            if rejected is not None:
                rejected.append(why)
            continue
        beats.append(hb)
    return beats


def heartbeat_rejection(hb: heartbeat_pb2.Heartbeat | None, subkey: str, run_id: str) -> str | None:
    """Why a heartbeat read under ``subkey`` of ``run_id``'s key is dropped, or None."""
    if hb is None:
        return "malformed or oversized"
    if hb.peer_id != subkey or hb.run_id != run_id:
        return "names another peer or run"
    return heartbeat_problem(hb)


RUN_BEACONS_KEY = "barnraise/runs/peers"
RUN_BEACON_TTL_S = 30.0


def publish_beacon(dht, peer_id: str, beacon: heartbeat_pb2.RunBeacon, timeout_s: float = 5.0) -> bool:
    """Say which run this peer trains (sealed by the peer), for a status CLI without a bootstrap."""
    return store(dht, RUN_BEACONS_KEY, peer_id, beacon.SerializeToString(), RUN_BEACON_TTL_S, timeout_s)


def read_beacons(dht, timeout_s: float = DHT_TIMEOUT_S) -> list[heartbeat_pb2.RunBeacon]:
    """Run beacons sealed by the peers that published them, with a sane clock."""
    import math

    found = []
    for opened in get_opened(dht, RUN_BEACONS_KEY, timeout_s).values():
        b = parse_record(opened.record, heartbeat_pb2.RunBeacon)
        if b is None or opened.owner is None or not 0 < len(b.run_id) <= 128:
            continue
        if math.isfinite(b.genesis) and math.isfinite(b.round_s) and 0 < b.round_s < 1e6:
            found.append(b)
    return found


def read_round_entries(
    dht, run_id: str, round_no: int, timeout_s: float = DHT_TIMEOUT_S, admit: Admit | None = None
) -> list[averaging_pb2.RoundEntry]:
    """Round entries sealed by the peer they name; ``admit`` (closed runs) keeps members only."""
    entries = []
    for subkey, opened in get_opened(dht, round_key(run_id, round_no), timeout_s).items():
        e = parse_record(opened.record, averaging_pb2.RoundEntry)
        if e is None or e.peer_id != subkey or not e.weight >= 0:
            continue
        if opened.owner is None or (admit is not None and not admit(subkey, opened.token)):
            continue
        entries.append(e)
    return entries
