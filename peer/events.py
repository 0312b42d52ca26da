"""What a peer did, as typed events, for tests and benchmarks to read instead of its log lines.

A peer started with the hidden ``barnraise peer --events FILE`` appends one JSON object per event
to FILE, flushed as it is written, so a peer killed with SIGKILL loses nothing it had reported::

    {"event": "round_applied", "t": 1732250000.12, "round": 12, "members": 3, "params_hash": "..."}

``t`` is the unix time of the event. Without a file, ``EventLog.emit`` writes nothing. Log lines
stay for people to read (an event the daemon logs is its ``str``, so the two cannot drift apart);
``read_events(path, kind)`` turns a file back into these classes and is what tests and benchmark
scripts share. The events:

    joined          the peer joined a run
    device_ready    the peer's device, precision and the micro-batch its probe found
    window_trained  a round's compute window closed
    exchange_done   an averaging attempt ended, applied or not, with the offenders it saw
    round_applied   the round's average was applied: the global state moved
    round_missed    it was not; the local progress is carried to the next round
    state_adopted   a state downloaded from a donor replaced ours
    paused          the peer stopped training and averaging (pause, --schedule); heartbeats go on
    resumed         it trains again
    leaving         it leaves: asked to (leave, the first Ctrl-C), its last round applied or missed
    first_shard     the first shard was in hand
    shard_fetched   a verified shard arrived from a source
    bad_copy        a source served bytes that failed the manifest's sha256 (discarded)
    shard_skipped   no source served a good copy of a leased shard: back to the pool for a while
    range_trained   a completed step trained tokens [start, end) of a shard (the old ``--ledger`` line)
    epoch_complete  every shard of an epoch was trained, as far as this peer knows
    clock_estimated the peer estimated its clock's offset against the swarm (peer/clock.py)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, TypeVar

from barnraise.coordinator.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = ""  # the "event" key of its JSON line
    line: ClassVar[str] = ""  # the daemon's log line, filled from the fields (str.format)
    t: float = field(default_factory=time.time)  # unix seconds when it happened

    def __str__(self) -> str:
        return self.line.format_map(vars(self)) if self.line else repr(self)


@dataclass(frozen=True, kw_only=True)
class Joined(Event):
    kind: ClassVar[str] = "joined"
    peer_id: str  # this peer's id
    run_id: str  # the run it joined


@dataclass(frozen=True, kw_only=True)
class WindowTrained(Event):
    kind: ClassVar[str] = "window_trained"
    line: ClassVar[str] = (
        "round {round}: loss {loss:.3f}, {samples_per_s:.0f} samples/s, compute {compute_s:.2f} s of {wall_s:.2f} s"
    )
    round: int  # the round whose window closed
    loss: float  # mean inner loss of the window (NaN when no step ran)
    samples: int  # sequences trained in the window
    samples_per_s: float  # over compute time (the heartbeat's figure; kept from the last window with steps)
    compute_s: float  # seconds spent computing
    wall_s: float  # seconds since the previous window closed
    peak_memory_bytes: int = 0  # device memory at the window's peak (0 on CPU, where it is not tracked)

    @classmethod
    def of(cls, r: int, window, samples_per_s: float, wall_s: float) -> WindowTrained:
        """From the trainer's ``WindowResult`` of round ``r``."""
        return cls(
            round=r,
            loss=window.mean_loss,
            samples=window.samples,
            samples_per_s=samples_per_s,
            compute_s=window.compute_s,
            wall_s=wall_s,
            peak_memory_bytes=window.peak_memory_bytes,
        )


@dataclass(frozen=True, kw_only=True)
class DeviceReady(Event):
    kind: ClassVar[str] = "device_ready"
    line: ClassVar[str] = "device {device} ({precision}): micro-batch {micro_batch} of {batch_size}"
    device: str  # as in the heartbeat, e.g. "cuda:0 NVIDIA H100" or "cpu (4 threads)"
    precision: str  # "fp32", or the CUDA autocast dtype: "bf16", "fp16" (with a gradient scaler)
    params: int  # the model's parameters
    batch_size: int  # the run's sequences per inner step
    micro_batch: int  # sequences per forward/backward that fit (batch_size on CPU)
    tried: list[int]  # micro-batches the probe tried, largest first (none on CPU)
    peak_memory_bytes: int  # device memory at the peak of the try that fit (0 on CPU)

    @classmethod
    def of(cls, info, probe, params: int) -> DeviceReady:
        """From the trainer's ``DeviceInfo`` and ``ProbeResult``."""
        return cls(
            device=info.description,
            precision=info.precision,
            params=params,
            batch_size=probe.batch_size,
            micro_batch=probe.micro_batch,
            tried=list(probe.tried),
            peak_memory_bytes=probe.peak_memory_bytes,
        )


