"""Batched finite-horizon time-varying LQR with an analytic adjoint backward pass.

For every problem in a batch, solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t]

(the convention of mpc.pytorch, Amos et al. 2018, "Differentiable MPC for End-to-end
Planning and Control", with an optional terminal term) by a backward Riccati
recursion and a forward rollout with ``u_t = K_t x_t + k_t``.

The recursion runs in homogeneous coordinates ``[1; x; u]`` so that one pair of
products per stage updates the quadratic and linear parts of the value function
together, and the optimal cost is read off the value function at ``x0``. The
gradient of a loss on the solution is the solution of a second LQR with the same
``F``, ``C`` and the incoming gradients as its linear terms (Amos et al. 2018,
section 4); it reuses the gains of the forward solve, so a backward pass costs
two matrix-vector sweeps, less than a forward solve.

Differentiable with respect to: ``F, f, C, c, x0, C_final, c_final`` (``X``, ``U``
and ``cost``; the gains ``K``, ``k`` are differentiable only with ``grad="unroll"``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamics._validation import check_consistent, check_finite, check_tensor
from .problem import Solution

__all__ = ["lqr", "lqr_cost"]


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

    Differentiable with respect to: F, f, C, c, x0, C_final, c_final (once, on the implicit route;
    ``grad="unroll"`` supports higher-order derivatives).
    """
    where = "lqr"
    if grad not in ("implicit", "unroll", None):
        raise ValueError(f"{where}: grad must be 'implicit', 'unroll' or None, got {grad!r}")
    dims: dict[str, int] = {}
    F = check_tensor(where, "F", F, ("T", "n", "n+m"), dims, finite=False)
    n, T = dims["n"], dims["T"]
    m = dims["n+m"] - n
    if m < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; its last dimension n+m must exceed n={n}")
    if T < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; the horizon T must be at least 1")
    inputs = {
        "F": F,
        "f": None if f is None else check_tensor(where, "f", f, ("T", "n"), dims, finite=False),
        "C": check_tensor(where, "C", C, ("T", "n+m", "n+m"), dims, finite=False),
        "c": None if c is None else check_tensor(where, "c", c, ("T", "n+m"), dims, finite=False),
        "x0": check_tensor(where, "x0", x0, ("n",), dims, finite=False),
        "C_final": None if C_final is None else check_tensor(where, "C_final", C_final, ("n", "n"), dims, finite=False),
        "c_final": None if c_final is None else check_tensor(where, "c_final", c_final, ("n",), dims, finite=False),
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
            X, U, cost, K, k, pd = _LQRFunction.apply(*args)
        else:
            X, U, cost, K, k, pd = _solve(*args, keep=False).outputs()
    if not (bool(pd.all()) and bool(torch.isfinite(cost).all()) and bool(torch.isfinite(X).all())
            and bool(torch.isfinite(U).all())):
        # NaN/Inf anywhere in the inputs reaches the solution; only then pay for a scan that names it.
        check_finite(where, inputs)
        _raise_if_not_pd(pd)
        raise ValueError(f"{where}: the solution overflowed (inputs are finite; |X| or |U| exceeded the dtype's range)")
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
# Homogeneous coordinates ordered [1; x; u] (n1 = n + 1, N = n + m + 1), so that
# Fh = [[1, 0], [f, F]] and Ch = [[0, c'], [c, C]] hold F and C as contiguous
# blocks, and the quadratic form 1/2 [1; x]' Vh [1; x] is the cost-to-go (the
# optimal cost is read off Vh_0 at x0). Everything inside is time-major (T, B, ...),
# so that stage t is one contiguous batch; the layout change costs nothing extra, as
# the homogeneous blocks are copies anyway.


def _augment(F, f, C, c, C_final, c_final):
    """Homogeneous blocks Fh (T,B,n+1,N), Ch (T,B,N,N), VTh (B,n+1,n+1); only the symmetric part of C is used."""
    B, T, n, nm = F.shape
    Fh = F.new_empty(T, B, n + 1, nm + 1)
    Fh[..., 1:, 1:] = F.transpose(0, 1)
    Fh[..., 1:, 0] = f.transpose(0, 1)
    Fh[..., 0, :] = 0.0
    Fh[..., 0, 0] = 1.0
    Ch = _symmetric_padded(C.transpose(0, 1), c.transpose(0, 1))
    VTh = _symmetric_padded(C_final, c_final)
    return Fh, Ch, VTh


def _symmetric_padded(C, c):
    """``[[0, c'], [c, (C + C')/2]]`` in one pass over ``C`` when no graph is recorded."""
    out = C.new_empty(*C.shape[:-2], C.shape[-2] + 1, C.shape[-1] + 1)
    if torch.is_grad_enabled() and C.requires_grad:
        out[..., 1:, 1:] = torch.lerp(C, C.mT, 0.5)
    else:
        torch.lerp(C, C.mT, 0.5, out=out[..., 1:, 1:])
    out[..., 1:, 0] = c
    out[..., 0, 1:] = c
    out[..., 0, 0] = 0.0
    return out


class _Stages:
    """Collects one tensor per stage into a time-major ``(T, ...)`` tensor.

    Large stages with no graph to record are copied into one buffer while still
    in cache, so nothing else of the stage is kept alive; small ones (where a
    copy per stage costs more than one stack at the end) and ones on a graph
    (in-place writes would chain it) are stacked at the end.
    """

    BUFFER_MIN_NUMEL = 4096

    def __init__(self, T: int):
        self.T = T
        self.items: list = [None] * T
        self.buffer = None

    def put(self, t: int, x: torch.Tensor) -> None:
        if (torch.is_grad_enabled() and x.requires_grad) or x.numel() < self.BUFFER_MIN_NUMEL:
            self.items[t] = x
            return
        if self.buffer is None:
            self.buffer = x.new_empty((self.T, *x.shape))
        self.buffer[t] = x

    def get(self) -> torch.Tensor:
        if self.buffer is None:
            return torch.stack(self.items)
        if all(item is None for item in self.items):
            return self.buffer
        # some stages carry a graph and others not (e.g. x0 without grad, later states with)
        return torch.stack([self.buffer[t] if item is None else item for t, item in enumerate(self.items)])


def _gauss_jordan(M: torch.Tensor, col0: int, eye_cols=None):
    """Gauss-Jordan elimination of the rows of ``M (..., r, c)`` on the pivot block ``A = M[..., :, col0:col0+r]``.

    Returns ``A^{-1} M`` (so the pivot block becomes the identity) and the pivots,
    one ``(..., 1, 1)`` tensor each: they are those of a Cholesky factorization
    of ``A`` (squared), all positive exactly when ``A`` is positive definite.
    Unrolled over the ``r`` pivots, each step is three batched element-wise
    operations on a small tensor, which beats batched LAPACK calls for the small
    control blocks of trajectory optimization (no per-matrix call, no thread
    wake-up). ``eye_cols`` are the columns ``(r, 1)`` of the identity, if at hand.
    """
    r = M.shape[-2]
    if eye_cols is None:
        eye_cols = torch.eye(r, dtype=M.dtype, device=M.device).split(1, dim=1)
    pivs = []
    for i in range(r):
        row = M.narrow(-2, i, 1)
        p = row.narrow(-1, col0 + i, 1)
        M = torch.addcmul(M, M.narrow(-1, col0 + i, 1) - eye_cols[i], row / p, value=-1.0)
        pivs.append(p)
    return M, pivs


def _use_elimination(m: int) -> bool:
    """Whether the unrolled Gauss-Jordan stage beats LAPACK's Cholesky (measured in benchmarks/lqr)."""
    return m <= 4


def _riccati(Fh, Ch, VTh, elimination: bool, keep: bool):
    """Backward Riccati recursion in homogeneous coordinates.

    Returns gains ``Kh (T,B,m,n+1)`` (``u = Kh [1; x]``), value matrices
    ``Vh (T+1,B,n+1,n+1)`` (``[[2 s, v'], [v, V]]``; only ``Vh[:1]`` unless
    ``keep``), control Hessians ``Quu (T,B,m,m)`` (None unless ``keep``) and
    ``pd (T,B)``, whether each ``Quu`` was positive definite.
    """
    T, B, n1, N = Fh.shape
    m = N - n1
    V = VTh
    Ks, oks, Vs, Quus, Ls, Ys = _Stages(T), [], _Stages(T + 1), _Stages(T), _Stages(T), _Stages(T)
    eye_cols = torch.eye(m, dtype=Fh.dtype, device=Fh.device).split(1, dim=1)
    if keep:
        Vs.put(T, V)
    for t in range(T - 1, -1, -1):
        Ft = Fh[t]
        Q = torch.baddbmm(Ch[t], Ft.mT, torch.bmm(V, Ft))
        Qx, Qu = Q.split([n1, m], dim=1)
        if keep:
            Quus.put(t, Qu.narrow(2, n1, m))
        if elimination:
            R, pivs = _gauss_jordan(Qu, n1, eye_cols)    # [Quu^-1 Qux, I]
            G = R.narrow(2, 0, n1)
            Qxx, Qxu = Qx.split([n1, m], dim=2)
            V = torch.baddbmm(Qxx, Qxu, G, alpha=-1.0)
            Ks.put(t, G)
            oks.extend(pivs[::-1])
        else:
            Qux, Quu = Qu.split([n1, m], dim=2)
            L, info = torch.linalg.cholesky_ex(Quu)
            Y = torch.linalg.solve_triangular(L, Qux, upper=False)
            V = torch.baddbmm(Qx.narrow(2, 0, n1), Y.mT, Y, alpha=-1.0)
            Ls.put(t, L)
            Ys.put(t, Y)
            oks.append(info)
        if keep:
            Vs.put(t, V)
    if elimination:
        Kh = -Ks.get()
        pd = torch.cat(oks[::-1], -1).view(B, T, m).gt(0).all(-1).T
    else:
        Kh = -torch.linalg.solve_triangular(Ls.get().mT, Ys.get(), upper=True)
        pd = torch.stack(oks[::-1]) == 0
    Vh = Vs.get() if keep else V.unsqueeze(0)
    Quu = Quus.get() if keep else None
    return Kh, Vh, Quu, pd


def _step(Fh, Kh, xh, t):
    """``[1; x_{t+1}] = Fh_t [1; x_t; u_t]`` with ``u_t = Kh_t [1; x_t]``; also returns ``u_t (B, m, 1)``."""
    u = torch.bmm(Kh[t], xh)
    return torch.bmm(Fh[t], torch.cat([xh, u], 1)), u


@dataclass
class _Solved:
    Fh: torch.Tensor     # (T,B,n1,N)
    Kh: torch.Tensor     # (T,B,m,n1)
    Vh: torch.Tensor     # (T+1,B,n1,n1), or (1,B,n1,n1) unless kept
    Quu: torch.Tensor    # (T,B,m,m), or None unless kept
    Xh: torch.Tensor     # (T+1,B,n1,1)
    Uh: torch.Tensor     # (T,B,m,1)
    cost: torch.Tensor   # (B,)
    pd: torch.Tensor     # (T,B)

    def outputs(self):
        X = self.Xh[:, :, 1:, 0].transpose(0, 1)
        U = self.Uh[..., 0].transpose(0, 1)
        K = self.Kh[..., 1:].transpose(0, 1)
        k = self.Kh[..., 0].transpose(0, 1)
        return X, U, self.cost, K, k, self.pd


def _solve(F, f, C, c, x0, C_final, c_final, keep: bool = True) -> _Solved:
    """Forward solve; ``keep`` retains what the adjoint backward needs (Vh, Quu)."""
    B, T, n, nm = F.shape
    Fh, Ch, VTh = _augment(F, f, C, c, C_final, c_final)
    Kh, Vh, Quu, pd = _riccati(Fh, Ch, VTh, _use_elimination(nm - n), keep)
    xh = torch.cat([x0.new_ones(B, 1), x0], -1).unsqueeze(-1)
    cost = 0.5 * (xh.mT @ Vh[0] @ xh).view(B)
    Xh, Uh = _Stages(T + 1), _Stages(T)
    Xh.put(0, xh)
    for t in range(T):
        xh, u = _step(Fh, Kh, xh, t)
        Xh.put(t + 1, xh)
        Uh.put(t, u)
    return _Solved(Fh, Kh, Vh, Quu, Xh.get(), Uh.get(), cost, pd)


def lqr_with_costates(F, C, c, C_final, c_final):
    """The LQR with ``f = 0`` and ``x0 = 0`` (the shape of an adjoint system), not differentiable: ``X (B, T+1, n)``,
    ``U (B, T, m)`` and the costates ``lam (B, T+1, n)`` (the gradient of the optimal cost-to-go at ``x_t``, read
    off the value function: no extra sweep). Raises ``ValueError`` if some ``Q_uu`` is not positive definite."""
    B, T, n, _ = F.shape
    s = _solve(F, F.new_zeros(B, T, n), C, c, F.new_zeros(B, n), C_final, c_final, keep=True)
    _raise_if_not_pd(s.pd)
    X, U, *_ = s.outputs()
    return X, U, (s.Vh[:, :, 1:] @ s.Xh)[..., 0].transpose(0, 1)


def _spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^{-1} b`` for a batch of small positive-definite ``A (..., m, m)``, ``b (..., m, 1)``."""
    M, _ = _gauss_jordan(torch.cat([A, b], -1), 0)
    return M[..., A.shape[-1]:]


class _LQRFunction(torch.autograd.Function):
    """LQR solve whose backward is the adjoint LQR of Amos et al. (2018), reusing the forward's gains."""

    @staticmethod
    def forward(ctx, F, f, C, c, x0, C_final, c_final):
        s = _solve(F, f, C, c, x0, C_final, c_final, keep=any(ctx.needs_input_grad))
        ctx.save_for_backward(s.Fh, s.Kh, s.Vh, s.Quu, s.Xh, s.Uh)
        X, U, cost, K, k, pd = s.outputs()
        ctx.mark_non_differentiable(K, k, pd)
        return X, U, cost, K, k, pd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dX, dU, dcost, dK, dk, dpd):
        Fh, Kh, Vh, Quu, Xh, Uh = ctx.saved_tensors
        T, B, n1, N = Fh.shape
        n = n1 - 1
        gX = dX.transpose(0, 1).unsqueeze(-1)            # (T+1,B,n,1)
        gU = dU.transpose(0, 1).unsqueeze(-1)            # (T,B,m,1)
        Kx = Kh[..., 1:]                                 # (T,B,m,n)
        Ft = Fh[:, :, 1:, 1:]                            # (T,B,n,n+m)
        A, Bu = Ft[..., :n], Ft[..., n:]
        Acl = A + Bu @ Kx                                # closed loop A + B K, one batched product

        # The adjoint LQR has the same F, C (so the same gains K) and linear terms g = dL/dtau, f = 0,
        # x0 = 0. Its value gradient obeys v_t = (A + B K)_t' v_{t+1} + g_x,t + K_t' g_u,t, v_T = g_T.
        offset = gX[:-1] + Kx.mT @ gU
        v = gX[T]
        vs = _Stages(T + 1)
        vs.put(T, v)
        for t in range(T - 1, -1, -1):
            v = torch.baddbmm(offset[t], Acl[t].mT, v)
            vs.put(t, v)
        vs = vs.get()                                    # (T+1,B,n,1)
        kt = -_spd_solve(Quu, gU + Bu.mT @ vs[1:])       # (T,B,m,1)

        # adjoint rollout from x~_0 = 0 under u~_t = K_t x~_t + k~_t
        Bk = Bu @ kt
        xt = torch.zeros_like(vs[0])
        xs = _Stages(T + 1)
        xs.put(0, xt)
        for t in range(T):
            xt = torch.baddbmm(Bk[t], Acl[t], xt)
            xs.put(t + 1, xt)
        xs = xs.get()                                    # (T+1,B,n,1)
        ut = Kx @ xs[:-1] + kt

        # costates lambda_t = V_{t+1} x_{t+1} + v_{t+1}, t = -1..T-1, of the adjoint and the primal,
        # from one product with the homogeneous [0; x~] and [1; x]
        both = Vh @ torch.cat([torch.cat([torch.zeros_like(xs[..., :1, :]), xs], 2), Xh], -1)
        lam_t = both[1:, :, 1:, :1] + vs[1:]
        lam = both[:, :, 1:, 1:]                         # (T+1,B,n,1), lam[0] is lambda_{-1}
        tau = torch.cat([Xh[:-1, :, 1:], Uh], 2)         # (T,B,n+m,1)
        tau_t = torch.cat([xs[:-1], ut], 2)
        # the optimal cost's own gradient (envelope theorem): dJ/dC_t = tau tau'/2, dJ/dc_t = tau,
        # dJ/dF_t = lambda_t tau_t', dJ/df_t = lambda_t, dJ/dx0 = lambda_{-1}; folded in with weight dcost.
        w = dcost.view(1, B, 1, 1)
        lin_t = tau_t + w * tau                          # gradient of the linear terms
        lam_all = lam_t + w * lam[1:]

        def bf(x):  # time-major -> batch-first, contiguous (small vectors only)
            return x.transpose(0, 1).contiguous()

        # every matrix gradient is a sum of two outer products, written once, batch-first
        need = ctx.needs_input_grad
        dF = (bf(lam_all) * bf(tau).mT).addcmul_(bf(lam[1:]), bf(tau_t).mT) if need[0] else None
        df = bf(lam_all[..., 0]) if need[1] else None
        dC = None
        if need[2]:
            half, tau_b = bf(0.5 * tau_t + 0.25 * w * tau), bf(tau)      # dC = half tau' + tau half'
            dC = (half * tau_b.mT).addcmul_(tau_b, half.mT)
        dc = bf(lin_t[..., 0]) if need[3] else None
        dx0 = (vs[0] + w[0] * lam[0])[..., 0] if need[4] else None
        xT, xtT, wT = Xh[T, :, 1:], xs[T], w[0]
        halfT = 0.5 * xtT + 0.25 * wT * xT
        dCf = (halfT * xT.mT).addcmul_(xT, halfT.mT) if need[5] else None
        dcf = (xtT + wT * xT)[..., 0] if need[6] else None
        return dF, df, dC, dc, dx0, dCf, dcf


