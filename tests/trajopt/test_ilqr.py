import numpy as np
import pytest
import scipy.optimize
import torch

import dynamics
import trajopt
from tests.references import lbfgsb
from trajopt import problems as canonical
from trajopt._core.box_lqr import box_lqr_backward, box_qp
from trajopt.problems import reference as problems

D64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("m", [1, 3])
def test_box_qp_matches_scipy(m):
    g = torch.Generator().manual_seed(m)
    A = torch.randn(40, m, m, generator=g, **D64)
    H = A @ A.mT + 0.1 * torch.eye(m, **D64)
    q = 3 * torch.randn(40, m, generator=g, **D64)
    lo, hi = -torch.rand(40, m, generator=g, **D64), torch.rand(40, m, generator=g, **D64)
    x, free, ok, _ = box_qp(H, q, lo, hi)
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
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, horizon=T))
    n, m = 3, 2
    direct = trajopt.lqr(torch.cat([model.A, model.B], -1).expand(T, n, n + m), None, cost.C.expand(T, n + m, n + m),
                         cost.c.expand(T, n + m), x0, C_final=cost.C_final, c_final=cost.c_final)
    torch.testing.assert_close(sol.U, direct.U, atol=1e-8, rtol=0)
    assert sol.converged.all() and (sol.iterations <= 3).all()


def test_ilqr_from_an_infeasible_state_guess_on_a_linear_quadratic_problem_is_lqr():
    model, cost, x0, T = linear_problem()
    guess = 3 * torch.randn(3, T + 1, 3, generator=torch.Generator().manual_seed(5), **D64)   # not a rollout
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, X_init=guess, horizon=T))
    n, m = 3, 2
    direct = trajopt.lqr(torch.cat([model.A, model.B], -1).expand(T, n, n + m), None, cost.C.expand(T, n + m, n + m),
                         cost.c.expand(T, n + m), x0, C_final=cost.C_final, c_final=cost.c_final)
    torch.testing.assert_close(sol.U, direct.U, atol=1e-8, rtol=0)
    torch.testing.assert_close(sol.X, trajopt.rollout(model, x0, sol.U), atol=1e-12, rtol=0)   # gaps closed
    assert sol.converged.all() and (sol.iterations <= 3).all()


@pytest.mark.parametrize("bounded", [False, True])
def test_box_lqr_backward_predicts_the_model_change_with_gaps(bounded):
    """``alpha d1 + alpha^2 d2`` is the quadratic model's change along the policy that closes the fraction
    ``alpha`` of every gap, computed here by stepping the linear model."""
    B, T, n, m = 4, 9, 3, 2
    g = torch.Generator().manual_seed(7)
    F = torch.cat([torch.eye(n, **D64) + 0.2 * torch.randn(B, T, n, n, generator=g, **D64),
                   torch.randn(B, T, n, m, generator=g, **D64)], -1)
    L = torch.randn(B, T, n + m, n + m, generator=g, **D64)
    C = L @ L.mT + 0.5 * torch.eye(n + m, **D64)
    c = torch.randn(B, T, n + m, generator=g, **D64)
    Lf = torch.randn(B, n, n, generator=g, **D64)
    Cf, cf = Lf @ Lf.mT, torch.randn(B, n, generator=g, **D64)
    gaps, dx0 = torch.randn(B, T, n, generator=g, **D64), torch.randn(B, n, generator=g, **D64)
    bound = 0.3 if bounded else float("inf")
    lo, hi = torch.full((B, T, m), -bound, **D64), torch.full((B, T, m), bound, **D64)
    K, k, (d1, d2), free, ok = box_lqr_backward(F, C, c, Cf, cf, lo, hi, torch.zeros(B, **D64), gaps, dx0)
    assert ok.all() and (not bounded or not free.all())
    for alpha in (1.0, 0.3):
        dx, change = alpha * dx0, torch.zeros(B, **D64)
        for t in range(T):
            du = alpha * k[:, t] + (K[:, t] @ dx.unsqueeze(-1)).squeeze(-1)
            tau = torch.cat([dx, du], -1)
            change += (c[:, t] * tau).sum(-1) + 0.5 * (tau.unsqueeze(-2) @ C[:, t] @ tau.unsqueeze(-1))[:, 0, 0]
            dx = (F[:, t] @ tau.unsqueeze(-1)).squeeze(-1) + alpha * gaps[:, t]
        change += (cf * dx).sum(-1) + 0.5 * (dx.unsqueeze(-2) @ Cf @ dx.unsqueeze(-1))[:, 0, 0]
        torch.testing.assert_close(alpha * d1 + alpha ** 2 * d2, change, rtol=1e-10, atol=1e-10)


