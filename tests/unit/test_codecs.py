"""Update codecs: round-trip error, size, determinism, error feedback, and hostile messages."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs
from barnraise.protos import averaging_pb2

QUANTISED = ("int8", "int4", "topk")
SIZES = (0, 1, 2, 3, 15, 16, 17, 63, 64, 65, 255, 257, 1000, 4097)


def _randn(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g)


def _varint(value: int) -> bytes:
    assert value >= 0
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _gaps(positions: list[int]) -> bytes:
    prev, out = 0, b""
    for p in positions:
        out += _varint(p - prev)
        prev = p
    return out


def _topk_msg(numel: int, positions: list[int], **over) -> averaging_pb2.EncodedTensor:
    nnz = len(positions)
    fields = dict(
        codec="topk",
        numel=numel,
        data=bytes([1]) * nnz,
        scales=np.full(-(-nnz // 16), 0.5, dtype=np.float16).tobytes(),
        block_size=16,
        nnz=nnz,
    )
    fields.update(over)
    if "indices" not in fields:
        fields["indices"] = _gaps(positions)
    return averaging_pb2.EncodedTensor(**fields)


def _block_bound(x: torch.Tensor, block_size: int, levels: int) -> torch.Tensor:
    """Per-element error bound: half the (fp16-rounded-up) scale of the element's block."""
    n = x.numel()
    pad = torch.zeros(-(-n // block_size) * block_size)
    pad[:n] = x.abs()
    amax = pad.view(-1, block_size).amax(1)
    step = amax / levels * (1 + 2**-10) + 2**-24
    return (step / 2).repeat_interleave(block_size)[:n]


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("codec", codecs.CODECS)
@pytest.mark.parametrize("n", SIZES)
def test_round_trip_shape_and_size_cap(codec: str, n: int) -> None:
    x = _randn(n, seed=n)
    msg = codecs.encode(x, codec)
    out = codecs.decode(msg, n, codec)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (n,)
    assert torch.isfinite(out).all()
    assert msg.ByteSize() <= codecs.max_encoded_bytes(codec, n)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "bf16"])
def test_float_codecs_error(codec: str) -> None:
    x = _randn(10_000)
    out = codecs.decode(codecs.encode(x, codec), x.numel(), codec)
    rel = {"fp32": 0.0, "fp16": 2**-11, "bf16": 2**-8}[codec]
    assert ((out - x).abs() <= x.abs() * rel).all()


@pytest.mark.parametrize("codec,levels", [("int8", 127), ("int4", 7)])
@pytest.mark.parametrize("block_size", [None, 16, 100, 257, 4096])
@pytest.mark.parametrize("n", [20_011, 600_001])  # one chunk of work, and several
def test_blockwise_error_within_half_a_step(codec: str, levels: int, block_size: int | None, n: int) -> None:
    # Blocks of very different magnitudes, and a short last block.
    x = _randn(n) * torch.logspace(-6, 2, n)
    msg = codecs.encode(x, codec, block_size=block_size)
    bs = block_size or codecs.DEFAULT_BLOCK_SIZE[codec]
    assert msg.block_size == bs
    out = codecs.decode(msg, x.numel(), codec)
    assert ((out - x).abs() <= _block_bound(x, bs, levels)).all()


def test_int8_and_int4_keep_block_maxima_and_zeros() -> None:
    x = torch.zeros(300)
    x[5], x[260] = 3.0, -0.25  # each alone in its block
    for codec in ("int8", "int4"):
        out = codecs.decode(codecs.encode(x, codec), 300, codec)
        assert out[5].item() == pytest.approx(3.0, rel=1e-3)
        assert out[260].item() == pytest.approx(-0.25, rel=1e-3)
        assert (out[x == 0] == 0).all()


def test_tiny_and_huge_values() -> None:
    tiny = _randn(1000) * 1e-9
    out = codecs.decode(codecs.encode(tiny, "int8"), 1000, "int8")
    assert ((out - tiny).abs() <= 2**-24).all()
    huge = torch.tensor([1e12, -1e12, 1.0] * 30)  # beyond fp16 scales: saturates, stays finite
    for codec in ("int8", "int4"):
        out = codecs.decode(codecs.encode(huge, codec), huge.numel(), codec)
        assert torch.isfinite(out).all() and (out[0::3] > 0).all() and (out[1::3] < 0).all()


