"""Shards on the peer: fetch from a source, verify against the manifest's sha256, cache, read batches.

No byte reaches the model unless its shard hashed to the manifest's digest: a bad copy is
discarded, its source noted, and the next source tried.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coordinator.atomic import write_atomic
from coordinator.errors import BarnraiseError, IntegrityError
from protos import manifest_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSourceRef:
    """A named way to fetch a shard's bytes (coordinator, or another peer)."""

    name: str
    fetch: Callable[[manifest_pb2.ShardInfo], bytes]


class ShardCache:
    """Verified shards on local disk, keyed by sha256."""

    def __init__(self, cache_dir: Path):
        self.dir = cache_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bad_sources: dict[str, int] = {}

    def path(self, info: manifest_pb2.ShardInfo) -> Path:
        return self.dir / info.sha256

    def has(self, info: manifest_pb2.ShardInfo) -> bool:
        return self.path(info).is_file()

    def load(self, info: manifest_pb2.ShardInfo) -> bytes | None:
        """Cached bytes, re-verified (a cache file can rot); None if absent or bad."""
        try:
            data = self.path(info).read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != info.sha256:
            log.warning("cached shard %d failed its sha256 check; discarding it", info.index)
            self.path(info).unlink(missing_ok=True)
            return None
        return data

    def get(self, info: manifest_pb2.ShardInfo, sources: Sequence[ShardSourceRef]) -> bytes:
        """Verified bytes of a shard from the cache or the first source that serves a good copy."""
        if (data := self.load(info)) is not None:
            return data
        errors = []
        for source in sources:
            try:
                data = source.fetch(info)
            except BarnraiseError as e:
                errors.append(f"{source.name}: {e}")
                continue
            if len(data) != info.size_bytes or hashlib.sha256(data).hexdigest() != info.sha256:
                self.bad_sources[source.name] = self.bad_sources.get(source.name, 0) + 1
                log.warning(
                    "shard %d (%s) from %s failed its sha256 check: discarded, trying another source",
                    info.index,
                    info.sha256[:12],
                    source.name,
                )
                errors.append(f"{source.name}: sha256 mismatch")
                continue
            write_atomic(self.path(info), data)
            return data
        raise IntegrityError(
            f"no good copy of shard {info.index} ({info.sha256[:12]}): " + "; ".join(errors or ["no sources"])
        )


def shard_tokens(data: bytes, token_dtype: str) -> torch.Tensor:
    dtype = np.uint16 if token_dtype == "uint16" else np.uint8
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