def test_unfinished_solve_from_a_state_guess_returns_a_rollout_and_bad_guesses_raise():
    model, cost, x0, T = linear_problem()
    guess = torch.ones(3, T + 1, 3, **D64)
    U = 0.1 * torch.ones(3, T, 2, **D64)
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, U_init=U, X_init=guess), max_iter=0, grad=None)
    assert not sol.converged.any()
    torch.testing.assert_close(sol.X, trajopt.rollout(model, x0, U), atol=0, rtol=0)
    torch.testing.assert_close(sol.cost, cost(sol.X, U), atol=0, rtol=0)
    with pytest.raises(ValueError, match="X_init has shape"):
        trajopt.ilqr(trajopt.Problem(model, cost, x0, U_init=U, X_init=guess[:, :T]))
    with pytest.raises(ValueError, match="X_init .*NaN|X_init .*finite"):
        trajopt.ilqr(trajopt.Problem(model, cost, x0, U_init=U, X_init=guess * float("nan")))


def test_ilqr_box_constrained_linear_problem_matches_scipy_with_per_problem_bounds():
    model, cost, x0, T = linear_problem(B=3, T=12, seed=1)
    upper = torch.tensor([0.3, 0.5, 1.0], **D64).view(3, 1, 1).expand(3, T, 2).clone()
    upper[:, :4] = 0.2                                                     # per step too
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, horizon=T, u_lower=-upper, u_upper=upper), max_iter=50)
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
    assert float(sol.residual.max()) < 1e-6


def test_ilqr_lowers_the_pendulum_cost_and_keeps_the_bounds():
    P = problems.PENDULUM
    model = dynamics.Pendulum().discretize()
    cost = trajopt.QuadraticCost.from_weights(2 * torch.tensor(P["Q"]), 2 * torch.tensor([[P["R"]]]))
    x0 = torch.tensor(problems.pendulum_x0(4, seed=3))
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, horizon=40, u_lower=-2.0, u_upper=2.0), max_iter=40)
    history = sol.cost_history
    assert (history[:, 1:] <= history[:, :-1] + 1e-12).all()                    # monotone per problem
    assert (sol.U.abs() <= 2.0).all() and torch.isfinite(sol.X).all()
    numpy_cost = [problems.trajectory_cost(problems.pendulum_step, x0[b].numpy(), sol.U[b].detach().numpy(), P["Q"], P["R"])
                  for b in range(4)]
    np.testing.assert_allclose(sol.cost.detach().numpy(), numpy_cost, rtol=1e-9)    # our cost is problems.py's


def test_ilqr_rejects_bad_input():
    model, cost, x0, T = linear_problem()
    with pytest.raises(ValueError, match="U_init .* or horizon"):
        trajopt.Problem(model, cost, x0)
    with pytest.raises(ValueError, match="u_lower has shape"):
        trajopt.Problem(model, cost, x0, horizon=T, u_lower=torch.zeros(5, **D64))
    with pytest.raises(ValueError, match="u_lower exceeds u_upper"):
        trajopt.Problem(model, cost, x0, horizon=T, u_lower=1.0, u_upper=0.0)
    with pytest.raises(TypeError, match="cost must be a trajopt.Cost"):
        trajopt.Problem(model, lambda X, U: X.sum(), x0, horizon=T)
    with pytest.raises(ValueError, match=r"x0 has shape"):
        trajopt.Problem(model, cost, torch.zeros(3, 4, **D64), horizon=T)
    with pytest.raises(ValueError, match="horizon=5 contradicts U_init's length T=15"):
        trajopt.Problem(model, cost, x0, horizon=5, U_init=torch.zeros(T, 2, **D64))
    with pytest.raises(ValueError, match="batch is empty"):
        trajopt.Problem(model, cost, x0[:0], horizon=T)
    with pytest.raises(TypeError, match="ilqr: the first argument must be a trajopt.Problem"):
        trajopt.ilqr(model, cost, x0, horizon=T)
    problem = trajopt.Problem(model, cost, x0, horizon=T)
    for option, value in (("grad_tol", float("nan")), ("grad_tol", -1.0), ("tol", float("nan")), ("mu_init", 0.0),
                          ("max_iter", 1.5), ("mu_max", float("inf"))):
        with pytest.raises(ValueError, match=f"ilqr: {option} must be"):
            trajopt.ilqr(problem, **{option: value})
    with pytest.raises(ValueError, match="grad must be one of"):
        trajopt.ilqr(problem, grad="adjoint")
    with pytest.raises(TypeError, match="ddp: second_order is always True"):
        trajopt.ddp(problem, second_order=False)


