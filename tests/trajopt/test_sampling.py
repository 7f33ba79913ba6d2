import shutil

import pytest
import torch

import dynamics
import trajopt
from trajopt.sampling import _perturbed, _smooth, cem, mppi, random_shooting

D64 = dict(dtype=torch.float64)


def double_integrator():
    model = dynamics.DoubleIntegrator().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64))
    return model, cost, torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.3]], **D64), 20


def test_mppi_and_cem_approach_the_optimum_of_a_linear_quadratic_problem():
    model, cost, x0, T = double_integrator()
    optimum = trajopt.ilqr(model, cost, x0, horizon=T, grad=None).cost          # = LQR on this problem
    g = torch.Generator().manual_seed(0)
    s = mppi(model, cost, x0, horizon=T, samples=1000, iterations=30, temperature=0.1, noise_std=0.5, generator=g)
    assert ((s.cost / optimum - 1).abs() < 2e-3).all()
    c = cem(model, cost, x0, horizon=T, samples=1000, iterations=20, elites=50, noise_std=1.0, generator=g)
    assert ((c.cost / optimum - 1).abs() < 2e-4).all()
    shooting = random_shooting(model, cost, x0, horizon=T, samples=200, noise_std=0.5, generator=g)
    assert (shooting.cost >= optimum).all() and (s.cost < shooting.cost).all()
    for sol in (s, c, shooting):                                  # the reported cost is the plan's
        torch.testing.assert_close(sol.cost, cost(trajopt.rollout(model, x0, sol.U), sol.U))


def test_sampling_keeps_the_bounds_and_random_shooting_keeps_the_best_sample():
    model, cost, x0, T = double_integrator()
    g = torch.Generator().manual_seed(1)
    U0 = torch.full((3, T, 1), 0.2, **D64)
    for solve in (mppi, cem):
        sol = solve(model, cost, x0, U0, u_lower=-0.3, u_upper=0.3, iterations=3, samples=100, generator=g)
        assert (sol.U.abs() <= 0.3).all()
    shooting = random_shooting(model, cost, x0, U0, samples=50, u_lower=-0.3, u_upper=0.3, generator=g)
    assert (shooting.U.abs() <= 0.3).all()
    torch.testing.assert_close(shooting.cost, shooting.history["costs"].amin(1))
    assert (shooting.cost <= shooting.history["costs"][:, 0]).all()             # sample 0 is U_init


def test_mppi_gradient_of_a_cost_weight_matches_central_differences_with_common_random_numbers():
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[0.8, 0.0], [-0.4, 1.0]], **D64)
    options = dict(horizon=15, samples=300, iterations=3, temperature=0.5, noise_std=0.7, u_lower=-2.0,
                   u_upper=2.0, correlation=0.5, smoothing=3)

    def plan():
        return mppi(model, cost, x0, generator=torch.Generator().manual_seed(3), **options).U
    (grad,) = torch.autograd.grad(plan()[:, :5].sum(), cost.C)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            cost.C[0, 0] += sign * 1e-6
            values.append(float(plan()[:, :5].sum()))
            cost.C[0, 0] -= sign * 1e-6
    assert abs(grad[0, 0].item()) > 1e-3
    assert grad[0, 0].item() == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5)


def test_correlated_noise_has_its_spread_and_lag_one_correlation_and_smoothing_averages():
    g = torch.Generator().manual_seed(0)
    U = torch.linspace(-1, 1, 30, **D64).view(1, 30, 1).repeat(4, 1, 1)
    trial = _perturbed(U, 5000, None, None, g, torch.tensor(0.7, **D64), 0.8)
    assert trial.shape == (4, 5001, 30, 1)
    torch.testing.assert_close(trial[:, 0], U, rtol=0, atol=0)                  # sample 0 is the plan itself
    e = trial[:, 1:] - U.unsqueeze(1)
    assert e.std().item() == pytest.approx(0.7, rel=0.02)
    lag = (e[:, :, 1:] * e[:, :, :-1]).mean() / e.var()
    assert lag.item() == pytest.approx(0.8, abs=0.02)
    ramp = torch.arange(10, **D64).view(1, 10, 1).repeat(2, 1, 3)
    torch.testing.assert_close(_smooth(ramp, 3)[:, 1:-1], ramp[:, 1:-1])        # linear: unchanged inside
    torch.testing.assert_close(_smooth(torch.ones(2, 10, 3, **D64), 4), torch.ones(2, 10, 3, **D64))
    torch.testing.assert_close(_smooth(ramp, 3)[:, 0], torch.full((2, 3), 0.5, **D64))   # edges: fewer terms


