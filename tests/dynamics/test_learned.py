import math

import gymnasium
import pytest
import torch

import dynamics
import trajopt
from dynamics.learned import (MLPDynamics, ProbabilisticEnsemble, ResidualDynamics, Transitions, collect_from_env,
                              collect_from_model, fit, open_loop_error)

D64 = dict(dtype=torch.float64)


def pendulum_starts(B, g):
    """Pendulum states uniform in ``[-pi, pi] x [-1, 1]`` (the learned-model benchmark draws its starts alike)."""
    return torch.stack([(torch.rand(B, generator=g, **D64) * 2 - 1) * math.pi,
                        (torch.rand(B, generator=g, **D64) * 2 - 1)], -1)


@pytest.fixture(autouse=True)
def float64_and_seeded():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)                       # network initializations do not depend on the test order
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def pendulum_data():
    g = torch.Generator().manual_seed(0)
    true = dynamics.Pendulum().discretize()
    data = collect_from_model(true, pendulum_starts(40, g), 50, -2.0, 2.0, generator=g)
    gt = torch.Generator().manual_seed(1)
    return true, data, pendulum_starts(100, gt), torch.rand(100, 20, 1, generator=gt, **D64) * 4 - 2


def test_collected_transitions_follow_the_model():
    model = dynamics.Pendulum().discretize()
    data = collect_from_model(model, torch.zeros(3, 2, **D64), 10, -1.0, 1.0, generator=torch.Generator().manual_seed(0))
    assert len(data) == 30 and data.u.abs().max() <= 1.0
    torch.testing.assert_close(model(data.x, data.u), data.x_next)
    with pytest.raises(ValueError, match="Transitions: batch sizes differ"):
        Transitions(data.x, data.u[:5], data.x_next)


def test_transitions_from_a_gymnasium_environment():
    env = gymnasium.make("Pendulum-v1")
    data = collect_from_env(env, 250, seed=3)
    assert data.x.shape == (250, 3) and data.u.shape == (250, 1) and data.x_next.shape == (250, 3)
    torch.testing.assert_close(data.x[1:200], data.x_next[:199])    # consecutive within the 200-step episode
    assert not torch.allclose(data.x[200], data.x_next[199])        # ...and a reset after it


def test_normalization_and_fit_reduce_the_error():
    true = dynamics.DoubleIntegrator(dim=2).discretize()
    g = torch.Generator().manual_seed(2)
    data = collect_from_model(true, torch.randn(40, 4, generator=g, **D64), 25, -1.0, 1.0, generator=g)
    x0, U = torch.randn(50, 4, generator=g, **D64), torch.rand(50, 10, 2, generator=g, **D64) * 2 - 1
    model = MLPDynamics(4, 2, hidden=(64, 64))
    model.fit_normalization(data)
    z = model.normalized_targets(data)
    torch.testing.assert_close(z.mean(0), torch.zeros(4, **D64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4, **D64), atol=1e-10, rtol=0)
    before = open_loop_error(model, true, x0, U)[0]
    history = fit(model, data, epochs=30, lr=3e-3, batch_size=32, progress=False)
    after = open_loop_error(model, true, x0, U)
    assert after[0] < 0.1 * before and history["val_loss"][history["best_epoch"]] == min(history["val_loss"])
    A, B = model.jacobians(x0[:4], U[:4, 0])                        # autodiff Jacobians through the net
    assert A.shape == (4, 4, 4) and torch.isfinite(A).all()


def test_early_stopping_restores_the_best_weights(pendulum_data):
    _, data, _, _ = pendulum_data
    model = MLPDynamics(2, 1, hidden=(16,))
    history = fit(model, data[:200], epochs=300, lr=3e-2, patience=3, progress=False)
    assert history["epochs"] < 300
    with torch.no_grad():
        _, val = data[:200].split(0.1, generator=torch.Generator().manual_seed(0))
        assert float(model.loss(val)) == pytest.approx(min(history["val_loss"]), rel=1e-9)


def test_residual_model_beats_the_wrong_physics_and_the_pure_network(pendulum_data):
    true, data, x0, U = pendulum_data
    wrong = dynamics.Pendulum(m=1.2).discretize()                  # 20% wrong mass
    residual = ResidualDynamics(dynamics.Pendulum(m=1.2).discretize())
    torch.testing.assert_close(residual(x0, U[:, 0]), wrong(x0, U[:, 0]))   # untrained: the base model
    fit(residual, data, epochs=40, lr=3e-3, progress=False)
    network = MLPDynamics(2, 1, hidden=(64, 64))
    fit(network, data, epochs=40, lr=3e-3, batch_size=32, patience=40, progress=False)
    errors = {name: float(open_loop_error(m, true, x0, U)[19]) for name, m in
              (("residual", residual), ("wrong", wrong), ("network", network))}
    assert errors["residual"] < 0.1 * min(errors["wrong"], errors["network"])
    assert float(residual.base.model.m) == 1.2                       # the base stayed as given


def test_ensemble_is_more_uncertain_off_the_training_distribution(pendulum_data):
    _, data, x0, U = pendulum_data
    ens = ProbabilisticEnsemble(2, 1, members=3, hidden=(64, 64))
    fit(ens, data, epochs=30, lr=3e-3, batch_size=32, patience=30, progress=False)
    g = torch.Generator().manual_seed(5)
    far = torch.stack([torch.rand(100, generator=g, **D64) * 2 + 6, torch.rand(100, generator=g, **D64) * 10 + 20], -1)
    with torch.no_grad():
        _, var_in = ens.predict(x0, U[:, 0])
        _, var_out = ens.predict(far, U[:, 0])
    assert var_out.mean() > 100 * var_in.mean()


def test_ensemble_propagation_modes():
    ens = ProbabilisticEnsemble(2, 1, members=4, hidden=(8,))
    x, u = torch.randn(6, 2, **D64), torch.randn(6, 1, **D64)
    with torch.no_grad():
        means, _ = ens.member_outputs(x, u)
        members = x + means * ens.out_std + ens.out_mean
        torch.testing.assert_close(ens(x, u), members.mean(0))
        ens.propagation = "random"
        ens.resample_members(6, generator=torch.Generator().manual_seed(0))
        picked = ens(x, u)
        torch.testing.assert_close(picked, members[ens._assignment, torch.arange(6)])
        torch.testing.assert_close(ens(x, u), picked)                # the same member until resampled
    with pytest.raises(ValueError, match="propagation"):
        ProbabilisticEnsemble(2, 1, propagation="moment")


def test_fit_shows_a_progress_bar_unless_silenced(capsys, pendulum_data):
    _, data, _, _ = pendulum_data
    fit(MLPDynamics(2, 1, hidden=(8,)), data[:100], epochs=2, progress=True)
    assert "fit MLPDynamics" in capsys.readouterr().err
    fit(MLPDynamics(2, 1, hidden=(8,)), data[:100], epochs=2, progress=False)
    assert capsys.readouterr().err == ""


def test_learned_models_work_with_lqr_linearization(pendulum_data):
    _, data, x0, U = pendulum_data
    model = ResidualDynamics(dynamics.Pendulum(m=1.2).discretize())
    fit(model, data[:300], epochs=3, progress=False)
    with torch.no_grad():
        X = trajopt.rollout(model, x0[:2], U[:2])
    F, f = trajopt.linearize(model, X, U[:2])
    sol = trajopt.lqr(F, torch.zeros_like(f), torch.eye(3, **D64).expand(20, 3, 3), None, x0[:2])
    assert torch.isfinite(sol.U).all()
