import numpy as np
import pytest
import scipy.optimize
import torch

import dynamics
import trajopt
from benchmarks import problems
from trajopt.lqr import box_qp

D64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("m", [1, 3])
def test_box_qp_matches_scipy(m):
    g = torch.Generator().manual_seed(m)
    A = torch.randn(40, m, m, generator=g, **D64)
    H = A @ A.mT + 0.1 * torch.eye(m, **D64)
    q = 3 * torch.randn(40, m, generator=g, **D64)
    lo, hi = -torch.rand(40, m, generator=g, **D64), torch.rand(40, m, generator=g, **D64)
    x, free, _, ok = box_qp(H, q, lo, hi)
    assert ok.all() and (x >= lo).all() and (x <= hi).all()
    for b in range(40):
        Hb, qb = H[b].numpy(), q[b].numpy()
        ref = scipy.optimize.minimize(lambda z: 0.5 * z @ Hb @ z + qb @ z, np.zeros(m), jac=lambda z: Hb @ z + qb,
                                      bounds=list(zip(lo[b].numpy(), hi[b].numpy())), method="L-BFGS-B",
                                      options=dict(ftol=1e-15, gtol=1e-13, maxiter=10000))
        np.testing.assert_allclose(x[b].numpy(), ref.x, atol=1e-7)
    at_bound = (x <= lo) | (x >= hi)
    assert (free | at_bound).all()


def linear_problem(B=3, T=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(3, **D64) + 0.1 * torch.randn(3, 3, generator=g, **D64)
    Bu = torch.randn(3, 2, generator=g, **D64)
    model = dynamics.LinearDynamics(A, Bu)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(3, **D64), 0.1 * torch.eye(2, **D64),
                                              x_goal=torch.ones(3, **D64), Q_final=5 * torch.eye(3, **D64))
    return model, cost, torch.randn(B, 3, generator=g, **D64), T


def test_ilqr_on_a_linear_quadratic_problem_is_lqr():
    model, cost, x0, T = linear_problem()
    sol = trajopt.ilqr(model, cost, x0, horizon=T)
    n, m = 3, 2
    direct = trajopt.lqr(torch.cat([model.A, model.B], -1).expand(T, n, n + m), None, cost.C.expand(T, n + m, n + m),
                         cost.c.expand(T, n + m), x0, C_final=cost.C_final, c_final=cost.c_final)
    torch.testing.assert_close(sol.U, direct.U, atol=1e-8, rtol=0)
    assert sol.converged.all() and sol.iterations <= 3


def test_ilqr_box_constrained_linear_problem_matches_scipy_with_per_problem_bounds():
    model, cost, x0, T = linear_problem(B=3, T=12, seed=1)
    upper = torch.tensor([0.3, 0.5, 1.0], **D64).view(3, 1, 1).expand(3, T, 2).clone()
    upper[:, :4] = 0.2                                                     # per step too
    sol = trajopt.ilqr(model, cost, x0, horizon=T, u_lower=-upper, u_upper=upper, max_iter=50)
    assert (sol.U <= upper).all() and (sol.U >= -upper).all()             # bounds hold exactly
    assert (sol.U == upper).any()                                         # and some are active
    for b in range(3):
        def f(u, b=b):
            U = torch.tensor(u.reshape(1, T, 2), requires_grad=True)
            J = cost(trajopt.rollout(model, x0[b:b + 1], U), U).sum()
            J.backward()
            return float(J.detach()), U.grad.numpy().ravel()
        bounds = list(zip(-upper[b].numpy().ravel(), upper[b].numpy().ravel()))
        ref = scipy.optimize.minimize(f, np.zeros(T * 2), jac=True, bounds=bounds, method="L-BFGS-B",
                                      options=dict(ftol=1e-15, gtol=1e-12, maxiter=10000))
        assert float(sol.cost[b]) == pytest.approx(ref.fun, rel=1e-8)
    assert float(sol.history["projected_gradient"].max()) < 1e-6


def test_ilqr_lowers_the_pendulum_cost_and_keeps_the_bounds():
    P = problems.PENDULUM
    model = dynamics.Pendulum().discretize()
    cost = trajopt.QuadraticCost.from_weights(2 * torch.tensor(P["Q"]), 2 * torch.tensor([[P["R"]]]))
    x0 = torch.tensor(problems.pendulum_x0(4, seed=3))
    sol = trajopt.ilqr(model, cost, x0, horizon=40, u_lower=-2.0, u_upper=2.0, max_iter=40)
    history = sol.history["cost"]
    assert (history[1:] <= history[:-1] + 1e-12).all()                    # monotone per problem
    assert (sol.U.abs() <= 2.0).all() and torch.isfinite(sol.X).all()
    numpy_cost = [problems.trajectory_cost(problems.pendulum_step, x0[b].numpy(), sol.U[b].numpy(), P["Q"], P["R"])
                  for b in range(4)]
    np.testing.assert_allclose(sol.cost.numpy(), numpy_cost, rtol=1e-9)    # our cost is problems.py's


def test_ilqr_rejects_bad_input():
    model, cost, x0, T = linear_problem()
    with pytest.raises(ValueError, match="U_init .* or a positive horizon"):
        trajopt.ilqr(model, cost, x0)
    with pytest.raises(ValueError, match="u_lower has shape"):
        trajopt.ilqr(model, cost, x0, horizon=T, u_lower=torch.zeros(5, **D64))
    with pytest.raises(ValueError, match="u_lower exceeds u_upper"):
        trajopt.ilqr(model, cost, x0, horizon=T, u_lower=1.0, u_upper=0.0)
    with pytest.raises(TypeError, match="cost must be a trajopt.Cost"):
        trajopt.ilqr(model, lambda X, U: X.sum(), x0, horizon=T)
    with pytest.raises(ValueError, match=r"x0 has shape"):
        trajopt.ilqr(model, cost, torch.zeros(3, 4, **D64), horizon=T)
