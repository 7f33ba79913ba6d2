"""fit and identify refuse non-finite and degenerate data, and bad options, with named errors."""
import math

import pytest
import torch

import dynamics
from dynamics.learned import MLPDynamics, Transitions, fit, identify


def _data(N=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = dynamics.Pendulum().discretize()
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    u = torch.randn(N, 1, generator=g, dtype=torch.float64)
    return Transitions(x, u, model(x, u).detach())


def _poisoned(name, value):
    d = _data()
    getattr(d, name)[3, 0] = value
    return d


@pytest.mark.parametrize("name", ["x", "u", "x_next"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_fit_and_identify_refuse_non_finite_data(name, value):
    with pytest.raises(ValueError, match=rf"fit: data.{name} is not finite in 1 of 40 transitions \(first: row 3\)"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _poisoned(name, value), epochs=2, progress=False)
    model = dynamics.Pendulum().discretize()
    with pytest.raises(ValueError, match=rf"identify: data.{name} is not finite"):
        identify(model, _poisoned(name, value), ["model.m"])
    assert float(model.model.m.detach()) == 1.0                 # left as it was


@pytest.mark.parametrize("N", [0, 1])
def test_fit_and_identify_refuse_a_dataset_too_small(N):
    with pytest.raises(ValueError, match="fit: data holds"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _data()[:N], epochs=2, progress=False)
    for method in ("lbfgs", "levenberg_marquardt"):
        with pytest.raises(ValueError, match="identify: data holds"):
            identify(dynamics.Pendulum().discretize(), _data()[:N], ["model.m"], method=method)


@pytest.mark.parametrize("options, named", [
    (dict(epochs=0), "epochs"), (dict(batch_size=2.5), "batch_size"), (dict(lr=math.inf), "lr"),
    (dict(lr=-1e-3), "lr"), (dict(val_fraction=1.0), "val_fraction"), (dict(patience=0), "patience"),
    (dict(weight_decay=math.nan), "weight_decay"),
])
def test_fit_refuses_options_out_of_range(options, named):
    with pytest.raises(ValueError, match=f"fit: {named}"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _data(), progress=False, **options)


def test_fit_that_diverges_raises_and_leaves_the_weights_as_they_were():
    model = MLPDynamics(2, 1, hidden=(8,)).double()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="fit: the loss became non-finite in epoch"):
        fit(model, _data(), epochs=3, lr=1e200, progress=False)     # Adam's steps of 1e200 overflow the loss
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_identify_refuses_bad_options():
    with pytest.raises(ValueError, match="identify: steps"):
        identify(dynamics.Pendulum().discretize(), _data(), ["model.m"], steps=0)
    with pytest.raises(ValueError, match="identify: method"):
        identify(dynamics.Pendulum().discretize(), _data(), ["model.m"], method="newton")
