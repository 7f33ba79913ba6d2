import numpy as np
import pytest
import scipy.linalg
import torch

import trajopt
from trajopt.problems import reference as problems
from tests.conftest import p1_tensors
from trajopt._core.riccati import augment, riccati, use_elimination

ARGS = ("F", "f", "C", "c", "x0")


def solve(t, **kw):
    return trajopt.lqr(*(t[k] for k in ARGS), **kw)


# m <= 4 takes the unrolled elimination stage, larger m the Cholesky stage.
@pytest.mark.parametrize("B,T,n,m", [(3, 20, 8, 3), (20, 20, 8, 3), (2, 15, 32, 8), (16, 10, 4, 1)])
def test_lqr_matches_dense_kkt(B, T, n, m):
    t, p = p1_tensors(B, T, n, m, seed=B + T)
    X_ref, U_ref = problems.lqr_reference(p)
    sol = solve(t)
    assert sol.X.shape == (B, T + 1, n) and sol.U.shape == (B, T, m)
    np.testing.assert_allclose(sol.X[:, :T].numpy(), X_ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(sol.U.numpy(), U_ref, atol=1e-9, rtol=0)


def test_lqr_cost_and_final_state_follow_the_solution():
    t, p = p1_tensors(4, 12, 5, 2)
    sol = solve(t)
    X_ref, U_ref = problems.lqr_reference(p)
    tau = np.concatenate([X_ref, U_ref], -1)
    cost_ref = 0.5 * np.einsum("bti,btij,btj->b", tau, p["C"], tau) + np.einsum("bti,bti->b", p["c"], tau)
    np.testing.assert_allclose(sol.cost.numpy(), cost_ref, rtol=1e-10)
    np.testing.assert_allclose(trajopt.lqr_cost(sol.X, sol.U, t["C"], t["c"]).numpy(), cost_ref, rtol=1e-10)
    xT = np.einsum("bij,bj->bi", p["F"][:, -1], tau[:, -1]) + p["f"][:, -1]
    np.testing.assert_allclose(sol.X[:, -1].numpy(), xT, atol=1e-10)


def test_lqr_gains_reproduce_the_controls():
    t, _ = p1_tensors(5, 10, 6, 2)
    sol = solve(t)
    U = (sol.K @ sol.X[:, :-1].unsqueeze(-1)).squeeze(-1) + sol.k
    torch.testing.assert_close(U, sol.U, atol=1e-12, rtol=0)


@pytest.mark.parametrize("B", [2, 24])
def test_both_riccati_stages_agree(B):
    t, _ = p1_tensors(B, 15, 6, 3)
    zeros = torch.zeros(B, 6, 6, dtype=torch.float64), torch.zeros(B, 6, dtype=torch.float64)
    Fh, Ch, VTh = augment(t["F"], t["f"], t["C"], t["c"], *zeros)
    K1, V1, Q1, pd1 = riccati(Fh, Ch, VTh, elimination=True, keep=True)
    K2, V2, Q2, pd2 = riccati(Fh, Ch, VTh, elimination=False, keep=True)
    assert pd1.all() and pd2.all()
    torch.testing.assert_close(K1, K2, atol=1e-11, rtol=0)
    torch.testing.assert_close(V1, V2, atol=1e-10, rtol=0)
    assert use_elimination(3) and not use_elimination(8)


def test_lqr_terminal_cost_matches_dense_kkt():
    """A terminal cost on x_T equals one more stage whose state is costed and control is free-but-cheap."""
    rng = np.random.default_rng(3)
    B, T, n, m = 3, 8, 4, 2
    t, p = p1_tensors(B, T, n, m)
    L = rng.standard_normal((B, n, n))
    Cf = L @ L.transpose(0, 2, 1) + np.eye(n)
    cf = rng.standard_normal((B, n))
    sol = trajopt.lqr(*(t[k] for k in ARGS), C_final=torch.tensor(Cf), c_final=torch.tensor(cf))
    # dense reference: append a stage T with C = blkdiag(Cf, I), c = [cf, 0], which makes u_T = 0.
    q = dict(p)
    C_ext = np.zeros((B, 1, n + m, n + m))
    C_ext[:, 0, :n, :n], C_ext[:, 0, n:, n:] = Cf, np.eye(m)
    c_ext = np.concatenate([cf, np.zeros((B, m))], -1)[:, None]
    q["C"] = np.concatenate([p["C"], C_ext], 1)
    q["c"] = np.concatenate([p["c"], c_ext], 1)
    q["F"] = np.concatenate([p["F"], p["F"][:, -1:]], 1)
    q["f"] = np.concatenate([p["f"], p["f"][:, -1:]], 1)
    X_ref, U_ref = problems.lqr_reference(q)
    np.testing.assert_allclose(sol.X.numpy(), X_ref, atol=1e-9)
    np.testing.assert_allclose(sol.U.numpy(), U_ref[:, :T], atol=1e-9)


def test_lqr_first_gain_matches_discrete_riccati_equation():
    rng = np.random.default_rng(0)
    n, m, T = 4, 2, 400
    A = np.eye(n) + 0.1 * rng.standard_normal((n, n))
    Bm = rng.standard_normal((n, m))
    Q = np.diag(rng.uniform(0.5, 2.0, n))
    R = np.diag(rng.uniform(0.5, 2.0, m))
    P = scipy.linalg.solve_discrete_are(A, Bm, Q, R)
    K_dare = -np.linalg.solve(R + Bm.T @ P @ Bm, Bm.T @ P @ A)
    F = torch.tensor(np.concatenate([A, Bm], 1)).expand(T, n, n + m)
    C = torch.tensor(scipy.linalg.block_diag(Q, R)).expand(T, n + m, n + m)
    sol = trajopt.lqr(F, None, C, None, torch.ones(n, dtype=torch.float64))
    np.testing.assert_allclose(sol.K[0].numpy(), K_dare, atol=1e-8, rtol=0)


def test_unbatched_and_shared_inputs_broadcast():
    t, _ = p1_tensors(3, 10, 4, 2)
    sol = solve(t)
    single = trajopt.lqr(t["F"][1], t["f"][1], t["C"][1], t["c"][1], t["x0"][1])
    assert single.X.shape == (11, 4) and single.cost.shape == ()
    torch.testing.assert_close(single.U, sol.U[1], atol=1e-12, rtol=0)
    shared = trajopt.lqr(t["F"][0], t["f"][0], t["C"][0], t["c"][0], t["x0"])  # one problem, three starts
    for b in range(3):
        one = trajopt.lqr(t["F"][0], t["f"][0], t["C"][0], t["c"][0], t["x0"][b])
        torch.testing.assert_close(shared.U[b], one.U, atol=1e-12, rtol=0)


def test_lqr_float32_is_finite_and_close():
    t, _ = p1_tensors(20, 30, 8, 3)
    t32 = {k: v.float() for k, v in t.items()}
    sol32, sol64 = solve(t32), solve(t)
    assert sol32.U.dtype == torch.float32 and torch.isfinite(sol32.U).all()
    torch.testing.assert_close(sol32.U.double(), sol64.U, atol=1e-3, rtol=1e-3)


def _loss(t_args, grad, w):
    F, f, C, c, x0, Cf, cf = t_args
    sol = trajopt.lqr(F, f, C, c, x0, C_final=Cf, c_final=cf, grad=grad)
    return (sol.X * w[0]).sum() + (sol.U * w[1]).sum() + sol.cost.sum()


def _grad_inputs(B, T=4, n=3, m=2, seed=1):
    t, _ = p1_tensors(B, T, n, m, seed=seed)
    g = torch.Generator().manual_seed(seed)
    L = torch.randn(B, n, n, generator=g, dtype=torch.float64)
    args = [t[k] for k in ARGS] + [L @ L.mT + torch.eye(n, dtype=torch.float64),
                                   torch.randn(B, n, generator=g, dtype=torch.float64)]
    w = (torch.randn(B, T + 1, n, generator=g, dtype=torch.float64),
         torch.randn(B, T, m, generator=g, dtype=torch.float64))
    return [a.clone().requires_grad_() for a in args], w


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
@pytest.mark.parametrize("B,m", [(2, 2), (3, 5)])
def test_lqr_gradcheck_every_input(grad, B, m):
    args, w = _grad_inputs(B, m=m)
    assert torch.autograd.gradcheck(lambda *a: _loss(a, grad, w), args)


@pytest.mark.parametrize("B,m", [(3, 3), (32, 3), (4, 6)])
def test_implicit_gradients_equal_unrolled_ones(B, m):
    args, w = _grad_inputs(B, T=20, n=8, m=m, seed=5)
    g_imp = torch.autograd.grad(_loss(args, "implicit", w), args)
    g_unr = torch.autograd.grad(_loss(args, "unroll", w), args)
    for name, a, b in zip(ARGS + ("C_final", "c_final"), g_imp, g_unr):
        assert (a - b).abs().max() <= 1e-9 * max(1.0, b.abs().max()), name


def test_implicit_gradient_reaches_shared_inputs():
    args, w = _grad_inputs(3)
    shared_F = args[0][0].detach().clone().requires_grad_()
    loss = _loss([shared_F] + args[1:], "implicit", w)
    (g,) = torch.autograd.grad(loss, shared_F)
    assert g.shape == shared_F.shape
    assert torch.autograd.gradcheck(lambda F: _loss([F] + [a.detach() for a in args[1:]], "implicit", w),
                                    (shared_F,))


def test_grad_none_builds_no_graph_and_gains_are_constant_in_implicit_mode():
    args, _ = _grad_inputs(2)
    sol = trajopt.lqr(*args[:5], grad=None)
    assert not sol.X.requires_grad and not sol.cost.requires_grad
    sol = trajopt.lqr(*args[:5])
    assert sol.X.requires_grad and not sol.K.requires_grad
    sol = trajopt.lqr(*args[:5], grad="unroll")
    assert sol.K.requires_grad


# ------------------------------------------------------------------ bad input
def _good():
    t, _ = p1_tensors(2, 5, 3, 2)
    return dict(F=t["F"], f=t["f"], C=t["C"], c=t["c"], x0=t["x0"])


@pytest.mark.parametrize("name,value,match", [
    ("F", torch.zeros(5, 3), r"F has shape \(5, 3\); expected \(B, T, n, n\+m\) or \(T, n, n\+m\)"),
    ("F", torch.zeros(2, 5, 3, 3), r"n\+m must exceed n=3"),
    ("f", torch.zeros(2, 4, 3), r"f has shape \(2, 4, 3\); expected \(B, T, n\) = \(B, 5, 3\)"),
    ("C", torch.zeros(2, 5, 5, 4), r"C has shape .*expected \(B, T, n\+m, n\+m\) = \(B, 5, 5, 5\)"),
    ("c", torch.zeros(2, 5, 4), r"c has shape .*\(B, T, n\+m\) = \(B, 5, 5\)"),
    ("x0", torch.zeros(2, 4), r"x0 has shape \(2, 4\); expected \(B, n\) = \(B, 3\)"),
    ("x0", torch.zeros(3, 3), r"batch sizes differ: F has B=2, x0 has B=3"),
])
def test_lqr_rejects_wrong_shapes(name, value, match):
    args = _good()
    args[name] = value.double()
    with pytest.raises(ValueError, match=match):
        trajopt.lqr(**args)


def test_lqr_rejects_mismatched_dtype_and_non_tensors():
    args = _good()
    args["C"] = args["C"].float()
    with pytest.raises(TypeError, match="C has dtype torch.float32 but F has torch.float64"):
        trajopt.lqr(**args)
    args = _good()
    args["x0"] = args["x0"].numpy()
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        trajopt.lqr(**args)
    args = _good()
    args["F"] = args["F"].long()
    with pytest.raises(TypeError, match="F must be float32 or float64"):
        trajopt.lqr(**args)


@pytest.mark.parametrize("name", ["F", "f", "C", "c", "x0"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_lqr_rejects_nan_and_inf(name, bad):
    args = _good()
    args[name] = args[name].clone()
    args[name].view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
        trajopt.lqr(**args)


@pytest.mark.parametrize("m", [2, 5])
def test_lqr_reports_indefinite_control_hessian(m):
    t, _ = p1_tensors(3, 5, 3, m)
    C = t["C"].clone()
    C[1, 2, 3:, 3:] = -torch.eye(m, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"not positive definite at stage t=2 for batch element\(s\) \[1\]"):
        trajopt.lqr(t["F"], t["f"], C, t["c"], t["x0"])


def test_lqr_rejects_unknown_grad_mode():
    with pytest.raises(ValueError, match="grad must be"):
        trajopt.lqr(**_good(), grad="adjoint")


def test_unroll_with_large_batch_and_some_inputs_without_grad():
    """Stages without a graph (x0) and with one (later states) are collected together correctly."""
    t, _ = p1_tensors(1100, 3, 4, 2)
    F = t["F"].clone().requires_grad_()
    sol = trajopt.lqr(F, t["f"], t["C"], t["c"], t["x0"], grad="unroll")
    ref = trajopt.lqr(t["F"], t["f"], t["C"], t["c"], t["x0"], grad=None)
    torch.testing.assert_close(sol.X.detach(), ref.X, atol=1e-12, rtol=0)
    assert sol.X.requires_grad
    (g_unroll,) = torch.autograd.grad(sol.X.square().sum(), F)
    implicit = trajopt.lqr(F, t["f"], t["C"], t["c"], t["x0"])
    (g_implicit,) = torch.autograd.grad(implicit.X.square().sum(), F)
    torch.testing.assert_close(g_unroll, g_implicit, atol=1e-9, rtol=1e-9)


def test_implicit_route_refuses_double_backward():
    args, w = _grad_inputs(2)
    (gc,) = torch.autograd.grad(_loss(args, "implicit", w), args[3], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(gc.sum(), args[2])


def _qp_reference(F, f, C, c, x0, lower, upper):
    """The bounded LQR of problem 0 as a QP solved by Clarabel through cvxpy at tight tolerance: ``U (T, m)``."""
    cp = pytest.importorskip("cvxpy")
    T, n, nm = F.shape[0], F.shape[1], F.shape[2]
    m = nm - n
    X, U = cp.Variable((T + 1, n)), cp.Variable((T, m))
    objective, constraints = 0, [X[0] == x0]
    for t in range(T):
        tau = cp.hstack([X[t], U[t]])
        Ct = 0.5 * (C[t] + C[t].T)
        objective += 0.5 * cp.quad_form(tau, cp.psd_wrap(Ct)) + c[t] @ tau
        constraints += [X[t + 1] == F[t] @ tau + f[t], U[t] >= lower[t], U[t] <= upper[t]]
    cp.Problem(cp.Minimize(objective), constraints).solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                                                           tol_feas=1e-12)
    return torch.tensor(U.value)


def test_lqr_with_control_bounds_matches_a_qp_solver_and_its_gradient_central_differences(p1):
    t, _ = p1_tensors(B=3, T=12, n=4, m=2, seed=3)
    upper = torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64).view(3, 1, 1).expand(3, 12, 2).clone()
    upper[:, :3] = 0.1                                                  # per problem and per stage
    F, f, C, c, x0 = (t[k] for k in ("F", "f", "C", "c", "x0"))
    sol = trajopt.lqr(F, f, C, c, x0, u_lower=-upper, u_upper=upper, grad=None)
    assert sol.converged.all() and (sol.U.abs() <= upper).all() and (sol.U.abs() == upper).any()
    for b in range(3):
        ref = _qp_reference(*(z[b].numpy() for z in (F, f, C, c, x0)), -upper[b].numpy(), upper[b].numpy())
        torch.testing.assert_close(sol.U[b], ref, rtol=0, atol=1e-6)
    unbounded = trajopt.lqr(F, f, C, c, x0, u_lower=-1e9, u_upper=1e9, grad=None)
    torch.testing.assert_close(unbounded.U, trajopt.lqr(F, f, C, c, x0).U, rtol=0, atol=1e-9)
    # gradients reach the caller's F, C, c through the implicit route
    F, C, c = (z.clone().requires_grad_(True) for z in (F, C, c))
    weights = torch.linspace(-1, 1, 3 * 12 * 2, dtype=torch.float64).view(3, 12, 2)
    sol = trajopt.lqr(F, f, C, c, x0, u_lower=-upper, u_upper=upper)
    gF, gC, gc = torch.autograd.grad((sol.U * weights).sum(), [F, C, c])
    assert gF.is_contiguous() and gC.is_contiguous()              # laid out as the tensors (.view(-1) works)
    for tensor, grad, index in ((F, gF, (1, 4, 2, 5)), (C, gC, (2, 6, 1, 1)), (c, gc, (0, 8, 4))):
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                tensor[index] += sign * 1e-6
                values.append(float((trajopt.lqr(F, f, C, c, x0, u_lower=-upper, u_upper=upper, grad=None).U
                                     * weights).sum()))
                tensor[index] -= sign * 1e-6
        assert float(grad[index]) == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("bad, named", [("nan_U", "lqr_cost: U contains NaN or Inf"), ("short_X", "lqr_cost: X has shape"),
                                        ("wide_X", r"lqr_cost: C has shape .* \(n\+m = 6 from X and U: this argument"),
                                        ("max_iter", "lqr: max_iter must be an int")])
def test_lqr_cost_and_lqr_refuse_bad_input_by_name(bad, named):
    P = trajopt.problems.random_lqr(B=2, T=5, n=3, m=2)
    sol = trajopt.lqr(P["F"], P["f"], P["C"], P["c"], P["x0"])
    torch.testing.assert_close(trajopt.lqr_cost(sol.X, sol.U, P["C"], P["c"]), sol.cost, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=named):
        if bad == "max_iter":
            trajopt.lqr(P["F"], P["f"], P["C"], P["c"], P["x0"], max_iter=1.7)
        else:
            X, U = {"nan_U": (sol.X, sol.U * float("nan")), "short_X": (sol.X[:, :-1], sol.U),
                    "wide_X": (torch.cat([sol.X, sol.X[..., :1]], -1), sol.U)}[bad]
            trajopt.lqr_cost(X, U, P["C"], P["c"])


# ----------------------------------------------------------------------------- parallel in time
@pytest.mark.parametrize("B,T,n,m", [(1, 50, 8, 3), (3, 37, 8, 3), (2, 16, 32, 8), (4, 1, 3, 1)])
def test_time_parallel_equals_the_sequential_recursion_and_the_dense_kkt(B, T, n, m):
    t, p = p1_tensors(B, T, n, m, seed=T)
    X_ref, U_ref = problems.lqr_reference(p)
    seq, par = solve(t), solve(t, time_parallel=True)
    np.testing.assert_allclose(par.U.numpy(), U_ref, atol=1e-9, rtol=0)
    np.testing.assert_allclose(par.X[:, :T].numpy(), X_ref, atol=1e-9, rtol=0)
    for name in ("X", "U", "K", "k"):
        a, b = getattr(seq, name), getattr(par, name)
        assert (a - b).abs().max() <= 1e-10 * max(1.0, float(a.abs().max())), name
    assert (seq.cost - par.cost).abs().max() <= 1e-10 * float(seq.cost.abs().max())


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_time_parallel_gradients_equal_the_sequential_ones(grad):
    args, w = _grad_inputs(3, T=50, n=8, m=3, seed=7)

    def loss(a, parallel):
        F, f, C, c, x0, Cf, cf = a
        sol = trajopt.lqr(F, f, C, c, x0, C_final=Cf, c_final=cf, grad=grad, time_parallel=parallel)
        return (sol.X * w[0]).sum() + (sol.U * w[1]).sum() + sol.cost.sum()

    g_seq = torch.autograd.grad(loss(args, False), args)
    g_par = torch.autograd.grad(loss(args, True), args)
    for name, a, b in zip(ARGS + ("C_final", "c_final"), g_seq, g_par):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, float(a.abs().max())), name


def test_time_parallel_gradcheck_every_input():
    args, w = _grad_inputs(2, T=6, m=2)
    assert torch.autograd.gradcheck(
        lambda F, f, C, c, x0, Cf, cf: trajopt.lqr(F, f, C, c, x0, C_final=Cf, c_final=cf, time_parallel=True).X
        .mul(w[0]).sum(), args)


def test_time_parallel_falls_back_where_the_control_cost_is_singular():
    """The scan needs every C_uu positive definite; a problem with C_uu = 0 but Q_uu positive definite (the value
    function's curvature makes the controls' cost convex) is solved by the sequential recursion."""
    t, _ = p1_tensors(2, 10, 4, 2, seed=3)
    C = t["C"].clone()
    C[1, 4, 4:, 4:] = 0.0
    Cf = 10.0 * torch.eye(4, dtype=torch.float64)
    seq = trajopt.lqr(t["F"], t["f"], C, t["c"], t["x0"], C_final=Cf)
    par = trajopt.lqr(t["F"], t["f"], C, t["c"], t["x0"], C_final=Cf, time_parallel=True)
    assert torch.isfinite(par.U).all()
    assert (seq.U - par.U).abs().max() <= 1e-10


def test_time_parallel_float32_matches_float64():
    t, _ = p1_tensors(4, 50, 8, 3, seed=2)
    t32 = {k: v.float() for k, v in t.items()}
    a, b = solve(t, time_parallel=True), solve(t32, time_parallel=True)
    assert b.U.dtype == torch.float32
    assert (a.U - b.U.double()).abs().max() <= 1e-3 * float(a.U.abs().max())


def test_time_parallel_must_be_a_bool():
    with pytest.raises(TypeError, match="time_parallel must be a bool"):
        trajopt.lqr(**_good(), time_parallel="yes")


def test_compiled_lqr_equals_eager_in_solution_and_gradients():
    """compile=True (torch.compile of the whole solve and its adjoint) against the eager path, float64 (the
    sequential recursion: each compile costs tens of seconds here; the benchmark compares the parallel one)."""
    args, w = _grad_inputs(1, T=4, n=3, m=2, seed=11)

    def run(parallel, compile):
        a = [z.detach().clone().requires_grad_() for z in args]
        F, f, C, c, x0, Cf, cf = a
        sol = trajopt.lqr(F, f, C, c, x0, C_final=Cf, c_final=cf, time_parallel=parallel, compile=compile)
        loss = (sol.X * w[0]).sum() + (sol.U * w[1]).sum() + sol.cost.sum()
        return (sol.X, sol.U, sol.cost, *torch.autograd.grad(loss, a))

    for a, b in zip(run(False, False), run(False, True)):
        a, b = a.detach(), b.detach()
        assert (a - b).abs().max() <= 1e-10 * max(1.0, float(a.abs().max()))
