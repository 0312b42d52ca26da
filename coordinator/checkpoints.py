"""What a checkpoint is: its directory layout, its ``state.json``, its place in the data, and the DHT
record that says who holds one. No tensors here (``barnraise.peer.sync.checkpoint`` writes and
reads those), so the operator's side and the status CLI use it without torch.

A checkpoint is ``ROOT/round-NNNNNN/{model.safetensors, outer.safetensors, state.json}``, written
into a temporary directory and renamed into place whole, so a directory under its final name is
always complete; ``state.json`` holds the sha256 of both tensor files, so a file damaged later is
refused on reading, and the one before is used instead.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from barnraise.coordinator import leases, records
from barnraise.coordinator.errors import BarnraiseError, IntegrityError
from barnraise.protos import checkpoint_pb2, manifest_pb2

log = logging.getLogger(__name__)

DIR_RE = re.compile(r"^round-(\d{6,})$")
TMP_PREFIX = ".tmp-"  # a checkpoint being written; never read, removed by the next writer
MODEL_FILE, OUTER_FILE, STATE_FILE = "model.safetensors", "outer.safetensors", "state.json"
FORMAT = 1  # state.json's "format"
DEFAULT_KEEP = 3  # checkpoints kept per directory
DEFAULT_PERIOD_S = 600.0  # a checkpoint about every ten minutes of rounds
RECORD_TTL_S = 60.0  # a holder republishes its record well within this
MAX_OFFSETS = 1024  # partly trained shards a record may list (it must fit a 16 KiB DHT record)
MAX_STATE_JSON_BYTES = 1 << 20


def default_every(round_s: float) -> int:
    """Rounds between checkpoints when the operator sets none: about ten minutes of rounds."""
    return max(1, math.ceil(DEFAULT_PERIOD_S / max(round_s, 1e-3)))


def dir_name(round_no: int) -> str:
    return f"round-{round_no:06d}"


@dataclass(frozen=True, kw_only=True)
class DataPosition:
    """Where the swarm is in the data: the epoch, its finished shards, its partly trained ones."""

    epoch: int = 0  # data epoch
    done: tuple[int, ...] = ()  # shard indices finished in ``epoch``
    offsets: dict[int, int] = field(default_factory=dict)  # shard -> tokens trained in ``epoch``


@dataclass(frozen=True, kw_only=True)
class CheckpointInfo:
    """``state.json``: everything of a checkpoint but its tensors."""

    run_id: str  # the run it belongs to
    round: int  # round whose average produced the params
    params_hash: str  # of the params (``peer.sync.state.tensor_hash``), agreed by the round's members
    samples_seen: int  # samples the run had trained, approximate
    loss: float | None  # the swarm's mean inner loss at that round, if known
    position: DataPosition  # place in the data
    saved_at: float  # unix s
    model: str  # the manifest's model name
    files: dict[str, str]  # file name -> sha256 of its bytes

    def to_json(self) -> bytes:
        d = asdict(self)
        d["format"] = FORMAT
        d["position"]["offsets"] = {str(k): v for k, v in self.position.offsets.items()}
        return json.dumps(d, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CheckpointInfo:
        """Parse a ``state.json``; IntegrityError if it is not one we wrote."""
        try:
            d = json.loads(data)
            if d.pop("format") != FORMAT:
                raise ValueError("unknown format")
            pos = d.pop("position")
            position = DataPosition(
                epoch=int(pos["epoch"]),
                done=tuple(int(s) for s in pos["done"]),
                offsets={int(k): int(v) for k, v in pos["offsets"].items()},
            )
            info = cls(position=position, **d)
            if info.round < -1 or not isinstance(info.params_hash, str) or not isinstance(info.files, dict):
                raise ValueError("bad values")
            return info
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"state.json is damaged ({e})") from e


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories under ``root``, newest first (temporary ones excluded)."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = DIR_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def read_info(path: Path) -> CheckpointInfo:
    """A checkpoint directory's ``state.json``; IntegrityError if missing or damaged."""
    state = path / STATE_FILE
    try:
        if state.stat().st_size > MAX_STATE_JSON_BYTES:
            raise IntegrityError(f"{state} is too large")
        return CheckpointInfo.from_json(state.read_bytes())
    except OSError as e:
        raise IntegrityError(f"{state} is unreadable ({e.strerror})") from e


def newest_info(root: Path) -> CheckpointInfo | None:
    """The newest checkpoint whose ``state.json`` reads (tensor files not checked); None if none."""
    for _, path in list_checkpoints(root):
        try:
            return read_info(path)
        except BarnraiseError as e:
            log.warning("checkpoint %s refused: %s", path, e)
    return None


