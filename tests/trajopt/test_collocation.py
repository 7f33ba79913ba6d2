import math

import numpy as np
import pytest
import scipy.linalg
import torch

import dynamics
import trajopt
from tests.skips import THESEUS
from trajopt import Scipy, Theseus, collocation, collocation_defects, multiple_shooting, problems
from trajopt.problems import reference

D64 = dict(dtype=torch.float64)
CONVERGED, MAX_ITER, STALLED, NOT_FINITE = (int(s) for s in (trajopt.Status.CONVERGED, trajopt.Status.MAX_ITER,
                                                              trajopt.Status.STALLED, trajopt.Status.NOT_FINITE))


def _pendulum_cost(learnable=False):
    """The tests' pendulum cost: state weights (2, 0.2), control weight 0.02 (``C (3, 3)``)."""
    return trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), 0.02 * torch.eye(1, **D64),
                                              learnable=learnable)


def _problem(model, cost, x0, dt=None, **fields):
    """A problem of the continuous ``model`` discretized by RK4 (whose rollout of ``U_init`` is collocation's initial
    guess in these tests)."""
    return trajopt.Problem(model.discretize(dt, "rk4"), cost, x0, **fields)


# ------------------------------------------------------------------------------------------------ accuracy order
class Oscillator(dynamics.ContinuousDynamics):
    """A damped oscillator driven by a force: linear, so its exact flow is a matrix exponential."""

    A = np.array([[0.0, 1.0], [-4.0, -0.3]])
    B = np.array([[0.0], [1.0]])

    def __init__(self):
        super().__init__(2, 1)

    def derivative(self, x, u, t=None):
        return x @ torch.tensor(self.A.T, dtype=x.dtype) + u @ torch.tensor(self.B.T, dtype=x.dtype)


def _order_errors(method, steps=(10, 20, 40, 80), horizon=2.0, x0=(1.0, 0.0)):
    """Final-knot errors of ``method`` against the exact flow, and the fitted slope of log error on log steps."""
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64))
    M_of = lambda dt: scipy.linalg.expm(np.block([[Oscillator.A, Oscillator.B], [np.zeros((1, 3))]]) * dt)  # noqa: E731
    errors = []
    for T in steps:
        dt = horizon / T
        u = torch.sin(3.0 * torch.arange(T, **D64) * dt).view(1, T, 1)
        p = _problem(Oscillator(), cost, torch.tensor([x0], **D64), dt, U_init=u, u_lower=u, u_upper=u)
        sol = collocation(p, method=method, backend=Scipy())
        M, x = M_of(dt), np.array(x0, float)
        for ut in u.flatten().numpy():
            x = M[:2, :2] @ x + M[:2, 2] * ut
        errors.append(float(np.abs(sol.X[0, -1].numpy() - x).max()))
    return errors, float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("method, order", [("hermite_simpson", 4), ("trapezoidal", 2)])
def test_collocation_error_falls_at_the_methods_order(method, order):
    """A damped oscillator with its force fixed by equal bounds (a held smooth signal): the knots solve the
    defects alone, and the final knot's error against the exact flow (expm) falls at the method's order as
    the intervals double (fitted slope over T = 10, 20, 40, 80)."""
    errors, slope = _order_errors(method)
    assert order - 0.3 <= slope <= order + 0.4, (errors, slope)


def test_collocation_defects_match_their_formula():
    model = dynamics.Pendulum()
    X, U = torch.randn(3, 6, 2, **D64), torch.randn(3, 5, 1, **D64)
    f = lambda x, u: model.derivative(x, u)                     # noqa: E731
    left, right, u = X[:, :-1], X[:, 1:], U
    trap = left + 0.025 * (f(left, u) + f(right, u)) - right
    mid = 0.5 * (left + right) + 0.05 / 8 * (f(left, u) - f(right, u))
    hs = left + 0.05 / 6 * (f(left, u) + 4 * f(mid, u) + f(right, u)) - right
    torch.testing.assert_close(collocation_defects(model, X, U, 0.05, "trapezoidal"), trap)
    torch.testing.assert_close(collocation_defects(model, X, U, 0.05), hs)


# ------------------------------------------------------------------------------------------- P2 and P4, one API
def _truncated(name, T):
    """P2 or P4 (one start) over its first ``T`` steps (the tests' budget; the full problems run in the benchmark)."""
    if name == "P2 pendulum":
        return problems.pendulum(B=1, horizon=T)
    p = problems.bicycle(B=1)
    return p.replace(U_init=p.U_init[:, :T])


