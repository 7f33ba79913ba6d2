import numpy as np
import pytest
import scipy.optimize
import torch

import dynamics
import trajopt
from trajopt import single_shooting

D64 = dict(dtype=torch.float64)


def pendulum(T=25):
    """A pendulum near upright, bounded torque: unique optimum with several controls at the bound."""
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([4.0, 0.2], **D64)),
                                              torch.tensor([[0.05]], **D64), learnable=True)
    x0 = torch.tensor([[0.15, 0.0], [-0.1, 0.9], [0.05, -1.2]], **D64)
    return model, cost, x0, T


def lbfgsb_reference(model, cost, x0, T, bound):
    """scipy's L-BFGS-B on one problem's flattened controls at tight tolerance."""
    def f(u):
        U = torch.tensor(u.reshape(1, T, 1), requires_grad=True)
        J = cost(trajopt.rollout(model, x0[None], U), U).sum()
        J.backward()
        return J.item(), U.grad.numpy().ravel()
    res = scipy.optimize.minimize(f, np.zeros(T), jac=True, method="L-BFGS-B", bounds=[(-bound, bound)] * T,
                                  options=dict(ftol=1e-15, gtol=1e-12, maxiter=20000, maxfun=50000))
    return res.fun, res.x


def test_lbfgs_single_shooting_matches_the_lqr_solution_of_a_linear_quadratic_problem(p1_lq):
    model, cost, x0, ref = p1_lq(3)                # one time-varying problem, three starts
    sol = single_shooting(model, cost, x0, horizon=12, grad=None, grad_tol=1e-9)
    assert sol.converged.all()
    torch.testing.assert_close(sol.U, ref.U, atol=1e-7, rtol=0)
    torch.testing.assert_close(sol.cost, cost(ref.X, ref.U), atol=0, rtol=1e-12)


def test_single_shooting_reaches_the_box_constrained_optimum_of_scipy_lbfgsb():
    model, cost, x0, T = pendulum()
    sol = single_shooting(model, cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0, grad=None, grad_tol=1e-8)
    assert sol.converged.all() and (sol.U.abs() <= 2.0).all()
    assert (sol.U.abs() == 2.0).any(), "the test should have controls at the bound"
    for b in range(len(x0)):
        J, u = lbfgsb_reference(model, cost, x0[b], T, 2.0)
        assert abs(sol.cost[b].item() / J - 1) < 1e-10
        np.testing.assert_allclose(sol.U[b].flatten().numpy(), u, atol=1e-5)
    ilqr = trajopt.ilqr(model, cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0, grad=None)
    torch.testing.assert_close(sol.cost, ilqr.cost, atol=0, rtol=1e-10)
    # the history is the cost after each iteration, never increasing beyond rounding
    h = sol.history["cost"]
    assert (h[1:] <= h[:-1] + 1e-12 * h[:-1].abs().clamp_min(1.0)).all() and torch.equal(h[-1], sol.cost.detach())


def test_adam_and_squashing_approach_the_same_optimum():
    model = dynamics.DoubleIntegrator().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64))
    x0, T = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.3]], **D64), 20
    bounds = dict(u_lower=-0.3, u_upper=0.3)
    ref = single_shooting(model, cost, x0, horizon=T, grad=None, **bounds)
    assert ref.converged.all() and (ref.U.abs() == 0.3).any()
    adam = single_shooting(model, cost, x0, horizon=T, optimizer="adam", max_iter=600, lr=0.05, lr_final=1e-3,
                           grad=None, **bounds)
    assert ((adam.cost / ref.cost - 1).abs() < 1e-5).all() and (adam.U.abs() <= 0.3).all()
    squash = single_shooting(model, cost, x0, horizon=T, bounds="squash", grad=None, **bounds)
    assert (squash.U.abs() < 0.3).all()                          # squashed controls never reach the bound
    assert ((squash.cost / ref.cost - 1) < 1e-4).all() and (squash.cost >= ref.cost * (1 - 1e-12)).all()


def test_single_shooting_gradient_matches_central_differences():
    model, cost, x0, T = pendulum()
    options = dict(horizon=T, u_lower=-2.0, u_upper=2.0, grad_tol=1e-10)
    sol = single_shooting(model, cost, x0, **options)
    (grad,) = torch.autograd.grad(sol.U.sum(), cost.C)
    # differences of the optimum: L-BFGS's own solutions are accurate to about 1e-7 in U, which would swamp a
    # difference quotient, so the optimum is solved by iLQR to rounding (the problem's optimum is unique)
    values = {}
    for solver in (trajopt.ilqr, single_shooting):
        for sign in (1, -1):
            with torch.no_grad():
                cost.C[0, 0] += sign * 1e-4
                values[solver, sign] = float(solver(model, cost, x0, grad=None, **options).U.sum())
                cost.C[0, 0] -= sign * 1e-4
    fd, fd_shooting = ((values[s, 1] - values[s, -1]) / 2e-4 for s in (trajopt.ilqr, single_shooting))
    assert abs(grad[0, 0].item() - fd) <= 1e-6 * abs(fd) and abs(fd) > 1e-2
    assert abs(fd_shooting - fd) <= 1e-3 * abs(fd)


def test_single_shooting_rejects_bad_input():
    model, cost, x0, T = pendulum()
    with pytest.raises(ValueError, match="optimizer"):
        single_shooting(model, cost, x0, horizon=T, optimizer="sgd")
    with pytest.raises(ValueError, match="bounds='squash' needs both"):
        single_shooting(model, cost, x0, horizon=T, bounds="squash", u_upper=1.0, grad=None)
    with pytest.raises(ValueError, match="grad='implicit' needs bounds='project'"):
        single_shooting(model, cost, x0, horizon=T, bounds="squash", u_lower=-2.0, u_upper=2.0)
    with pytest.raises(ValueError, match="u_lower"):
        single_shooting(model, cost, x0, horizon=T, u_lower=torch.zeros(3, **D64))
    with pytest.raises(ValueError, match="x0"):
        single_shooting(model, cost, torch.zeros(3, 3, **D64), horizon=T)
