import pytest
import scipy.optimize
import torch

import dynamics
import trajopt
from trajopt import Constraint, Status, constrained_ilqr
from trajopt._core.constraint import FunctionConstraint
from trajopt._core.per_problem import rows
from trajopt._solvers.constrained import AugmentedLagrangianCost

D64 = dict(dtype=torch.float64)
T = 12
V_MAX = 0.5


def double_integrator():
    """1-D double integrator driven from rest towards q = 1: unconstrained, its speed peaks above ``V_MAX``."""
    model = dynamics.DoubleIntegrator().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 0.1], **D64)), 0.01 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64))
    return model, cost


def speed_limit(x, u):
    return x[..., 1:] - V_MAX


class Corridor(Constraint):
    """``q_t <= 0.1 (t + 1)`` (time-varying) and ``q_T <= 0.9`` (terminal)."""

    time_varying = True

    def stage(self, x, u, t=None):
        return x[..., :1] - 0.1 * (t + 1)

    def terminal(self, x):
        return x[..., :1] - 0.9


def slsqp(model, cost, constraint, x0, U_start, bound=None):
    """Reference: scipy SLSQP at tight tolerance on the flattened controls of one problem, from ``U_start``."""
    Tn, m = U_start.shape

    def f(u):
        U = torch.tensor(u.reshape(1, Tn, m), requires_grad=True, **D64)
        J = cost(trajopt.rollout(model, x0[None], U), U).sum()
        (g,) = torch.autograd.grad(J, U)
        return float(J.detach()), g.numpy().ravel()

    def g(u):                                                      # scipy wants >= 0
        U = u.view(1, Tn, m)
        G, GT = constraint(trajopt.rollout(model, x0[None], U), U)
        return -torch.cat([G.flatten(), GT.flatten()])

    def fun(u):
        with torch.no_grad():
            return g(torch.as_tensor(u, **D64)).numpy()

    def jac(u):
        return torch.autograd.functional.jacobian(g, torch.as_tensor(u, **D64), vectorize=True).numpy()

    bounds = None if bound is None else [(-bound, bound)] * (Tn * m)
    ref = scipy.optimize.minimize(f, U_start.numpy().ravel(), jac=True, bounds=bounds, method="SLSQP",
                                  constraints=[dict(type="ineq", fun=fun, jac=jac)],
                                  options=dict(ftol=1e-14, maxiter=1000))
    assert -fun(ref.x).min() <= 1e-8
    return ref.fun


def test_constrained_ilqr_matches_slsqp_with_an_active_state_bound_per_problem():
    model, cost = double_integrator()
    x0 = torch.tensor([[0.0, 0.0], [0.8, 0.0], [-0.5, 0.2]], **D64)    # the middle one never reaches V_MAX
    problem = trajopt.Problem(model, cost, x0, horizon=T, u_lower=-3.0, u_upper=3.0, constraint=speed_limit)
    sol = constrained_ilqr(problem)
    with torch.no_grad():
        free = trajopt.ilqr(problem.replace(constraint=None))
    assert free.X[[0, 2], :, 1].amax(-1).min() > V_MAX + 0.1 and free.X[1, :, 1].max() < V_MAX
    assert sol.converged.all() and (sol.status == Status.CONVERGED).all()
    assert (sol.extras["violation"] <= 1e-6).all() and (sol.X[..., 1] <= V_MAX + 1e-6).all()
    assert (sol.residual <= 1e-6).all()
    assert (sol.U.abs() <= 3.0).all() and (sol.U.abs() == 3.0).any()      # the control bounds hold, some active
    assert sol.K.shape == (3, T, 1, 2) and sol.k.shape == (3, T, 1)
    lam = sol.extras["multipliers"][..., 0]
    assert (lam[[0, 2]] > 0).any(-1).all() and (lam[1] == 0).all()       # each problem its own multipliers
    assert (lam[sol.X[:, :-1, 1] < V_MAX - 1e-4] == 0).all()              # zero on inactive stages
    for b in (0, 2):
        ref = slsqp(model, cost, FunctionConstraint(speed_limit), x0[b], torch.zeros(T, 1, **D64), bound=3.0)
        # (violations up to constraint_tol = 1e-6 lower the cost by up to sum(lambda g) ~ 1e-7 relative)
        assert float(sol.cost[b]) == pytest.approx(ref, rel=1e-7)
    # the problem the constraint does not touch is the unconstrained solution, found in one tight solve
    torch.testing.assert_close(sol.U[1], free.U[1], atol=1e-6, rtol=0)
    assert sol.extras["outer_iterations"][1] <= 2


