"""Bad input to the core entry points (costs, Problem, projected_gradient, constrained_ilqr, collocation_defects)
raises an error naming the argument; a model with no finite derivative at the fixed x0 does not sink iLQR."""
import math

import numpy as np
import pytest
import torch

import dynamics
import trajopt
from trajopt import Cost, QuadraticCost, SlewRateCost, Status

D = dict(dtype=torch.float64)
T = 6


def pend():
    return dynamics.Pendulum().discretize().to(torch.float64)


def qcost(**kw):
    return QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D)), 0.02 * torch.eye(1, **D),
                                      Q_final=10 * torch.eye(2, **D), **kw)


def x0s():
    return torch.tensor([[0.15, 0.0], [-0.1, 0.3], [0.18, -0.2]], **D)


def problem(**kw):
    kw.setdefault("horizon", T)
    return trajopt.Problem(kw.pop("model", pend()), kw.pop("cost", qcost()), kw.pop("x0", x0s()), **kw)


XU = (torch.zeros(3, T + 1, 2, **D), torch.zeros(3, T, 1, **D))


# ------------------------------------------------------------------------------------------------ costs (B)
class StageOnly(Cost):
    """A cost on the base class's forward and quadratize (no declared dimensions)."""

    def stage(self, x, u, t=None):
        return (x ** 2).sum(-1) + (u ** 2).sum(-1)


BAD_TRAJECTORIES = [
    ("X (3, 7, 3): n=3", (torch.zeros(3, T + 1, 3, **D), XU[1]), ValueError, r"X has shape \(3, 7, 3\): n=3"),
    ("U (3, 6, 2): m=2", (XU[0], torch.zeros(3, T, 2, **D)), ValueError, r"U has shape \(3, 6, 2\): m=2"),
    ("U T=5", (XU[0], torch.zeros(3, 5, 1, **D)), ValueError, r"U has shape \(3, 5, 1\) but X has \(3, 7, 2\)"),
    ("U batch 2", (XU[0], torch.zeros(2, T, 1, **D)), ValueError, r"U has shape \(2, 6, 1\) but X"),
    ("X list", (XU[0].tolist(), XU[1]), TypeError, "X must be a torch.Tensor, got list"),
    ("U int", (XU[0], XU[1].long()), TypeError, "U must be a float tensor"),
    ("X float32", (XU[0].float(), XU[1]), TypeError, "X has dtype torch.float32 but the cost's tensors"),
    ("U (6,)", (XU[0], torch.zeros(T, **D)), ValueError, r"U has shape \(6,\); expected \(B, T, m\)"),
]


@pytest.mark.parametrize("method", ["forward", "quadratize"])
@pytest.mark.parametrize("label, args, error, message", BAD_TRAJECTORIES, ids=[c[0] for c in BAD_TRAJECTORIES])
def test_quadratic_cost_names_a_bad_trajectory(method, label, args, error, message):
    cost = qcost()
    call = cost if method == "forward" else cost.quadratize
    with pytest.raises(error, match=f"QuadraticCost.{method}: {message}"):
        call(*args)


@pytest.mark.parametrize("method", ["forward", "quadratize"])
def test_base_cost_checks_its_trajectory(method):
    cost = StageOnly()
    call = cost if method == "forward" else cost.quadratize
    X, U = XU
    with pytest.raises(TypeError, match=f"StageOnly.{method}: X must be a torch.Tensor"):
        call(X.tolist(), U)
    with pytest.raises(TypeError, match="U has dtype torch.float32 but X has torch.float64"):
        call(X, U.float())
    with pytest.raises(ValueError, match=r"U has shape \(3, 5, 1\) but X has \(3, 7, 2\)"):
        call(X, U[:, :5])
    assert torch.equal(cost(X, U), torch.zeros(3, **D))        # valid input still works


def test_base_cost_of_an_unbatched_trajectory_is_a_scalar():
    g = torch.Generator().manual_seed(0)
    X, U = torch.randn(T + 1, 2, generator=g, **D), torch.randn(T, 1, generator=g, **D)
    total = StageOnly()(X, U)
    assert total.shape == () and float(total) == pytest.approx(float((X[:-1] ** 2).sum() + (U ** 2).sum()), rel=1e-14)
    with pytest.raises(ValueError, match=r"StageOnly\.forward: X has shape \(1, 1, 7, 2\)"):
        StageOnly()(X[None, None], U[None, None])