def prune(root: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints; drop older ones and leftovers of killed writes."""
    for _, path in list_checkpoints(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)
    for p in root.iterdir() if root.is_dir() else ():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)


# --- the data position, from the DHT ------------------------------------------------------------
def read_position(dht, manifest: manifest_pb2.RunManifest, timeout_s: float = 5.0) -> DataPosition:
    """The swarm's place in the data as the DHT records it: the highest epoch, its done shards and
    the offsets of the others (one DHT read per unfinished shard, so call it rarely)."""
    run_id, n = manifest.run_id, len(manifest.shards)
    epoch = leases.highest_epoch(records.get_dict(dht, records.epoch_key(run_id), timeout_s))
    done = set(
        leases.parse_done(
            records.get_dict(dht, records.done_key(run_id, epoch), timeout_s), epoch=epoch, n_shards=n
        )
    )
    offsets = {}
    now = records.dht_time()
    for info in manifest.shards:
        if info.index in done or len(offsets) >= MAX_OFFSETS:
            continue
        raw = records.get_dict(dht, records.lease_key(run_id, epoch, info.index), timeout_s)
        found = leases.parse_leases(raw, epoch=epoch, shard=info.index, n_tokens=info.n_tokens, now=now)
        if off := leases.resume_offset(found):
            offsets[info.index] = off
    return DataPosition(epoch=epoch, done=tuple(sorted(done)), offsets=offsets)


# --- the record that says who holds a checkpoint ---------------------------------------------------
def checkpoints_key(run_id: str) -> str:
    return f"barnraise/{run_id}/checkpoints"


def to_record(info: CheckpointInfo, peer_id: str, n_shards: int) -> checkpoint_pb2.CheckpointRecord:
    bitmap = bytearray((n_shards + 7) // 8)
    for s in info.position.done:
        if 0 <= s < n_shards:
            bitmap[s // 8] |= 1 << (s % 8)
    offsets = sorted(info.position.offsets.items())[:MAX_OFFSETS]
    return checkpoint_pb2.CheckpointRecord(
        peer_id=peer_id,
        run_id=info.run_id,
        round=info.round,
        params_hash=info.params_hash,
        samples_seen=max(0, info.samples_seen),
        epoch=info.position.epoch,
        done=bytes(bitmap),
        offsets=[checkpoint_pb2.ShardOffset(shard=s, offset=o) for s, o in offsets],
        loss=math.nan if info.loss is None else info.loss,
        saved_at=info.saved_at,
        timestamp=time.time(),
    )


def position_of(rec: checkpoint_pb2.CheckpointRecord) -> DataPosition:
    done = tuple(i for i in range(len(rec.done) * 8) if rec.done[i // 8] >> (i % 8) & 1)
    return DataPosition(epoch=rec.epoch, done=done, offsets={o.shard: o.offset for o in rec.offsets})


def operator_subkey(run_public_key: bytes, holder: str) -> str:
    """Where the operator's bootstrap announces its checkpoint: sealed by the run key (the
    bootstrap's own libp2p identity is not an Ed25519 key that could seal it)."""
    from barnraise.coordinator.signing import runkey_subkey

    return runkey_subkey(run_public_key, holder)


def publish(dht, rec: checkpoint_pb2.CheckpointRecord, subkey: str = "") -> bool:
    """Store ``rec`` under its holder's peer id, or ``subkey`` (``operator_subkey``)."""
    key = checkpoints_key(rec.run_id)
    return records.store(
        dht, key, subkey or rec.peer_id, rec.SerializeToString(), RECORD_TTL_S, timeout_s=5.0
    )


def record_problem(
    rec: checkpoint_pb2.CheckpointRecord, subkey: str, run_id: str, n_shards: int | None
) -> str | None:
    """Why a checkpoint record read from the DHT cannot be used, or None. ``n_shards``: the run's
    shard count, when the reader knows the manifest."""
    from barnraise.coordinator.signing import RUNKEY_PREFIX

    operator = subkey.startswith(RUNKEY_PREFIX) and subkey.endswith("/" + rec.peer_id)
    if not (rec.peer_id == subkey or operator) or rec.run_id != run_id or not rec.peer_id:
        return "holder or run does not match its key"
    if not (0 <= rec.round < records.MAX_ROUND) or not (0 < len(rec.params_hash) <= 64):
        return "round or hash out of range"
    limit = n_shards if n_shards is not None else 8 * records.MAX_RECORD_BYTES
    if len(rec.done) > (limit + 7) // 8 or len(rec.offsets) > MAX_OFFSETS:
        return "data position larger than the run"
    if any(o.shard >= limit for o in rec.offsets) or rec.samples_seen > records.MAX_COUNT:
        return "data position out of range"
    if not (math.isfinite(rec.saved_at) and rec.saved_at <= time.time() + 60):
        return "saved in the future"
    return None


def read_records(
    dht, run_id: str, n_shards: int | None = None, timeout_s: float = 5.0
) -> list[tuple[str, checkpoint_pb2.CheckpointRecord]]:
    """(subkey, record) of a run's valid checkpoint records, newest round first, each sealed by its
    holder or, under ``operator_subkey``, by the run key."""
    out = []
    for subkey, data in records.get_dict(dht, checkpoints_key(run_id), timeout_s).items():
        rec = records.parse_record(data, checkpoint_pb2.CheckpointRecord)
        if rec is not None and record_problem(rec, subkey, run_id, n_shards) is None:
            out.append((subkey, rec))
    return sorted(out, key=lambda x: (-x[1].round, x[1].peer_id))


def status_entry(found: list[tuple[str, checkpoint_pb2.CheckpointRecord]], now: float) -> dict | None:
    """The newest checkpoint for ``status``: its round, hash, age and how many nodes hold it."""
    if not found:
        return None
    recs = [rec for _, rec in found]
    top = recs[0]
    holders = sum(1 for r in recs if (r.round, r.params_hash) == (top.round, top.params_hash))
    return {
        "round": top.round,
        "params_hash": "".join(c for c in top.params_hash if c.isalnum())[:64],
        "saved_at": top.saved_at,
        "age_s": round(max(0.0, now - top.saved_at), 1),
        "holders": holders,
        "loss": top.loss if math.isfinite(top.loss) else None,
    }