class SpeedLimits(Constraint):
    """``v_t <= vmax[b]``: a speed limit of its own for each problem (a per-problem tensor)."""

    per_problem = ("vmax",)

    def __init__(self, vmax):
        super().__init__()
        self.vmax = vmax

    def stage(self, x, u, t=None):
        return x[..., 1:] - self.vmax[:, None]


def test_a_constraint_with_per_problem_tensors_gives_each_problem_its_own_limit():
    model, cost = double_integrator()
    vmax = torch.tensor([0.3, 0.45, 5.0], **D64)                         # the last one never binds
    x0 = torch.zeros(3, 2, **D64)
    sol = constrained_ilqr(trajopt.Problem(model, cost, x0, horizon=T, constraint=SpeedLimits(vmax)))
    assert (sol.status == Status.CONVERGED).all()
    assert (sol.X[:, :, 1].amax(-1) <= vmax + 1e-6).all()
    assert (sol.X[:2, :, 1].amax(-1) >= vmax[:2] - 1e-6).all()           # the two tight limits are active
    for b in range(3):
        ref = slsqp(model, cost, FunctionConstraint(lambda x, u, v=float(vmax[b]): x[..., 1:] - v), x0[b],
                    torch.zeros(T, 1, **D64))
        assert float(sol.cost[b]) == pytest.approx(ref, rel=1e-7)


def test_time_varying_and_terminal_constraints_match_slsqp():
    model, _ = double_integrator()
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 0.1], **D64)), 0.01 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64),
                                              Q_final=10 * torch.eye(2, **D64))
    x0 = torch.zeros(2, **D64)                                           # unbatched in, unbatched out
    sol = constrained_ilqr(trajopt.Problem(model, cost, x0, horizon=T, constraint=Corridor()))
    assert sol.X.shape == (T + 1, 2) and sol.U.shape == (T, 1) and sol.cost.ndim == 0
    assert sol.status.ndim == 0 and sol.extras["multipliers"].shape == (T, 1)
    J = int(sol.extras["outer_iterations"])
    assert sol.cost_history.shape == (J + 1,) and sol.extras["outer_violation"].shape == (J + 1,)
    assert float(sol.cost_history[-1]) == float(sol.cost)
    assert int(sol.iterations) == int(sol.extras["inner_iterations"].sum())
    assert bool(sol.converged) and float(sol.extras["violation"]) <= 1e-6
    assert float(sol.extras["terminal_multipliers"][0]) > 0               # q_T <= 0.9 is active
    assert abs(float(sol.X[-1, 0]) - 0.9) < 1e-6
    assert float(sol.cost) == pytest.approx(slsqp(model, cost, Corridor(), x0, torch.zeros(T, 1, **D64)), rel=1e-8)


def test_nonlinear_obstacle_constraint_is_a_local_minimum():
    """A disc in the way of a planar double integrator (a nonconvex constraint, indefinite Hessian)."""
    model = dynamics.DoubleIntegrator(dim=2).discretize()
    goal = torch.tensor([1.0, 0.0, 0.0, 0.0], **D64)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 1.0, 0.1, 0.1], **D64)),
                                              0.01 * torch.eye(2, **D64), x_goal=goal)
    centre = torch.tensor([0.5, 0.05], **D64)

    def outside_disc(x, u):
        return (0.2 ** 2 - ((x[..., :2] - centre) ** 2).sum(-1)).unsqueeze(-1)

    x0 = torch.zeros(4, **D64)
    sol = constrained_ilqr(trajopt.Problem(model, cost, x0, horizon=T, constraint=outside_disc))
    assert bool(sol.converged) and float(sol.extras["violation"]) <= 1e-6
    assert float(outside_disc(sol.X, None).max()) > -1e-6                # it touches the disc
    ref = slsqp(model, cost, FunctionConstraint(outside_disc), x0, sol.U)       # started at ours: no better nearby
    assert float(sol.cost) == pytest.approx(ref, rel=1e-7)