def test_cost_declared_horizon_and_batch_are_checked():
    tv = QuadraticCost(torch.eye(3, **D).expand(4, 3, 3))
    with pytest.raises(ValueError, match=r"U has shape \(3, 6, 1\); the cost is time-varying with T=4"):
        tv(*XU)
    batched = QuadraticCost(torch.eye(3, **D).expand(2, 3, 3), batched=True)
    with pytest.raises(ValueError, match=r"X has shape \(3, 7, 2\); this batched cost holds B=2"):
        batched.quadratize(*XU)
    with pytest.raises(TypeError, match="SlewRateCost.forward: U must be a torch.Tensor"):
        SlewRateCost(qcost(), torch.eye(1, **D))(XU[0], [0.0])


def test_cost_does_not_scan_values():
    """Documented: no pass over the values; NaN in gives NaN out (the solvers flag such problems)."""
    X = XU[0].clone()
    X[1] = float("nan")
    J = qcost()(X, XU[1])
    assert torch.isnan(J[1]) and torch.isfinite(J[[0, 2]]).all()


def test_cost_flags_are_bools():
    with pytest.raises(TypeError, match="QuadraticCost: learnable must be a bool"):
        QuadraticCost(torch.eye(3, **D), learnable="yes")
    with pytest.raises(TypeError, match="QuadraticCost: batched must be a bool"):
        QuadraticCost(torch.eye(3, **D), batched="no")
    with pytest.raises(TypeError, match="from_weights: learnable must be a bool"):
        qcost(learnable=1)
    with pytest.raises(TypeError, match="tracking: learnable must be a bool"):
        QuadraticCost.tracking(torch.eye(2, **D), 1.0, torch.zeros(T + 1, 2, **D), learnable="no")


def test_slew_rate_weight_must_be_positive_semidefinite():
    with pytest.raises(ValueError, match="SlewRateCost: S must be positive semidefinite"):
        SlewRateCost(qcost(), -torch.eye(1, **D))
    with pytest.raises(ValueError, match="S must be positive semidefinite"):
        SlewRateCost(qcost(), torch.tensor([1.0, -0.5], **D))
    # only the symmetric part counts: [[1, 2], [0, 1]] has symmetric part [[1, 1], [1, 1]] (eigenvalues 0, 2)
    cost2 = QuadraticCost(torch.eye(4, **D))
    SlewRateCost(cost2, torch.tensor([[1.0, 2.0], [0.0, 1.0]], **D))
    SlewRateCost(qcost(), torch.zeros(1, 1, **D))


