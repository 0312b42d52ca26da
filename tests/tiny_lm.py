"""A small language model behind a ``py:`` entry point (``py:tests.tiny_lm:build``), for the tests.

It follows the documented contract: ``build(**kwargs)`` returns a torch module; ``module(idx)`` gives
logits and ``module(idx, targets)`` the loss. ``BARNRAISE_TEST_EXTRA_WIDTH`` widens it, standing in
for a volunteer who installed another version of the package.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F


class TinyLM(nn.Module):
    """Each position sees its own embedding and the running mean of the ones before it (causal)."""

    def __init__(self, vocab_size: int, width: int, seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(seq_len, width)
        self.mix = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width)
        )
        self.head = nn.Linear(width, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        t = idx.shape[1]
        x = self.emb(idx) + self.pos(torch.arange(t, device=idx.device))
        seen = x.cumsum(1) / torch.arange(1, t + 1, device=idx.device).view(1, t, 1)
        logits = self.head(x + self.mix(seen))
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def build(vocab_size: int, width: int = 32, seq_len: int = 64) -> nn.Module:
    width += int(os.environ.get("BARNRAISE_TEST_EXTRA_WIDTH", "0"))
    return TinyLM(vocab_size, width, seq_len)
