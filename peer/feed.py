"""The peer's stream of training batches: shards in a per-peer order, fetched, verified, read in
sequence. (Leases through the DHT replace the per-peer order when the swarm coordinates shards.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import torch

from coordinator.errors import IntegrityError
from peer.shards import BatchReader, ShardCache, ShardSourceRef, shard_tokens
from protos import manifest_pb2

log = logging.getLogger(__name__)


class ShardFeed:
    def __init__(
        self,
        manifest: manifest_pb2.RunManifest,
        cache: ShardCache,
        sources: Sequence[ShardSourceRef],
        peer_id: str,
    ):
        self.manifest = manifest
        self.cache = cache
        self.sources = list(sources)
        key = f"{manifest.seed}/{peer_id}".encode()
        self.order = sorted(manifest.shards, key=lambda s: hashlib.sha256(key + s.sha256.encode()).digest())
        self.position = 0
        self.epoch = 0
        self.reader: BatchReader | None = None
        self.bad: set[str] = set()
        self.current: manifest_pb2.ShardInfo | None = None

    def _open_next(self) -> None:
        for _ in range(len(self.order) + 1):
            if self.position >= len(self.order):
                self.position, self.epoch = 0, self.epoch + 1
            info = self.order[self.position]
            self.position += 1
            if info.sha256 in self.bad:
                continue
            try:
                data = self.cache.get(info, self.sources)
            except IntegrityError as e:
                log.error("%s; skipping this shard", e)
                self.bad.add(info.sha256)
                continue
            self.current = info
            self.reader = BatchReader(
                shard_tokens(data, self.manifest.dataset.token_dtype), self.manifest.model.seq_len
            )
            return
        raise IntegrityError("no shard of this run could be obtained with a valid sha256: refusing to train")

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(len(self.order) + 2):
            if self.reader is not None and (batch := self.reader.next_batch(batch_size)) is not None:
                return batch
            self._open_next()
        raise IntegrityError("shards are too short for the model's context length")

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch for probing memory that does not advance the feed."""
        if self.reader is None:
            self._open_next()
        tokens = self.reader.tokens
        L = self.manifest.model.seq_len
        n_windows = max(1, (len(tokens) - 1) // L)
        idx = torch.arange(n) % n_windows
        x = torch.stack([tokens[i * L : i * L + L] for i in idx.tolist()])
        y = torch.stack([tokens[i * L + 1 : i * L + L + 1] for i in idx.tolist()])
        return x, y
