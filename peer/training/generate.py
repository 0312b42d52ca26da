"""Sample text from the run's model: what ``barnraise sample`` prints to show what a run learnt.

Top-k sampling with a temperature, from a seeded generator, so the same state, prompt and seed
give the same text. The context is cut to the model's sequence length.
"""

from __future__ import annotations

import torch
from torch import nn

from barnraise.coordinator.tokenizer import Tokenizer

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    tokens: int,
    seed: int = 0,
    *,
    seq_len: int = 256,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
) -> str:
    """The text ``model`` continues ``prompt`` with, ``tokens`` tokens long (the prompt not included).

    ``model`` is called as ``model(idx) -> (logits, _)`` (``build_run_model``'s convention); only ids
    the tokenizer knows are sampled, since a model's vocabulary may be padded past the tokenizer's.
    """
    if tokens < 0 or temperature <= 0 or top_k < 1:
        raise ValueError("tokens must be >= 0, temperature > 0 and top_k >= 1")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = tokenizer.encode(prompt)
    ids = list(prompt_ids) or tokenizer.encode("\n") or [0]
    start = len(ids)
    try:
        for _ in range(tokens):
            idx = torch.tensor([ids[-seq_len:]], dtype=torch.long, device=device)
            logits, _ = model(idx)
            last = logits[0, -1, : tokenizer.vocab_size].float().cpu() / temperature
            k = min(top_k, last.numel())
            top, where = torch.topk(last, k)
            choice = torch.multinomial(torch.softmax(top, dim=-1), 1, generator=gen)
            ids.append(int(where[choice]))
    finally:
        model.train(was_training)
    whole = tokenizer.decode(ids)
    head = tokenizer.decode(ids[:start])
    return whole[len(head) :] if whole.startswith(head) else tokenizer.decode(ids[start:])
