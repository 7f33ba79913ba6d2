import numpy as np
import pytest
import scipy.optimize
import torch

import dynamics
import trajopt
from trajopt import Problem, Status, single_shooting
from trajopt import problems as canonical
from trajopt.problems import reference

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
    sol = single_shooting(Problem(model, cost, x0, horizon=12), grad=None, grad_tol=1e-9)
    assert sol.converged.all()
    assert (sol.residual <= 1e-9).all()
    torch.testing.assert_close(sol.U, ref.U, atol=1e-7, rtol=0)
    torch.testing.assert_close(sol.cost, cost(ref.X, ref.U), atol=0, rtol=1e-12)


def test_single_shooting_reaches_the_box_constrained_optimum_of_scipy_lbfgsb():
    model, cost, x0, T = pendulum()
    problem = Problem(model, cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0)
    sol = single_shooting(problem, grad=None, grad_tol=1e-8)
    assert sol.converged.all() and (sol.U.abs() <= 2.0).all()
    assert (sol.U.abs() == 2.0).any(), "the test should have controls at the bound"
    for b in range(len(x0)):
        J, u = lbfgsb_reference(model, cost, x0[b], T, 2.0)
        assert abs(sol.cost[b].item() / J - 1) < 1e-10
        np.testing.assert_allclose(sol.U[b].flatten().numpy(), u, atol=1e-5)
    ilqr = trajopt.ilqr(problem, grad=None)
    torch.testing.assert_close(sol.cost, ilqr.cost, atol=0, rtol=1e-10)
    # the history is the cost before the first iteration and after each, never increasing beyond rounding
    h = sol.cost_history
    assert h.shape == (len(x0), int(sol.iterations.max()) + 1)
    assert (h[:, 1:] <= h[:, :-1] + 1e-12 * h[:, :-1].abs().clamp_min(1.0)).all()
    assert torch.equal(h[:, -1], sol.cost.detach())
    torch.testing.assert_close(h[:, 0], cost(trajopt.rollout(model, x0, problem.U_init), problem.U_init),
                               atol=0, rtol=0)
    assert sol.extras == {} and sol.K is None and (sol.residual <= 1e-8).all()


def test_adam_and_squashing_approach_the_same_optimum():
    model = dynamics.DoubleIntegrator().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64))
    x0, T = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.3]], **D64), 20
    problem = Problem(model, cost, x0, horizon=T, u_lower=-0.3, u_upper=0.3)
    ref = single_shooting(problem, grad=None)
    assert ref.converged.all() and (ref.U.abs() == 0.3).any()
    adam = single_shooting(problem, optimizer="adam", max_iter=600, lr=0.05, lr_final=1e-3, grad=None)
    assert ((adam.cost / ref.cost - 1).abs() < 1e-5).all() and (adam.U.abs() <= 0.3).all()
    assert adam.cost_history.shape == (3, int(adam.iterations.max()) + 1)
    squash = single_shooting(problem, bounds="squash", grad=None)
    assert (squash.U.abs() < 0.3).all()                          # squashed controls never reach the bound
    assert ((squash.cost / ref.cost - 1) < 1e-4).all() and (squash.cost >= ref.cost * (1 - 1e-12)).all()


def test_single_shooting_gradient_matches_central_differences():
    model, cost, x0, T = pendulum()
    problem = Problem(model, cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0)
    sol = single_shooting(problem, grad_tol=1e-10)
    (grad,) = torch.autograd.grad(sol.U.sum(), cost.C)
    # differences of the optimum: L-BFGS's own solutions are accurate to about 1e-7 in U, which would swamp a
    # difference quotient, so the optimum is solved by iLQR to rounding (the problem's optimum is unique)
    values = {}
    for solver in (trajopt.ilqr, single_shooting):
        for sign in (1, -1):
            with torch.no_grad():
                cost.C[0, 0] += sign * 1e-4
                values[solver, sign] = float(solver(problem, grad=None, grad_tol=1e-10).U.sum())
                cost.C[0, 0] -= sign * 1e-4
    fd, fd_shooting = ((values[s, 1] - values[s, -1]) / 2e-4 for s in (trajopt.ilqr, single_shooting))
    assert abs(grad[0, 0].item() - fd) <= 1e-6 * abs(fd) and abs(fd) > 1e-2
    assert abs(fd_shooting - fd) <= 1e-3 * abs(fd)


