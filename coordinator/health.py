"""Swarm health from heartbeats alone: who is alive, what they hold, what looks wrong.

``build_report`` is a pure function of heartbeat records, what is known of the run and a clock
reading, so the status CLI, the bootstrap's history and metrics and the tests all compute the same
thing. Heartbeats are untrusted: every string a peer sent is sanitised here (control characters,
terminal escapes and bidi overrides replaced, length bounded) and a record that lies about its
time or round is dropped and counted, so nothing downstream can be tricked or crashed by one.
``query_report`` reads what it needs from the DHT; it needs no bootstrap node, because peers
publish run beacons (``records.read_beacons``) next to their heartbeats. It uses a coordinator
record only if the run key that sealed it is the one it names (``records.find_runs``) and, as a
status client fetches no manifest to check that key against, only if no record of the same run id
names another key (``agreed_runs``) or the key matches a pinned fingerprint; otherwise the run's
clock comes from the peers' beacons.

The report's JSON form is documented by ``coordinator/status_schema.json``.
"""

from __future__ import annotations

import logging
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from barnraise.coordinator import records
from barnraise.coordinator.errors import ConfigError
from barnraise.coordinator.findings import find_problems
from barnraise.protos import coordinator_pb2, heartbeat_pb2

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # bump when a key of the report changes meaning or disappears
DEAD_AFTER_S = 8.0  # four missed beats at the 2 s interval: marked dead (well within 10 s)
MAX_FUTURE_S = 30.0  # a heartbeat dated further ahead than this lies about its time
ROUND_SLACK = 2  # a peer may claim a round this far past the clock (skew); beyond, it lies
FLAT_TREND = 0.002  # |loss change per round| / mean loss under this: "flat"

PHASES = {
    heartbeat_pb2.PHASE_TRAINING: "training",
    heartbeat_pb2.PHASE_AVERAGING: "averaging",
    heartbeat_pb2.PHASE_SYNCING: "syncing",
    heartbeat_pb2.PHASE_IDLE: "idle",
    heartbeat_pb2.PHASE_PAUSED: "paused",
}

