"""Text from a trained model: sampling token by token, seeded, on the CPU (``barnraise sample``)."""

from __future__ import annotations

import torch
from torch import nn


class ByteTokenizer:
    """The built-in runs' tokenizer: UTF-8 bytes are the tokens."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


@torch.no_grad()
def generate(
    model: nn.Module, tokenizer, prompt: str, tokens: int, seed: int, temperature: float = 0.8
) -> str:
    """``prompt`` followed by ``tokens`` sampled tokens, decoded. The context is cut to the model's
    ``seq_len`` window when it has one."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(prompt) or [0]
    window = getattr(model, "seq_len", None) or 1024
    out: list[int] = []
    for _ in range(tokens):
        ctx = torch.tensor([(ids + out)[-window:]], dtype=torch.long)
        logits = model(ctx)
        logits = logits[0] if isinstance(logits, tuple) else logits
        probs = torch.softmax(logits[0, -1].float() / max(temperature, 1e-4), dim=-1)
        out.append(int(torch.multinomial(probs, 1, generator=gen)))
    return prompt + tokenizer.decode(out)
