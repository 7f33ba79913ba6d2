import pytest
import torch

import dynamics
import trajopt
from benchmarks import ilqr as ilqr_suite
from benchmarks.collocation import order_errors
from trajopt.collocation import collocation, collocation_defects, multiple_shooting

D64 = dict(dtype=torch.float64)


def _pendulum_cost(learnable=False):
    """The tests' pendulum cost: state weights (2, 0.2), control weight 0.02 (``C (3, 3)``)."""
    return trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), 0.02 * torch.eye(1, **D64),
                                              learnable=learnable)


@pytest.mark.parametrize("method, order", [("hermite_simpson", 4), ("trapezoidal", 2)])
def test_collocation_error_falls_at_the_methods_order(method, order):
    """A damped oscillator with its force fixed by equal bounds (a held smooth signal): the knots solve the
    defects alone, and the final knot's error against the exact flow (expm) falls at the method's order as
    the intervals double (fitted slope over T = 10, 20, 40, 80)."""
    errors, slope = order_errors(method)
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


def _truncated(name, T):
    """P2 or P4 over its first ``T`` steps (the tests' budget; the full problems run in the benchmark)."""
    p = ilqr_suite.problem(name, 1)
    p["T"] = T
    if p["U_init"] is not None:
        p["U_init"] = p["U_init"][:, :T]
    return p


def test_scipy_collocation_of_p2_and_p4_meets_the_defects_and_bounds():
    for name, model in (("P2 pendulum", dynamics.Pendulum()), ("P4 bicycle", dynamics.KinematicBicycle())):
        p = _truncated(name, 40)
        model.requires_grad_(False)
        ref = ilqr_suite.solve(p, p["x0"], grad=None, U_init=p["U_init"])          # a good guess
        sol = collocation(model, p["cost"], p["x0"], ref.U, horizon=p["T"], u_lower=-p["u_max"], u_upper=p["u_max"],
                          solver="scipy")
        assert sol.converged.all()
        assert float(sol.history["defect"].max()) <= 1e-6
        assert bool((sol.U.abs() <= p["u_max"]).all())
        torch.testing.assert_close(collocation_defects(model, sol.X, sol.U), torch.zeros_like(sol.X[:, 1:]),
                                   atol=1e-6, rtol=0)
        # the continuous-time transcription of the same problem lands near iLQR's discrete optimum
        assert abs(float(sol.cost) / float(ref.cost) - 1) < 0.05


def test_multiple_shooting_reaches_ilqrs_optimum_on_p2_and_p4():
    for name, segments in (("P2 pendulum", (1, 10)), ("P4 bicycle", (10,))):   # SLSQP is dense: O(vars^3)
        p = _truncated(name, 40)
        ref = ilqr_suite.solve(p, p["x0"], grad=None, U_init=p["U_init"])
        start = (ref.U + 0.05 * p["u_max"]).clamp(-p["u_max"], p["u_max"])      # in the same basin
        for segment in segments:
            sol = multiple_shooting(p["dynamics"], p["cost"], p["x0"], start, horizon=p["T"], segment=segment,
                                    u_lower=-p["u_max"], u_upper=p["u_max"], solver="scipy")
            assert sol.converged.all() and float(sol.history["defect"].max()) <= 1e-8
            assert abs(float(sol.cost) / float(ref.cost) - 1) <= 1e-4, (name, segment)


def test_theseus_and_scipy_agree_without_bounds():
    pytest.importorskip("theseus")
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor([[0.8, 0.0], [-0.5, 1.0]], **D64)
    options = dict(horizon=20, method="hermite_simpson")
    exact = collocation(model, cost, x0, solver="scipy", **options)
    th = collocation(model, cost, x0, solver="theseus", grad=None, **options)
    assert th.converged.all() and float(th.history["defect"].max()) <= 1e-6
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)


def test_theseus_meets_scipy_on_p2_with_active_bounds():
    pytest.importorskip("theseus")
    p = _truncated("P2 pendulum", 40)
    model = dynamics.Pendulum().requires_grad_(False)
    ref = ilqr_suite.solve(p, p["x0"], grad=None)
    options = dict(horizon=p["T"], u_lower=-p["u_max"], u_upper=p["u_max"])
    exact = collocation(model, p["cost"], p["x0"], ref.U, solver="scipy", **options)
    th = collocation(model, p["cost"], p["x0"], ref.U, solver="theseus", grad=None, **options)
    assert (th.U.abs() == p["u_max"]).any(), "the test should have controls at the bound"
    assert th.converged.all() and float(th.history["defect"].max()) <= 1e-6
    assert bool((th.U.abs() <= p["u_max"]).all())
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)