# C0/C1 controls (ESC and CSI start terminal escapes), zero-width and bidirectional overrides
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def sanitize(text: object, limit: int = 128) -> str:
    """Printable, bounded text from an untrusted string: unsafe characters become '?'."""
    s = str(text)
    if not s.isprintable():  # every character _UNSAFE matches is non-printable: skip the regex if none
        s = _UNSAFE.sub("?", s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """What status knows of the run: from a coordinator record, or from the peers' beacons."""

    run_id: str
    genesis: float = 0.0  # unix seconds at which round 0 started; 0: unknown
    round_s: float = 0.0  # round length, seconds; 0: unknown
    version: str = ""  # the coordinator's barnraise version; "": unknown
    group_size: int = 0  # target averaging group size; 0: unknown
    source: str = "none"  # "coordinator", "peers" or "none" (only --run-id was given)
    coordinator_peer_id: str = ""  # the bootstrap node that announced the run, if one did
    grpc_addrs: tuple[str, ...] = ()  # where its coordinator service listens (history for --plot)

    def round_at(self, now: float) -> int | None:
        if self.round_s <= 0 or self.genesis <= 0:
            return None
        return max(0, int((now - self.genesis) // self.round_s))

    @classmethod
    def from_record(cls, rec: coordinator_pb2.CoordinatorRecord, group_size: int = 0) -> RunInfo:
        return cls(
            run_id=rec.run_id,
            genesis=rec.genesis,
            round_s=rec.round_s,
            version=rec.version,
            group_size=group_size,
            source="coordinator",
            coordinator_peer_id=rec.peer_id,
            grpc_addrs=tuple(rec.grpc_addrs),
        )


def agreed_runs(
    coordinators: Sequence[coordinator_pb2.CoordinatorRecord],
) -> list[coordinator_pb2.CoordinatorRecord]:
    """Coordinator records of run ids that every record announces under one run key.

    Two keys for one run id mean someone announces a run that is not theirs; a client that has no
    manifest to tell which cannot trust either.
    """
    return [c for c in coordinators if len(records.announced_keys(coordinators, c.run_id)) == 1]


def choose_run(
    coordinators: Sequence[coordinator_pb2.CoordinatorRecord],
    beacons: Sequence[heartbeat_pb2.RunBeacon],
    run_id: str = "",
) -> RunInfo | None:
    """The run to report on: a coordinator record if one is live, else the peers' beacons.

    ConfigError if no ``run_id`` was asked for and the swarm hosts several runs.
    """
    coordinators = [c for c in coordinators if not run_id or c.run_id == run_id]
    beacons = [b for b in beacons if not run_id or b.run_id == run_id]
    ids = sorted({c.run_id for c in coordinators} | {b.run_id for b in beacons})
    if not run_id and len(ids) > 1:
        shown = ", ".join(sanitize(i, 40) for i in ids[:8])
        raise ConfigError(f"this swarm hosts several runs ({shown}): pick one with --run-id")
    rid = run_id or (ids[0] if ids else "")
    if not rid:
        return None
    sizes = Counter(b.group_size for b in beacons if b.run_id == rid and b.group_size)
    group_size = sizes.most_common(1)[0][0] if sizes else 0
    for c in coordinators:  # freshest first (records.find_runs)
        if c.run_id == rid:
            return RunInfo.from_record(c, group_size)
    clocks = Counter((b.genesis, b.round_s) for b in beacons if b.run_id == rid)
    if clocks:
        (genesis, round_s), _ = clocks.most_common(1)[0]
        return RunInfo(run_id=rid, genesis=genesis, round_s=round_s, group_size=group_size, source="peers")
    return RunInfo(run_id=rid)


def peer_entry(hb: heartbeat_pb2.Heartbeat, now: float) -> dict:
    """One peer's row of the report: sanitised, rounded, JSON-ready."""
    last_seen = max(0.0, now - hb.timestamp)
    return {
        "peer_id": sanitize(hb.peer_id, 128),
        "version": sanitize(hb.version, 64),
        "device": sanitize(hb.device, 128),
        "device_memory_bytes": hb.device_memory_bytes,
        "link": sanitize(hb.link, 32),
        "samples_per_s": round(hb.samples_per_s, 2),
        "round": hb.round,
        "phase": PHASES.get(hb.phase, "unknown"),
        "paused": hb.phase == heartbeat_pb2.PHASE_PAUSED,
        "loss": round(hb.loss, 4),
        "recent_losses": [round(v, 4) for v in hb.recent_losses],
        "last_seen_s": round(last_seen, 1),
        "alive": last_seen <= DEAD_AFTER_S,
        "params_hash": sanitize(hb.params_hash, 64),
        "hash_round": hb.hash_round,
        "init_hash": sanitize(hb.init_hash, 64),
        "recent_hashes": [
            {"round": h.round, "params_hash": sanitize(h.params_hash, 64)} for h in hb.recent_hashes
        ],
        "bytes_sent": hb.bytes_sent,
        "bytes_received": hb.bytes_received,
        "rounds_joined": hb.rounds_joined,
        "rounds_missed": hb.rounds_missed,
        "rounds_late": hb.rounds_late,
        "late_round": hb.late_round if hb.rounds_late else None,
        "last_exclusion": sanitize(hb.last_exclusion, 200),
        "exclusion_round": hb.exclusion_round if hb.last_exclusion else None,
        "offenders": [sanitize(o, 200) for o in hb.offenders],
        "caught_reducers": [sanitize(o, 200) for o in hb.caught_reducers],
        "dht_records": hb.dht_records_stored,
        "samples_total": hb.samples_total,
        "contribution": 0.0,
        "codec": sanitize(hb.codec_sent, 32),
        "codec_received": sanitize(hb.codec_received, 32),
        "compute_fraction": round(hb.compute_fraction, 3),
        "round_wall_s": round(hb.round_wall_s, 2),
        "disagrees": False,
        "straggler": False,
    }


def screen(
    beats: Sequence[heartbeat_pb2.Heartbeat], now: float, clock_round: int | None
) -> tuple[list[heartbeat_pb2.Heartbeat], list[str]]:
    """Drop heartbeats that lie about their time or round; returns (kept, reasons dropped)."""
    kept, dropped = [], []
    for hb in beats:
        if hb.timestamp > now + MAX_FUTURE_S:
            dropped.append("dated in the future")
        elif clock_round is not None and hb.round > clock_round + ROUND_SLACK:
            dropped.append("round ahead of the clock")
        else:
            kept.append(hb)
    return kept, dropped


def loss_trend(peers: Sequence[dict]) -> float | None:
    """Median over live peers of their loss change per round (least squares over recent rounds)."""
    slopes = []
    for p in peers:
        ys = p["recent_losses"]
        if len(ys) < 2:
            continue
        mx, my = (len(ys) - 1) / 2, sum(ys) / len(ys)
        slopes.append(
            sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(len(ys)))
        )
    return round(statistics.median(slopes), 5) if slopes else None


def trend_label(trend: float | None, mean_loss: float | None) -> str:
    if trend is None or not mean_loss:
        return "unknown"
    if abs(trend) < FLAT_TREND * mean_loss:
        return "flat"
    return "falling" if trend < 0 else "rising"


def median_or_none(values: Sequence[float], digits: int = 2) -> float | None:
    return round(statistics.median(values), digits) if values else None


def report_round(clock_round: int | None, alive: Sequence[dict]) -> int:
    """The swarm's round: the clock's, or without one the median round live peers claim, which a few
    liars cannot move far."""
    if clock_round is not None:
        return clock_round
    return int(statistics.median_low([p["round"] for p in alive])) if alive else 0


def fill_contributions(peers: Sequence[dict]) -> None:
    """Set each row's ``contribution``: its share of the listed peers' samples."""
    samples_total = sum(p["samples_total"] for p in peers)
    for p in peers:
        p["contribution"] = round(p["samples_total"] / samples_total, 4) if samples_total else 0.0


def target_group_size(run: RunInfo | None, kept: Sequence[heartbeat_pb2.Heartbeat]) -> int:
    """The run's target group size as the run announced it, else the one most peers report; 0: unknown."""
    if run is not None and run.group_size:
        return run.group_size
    sizes = Counter(hb.group_size for hb in kept if hb.group_size)
    return sizes.most_common(1)[0][0] if sizes else 0


def coordinator_entry(run: RunInfo | None) -> dict | None:
    """The report's ``coordinator``: the bootstrap node that announced the run, if one did."""
    if run is None or run.source != "coordinator":
        return None
    return {
        "peer_id": sanitize(run.coordinator_peer_id),
        "grpc_addrs": [sanitize(a, 80) for a in run.grpc_addrs[:8]],
        "version": sanitize(run.version, 64),
    }


def swarm_totals(peers: Sequence[dict], agreement: dict | None) -> dict:
    """The report's ``totals``: sums and medians over live peers (samples over all listed ones)."""
    alive = [p for p in peers if p["alive"]]
    losses = [p["loss"] for p in alive if p["loss"] > 0]
    mean_loss = round(sum(losses) / len(losses), 4) if losses else None
    trend = loss_trend(alive)
    walls = [p["round_wall_s"] for p in alive if p["round_wall_s"] > 0]
    fractions = [p["compute_fraction"] for p in alive if p["compute_fraction"] > 0]
    return {
        "peers_alive": len(alive),
        "peers_dead": len(peers) - len(alive),
        "samples_per_s": round(sum(p["samples_per_s"] for p in alive), 2),
        "samples_total": sum(p["samples_total"] for p in peers),
        "mean_loss": mean_loss,
        "loss_trend": trend,
        "loss_trend_label": trend_label(trend, mean_loss),
        "round_wall_s": median_or_none(walls),
        "compute_fraction": median_or_none(fractions, 3),
        "bytes_sent": sum(p["bytes_sent"] for p in alive),
        "agreement": agreement,
    }


def build_report(
    run: RunInfo | None,
    beats: Sequence[heartbeat_pb2.Heartbeat],
    now: float,
    rejected: Sequence[str] = (),
) -> dict:
    """The whole health report as one JSON-ready dict (schema: coordinator/status_schema.json).

    ``rejected`` holds the reasons records were dropped before this point (``records.read_heartbeats``).
    """
    clock_round = run.round_at(now) if run is not None else None
    kept, dropped = screen(beats, now, clock_round)
    rejected = [*rejected, *dropped]
    peers = sorted((peer_entry(b, now) for b in kept), key=lambda p: (-p["samples_total"], p["peer_id"]))
    fill_contributions(peers)
    round_no = report_round(clock_round, [p for p in peers if p["alive"]])
    findings, agreement = find_problems(
        peers=peers,
        round_no=round_no,
        clock_known=clock_round is not None,
        run_version=run.version if run is not None else "",
        group_size=target_group_size(run, kept),
        rejected=rejected,
    )
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": sanitize(run.run_id) if run is not None else "",
        "run_source": run.source if run is not None else "none",
        "coordinator": coordinator_entry(run),
        "round": round_no,
        "round_s": float(run.round_s) if run is not None else 0.0,
        "peers": peers,
        "totals": swarm_totals(peers, agreement),
        "findings": findings,
        "records": {"shown": len(peers), "ignored": len(rejected), "reasons": dict(Counter(rejected))},
        "generated_at": now,
    }


def query_report(
    dht,
    run_id: str = "",
    timeout_s: float = records.DHT_TIMEOUT_S,
    now=None,
    run_key_fingerprint: str = "",
) -> dict:
    """Read the run and its heartbeats from the DHT and report.

    The coordinator record is one small lookup; the peers' beacons (one per peer, each signature
    checked) are read only when no coordinator record is usable (see the module docstring; with
    ``run_key_fingerprint``, records of other run keys are not). With ``run_id`` given, the
    heartbeats are looked up in parallel with the run. ``now``: a callable returning unix
    seconds (tests pin it); default ``time.time``.
    """
    import time

    rejected: list[str] = []

    def beats_of(rid: str):
        return records.read_heartbeats(dht, rid, timeout_s, rejected=rejected)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="status-dht") as pool:
        beats = pool.submit(beats_of, run_id) if run_id else None
        coordinators = agreed_runs(records.find_runs(dht, timeout_s, run_key_fingerprint))
        live = [c for c in coordinators if not run_id or c.run_id == run_id]
        run = choose_run(live, [] if live else records.read_beacons(dht, timeout_s), run_id)
        if beats is None and run is not None:
            beats = pool.submit(beats_of, run.run_id)
        found = beats.result() if beats is not None else []
    return build_report(run, found, (now or time.time)(), rejected)
