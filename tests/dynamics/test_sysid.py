import math
import os
import warnings

import pytest
import torch

import dynamics
from dynamics.learned import collect_from_model, identify, residuals
from tests.skips import THESEUS

D64 = dict(dtype=torch.float64)


def theseus_or_skip():
    """CI installs theseus-ai (scripts/install-theseus.sh) and must run these; elsewhere they may skip."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if os.environ.get("CI"):
            import theseus  # noqa: F401
        else:
            pytest.importorskip("theseus", reason=THESEUS)


@pytest.fixture(scope="module")
def pendulum_data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.stack([(torch.rand(100, generator=g, **D64) * 2 - 1) * math.pi, torch.rand(100, generator=g, **D64) * 2 - 1], -1)
    return collect_from_model(dynamics.Pendulum().discretize(), x0, 100, -2.0, 2.0, relative_noise=0.01,
                              generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def bicycle_data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.cat([torch.randn(100, 3, generator=g, **D64), (torch.rand(100, 1, generator=g, **D64) * 2 - 1) * 0.5], -1)
    return collect_from_model(dynamics.KinematicBicycle().discretize(), x0, 50, torch.tensor([-5.0, -0.5], **D64),
                              torch.tensor([5.0, 0.5], **D64), relative_noise=0.01,
                              generator=torch.Generator().manual_seed(2))


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
        assert float(dict(model.named_parameters())[name].detach()) == float(estimate[name])   # written into the model


def test_identification_holds_the_other_parameters_and_rejects_unknown_names(pendulum_data):
    model = dynamics.Pendulum(m=1.3, l=1.0, g=10.0).discretize()
    identify(model, pendulum_data, ["model.m"])
    assert float(model.model.g.detach()) == 10.0 and float(model.model.l.detach()) == 1.0 and model.model.g.requires_grad
    with pytest.raises(ValueError, match="unknown parameter"):
        identify(model, pendulum_data, ["model.mass"])
    with pytest.raises(ValueError, match="method must be"):
        identify(model, pendulum_data, ["model.m"], method="newton")


def test_residuals_vanish_for_the_true_model_on_clean_data():
    g = torch.Generator().manual_seed(0)
    model = dynamics.Pendulum().discretize()
    data = collect_from_model(model, torch.randn(5, 2, generator=g, **D64), 20, -2.0, 2.0, generator=g)
    assert residuals(model, data, {}).abs().max() < 1e-10


def test_relative_noise_is_one_percent_of_each_coordinates_spread():
    g = torch.Generator().manual_seed(0)
    model = dynamics.Pendulum().discretize()
    x0 = torch.randn(50, 2, generator=g, **D64)
    clean = collect_from_model(model, x0, 40, -2.0, 2.0, generator=torch.Generator().manual_seed(3))
    noisy = collect_from_model(model, x0, 40, -2.0, 2.0, relative_noise=0.01, generator=torch.Generator().manual_seed(3))
    ratio = (noisy.x - clean.x).std(0) / clean.x.std(0)
    assert torch.all((ratio > 0.009) & (ratio < 0.011))
    torch.testing.assert_close(noisy.x.reshape(50, 40, 2)[:, 1:], noisy.x_next.reshape(50, 40, 2)[:, :-1])
