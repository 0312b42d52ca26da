"""Shards on the peer: fetch from a source, verify against the manifest's sha256, cache, read batches.

No byte reaches the model unless its shard hashed to the manifest's digest: a bad copy is
discarded, its source noted, and the next source tried. The cache is bounded by a disk budget;
the least recently used shards go first, never one that is pinned (being trained on).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from barnraise.coordinator.atomic import write_atomic
from barnraise.coordinator.errors import BarnraiseError, IntegrityError
from barnraise.peer.events import NO_EVENTS, BadCopy, EventLog
from barnraise.protos import manifest_pb2

log = logging.getLogger(__name__)

DEFAULT_CACHE_BUDGET_BYTES = 1 << 30


@dataclass(frozen=True)
class ShardSourceRef:
    """A named way to fetch a shard's bytes (coordinator, or another peer)."""

    name: str
    fetch: Callable[[manifest_pb2.ShardInfo], bytes]


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    """Verified bytes of a shard and where they came from."""

    data: bytes
    source: str  # "cache" or the name of the source that served the good copy
    seconds: float  # wall time spent fetching (0 for a cache hit)


class ShardCache:
    """Verified shards on local disk, keyed by sha256, within ``budget_bytes``.

    Thread-safe: the training thread adds shards while the shard server reads them.
    """

    def __init__(
        self, cache_dir: Path, budget_bytes: int = DEFAULT_CACHE_BUDGET_BYTES, events: EventLog = NO_EVENTS
    ):
        self.dir = cache_dir
        self.events = events  # where bad copies are reported (tests and benchmarks)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self.bad_sources: dict[str, int] = {}  # source name -> bad copies it served
        self.pinned: set[str] = set()  # sha256s never evicted (the shard in training)
        self.on_change: Callable[[], None] | None = None  # called after a shard is added or evicted
        self._lock = threading.Lock()

    def path(self, info: manifest_pb2.ShardInfo) -> Path:
        return self.dir / info.sha256

    def has(self, info: manifest_pb2.ShardInfo) -> bool:
        return self.path(info).is_file()

    def cached(self) -> set[str]:
        """sha256s of the shard files present (verified when they were written)."""
        try:
            return {p.name for p in self.dir.iterdir() if len(p.name) == 64 and not p.name.startswith(".")}
        except OSError:
            return set()

    def load(self, info: manifest_pb2.ShardInfo) -> bytes | None:
        """Cached bytes, re-verified (a cache file can rot); None if absent or bad."""
        path = self.path(info)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != info.sha256:
            log.warning("cached shard %d failed its sha256 check; discarding it", info.index)
            path.unlink(missing_ok=True)
            self._changed()
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return data

    def note_bad(self, source: str) -> None:
        with self._lock:
            self.bad_sources[source] = self.bad_sources.get(source, 0) + 1

    def bad_count(self, source: str) -> int:
        with self._lock:
            return self.bad_sources.get(source, 0)

    def fetch(self, info: manifest_pb2.ShardInfo, sources: Sequence[ShardSourceRef]) -> FetchResult:
        """Verified bytes of a shard from the cache or the first source that serves a good copy."""
        if (data := self.load(info)) is not None:
            return FetchResult(data=data, source="cache", seconds=0.0)
        errors = []
        t0 = time.monotonic()
        for source in sources:
            try:
                data = source.fetch(info)
            except BarnraiseError as e:
                errors.append(f"{source.name}: {e}")
                continue
            if len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
                self.note_bad(source.name)
                self.events.emit(BadCopy(index=info.index, source=source.name))
                log.warning(
                    "shard %d (%s) from %s failed its sha256 check: discarded, trying another source",
                    info.index,
                    info.sha256[:12],
                    source.name,
                )
                errors.append(f"{source.name}: sha256 mismatch")
                continue
            try:
                self.add(info, data)
            except OSError as e:  # a full disk costs the cache, not the shard we already have
                log.warning("could not cache shard %d: %s", info.index, e.strerror)
            return FetchResult(data=data, source=source.name, seconds=time.monotonic() - t0)
        raise IntegrityError(
            f"no good copy of shard {info.index} ({info.sha256[:12]}): " + "; ".join(errors or ["no sources"])
        )

    def get(self, info: manifest_pb2.ShardInfo, sources: Sequence[ShardSourceRef]) -> bytes:
        """Like ``fetch``, bytes only."""
        return self.fetch(info, sources).data

    def add(self, info: manifest_pb2.ShardInfo, data: bytes) -> None:
        """Keep verified bytes, then evict least recently used shards down to the budget."""
        write_atomic(self.path(info), data)
        self.enforce_budget(keep={info.sha256})
        self._changed()

    def enforce_budget(self, keep: set[str] | frozenset[str] = frozenset()) -> int:
        """Delete least recently used shards until the cache fits its budget; returns bytes freed.

        Pinned shards and ``keep`` stay even if they alone exceed the budget: a peer must hold the
        shard it trains on.
        """
        with self._lock:
            protected = self.pinned | set(keep)
        entries = []
        for sha in self.cached():
            try:
                st = (self.dir / sha).stat()
            except OSError:
                continue
            entries.append((st.st_mtime, sha, st.st_size))
        total = sum(size for _, _, size in entries)
        freed = 0
        for _, sha, size in sorted(entries):
            if total - freed <= self.budget_bytes:
                break
            if sha in protected:
                continue
            (self.dir / sha).unlink(missing_ok=True)
            freed += size
            log.debug("cache budget: evicted shard %s (%d bytes)", sha[:12], size)
        return freed

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def shard_tokens(data: bytes, token_dtype: str) -> torch.Tensor:
    dtype = {"uint16": np.uint16, "uint32": np.uint32}.get(token_dtype, np.uint8)
    return torch.from_numpy(np.frombuffer(data, dtype=dtype).astype(np.int64))


class BatchReader:
    """Sequential, non-overlapping (seq_len+1)-token windows of one shard, from ``offset`` on.

    ``offset`` (in tokens) is the progress a lease records: resuming from it trains nothing twice.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, offset: int = 0):
        self.tokens = tokens
        self.seq_len = seq_len
        self.offset = offset

    def remaining_windows(self) -> int:
        return max(0, (len(self.tokens) - self.offset - 1) // self.seq_len)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        n = min(batch_size, self.remaining_windows())
        if n == 0:
            return None
        span = self.tokens[self.offset : self.offset + n * self.seq_len + 1]
        x = span[:-1].view(n, self.seq_len)
        y = span[1:].unfold(0, self.seq_len, self.seq_len)[:n]
        self.offset += n * self.seq_len
        return x, y.contiguous()


def trainable_tokens(n_tokens: int, seq_len: int) -> int:
    """Tokens of a shard that ``BatchReader`` hands out as inputs (the tail shorter than a window is not)."""
    return max(0, (n_tokens - 1) // seq_len) * seq_len