def pendulum_problem(u_max=1.5, T=25):
    P = problems.PENDULUM
    model = dynamics.Pendulum().discretize()
    cost = trajopt.QuadraticCost.from_weights(2 * torch.tensor(P["Q"]), 2 * torch.tensor([[P["R"]]]), learnable=True)
    x0 = torch.tensor([[2.5, 0.3], [-1.0, 0.5], [0.6, -2.0]], **D64)
    return model, cost, x0, dict(horizon=T, u_lower=-u_max, u_upper=u_max), dict(max_iter=300, grad_tol=1e-11)


def test_implicit_gradients_match_finite_differences_with_active_bounds():
    model, cost, x0, fields, options = pendulum_problem()
    x0.requires_grad_(True)
    weights = torch.tensor([1.0, -2.0, 0.5], **D64)

    def loss(sol):
        return (sol.U.sum(-1).sum(-1) * weights).sum() + (sol.X[..., 1] ** 2).sum()

    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, **fields), **options)
    assert sol.converged.all()
    at_bound = sol.U.detach().abs() >= 1.5
    assert at_bound.any() and not at_bound.all()
    mass, C = model.model.m, cost.C
    g_x0, g_mass, g_C = torch.autograd.grad(loss(sol), [x0, mass, C])

    def central(tensor, index, eps=1e-6):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor[index] += sign * eps
                values.append(float(loss(trajopt.ilqr(trajopt.Problem(model, cost, x0.detach(), **fields), grad=None, **options))))
                tensor[index] -= sign * eps
        return (values[0] - values[1]) / (2 * eps)

    with torch.no_grad():
        x0_data = x0.detach()
    for index in [(0, 0), (1, 1), (2, 0)]:
        assert float(g_x0[index]) == pytest.approx(central(x0_data, index), rel=1e-5)
    assert float(g_mass) == pytest.approx(central(mass.data, ()), rel=1e-5)
    (g_mass_alone,) = torch.autograd.grad(loss(trajopt.ilqr(trajopt.Problem(model, cost, x0.detach(), **fields), **options)), [mass])
    torch.testing.assert_close(g_mass_alone, g_mass)                     # x0 without grad changes nothing
    # a cost weight: theta's weight and the theta-torque coupling (C is used through its symmetric part)
    for index in [(0, 0), (1, 1)]:
        assert float(g_C[index]) == pytest.approx(central(C.data, index), rel=1e-5, abs=1e-8)
    unrolled = trajopt.ilqr(trajopt.Problem(model, cost, x0, **fields), grad="unroll", **options)
    for a, b in zip(torch.autograd.grad(loss(unrolled), [x0, mass]), (g_x0, g_mass)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_ddp_reaches_ilqr_optimum_with_no_more_iterations():
    model, cost, x0, fields, options = pendulum_problem(u_max=2.0, T=30)
    a = trajopt.ilqr(trajopt.Problem(model, cost, x0, **fields), grad=None, **options)
    b = trajopt.ddp(trajopt.Problem(model, cost, x0, **fields), grad=None, **options)
    assert a.converged.all() and b.converged.all()
    torch.testing.assert_close(a.cost, b.cost, rtol=1e-10, atol=0)
    assert (b.iterations <= a.iterations).all()
    assert float(b.residual.max()) <= 1e-11


def test_unconverged_problems_get_no_gradient_through_the_solve():
    model, cost, x0, fields, options = pendulum_problem()
    x0 = x0.clone().requires_grad_(True)
    options["grad_tol"] = 1e-6
    budgets = trajopt.ilqr(trajopt.Problem(model, cost, x0.detach(), **fields), grad=None, **options).iterations
    last = int(budgets.argmax())
    options["max_iter"] = int(budgets.max()) - 1                 # the slowest start stops short
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, **fields), **options)
    assert not sol.converged[last] and sol.converged.sum() == len(budgets) - 1
    (g,) = torch.autograd.grad(sol.U.sum(), x0)
    others = torch.arange(len(budgets)) != last
    assert (g[last] == 0).all() and (g[others] != 0).any() and torch.isfinite(g).all()
    assert trajopt.projected_gradient(trajopt.Problem(model, cost, x0.detach(), **fields), sol.U.detach()).shape == sol.U.shape