def test_augmented_lagrangian_cost_is_its_formula_per_problem_and_quadratizes_exactly():
    g = torch.Generator().manual_seed(0)
    B, Tn, n, m = 2, 4, 2, 1
    _, cost = double_integrator()

    class Curved(Constraint):                                            # nonlinear in x and u
        def stage(self, x, u, t=None):
            return torch.stack([x[..., 0] ** 2 + x[..., 1] * u[..., 0] - 0.3, -x[..., 0]], -1)

        def terminal(self, x):
            return (x ** 2).sum(-1, keepdim=True) - 0.5

    lam = torch.rand(B, Tn, 2, generator=g, **D64) * (torch.rand(B, Tn, 2, generator=g, **D64) > 0.3)
    rho = 1 + 5 * torch.rand(B, Tn, 2, generator=g, **D64)
    lam_T, rho_T = torch.rand(B, 1, generator=g, **D64), torch.tensor([[3.0], [0.5]], **D64)
    al = AugmentedLagrangianCost(cost, Curved(), lam, rho, lam_T, rho_T)
    # trajectories of the problems in any order and number: the row context names each row's problem
    problem = torch.tensor([1, 0, 1])
    X = torch.randn(3, Tn + 1, n, generator=g, **D64)
    U = torch.randn(3, Tn, m, generator=g, **D64)
    G, GT = Curved()(X, U)
    expected = (cost(X, U) + _phr(G, lam[problem], rho[problem]).sum(-1)
                + _phr(GT, lam_T[problem], rho_T[problem]))
    with rows(problem, al):
        torch.testing.assert_close(al(X, U), expected)
        torch.testing.assert_close(sum(al.stage(X[:, t], U[:, t], t) for t in range(Tn)) + al.terminal(X[:, -1]),
                                   expected)
        # the quadratization is the autograd Hessian and gradient of each stage's term (and of the terminal one)
        q = al.quadratize(X, U)
    for r, b in enumerate(problem.tolist()):
        for t in range(Tn):
            def stage(tau, b=b, t=t):
                x, u = tau[None, :n], tau[None, n:]
                return (cost.stage(x, u) + _phr(Curved().stage(x, u), lam[b, t], rho[b, t]))[0]
            tau = torch.cat([X[r, t], U[r, t]])
            torch.testing.assert_close(q.C[r, t], torch.autograd.functional.hessian(stage, tau))
            torch.testing.assert_close(q.c[r, t], torch.autograd.functional.jacobian(stage, tau))

        def terminal(x, b=b):
            return (cost.terminal(x[None]) + _phr(Curved().terminal(x[None]), lam_T[b], rho_T[b]))[0]
        torch.testing.assert_close(q.C_final[r], torch.autograd.functional.hessian(terminal, X[r, -1]))
        torch.testing.assert_close(q.c_final[r], torch.autograd.functional.jacobian(terminal, X[r, -1]))


def _phr(g, lam, rho):
    return (((lam + rho * g).clamp_min(0) ** 2 - lam ** 2) / (2 * rho)).sum(-1)


def speed_limited(x0, constraint=speed_limit, **fields):
    model, cost = double_integrator()
    return trajopt.Problem(model, cost, x0, horizon=T, constraint=constraint, **fields)


def test_options_have_their_effect(capsys):
    problem = speed_limited(torch.tensor([[0.0, 0.0], [-0.5, 0.2]], **D64))
    base = constrained_ilqr(problem)
    assert base.converged.all()
    tols, outer = base.extras["inner_grad_tol"], base.extras["outer_iterations"]
    assert tols.shape == (2, int(outer.max())) and float(tols.max()) > 1e-3
    assert all(float(tols[b, outer[b] - 1]) == 1e-6 for b in range(2))     # each problem's last solve is tight
    assert torch.equal(base.iterations, base.extras["inner_iterations"].sum(1))
    assert base.cost_history.shape == (2, int(outer.max()) + 1)
    torch.testing.assert_close(base.cost_history[:, -1], base.cost, rtol=0, atol=0)
    one = constrained_ilqr(problem, max_outer=1, progress=True)
    assert not one.converged.any() and (one.extras["outer_iterations"] == 1).all()
    assert (one.status == Status.MAX_ITER).all()
    assert (one.extras["violation"] > 1e-3).all() and (one.residual > 1e-3).all()
    assert "constrained_ilqr" in capsys.readouterr().err                   # the progress bar
    tight = constrained_ilqr(problem, intermediate_grad_tol=None, max_outer=3)
    assert tight.extras["inner_grad_tol"].shape == (2, 3) and (tight.extras["inner_grad_tol"] == 1e-6).all()
    # penalties start at penalty_init and grow by penalty_growth only where the violation did not shrink enough
    rho = base.extras["penalty"]
    assert rho.min() == 1.0 and rho.max() > 1.0
    assert torch.allclose(torch.log10(rho), torch.log10(rho).round())
    grown = constrained_ilqr(problem, penalty_init=10.0, penalty_growth=100.0, penalty_max=1e3)
    assert grown.converged.all() and grown.extras["penalty"].min() == 10.0
    assert grown.extras["penalty"].max() == 1e3
    loose = constrained_ilqr(problem, constraint_tol=1e-3)
    assert loose.converged.all() and loose.extras["outer_iterations"].max() < base.extras["outer_iterations"].max()
    assert (loose.extras["violation"] <= 1e-3).all()


