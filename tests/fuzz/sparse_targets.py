"""Targets for the sparse codec's decoder: payloads built to sit just beside a valid one.

The generic codec target (``peer_targets``) mutates bytes at random; these mutate what the sparse
layout means: one in-chunk position moved (out of range, repeated, out of order), a scale made
NaN, Inf or negative, a field cut or lengthened by a byte, padding bits set, the layout (chunk,
values per chunk) changed under the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from barnraise.coordinator.errors import ProtocolError
from barnraise.peer.averaging import codecs, sparse
from barnraise.protos import averaging_pb2
from tests.fuzz.targets import Target


@st.composite
def sparse_payload(draw) -> tuple[averaging_pb2.EncodedTensor, int]:
    chunk = draw(st.sampled_from([16, 32, 64, 256, 4096]))
    k = draw(st.integers(1, sparse.max_per_chunk(chunk)))
    numel = draw(st.integers(0, 3 * chunk + 7))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 1 << 16)))
    x = torch.randn(numel, generator=gen) * draw(st.sampled_from([0.0, 1e-6, 1.0, 6e4]))
    msg = sparse.encode_sparse(x, chunk, k)
    how = draw(st.sampled_from(["valid", "index", "scale", "length", "padding", "layout"]))
    m = sparse.kept_count(numel, chunk, k)
    if how == "index" and m:
        bits = sparse.index_bits(chunk)
        pos = sparse._unpack_bits(msg.indices, m, bits)
        i = draw(st.integers(0, m - 1))
        pos[i] = draw(st.integers(0, (1 << bits) - 1))
        msg.indices = sparse._pack_bits(pos, bits)
    elif how == "scale" and msg.scales:
        s = np.frombuffer(msg.scales, dtype=np.uint16).copy()
        s[draw(st.integers(0, s.size - 1))] = draw(st.sampled_from([0x7E00, 0x7C00, 0xFC00, 0xBC00, 0x7BFF]))
        msg.scales = s.tobytes()
    elif how == "length":
        name = draw(st.sampled_from(["data", "scales", "indices"]))
        blob = getattr(msg, name)
        setattr(msg, name, blob[:-1] if blob and draw(st.booleans()) else blob + b"\x00")
    elif how == "padding" and msg.data:
        msg.data = msg.data[:-1] + bytes([msg.data[-1] | draw(st.integers(1, 255))])
    elif how == "layout":
        msg.block_size = draw(st.sampled_from([0, 8, 16, 24, 32, 4096, 8192, 1 << 31]))
        msg.nnz = draw(st.sampled_from([0, 1, k, k + 1, 1 << 20]))
    return msg, numel


def check_sparse(case: tuple[averaging_pb2.EncodedTensor, int]) -> None:
    msg, numel = case
    try:
        got = codecs.decode(msg, numel, "sparse")
    except ProtocolError:
        return
    assert got.shape == (numel,) and got.dtype == torch.float32
    assert bool(torch.isfinite(got).all()), "non-finite value accepted"
    chunk, k = msg.block_size, msg.nnz
    assert int((got != 0).sum()) <= sparse.kept_count(numel, chunk, k), "more values than the layout keeps"
    pos, _ = sparse.decode_positions(msg, numel)
    assert len(set(pos.tolist())) == pos.size and (pos < max(numel, 1)).all(), (
        "index repeated or out of range"
    )


TARGETS = [Target("sparse_payload", "sparse.decode_positions (structured)", sparse_payload(), check_sparse)]
