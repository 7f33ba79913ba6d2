"""The bounded LQR (``trajopt.lqr`` with ``u_lower``/``u_upper``): the interior-point method of
``trajopt._core.interior_point`` against Clarabel (through cvxpy, tight tolerance), its implicit gradient against
central differences, statuses, float32."""
import numpy as np
import pytest
import torch

import trajopt
from trajopt._core.interior_point import fix_active


def _problem(B=5, T=8, n=4, m=3, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)       # noqa: E731
    F = torch.cat([torch.eye(n, dtype=torch.float64) + 0.3 * r(B, T, n, n), r(B, T, n, m)], -1)
    A = r(B, T, n + m, n + m)
    C = A @ A.mT / (n + m) + 0.1 * torch.eye(n + m, dtype=torch.float64)
    out = dict(F=F, f=r(B, T, n), C=C, c=r(B, T, n + m), x0=2 * r(B, n),
               C_final=2 * torch.eye(n, dtype=torch.float64).expand(B, n, n).clone(), c_final=r(B, n))
    lower = -0.3 - torch.rand(B, T, m, generator=g, dtype=torch.float64)
    upper = 0.3 + torch.rand(B, T, m, generator=g, dtype=torch.float64)
    lower[:, :, 0] = -torch.inf                       # a control bounded above only
    upper[0, 3] = torch.inf                           # a stage of problem 0 bounded below only
    if B > 1 and T > 2:
        lower[1, 2, 1] = upper[1, 2, 1] = 0.1         # a control fixed by equal bounds
    return {k: v.to(dtype) for k, v in out.items()}, lower.to(dtype), upper.to(dtype)


def _clarabel(p, b, lower, upper):
    """Problem ``b`` as a QP solved by Clarabel through cvxpy at tight tolerance: ``U (T, m)``."""
    cp = pytest.importorskip("cvxpy")
    F, f, C, c, x0, Cf, cf = (p[k][b].double().numpy() for k in ("F", "f", "C", "c", "x0", "C_final", "c_final"))
    lo, hi = lower[b].double().numpy(), upper[b].double().numpy()
    T, n, nm = F.shape
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, nm - n))
    objective = 0.5 * cp.quad_form(X[T], cp.psd_wrap(Cf)) + cf @ X[T]
    constraints = [X[0] == x0]
    for t in range(T):
        tau = cp.hstack([X[t], U[t]])
        objective += 0.5 * cp.quad_form(tau, cp.psd_wrap(0.5 * (C[t] + C[t].T))) + c[t] @ tau
        constraints += [X[t + 1] == F[t] @ tau + f[t]]
        constraints += [U[t, i] >= lo[t, i] for i in range(nm - n) if np.isfinite(lo[t, i])]
        constraints += [U[t, i] <= hi[t, i] for i in range(nm - n) if np.isfinite(hi[t, i])]
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, tol_gap_abs=1e-12,
                                                           tol_gap_rel=1e-12, tol_feas=1e-12)
    return torch.tensor(U.value)


def _solve(p, lower, upper, **kw):
    return trajopt.lqr(p["F"], p["f"], p["C"], p["c"], p["x0"], C_final=p["C_final"], c_final=p["c_final"],
                       u_lower=lower, u_upper=upper, **kw)


def test_bounded_lqr_matches_clarabel_with_one_sided_infinite_and_equal_bounds():
    p, lower, upper = _problem()
    sol = _solve(p, lower, upper, grad=None)
    assert sol.converged.all() and (sol.residual <= 1e-9).all()
    assert (sol.U >= lower).all() and (sol.U <= upper).all() and (sol.U == upper).any()
    assert sol.U[1, 2, 1] == 0.1
    for b in range(p["F"].shape[0]):
        torch.testing.assert_close(sol.U[b], _clarabel(p, b, lower, upper), rtol=0, atol=1e-8)
    # X is the rollout of U, the cost that of (X, U), U = K X + k
    F, f = p["F"], p["f"]
    nxt = (F @ torch.cat([sol.X[:, :-1], sol.U], -1).unsqueeze(-1))[..., 0] + f
    torch.testing.assert_close(sol.X[:, 1:], nxt, rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.cost, trajopt.lqr_cost(sol.X, sol.U, p["C"], p["c"], p["C_final"], p["c_final"]))
    torch.testing.assert_close(sol.U, (sol.K @ sol.X[:, :-1].unsqueeze(-1))[..., 0] + sol.k, rtol=0, atol=1e-12)