def test_float32_stays_finite():
    model, cost = double_integrator()
    problem = trajopt.Problem(model.to(torch.float32), cost.to(torch.float32), torch.zeros(1, 2), horizon=T,
                              constraint=speed_limit)
    sol = constrained_ilqr(problem, constraint_tol=1e-4, grad_tol=1e-4, max_outer=6)
    assert sol.X.dtype == torch.float32 and torch.isfinite(sol.X).all() and torch.isfinite(sol.cost).all()
    assert float(sol.extras["violation"].max()) < 1e-2


def test_a_problem_whose_initial_rollout_is_not_finite_is_marked_and_the_others_are_solved():
    x0 = torch.tensor([[0.0, 0.0], [0.0, 1.7e308], [-0.5, 0.2]], **D64)
    U_init = torch.zeros(3, T, 1, **D64)
    U_init[1] = 1e308                                                     # overflows in the rollout
    sol = constrained_ilqr(speed_limited(x0, U_init=U_init))
    assert sol.status.tolist() == [Status.CONVERGED, Status.NOT_FINITE, Status.CONVERGED]
    assert float(sol.cost[1]) == float("inf") and float(sol.residual[1]) == float("inf")
    assert torch.equal(sol.X[1], x0[1].expand(T + 1, 2)) and torch.equal(sol.U[1], U_init[1])
    assert int(sol.iterations[1]) == 0 and int(sol.extras["outer_iterations"][1]) == 0
    assert not torch.isnan(sol.X).any() and not torch.isnan(sol.cost_history).any()
    # the others are what they are without the bad row
    alone = constrained_ilqr(speed_limited(x0[[0, 2]]))
    torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.cost[[0, 2]], alone.cost, rtol=1e-12, atol=0)


def test_an_infeasible_constraint_stalls_once_its_penalty_is_capped():
    """``q_t <= -1`` at every stage cannot hold at ``t = 0`` (``q_0 = 0`` is given): the violation stays 1 whatever
    the controls, and once the penalty is at ``penalty_max`` nothing can help."""
    x0 = torch.tensor([[0.0, 0.0], [-2.0, 0.0]], **D64)        # the second can satisfy it (with a bound on speed)
    problem = speed_limited(x0, constraint=lambda x, u: torch.cat([x[..., :1] + 1, x[..., 1:] - V_MAX], -1))
    sol = constrained_ilqr(problem, penalty_max=100.0)
    assert sol.status.tolist() == [Status.STALLED, Status.CONVERGED]
    assert float(sol.extras["violation"][0]) == pytest.approx(1.0) and float(sol.extras["penalty"][0].max()) == 100.0
    assert int(sol.extras["outer_iterations"][0]) < 20
    with pytest.raises(trajopt.SolveError, match="0: STALLED"):
        sol.throw()