def test_sampling_solvers_reject_bad_input():
    model, cost, x0, T = double_integrator()
    with pytest.raises(ValueError, match="noise_std must be a positive scalar"):
        mppi(model, cost, x0, horizon=T, noise_std=-1.0)
    with pytest.raises(ValueError, match="correlation must be in"):
        mppi(model, cost, x0, horizon=T, correlation=1.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        mppi(model, cost, x0, horizon=T, temperature=0.0)
    with pytest.raises(ValueError, match="elites .* must not exceed samples"):
        cem(model, cost, x0, horizon=T, samples=10, elites=20)
    with pytest.raises(ValueError, match="uniform samples need finite u_lower and u_upper"):
        random_shooting(model, cost, x0, horizon=T)
    with pytest.raises(ValueError, match="u_lower has shape"):
        mppi(model, cost, x0, horizon=T, u_lower=torch.zeros(7, **D64))
    with pytest.raises(ValueError, match="give a batch"):
        cem(model, cost, x0[0], horizon=T)


def test_both_ways_of_costing_samples_agree_and_the_plan_rollout_can_be_skipped(monkeypatch):
    from trajopt import sampling
    model, cost, x0, T = double_integrator()
    trial = torch.randn(3, 40, T, 1, generator=torch.Generator().manual_seed(4), **D64)
    stored = sampling._sample_costs(model, cost, x0, trial)
    monkeypatch.setattr(sampling, "_STORED_ROWS", 0)                 # sum the stage costs along the rollout
    summed = sampling._sample_costs(model, cost, x0, trial)
    reference = torch.stack([cost(trajopt.rollout(model, x0, trial[:, i]), trial[:, i]) for i in range(40)], 1)
    torch.testing.assert_close(stored, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(summed, reference, rtol=1e-12, atol=0)
    # the samples as the solvers draw them (time-major), on models whose steps keep that layout
    pendulum = dynamics.Pendulum().discretize().double()
    for model, cost, x0 in ((model, cost, x0), (pendulum, cost, x0 @ torch.tensor([[3.0, 0.0], [0.0, 2.0]], **D64))):
        plans = torch.randn(3, T, 1, generator=torch.Generator().manual_seed(6), **D64)
        bound = torch.full((3, T, 1), 1.5, **D64)
        trial = _perturbed(plans, 39, -bound, bound, torch.Generator().manual_seed(7), torch.tensor(0.8, **D64), 0.5)
        reference = torch.stack([cost(trajopt.rollout(model, x0, trial[:, i]), trial[:, i]) for i in range(40)], 1)
        torch.testing.assert_close(sampling._sample_costs(model, cost, x0, trial), reference, rtol=1e-12, atol=0)
    for solve in (mppi, cem):
        options = dict(horizon=T, samples=50, iterations=2, **({"elites": 10} if solve is cem else {}))
        full = solve(model, cost, x0, generator=torch.Generator().manual_seed(5), **options)
        bare = solve(model, cost, x0, rollout_plan=False, generator=torch.Generator().manual_seed(5), **options)
        assert bare.X is None and bare.cost is None
        torch.testing.assert_close(bare.U, full.U, rtol=0, atol=0)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_sample_costs_give_the_eager_plans_and_gradients():
    model = dynamics.Pendulum().discretize().double()
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[3.0, 0.0], [-0.4, 1.0]], **D64)
    options = dict(horizon=5, samples=40, iterations=2, temperature=0.5, u_lower=-2.0, u_upper=2.0)
    plans, grads = [], []
    for compile in (False, True):
        U = mppi(model, cost, x0, generator=torch.Generator().manual_seed(8), compile=compile, **options).U
        plans.append(U)
        grads.append(torch.autograd.grad(U.sum(), (cost.C, model.model.g)))
    assert plans[0].abs().max() > 0.1
    torch.testing.assert_close(plans[1], plans[0], rtol=1e-10, atol=1e-12)
    for compiled, eager in zip(grads[1], grads[0]):
        assert eager.abs().max() > 1e-4
        torch.testing.assert_close(compiled, eager, rtol=1e-8, atol=1e-12)