@pytest.mark.parametrize("codec", QUANTISED)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_encode_refuses_non_finite(codec: str, bad: float) -> None:
    x = _randn(5000)
    x[1234] = bad
    with pytest.raises(ValueError, match="non-finite"):
        codecs.encode(x, codec)


def test_encode_refuses_bad_options() -> None:
    x = _randn(100)
    for kwargs in (
        {"block_size": 8},
        {"block_size": 1 << 20},
        {"topk_fraction": 0.0},
        {"topk_fraction": 0.5},
    ):
        with pytest.raises(ValueError):
            codecs.encode(x, "topk", **kwargs)
    with pytest.raises(ValueError):
        codecs.encode(x, "int3")


def test_topk_keeps_the_largest_and_quantises_them() -> None:
    x = _randn(50_000)
    msg = codecs.encode(x, "topk", topk_fraction=0.02)
    k = codecs.topk_count(50_000, 0.02)
    assert msg.nnz == k == 1000
    out = codecs.decode(msg, 50_000, "topk")
    kept = out.nonzero().squeeze(1)
    assert torch.equal(kept, x.abs().topk(k).indices.sort().values)
    assert ((out[kept] - x[kept]).abs() <= _block_bound(x[kept], msg.block_size, 127)).all()


def test_topk_threshold_path_matches_full_topk() -> None:
    n = 3_000_000  # above the size where the sampled threshold replaces a full top-k
    x = _randn(n, seed=7) * torch.linspace(0.1, 3.0, n)
    msg = codecs.encode(x, "topk")
    k = codecs.topk_count(n)
    assert msg.nnz == k
    kept = codecs.decode(msg, n, "topk").nonzero().squeeze(1)
    assert torch.equal(kept, x.abs().topk(k).indices.sort().values)


def test_topk_falls_back_on_ties_and_skips_zeros() -> None:
    flat = torch.ones(2_500_000)  # every entry ties: the threshold pass gives up, the full top-k runs
    msg = codecs.encode(flat, "topk")
    assert msg.nnz == codecs.topk_count(flat.numel())
    assert codecs.decode(msg, flat.numel(), "topk").sum().item() == pytest.approx(msg.nnz, rel=1e-3)
    sparse = torch.zeros(10_000)
    sparse[[3, 77, 9999]] = torch.tensor([1.0, -2.0, 0.5])
    msg = codecs.encode(sparse, "topk", topk_fraction=0.1)
    assert msg.nnz == 3
    assert torch.allclose(codecs.decode(msg, 10_000, "topk"), sparse, atol=0.01)
    assert codecs.encode(torch.zeros(500), "topk").nnz == 0


def test_bytes_per_param() -> None:
    n = 1_000_000
    x = _randn(n)
    per = {c: codecs.encode(x, c).ByteSize() / n for c in codecs.CODECS}
    assert per["int4"] <= 0.55
    assert per["topk"] <= 0.05
    assert per["int8"] <= 1.01
    for codec in codecs.CODECS:
        assert codecs.ideal_bytes(codec, n) <= per[codec] * n <= codecs.max_encoded_bytes(codec, n)
        assert codecs.max_encoded_bytes(codec, n) <= 1.2 * per[codec] * n or codec in ("topk", "sparse")
    assert codecs.max_encoded_bytes("topk", n, topk_fraction=0.01, block_size=256) <= 0.03 * n


@pytest.mark.parametrize("codec", QUANTISED)
def test_size_cap_holds_for_smallest_blocks_and_largest_fraction(codec: str) -> None:
    n = 10_007
    msg = codecs.encode(_randn(n), codec, block_size=16, topk_fraction=codecs.MAX_TOPK_FRACTION)
    assert msg.ByteSize() <= codecs.max_encoded_bytes(codec, n)


def test_index_bound_covers_worst_spacing() -> None:
    n = 1 << 16
    for step in (1, 127, 128, 129, 16384):
        positions = list(range(0, n, step))
        nnz = min(len(positions), codecs.topk_count(n, codecs.MAX_TOPK_FRACTION))
        msg = _topk_msg(n, positions[:nnz])
        assert len(msg.indices) <= codecs.max_index_bytes(n, nnz)
        out = codecs.decode(msg, n, "topk")
        assert out[positions[:nnz]].eq(0.5).all()
        assert msg.ByteSize() <= codecs.max_encoded_bytes("topk", n)