def test_constrained_ilqr_rejects_bad_input():
    model, cost = double_integrator()
    x0 = torch.zeros(2, 2, **D64)
    with pytest.raises(TypeError, match="constraint must be a trajopt.Constraint or a callable"):
        trajopt.Problem(model, cost, x0, horizon=T, constraint=3.0)
    with pytest.raises(TypeError, match="constrained_ilqr: the problem has no constraint"):
        constrained_ilqr(trajopt.Problem(model, cost, x0, horizon=T))
    with pytest.raises(TypeError, match="must be a trajopt.Problem"):
        constrained_ilqr(model, cost, speed_limit, x0, horizon=T)
    with pytest.raises(ValueError, match=r"constraint returned shape \(24,\).*expected \(N, k\) = \(24, k\)"
                                         r".*unsqueeze"):
        constrained_ilqr(speed_limited(x0, lambda x, u: x[..., 1] - V_MAX))
    with pytest.raises(ValueError, match=r"constraint.terminal returned shape"):
        class BadTerminal(Constraint):
            def terminal(self, x):
                return x.sum()
        constrained_ilqr(speed_limited(x0, BadTerminal()))
    with pytest.raises(ValueError, match="no constraints"):
        constrained_ilqr(speed_limited(x0, Constraint()))
    with pytest.raises(ValueError, match="X_init is not taken"):
        constrained_ilqr(speed_limited(x0, X_init=torch.zeros(T + 1, 2, **D64)))
    with pytest.raises(ValueError, match="state bounds"):
        constrained_ilqr(speed_limited(x0, x_upper=1.0))
    with pytest.raises(TypeError, match="cost must be a trajopt.Cost"):
        trajopt.Problem(model, lambda X, U: X.sum(), x0, horizon=T, constraint=speed_limit)
    with pytest.raises(TypeError, match="dynamics must be a dynamics.Dynamics"):
        trajopt.Problem(dynamics.DoubleIntegrator(), cost, x0, horizon=T, constraint=speed_limit)
    with pytest.raises(ValueError, match=r"x0 has shape \(2, 3\); expected \(B, n\) = \(B, 2\)"):
        speed_limited(torch.zeros(2, 3, **D64))
    with pytest.raises(ValueError, match="give U_init .* or horizon, a positive int"):
        trajopt.Problem(model, cost, x0, constraint=speed_limit)
    with pytest.raises(ValueError, match=r"u_lower has shape \(5,\); expected a shape broadcastable to \(B, T, m\)"):
        speed_limited(x0, u_lower=torch.zeros(5, **D64))
    with pytest.raises(ValueError, match="u_lower exceeds u_upper"):
        speed_limited(x0, u_lower=1.0, u_upper=0.0)
    problem = speed_limited(x0)
    for name, value in [("penalty_growth", 1.0), ("violation_shrink", 1.5), ("constraint_tol", 0.0),
                        ("max_outer", 0), ("penalty_max", 0.5), ("intermediate_grad_tol", -1.0), ("grad_tol", 0.0),
                        ("max_iter", 2.5)]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            constrained_ilqr(problem, **{name: value})
    with pytest.raises(TypeError, match="iterations"):
        constrained_ilqr(problem, iterations=3)
    nowhere = constrained_ilqr(speed_limited(x0, lambda x, u: torch.full_like(x[..., :1], float("nan"))))
    assert (nowhere.status == Status.NOT_FINITE).all() and (nowhere.cost == float("inf")).all()
    assert torch.isfinite(nowhere.X).all() and torch.isfinite(nowhere.U).all()


def test_a_row_whose_constraint_is_not_finite_is_flagged_and_the_others_solved():
    model, cost = double_integrator()
    x0 = torch.tensor([[0.0, 0.0], [7.0, 0.0], [-0.5, 0.2]], **D64)   # the constraint is undefined beyond q = 5

    def limited(x, u):
        return torch.where(x[..., :1] > 5, float("nan"), x[..., 1:] - V_MAX)

    sol = constrained_ilqr(trajopt.Problem(model, cost, x0, horizon=T, constraint=limited))
    assert sol.status[1] == Status.NOT_FINITE and sol.cost[1] == float("inf")
    assert (sol.status[[0, 2]] == Status.CONVERGED).all()
    assert torch.isfinite(sol.X).all() and torch.isfinite(sol.U).all()
    alone = constrained_ilqr(trajopt.Problem(model, cost, x0[[0, 2]], horizon=T, constraint=limited))
    torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
def test_constrained_ilqr_names_progress_and_a_failing_constraint():
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 0.1], **D64)), 0.01 * torch.eye(1, **D64))
    model = dynamics.Pendulum().discretize()
    x0 = torch.zeros(2, 2, **D64)
    ok = trajopt.Problem(model, cost, x0, horizon=5, constraint=lambda x, u: x[:, 1:2] - 10.0)
    with pytest.raises(TypeError, match="constrained_ilqr: progress must be a bool"):
        constrained_ilqr(ok, progress="yes")

    def fails(x, u):
        raise ZeroDivisionError("division by zero")
    with pytest.raises(RuntimeError, match="constrained_ilqr: the problem's constraint raised ZeroDivisionError"):
        constrained_ilqr(ok.replace(constraint=fails))