# ----------------------------------------------------------------------------- box-constrained LQR step
# The backward pass of box-constrained iLQR (Tassa, Mansard and Todorov 2014, "Control-limited differential
# dynamic programming"): at every stage a small box QP gives the feedforward step, and the feedback acts on the
# controls that are free at its solution.


def _spd_solve_small(A, b):
    """``A^{-1} b`` for ``A (B, m, m)`` symmetric and ``b (B, m, r)``, and whether each ``A`` is positive
    definite: unrolled elimination for small ``m`` (no LAPACK call per matrix, no thread wake-up),
    Cholesky otherwise."""
    m = A.shape[-1]
    if _use_elimination(m):
        M, pivots = _gauss_jordan(torch.cat([A, b], -1), 0)
        ok = torch.stack([p[..., 0, 0] > 0 for p in pivots], -1).all(-1)
        return M[..., m:], ok
    L, info = torch.linalg.cholesky_ex(A)
    return torch.cholesky_solve(b, L), info == 0


def box_qp(H, g, lower, upper, x0=None, rhs=None, max_iter: int = 50, tol: float = 1e-12):
    """Batched ``min_x 1/2 x' H x + g' x`` s.t. ``lower <= x <= upper`` by projected Newton.

    ``H (B, m, m)`` positive definite, ``g, lower, upper (B, m)`` (``lower <= 0 <= upper`` is not required,
    ``lower <= upper`` is). Returns ``x (B, m)``, the free mask ``(B, m)`` (components not clamped at the
    solution), ``ok (B,)`` (whether the free block is positive definite) and, when ``rhs (B, m, r)`` is
    given, ``-H_ff^{-1} rhs_f`` with zero rows on the clamped components (else None).
    """
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)

    def free_block(free):
        M = free.to(H.dtype)
        return H * M.unsqueeze(-1) * M.unsqueeze(-2) + eye * (1 - M).unsqueeze(-1), M

    x = torch.clamp(torch.zeros_like(g) if x0 is None else x0, lower, upper)
    for _ in range(max_iter):
        grad = (H @ x.unsqueeze(-1)).squeeze(-1) + g
        free = ~(((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0)))
        Hf, M = free_block(free)
        # Newton step on the free components, the clamped ones held where they are
        step, ok = _spd_solve_small(Hf, -(M * grad).unsqueeze(-1))
        step = step.squeeze(-1) * M
        # projected backtracking (Armijo) on the quadratic, batched
        f0 = 0.5 * (x * (H @ x.unsqueeze(-1)).squeeze(-1)).sum(-1) + (g * x).sum(-1)
        alpha = torch.ones_like(f0)
        for _ in range(30):
            cand = torch.clamp(x + alpha.unsqueeze(-1) * step, lower, upper)
            f = 0.5 * (cand * (H @ cand.unsqueeze(-1)).squeeze(-1)).sum(-1) + (g * cand).sum(-1)
            good = f <= f0 + 0.1 * (grad * (cand - x)).sum(-1)
            if bool(good.all()):
                break
            alpha = torch.where(good, alpha, 0.5 * alpha)
        new = torch.where((ok & good).unsqueeze(-1), cand, x)
        done = bool(((new - x).abs().amax(-1) <= tol * (1 + x.abs().amax(-1))).all())
        x = new
        if done:
            break
    grad = (H @ x.unsqueeze(-1)).squeeze(-1) + g
    free = ~(((x <= lower) & (grad > 0)) | ((x >= upper) & (grad < 0)))
    Hf, M = free_block(free)
    sol, ok = _spd_solve_small(Hf, (M.unsqueeze(-1) * rhs) if rhs is not None else M.unsqueeze(-1))
    return x, free, ok, (None if rhs is None else -sol * M.unsqueeze(-1))