def test_an_unbatched_problem_gives_row_0_of_the_batched_one():
    problem = canonical.pendulum(B=3, horizon=30)
    for options in (dict(), dict(optimizer="adam", max_iter=50)):
        batched = single_shooting(problem, grad=None, **options)
        one = single_shooting(problem.replace(x0=problem.x0[0]), grad=None, **options)
        assert one.U.shape == (30, 1) and one.X.shape == (31, 2) and one.status.shape == ()
        assert one.cost_history.ndim == 1 and one.iterations.shape == () and one.residual.shape == ()
        assert int(one.status) == int(batched.status[0]) and int(one.iterations) == int(batched.iterations[0])
        torch.testing.assert_close(one.U, batched.U[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(one.cost, batched.cost[0], atol=0, rtol=1e-12)
        I = len(one.cost_history)
        torch.testing.assert_close(one.cost_history, batched.cost_history[0, :I], atol=0, rtol=1e-12)


def test_p2_converges_and_p4_s_ilqr_optimum_passes_the_same_first_order_test():
    """The canonical problems (costs in ``reference``'s convention): P2's first starts from zero controls, and P4
    from iLQR's optimum (single shooting's own solve of P4 takes a few hundred iterations: the benchmark)."""
    p2 = canonical.pendulum(B=2, horizon=40)
    sol = single_shooting(p2, grad=None, max_iter=300)
    assert sol.converged.all() and (sol.U.abs() <= 2.0).all()
    spec = reference.PENDULUM
    numpy_cost = [reference.trajectory_cost(reference.pendulum_step, p2.x0[b].numpy(), sol.U[b].numpy(), spec["Q"],
                                            spec["R"]) for b in range(2)]
    np.testing.assert_allclose(sol.cost.numpy(), numpy_cost, rtol=1e-9)
    assert (sol.cost < sol.cost_history[:, 0]).all()
    p4 = canonical.bicycle()
    ilqr = trajopt.ilqr(p4, grad=None, max_iter=500)
    assert ilqr.converged.all()
    again = single_shooting(p4.replace(U_init=ilqr.U), grad=None)     # the same first-order test as iLQR's
    assert again.converged.all() and int(again.iterations[0]) == 0
    torch.testing.assert_close(again.residual, ilqr.residual, atol=1e-12, rtol=0)
    torch.testing.assert_close(again.cost, ilqr.cost, atol=0, rtol=1e-12)


class _BreaksDown(dynamics.Dynamics):
    """A double integrator whose step returns NaN beyond ``|position| > 1`` (a simulator blowing up)."""

    def __init__(self):
        super().__init__(2, 1)

    def forward(self, x, u, t=None):
        nxt = torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]], -1)
        return torch.where(x[..., :1].abs() > 1, float("nan"), nxt)


class _StagesOnly(trajopt.Cost):
    """Stage costs only, pulling the position to 3: the cost never looks at the final state."""

    def stage(self, x, u, t=None):
        return (x[..., 0] - 3.0) ** 2 + x[..., 1] ** 2 + 1e-3 * u[..., 0] ** 2


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_non_finite_start_is_reported_for_its_row_and_the_rest_of_the_batch_is_solved(optimizer):
    model = _BreaksDown()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 1e-1 * torch.eye(1, **D64))
    x0 = torch.tensor([[0.5, 0.0], [0.2, 0.1], [0.3, -0.2]], **D64)
    U_init = torch.zeros(3, 20, 1, **D64)
    U_init[1] = 50.0                                                    # row 1 leaves |position| <= 1: NaN
    options = dict(optimizer=optimizer, max_iter=200 if optimizer == "lbfgs" else 100, grad=None)
    sol = single_shooting(Problem(model, cost, x0, U_init=U_init), **options)
    expected = Status.CONVERGED if optimizer == "lbfgs" else Status.MAX_ITER
    assert sol.status.tolist() == [expected, Status.NOT_FINITE, expected]
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all() and not torch.isnan(sol.cost).any()
    assert float(sol.cost[1]) == float("inf") and (sol.X[1] == x0[1]).all() and float(sol.residual[1]) == float("inf")
    assert int(sol.iterations[1]) == 0 and (sol.cost_history[1] == float("inf")).all()
    torch.testing.assert_close(sol.U[1], U_init[1], atol=0, rtol=0)
    alone = single_shooting(Problem(model, cost, x0[[0, 2]], U_init=U_init[[0, 2]]), **options)
    torch.testing.assert_close(sol.U[[0, 2]], alone.U, atol=1e-12, rtol=0)
    torch.testing.assert_close(sol.cost[[0, 2]], alone.cost, atol=0, rtol=1e-12)
    torch.testing.assert_close(sol.iterations[[0, 2]], alone.iterations, atol=0, rtol=0)
    assert "1 not_finite" in sol.summary()
    with pytest.raises(trajopt.SolveError, match="1: NOT_FINITE"):
        sol.throw()