# ------------------------------------------------------------------------------------------------ projected_gradient (C)
@pytest.mark.parametrize("label, args, error, message", [
    ("problem None", lambda p: (None, XU[1]), TypeError, "problem must be a trajopt.Problem, got NoneType"),
    ("U list", lambda p: (p, XU[1].tolist()), TypeError, "U must be a torch.Tensor"),
    ("U int", lambda p: (p, XU[1].long()), TypeError, "U must be float32 or float64"),
    ("U float32", lambda p: (p, XU[1].float()), TypeError, "U has dtype torch.float32 but the problem has"),
    ("U NaN", lambda p: (p, torch.full((3, T, 1), float("nan"), **D)), ValueError, "U contains NaN or Inf"),
    ("U T=5", lambda p: (p, torch.zeros(3, 5, 1, **D)), ValueError, r"U has shape \(3, 5, 1\); expected"),
    ("U m=2", lambda p: (p, torch.zeros(3, T, 2, **D)), ValueError, r"U has shape \(3, 6, 2\); expected"),
    ("U batch 2", lambda p: (p, torch.zeros(2, T, 1, **D)), ValueError, r"U has shape \(2, 6, 1\); expected \(B, T, m\) = \(3"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_projected_gradient_names_bad_input(label, args, error, message):
    with pytest.raises(error, match=f"projected_gradient: {message}"):
        trajopt.projected_gradient(*args(problem()))


def test_projected_gradient_values_and_non_finite_rows():
    p = problem(u_lower=-1.0, u_upper=1.0)
    shared = trajopt.projected_gradient(p, torch.zeros(T, 1, **D))
    assert shared.shape == (3, T, 1) and torch.isfinite(shared).all()
    torch.testing.assert_close(shared, trajopt.projected_gradient(p, torch.zeros(3, T, 1, **D)))

    class Undefined(dynamics.Dynamics):            # NaN beyond |theta| > 4
        def __init__(self):
            super().__init__(2, 1)

        def forward(self, x, u, t=None):
            return torch.where(x[..., :1].abs() > 4, float("nan"), x + 0.05 * torch.cat([x[..., 1:], u], -1))
    bad = problem(model=Undefined(), x0=torch.tensor([[0.1, 0.0], [5.0, 0.0], [0.2, 0.0]], **D))
    with pytest.raises(FloatingPointError, match=r"projected_gradient: the model gave NaN or Inf states for row\(s\) \[1\]"):
        trajopt.projected_gradient(bad, torch.zeros(3, T, 1, **D))


# ------------------------------------------------------------------------------------------------ Problem, options (I)
@pytest.mark.parametrize("rows, error", [([0.0, 1.0, 2.0], TypeError), ("abc", TypeError),
                                         (torch.tensor([True, False, True]), TypeError),
                                         (torch.zeros(3, 1, dtype=torch.long), ValueError)])
def test_problem_module_rows_must_be_an_integer_index(rows, error):
    cost = QuadraticCost(torch.eye(3, **D).expand(3, 3, 3), batched=True)
    with pytest.raises(error, match="Problem: module_rows must be an integer index"):
        problem(cost=cost, module_rows=rows)
    assert problem(cost=cost, module_rows=[2, 0, 1]).module_rows.tolist() == [2, 0, 1]
    assert problem(cost=cost, module_rows=np.array([2, 0, 1])).module_rows.dtype == torch.long


def test_problem_horizon_is_checked():
    for bad in (0, 1.5, "6", True):
        with pytest.raises(ValueError, match="Problem: horizon must be an int >= 1"):
            problem(horizon=bad)
    with pytest.raises(ValueError, match="give U_init .* or horizon, a positive int"):
        problem(horizon=None)


class _OutputCost(Cost):
    """A user cost whose stage or terminal returns the wrong dtype or shape."""

    def __init__(self, stage=lambda v: v, terminal=lambda v: v):
        super().__init__()
        self.wrap_stage, self.wrap_terminal = stage, terminal

    def stage(self, x, u, t=None):
        return self.wrap_stage((x ** 2).sum(-1) + (u ** 2).sum(-1))

    def terminal(self, x):
        return self.wrap_terminal((x ** 2).sum(-1))


BAD_COST_OUTPUTS = [
    ("stage float32", dict(stage=lambda v: v.float()), TypeError,
     r"_OutputCost\.stage returned torch\.float32 for torch\.float64 inputs"),
    ("stage int", dict(stage=lambda v: v.long()), TypeError,
     r"_OutputCost\.stage returned torch\.int64 for torch\.float64 inputs"),
    ("stage (B, 1)", dict(stage=lambda v: v[:, None]), ValueError,
     r"_OutputCost\.stage returned shape \(1, 1\) for 1 input rows; it must return one value per input row"),
    ("terminal (B, 1)", dict(terminal=lambda v: v[:, None]), ValueError,
     r"_OutputCost\.terminal returned shape \(1, 1\) for 1 input rows; it must return one value per input row"),
    ("terminal float32", dict(terminal=lambda v: v.float()), TypeError,
     r"_OutputCost\.terminal returned torch\.float32 for torch\.float64 inputs"),
    ("terminal list", dict(terminal=lambda v: v.tolist()), TypeError, r"_OutputCost\.terminal must return a tensor"),
    # wrong only on more rows than the one-row probe: named by the solvers' own evaluations
    ("stage (1,) on a batch", dict(stage=lambda v: v[:1]), ValueError,
     r"_OutputCost\.stage returned shape \(1,\) for \d+ input rows; it must return one value per input row"),
    ("stage float32 on a batch", dict(stage=lambda v: v.float() if len(v) > 1 else v), TypeError,
     r"_OutputCost\.stage returned torch\.float32 for torch\.float64 inputs"),
    ("terminal (B, 1) on a batch", dict(terminal=lambda v: v[:, None] if len(v) > 1 else v), ValueError,
     r"_OutputCost\.terminal returned shape \((\d+), 1\) for \1 input rows"),
]


@pytest.mark.parametrize("solver", [trajopt.ilqr, trajopt.mppi, trajopt.single_shooting])
@pytest.mark.parametrize("label, wrap, error, message", BAD_COST_OUTPUTS, ids=[c[0] for c in BAD_COST_OUTPUTS])
def test_a_cost_returning_the_wrong_dtype_or_shape_is_named(solver, label, wrap, error, message):
    with pytest.raises(error, match=message):
        solver(problem(cost=_OutputCost(**wrap)))
    assert torch.isfinite(solver(problem(cost=_OutputCost())).cost).all()     # the same cost, well formed, runs


def test_problem_takes_a_numpy_integer_horizon():
    assert problem(horizon=np.int64(T)).T == T


def test_constrained_ilqr_options_and_constraint_rows():
    p = problem(constraint=lambda x, u: u - 0.8)
    with pytest.raises(ValueError, match="penalty_growth must be a number in \\(1, inf\\), got inf"):
        trajopt.constrained_ilqr(p, penalty_growth=float("inf"))
    coupled = problem(constraint=lambda x, u: (u - 0.8).sum(0, keepdim=True).expand(u.shape[0], 1))
    with pytest.raises(ValueError, match="constraint must treat the rows of its input independently"):
        trajopt.constrained_ilqr(coupled, max_outer=2, max_iter=5)

    class Terminal(trajopt.Constraint):
        def terminal(self, x):
            return x[..., :1] - x[..., :1].mean(0, keepdim=True) - 1.0
    with pytest.raises(ValueError, match="constraint.terminal must treat the rows"):
        trajopt.constrained_ilqr(problem(constraint=Terminal()), max_outer=2, max_iter=5)


def test_collocation_defects_dt_is_a_positive_number():
    X, U = XU
    for dt in (True, 0.0, float("nan"), "0.05"):
        with pytest.raises(ValueError, match="collocation_defects: dt must be a positive"):
            trajopt.collocation_defects(dynamics.Pendulum(), X, U, dt)


def test_multistart_names_a_solver_that_takes_no_options():
    with pytest.raises(TypeError, match="solver"):
        trajopt.multistart(problem(), U_inits=torch.zeros(2, T, 1, **D), solver=print, max_iter=5)


# ------------------------------------------------------------------------------------------------ non-finite at x0 (E)
class Kinked(dynamics.Dynamics):
    """A pendulum step with ``1e-3 sqrt|theta - 3|`` in the velocity: finite everywhere, with a derivative in theta
    that is not finite at theta = 3 (and a derivative in u that is)."""

    def __init__(self):
        super().__init__(2, 1)

    def forward(self, x, u, t=None):
        th, om = x[..., :1], x[..., 1:]
        om1 = om + 0.05 * (9.81 * torch.sin(th) + u) + 1e-3 * torch.sqrt((th - 3.0).abs())
        return torch.cat([th + 0.05 * om1, om1], -1)


KINKED_X0 = torch.tensor([[0.15, 0.0], [3.0, 0.0], [0.18, -0.2]], **D)      # row 1 starts at the kink


def assert_no_nan(sol):
    for z in (sol.X, sol.U, sol.cost, sol.K, sol.k, sol.residual, *sol.extras.values()):
        if isinstance(z, torch.Tensor) and z.is_floating_point():
            assert not torch.isnan(z).any()
    assert torch.isfinite(sol.K).all() and torch.isfinite(sol.k).all()


@pytest.mark.parametrize("name", ["ilqr", "ddp", "ilqr_qp", "constrained_ilqr", "multistart"])
def test_non_finite_jacobian_at_the_fixed_x0_does_not_stop_ilqr(name):
    """x0 is fixed: df/dx at t = 0 never multiplies a state change, so a NaN there must not poison the step."""
    ref = trajopt.single_shooting(trajopt.Problem(Kinked(), qcost(), KINKED_X0, horizon=T), max_iter=100)
    assert bool(ref.converged.all())
    kw = dict(constraint=lambda x, u: u - 100.0) if name == "constrained_ilqr" else {}
    p = trajopt.Problem(Kinked(), qcost(), KINKED_X0, horizon=T, **kw)
    solve = {"ilqr": lambda: trajopt.ilqr(p, max_iter=30), "ddp": lambda: trajopt.ddp(p, max_iter=30),
             "ilqr_qp": lambda: trajopt.ilqr(p, max_iter=30, step="qp"),
             "constrained_ilqr": lambda: trajopt.constrained_ilqr(p, max_outer=3, max_iter=30),
             "multistart": lambda: trajopt.multistart(p, U_inits=torch.zeros(2, T, 1, **D), max_iter=30)}[name]
    sol = solve()
    assert sol.status.tolist() == [Status.CONVERGED] * 3
    torch.testing.assert_close(sol.cost, ref.cost, rtol=1e-8, atol=1e-8)
    assert_no_nan(sol)
    if "costates" in sol.extras:        # lam_0, the sensitivity to x0, is undefined at the kink: inf, documented
        lam0 = sol.extras["costates"][:, 0]
        assert torch.isinf(lam0[1]).all() and torch.isfinite(lam0[[0, 2]]).all()
        assert torch.isfinite(sol.extras["costates"][:, 1:]).all()
        assert (sol.K[1, 0] == 0).all()


def test_non_finite_jacobian_at_x0_keeps_implicit_gradients_of_the_others():
    Q = torch.diag(torch.tensor([2.0, 0.2], **D)).requires_grad_(True)

    def cost():
        return QuadraticCost.from_weights(Q, 0.02 * torch.eye(1, **D), Q_final=10 * torch.eye(2, **D))
    x0 = KINKED_X0.clone().requires_grad_(True)
    trajopt.ilqr(trajopt.Problem(Kinked(), cost(), x0, horizon=T), max_iter=30).cost.sum().backward()
    together = Q.grad.clone()
    assert torch.isfinite(together).all()
    assert torch.isnan(x0.grad[1]).all() and torch.isfinite(x0.grad[[0, 2]]).all()   # undefined at the kink only
    Q.grad = None
    for rows in ([0, 2], [1]):
        trajopt.ilqr(trajopt.Problem(Kinked(), cost(), KINKED_X0[rows], horizon=T), max_iter=30).cost.sum().backward()
    torch.testing.assert_close(together, Q.grad)


def test_non_finite_derivative_where_the_step_needs_it_is_flagged_per_row():
    """The sweep's model (semi-implicit Euler of a vector field with sqrt|theta - 3|): its integrator's chain rule
    also makes d f / d u NaN at theta = 3, which the step needs. That row ends NOT_FINITE (or, once the Jacobian is
    finite there, converges as single shooting does); the others are solved, and no NaN is returned."""

    class Field(dynamics.ContinuousDynamics):
        positions, default_dt, default_method = (0,), 0.05, "semi_implicit_euler"

        def __init__(self):
            super().__init__(2, 1)
            self.p = dynamics.Pendulum()

        def derivative(self, x, u, t=None):
            return self.p.derivative(x, u, t) + 1e-9 * torch.sqrt((x[..., :1] - 3.0).abs())
    x0 = torch.tensor([[0.15, 0.0], [3.0, 0.0], [0.18, -0.2]], **D)
    p = problem(model=Field().discretize().to(torch.float64), x0=x0, u_lower=-1.0, u_upper=1.0)
    ref = trajopt.single_shooting(p, max_iter=100)
    for sol in (trajopt.ilqr(p, max_iter=30), trajopt.ddp(p, max_iter=30)):
        assert_no_nan(sol)
        assert sol.status[[0, 2]].tolist() == [Status.CONVERGED] * 2
        torch.testing.assert_close(sol.cost[[0, 2]], ref.cost[[0, 2]], rtol=1e-8, atol=1e-8)
        if sol.status[1] == Status.NOT_FINITE:
            assert torch.isinf(sol.cost[1]) and torch.isinf(sol.residual[1])
        else:
            assert sol.status[1] == Status.CONVERGED
            torch.testing.assert_close(sol.cost[1], ref.cost[1], rtol=1e-6, atol=1e-6)


def test_rollout_takes_a_numpy_integer_t0():
    U = torch.zeros(3, 1, **D)
    torch.testing.assert_close(trajopt.rollout(pend(), x0s()[0], U, t0=np.int64(2)),
                               trajopt.rollout(pend(), x0s()[0], U, t0=2), rtol=0, atol=0)
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="rollout: t0 must be an int >= 0"):
            trajopt.rollout(pend(), x0s()[0], U, t0=bad)


@pytest.mark.parametrize("solver", [trajopt.mppi, trajopt.cem, trajopt.random_shooting])
def test_sampling_noise_std_given_as_a_sequence_is_converted(solver):
    def run(std):
        extra = dict(elites=4) if solver is trajopt.cem else {}
        return solver(problem(), samples=16, noise_std=std, generator=torch.Generator().manual_seed(0), **extra).U
    reference = run(torch.tensor([0.4], **D))
    for std in ([0.4], (0.4,), np.array([0.4]), np.float32(0.4)):
        torch.testing.assert_close(run(std), reference, rtol=1e-6, atol=0)     # np.float32: to its precision
    with pytest.raises(ValueError, match=r"noise_std must be a scalar or \(1,\)"):
        run([0.4, 0.4])


def test_numpy_numbers_are_taken_as_python_numbers():
    """NumPy integers and floats where Python's are expected: budgets, tolerances, segment lengths, bounds and
    constants (a NumPy bool met with a tensor would not combine, so each is converted where it is checked)."""
    p = problem()
    ref = trajopt.ilqr(p, max_iter=3)
    for budget in (np.int64(3), np.int32(3)):
        for solver in (trajopt.ilqr, trajopt.ddp):
            assert solver(p, max_iter=budget).iterations.tolist() == solver(p, max_iter=3).iterations.tolist()
    torch.testing.assert_close(trajopt.ilqr(p, max_iter=np.int64(3)).U, ref.U, rtol=0, atol=0)
    pc = problem(constraint=lambda x, u: u - 0.8)
    torch.testing.assert_close(
        trajopt.constrained_ilqr(pc, max_iter=np.int64(20), intermediate_grad_tol=np.float32(0.01)).U,
        trajopt.constrained_ilqr(pc, max_iter=20, intermediate_grad_tol=float(np.float32(0.01))).U, rtol=0, atol=0)
    guesses = torch.zeros(2, T, 1, **D)
    torch.testing.assert_close(trajopt.multistart(p, U_inits=guesses, screen_iter=np.int32(2)).U,
                               trajopt.multistart(p, U_inits=guesses, screen_iter=2).U, rtol=0, atol=0)
    assert trajopt.multiple_shooting(p, segment=np.int64(3)).U.shape == (3, T, 1)
    bounded = problem(u_lower=np.float32(-0.5), u_upper=np.int64(1))
    assert bounded.u_lower.dtype == torch.float64 and float(bounded.u_lower.max()) == -0.5
    assert float(bounded.u_upper.min()) == 1.0
    C = torch.eye(3, **D)
    assert float(QuadraticCost(C, const=np.float32(1.5)).stage(torch.zeros(1, 2, **D), torch.zeros(1, 1, **D))) == 1.5
    from dynamics.learned import MLPDynamics
    assert MLPDynamics(np.int64(2), np.int64(1), hidden=(np.int64(8),))(torch.zeros(3, 2), torch.zeros(3, 1)).shape \
        == (3, 2)


def test_lqr_cost_takes_no_linear_term():
    X, U = torch.ones(2, T + 1, 2, **D), torch.ones(2, T, 1, **D)
    C = torch.eye(3, **D).expand(T, 3, 3)
    torch.testing.assert_close(trajopt.lqr_cost(X, U, C, None), trajopt.lqr_cost(X, U, C, torch.zeros(T, 3, **D)))


def test_quadratic_cost_of_no_stages_and_a_horizon_too_long_to_allocate_are_named():
    with pytest.raises(ValueError, match=r"QuadraticCost: C has shape \(0, 3, 3\): a time-varying cost of T=0"):
        QuadraticCost(torch.zeros(0, 3, 3, **D))
    with pytest.raises(ValueError, match=r"Problem: horizon=10000000000000 is too long to allocate"):
        problem(horizon=10 ** 13)


def test_constrained_ilqr_flags_a_single_problem_whose_jacobians_are_not_finite():
    class NaNJacobians(dynamics.Dynamics):
        def __init__(self):
            super().__init__(2, 1)

        def forward(self, x, u, t=None):
            return torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]], -1)

        def jacobians(self, x, u, t=None):
            nan = torch.full((*x.shape[:-1], 2, 2), float("nan"), dtype=x.dtype)
            return nan, torch.zeros(*x.shape[:-1], 2, 1, dtype=x.dtype)

    sol = trajopt.constrained_ilqr(problem(model=NaNJacobians(), x0=x0s()[:1], constraint=lambda x, u: u - 5.0))
    assert sol.status.tolist() == [Status.NOT_FINITE] and sol.cost.tolist() == [math.inf]
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all()


def test_lqr_names_an_empty_batch():
    F = torch.zeros(T, 2, 3, **D)
    with pytest.raises(ValueError, match=r"lqr: the batch is empty \(B=0\)"):
        trajopt.lqr(F, None, torch.eye(3, **D).expand(T, 3, 3), None, torch.zeros(0, 2, **D))