def costates(F, C, c, C_final, c_final):
    """Adjoint pass of a linearized, quadratized trajectory: the gradient of the total cost with respect to
    the controls, with the states eliminated (open loop), and the costates.

    ``lam_T = c_final``, ``[lam_t; g_t] = c_t + F_t' lam_{t+1}`` (the Hessians are not needed and only their
    shapes are read). Returns ``g (B, T, m)`` and ``lam (B, T+1, n)``.
    """
    B, T, n, nm = F.shape
    FT, cT = F.transpose(0, 1), c.transpose(0, 1)
    lam, gs, lams = c_final, [None] * T, [None] * (T + 1)
    lams[T] = c_final
    for t in range(T - 1, -1, -1):
        p = torch.baddbmm(cT[t].unsqueeze(-1), FT[t].mT, lam.unsqueeze(-1)).squeeze(-1)
        lam, gs[t] = p[:, :n], p[:, n:]
        lams[t] = lam
    return torch.stack(gs, 1), torch.stack(lams, 1)


def box_lqr_backward(F, C, c, C_final, c_final, du_lower, du_upper, mu, gaps=None, dx0=None, nonconvex=None):
    """Backward pass of box-constrained iLQR on a linearized, quadratized problem in deltas.

    Args:
        F: ``(B, T, n, n+m)`` dynamics Jacobians; C, c: ``(B, T, n+m, n+m)``, ``(B, T, n+m)`` cost Hessians and
            gradients; C_final, c_final: ``(B, n, n)``, ``(B, n)``.
        du_lower, du_upper: ``(B, T, m)`` bounds on the control step (bound minus current control).
        mu: ``(B,)`` regularization of the step: ``mu I`` added to the next stage's value Hessian in ``Q_uu`` and
            ``Q_ux`` (Tassa, Erez and Todorov 2012: unlike ``mu I`` on ``Q_uu`` alone, the feedback gains survive
            a large ``mu``), plus ``1e-6 mu I`` on ``Q_uu``. The value function is that of the resulting policy,
            unregularized.
        gaps, dx0: ``(B, T, n)`` and ``(B, n)`` for an infeasible trajectory (multiple shooting): the model is
            ``dx_{t+1} = F_t dtau_t + alpha gaps_t`` from ``dx_0 = alpha dx0``, so the step closes the fraction
            ``alpha`` of every gap. None means zero.
        nonconvex: ``(B,)`` bool or None: for one control (``m = 1``), in these problems a stage whose ``Q_uu``
            is not positive (a Newton model's negative curvature) takes the better of its two finite bounds,
            clamped, instead of failing.

    Returns ``K (B, T, m, n)`` (zero rows for clamped controls), ``k (B, T, m)``, the expected cost change
    terms ``(d1, d2)`` (each ``(B,)``; under the model the closed-loop step ``alpha k`` changes the cost by
    exactly ``alpha d1 + alpha^2 d2``, gaps included), the free masks ``(B, T, m)`` and ``ok (B,)`` (every stage's
    regularized free ``Q_uu`` positive definite).

    Works in the homogeneous coordinates of :func:`lqr`: with ``Mpol = [I; Kh]`` the closed-loop map
    ``[1; dx] -> [1; dx; du]``, the policy's value is ``Mpol' Qh Mpol``, and one extra column carries the
    gradient ``w`` of the policy's cost-to-go at ``alpha = 0``, whose leading entry sums the slope ``d1``.
    """
    B, T, n, nm = F.shape
    m, n1, N = nm - n, n + 1, nm + 1
    Fh, Ch, VTh = _augment(F, F.new_zeros(B, T, n) if gaps is None else gaps, C, c, C_final, c_final)
    lo, hi = du_lower.transpose(0, 1).unsqueeze(-1), du_upper.transpose(0, 1).unsqueeze(-1)
    # one product per stage gives [Qh | p]: [Ch | Ch e0] + G [[Fh, 0], [0, 1]]
    ChX = torch.cat([Ch, Ch[..., :1]], -1)                  # (T, B, N, N+1)
    FhX = Fh.new_zeros(T, B, n1 + 1, N + 1)
    FhX[..., :n1, :N] = Fh
    FhX[..., n1, N] = 1.0
    # the step's regularization, on the control rows: mu I on the next value's state Hessian, mu B'[A B]
    # (Tassa et al. 2012), and 1e-6 mu I on Q_uu so that a control without effect on the state still gets a
    # positive definite block
    Fu = Fh[..., 1:, n1:]
    reg = Fh.new_zeros(T, B, m, N)
    reg[..., 1:] = mu.view(1, B, 1, 1) * (Fu.mT @ Fh[..., 1:, 1:])
    reg[..., n1:] += (1e-6 * mu).view(1, B, 1, 1) * torch.eye(m, dtype=F.dtype, device=F.device)
    VW = torch.cat([VTh, VTh[..., :1]], -1)                 # [Vh | wh], wh = [0; c_final]
    Kh, frees, oks = [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        Qp = torch.baddbmm(ChX[t], Fh[t].mT @ VW, FhX[t])   # [Qh | p]
        Ru = Qp[:, n1:, :N] + reg[t]                        # [q_u | Q_ux | Q_uu], regularized
        if m == 1:                                          # the clamped Newton step is exact
            h = oks[t] = Ru[..., n1:]                       # checked after the loop; a row with h <= 0 fails
            pol = torch.div(Ru[..., :n1], h).neg_()        # [k, K] unclamped
            k = torch.clamp(pol[..., :1], lo[t], hi[t])
            free = k == pol[..., :1]
            if nonconvex is not None:                       # h <= 0 between finite bounds: the better bound
                concave = (h <= 0) & nonconvex.view(B, 1, 1)
                value = lambda v: (0.5 * h * v + Ru[..., :1]) * v          # noqa: E731
                k = torch.where(concave, torch.where(value(lo[t]) <= value(hi[t]), lo[t], hi[t]), k)
                free = free & ~concave
                oks[t] = torch.where(concave & torch.isfinite(k), 1.0, h)
            Kh[t] = torch.where(free, pol, torch.nn.functional.pad(k, (0, n)))
            frees[t] = free[..., 0]
        else:
            k, frees[t], oks[t], K = box_qp(Ru[..., n1:], Ru[..., 0], lo[t, ..., 0], hi[t, ..., 0],
                                            rhs=Ru[..., 1:n1])
            Kh[t] = torch.cat([k.unsqueeze(-1), K], -1)
        # the policy's value [Mpol' Qh Mpol | Mpol' p] with Mpol = [I; Kh]
        Y = torch.cat([torch.baddbmm(Qp[..., :n1], Qp[..., n1:N], Kh[t]), Qp[..., N:]], -1)
        VW = torch.baddbmm(Y[:, :n1], Kh[t].mT, Y[:, n1:])
    Kh = torch.stack(Kh, 1)
    ok = (torch.stack(oks, 1).view(B, T) > 0).all(1) if m == 1 else torch.stack(oks, 1).all(1)
    if dx0 is None:
        d1 = VW[:, 0, n1]
        d2 = 0.5 * VW[:, 0, 0] - d1
    else:                                                   # the linear and total changes at h0 = [1; dx0]
        h0 = torch.cat([torch.ones_like(dx0[:, :1]), dx0], -1).unsqueeze(-1)
        d1 = (VW[:, :, n1:] * h0).sum((-2, -1))
        d2 = 0.5 * (h0.mT @ VW[:, :, :n1] @ h0)[:, 0, 0] - d1
    # a failed row's gains may hold inf or NaN (its Q_uu was not positive definite): zeros instead
    Kh = torch.where(ok.view(B, 1, 1, 1), Kh, 0.0)
    return Kh[..., 1:], Kh[..., 0], (d1, d2), torch.stack(frees, 1), ok