def test_scipy_collocation_of_p2_and_p4_meets_the_defects_and_bounds():
    for name in ("P2 pendulum", "P4 bicycle"):
        p = _truncated(name, 40)
        model, _ = p.continuous
        u_max = p.u_upper
        ref = trajopt.ilqr(p, grad=None)                                            # a good guess
        sol = collocation(p.replace(U_init=ref.U), backend=Scipy())
        assert sol.converged.all()
        assert float(sol.extras["defect"].max()) <= 1e-6
        assert bool((sol.U.abs() <= u_max).all())
        torch.testing.assert_close(collocation_defects(model, sol.X, sol.U), torch.zeros_like(sol.X[:, 1:]),
                                   atol=1e-6, rtol=0)
        # the continuous-time transcription of the same problem lands near iLQR's discrete optimum
        assert abs(float(sol.cost) / float(ref.cost) - 1) < 0.05


def test_multiple_shooting_reaches_ilqrs_optimum_on_p2_and_p4():
    for name, segments in (("P2 pendulum", (1, 10)), ("P4 bicycle", (10,))):   # SLSQP is dense: O(vars^3)
        p = _truncated(name, 40)
        ref = trajopt.ilqr(p, grad=None)
        start = torch.minimum(torch.maximum(ref.U + 0.05 * p.u_upper, p.u_lower), p.u_upper)   # in the same basin
        for segment in segments:
            sol = multiple_shooting(p.replace(U_init=start), segment=segment, backend=Scipy())
            assert sol.converged.all() and float(sol.extras["defect"].max()) <= 1e-8
            assert abs(float(sol.cost) / float(ref.cost) - 1) <= 1e-4, (name, segment)


def test_one_problem_runs_through_ilqr_multiple_shooting_and_collocation():
    """The P2 problem value (the pendulum discretized by its canonical integrator) is solved as it is by iLQR,
    multiple shooting (the same discrete problem: iLQR's optimum) and collocation (which reaches the continuous
    model and ``dt`` through ``problem.continuous``: the same problem up to the integrator)."""
    p = problems.pendulum(B=2, horizon=30)
    model, dt = p.continuous
    assert isinstance(model, dynamics.Pendulum) and dt == reference.PENDULUM["dt"]
    ref = trajopt.ilqr(p, grad=None)
    assert ref.converged.all()
    shooting = multiple_shooting(p.replace(U_init=ref.U), backend=Scipy())
    assert shooting.converged.all()
    torch.testing.assert_close(shooting.cost, ref.cost, rtol=1e-6, atol=0)
    transcribed = collocation(p.replace(U_init=ref.U), backend=Scipy())
    assert transcribed.converged.all()
    assert float((transcribed.cost / ref.cost - 1).abs().max()) < 0.05
    for sol in (shooting, transcribed):
        assert sol.X.shape == (2, 31, 2) and sol.U.shape == (2, 30, 1) and sol.iterations.shape == (2,)
        assert sol.cost_history.shape[0] == 2 and sol.residual.shape == (2,)
        torch.testing.assert_close(sol.cost_history[:, 0], p.cost(trajopt.rollout(p.dynamics, p.x0, ref.U), ref.U))
        assert {"defect", "violation", "multipliers", "scipy_status"} <= set(sol.extras)
        assert sol.extras["multipliers"].shape == (2, 30, 2) and bool(torch.isfinite(sol.extras["multipliers"]).all())
    # a discrete model has no collocation equation
    linear = trajopt.Problem(dynamics.LinearDynamics(torch.eye(2, **D64), torch.ones(2, 1, **D64)), _pendulum_cost(),
                             torch.zeros(2, **D64), horizon=5)
    with pytest.raises(TypeError, match="multiple_shooting"):
        collocation(linear)


def test_theseus_and_scipy_agree_without_bounds():
    pytest.importorskip("theseus", reason=THESEUS)
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    p = _problem(model, cost, torch.tensor([[0.8, 0.0], [-0.5, 1.0]], **D64), horizon=20)
    exact = collocation(p, method="hermite_simpson", backend=Scipy())
    th = collocation(p, method="hermite_simpson", backend=Theseus(), grad=None)
    assert th.converged.all() and float(th.extras["defect"].max()) <= 1e-6
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)
    assert set(th.extras) == {"defect", "violation", "multipliers", "outer_iterations"}
    assert bool((th.residual <= 1e-6).all()) and bool((th.iterations > 0).all())
    assert th.cost_history.shape == (2, int(th.extras["outer_iterations"].max()) + 1)


def test_theseus_meets_scipy_on_p2_with_active_bounds():
    pytest.importorskip("theseus", reason=THESEUS)
    p = _truncated("P2 pendulum", 40)
    ref = trajopt.ilqr(p, grad=None)
    start = _problem(p.continuous[0], p.cost, p.x0, U_init=ref.U, u_lower=p.u_lower, u_upper=p.u_upper)
    u_max = reference.PENDULUM["u_max"]
    exact = collocation(start, backend=Scipy())
    th = collocation(start, backend=Theseus(), grad=None)
    assert (th.U.abs() == u_max).any(), "the test should have controls at the bound"
    assert th.converged.all() and float(th.extras["defect"].max()) <= 1e-6
    assert bool((th.U.abs() <= u_max).all())
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)


