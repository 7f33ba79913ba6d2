import math
import os
import warnings

import pytest
import torch

import dynamics
from dynamics.learned import Transitions, collect_from_model, identify, residuals

D64 = dict(dtype=torch.float64)


def theseus_or_skip():
    """CI installs theseus-ai (scripts/install-theseus.sh) and must run these; elsewhere they may skip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if os.environ.get("CI"):
            import theseus  # noqa: F401
        else:
            pytest.importorskip("theseus")


def noisy_rollouts(model, x0, steps, u_low, u_high, seed, noise=0.01):
    """Transitions of rollouts whose recorded states carry Gaussian noise of ``noise`` times each coordinate's spread."""
    g = torch.Generator().manual_seed(seed)
    clean = collect_from_model(model, x0, steps, u_low, u_high, generator=g)
    B, n = x0.shape
    X = torch.cat([clean.x.reshape(B, steps, n), clean.x_next.reshape(B, steps, n)[:, -1:]], 1)
    X = X + noise * clean.x.std(0) * torch.randn(X.shape, generator=g, **D64)
    return Transitions(X[:, :-1].reshape(-1, n), clean.u, X[:, 1:].reshape(-1, n))


@pytest.fixture(scope="module")
def pendulum_data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack([(torch.rand(100, generator=g, **D64) * 2 - 1) * math.pi, torch.rand(100, generator=g, **D64) * 2 - 1], -1)
    return noisy_rollouts(dynamics.Pendulum().discretize(), x0, 100, -2.0, 2.0, seed=1)


@pytest.fixture(scope="module")
def bicycle_data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.cat([torch.randn(100, 3, generator=g, **D64), (torch.rand(100, 1, generator=g, **D64) * 2 - 1) * 0.5], -1)
    return noisy_rollouts(dynamics.KinematicBicycle().discretize(), x0, 50, torch.tensor([-5.0, -0.5], **D64),
                          torch.tensor([5.0, 0.5], **D64), seed=2)


CASES = {
    "pendulum": (lambda: dynamics.Pendulum(m=1.3, l=0.8).discretize(), ["model.m", "model.l"], [1.0, 1.0]),
    "bicycle": (lambda: dynamics.KinematicBicycle(L=3.0, lr=1.0).discretize(), ["model.L", "model.lr"], [2.5, 1.25]),
}


@pytest.mark.parametrize("method", ["lbfgs", "adam", "levenberg_marquardt"])
@pytest.mark.parametrize("case", CASES)
def test_identification_recovers_parameters_within_one_percent(case, method, pendulum_data, bicycle_data):
    if method == "levenberg_marquardt":
        theseus_or_skip()
    make, names, truth = CASES[case]
    data = pendulum_data if case == "pendulum" else bicycle_data
    model = make()
    estimate = identify(model, data, names, method=method, steps=500 if method == "adam" else 50)
    for name, value in zip(names, truth):
        assert float(estimate[name]) == pytest.approx(value, rel=0.01), name
        assert float(dict(model.named_parameters())[name]) == float(estimate[name])   # written into the model


def test_identification_holds_the_other_parameters_and_rejects_unknown_names(pendulum_data):
    model = dynamics.Pendulum(m=1.3, l=1.0, g=10.0).discretize()
    identify(model, pendulum_data, ["model.m"])
    assert float(model.model.g) == 10.0 and float(model.model.l) == 1.0 and model.model.g.requires_grad
    with pytest.raises(ValueError, match="unknown parameter"):
        identify(model, pendulum_data, ["model.mass"])
    with pytest.raises(ValueError, match="method must be"):
        identify(model, pendulum_data, ["model.m"], method="newton")


def test_residuals_vanish_for_the_true_model_on_clean_data():
    g = torch.Generator().manual_seed(0)
    model = dynamics.Pendulum().discretize()
    data = collect_from_model(model, torch.randn(5, 2, generator=g, **D64), 20, -2.0, 2.0, generator=g)
    assert residuals(model, data, {}).abs().max() < 1e-10