def test_determinism() -> None:
    x = _randn(300_001, seed=3)
    for codec in codecs.CODECS:
        a = codecs.encode(x, codec).SerializeToString()
        b = codecs.encode(x.clone(), codec).SerializeToString()
        assert a == b, codec
        msg = averaging_pb2.EncodedTensor.FromString(a)
        assert torch.equal(codecs.decode(msg, x.numel(), codec), codecs.decode(msg, x.numel(), codec))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_encode_matches_cpu() -> None:
    x = _randn(1_000_003)
    for codec in codecs.CODECS:
        on_gpu = codecs.encode(x.cuda(), codec)
        assert torch.equal(
            codecs.decode(on_gpu, x.numel(), codec),
            codecs.decode(codecs.encode(x, codec), x.numel(), codec),
        ), codec


# ------------------------------------------------------------------------------------ error feedback


@pytest.mark.parametrize("codec,fraction", [("topk", 0.05), ("int4", 0.01)])
def test_error_feedback_transmits_the_whole_update(codec: str, fraction: float) -> None:
    update = _randn(2000, seed=11) * 0.01
    ef = codecs.ErrorFeedback()
    sent = torch.zeros_like(update)
    steps = 400
    for _ in range(steps):
        c = ef.compensate(update)
        out = codecs.decode(codecs.encode(c, codec, topk_fraction=fraction), update.numel(), codec)
        ef.remember(c, out)
        sent += out
    # What was sent plus what is still owed is exactly what was produced.
    assert torch.allclose(sent + ef.residual, update * steps, atol=1e-4)
    rel = (sent - update * steps).norm() / (update * steps).norm()
    assert rel < 0.05
    if codec == "topk":  # without feedback the same few entries go every time and the rest never
        once = codecs.decode(codecs.encode(update, codec, topk_fraction=fraction), 2000, codec)
        assert ((once * steps - update * steps).norm() / (update * steps).norm()) > 0.5


def test_error_feedback_resets_on_shape_change() -> None:
    ef = codecs.ErrorFeedback()
    ef.remember(torch.ones(4), torch.zeros(4))
    assert torch.equal(ef.compensate(torch.ones(4)), torch.full((4,), 2.0))
    assert torch.equal(ef.compensate(torch.ones(3)), torch.ones(3))


# ------------------------------------------------------------------------------------ hostile input


def _valid(codec: str, n: int = 1000) -> averaging_pb2.EncodedTensor:
    return codecs.encode(_randn(n, seed=5), codec, topk_fraction=0.05)