def test_adam_stops_a_row_whose_iterate_becomes_non_finite_at_its_last_finite_iterate():
    model = _BreaksDown()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 1e-3 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([3.0, 0.0], **D64))    # the goal is out of reach
    x0 = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.2, 0.0]], **D64)
    upper = torch.tensor([0.05, 1.0, 0.05], **D64).view(3, 1, 1)      # only row 1 can push past |position| > 1
    options = dict(optimizer="adam", lr=0.1, max_iter=60, grad=None)
    far = Problem(model, cost, x0, horizon=20, u_lower=-upper, u_upper=upper)
    sol = single_shooting(far, **options)
    # rows 0 and 2 end at their bound (converged); row 1 passes |position| > 1 on its way to the goal
    assert sol.status.tolist() == [Status.CONVERGED, Status.NOT_FINITE, Status.CONVERGED]
    bad = torch.tensor([1])
    assert (sol.iterations[bad] > 0).all()                              # it did start finite
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all() and (sol.cost[bad] == float("inf")).all()
    last = sol.cost_history[bad, -1]
    assert torch.isfinite(last).all()                                   # the kept iterate's cost, repeated
    torch.testing.assert_close(cost(trajopt.rollout(model, x0[bad], sol.U[bad]), sol.U[bad]), last)
    assert (last < sol.cost_history[bad, 0]).all()
    good = torch.tensor([0, 2])
    alone = single_shooting(far.select(good), **options)
    torch.testing.assert_close(sol.U[good], alone.U, atol=1e-12, rtol=0)
    torch.testing.assert_close(sol.status[good], alone.status, atol=0, rtol=0)


def test_a_step_to_a_non_finite_final_state_is_never_accepted_even_at_a_finite_cost():
    model = _BreaksDown()
    x0 = torch.tensor([[0.0, 0.0], [0.5, 0.0]], **D64)
    U_init = torch.zeros(2, 20, 1, **D64)
    sol = single_shooting(Problem(model, _StagesOnly(), x0, U_init=U_init), max_iter=100, grad=None)
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.cost).all()
    assert (sol.status != Status.NOT_FINITE).all() and (sol.status != Status.CONVERGED).all()
    initial = _StagesOnly()(trajopt.rollout(model, x0, U_init), U_init)
    assert (sol.cost < initial).all()                                   # progress, within the finite region
    torch.testing.assert_close(sol.X, trajopt.rollout(model, x0, sol.U), atol=0, rtol=0)


def test_single_shooting_rejects_bad_input():
    model, cost, x0, T = pendulum()
    problem = Problem(model, cost, x0, horizon=T)
    with pytest.raises(ValueError, match="optimizer"):
        single_shooting(problem, optimizer="sgd")
    with pytest.raises(ValueError, match="bounds='squash' needs both"):
        single_shooting(Problem(model, cost, x0, horizon=T, u_upper=1.0), bounds="squash", grad=None)
    with pytest.raises(ValueError, match="grad='implicit' needs bounds='project'"):
        single_shooting(Problem(model, cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0), bounds="squash")
    with pytest.raises(ValueError, match="u_lower"):
        Problem(model, cost, x0, horizon=T, u_lower=torch.zeros(3, **D64))
    with pytest.raises(ValueError, match="x0"):
        Problem(model, cost, torch.zeros(3, 3, **D64), horizon=T)
    with pytest.raises(TypeError, match="single_shooting: the first argument must be a trajopt.Problem"):
        single_shooting(model, cost, x0, horizon=T)
    with pytest.raises(ValueError, match="single_shooting: memory applies to optimizer='lbfgs' only"):
        single_shooting(problem, optimizer="adam", memory=5)
    for option in ("lr", "lr_final"):
        with pytest.raises(ValueError, match=f"single_shooting: {option} applies to optimizer='adam' only"):
            single_shooting(problem, **{option: 0.1})
    for option, value in (("lr_final", 0.0), ("lr", -1.0), ("lr", float("nan"))):
        with pytest.raises(ValueError, match=f"single_shooting: {option} must be a positive"):
            single_shooting(problem, optimizer="adam", **{option: value})
    for option, value in (("max_iter", 0), ("max_iter", 1.5), ("memory", 0)):
        with pytest.raises(ValueError, match=f"single_shooting: {option} must be an int"):
            single_shooting(problem, **{option: value})
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="single_shooting: grad_tol must be a positive"):
            single_shooting(problem, grad_tol=value)
    with pytest.raises(ValueError, match="grad must be one of"):
        single_shooting(problem, grad="unroll")