def test_rows_within_their_bounds_take_the_unbounded_solution_and_the_others_are_solved():
    p, lower, upper = _problem(B=4)
    wide = torch.full_like(lower, 1e6)
    lower, upper = torch.where(torch.arange(4).view(4, 1, 1) < 2, -wide, lower), \
        torch.where(torch.arange(4).view(4, 1, 1) < 2, wide, upper)
    sol = _solve(p, lower, upper, grad=None)
    free = trajopt.lqr(p["F"], p["f"], p["C"], p["c"], p["x0"], C_final=p["C_final"], c_final=p["c_final"])
    assert sol.converged.all() and (sol.iterations[:2] == 0).all() and (sol.iterations[2:] > 0).all()
    torch.testing.assert_close(sol.U[:2], free.U[:2], rtol=0, atol=0)
    for b in (2, 3):
        torch.testing.assert_close(sol.U[b], _clarabel(p, b, lower, upper), rtol=0, atol=1e-8)


def test_gradients_match_central_differences():
    p, lower, upper = _problem(B=2, T=6, n=3, m=2, seed=4)
    lower, upper = lower.clone(), upper.clone()
    lower[1, 2, 1] = -0.5                                     # no equal bounds: one more free direction
    names = ("F", "f", "C", "c", "x0", "C_final", "c_final")
    leaves = {k: p[k].clone().requires_grad_(True) for k in names}
    lo, hi = lower.clone().requires_grad_(True), upper.clone().requires_grad_(True)
    weights = torch.linspace(-1, 1, 2 * 6 * 2, dtype=torch.float64).view(2, 6, 2)

    def loss(q, lo_, hi_):
        sol = _solve(q, lo_, hi_)
        return (sol.U * weights).sum() + sol.X.square().sum() + sol.cost.sum(), sol

    value, sol = loss(leaves, lo, hi)
    assert sol.converged.all() and (sol.U == upper).any() and (sol.U == lower).any()
    grads = dict(zip((*names, "lower", "upper"), torch.autograd.grad(value, [*leaves.values(), lo, hi])))
    base = {**{k: p[k] for k in names}, "lower": lower, "upper": upper}
    picks = {"F": [(0, 1, 2, 3), (1, 4, 0, 4)], "f": [(0, 2, 1)], "C": [(1, 3, 0, 4), (0, 5, 3, 3)],
             "c": [(1, 0, 2)], "x0": [(0, 1)], "C_final": [(1, 0, 2)], "c_final": [(0, 2)]}
    at_bound = (sol.U.detach() == upper).nonzero()[0].tolist()
    picks["upper"] = [tuple(at_bound)]
    for name, indices in picks.items():
        for index in indices:
            vals = []
            for sign in (1, -1):
                z = {k: v.clone() for k, v in base.items()}
                z[name][index] += sign * 1e-6
                with torch.no_grad():
                    vals.append(float(loss(z, z["lower"], z["upper"])[0]))
            fd = (vals[0] - vals[1]) / 2e-6
            assert float(grads[name][index]) == pytest.approx(fd, rel=1e-6, abs=1e-7), (name, index)


def test_gradcheck_in_the_offsets_and_the_start():
    p, lower, upper = _problem(B=1, T=4, n=3, m=2, seed=6)
    sol = _solve(p, lower, upper, grad=None)
    assert sol.converged.all() and ((sol.U == upper) | (sol.U == lower)).any()

    def f(f_, x0):
        s = _solve(dict(p, f=f_, x0=x0), lower, upper)
        return s.U, s.X, s.cost
    args = tuple(p[k].clone().requires_grad_(True) for k in ("f", "x0"))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-6)


def test_fix_active_states_the_active_set_solution():
    """The LQR of the active set solved without bounds gives the bounded solution, its cost included."""
    p, lower, upper = _problem(B=3, seed=2)
    sol = _solve(p, lower, upper, grad=None)
    fixed = (sol.U == lower) | (sol.U == upper)
    Fk, fk, Ck, ck, constant = fix_active(p["F"], p["f"], p["C"], p["c"], fixed, sol.U)
    free = trajopt.lqr(Fk, fk, Ck, ck, p["x0"], C_final=p["C_final"], c_final=p["c_final"], grad=None)
    torch.testing.assert_close(torch.where(fixed, sol.U, free.U), sol.U, rtol=0, atol=1e-12)
    torch.testing.assert_close(free.cost + constant, sol.cost, rtol=1e-12, atol=1e-12)


def test_out_of_iterations_gives_max_iter_a_feasible_rollout_and_the_rollout_gradient():
    p, lower, upper = _problem(B=3, seed=3)
    leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    sol = _solve(leaves, lower, upper, max_iter=1)
    assert (sol.status == int(trajopt.Status.MAX_ITER)).all() and torch.isfinite(sol.U).all()
    assert (sol.U >= lower).all() and (sol.U <= upper).all()
    F, f = p["F"], p["f"]
    U = sol.U.detach()
    nxt = (F @ torch.cat([sol.X.detach()[:, :-1], U], -1).unsqueeze(-1))[..., 0] + f
    torch.testing.assert_close(sol.X.detach()[:, 1:], nxt, rtol=0, atol=1e-12)
    (gf,) = torch.autograd.grad(sol.X[:, -1].sum(), leaves["f"])       # the rollout's: d x_T / d f_t = A...
    assert torch.isfinite(gf).all() and torch.allclose(gf[:, -1], torch.ones_like(gf[:, -1]))