def test_theseus_takes_a_terminal_cost():
    """A terminal weight (``Q_final``) enters theseus's least squares as its own residual (it used to fail)."""
    pytest.importorskip("theseus", reason=THESEUS)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64),
                                              Q_final=5 * torch.eye(2, **D64))
    p = _problem(dynamics.Pendulum().requires_grad_(False), cost, torch.tensor([[0.5, 0.0], [-0.3, 0.4]], **D64),
                 horizon=10)
    exact = collocation(p, backend=Scipy())
    th = collocation(p, grad=None)
    assert th.converged.all() and exact.converged.all()
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)


def _p1_linear_quadratic(B, T=12, n=4, m=2):
    """The first problem of P1 as a time-varying ``LinearDynamics`` and ``QuadraticCost`` with ``B`` starts,
    and its LQR solution: ``(model, cost, x0 (B, n), lqr solution)``."""
    t = problems.random_lqr(B=B, T=T, n=n, m=m)
    F, f, C, c = (t[k][0] for k in ("F", "f", "C", "c"))
    model = dynamics.LinearDynamics(F[..., :n], F[..., n:], f)
    ref = trajopt.lqr(*(z.expand(B, *z.shape) for z in (F, f, C, c)), t["x0"])
    return model, trajopt.QuadraticCost(C, c), t["x0"], ref


def test_multiple_shooting_of_a_time_varying_model_matches_lqr():
    model, cost, x0, ref = _p1_linear_quadratic(2)           # one time-varying problem, two starts
    p = trajopt.Problem(model, cost, x0, horizon=12)
    for segment in (1, 4):
        sol = multiple_shooting(p, segment=segment, backend=Scipy())
        assert sol.converged.all()         # SLSQP stops at ftol 1e-10 on the cost: U to about 1e-5
        torch.testing.assert_close(sol.cost, cost(ref.X, ref.U), rtol=1e-9, atol=0)
        torch.testing.assert_close(sol.U, ref.U, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="segment=1"):
        multiple_shooting(p.replace(x_upper=10.0), segment=4, backend=Scipy())