def _edit(msg: averaging_pb2.EncodedTensor, **fields) -> averaging_pb2.EncodedTensor:
    out = averaging_pb2.EncodedTensor()
    out.CopyFrom(msg)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def _rejects(msg: averaging_pb2.EncodedTensor, numel: int, codec: str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as err:
        codecs.decode(msg, numel, codec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_rejects_truncated_or_padded_data(codec: str) -> None:
    msg = _valid(codec)
    _rejects(_edit(msg, data=msg.data[:-1]), 1000, codec, "bytes where")
    _rejects(_edit(msg, data=msg.data + b"\0"), 1000, codec, "bytes where")


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_rejects_wrong_numel_and_codec(codec: str) -> None:
    msg = _valid(codec)
    _rejects(msg, 999, codec, "elements where")
    _rejects(_edit(msg, numel=1 << 60), 1 << 60, codec, "limit")
    other = "int8" if codec != "int8" else "int4"
    _rejects(msg, 1000, other, "where 'int")
    _rejects(_edit(msg, codec="int3"), 1000, "int3", "int3")
    _rejects(_edit(msg, codec="x" * 10_000), 1000, codec, "where")


@pytest.mark.parametrize("codec", QUANTISED)
def test_rejects_bad_scales(codec: str) -> None:
    msg = _valid(codec)
    n_scales = len(msg.scales) // 2
    for bad, match in ((np.nan, "non-finite scale"), (np.inf, "non-finite scale"), (-1.0, "negative scale")):
        scales = np.frombuffer(msg.scales, dtype=np.float16).copy()
        scales[n_scales // 2] = bad
        _rejects(_edit(msg, scales=scales.tobytes()), 1000, codec, match)
    _rejects(_edit(msg, scales=msg.scales[:-2]), 1000, codec, "scales")
    _rejects(_edit(msg, scales=msg.scales + b"\0\0"), 1000, codec, "scales")


@pytest.mark.parametrize("codec", QUANTISED)
@pytest.mark.parametrize("block_size", [0, 1, 15, 65537, 1 << 31])
def test_rejects_bad_block_size(codec: str, block_size: int) -> None:
    _rejects(_edit(_valid(codec), block_size=block_size), 1000, codec, "block_size")


@pytest.mark.parametrize("codec", codecs.CODECS)
def test_rejects_fields_the_codec_does_not_use(codec: str) -> None:
    msg = _valid(codec)
    if codec not in ("topk", "sparse"):  # both use every field (tests/unit/test_sparse.py)
        _rejects(_edit(msg, indices=b"\1"), 1000, codec, "unexpected indices")
        _rejects(_edit(msg, nnz=3), 1000, codec, "unexpected nnz")
    if codec in ("fp32", "fp16", "bf16"):
        _rejects(_edit(msg, scales=b"\0\0"), 1000, codec, "unexpected scales")
        _rejects(_edit(msg, block_size=64), 1000, codec, "unexpected block_size")


@pytest.mark.parametrize("codec,dtype", [("fp32", np.float32), ("fp16", np.float16)])
def test_rejects_non_finite_float_values(codec: str, dtype) -> None:
    values = np.ones(100, dtype=dtype)
    for bad in (np.nan, np.inf, -np.inf):
        values[17] = bad
        _rejects(
            averaging_pb2.EncodedTensor(codec=codec, numel=100, data=values.tobytes()),
            100,
            codec,
            "non-finite",
        )
    big = np.full(100, np.finfo(np.float32).max, dtype=np.float32)  # finite, though the sum overflows
    ok = codecs.decode(averaging_pb2.EncodedTensor(codec="fp32", numel=100, data=big.tobytes()), 100, "fp32")
    assert torch.isfinite(ok).all()


def test_rejects_int4_padding_nibble() -> None:
    msg = _valid("int4", n=999)
    data = bytearray(msg.data)
    data[-1] |= 0x30
    _rejects(_edit(msg, data=bytes(data)), 999, "int4", "padding")


def test_topk_rejects_huge_or_inconsistent_nnz() -> None:
    n = 1000
    msg = _valid("topk", n)
    _rejects(_edit(msg, nnz=1 << 62), n, "topk", "nnz")
    _rejects(_edit(msg, nnz=n), n, "topk", "nnz")
    _rejects(_edit(msg, nnz=msg.nnz - 1), n, "topk", "bytes where")
    positions = [1, 5, 9]
    _rejects(_topk_msg(n, positions, nnz=2, data=b"\1\1"), n, "topk", "varints where nnz")
    _rejects(_topk_msg(n, positions, indices=_gaps(positions)[:-1]), n, "topk", "indices")
    _rejects(_topk_msg(n, positions, indices=b"\1" * 2), n, "topk", "indices")
    _rejects(_topk_msg(n, positions, indices=b"\x81\x81\x81\x81"), n, "topk", "indices|varint")


def test_topk_rejects_malformed_varints() -> None:
    n = 1 << 20  # varints of at most 3 bytes
    assert codecs.decode(_topk_msg(n, [0, 1, 2]), n, "topk")[:3].eq(0.5).all()
    _rejects(_topk_msg(n, [0, 1, 2], indices=b"\x00\x01\x81\x82"), n, "topk", "ends inside")
    _rejects(_topk_msg(n, [0, 1], indices=b"\x80\x80\x80\x01\x01"), n, "topk", "longer than")
    _rejects(_topk_msg(n, [0, 1], indices=b"\x81\x00\x01"), n, "topk", "minimally")
    _rejects(_topk_msg(n, [0, 1, 2], indices=b"\x00\x01\x01\x01"), n, "topk", "3 varints|4 varints")


def test_topk_rejects_bad_positions() -> None:
    n = 1000
    _rejects(_topk_msg(n, [3, 3, 8]), n, "topk", "strictly increasing")
    gaps = _varint(5) + _varint((1 << 64) - 2) + _varint(1)  # 5, then "-2": does not fit in a gap
    _rejects(_topk_msg(n, [5, 3, 4], indices=gaps), n, "topk", "indices|varint")
    _rejects(_topk_msg(n, [10, 999, 1000]), n, "topk", "out of range")
    _rejects(_topk_msg(n, [1000]), n, "topk", "out of range")
    big = 1 << 40  # every gap in range, their sum not; refused before the dense output exists
    wrap = _varint(big - 1) + _varint(big - 1) * 3
    _rejects(_topk_msg(big, [0, 1, 2, 3], indices=wrap), big, "topk", "out of range")


def _mutate_field(msg: averaging_pb2.EncodedTensor, rng: random.Random) -> averaging_pb2.EncodedTensor:
    out = _edit(msg)
    name = rng.choice(["data", "scales", "indices", "data", "scales", "indices", "nnz", "block_size"])
    if name in ("nnz", "block_size"):
        value = getattr(out, name)
        limit = (1 << 32) - 1 if name == "block_size" else (1 << 64) - 1
        choices = [0, 1, value - 1, value + 1, value * 2, rng.randrange(limit), limit]
        setattr(out, name, min(limit, max(0, rng.choice(choices))))
        return out
    raw = bytearray(getattr(out, name))
    op = rng.random()
    if op < 0.5 and raw:
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.choice([0, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    elif op < 0.75 and raw:
        del raw[rng.randrange(len(raw)) :]
    else:
        raw[rng.randrange(len(raw) + 1) : 0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    setattr(out, name, bytes(raw))
    return out


def _mutate_wire(msg: averaging_pb2.EncodedTensor, rng: random.Random) -> averaging_pb2.EncodedTensor | None:
    wire = bytearray(msg.SerializeToString())
    for _ in range(rng.randint(1, 3)):
        if rng.random() < 0.7 and wire:
            wire[rng.randrange(len(wire))] = rng.randrange(256)
        else:
            wire[rng.randrange(len(wire) + 1) : 0] = bytes([rng.randrange(256)])
    try:
        return averaging_pb2.EncodedTensor.FromString(bytes(wire))
    except Exception:
        return None  # the framing layer's problem, not the codec's


def test_hostile_mutations_never_escape_as_other_errors() -> None:
    rng = random.Random(1234)
    originals = [(_valid(c, n), n, c) for c in codecs.CODECS for n in (1, 33, 301)]
    originals += [(_topk_msg(n, [0, 7, 130, n - 1]), n, "topk") for n in (200, 70_000)]
    outcomes = {"accepted": 0, "refused": 0}
    for i in range(2000):
        msg, n, codec = rng.choice(originals)
        mutated = _mutate_field(msg, rng) if i % 4 else _mutate_wire(msg, rng)
        if mutated is None:
            continue
        try:
            out = codecs.decode(mutated, n, codec)
        except ProtocolError:
            outcomes["refused"] += 1
            continue
        outcomes["accepted"] += 1
        assert out.shape == (n,) and torch.isfinite(out).all()
    assert outcomes["refused"] > 500 and outcomes["accepted"] > 100


# ------------------------------------------------------------------------------------ sizes


def test_ideal_bytes() -> None:
    n = 1_000_000
    assert codecs.ideal_bytes("fp32", n) == 4 * n
    assert codecs.ideal_bytes("bf16", n) == 2 * n
    assert codecs.ideal_bytes("int8", n) == n + 2 * math.ceil(n / 256)
    assert codecs.ideal_bytes("int4", n) / n == pytest.approx(0.53125)
    assert 0.015 < codecs.ideal_bytes("topk", n) / n < 0.025
    assert codecs.ideal_bytes("topk", n, 0.1) > codecs.ideal_bytes("topk", n, 0.01)
    assert codecs.ideal_bytes("topk", 0) == 0


def test_check_codec() -> None:
    for name in codecs.CODECS:
        assert codecs.check_codec(name) == name
    with pytest.raises(ValueError, match="choose one of"):
        codecs.check_codec("fp8")


def test_error_feedback_keeps_nothing_when_the_update_went_out_whole() -> None:
    ef = codecs.ErrorFeedback()
    ef.remember(torch.ones(8), torch.full((8,), 0.5))
    assert ef.residual is not None
    u = torch.ones(8)
    ef.residual = None
    c = ef.compensate(u)
    ef.remember(c, c.detach().reshape(-1))  # fp32: the all-reduce sends a view of the update itself
    assert ef.residual is None and ef.compensate(u) is u
