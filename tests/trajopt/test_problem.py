"""The Problem: validation once, per-problem tensors of models and costs, selection, and gradients reaching the
caller's own tensors."""
import math

import pytest
import torch

import dynamics
import trajopt

D64 = dict(dtype=torch.float64)
B, T, n, m = 3, 10, 3, 2


def per_problem_lq(seed=0, requires_grad=False):
    """Three linear-quadratic problems whose dynamics, weights and targets all differ (the caller's tensors)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(n, **D64) + 0.1 * torch.randn(B, n, n, generator=g, **D64)
    Bu = torch.randn(B, n, m, generator=g, **D64)
    L = torch.randn(B, n + m, n + m, generator=g, **D64)
    C = L @ L.mT / (n + m) + torch.eye(n + m, **D64)
    c = torch.randn(B, T, n + m, generator=g, **D64)           # time-varying tracking terms, per problem
    x0 = torch.randn(B, n, generator=g, **D64)
    if requires_grad:
        for z in (A, C, c):
            z.requires_grad_(True)
    return A, Bu, C, c, x0


def test_per_problem_models_and_costs_solve_each_problem_as_if_alone():
    A, Bu, C, c, x0 = per_problem_lq()
    model = dynamics.LinearDynamics(A, Bu, batched=True)
    cost = trajopt.QuadraticCost(C.unsqueeze(1).expand(B, T, n + m, n + m), c, batched=True)
    problem = trajopt.Problem(model, cost, x0, horizon=T, u_lower=-0.4, u_upper=0.4)
    assert problem.B == B and problem.batched
    sol = trajopt.ilqr(problem, grad=None, grad_tol=1e-10)
    assert sol.converged.all() and (sol.U.abs() <= 0.4).all() and (sol.U.abs() == 0.4).any()
    for b in range(B):
        alone = trajopt.ilqr(trajopt.Problem(dynamics.LinearDynamics(A[b], Bu[b]),
                                             trajopt.QuadraticCost(C[b].expand(T, n + m, n + m), c[b]), x0[b],
                                             horizon=T, u_lower=-0.4, u_upper=0.4), grad=None, grad_tol=1e-10)
        torch.testing.assert_close(sol.U[b], alone.U, rtol=0, atol=1e-9)
        torch.testing.assert_close(sol.cost[b], alone.cost, rtol=1e-12, atol=0)
    # a selection keeps each row's own tensors, in any order
    picked = trajopt.ilqr(problem.select([2, 0]), grad=None, grad_tol=1e-10)
    torch.testing.assert_close(picked.U, sol.U[[2, 0]], rtol=0, atol=1e-9)
    one = trajopt.ilqr(problem.select([2]).select([0]), grad=None, grad_tol=1e-10)
    torch.testing.assert_close(one.U[0], sol.U[2], rtol=0, atol=1e-9)


def test_the_callers_tensors_get_the_implicit_gradient():
    """mpc.pytorch's use: gradients with respect to the caller's own per-problem C and A (no detached copies)."""
    A, Bu, C, c, x0 = per_problem_lq(requires_grad=True)

    def solve(grad="implicit"):
        model = dynamics.LinearDynamics(A, Bu, batched=True)
        cost = trajopt.QuadraticCost(C.unsqueeze(1).expand(B, T, n + m, n + m), c, batched=True)
        return trajopt.ilqr(trajopt.Problem(model, cost, x0, horizon=T, u_lower=-0.4, u_upper=0.4), grad=grad,
                            grad_tol=1e-11)

    weights = torch.linspace(-1, 1, B * T * m, **D64).view(B, T, m)
    sol = solve()
    gA, gC, gc = torch.autograd.grad((sol.U * weights).sum(), [A, C, c])
    unrolled = solve("unroll")
    for a, b in zip(torch.autograd.grad((unrolled.U * weights).sum(), [A, C, c]), (gA, gC, gc)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    for tensor, grad, index in ((A, gA, (1, 0, 2)), (C, gC, (2, 3, 3)), (c, gc, (0, 4, 1))):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor[index] += sign * 1e-6
                values.append(float((solve(None).U * weights).sum()))
                tensor[index] -= sign * 1e-6
        assert float(grad[index]) == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5, abs=1e-8)


class _AttributeModel(dynamics.Dynamics):
    """A model holding its matrix as a plain tensor attribute (as mpc.pytorch's AffineDynamics does)."""

    def __init__(self, A, Bu):
        super().__init__(A.shape[-1], Bu.shape[-1])
        self.A_plain, self.B_plain = A, Bu

    def forward(self, x, u, t=None):
        return x @ self.A_plain.mT + u @ self.B_plain.mT


def test_a_plain_tensor_attribute_gets_the_implicit_gradient():
    A, Bu, C, c, x0 = per_problem_lq()
    A0 = A[0].clone().requires_grad_(True)
    cost = trajopt.QuadraticCost(C[0], c[0, 0])

    def loss(grad):
        sol = trajopt.ilqr(trajopt.Problem(_AttributeModel(A0, Bu[0]), cost, x0, horizon=T, u_lower=-0.4,
                                           u_upper=0.4), grad=grad, grad_tol=1e-11)
        return sol.U.sum()

    (implicit,) = torch.autograd.grad(loss("implicit"), A0)
    (unrolled,) = torch.autograd.grad(loss("unroll"), A0)
    assert implicit.abs().sum() > 0
    torch.testing.assert_close(implicit, unrolled, rtol=1e-6, atol=1e-9)


def test_per_problem_tensors_must_match_the_batch():
    A, Bu, C, c, x0 = per_problem_lq()
    model = dynamics.LinearDynamics(A, Bu, batched=True)
    with pytest.raises(ValueError, match=r"dynamics's per-problem 'A' \(LinearDynamics\) has 3 problems"):
        trajopt.Problem(model, trajopt.QuadraticCost(C[0]), x0[:2], horizon=T)
    shared = trajopt.Problem(model, trajopt.QuadraticCost(C[0]), x0[0], horizon=T)     # x0 shared by 3 problems
    assert shared.B == 3 and shared.batched and shared.x0.shape == (3, n)
    with pytest.raises(ValueError, match="C has shape"):
        trajopt.QuadraticCost(C[0, 0], batched=True)


def test_select_and_replace_validate_again():
    problem = trajopt.problems.pendulum(4)
    assert problem.select(torch.tensor([True, False, True, False])).B == 2
    assert problem.replace(horizon=5).T == 5
    with pytest.raises(TypeError, match="unknown field"):
        problem.replace(horizont=5)
    with pytest.raises(ValueError, match="u_lower exceeds u_upper"):
        problem.replace(u_lower=3.0)


def test_constrained_ilqr_keeps_each_problems_own_cost_and_multipliers():
    """Per-problem targets with a path constraint: the batch equals each problem solved alone (the inner solves
    see each row's multipliers and targets through the row context, with no state carrying the problem index)."""
    model = dynamics.DoubleIntegrator().discretize()
    goals = torch.tensor([[1.0, 0.0], [-0.5, 0.0], [0.8, 0.0]], **D64)
    Q, R = torch.eye(2, **D64), 0.1 * torch.eye(1, **D64)
    C = torch.block_diag(Q, R).expand(3, 5, 3, 3)
    c = -torch.cat([goals, torch.zeros(3, 1, **D64)], -1).unsqueeze(1).expand(3, 5, 3)

    def speed(x, u):
        return x[..., 1:2].abs() - 0.3

    x0 = torch.zeros(3, 2, **D64)
    sol = trajopt.constrained_ilqr(trajopt.Problem(model, trajopt.QuadraticCost(C, c, batched=True), x0, horizon=5,
                                                   constraint=speed))
    assert sol.converged.all()
    for b in range(3):
        alone = trajopt.constrained_ilqr(trajopt.Problem(model, trajopt.QuadraticCost(C[b], c[b]), x0[b], horizon=5,
                                                         constraint=speed))
        torch.testing.assert_close(sol.U[b], alone.U, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
def _issue21_fixtures():
    D = dict(dtype=torch.float64)
    model = dynamics.Pendulum().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D)), torch.tensor([[0.002]], **D))
    x0 = torch.tensor([[3.0, 0.0], [1.0, 0.5]], **D)
    return model, cost, x0, D