def test_multiple_shooting_of_a_time_varying_model_matches_lqr(p1_lq):
    model, cost, x0, ref = p1_lq(2)                # one time-varying problem, two starts
    for segment in (1, 4):
        sol = multiple_shooting(model, cost, x0, horizon=12, segment=segment, solver="scipy")
        assert sol.converged.all()         # SLSQP stops at ftol 1e-10 on the cost: U to about 1e-5
        torch.testing.assert_close(sol.cost, cost(ref.X, ref.U), rtol=1e-9, atol=0)
        torch.testing.assert_close(sol.U, ref.U, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="segment=1"):
        multiple_shooting(model, cost, x0, horizon=12, segment=4, x_upper=10.0, solver="scipy")


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
    nominal = collocation(model, cost, x0, horizon=GRAD_T, solver="scipy", grad=None, **bounds)
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
            sol = collocation(model, cost, start, nominal.U, horizon=GRAD_T, solver="scipy", grad=None, **bounds)
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


def _implicit_derivatives(solver, bound, **options):
    """The implicit route's derivatives of :func:`_losses` in the same four quantities, the solution and ``x0``."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost(learnable=True).requires_grad_(False)
    model.m.requires_grad_(True)
    cost.C.requires_grad_(True)
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    bounds = dict(u_lower=-bound, u_upper=bound) if bound else {}
    sol = collocation(model, cost, x0, horizon=GRAD_T, solver=solver, **bounds, **options)
    assert bool(sol.converged)
    rows = []
    for loss in _losses(cost, sol.X, sol.U):
        gx, gm, gC = torch.autograd.grad(loss, (x0, model.m, cost.C), retain_graph=True)
        rows.append(torch.cat([gx, gm.view(1), gC[2:, 2:].reshape(1)]))
    return torch.stack(rows), sol, x0


# tight solves: the gradient is exact at the point returned, so its error is the solution's (theseus's defects
# stop at constraint_tol 1e-8; with bounds it does not reach grad_tol 1e-10 and keeps its default)
TOLERANCES = {"scipy": dict(options={"ftol": 1e-15}), "theseus": dict(grad_tol=1e-10)}


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_in_x0_matches_finite_differences(solver, unbounded_derivatives):
    """d cost / d x0 and d (weighted sum of U) / d x0 of the unbounded pendulum: the implicit gradient of each
    back end's solution against central differences of the exact optimum."""
    if solver == "theseus":
        pytest.importorskip("theseus")
    fd, _ = unbounded_derivatives
    grads, _, _ = _implicit_derivatives(solver, None, **TOLERANCES[solver])
    torch.testing.assert_close(grads[:, :2], fd[:, :2], rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_in_model_and_cost_parameters_matches_finite_differences(solver, unbounded_derivatives):
    """The same two losses differentiated in the pendulum's mass (a parameter of the model) and in the cost's
    control weight ``C[2, 2]``."""
    if solver == "theseus":
        pytest.importorskip("theseus")
    fd, _ = unbounded_derivatives
    grads, _, _ = _implicit_derivatives(solver, None, **TOLERANCES[solver])
    torch.testing.assert_close(grads[:, 2:], fd[:, 2:], rtol=1e-6, atol=0)


@pytest.mark.parametrize("solver", ["theseus", "scipy"])
def test_implicit_gradient_holds_controls_at_active_bounds(solver, bounded_derivatives):
    """With ``|u| <= 4`` some controls sit at the bound: they are held (zero gradient) and the free ones follow
    the constrained optimum, against central differences with the same controls held."""
    if solver == "theseus":
        pytest.importorskip("theseus")
    fd, held = bounded_derivatives
    assert 0 < int(held.sum()) < held.numel(), "the test needs both held and free controls"
    grads, sol, x0 = _implicit_derivatives(solver, 4.0, **({} if solver == "theseus" else TOLERANCES[solver]))
    assert torch.equal(sol.U.abs() >= 4.0 - 1e-8, held)
    torch.testing.assert_close(grads, fd, rtol=1e-6, atol=0)
    held_sum, free_sum = sol.U[held].sum(), sol.U[~held].sum()
    assert torch.equal(torch.autograd.grad(held_sum, x0, retain_graph=True)[0], torch.zeros(2, **D64))
    assert bool((torch.autograd.grad(free_sum, x0)[0] != 0).all())


def test_multiple_shootings_implicit_gradient_is_ilqrs():
    """Multiple shooting (every state a knot, and segments of 5) of the discrete pendulum with some controls at
    their bounds: its implicit gradient in x0 is iLQR's (the same problem, the same optimum)."""
    step = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = _pendulum_cost()
    x0 = torch.tensor([[0.8, 0.0], [-0.5, 1.0]], **D64, requires_grad=True)
    bounds = dict(horizon=20, u_lower=-4.0, u_upper=4.0)
    ref = trajopt.ilqr(step, cost, x0, max_iter=500, grad_tol=1e-10, **bounds)
    assert ref.converged.all() and (ref.U.abs() == 4.0).any() and (ref.U.abs() < 4.0).any()
    weights = torch.linspace(1.0, 2.0, 20, **D64).view(20, 1)

    def gradients(sol):
        return torch.stack([torch.autograd.grad(loss, x0, retain_graph=True)[0]
                            for loss in (sol.cost.sum(), (weights * sol.U).sum())])
    expected = gradients(ref)
    for segment in (1, 5):
        sol = multiple_shooting(step, cost, x0, segment=segment, solver="scipy", options={"ftol": 1e-15}, **bounds)
        assert sol.converged.all()
        torch.testing.assert_close(gradients(sol), expected, rtol=1e-8, atol=0)


def test_implicit_gradient_routes_and_their_limits():
    """grad=None is detached; grad='unroll' needs theseus; a problem that did not converge gets no gradient
    through the solve; a Hessian of the Lagrangian that is singular on the constraints' null space raises."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    sol = collocation(model, cost, x0, horizon=5, solver="scipy", grad=None)
    assert not (sol.X.requires_grad or sol.U.requires_grad or sol.cost.requires_grad)
    with pytest.raises(ValueError, match="unroll"):
        collocation(model, cost, x0, horizon=5, solver="scipy", grad="unroll")
    sol = collocation(model, cost, x0, horizon=5, solver="scipy", options={"maxiter": 1})
    assert not bool(sol.converged)
    assert torch.equal(torch.autograd.grad(sol.U.sum(), x0)[0], torch.zeros(2, **D64))
    # a zero cost: every feasible point is optimal, so the KKT matrix is singular
    line = dynamics.LinearDynamics(torch.eye(2, **D64), torch.ones(2, 1, **D64))
    zero = trajopt.QuadraticCost.from_weights(torch.zeros(2, 2, **D64), torch.zeros(1, 1, **D64))
    sol = multiple_shooting(line, zero, x0, horizon=3, solver="scipy")
    assert bool(sol.converged)
    with pytest.raises(ValueError, match="not positive definite"):
        torch.autograd.grad(sol.U.sum(), x0)


def test_implicit_gradient_through_a_chain_of_solves():
    """The start of a second solve comes from a first one that depends on the same model parameter (as in a
    closed loop): the gradient in the mass is the chain rule's, each path counted once."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    model.m.requires_grad_(True)
    options = dict(horizon=8, solver="scipy", options={"ftol": 1e-15})
    x1 = collocation(model, cost, torch.tensor(GRAD_X0, **D64), **options).X[2]
    (total,) = torch.autograd.grad(collocation(model, cost, x1, **options).cost, model.m)
    # by hand: d cost / d m with the start held, plus d cost / d start . d start / d m (the same solve again)
    start = x1.detach().requires_grad_(True)
    direct, through = torch.autograd.grad(collocation(model, cost, start, **options).cost, (model.m, start))
    (chained,) = torch.autograd.grad(x1, model.m, through)
    torch.testing.assert_close(total, direct + chained, rtol=1e-10, atol=0)


def test_scipy_trust_constr_meets_slsqp():
    """scipy_method='trust-constr' (exact Hessian-vector products of the Lagrangian) reaches SLSQP's optimum and
    gives the same implicit gradient (unbounded: its barrier stops bounded controls short of their bounds)."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    solutions = [collocation(model, cost, x0, horizon=8, solver="scipy", scipy_method=method)
                 for method in ("SLSQP", "trust-constr")]
    assert all(bool(sol.converged) for sol in solutions)
    torch.testing.assert_close(solutions[1].cost, solutions[0].cost, rtol=1e-9, atol=0)
    grads = [torch.autograd.grad(sol.cost + sol.U.sum(), x0)[0] for sol in solutions]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_implicit_gradient_holds_knots_at_active_state_bounds():
    """State bounds ``-1 <= theta_dot <= 0.5`` that hold two knots: those are held too (the scipy route)."""
    model, cost = dynamics.Pendulum().requires_grad_(False), _pendulum_cost()
    T = 10
    lower = torch.tensor([-float("inf"), -1.0], **D64).expand(T + 1, 2)
    options = dict(horizon=T, solver="scipy", x_lower=lower, x_upper=torch.tensor([float("inf"), 0.5], **D64))
    x0 = torch.tensor(GRAD_X0, **D64, requires_grad=True)
    sol = collocation(model, cost, x0, options={"ftol": 1e-15}, **options)
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
            near = collocation(model, cost, start, sol.U.detach(), sol.X.detach(), grad=None, **options)
            held = torch.zeros(T, 1, dtype=torch.bool)
            values.append(_losses(cost, *_kkt_polished(model, cost, start, near.X, near.U, held, held_knots)))
        columns.append((values[0] - values[1]) / (2 * GRAD_EPS))
    torch.testing.assert_close(grads, torch.stack(columns, 1), rtol=1e-6, atol=0)
