"""The sparse codec: round trip, sizes, error feedback, and hostile payloads refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs, sparse
from barnraise.peer.averaging.sparse import decode_positions, encode_sparse, payload_sizes

pytestmark = pytest.mark.timeout(60)


def _randn(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("numel", [0, 1, 15, 16, 17, 100, 4095, 4096, 4097, 3 * 4096 + 5])
def test_round_trip_keeps_the_largest_of_each_chunk_with_two_bit_values(numel):
    x = _randn(numel)
    enc = codecs.encode(x, "sparse")
    assert (enc.block_size, enc.nnz) == (4096, 64)
    got = codecs.decode(enc, numel, "sparse")
    assert got.shape == (numel,) and got.dtype == torch.float32
    for c0 in range(0, numel, 4096):
        seg, out = x[c0 : c0 + 4096], got[c0 : c0 + 4096]
        k = min(64, seg.numel())
        kept = out != 0
        assert int(kept.sum()) == k
        top = set(torch.topk(seg.abs(), k).indices.tolist())
        assert set(kept.nonzero().flatten().tolist()) == top  # the k largest magnitudes
        assert bool((torch.sign(out[kept]) == torch.sign(seg[kept])).all())
        levels = (out[kept].abs() / out[kept].abs().min()).unique()  # two magnitudes: s and 3s
        assert levels.numel() <= 2 and bool(((levels - 1).abs() < 1e-6).any() or levels.numel() == 0)


def test_size_is_under_three_hundredths_of_a_byte_per_parameter():
    n = 1 << 20
    enc = codecs.encode(_randn(n), "sparse")
    assert len(enc.data) + len(enc.scales) + len(enc.indices) == sum(payload_sizes(n, 4096, 64))
    assert len(enc.SerializeToString()) / n < 0.03
    assert len(enc.SerializeToString()) <= codecs.max_encoded_bytes("sparse", n)
    assert sparse.bytes_per_param() == pytest.approx(0.0278, abs=1e-4)


def test_encoding_is_deterministic_and_decoding_is_exact_on_the_wire_values():
    x = _randn(10_000, seed=3)
    a, b = codecs.encode(x, "sparse"), codecs.encode(x.clone(), "sparse")
    assert a.SerializeToString() == b.SerializeToString()
    again = codecs.encode(codecs.decode(a, x.numel(), "sparse"), "sparse")
    assert torch.equal(codecs.decode(again, x.numel(), "sparse"), codecs.decode(a, x.numel(), "sparse"))


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_error_feedback_keeps_exactly_what_was_dropped(decay):
    ef = codecs.ErrorFeedback(decay=decay)
    first = _randn(9000, seed=1)
    c1 = ef.compensate(first)
    sent1 = codecs.decode(codecs.encode(c1, "sparse"), c1.numel(), "sparse")
    ef.remember(c1, sent1)
    assert torch.equal(ef.residual, c1 - sent1)  # bit for bit: nothing lost, nothing invented
    assert torch.equal(c1, first)
    second = _randn(9000, seed=2)
    c2 = ef.compensate(second)
    assert torch.allclose(c2, second + decay * (first - sent1))
    # over many rounds, sent + residual = the (decayed) sum of updates: what compression drops comes later
    total = torch.zeros(9000)
    ef = codecs.ErrorFeedback()
    sent = torch.zeros(9000)
    for r in range(20):
        u = _randn(9000, seed=10 + r)
        total += u
        c = ef.compensate(u)
        s = codecs.decode(codecs.encode(c, "sparse"), 9000, "sparse")
        ef.remember(c, s)
        sent += s
    assert torch.allclose(sent + ef.residual, total, atol=1e-4)


def test_error_feedback_decay_is_checked():
    with pytest.raises(ValueError):
        codecs.ErrorFeedback(decay=0.0)


def _small() -> tuple[torch.Tensor, object]:
    x = torch.tensor(([0.0, 1.0, -2.0, 3.0, 0.5, -0.1, 0.2, 4.0] + [0.0] * 8) * 2)  # 2 chunks of 16
    return x, encode_sparse(x, 16, 3)


def _with_indices(enc, positions: list[int], bits: int = 4) -> object:
    out = type(enc)()
    out.CopyFrom(enc)
    out.indices = sparse._pack_bits(np.array(positions, dtype=np.int64), bits)
    return out


def test_hand_built_payload_decodes_to_the_values_it_says():
    _, enc = _small()
    pos, _ = decode_positions(enc, 32)
    assert pos.tolist() == [2, 3, 7, 18, 19, 23]
    got = codecs.decode(enc, 32, "sparse")
    assert got[7] > 0 and got[2] < 0 and got[0] == 0


def test_out_of_range_index_is_refused():
    # a short last chunk: 20 values = 16 + 4; index 5 in the 4-value chunk is out of range
    x = _randn(20)
    enc = encode_sparse(x, 16, 3)
    pos, _ = decode_positions(enc, 20)
    local = [p % 16 for p in pos.tolist()]
    local[-1] = 5
    with pytest.raises(ProtocolError, match="out of range"):
        codecs.decode(_with_indices(enc, local), 20, "sparse")


def test_duplicate_index_is_refused():
    _, enc = _small()
    with pytest.raises(ProtocolError, match="duplicate"):
        codecs.decode(_with_indices(enc, [2, 2, 7, 2, 3, 7]), 32, "sparse")
    with pytest.raises(ProtocolError, match="duplicate"):
        codecs.decode(_with_indices(enc, [7, 3, 2, 2, 3, 7]), 32, "sparse")  # unsorted


@pytest.mark.parametrize("bad", [b"\x00\x7e", b"\x00\x7c", b"\x00\xfe", b"\x00\x80"])  # NaN, Inf, NaN, -0
def test_nan_or_infinite_or_negative_scale_is_refused(bad):
    _, enc = _small()
    if bad == b"\x00\x80":  # -0.0 is not negative: a zero chunk decodes to zeros
        enc.scales = bad + enc.scales[2:]
        assert torch.isfinite(codecs.decode(enc, 32, "sparse")).all()
        enc.scales = b"\x00\xbc" + enc.scales[2:]  # -1.0
        with pytest.raises(ProtocolError, match="negative"):
            codecs.decode(enc, 32, "sparse")
        return
    enc.scales = bad + enc.scales[2:]
    with pytest.raises(ProtocolError, match="non-finite"):
        codecs.decode(enc, 32, "sparse")


@pytest.mark.parametrize("field", ["indices", "data", "scales"])
def test_truncated_packing_is_refused(field):
    _, enc = _small()
    setattr(enc, field, getattr(enc, field)[:-1])
    with pytest.raises(ProtocolError, match="bytes where"):
        codecs.decode(enc, 32, "sparse")


def test_nonzero_padding_bits_are_refused():
    _, enc = _small()  # 6 indices x 4 bits = 3 bytes: no padding; 6 codes x 2 bits: 4 padding bits
    enc.data = enc.data[:1] + bytes([enc.data[1] | 0x80])
    with pytest.raises(ProtocolError, match="padding"):
        codecs.decode(enc, 32, "sparse")
    enc = encode_sparse(_randn(40), 32, 3)  # 6 x 5 bits = 30 bits: 2 padding bits
    enc.indices = enc.indices[:-1] + bytes([enc.indices[-1] | 1])
    with pytest.raises(ProtocolError, match="padding"):
        codecs.decode(enc, 40, "sparse")


@pytest.mark.parametrize(("chunk", "k"), [(0, 1), (15, 1), (24, 2), (8192, 64), (4096, 0), (4096, 1025)])
def test_bad_layout_is_refused(chunk, k):
    _, enc = _small()
    enc.block_size, enc.nnz = chunk, k
    with pytest.raises(ProtocolError):
        codecs.decode(enc, 32, "sparse")


def test_wrong_size_is_refused():
    _, enc = _small()
    with pytest.raises(ProtocolError):
        codecs.decode(enc, 33, "sparse")


def test_non_finite_input_is_not_encoded():
    x = _randn(100)
    x[5] = float("nan")
    with pytest.raises(ValueError):
        codecs.encode(x, "sparse")