@dataclass(frozen=True, kw_only=True)
class ExchangeDone(Event):
    kind: ClassVar[str] = "exchange_done"
    round: int  # the round averaged
    members: list[str]  # peer ids of the group (empty if none formed)
    bytes_sent: int  # payload and control frames, bytes
    bytes_received: int  # likewise, bytes
    duration_s: float  # matchmaking, all-reduce and verdict, seconds
    ok: bool  # the group agreed on the average this peer assembled
    reason: str  # why not, when not ok
    offenders: dict[str, str]  # peer id -> what it did, as this peer saw it or was told
    caught: dict[str, str] = field(default_factory=dict)  # reducers proven (signed evidence) to have lied
    audit_bytes: int = 0  # of bytes_sent + bytes_received, those of checking reducers

    @classmethod
    def of(cls, out) -> ExchangeDone:
        """From the averager's ``RoundOutcome``, which has every field of this event but ``t``."""
        return cls(**{f.name: getattr(out, f.name) for f in dataclasses.fields(cls) if f.name != "t"})


@dataclass(frozen=True, kw_only=True)
class RoundApplied(Event):
    kind: ClassVar[str] = "round_applied"
    line: ClassVar[str] = (
        "round {round}: averaged with {members} peer(s) in {duration_s:.2f} s, params {params_hash}"
    )
    round: int  # the round whose average moved the global state
    members: int  # group size, this peer included
    params_hash: str  # of the global state after the outer step
    duration_s: float  # of the averaging, seconds
    leader: str = ""  # peer id of the member that formed the group
    reducers: list[str] = field(default_factory=list)  # peer ids of the members that reduced a part


@dataclass(frozen=True, kw_only=True)
class RoundMissed(Event):
    kind: ClassVar[str] = "round_missed"
    line: ClassVar[str] = "round {round}: not applied ({reason}); local progress carried to the next round"
    round: int  # the round not applied
    reason: str  # why


@dataclass(frozen=True, kw_only=True)
class StateAdopted(Event):
    kind: ClassVar[str] = "state_adopted"
    line: ClassVar[str] = "synced state of round {round} (params {params_hash}) from {donor:.12}"
    round: int  # of the adopted state
    params_hash: str  # its hash
    donor: str  # peer id of the peer that served it


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    line: ClassVar[str] = "paused in round {round} ({why}): no training or averaging until resumed"
    round: int  # the round of the swarm's clock when it paused
    why: str  # "pause" (the control socket) or "schedule"


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    line: ClassVar[str] = "resumed in round {round}"
    round: int  # the round of the swarm's clock when it resumed


@dataclass(frozen=True, kw_only=True)
class Leaving(Event):
    kind: ClassVar[str] = "leaving"
    line: ClassVar[str] = "leaving after round {round}: {rounds} rounds completed"
    round: int  # the last round it launched (-1: none)
    rounds: int  # rounds it applied in this run


@dataclass(frozen=True, kw_only=True)
class FirstShard(Event):
    kind: ClassVar[str] = "first_shard"
    line: ClassVar[str] = "first shard in hand {seconds:.2f} s after the trainer asked"
    seconds: float  # from the trainer's first request to a verified shard in hand


@dataclass(frozen=True, kw_only=True)
class ShardFetched(Event):
    kind: ClassVar[str] = "shard_fetched"
    line: ClassVar[str] = "shard {index}: {bytes} bytes from {source} in {seconds:.2f} s"
    index: int  # the shard's index in the manifest
    bytes: int  # its size
    source: str  # "coordinator HOST:PORT" or "peer PEER_ID"
    seconds: float  # wall time of the fetch, bad copies before it included


@dataclass(frozen=True, kw_only=True)
class BadCopy(Event):
    kind: ClassVar[str] = "bad_copy"
    index: int  # the shard's index in the manifest
    source: str  # who served the copy that failed its sha256


