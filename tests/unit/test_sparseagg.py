"""Sparse groups' rules: the density a group picks, and a combination that is the same bits anywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from barnraise.peer.averaging import codecs, sparseagg
from barnraise.peer.averaging.robust import RobustConfig
from barnraise.peer.averaging.sparse import decode_positions
from barnraise.protos import averaging_pb2

pytestmark = pytest.mark.timeout(60)


def _group(bandwidths: list[float], exchange_s: float) -> averaging_pb2.Group:
    g = averaging_pb2.Group(group_id="g", codec="sparse", exchange_s=exchange_s)
    for i, b in enumerate(bandwidths):
        g.members.add(peer_id=f"p{i}", weight=1.0, bandwidth_bps=b)
    return g


def test_density_follows_the_slowest_uplink_and_the_round():
    n = 200_000_000  # a large model: the links, not the cap, decide
    slow = sparseagg.per_chunk_for(_group([25e6, 25e6, 100e6, 25e6], 7.0), n)
    fast = sparseagg.per_chunk_for(_group([100e6] * 4, 7.0), n)
    longer = sparseagg.per_chunk_for(_group([25e6] * 4, 14.0), n)
    assert sparseagg.MIN_PER_CHUNK <= slow < fast <= sparseagg.MAX_PER_CHUNK
    assert slow < longer
    # the payload the slowest member uploads (to 3 others) fits half the exchange budget
    bytes_out = 3 * (n / 4096) * (slow * 14 / 8 + 2)
    assert bytes_out * 8 / 25e6 <= 0.5 * 7.0
    assert sparseagg.per_chunk_for(_group([0.0, 25e6], 7.0), n) == 64  # a bandwidth unknown: default
    assert sparseagg.per_chunk_for(_group([25e6, 25e6], 0.0), n) == 64
    assert sparseagg.per_chunk_for(_group([1e3] * 8, 1.0), n) == sparseagg.MIN_PER_CHUNK


def _rows(updates):
    return [decode_positions(codecs.encode(u, "sparse"), u.numel()) for u in updates]


def test_gram_matches_dense_dot_products():
    updates = [torch.randn(10_000, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    rows = _rows(updates)
    dense = torch.stack(
        [codecs.decode(codecs.encode(u, "sparse"), 10_000, "sparse") for u in updates]
    ).double()
    assert np.allclose(sparseagg.gram(rows, 10_000), (dense @ dense.T).numpy())


@pytest.mark.parametrize("aggregator", ["mean", "centered_clip", "median"])
def test_coefficients_are_on_the_grid_and_sum_to_about_one(aggregator):
    updates = [torch.randn(10_000, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    g = sparseagg.gram(_rows(updates), 10_000)
    coef, clip = sparseagg.coefficients(g, [1.0, 2.0, 1.0, 1.0], RobustConfig(aggregator=aggregator))
    assert np.array_equal(coef, np.round(coef / sparseagg.COEF_GRID) * sparseagg.COEF_GRID)
    assert abs(coef.sum() - 1.0) < 0.2 and (clip > 0.25).all()
    # float noise in the Gram matrix (another CPU) does not move a coefficient
    noisy, _ = sparseagg.coefficients(
        g * (1 + 1e-13), [1.0, 2.0, 1.0, 1.0], RobustConfig(aggregator=aggregator)
    )
    assert np.array_equal(coef, noisy)


def test_an_inflated_member_gets_a_small_coefficient():
    updates = [torch.randn(10_000, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    updates[3] *= 1e3
    g = sparseagg.gram(_rows(updates), 10_000)
    coef, clip = sparseagg.coefficients(g, [1.0] * 4, RobustConfig())
    assert clip[3] < 0.01 and coef[3] < 1e-3


def test_combination_is_the_exact_weighted_sum():
    updates = [torch.randn(5000, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    rows = _rows(updates)
    coef = np.array([0.25, 0.5, 0.25])
    out = torch.empty(5000)
    sparseagg.combine_into(out, rows, coef)
    dense = [codecs.decode(codecs.encode(u, "sparse"), 5000, "sparse").double() for u in updates]
    assert torch.equal(out, sum(c * d for c, d in zip(coef.tolist(), dense, strict=True)).float())
    h = sparseagg.result_hash(["a", "b", "c"], {"a": b"1", "b": b"2", "c": b"3"}, coef)
    assert h != sparseagg.result_hash(["a", "b", "c"], {"a": b"1", "b": b"2", "c": b"3"}, coef + 2**-30)
