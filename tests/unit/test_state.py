from __future__ import annotations

import pytest
import torch

from barnraise.coordinator.errors import IntegrityError
from barnraise.coordinator.manifest import model_config
from barnraise.peer.sync.state import GlobalState, OuterStep, flat_params, load_flat
from barnraise.peer.training.model import build_model


def test_same_seed_same_params_and_hash():
    a = GlobalState.initial(build_model(model_config("gpt-nano", 256), 7))
    b = GlobalState.initial(build_model(model_config("gpt-nano", 256), 7))
    c = GlobalState.initial(build_model(model_config("gpt-nano", 256), 8))
    assert a.params_hash() == b.params_hash() != c.params_hash()


def test_outer_step_is_nesterov_sgd():
    s = GlobalState(params=torch.ones(4), momentum=torch.zeros(4), round=-1)
    g = torch.tensor([1.0, -1.0, 0.5, 0.0])
    ref = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([ref], lr=0.7, momentum=0.9, nesterov=True)
    outer = OuterStep(lr=0.7, momentum=0.9)
    for r in range(3):
        s = outer.apply(s, g, r)
        ref.grad = g.clone()
        opt.step()
    assert torch.allclose(s.params, ref.detach())
    assert s.round == 2


def test_state_round_trip_and_rejects_bad_bytes():
    s = GlobalState(params=torch.randn(10), momentum=torch.randn(10), round=5)
    t = GlobalState.from_bytes(s.to_bytes(), 10)
    assert torch.equal(s.params, t.params) and torch.equal(s.momentum, t.momentum) and t.round == 5
    with pytest.raises(IntegrityError):
        GlobalState.from_bytes(s.to_bytes(), 11)
    bad = GlobalState(params=torch.tensor([float("nan")] * 10), momentum=torch.zeros(10), round=1)
    with pytest.raises(IntegrityError):
        GlobalState.from_bytes(bad.to_bytes(), 10)
    with pytest.raises(IntegrityError):
        GlobalState.from_bytes(b"junk" + s.to_bytes()[4:], 10)


def test_flat_round_trip():
    m = build_model(model_config("gpt-nano", 256), 1)
    flat = flat_params(m)
    load_flat(m, flat * 2)
    assert torch.allclose(flat_params(m), flat * 2)


def test_the_outer_step_makes_a_new_state_and_leaves_the_old_one_alone():
    s = GlobalState(params=torch.ones(6), momentum=torch.zeros(6), round=0)
    first = s.params_hash()
    nxt = OuterStep(lr=1.0, momentum=0.5).apply(s, torch.full((6,), 0.5), 1)
    assert nxt.params_hash() != first and nxt.round == 1
    assert (
        nxt.params_hash()
        == GlobalState(params=nxt.params.clone(), momentum=nxt.momentum, round=1).params_hash()
    )
    assert s.params_hash() == first and torch.equal(s.params, torch.ones(6)) and s.round == 0
    assert torch.equal(s.momentum, torch.zeros(6))


def test_perturbed_copy_differs_and_the_original_stays():
    s = GlobalState(params=torch.ones(6), momentum=torch.zeros(6), round=-1)
    p = s.perturbed(1e-3)
    assert p.params_hash() != s.params_hash() and torch.equal(s.params, torch.ones(6))


def test_all_finite_sees_nan_inf_and_an_overflowing_sum():
    from barnraise.peer.sync.state import all_finite

    assert all_finite(torch.ones(5))
    assert all_finite(torch.full((4,), 3e38))  # the sum overflows; the values are finite
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("inf"), float("-inf")]))


def test_state_of_zero_parameters_parses():
    # Found by the fuzzer (tests/fuzz, state_blob): an empty body crashed torch.frombuffer with ValueError.
    data = b"BRST1" + bytes(16)
    state = GlobalState.from_bytes(data, 0)
    assert state.round == 0 and state.params.numel() == 0 and state.momentum.numel() == 0
    with pytest.raises(IntegrityError):
        GlobalState.from_bytes(data, 1)