@dataclass(frozen=True, kw_only=True)
class ShardSkipped(Event):
    kind: ClassVar[str] = "shard_skipped"
    index: int  # the shard's index in the manifest
    reason: str  # what each source said


@dataclass(frozen=True, kw_only=True)
class RangeTrained(Event):
    kind: ClassVar[str] = "range_trained"
    peer: str  # peer id of the peer that trained it
    epoch: int  # of the swarm's pass over the dataset
    shard: int  # the shard's index in the manifest
    start: int  # first token
    end: int  # one past the last token
    sha256: str  # of the shard bytes actually read


@dataclass(frozen=True, kw_only=True)
class EpochComplete(Event):
    kind: ClassVar[str] = "epoch_complete"
    line: ClassVar[str] = "epoch {epoch} complete: all {shards} shards trained"
    epoch: int  # the epoch every shard of which is done
    shards: int  # how many shards that is


@dataclass(frozen=True, kw_only=True)
class ReachChanged(Event):
    kind: ClassVar[str] = "reach_changed"
    line: ClassVar[str] = "reachability: {reach} ({detail})"
    reach: str  # how others reach this peer now: public, relayed, client or unknown
    detail: str  # what the probe found (who dialled us back, at which address, or why none could)


@dataclass(frozen=True, kw_only=True)
class ClockEstimated(Event):
    kind: ClassVar[str] = "clock_estimated"
    line: ClassVar[str] = "clock: {offset_s:+.3f} s against the swarm ({sources} sources agree)"
    offset_s: float  # this machine's clock minus the swarm's, seconds; its rounds are corrected by it
    sources: int  # swarm members (and the bootstrap) the median was taken over
    dropped: list[str] = field(default_factory=list)  # sources left out as outliers


KINDS: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Joined,
        DeviceReady,
        WindowTrained,
        ExchangeDone,
        RoundApplied,
        RoundMissed,
        StateAdopted,
        Paused,
        Resumed,
        Leaving,
        FirstShard,
        ShardFetched,
        BadCopy,
        ShardSkipped,
        RangeTrained,
        EpochComplete,
        ReachChanged,
        ClockEstimated,
    )
}


class EventLog:
    """The one sink every event goes through: JSON Lines files, each with an optional kind filter.

    Safe to use from several threads. With no file, ``emit`` does nothing and ``enabled`` is False.
    """

    def __init__(self, outputs: Sequence[tuple[Path, frozenset[str] | None]] = ()):
        self._files = []
        self._lock = threading.Lock()
        for path, kinds in outputs:
            try:
                self._files.append((open(path, "a", encoding="utf-8"), kinds))
            except OSError as e:
                self.close()
                raise ConfigError(f"cannot open events file {path}: {e.strerror}") from e

    @property
    def enabled(self) -> bool:
        return bool(self._files)

    def emit(self, event: Event, log: logging.Logger | None = None, level: int = logging.INFO) -> None:
        """Write ``event``; with ``log``, also log its line for people (``str(event)``)."""
        if log is not None:
            log.log(level, "%s", event)
        if not self._files:
            return
        line = json.dumps({"event": event.kind, **dataclasses.asdict(event)}) + "\n"
        with self._lock:
            for f, kinds in self._files:
                if (kinds is None or event.kind in kinds) and not f.closed:
                    f.write(line)
                    f.flush()

    def close(self) -> None:
        with self._lock:
            for f, _ in self._files:
                f.close()


NO_EVENTS = EventLog()


def open_events(path: Path | None = None, *, ledger: Path | None = None) -> EventLog:
    """The sink of ``--events FILE`` (every event) and ``--ledger FILE`` (``range_trained`` only)."""
    outputs = [(path, None)] if path is not None else []
    if ledger is not None:
        outputs.append((ledger, frozenset({RangeTrained.kind})))
    return EventLog(outputs) if outputs else NO_EVENTS


E = TypeVar("E", bound=Event)


def read_events(path: Path, kind: type[E] | None = None) -> list[E]:
    """Events in ``path``, oldest first; only those of class ``kind`` if given.

    A missing file has none; a line cut short by a kill and kinds this version does not know are
    skipped. A known kind whose fields differ raises TypeError: the file and the reader disagree.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        name = raw.pop("event", None) if isinstance(raw, dict) else None
        cls = KINDS.get(name) if isinstance(name, str) else None
        if cls is not None and (kind is None or cls is kind):
            out.append(cls(**raw))
    return out