def test_p4_optimum_matches_lbfgsb_started_from_it():
    p = canonical.bicycle(1)
    sol = trajopt.ddp(p, max_iter=100, grad=None)
    assert sol.converged.all() and float(sol.residual.max()) <= 1e-6
    assert ((sol.U >= p.u_lower) & (sol.U <= p.u_upper)).all()
    assert float(sol.cost[0]) == pytest.approx(lbfgsb(p, 0, sol.U[0], gtol=1e-10, maxiter=300), rel=1e-9)
    P = problems.BICYCLE
    assert float(sol.cost[0]) == pytest.approx(problems.trajectory_cost(
        problems.bicycle_step, p.x0[0].numpy(), sol.U[0].numpy(), P["Q"], P["R"], P["target"]), rel=1e-12)


def test_p4_from_zero_controls_converges_to_lbfgsbs_optimum_from_the_same_start():
    """From rest the second step once swung the steering past pi/2, where tan jumps, and iLQR stalled at 1134.23:
    the bicycle declares its domain, a trial step that leaves it is rejected like a non-finite one."""
    p = canonical.bicycle(1)
    p = p.replace(U_init=torch.zeros_like(p.U_init))
    sol = trajopt.ilqr(p, grad=None)
    assert sol.converged.all() and float(sol.X[..., 3].abs().max()) < torch.pi / 2
    reference = lbfgsb(p, 0, torch.zeros_like(p.U_init[0]), gtol=1e-10, maxiter=3000)
    assert float(sol.cost[0]) == pytest.approx(reference, rel=1e-8)


def test_p4_implicit_gradients_match_finite_differences_with_active_bounds():
    p = canonical.bicycle(1)
    model, cost, ub = p.dynamics, p.cost, p.u_upper
    wheelbase = model.model.L.requires_grad_(True)
    cost.C.requires_grad_(True)
    x0 = p.x0.clone().requires_grad_(True)
    options = dict(max_iter=200, grad_tol=1e-11)
    sol = trajopt.ddp(p.replace(x0=x0), **options)
    assert sol.converged.all() and 0.2 < float((sol.U.detach().abs() >= ub).double().mean()) < 0.8

    def loss(s):
        return s.U[..., 1].sum() + (s.X[:, -1, :2] ** 2).sum()
    g_x0, g_C, g_L = torch.autograd.grad(loss(sol), [x0, cost.C, wheelbase])
    start = sol.U.detach()

    def central(tensor, index, eps=1e-5):      # solves converge to ~1e-12 in U: smaller steps see that
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor[index] += sign * eps
                values.append(loss(trajopt.ddp(p.replace(x0=x0.detach(), U_init=start), grad=None, **options)).item())
                tensor[index] -= sign * eps
        return (values[0] - values[1]) / (2 * eps)

    assert g_x0[0, 1].item() == pytest.approx(central(x0.data, (0, 1)), rel=1e-5)
    assert g_C[1, 1].item() == pytest.approx(central(cost.C.data, (1, 1)), rel=1e-5)     # the y weight
    assert g_L.item() == pytest.approx(central(wheelbase.data, ()), rel=1e-5)           # the wheelbase


def test_cartpole_pole_mass_gradient_matches_finite_differences():
    """The case where mpc.pytorch's gradient is 16.41 against central differences' 12.55: d sum(U) / d m_pole
    through the converged P3 solution from the hanging start (43% of the controls at their bounds)."""
    p = canonical.cartpole(1)
    model, ub = p.dynamics, p.u_upper
    pole_mass = model.model.mp.requires_grad_(True)
    options = dict(max_iter=300, grad_tol=1e-10)
    sol = trajopt.ilqr(p, **options)
    assert sol.converged.all() and 0.2 < float((sol.U.detach().abs() >= ub).double().mean()) < 0.8
    (grad,) = torch.autograd.grad(sol.U.sum(), pole_mass)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            pole_mass += sign * 1e-4
            again = trajopt.ilqr(p.replace(U_init=sol.U.detach()), grad=None, **options)
            pole_mass -= sign * 1e-4
        assert again.converged.all()
        values.append(float(again.U.sum()))
    assert grad.item() == pytest.approx((values[0] - values[1]) / 2e-4, rel=1e-5)