def test_per_problem_costs_solve_each_problem():
    """A per-problem cost (``QuadraticCost(..., batched=True)``: each problem its own goal) gives each problem the
    solution it gets alone, by both back ends and both transcriptions, and from a selection of the batch."""
    pytest.importorskip("theseus", reason=THESEUS)
    Q, R = torch.diag(torch.tensor([2.0, 0.2], **D64)), 0.02 * torch.eye(1, **D64)
    goals = torch.tensor([[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0]], **D64)
    C = torch.block_diag(Q, R).expand(3, 3, 3)
    c = torch.cat([-(goals @ Q), torch.zeros(3, 1, **D64)], -1)
    x0 = torch.tensor([[0.8, 0.0], [-0.5, 1.0], [0.3, 0.2]], **D64)
    step = dynamics.Pendulum().requires_grad_(False).discretize(0.05, "rk4")
    p = trajopt.Problem(step, trajopt.QuadraticCost(C, c, batched=True), x0, horizon=8, u_lower=-2.0, u_upper=2.0)
    for solve in (collocation, multiple_shooting):
        for backend, tol in ((Scipy(), 0.0), (Theseus(), 1e-5)):
            sol = solve(p, backend=backend, grad=None)
            assert sol.converged.all()
            for b in range(3):
                alone = trajopt.Problem(step, trajopt.QuadraticCost(C[b], c[b]), x0[b], horizon=8, u_lower=-2.0,
                                        u_upper=2.0)
                torch.testing.assert_close(solve(alone, backend=backend, grad=None).U, sol.U[b], atol=tol, rtol=0)
            torch.testing.assert_close(solve(p.select([2, 0]), backend=backend, grad=None).U, sol.U[[2, 0]],
                                       atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------- options and status
def test_back_ends_take_only_their_own_options():
    with pytest.raises(TypeError, match="optimizer"):
        Scipy(optimizer="gauss_newton")
    with pytest.raises(TypeError, match="method"):
        Theseus(method="SLSQP")
    with pytest.raises(TypeError, match="max_outer"):
        Scipy(max_outer=3)
    with pytest.raises(ValueError, match="method"):
        Scipy("BFGS")
    with pytest.raises(ValueError, match="optimizer"):
        Theseus("adam")
    with pytest.raises(ValueError, match="penalty_growth"):
        Theseus(penalty_growth=1.0)
    with pytest.raises(ValueError, match="penalty_max"):
        Theseus(penalty_init=1e5, penalty_max=1e4)
    with pytest.raises(ValueError, match="max_outer"):
        Theseus(max_outer=0)
    with pytest.raises(TypeError, match="options"):
        Scipy(options=[("ftol", 1e-9)])
    p = _problem(dynamics.Pendulum().requires_grad_(False), _pendulum_cost(), torch.tensor([0.8, 0.0], **D64),
                 horizon=5)
    with pytest.raises(TypeError, match="backend"):
        collocation(p, backend="scipy")
    with pytest.raises(ValueError, match="grad_tol"):
        collocation(p, backend=Scipy(), grad_tol=1e-8)      # scipy stops by its own tests
    with pytest.raises(ValueError, match="method"):
        collocation(p, method="euler")
    with pytest.raises(ValueError, match="max_iter"):
        multiple_shooting(p, max_iter=0)
    with pytest.raises(ValueError, match="constraint_tol"):
        collocation(p, constraint_tol=-1.0)
    with pytest.raises(ValueError, match="segment"):
        multiple_shooting(p, segment=2)
    with pytest.raises(ValueError, match="constraint"):
        multiple_shooting(p.replace(constraint=lambda x, u: u - 1.0), backend=Scipy())
    with pytest.raises(TypeError, match="Problem"):
        collocation(dynamics.Pendulum(), _pendulum_cost(), torch.zeros(2, **D64))


def test_trust_constr_converges_by_the_given_constraint_tol():
    """trust-constr stopped by a loose ``gtol`` leaves defects of about 3e-5: that is converged for
    ``constraint_tol=1e-3`` (it used to be judged against 1e-8 whatever the option) and not for 1e-8."""
    p = _problem(dynamics.Pendulum().requires_grad_(False), _pendulum_cost(), torch.tensor([0.8, 0.0], **D64),
                 horizon=8)
    backend = Scipy("trust-constr", options={"gtol": 1e-2})
    loose = collocation(p, backend=backend, grad=None, constraint_tol=1e-3)
    tight = collocation(p, backend=backend, grad=None, constraint_tol=1e-8)
    assert 1e-8 < float(loose.extras["defect"]) < 1e-3
    assert int(loose.status) == CONVERGED and int(tight.status) == STALLED
    assert int(loose.extras["scipy_status"]) == 1 and torch.equal(loose.U, tight.U)


class Fragile(dynamics.ContinuousDynamics):
    """A damped double integrator whose vector field is NaN where ``x[0] > 5`` (or ``|u| > 1.5`` with ``wall``)."""

    def __init__(self, wall=False):
        super().__init__(2, 1)
        self.wall = wall

    def derivative(self, x, u, t=None):
        bad = x[..., 0] > 5
        if self.wall:
            bad = bad | (u[..., 0].abs() > 1.5)
        return torch.stack([x[..., 1], u[..., 0] - 0.1 * x[..., 1] + torch.where(bad, float("nan"), 0.0)], -1)


@pytest.mark.parametrize("backend", [Scipy(), Theseus()], ids=["scipy", "theseus"])
@pytest.mark.parametrize("solve", [collocation, multiple_shooting])
def test_a_row_that_is_not_finite_at_its_start_does_not_sink_the_batch(solve, backend):
    """The second problem starts where the model is NaN: it is ``NOT_FINITE`` (``x0`` held, its ``U_init``,
    ``cost = inf``, no gradient through it) and the others are solved as they are alone."""
    if isinstance(backend, Theseus):
        pytest.importorskip("theseus", reason=THESEUS)
    x0 = torch.tensor([[0.3, 0.0], [6.0, 0.0], [-0.5, 0.2]], **D64, requires_grad=True)
    dyn = Fragile().discretize(0.1, "rk4")
    p = trajopt.Problem(dyn, _pendulum_cost(), x0, horizon=10, u_lower=-2.0, u_upper=2.0,
                        x_upper=torch.tensor([10.0, math.inf], **D64))
    sol = solve(p, backend=backend)
    assert sol.status.tolist() == [CONVERGED, NOT_FINITE, CONVERGED]
    assert float(sol.cost[1].detach()) == math.inf and float(sol.residual[1]) == math.inf
    torch.testing.assert_close(sol.X[1].detach(), x0[1].detach().expand(11, 2))
    assert torch.equal(sol.U[1], torch.zeros(10, 1, **D64)) and int(sol.iterations[1]) == 0
    for z in (sol.X, sol.U, sol.cost_history, sol.residual, *sol.extras.values()):
        assert not bool(torch.isnan(z).any())
    alone = solve(p.select([0, 2]), backend=backend, grad=None)
    torch.testing.assert_close(sol.U[[0, 2]].detach(), alone.U, atol=0 if isinstance(backend, Scipy) else 1e-6,
                               rtol=0)
    (g,) = torch.autograd.grad(sol.cost[[0, 2]].sum() + sol.U.sum(), x0)
    assert bool(torch.isfinite(g).all()) and torch.equal(g[1], torch.zeros(2, **D64))


def test_a_step_into_a_non_finite_region_keeps_the_last_finite_iterate():
    """Controls beyond 1.5 make the model NaN. Gauss-Newton (which accepts every step) steps there: those problems
    keep their last finite iterate, ``NOT_FINITE``. Levenberg-Marquardt sees such residuals as ``1e100`` and
    rejects the steps, and scipy's line searches back off them: neither returns a NaN."""
    pytest.importorskip("theseus", reason=THESEUS)
    x0 = torch.tensor([[0.3, 0.0], [-4.0, 0.0]], **D64)
    p = trajopt.Problem(Fragile(wall=True).discretize(0.1, "rk4"), _pendulum_cost(), x0, horizon=20)
    gn = collocation(p, backend=Theseus("gauss_newton"), grad=None)
    assert bool((gn.status == NOT_FINITE).all()) and bool(torch.isfinite(gn.X).all())
    for backend in (Theseus(max_outer=3), Scipy("trust-constr")):
        sol = collocation(p, backend=backend, grad=None)
        assert bool(torch.isfinite(sol.X).all() & torch.isfinite(sol.U).all() & torch.isfinite(sol.cost).all())
        assert bool((sol.U.abs() <= 1.5).all())


# ---------------------------------------------------------------------------------------- implicit gradients
# References: central differences of the exact optimum. Each perturbed problem is solved by scipy and then
# polished by Newton's method on its KKT conditions (dense, autograd) to rounding, since neither back end
# stops close enough to the optimum for a difference quotient of its controls (SLSQP stops on the cost's
# decrease, the controls to about 1e-7; the augmented Lagrangian on defects of 1e-8).
GRAD_T, GRAD_X0, GRAD_EPS = 12, (0.8, 0.0), 1e-5


def _kkt_polished(model, cost, x0, X, U, held, held_knots=None):
    """The collocation optimum near ``X (T+1, n)``, ``U (T, m)`` with the controls ``held (T, m)`` (and the knot
    entries ``held_knots (T, n)`` of ``X[1:]``) fixed, to rounding: Newton's method on
    ``(grad_w (cost + lam' defects), defects) = 0`` over the free variables ``w``."""
    T, m = U.shape
    n = X.shape[-1]
    held_knots = torch.zeros(T, n, dtype=torch.bool) if held_knots is None else held_knots
    free = ~torch.cat([held_knots.flatten(), held.flatten()])
    fixed = torch.cat([X.detach()[1:].flatten(), U.detach().flatten()])
    N = int(free.sum())

    def unpack(w):
        z = fixed.masked_scatter(free, w)
        return torch.cat([x0.view(1, n), z[:T * n].view(T, n)]), z[T * n:].view(T, m)

    def kkt(z):
        with torch.enable_grad():
            w = z[:N] if z.requires_grad else z[:N].requires_grad_(True)
            Xw, Uw = unpack(w)
            h = collocation_defects(model, Xw, Uw).flatten()
            (g,) = torch.autograd.grad(cost(Xw[None], Uw[None])[0] + (z[N:] * h).sum(), w, create_graph=True)
        return torch.cat([g, h])

    z = torch.cat([fixed[free], X.new_zeros(T * n)])
    for _ in range(4):
        z = (z - torch.linalg.solve(torch.autograd.functional.jacobian(kkt, z, vectorize=True), kkt(z))).detach()
    assert float(kkt(z).detach().abs().max()) < 1e-12
    return unpack(z[:N])


def _losses(cost, X, U):
    """The two losses the tests differentiate: the optimal cost and a weighted sum of the controls."""
    weights = torch.linspace(1.0, 2.0, U.shape[-2], **D64).view(-1, 1)
    return torch.stack([cost(X.unsqueeze(0), U.unsqueeze(0))[0], (weights * U).sum()])


def _central_differences(bound):
    """``(2 losses, 4)``: their derivatives in ``x0[0]``, ``x0[1]``, the pendulum's mass and the cost's control
    weight ``C[2, 2]`` by central differences of the exact optimum; and the controls held at ``|u| = bound``."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost(learnable=True).requires_grad_(False)
    x0 = torch.tensor(GRAD_X0, **D64)
    bounds = dict(u_lower=-bound, u_upper=bound) if bound else {}
    nominal = collocation(_problem(model, cost, x0, horizon=GRAD_T, **bounds), backend=Scipy(), grad=None)
    held = nominal.U.abs() >= bound - 1e-8 if bound else torch.zeros_like(nominal.U, dtype=torch.bool)
    columns = []
    for which in range(4):
        values = []
        for step in (GRAD_EPS, -GRAD_EPS):
            start = x0.clone()
            with torch.no_grad():
                if which < 2:
                    start[which] += step
                else:
                    (model.m if which == 2 else cost.C[2:, 2:]).add_(step)
            sol = collocation(_problem(model, cost, start, U_init=nominal.U, **bounds), backend=Scipy(), grad=None)
            values.append(_losses(cost, *_kkt_polished(model, cost, start, sol.X, sol.U, held)))
            with torch.no_grad():
                if which >= 2:
                    (model.m if which == 2 else cost.C[2:, 2:]).sub_(step)
        columns.append((values[0] - values[1]) / (2 * GRAD_EPS))
    return torch.stack(columns, 1), held


@pytest.fixture(scope="module")
def unbounded_derivatives():
    return _central_differences(None)


@pytest.fixture(scope="module")
def bounded_derivatives():
    """The problem with ``|u| <= 4``, where some of the controls sit at the bound."""
    return _central_differences(4.0)


def _implicit_derivatives(bound, **options):
    """The implicit route's derivatives of :func:`_losses` in the same four quantities, the solution and ``x0``."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost(learnable=True).requires_grad_(False)
    model.m.requires_grad_(True)
    cost.C.requires_grad_(True)
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    bounds = dict(u_lower=-bound, u_upper=bound) if bound else {}
    sol = collocation(_problem(model, cost, x0, horizon=GRAD_T, **bounds), **options)
    assert bool(sol.converged)
    rows = []
    for loss in _losses(cost, sol.X, sol.U):
        gx, gm, gC = torch.autograd.grad(loss, (x0, model.m, cost.C), retain_graph=True)
        rows.append(torch.cat([gx, gm.view(1), gC[2:, 2:].reshape(1)]))
    return torch.stack(rows), sol, x0


# tight solves: the gradient is exact at the point returned, so its error is the solution's (theseus's defects
# stop at constraint_tol 1e-8; with bounds it does not reach grad_tol 1e-10 and keeps its default)
TOLERANCES = {"scipy": dict(backend=Scipy(options={"ftol": 1e-15})), "theseus": dict(backend=Theseus(), grad_tol=1e-10)}


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_in_x0_matches_finite_differences(solver, unbounded_derivatives):
    """d cost / d x0 and d (weighted sum of U) / d x0 of the unbounded pendulum: the implicit gradient of each
    back end's solution against central differences of the exact optimum."""
    if solver == "theseus":
        pytest.importorskip("theseus", reason=THESEUS)
    fd, _ = unbounded_derivatives
    grads, _, _ = _implicit_derivatives(None, **TOLERANCES[solver])
    torch.testing.assert_close(grads[:, :2], fd[:, :2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_in_model_and_cost_parameters_matches_finite_differences(solver, unbounded_derivatives):
    """The same two losses differentiated in the pendulum's mass (a parameter of the model) and in the cost's
    control weight ``C[2, 2]``."""
    if solver == "theseus":
        pytest.importorskip("theseus", reason=THESEUS)
    fd, _ = unbounded_derivatives
    grads, _, _ = _implicit_derivatives(None, **TOLERANCES[solver])
    torch.testing.assert_close(grads[:, 2:], fd[:, 2:], rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_holds_controls_at_active_bounds(solver, bounded_derivatives):
    """With ``|u| <= 4`` some controls sit at the bound: they are held (zero gradient) and the free ones follow
    the constrained optimum, against central differences with the same controls held."""
    if solver == "theseus":
        pytest.importorskip("theseus", reason=THESEUS)
    fd, held = bounded_derivatives
    assert 0 < int(held.sum()) < held.numel(), "the test needs both held and free controls"
    grads, sol, x0 = _implicit_derivatives(4.0, **(dict(backend=Theseus()) if solver == "theseus"
                                                   else TOLERANCES[solver]))
    assert torch.equal(sol.U.abs() >= 4.0 - 1e-8, held)
    torch.testing.assert_close(grads, fd, rtol=1e-6, atol=0)
    held_sum, free_sum = sol.U[held].sum(), sol.U[~held].sum()
    assert torch.equal(torch.autograd.grad(held_sum, x0, retain_graph=True)[0], torch.zeros(2, **D64))
    assert bool((torch.autograd.grad(free_sum, x0)[0] != 0).all())


def test_multiple_shootings_implicit_gradient_is_ilqrs():
    """Multiple shooting (every state a knot, and segments of 5) of the discrete pendulum with some controls at
    their bounds: its implicit gradient in x0 is iLQR's (the same problem, the same optimum)."""
    step = dynamics.Pendulum().discretize().requires_grad_(False)
    x0 = torch.tensor([[0.8, 0.0], [-0.5, 1.0]], **D64, requires_grad=True)
    p = trajopt.Problem(step, _pendulum_cost(), x0, horizon=20, u_lower=-4.0, u_upper=4.0)
    ref = trajopt.ilqr(p, max_iter=500, grad_tol=1e-10)
    assert ref.converged.all() and (ref.U.abs() == 4.0).any() and (ref.U.abs() < 4.0).any()
    weights = torch.linspace(1.0, 2.0, 20, **D64).view(20, 1)

    def gradients(sol):
        return torch.stack([torch.autograd.grad(loss, x0, retain_graph=True)[0]
                            for loss in (sol.cost.sum(), (weights * sol.U).sum())])
    expected = gradients(ref)
    for segment in (1, 5):
        sol = multiple_shooting(p, segment=segment, backend=Scipy(options={"ftol": 1e-15}))
        assert sol.converged.all()
        torch.testing.assert_close(gradients(sol), expected, rtol=1e-8, atol=0)


def test_implicit_gradient_routes_and_their_limits():
    """grad=None is detached; grad='unroll' needs theseus; a problem that did not converge gets no gradient
    through the solve; a Hessian of the Lagrangian that is singular on the constraints' null space raises."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    p = _problem(model, cost, x0, horizon=5)
    sol = collocation(p, backend=Scipy(), grad=None)
    assert not (sol.X.requires_grad or sol.U.requires_grad or sol.cost.requires_grad)
    with pytest.raises(ValueError, match="unroll"):
        collocation(p, backend=Scipy(), grad="unroll")
    sol = collocation(p, backend=Scipy(options={"maxiter": 1}))
    assert not bool(sol.converged) and int(sol.status) == MAX_ITER and int(sol.extras["scipy_status"]) == 9
    assert torch.equal(torch.autograd.grad(sol.U.sum(), x0)[0], torch.zeros(2, **D64))
    # a zero cost: every feasible point is optimal, so the KKT matrix is singular
    line = dynamics.LinearDynamics(torch.eye(2, **D64), torch.ones(2, 1, **D64))
    zero = trajopt.QuadraticCost.from_weights(torch.zeros(2, 2, **D64), torch.zeros(1, 1, **D64))
    sol = multiple_shooting(trajopt.Problem(line, zero, x0, horizon=3), backend=Scipy())
    assert bool(sol.converged)
    with pytest.raises(ValueError, match="not positive definite"):
        torch.autograd.grad(sol.U.sum(), x0)


def test_unrolled_gradient_of_theseus():
    """grad='unroll' differentiates theseus's iterations: at a converged solve it is close to the implicit gradient
    (the same solution; the unrolled one differentiates how the iterations got there)."""
    pytest.importorskip("theseus", reason=THESEUS)
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    p = _problem(model, cost, x0, horizon=5)
    grads = []
    for grad in ("unroll", "implicit"):
        sol = collocation(p, grad=grad)
        assert bool(sol.converged) and sol.U.requires_grad
        grads.append(torch.autograd.grad(sol.cost + sol.U.sum(), x0)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=0)


def test_implicit_gradient_through_a_chain_of_solves():
    """The start of a second solve comes from a first one that depends on the same model parameter (as in a
    closed loop): the gradient in the mass is the chain rule's, each path counted once."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    model.m.requires_grad_(True)
    backend = Scipy(options={"ftol": 1e-15})

    def solve(x0):
        return collocation(_problem(model, cost, x0, horizon=8), backend=backend)
    x1 = solve(torch.tensor(GRAD_X0, **D64)).X[2]
    (total,) = torch.autograd.grad(solve(x1).cost, model.m)
    # by hand: d cost / d m with the start held, plus d cost / d start . d start / d m (the same solve again)
    start = x1.detach().requires_grad_(True)
    direct, through = torch.autograd.grad(solve(start).cost, (model.m, start))
    (chained,) = torch.autograd.grad(x1, model.m, through)
    torch.testing.assert_close(total, direct + chained, rtol=1e-10, atol=0)


def test_scipy_trust_constr_meets_slsqp():
    """Scipy('trust-constr') (exact Hessian-vector products of the Lagrangian) reaches SLSQP's optimum and gives
    the same implicit gradient (unbounded: its barrier stops bounded controls short of their bounds)."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    p = _problem(model, cost, x0, horizon=8)
    solutions = [collocation(p, backend=Scipy(method)) for method in ("SLSQP", "trust-constr")]
    assert all(bool(sol.converged) for sol in solutions)
    torch.testing.assert_close(solutions[1].cost, solutions[0].cost, rtol=1e-9, atol=0)
    grads = [torch.autograd.grad(sol.cost + sol.U.sum(), x0)[0] for sol in solutions]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_implicit_gradient_holds_knots_at_active_state_bounds():
    """State bounds ``-1 <= theta_dot <= 0.5`` that hold two knots: those are held too (the scipy route)."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    T = 10
    lower = torch.tensor([-float("inf"), -1.0], **D64).expand(T + 1, 2)
    bounds = dict(x_lower=lower, x_upper=torch.tensor([float("inf"), 0.5], **D64))
    backend = Scipy(options={"ftol": 1e-15})
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    sol = collocation(_problem(model, cost, x0, horizon=T, **bounds), backend=backend)
    held_knots = torch.stack([torch.zeros(T, dtype=torch.bool), (sol.X[1:, 1] + 1).abs() < 1e-8], 1)
    assert bool(sol.converged) and int(held_knots.sum()) == 2
    grads = torch.stack([torch.autograd.grad(loss, x0, retain_graph=True)[0] for loss in _losses(cost, sol.X, sol.U)])
    assert torch.equal(torch.autograd.grad(sol.X[1:][held_knots].sum(), x0)[0], torch.zeros(2, **D64))
    columns = []
    for i in range(2):
        values = []
        for step in (GRAD_EPS, -GRAD_EPS):
            start = x0.detach().clone()
            start[i] += step
            near = collocation(_problem(model, cost, start, U_init=sol.U.detach(), X_init=sol.X.detach(), **bounds),
                               backend=backend, grad=None)
            held = torch.zeros(T, 1, dtype=torch.bool)
            values.append(_losses(cost, *_kkt_polished(model, cost, start, near.X, near.U, held, held_knots)))
        columns.append((values[0] - values[1]) / (2 * GRAD_EPS))
    torch.testing.assert_close(grads, torch.stack(columns, 1), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
class _NaNPendulum(dynamics.ContinuousDynamics):
    """The pendulum's derivative, NaN where ``|x| > 5``."""

    default_dt, default_method = 0.05, "rk4"

    def __init__(self):
        super().__init__(2, 1)
        self.base = dynamics.Pendulum()

    def derivative(self, x, u, t=None):
        y = self.base.derivative(x, u)
        return torch.where(x.abs().amax(-1, keepdim=True) > 5, torch.full_like(y, float("nan")), y)


@pytest.mark.parametrize("backend", [Scipy(), Theseus()], ids=["scipy", "theseus"])
@pytest.mark.parametrize("solve", [collocation, multiple_shooting], ids=["collocation", "multiple_shooting"])
def test_every_problem_non_finite_gives_all_not_finite(solve, backend):
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64))
    p = trajopt.Problem(_NaNPendulum().discretize(), cost, torch.tensor([[9.0, 0.0], [9.0, 0.0]], **D64),
                        horizon=5, u_lower=-2.0, u_upper=2.0)
    sol = solve(p, backend=backend)
    assert (sol.status == trajopt.Status.NOT_FINITE).all() and torch.isinf(sol.cost).all()
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all()


@pytest.mark.parametrize("make, match", [
    (lambda: Scipy(options={"maxiter": -1}), "Scipy: options\\['maxiter'\\] must be an int >= 1"),
    (lambda: Scipy(options={"bogus": 1}), "Scipy: options has 'bogus', which scipy's SLSQP does not take"),
    (lambda: Scipy("trust-constr", options={"ftol": 1e-9}), "Scipy: options has 'ftol'"),
    (lambda: Scipy(options={"ftol": -1.0}), "Scipy: options\\['ftol'\\] must be a positive"),
    (lambda: Theseus(options={"bogus": 1}), "Theseus: options has an unknown key 'bogus'"),
    (lambda: Theseus(options={"damping": -1.0}), "Theseus: options\\['damping'\\] must be a positive"),
    (lambda: Theseus(options={"step_size": 2.0}), "Theseus: options\\['step_size'\\] must be in \\(0, 1\\]"),
])
def test_backend_options_are_checked(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("grad_tol", [-1e-3, float("nan")])
@pytest.mark.parametrize("solve", [collocation, multiple_shooting], ids=["collocation", "multiple_shooting"])
def test_theseus_refuses_a_grad_tol_that_is_not_positive(solve, grad_tol):
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64))
    p = trajopt.Problem(dynamics.Pendulum().discretize(), cost, torch.zeros(1, 2, **D64), horizon=5)
    with pytest.raises(ValueError, match=f"{solve.__name__}: grad_tol must be a positive"):
        solve(p, backend=Theseus(), grad_tol=grad_tol)
