"""The contract every public solver keeps, checked the same way for each (as diffrax's tests loop over solvers).

One small nonlinear problem (a pendulum held near upright, three starts, bounds active somewhere) runs through
every solver: batched and unbatched input agree, float32 behaves as float64, bounds hold exactly, status and
iterations have their documented meaning, every advertised gradient route agrees with central differences, a row
whose model or cost goes non-finite is reported for that row alone, and bad input raises an error naming the solver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import dynamics
import trajopt
from tests.dynamics.models import PendulumBreaks
from trajopt import Status

D64 = dict(dtype=torch.float64)
T, U_MAX = 12, 1.0


def problem(dtype=torch.float64, model=None, x0=None, **fields):
    model = dynamics.Pendulum().discretize().to(dtype) if model is None else model.to(dtype)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], dtype=dtype)),
                                              torch.tensor([[0.02]], dtype=dtype),
                                              Q_final=torch.diag(torch.tensor([10.0, 1.0], dtype=dtype)))
    x0 = torch.tensor([[0.15, 0.0], [-0.1, 0.3], [0.18, -0.2]], dtype=dtype) if x0 is None else x0.to(dtype)
    return trajopt.Problem(model, cost, x0, horizon=T, u_lower=-U_MAX, u_upper=U_MAX, **fields)


def constraint(x, u):
    return u - 0.8                    # a path constraint tighter than the box on one side: active at the optimum


@dataclass
class Case:
    name: str
    fn: object
    options: dict
    routes: tuple = ()          # gradient routes the solver advertises (None always runs)
    certified: bool = True      # has an optimality test (else NO_CERTIFICATE)
    seeded: bool = False        # random: takes a generator
    fields: dict = field(default_factory=dict)
    exact: bool = True          # deterministic per row: batched row b equals the problem solved alone
    reference: dict = field(default_factory=dict)   # options of the tight solves central differences are taken of
    solves: int = 1             # solves of max_iter iterations each, one after the other (multistart: screen, finish)
    def call(self, p, **extra):
        options = dict(self.options, **extra)
        if self.seeded:
            options["generator"] = torch.Generator().manual_seed(0)
        return self.fn(p, **options)


# SLSQP's default ftol (1e-10) stops each solve a few iterations early on a path that moves smoothly with the
# parameters, so central differences of default solves differentiate that path (4e-4 off on collocation), not the
# optimum the implicit gradient describes: they are taken of solves to ftol 1e-14 (theseus's too: its inner
# tolerance leaves central differences noisy at 1e-3).
TIGHT = trajopt.Scipy(options={"ftol": 1e-14})
GUESSES = torch.stack([torch.zeros(T, 1), torch.full((T, 1), -0.5), torch.full((T, 1), 0.5)]).double()  # (K, T, m)

CASES = [
    Case("ilqr", trajopt.ilqr, dict(max_iter=200, grad_tol=1e-10), ("implicit", "unroll")),
    Case("ddp", trajopt.ddp, dict(max_iter=200, grad_tol=1e-10), ("implicit", "unroll")),
    Case("single_shooting", trajopt.single_shooting, dict(max_iter=3000, grad_tol=1e-9), ("implicit",)),
    Case("multiple_shooting-scipy", trajopt.multiple_shooting, dict(backend=trajopt.Scipy()), ("implicit",),
         reference=dict(backend=TIGHT)),
    Case("multiple_shooting-theseus", trajopt.multiple_shooting, dict(backend=trajopt.Theseus()), ("implicit",),
         exact=False, reference=dict(backend=TIGHT)),
    Case("collocation-scipy", trajopt.collocation, dict(backend=trajopt.Scipy()), ("implicit",),
         reference=dict(backend=TIGHT)),
    Case("collocation-theseus", trajopt.collocation, dict(backend=trajopt.Theseus()), ("implicit",), exact=False,
         reference=dict(backend=TIGHT)),
    Case("multistart", trajopt.multistart, dict(U_inits=GUESSES, max_iter=200, grad_tol=1e-10), ("implicit",),
         solves=2),
    Case("constrained_ilqr", trajopt.constrained_ilqr, dict(grad_tol=1e-9), fields=dict(constraint=constraint)),
    Case("mppi", trajopt.mppi, dict(samples=64, max_iter=3, temperature=0.5, noise_std=0.3), ("weights",),
         certified=False, seeded=True, exact=False),
    Case("cem", trajopt.cem, dict(samples=64, max_iter=3, elites=8, noise_std=0.3), certified=False, seeded=True,
         exact=False),
    Case("random_shooting", trajopt.random_shooting, dict(samples=64, noise_std=0.3), certified=False, seeded=True,
         exact=False),
]
IDS = [c.name for c in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    return request.param


def test_batched_and_unbatched_input_agree(case):
    p = problem(**case.fields)
    one = case.call(p.select([1]))
    alone = case.call(p.replace(x0=p.x0[1], U_init=p.U_init[1]))
    assert alone.U.shape == (T, 1) and alone.X.shape == (T + 1, 2) and alone.cost.shape == ()
    assert alone.status.shape == () and alone.iterations.shape == ()
    torch.testing.assert_close(alone.U, one.U[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(alone.cost, one.cost[0], rtol=1e-12, atol=0)
    if case.exact:
        batched = case.call(p)
        torch.testing.assert_close(batched.U[1], one.U[0], rtol=0, atol=1e-8)


def test_float32_behaves_as_float64(case):
    default = {"grad_tol": None} if "grad_tol" in case.options else {}     # each dtype's own default tolerance
    theseus = case.name.endswith("-theseus")
    s64 = case.call(problem(**case.fields), **default)
    s32 = case.call(problem(torch.float32, **case.fields), **default, **(dict(max_iter=10) if theseus else {}))
    assert s32.U.dtype == s32.X.dtype == s32.cost.dtype == torch.float32
    assert torch.isfinite(s32.X).all() and torch.isfinite(s32.cost).all()
    if theseus:
        # the documented limit (docs/collocation.md): the defects' float32 rounding times the penalty can keep the
        # augmented Lagrangian's gradient above the scaled grad_tol, so a right solution may end MAX_ITER
        assert (s64.status == Status.CONVERGED).all()
        assert set(s32.status.tolist()) <= {int(Status.CONVERGED), int(Status.MAX_ITER)}
        torch.testing.assert_close(s32.cost.double(), s64.cost, rtol=1e-4, atol=0)
    elif case.certified:
        assert s32.status.tolist() == s64.status.tolist()
        torch.testing.assert_close(s32.cost.double(), s64.cost, rtol=1e-4, atol=0)
    else:
        assert (s32.status == Status.NO_CERTIFICATE).all()


def test_bounds_hold_exactly(case):
    sol = case.call(problem(**case.fields))
    assert (sol.U >= -U_MAX).all() and (sol.U <= U_MAX).all()
    if case.certified:
        assert (sol.U.abs() == U_MAX).any() and (sol.U.abs() < U_MAX).any()     # some bounds active, not all


def test_status_iterations_and_statistics_have_their_documented_meaning(case):
    p = problem(**case.fields)
    sol = case.call(p)
    assert sol.status.dtype == sol.iterations.dtype == torch.int64
    assert sol.status.shape == sol.iterations.shape == sol.cost.shape == (3,)
    assert set(sol.status.tolist()) <= {int(s) for s in Status}
    assert (sol.converged == (sol.status == Status.CONVERGED)).all()
    assert sol.cost_history.shape[0] == 3 and sol.cost_history.shape[1] >= 1
    torch.testing.assert_close(sol.cost_history[:, -1], sol.cost.detach(), rtol=1e-10, atol=0)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 3 for v in sol.extras.values())
    if not case.name.startswith("collocation"):      # collocation's knots follow the continuous model instead
        torch.testing.assert_close(sol.X, trajopt.rollout(p.dynamics, p.x0, sol.U), rtol=0, atol=1e-6)
    if case.certified:
        assert (sol.status == Status.CONVERGED).all(), sol.summary()
        assert sol.residual.shape == (3,) and bool((sol.residual >= 0).all())
        budget = case.options.get("max_iter")
        assert (sol.iterations >= 1).all() and (budget is None or (sol.iterations <= case.solves * budget).all())
        short = case.call(p, max_iter=1) if "max_iter" in case.options else None
        if short is not None and case.name != "constrained_ilqr":
            assert (short.status == Status.MAX_ITER).all() and (short.iterations == case.solves).all()
    else:
        assert (sol.status == Status.NO_CERTIFICATE).all() and sol.residual is None


def _loss(sol):
    return (sol.U.sum((-1, -2)) * torch.tensor([1.0, -2.0, 0.5], **D64)).sum() + (sol.X[..., 0] ** 2).sum()


@pytest.mark.parametrize("case, route", [(c, r) for c in CASES for r in c.routes],
                         ids=[f"{c.name}-{r}" for c in CASES for r in c.routes])
def test_every_advertised_gradient_route_agrees_with_central_differences(case, route):
    p = problem(**case.fields)
    mass = p.dynamics.model.m.requires_grad_(True)
    x0 = p.x0.clone().requires_grad_(True)
    extra = {} if route == "weights" else dict(grad=route)
    sol = case.call(p.replace(x0=x0), **extra)
    g_mass, g_x0 = torch.autograd.grad(_loss(sol), [mass, x0])

    def central(tensor, index, eps=1e-6):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor[index] += sign * eps
                extra = {} if route == "weights" else dict(grad=None, **case.reference)
                values.append(float(_loss(case.call(p, **extra))))
                tensor[index] -= sign * eps
        return (values[0] - values[1]) / (2 * eps)

    with torch.no_grad():
        assert float(g_mass) == pytest.approx(central(mass.data, ()), rel=1e-4, abs=1e-7)
        assert float(g_x0[2, 0]) == pytest.approx(central(p.x0.data, (2, 0)), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("case", [c for c in CASES if not c.routes], ids=[c.name for c in CASES if not c.routes])
def test_solvers_without_a_gradient_route_return_detached_solutions(case):
    p = problem(**case.fields)
    p.dynamics.model.m.requires_grad_(True)
    sol = case.call(p)
    assert not sol.U.requires_grad


def test_a_row_whose_model_goes_non_finite_is_reported_and_the_rest_solved(case):
    x0 = torch.tensor([[0.15, 0.0], [5.0, 0.0], [0.18, -0.2]], **D64)      # row 1 starts where the model breaks
    sol = case.call(problem(model=PendulumBreaks().discretize(), x0=x0, **case.fields))
    assert sol.status[1] == Status.NOT_FINITE
    assert (sol.status[[0, 2]] != Status.NOT_FINITE).all()
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all() and not torch.isnan(sol.cost).any()
    if case.exact:
        alone = case.call(problem(model=PendulumBreaks().discretize(), x0=x0[[0, 2]], **case.fields))
        torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=1e-8)


class _CostBreaks(trajopt.Cost):
    """A sum of squares with a log term, ``2 theta^2 + 0.2 omega^2 + 0.02 u^2 + (0.1 log(4 - |theta|))^2`` and
    ``10 theta^2 + omega^2`` at the end: NaN where ``|theta| > 4`` (a cost evaluated outside its domain). Its
    residuals are given, so the Gauss-Newton back ends (theseus) take it too."""

    def stage_residuals(self, x, u, t=None):
        w = torch.tensor([2.0, 0.2, 0.02], dtype=x.dtype, device=x.device).sqrt()
        return torch.cat([torch.cat([x, u], -1) * w, 0.1 * torch.log(4 - x[..., :1].abs())], -1)

    def terminal_residuals(self, x):
        return x * torch.tensor([10.0, 1.0], dtype=x.dtype, device=x.device).sqrt()

    def stage(self, x, u, t=None):
        return (self.stage_residuals(x, u, t) ** 2).sum(-1)

    def terminal(self, x):
        return (self.terminal_residuals(x) ** 2).sum(-1)


def test_a_row_whose_cost_goes_non_finite_is_reported_and_the_rest_solved(case):
    x0 = torch.tensor([[0.15, 0.0], [5.0, 0.0], [0.18, -0.2]], **D64)      # row 1 starts outside the cost's domain
    p = problem(x0=x0, **case.fields).replace(cost=_CostBreaks())
    sol = case.call(p)
    assert sol.status[1] == Status.NOT_FINITE and sol.cost[1] == math.inf
    assert (sol.status[[0, 2]] != Status.NOT_FINITE).all() and torch.isfinite(sol.cost[[0, 2]]).all()
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all()
    if case.exact:
        alone = case.call(p.select([0, 2]))
        torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=1e-8)


def test_bad_input_raises_an_error_naming_the_solver(case):
    p = problem(**case.fields)
    with pytest.raises(TypeError, match="the first argument must be a trajopt.Problem"):
        case.fn(p.dynamics, p.cost, p.x0)
    with pytest.raises(TypeError, match="unexpected keyword|not an option|unknown|takes no option"):
        case.call(p, horizon=T)
    if "max_iter" in case.options:
        with pytest.raises(ValueError, match="max_iter"):
            case.call(p, max_iter=math.nan)