def test_float32_cartpole_converges_and_its_gradient_matches_float64_central_differences():
    """P3 from zero controls in float32 converges on every start with the dtype-scaled tolerance, at the float64
    cost, and its implicit gradient of sum(U) in the pole mass agrees with float64 central differences."""
    p32, p64 = canonical.cartpole(32, dtype=torch.float32), canonical.cartpole(32)
    s64 = trajopt.ilqr(p64, grad=None)
    mass = p32.dynamics.model.mp.requires_grad_(True)
    s32 = trajopt.ilqr(p32)
    assert s32.converged.all() and s64.converged.all()
    torch.testing.assert_close(s32.cost.double(), s64.cost, rtol=1e-5, atol=0)
    rows = [0, 5, 17]
    (grad,) = torch.autograd.grad(s32.U[rows].sum(), mass)
    model64 = p64.dynamics.model
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            model64.mp += sign * 1e-5
            again = trajopt.ilqr(p64.select(rows).replace(U_init=s64.U[rows]), grad=None, grad_tol=1e-11,
                                 max_iter=300)
            model64.mp -= sign * 1e-5
        assert again.converged.all()
        values.append(float(again.U.sum()))
    assert grad.item() == pytest.approx((values[0] - values[1]) / 2e-5, rel=1e-3)


class _BreaksDown(dynamics.Dynamics):
    """A double integrator whose step returns NaN beyond ``|position| > 1`` (a simulator blowing up)."""

    def __init__(self):
        super().__init__(2, 1)

    def forward(self, x, u, t=None):
        nxt = torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]], -1)
        return torch.where(x[..., :1].abs() > 1, float("nan"), nxt)


def test_a_problem_whose_optimum_lies_where_the_model_breaks_down_ends_finite_and_unconverged():
    model = _BreaksDown()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 1e-3 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([3.0, 0.0], **D64))    # the goal is out of reach
    x0 = torch.tensor([[0.0, 0.0], [0.5, 0.0]], **D64)
    U_init = torch.zeros(2, 20, 1, **D64)
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, U_init=U_init), max_iter=50)
    initial = cost(trajopt.rollout(model, x0, U_init), U_init)
    assert not sol.converged.any() and (sol.status != trajopt.Status.NOT_FINITE).all()
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.cost).all()
    assert (sol.cost < initial).all()                                   # the best finite iterate, not the start
    torch.testing.assert_close(sol.cost, cost(trajopt.rollout(model, x0, sol.U), sol.U))


def test_a_non_finite_start_is_reported_for_its_row_and_the_rest_of_the_batch_is_solved():
    model = _BreaksDown()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 1e-1 * torch.eye(1, **D64))
    x0 = torch.tensor([[0.5, 0.0], [0.2, 0.1], [0.3, -0.2]], **D64)
    U_init = torch.zeros(3, 20, 1, **D64)
    U_init[1] = 50.0                                                    # row 1 leaves |position| <= 1: NaN
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, U_init=U_init), max_iter=50)
    assert sol.status.tolist() == [trajopt.Status.CONVERGED, trajopt.Status.NOT_FINITE, trajopt.Status.CONVERGED]
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all() and not torch.isnan(sol.cost).any()
    assert float(sol.cost[1]) == float("inf") and (sol.X[1] == x0[1]).all()
    torch.testing.assert_close(sol.U[1], U_init[1])
    alone = trajopt.ilqr(trajopt.Problem(model, cost, x0[[0, 2]], U_init=U_init[[0, 2]]), max_iter=50)
    torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=0)
    assert "1 not_finite" in sol.summary()
    with pytest.raises(trajopt.SolveError, match="1: NOT_FINITE"):
        sol.throw()


def test_ilqr_with_a_slew_rate_penalty_reaches_the_lbfgsb_optimum_with_exact_implicit_gradients():
    p = canonical.pendulum(3, seed=2).replace(horizon=30)
    cost = trajopt.SlewRateCost(p.cost, torch.tensor([[0.5]], **D64), u_prev=torch.tensor([[0.0], [1.0], [-2.0]], **D64))
    problem = p.replace(cost=cost)
    sol = trajopt.ilqr(problem, grad=None, max_iter=500, grad_tol=1e-10)
    assert sol.converged.all() and (sol.iterations < 30).all(), sol.summary()
    for b in range(3):
        assert float(sol.cost[b]) == pytest.approx(lbfgsb(problem, b, sol.U[b]), rel=1e-10)
    plain = trajopt.ilqr(p, grad=None, max_iter=500)
    assert (sol.U.diff(dim=1).abs().sum() < plain.U.diff(dim=1).abs().sum())   # smoother controls
    torch.testing.assert_close(sol.X, trajopt.rollout(p.dynamics, p.x0, sol.U))
    mass = p.dynamics.model.m.requires_grad_(True)
    routes = {route: torch.autograd.grad(trajopt.ilqr(problem, grad=route, max_iter=500, grad_tol=1e-10).U.sum(),
                                         mass)[0] for route in ("implicit", "unroll")}
    shooting = trajopt.single_shooting(problem, max_iter=3000, grad_tol=1e-10)
    (routes["shooting"],) = torch.autograd.grad(shooting.U.sum(), mass)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            mass += sign * 1e-6
            values.append(float(trajopt.ilqr(problem, grad=None, max_iter=500, grad_tol=1e-11).U.sum()))
            mass -= sign * 1e-6
    for route, g in routes.items():
        assert float(g) == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5), route
    mass.requires_grad_(False)
    mppi = trajopt.mppi(problem, samples=200, max_iter=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mppi.cost, cost(trajopt.rollout(p.dynamics, p.x0, mppi.U), mppi.U))


