"""Loss on the run's held-out split (``coordinator/operator/heldout.py``): the number ``export``
prints beside the weights it writes, measured on text no peer trained on.

The split is cut into non-overlapping windows of ``seq_len + 1`` tokens (inputs and their next-token
targets) and evaluated in small batches without gradients, so a CPU finishes a gpt-small split in
seconds and memory stays at a few sequences' activations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from barnraise.coordinator.errors import IntegrityError

EVAL_BATCH = 8  # sequences per forward pass
_DTYPES = {"uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32}


def split_sequences(data: bytes, token_dtype: str, seq_len: int, vocab_size: int) -> torch.Tensor:
    """The split as a [n, seq_len + 1] tensor of token ids; refuses ids outside the vocabulary."""
    dtype = _DTYPES.get(token_dtype)
    if dtype is None or len(data) % np.dtype(dtype).itemsize:
        raise IntegrityError(f"held-out split: {len(data)} bytes are not {token_dtype} tokens")
    ids = np.frombuffer(data, dtype=dtype)
    n = len(ids) // (seq_len + 1)
    if n and int(ids[: n * (seq_len + 1)].max()) >= vocab_size:
        raise IntegrityError(f"held-out split: a token id is outside the vocabulary of {vocab_size}")
    return torch.from_numpy(ids[: n * (seq_len + 1)].astype(np.int64)).view(n, seq_len + 1)


@torch.no_grad()
def held_out_loss(model: nn.Module, seqs: torch.Tensor) -> float | None:
    """Mean next-token cross-entropy of ``model`` (``model(idx, targets) -> (logits, loss)``) over
    ``seqs``; None when there are none."""
    if len(seqs) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in seqs.split(EVAL_BATCH):
            _, loss = model(batch[:, :-1], targets=batch[:, 1:])
            total += float(loss) * len(batch)
            count += len(batch)
    finally:
        model.train(was_training)
    return total / count
