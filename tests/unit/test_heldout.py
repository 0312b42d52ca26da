"""The held-out split: cut from the stream's end, whole sequences, at most 1/20 of the data, and
evaluated the same way export does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barnraise.coordinator.errors import IntegrityError
from barnraise.coordinator.manifest import model_config
from barnraise.coordinator.operator.heldout import TailSplit
from barnraise.coordinator.operator.tokensource import TokenSource
from barnraise.peer.training.heldout import held_out_loss, split_sequences
from barnraise.peer.training.model import build_model


def source(data: bytes, dtype: str = "uint8", chunk: int = 1000) -> TokenSource:
    chunks = iter([data[i : i + chunk] for i in range(0, len(data), chunk)])
    return TokenSource(kind="test", source="test", token_dtype=dtype, vocab_size=256, chunks=chunks)


def split(data: bytes, seqs: int, seq_len: int, dtype: str = "uint8", chunk: int = 1000):
    s = TailSplit(source(data, dtype, chunk), seqs=seqs, seq_len=seq_len)
    trained = b"".join(s.source().chunks)
    return trained, s.held


@pytest.mark.parametrize("chunk", [1, 7, 1000, 10**6])
def test_the_split_is_the_streams_end_and_nothing_is_lost(chunk):
    data = bytes(range(256)) * 400  # 102,400 bytes
    trained, held = split(data, seqs=4, seq_len=15, chunk=chunk)
    assert len(held) == 4 * 16 and trained + held == data


def test_a_small_dataset_gives_at_most_a_twentieth_in_whole_sequences():
    data = bytes(1000)
    trained, held = split(data, seqs=64, seq_len=15)
    assert len(held) == 48  # 1000 // 20 = 50 bytes: three whole 16-token sequences
    assert trained + held == data
    trained, held = split(bytes(300), seqs=64, seq_len=15)  # not one sequence to spare
    assert held == b"" and trained == bytes(300)


def test_no_split_when_asked_for_none_and_uint16_stays_aligned():
    data = bytes(range(256)) * 40
    assert split(data, seqs=0, seq_len=15) == (data, b"")
    trained, held = split(data, seqs=2, seq_len=7, dtype="uint16", chunk=3)
    assert len(held) == 2 * 8 * 2 and trained + held == data


def test_split_sequences_checks_its_bytes():
    ids = np.arange(34, dtype=np.uint16) % 50
    seqs = split_sequences(ids.tobytes(), "uint16", 16, 50)
    assert seqs.shape == (2, 17) and seqs.dtype == torch.int64
    assert seqs.flatten().tolist() == ids.tolist()
    with pytest.raises(IntegrityError, match="not uint16 tokens"):
        split_sequences(b"abc", "uint16", 16, 50)
    with pytest.raises(IntegrityError, match="outside the vocabulary"):
        split_sequences(ids.tobytes(), "uint16", 16, 20)


def test_held_out_loss_is_the_models_mean_loss_and_leaves_it_in_train_mode():
    model = build_model(model_config("gpt-nano", 256), 1)
    seqs = torch.randint(0, 256, (10, 33), generator=torch.Generator().manual_seed(0))
    loss = held_out_loss(model, seqs)
    with torch.no_grad():
        model.eval()
        _, want = model(seqs[:, :-1], targets=seqs[:, 1:])
        model.train()
    assert loss == pytest.approx(float(want), rel=1e-5)
    assert model.training and held_out_loss(model, seqs[:0]) is None