@pytest.mark.parametrize("change, error, match", [
    (dict(u_lower=-math.inf, u_upper=-math.inf), ValueError, "Problem: u_upper is -inf"),
    (dict(u_lower=math.inf, u_upper=math.inf), ValueError, "Problem: u_lower is \\+inf"),
    (dict(u_lower=[-2.0]), TypeError, "Problem: u_lower must be a number or a tensor"),
    (dict(u_lower=torch.tensor([-2.0])), TypeError, "Problem: u_lower is torch.float32"),
    (dict(u_lower=torch.tensor([-2])), TypeError, "Problem: u_lower is torch.int64"),
    (dict(cost="n=3"), ValueError, "Problem: the cost is for n=3 but the dynamics has n=2"),
    (dict(cost="m=2"), ValueError, "Problem: the cost is for m=2"),
    (dict(cost="n+m=4"), ValueError, "Problem: the cost is for n\\+m=4"),
    (dict(cost="T=4"), ValueError, "Problem: the cost is time-varying with T=4 stages"),
    (dict(cost="stage fails"), ValueError, "Problem: the cost failed on the dynamics' states"),
    (dict(dynamics="T=3"), ValueError, "Problem: the dynamics is time-varying with 3 stages"),
])
def test_problem_refuses_what_it_used_to_accept(change, error, match):
    model, cost, x0, D = _issue21_fixtures()

    class Bad(trajopt.Cost):
        def stage(self, x, u, t=None):
            return x[:, 5]
    costs = {"n=3": trajopt.QuadraticCost.from_weights(torch.eye(3, **D), torch.eye(1, **D)),
             "m=2": trajopt.QuadraticCost.from_weights(torch.eye(2, **D), torch.eye(2, **D)),
             "n+m=4": trajopt.QuadraticCost(torch.eye(4, **D)),
             "T=4": trajopt.QuadraticCost.tracking(torch.eye(2, **D), torch.eye(1, **D), torch.zeros(5, 2, **D)),
             "stage fails": Bad()}
    kw = dict(horizon=5, u_lower=-2.0, u_upper=2.0)
    kw.update({k: v for k, v in change.items() if k not in ("cost", "dynamics")})
    if "cost" in change:
        cost = costs[change["cost"]]
    if "dynamics" in change:
        model = dynamics.LinearDynamics(torch.eye(2, **D).expand(3, 2, 2), torch.ones(3, 2, 1, **D))
    with pytest.raises(error, match=match):
        trajopt.Problem(model, cost, x0, **kw)


