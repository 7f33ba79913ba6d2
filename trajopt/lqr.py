"""Batched finite-horizon time-varying LQR with an analytic adjoint backward pass.

For every problem in a batch, solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t]

(the convention of mpc.pytorch, Amos et al. 2018, "Differentiable MPC for End-to-end
Planning and Control", with an optional terminal term) by a backward Riccati
recursion and a forward rollout with ``u_t = K_t x_t + k_t``.

The recursion runs in homogeneous coordinates ``[x; 1]`` so that the quadratic
and linear parts of the value function update in one product per stage, and the
closed-loop rollout is one product per stage. The gradient of a loss on the
solution is the solution of a second LQR with the same ``F``, ``C`` and the
incoming gradients as its linear terms (Amos et al. 2018, section 4); it reuses
the gains of the forward solve, so a backward pass costs less than a forward one.

Differentiable with respect to: ``F, f, C, c, x0, C_final, c_final`` (``X``, ``U``
and ``cost``; the gains ``K``, ``k`` are differentiable only with ``grad="unroll"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamics._validation import check_consistent, check_tensor
from .problem import Solution

__all__ = ["lqr"]


def lqr(
    F: torch.Tensor,
    f: torch.Tensor | None,
    C: torch.Tensor,
    c: torch.Tensor | None,
    x0: torch.Tensor,
    *,
    C_final: torch.Tensor | None = None,
    c_final: torch.Tensor | None = None,
    grad: str | None = "implicit",
) -> Solution:
    """Solve a batch of time-varying LQR problems.

    Every argument may carry a leading batch dimension ``B`` or not; those
    without one are shared by the whole batch. The output is unbatched only when
    no argument is batched.

    Args:
        F: dynamics ``(B, T, n, n+m)``: ``x_{t+1} = F_t [x_t; u_t] + f_t``.
        f: dynamics offset ``(B, T, n)``, or None for zero.
        C: stage cost Hessians ``(B, T, n+m, n+m)``; only the symmetric part counts.
        c: stage cost gradients ``(B, T, n+m)``, or None for zero.
        x0: initial states ``(B, n)``.
        C_final: terminal cost Hessian ``(B, n, n)`` on ``x_T``, or None for zero.
        c_final: terminal cost gradient ``(B, n)``, or None for zero.
        grad: ``"implicit"`` (analytic adjoint, the default), ``"unroll"``
            (autograd through the recursion) or None (no graph is built).

    Returns:
        ``Solution`` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``,
        ``K (B, T, m, n)``, ``k (B, T, m)``, ``converged`` all True, ``iterations=1``.

    Raises:
        ValueError: wrong shapes, mismatched batch sizes, NaN/Inf in an input, or a
            control Hessian ``Q_uu`` of the Riccati recursion that is not positive definite.
        TypeError: a non-tensor or non-float input, or mismatched dtypes.

    Differentiable with respect to: F, f, C, c, x0, C_final, c_final.
    """
    where = "lqr"
    if grad not in ("implicit", "unroll", None):
        raise ValueError(f"{where}: grad must be 'implicit', 'unroll' or None, got {grad!r}")
    dims: dict[str, int] = {}
    F = check_tensor(where, "F", F, ("T", "n", "n+m"), dims)
    n, T = dims["n"], dims["T"]
    m = dims["n+m"] - n
    if m < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; its last dimension n+m must exceed n={n}")
    if T < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; the horizon T must be at least 1")
    inputs = {
        "F": F,
        "f": None if f is None else check_tensor(where, "f", f, ("T", "n"), dims),
        "C": check_tensor(where, "C", C, ("T", "n+m", "n+m"), dims),
        "c": None if c is None else check_tensor(where, "c", c, ("T", "n+m"), dims),
        "x0": check_tensor(where, "x0", x0, ("n",), dims),
        "C_final": None if C_final is None else check_tensor(where, "C_final", C_final, ("n", "n"), dims),
        "c_final": None if c_final is None else check_tensor(where, "c_final", c_final, ("n",), dims),
    }
    ndims = {"F": 3, "f": 2, "C": 3, "c": 2, "x0": 1, "C_final": 2, "c_final": 1}
    batch = check_consistent(where, inputs, ndims)
    B = 1 if batch is None else batch

    def batched(name, shape):
        v = inputs[name]
        if v is None:
            return F.new_zeros((B, *shape))
        return v if v.ndim > ndims[name] else v.expand(B, *v.shape)

    args = (
        batched("F", (T, n, n + m)), batched("f", (T, n)), batched("C", (T, n + m, n + m)),
        batched("c", (T, n + m)), batched("x0", (n,)), batched("C_final", (n, n)), batched("c_final", (n,)),
    )
    with torch.set_grad_enabled(grad is not None and torch.is_grad_enabled()):
        if grad == "implicit":
            X, U, K, k, pd = _LQRFunction.apply(*args)
        else:
            X, U, K, k, pd = _solve(*args).outputs()
        _raise_if_not_pd(pd)
        cost = lqr_cost(X, U, *args[2:4], *args[5:])
    converged = torch.ones(B, dtype=torch.bool, device=F.device)
    if batch is None:
        X, U, cost, converged, K, k = X[0], U[0], cost[0], converged[0], K[0], k[0]
    return Solution(X=X, U=U, cost=cost, converged=converged, iterations=1, K=K, k=k)


def lqr_cost(X, U, C, c, C_final=None, c_final=None):
    """``sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t + 1/2 x_T' C_final x_T + c_final' x_T``, shape ``(B,)``.

    ``X (B, T+1, n)``, ``U (B, T, m)``, the rest as in :func:`lqr` (batched).
    Differentiable with respect to every argument.
    """
    tau = torch.cat([X[:, :-1], U], dim=-1)
    cost = 0.5 * torch.einsum("bti,btij,btj->b", tau, C, tau) + torch.einsum("bti,bti->b", c, tau)
    xT = X[:, -1]
    if C_final is not None:
        cost = cost + 0.5 * torch.einsum("bi,bij,bj->b", xT, C_final, xT)
    if c_final is not None:
        cost = cost + (c_final * xT).sum(-1)
    return cost


def _raise_if_not_pd(pd: torch.Tensor) -> None:
    if bool(pd.all()):
        return
    bad = (~pd).nonzero()
    t, b = int(bad[:, 0].max()), bad[bad[:, 0] == bad[:, 0].max(), 1].tolist()
    raise ValueError(
        f"lqr: C is not positive definite enough: Q_uu, the control block of C_t + F_t' V_{{t+1}} F_t, "
        f"is not positive definite at stage t={t} for batch element(s) {b[:8]}{'...' if len(b) > 8 else ''}; "
        "make the control block of C (C[..., n:, n:]) positive definite"
    )


# ----------------------------------------------------------------------------- internals
# Layout inside: time-major (T, B, ...) and contiguous, so that stage t is one
# contiguous batch; homogeneous coordinates ordered [x; 1; u] (n1 = n + 1).


def _augment(F, f, C, c, C_final, c_final):
    """Time-major homogeneous blocks: Fh (T,B,n+1,N), Ch (T,B,N,N), VTh (B,n+1,n+1), N = n+m+1."""
    B, T, n, nm = F.shape
    N = nm + 1
    one = F.new_zeros(N)
    one[n] = 1.0
    Fh = torch.cat([torch.cat([F[..., :n], f.unsqueeze(-1), F[..., n:]], -1), one.expand(B, T, 1, N)], -2)
    Cs = 0.5 * (C + C.mT)
    cx, cu = c[..., :n, None], c[..., n:, None]
    Ch = torch.cat([
        torch.cat([Cs[..., :n, :n], cx, Cs[..., :n, n:]], -1),
        torch.cat([cx.mT, F.new_zeros(B, T, 1, 1), cu.mT], -1),
        torch.cat([Cs[..., n:, :n], cu, Cs[..., n:, n:]], -1),
    ], -2)
    Cf = 0.5 * (C_final + C_final.mT)
    VTh = torch.cat([torch.cat([Cf, c_final.unsqueeze(-1)], -1),
                     torch.cat([c_final.unsqueeze(-2), F.new_zeros(B, 1, 1)], -1)], -2)
    return Fh.transpose(0, 1).contiguous(), Ch.transpose(0, 1).contiguous(), VTh


def _gauss_jordan(M: torch.Tensor, pivots: range):
    """Eliminate the columns ``pivots`` of a batched matrix ``M (..., r, c)``, pivoting on the diagonal.

    After the call, each pivot row ``j`` holds ``A^{-1}`` times the original rows
    (``A`` the pivot block), and every other row holds its Schur complement. The
    diagonal pivots are those of a Cholesky factorization of ``A``, so they are
    all positive exactly when ``A`` is positive definite; they are returned
    (one ``(..., 1, 1)`` tensor each) for that test. Unrolled over the pivots, each
    step is three batched element-wise operations, which beats a batched LAPACK
    call for the small control blocks of trajectory optimization at large batch.
    """
    eye = torch.eye(M.shape[-2], dtype=M.dtype, device=M.device)
    pivs = []
    for j in pivots:
        p = M[..., j:j + 1, j:j + 1]
        row = M[..., j:j + 1, :] / p
        col = M[..., :, j:j + 1] - eye[:, j:j + 1]
        M = torch.addcmul(M, col, row, value=-1.0)
        pivs.append(p)
    return M, pivs


def _use_elimination(B: int, m: int) -> bool:
    """Whether the unrolled Gauss-Jordan stage beats Cholesky (measured in benchmarks/lqr)."""
    return B >= 16 and m <= 4


def _riccati(Fh, Ch, VTh, elimination: bool):
    """Backward Riccati recursion in homogeneous coordinates.

    Returns gains ``Kh (T,B,m,n+1)`` (``u = Kh [x; 1]``), value matrices
    ``Vh (T+1,B,n+1,n+1)`` (``[[V, v], [v', .]]``), control Hessians ``Quu (T,B,m,m)``
    and ``pd (T,B)``, whether each ``Quu`` was positive definite.
    """
    T, B, n1, N = Fh.shape
    m = N - n1
    FhT = Fh.mT.contiguous()
    V = VTh
    Vs, Quus, Ks, Ys, Ls, oks = [V], [], [], [], [], []
    for t in range(T - 1, -1, -1):
        Q = torch.bmm(FhT[t], torch.bmm(V, Fh[t])) + Ch[t]
        Quus.append(Q[:, n1:, n1:])
        if elimination:
            Q, pivs = _gauss_jordan(Q, range(n1, N))
            Ks.append(-Q[:, n1:, :n1])
            oks.append(torch.cat(pivs, -1).flatten(1).gt(0).all(-1))
            V = Q[:, :n1, :n1]
        else:
            Qx, Qu = Q.split([n1, m], dim=1)
            L, info = torch.linalg.cholesky_ex(Qu[:, :, n1:])
            Y = torch.linalg.solve_triangular(L, Qu[:, :, :n1], upper=False)
            V = Qx[:, :, :n1] - Y.mT @ Y
            Ls.append(L)
            Ys.append(Y)
            oks.append(info == 0)
        Vs.append(V)
    if not elimination:
        L = torch.stack(Ls[::-1])
        Ks = -torch.linalg.solve_triangular(L.mT, torch.stack(Ys[::-1]), upper=True)
    else:
        Ks = torch.stack(Ks[::-1])
    return Ks, torch.stack(Vs[::-1]), torch.stack(Quus[::-1]), torch.stack(oks[::-1])


@dataclass
class _Solved:
    Fh: torch.Tensor     # (T,B,n1,N)
    Kh: torch.Tensor     # (T,B,m,n1)
    Vh: torch.Tensor     # (T+1,B,n1,n1)
    Quu: torch.Tensor    # (T,B,m,m)
    Acl: torch.Tensor    # (T,B,n1,n1) closed-loop dynamics in homogeneous coordinates
    Xh: torch.Tensor     # (T+1,B,n1,1)
    Uh: torch.Tensor     # (T,B,m,1)
    pd: torch.Tensor     # (T,B)

    def outputs(self):
        n = self.Xh.shape[2] - 1
        X = self.Xh[:, :, :n, 0].transpose(0, 1)
        U = self.Uh[..., 0].transpose(0, 1)
        K = self.Kh[..., :n].transpose(0, 1)
        k = self.Kh[..., n].transpose(0, 1)
        return X, U, K, k, self.pd


def _solve(F, f, C, c, x0, C_final, c_final) -> _Solved:
    B, T, n, nm = F.shape
    n1 = n + 1
    Fh, Ch, VTh = _augment(F, f, C, c, C_final, c_final)
    Kh, Vh, Quu, pd = _riccati(Fh, Ch, VTh, _use_elimination(B, nm - n))
    Acl = Fh[..., :n1] + Fh[..., n1:] @ Kh
    xh = torch.cat([x0, x0.new_ones(B, 1)], -1).unsqueeze(-1)
    Xh = [xh]
    for t in range(T):
        xh = torch.bmm(Acl[t], xh)
        Xh.append(xh)
    Xh = torch.stack(Xh)
    return _Solved(Fh, Kh, Vh, Quu, Acl, Xh, Kh @ Xh[:-1], pd)


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^{-1} b`` for a batch of small positive-definite ``A (..., m, m)``, ``b (..., m, 1)``."""
    m = A.shape[-1]
    M, _ = _gauss_jordan(torch.cat([A, b], -1), range(m))
    return M[..., m:]


class _LQRFunction(torch.autograd.Function):
    """LQR solve whose backward is the adjoint LQR of Amos et al. (2018), reusing the forward's gains."""

    @staticmethod
    def forward(ctx, F, f, C, c, x0, C_final, c_final):
        s = _solve(F, f, C, c, x0, C_final, c_final)
        ctx.save_for_backward(s.Fh, s.Kh, s.Vh, s.Quu, s.Acl, s.Xh, s.Uh)
        X, U, K, k, pd = s.outputs()
        ctx.mark_non_differentiable(K, k, pd)
        return X, U, K, k, pd

    @staticmethod
    def backward(ctx, dX, dU, dK, dk, dpd):
        Fh, Kh, Vh, Quu, Acl, Xh, Uh = ctx.saved_tensors
        T, B, n1, N = Fh.shape
        n = n1 - 1
        gX = dX.transpose(0, 1).unsqueeze(-1)            # (T+1,B,n,1)
        gU = dU.transpose(0, 1).unsqueeze(-1)            # (T,B,m,1)
        Kx = Kh[..., :n]                                 # (T,B,m,n)
        Bu = Fh[:, :, :n, n1:]                           # (T,B,n,m)
        A = Acl[:, :, :n, :n]                            # closed-loop A + B K
        AT = A.mT.contiguous()

        # adjoint value gradient: v_t = (A + B K)' v_{t+1} + g_x + K' g_u, v_T = g_T
        offset = gX[:-1] + Kx.mT @ gU
        v = gX[T]
        vs = [v]
        for t in range(T - 1, -1, -1):
            v = torch.baddbmm(offset[t], AT[t], v)
            vs.append(v)
        vs = torch.stack(vs[::-1])                       # (T+1,B,n,1)
        kt = -_spd_solve(Quu, gU + Bu.mT @ vs[1:])       # (T,B,m,1)

        # adjoint rollout from x~_0 = 0
        Bk = Bu @ kt
        xt = torch.zeros_like(vs[0])
        xs = [xt]
        for t in range(T):
            xt = torch.baddbmm(Bk[t], A[t], xt)
            xs.append(xt)
        xs = torch.stack(xs)                             # (T+1,B,n,1)
        ut = Kx @ xs[:-1] + kt

        # costates lambda_t = V_{t+1} x_{t+1} + v_{t+1}, t = 0..T-1, for both problems
        lam_t = Vh[1:, :, :n, :n] @ xs[1:] + vs[1:]
        lam = (Vh[1:] @ Xh[1:])[:, :, :n]
        tau = torch.cat([Xh[:-1, :, :n], Uh], 2)         # (T,B,n+m,1)
        tau_t = torch.cat([xs[:-1], ut], 2)

        def bf(x):  # time-major -> batch-first
            return x.transpose(0, 1)

        need = ctx.needs_input_grad
        dF = bf(lam_t @ tau.mT + lam @ tau_t.mT) if need[0] else None
        df = bf(lam_t[..., 0]) if need[1] else None
        dC = bf(0.5 * (tau_t @ tau.mT + tau @ tau_t.mT)) if need[2] else None
        dc = bf(tau_t[..., 0]) if need[3] else None
        dx0 = vs[0, :, :, 0] if need[4] else None
        xT, xtT = Xh[T, :, :n], xs[T]
        dCf = 0.5 * (xtT @ xT.mT + xT @ xtT.mT) if need[5] else None
        dcf = xtT[..., 0] if need[6] else None
        return dF, df, dC, dc, dx0, dCf, dcf