@pytest.mark.parametrize("overflow", ["F", "x0", "C"])
def test_a_problem_that_overflows_is_not_finite_with_no_nan_and_the_others_are_solved(overflow):
    p, lower, upper = _problem(B=3, seed=4)
    bad = {k: v.clone() for k, v in p.items()}
    bad[overflow][1] *= 1e200 if overflow == "F" else 1e300     # its rollout, its cost or its adjoint overflows
    leaves = {k: v.requires_grad_(True) for k, v in bad.items()}
    sol = _solve(leaves, lower, upper)
    assert sol.status.tolist()[1] == trajopt.Status.NOT_FINITE and sol.cost[1] == torch.inf
    assert all(torch.isfinite(z).all() for z in (sol.X, sol.U, sol.K, sol.k))
    grads = torch.autograd.grad(sol.U.sum() + sol.X.sum(), [leaves[k] for k in ("F", "c", "x0")])
    assert all((g[1] == 0).all() for g in grads)                     # no gradient through the lost problem
    keep = [0, 2]
    ref_leaves = {k: v[keep].clone().requires_grad_(True) for k, v in p.items()}
    ref = _solve(ref_leaves, lower[keep], upper[keep])
    assert (sol.status[keep] == ref.status).all()
    torch.testing.assert_close(sol.U[keep], ref.U, rtol=0, atol=1e-12)
    ref_grads = torch.autograd.grad(ref.U.sum() + ref.X.sum(), [ref_leaves[k] for k in ("F", "c", "x0")])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g[keep], r, rtol=1e-10, atol=1e-12)


def test_float32_behaves_like_float64_to_its_precision():
    p, lower, upper = _problem(seed=5)
    p32 = {k: v.float() for k, v in p.items()}
    s64 = _solve(p, lower, upper, grad=None)
    s32 = _solve(p32, lower.float(), upper.float(), grad=None)
    assert s32.converged.all() and s32.U.dtype == torch.float32
    torch.testing.assert_close(s32.U.double(), s64.U, rtol=0, atol=1e-4)


def test_active_set_iterations_and_the_interior_point_alone_reach_the_same_solution():
    """The active-set iterations from the unbounded solution, the interior point alone (``active_set=0``) and one
    active-set solve followed by the interior point all return the solution Clarabel finds; an active-set solve
    counts as an iteration."""
    from trajopt._core.interior_point import interior_point, unbounded
    p, lower, upper = _problem(B=4, seed=7)
    args = [p[k] for k in ("F", "f", "C", "c", "x0", "C_final", "c_final")]
    X, U, *_ = unbounded(*args)
    outs = {k: interior_point(*args, lower, upper, U, X, tol=1e-8, max_iter=100, active_set=k) for k in (10, 0, 1)}
    for k, out in outs.items():
        assert out.converged.all() and out.finite.all() and (out.iterations >= 1).all(), k
        assert (out.U >= lower).all() and (out.U <= upper).all()
    assert (outs[10].iterations <= 10).all() and (outs[0].iterations > outs[10].iterations).any()
    for k in (0, 1):
        torch.testing.assert_close(outs[k].U, outs[10].U, rtol=0, atol=1e-9)
        torch.testing.assert_close(outs[k].fixed, outs[10].fixed)
    for b in range(2):
        torch.testing.assert_close(outs[0].U[b], _clarabel(p, b, lower, upper), rtol=0, atol=1e-8)


def test_float32_certifies_small_well_conditioned_problems_as_float64_does():
    """A held-out check once found 94 of 800 such float32 problems ending MAX_ITER with costlier controls (the
    float32 projected gradient's rounding above the scaled tolerance); float64 converges on all of them."""
    g = torch.Generator().manual_seed(0)
    B, T, n, m = 160, 5, 3, 4
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)      # noqa: E731
    C = r(B, T, n + m, n + m)
    C = C @ C.mT
    F = torch.cat([torch.eye(n, dtype=torch.float64) + 0.2 * r(B, T, n, n), r(B, T, n, m)], -1)
    c, x0 = r(B, T, n + m), r(B, n)
    lo = -torch.rand(B, T, m, generator=g, dtype=torch.float64)
    hi = torch.rand(B, T, m, generator=g, dtype=torch.float64)
    s64 = trajopt.lqr(F, None, C, c, x0, u_lower=lo, u_upper=hi, grad=None)
    s32 = trajopt.lqr(F.float(), None, C.float(), c.float(), x0.float(), u_lower=lo.float(), u_upper=hi.float(),
                      grad=None)
    assert s64.converged.all() and s32.converged.all()
    torch.testing.assert_close(s32.cost.double(), s64.cost, rtol=1e-4, atol=1e-5)