@pytest.mark.parametrize("solver", ["ilqr", "ddp", "single_shooting", "mppi", "cem", "random_shooting", "multistart"])
@pytest.mark.parametrize("field", ["x_upper", "constraint"])
def test_solvers_refuse_the_fields_they_do_not_take(solver, field):
    model, cost, x0, D = _issue21_fixtures()
    extra = dict(x_upper=torch.tensor([math.inf, 0.3], **D)) if field == "x_upper" else \
        dict(constraint=lambda x, u: x[:, 1:2] - 0.3)
    problem = trajopt.Problem(model, cost, x0, horizon=5, u_lower=-2.0, u_upper=2.0, **extra)
    options = dict(U_inits=torch.zeros(2, 5, 1, **D)) if solver == "multistart" else {}
    with pytest.raises(ValueError, match=f"{solver}: the problem has {field}, which .* does not take"):
        getattr(trajopt, solver)(problem, **options)


def test_select_solution_index_and_throw_name_their_arguments():
    model, cost, x0, D = _issue21_fixtures()
    problem = trajopt.Problem(model, cost, x0, horizon=5, u_lower=-2.0, u_upper=2.0)
    with pytest.raises(IndexError, match="Problem.select: rows"):
        problem.select([5])
    sol = trajopt.ilqr(problem, max_iter=2)
    with pytest.raises(IndexError, match="Solution: index 5"):
        sol[5]
    with pytest.raises(ValueError, match="Solution.throw: allow must be trajopt.Status"):
        sol.throw(allow="x")
    assert sol.throw(allow=tuple(trajopt.Status)) is sol


@pytest.mark.parametrize("side", ["cost", "dynamics"])
def test_a_model_or_cost_of_another_dtype_than_x0_is_named_with_the_conversion(side):
    """float32 inputs with a float64 model or cost (and the reverse) are refused once, by the Problem every
    solver takes, naming the tensor and the conversion; 0-dim float64 constants (the analytic models') are fine."""
    model = dynamics.LinearDynamics(torch.eye(2, **D64), torch.ones(2, 1, **D64))
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), torch.eye(1, **D64))
    x0 = torch.zeros(3, 2)                                                          # float32
    with pytest.raises(TypeError, match=rf"Problem: x0 is torch.float32 but the {side}'s tensor .* is torch.float64; "
                                        rf"convert one side: {side}.to\(torch.float32\)"):
        trajopt.Problem(model if side == "dynamics" else model.float(), cost if side == "cost" else cost.float(), x0,
                        horizon=4)
    p = trajopt.Problem(dynamics.Pendulum().discretize(), cost.float(), x0, horizon=4)   # 0-dim float64 constants
    assert trajopt.ilqr(p).U.dtype == torch.float32


def test_solution_flags_any_problem_whose_result_is_not_finite():
    """The last guard: whatever a solver missed (a cost that goes NaN only when evaluated again, say), a problem
    with a non-finite cost, state or control is NOT_FINITE with cost inf, and no history entry is NaN."""
    B, T = 4, 3
    X, U = torch.zeros(B, T + 1, 2, dtype=torch.float64), torch.zeros(B, T, 1, dtype=torch.float64)
    X[1, 2, 0] = float("nan")
    U[2, 0, 0] = float("inf")
    cost = torch.tensor([1.0, 2.0, 3.0, float("-inf")], dtype=torch.float64, requires_grad=True)
    history = torch.tensor([[2.0, 1.0]] * 3 + [[2.0, float("nan")]], dtype=torch.float64)
    status = torch.full((B,), int(trajopt.Status.CONVERGED))
    sol = trajopt.Solution(X=X, U=U, cost=cost, status=status, iterations=torch.ones(B, dtype=torch.long),
                           cost_history=history)
    assert sol.status.tolist() == [int(trajopt.Status.CONVERGED)] + [int(trajopt.Status.NOT_FINITE)] * 3
    assert sol.cost[0] == 1.0 and torch.isinf(sol.cost[1:]).all() and (sol.cost[1:] > 0).all()
    assert not torch.isnan(sol.cost_history).any() and sol.cost_history[3, 1] == float("inf")
    sol.cost[0].backward()                       # the finite problem keeps its graph
    assert cost.grad.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert sol[3].status == int(trajopt.Status.NOT_FINITE)      # unbatched rows keep the flag