def test_qp_step_on_a_box_constrained_linear_problem_is_the_bounded_lqr_in_a_few_steps():
    """On a linear-quadratic problem the exact box-constrained step is the bounded optimum (up to the regularization
    ``mu I`` on the control Hessian), so a few iterations reach the stopping test; the status and iteration counts
    follow the default step's semantics."""
    model, cost, x0, T = linear_problem(B=3, T=12, seed=1)
    upper = torch.full((3, T, 2), 0.3, **D64)
    p = trajopt.Problem(model, cost, x0, horizon=T, u_lower=-upper, u_upper=upper)
    sol = trajopt.ilqr(p, step="qp", max_iter=50)
    n, m = 3, 2
    direct = trajopt.lqr(torch.cat([model.A, model.B], -1).expand(T, n, n + m), None, cost.C.expand(T, n + m, n + m),
                         cost.c.expand(T, n + m), x0, C_final=cost.C_final, c_final=cost.c_final, u_lower=-upper,
                         u_upper=upper)
    assert sol.converged.all() and (sol.U == upper).any() and (sol.iterations <= 3).all()
    torch.testing.assert_close(sol.U, direct.U, atol=1e-6, rtol=0)           # mu on C_uu, stopped at grad_tol
    assert sol.cost_history.shape[1] == int(sol.iterations.max()) + 1
    short = trajopt.ilqr(p, step="qp", max_iter=0)
    assert (short.status == int(trajopt.Status.MAX_ITER)).all() and (short.iterations == 0).all()
    with pytest.raises(ValueError, match="step"):
        trajopt.ilqr(p, step="newton")


def test_qp_step_reaches_the_box_ddp_optimum_on_a_nonlinear_problem_with_active_bounds():
    p = canonical.cartpole(2)
    p = p.replace(U_init=p.U_init[:, :25])             # P3 on a quarter of its horizon: bounds still active
    ddp_ = trajopt.ilqr(p, max_iter=200, grad=None)
    qp = trajopt.ilqr(p, max_iter=200, grad=None, step="qp")
    assert ((ddp_.U.abs() - p.u_upper).abs() < 1e-12).any()
    assert ddp_.converged.all() and qp.converged.all()
    torch.testing.assert_close(qp.cost, ddp_.cost, rtol=1e-7, atol=0)
    assert (qp.U <= p.u_upper).all() and (qp.U >= p.u_lower).all()


def test_float32_p2_stays_at_the_float64_optimum_and_converges_where_float64_does():
    """The starts where float32 once wandered off near the optimum (steps judged below rounding may raise the cost
    by the rounding band, which was thousands of float32 eps): every float32 solve ends within 5e-5 of the float64
    cost or below it (row 31: both still iterating at the budget, float32 ahead), and converges wherever float64
    does."""
    rows = [1, 8, 10, 16, 17, 19, 23, 24, 29, 31]
    s64 = trajopt.ilqr(canonical.pendulum(32).select(rows), grad=None)
    s32 = trajopt.ilqr(canonical.pendulum(32, dtype=torch.float32).select(rows), grad=None)
    assert (s32.cost.double() <= s64.cost * (1 + 5e-5)).all()
    torch.testing.assert_close(s32.cost.double()[:-1], s64.cost[:-1], rtol=5e-5, atol=0)
    assert (s32.converged | ~s64.converged).all() and s64.converged.any()
    # the same status, but where float64 runs out of iterations and float32 (its test scaled to its eps) does not
    assert ((s32.status == s64.status) | (s64.status == trajopt.Status.MAX_ITER)).all()
