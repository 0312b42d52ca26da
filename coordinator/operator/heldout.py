"""The held-out split: the dataset's last tokens, kept out of the shards at ``init``.

``export`` reports the loss of the weights it writes on text that no peer trained on; without a
split that number would be the training loss, which says little about what the model learnt. The
split is the end of the token stream, cut off while the shards are written, so it needs no second
pass over the dataset and memory stays within the split's size. It takes at most a twentieth of the
dataset, so a small dataset keeps nearly all its tokens for training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from barnraise.coordinator.operator.tokensource import TOKEN_ITEMSIZE, TokenSource

HELD_OUT_SEQS = 64  # sequences held out by default: enough for a loss to about 1%, quick on a CPU
MAX_SHARE = 20  # the split is at most 1/MAX_SHARE of the dataset's tokens
HELD_OUT_FILE = "held_out.bin"  # its name among the run's files


class TailSplit:
    """Wraps a token source so its last ``seqs * (seq_len + 1)`` tokens go to ``held`` instead.

    Iterate ``source().chunks`` (the shard writer does); afterwards ``held`` holds the split, in the
    source's token dtype: empty when ``seqs`` is 0 or the dataset is too small to spare a sequence.
    """

    def __init__(self, source: TokenSource, *, seqs: int, seq_len: int):
        self._inner = source
        self._itemsize = TOKEN_ITEMSIZE.get(source.token_dtype, 1)
        self._seq_tokens = seq_len + 1
        self._want = max(0, seqs) * self._seq_tokens * self._itemsize
        self.held = b""

    def source(self) -> TokenSource:
        return replace(self._inner, chunks=self._chunks())

    def _chunks(self) -> Iterator[bytes]:
        if self._want == 0:
            yield from self._inner.chunks
            return
        tail, total = bytearray(), 0
        for chunk in self._inner.chunks:
            total += len(chunk)
            tail += chunk
            if len(tail) > 2 * self._want:  # pass the bytes that can no longer be in the split on
                cut = len(tail) - self._want
                yield bytes(tail[:cut])
                del tail[:cut]
        keep = self._split_bytes(total)
        if len(tail) > keep:
            yield bytes(tail[: len(tail) - keep])
        self.held = bytes(tail[len(tail) - keep :]) if keep else b""

    def _split_bytes(self, total: int) -> int:
        """Whole sequences, at most the wanted count and 1/MAX_SHARE of the dataset."""
        seq_bytes = self._seq_tokens * self._itemsize
        return min(self._want, (total // MAX_SHARE) // seq_bytes * seq_bytes)
