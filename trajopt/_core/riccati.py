"""The Riccati recursion of batched time-varying LQR, shared by :func:`trajopt.lqr`, iLQR's box-constrained
backward pass and the implicit gradients (the LQR of a KKT system).

For every problem in a batch it solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t]

by a backward recursion and a forward rollout with ``u_t = K_t x_t + k_t``. The recursion runs in homogeneous
coordinates ``[1; x; u]`` so that one pair of products per stage updates the quadratic and linear parts of the
value function together, and the optimal cost is read off the value function at ``x0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .scan import affine_scan, scan

__all__ = ["solve", "solve_augmented", "Solved", "Stages", "augment", "gauss_jordan", "use_elimination", "spd_solve",
           "spd_solve_small", "lqr_with_costates", "costates", "raise_if_not_pd"]


def raise_if_not_pd(pd: torch.Tensor) -> None:
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


def augment(F, f, C, c, C_final, c_final):
    """Homogeneous blocks Fh (T,B,n+1,N), Ch (T,B,N,N), VTh (B,n+1,n+1); only the symmetric part of C is used."""
    B, T, n, nm = F.shape
    Fh = F.new_empty(T, B, n + 1, nm + 1)
    Fh[..., 1:, 1:] = F.transpose(0, 1)
    Fh[..., 1:, 0] = f.transpose(0, 1)
    Fh[..., 0, :] = 0.0
    Fh[..., 0, 0] = 1.0
    Ch = symmetric_padded(C.transpose(0, 1), c.transpose(0, 1))
    VTh = symmetric_padded(C_final, c_final)
    return Fh, Ch, VTh


def symmetric_padded(C, c):
    """``[[0, c'], [c, (C + C')/2]]`` in one pass over ``C`` when no graph is recorded."""
    out = C.new_empty(*C.shape[:-2], C.shape[-2] + 1, C.shape[-1] + 1)
    if (torch.is_grad_enabled() and C.requires_grad) or torch.compiler.is_compiling():
        out[..., 1:, 1:] = torch.lerp(C, C.mT, 0.5)
    else:
        torch.lerp(C, C.mT, 0.5, out=out[..., 1:, 1:])
    out[..., 1:, 0] = c
    out[..., 0, 1:] = c
    out[..., 0, 0] = 0.0
    return out


class Stages:
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


def gauss_jordan(M: torch.Tensor, col0: int, eye_cols=None):
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


def use_elimination(m: int) -> bool:
    """Whether the unrolled Gauss-Jordan stage beats LAPACK's Cholesky (measured in benchmarks/lqr)."""
    return m <= 4


def riccati(Fh, Ch, VTh, elimination: bool, keep: bool):
    """Backward Riccati recursion in homogeneous coordinates.

    Returns gains ``Kh (T,B,m,n+1)`` (``u = Kh [1; x]``), value matrices
    ``Vh (T+1,B,n+1,n+1)`` (``[[2 s, v'], [v, V]]``; only ``Vh[:1]`` unless
    ``keep``), control Hessians ``Quu (T,B,m,m)`` (None unless ``keep``) and
    ``pd (T,B)``, whether each ``Quu`` was positive definite.
    """
    T, B, n1, N = Fh.shape
    m = N - n1
    V = VTh
    Ks, oks, Vs, Quus, Ls, Ys = Stages(T), [], Stages(T + 1), Stages(T), Stages(T), Stages(T)
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
            R, pivs = gauss_jordan(Qu, n1, eye_cols)    # [Quu^-1 Qux, I]
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


def riccati_parallel(Fh, Ch, VTh, keep: bool):
    """:func:`riccati` in ``ceil(log2 (T+1))`` levels: the associative scan of Saerkkae and Garcia-Fernandez (2023,
    "Temporal parallelization of dynamic programming and linear quadratic control", section IV).

    Stage ``t`` is the conditional value function of going from ``x_t`` to ``x_{t+1}``, an element
    ``(A, b, C, eta, J)``: ``1/2 x' J x - eta' x + max_l l' (y - A x - b) - 1/2 l' C l``; the terminal cost is the
    element ``(0, 0, 0, -c_final, C_final)``. The cross term and the linear control term are removed first (``u =
    v - C_uu^{-1} (C_ux x + c_u)``), which needs every ``C_uu`` positive definite (the sequential recursion needs
    only ``Q_uu``). The suffix scan of the elements gives every value function at once (the constant of the value
    function is not tracked: ``Vh[..., 0, 0]`` is zero), and the gains follow from them in one batched solve over
    all stages. Returns what :func:`riccati` does, plus ``ok (B,)``: whether every ``C_uu`` of the problem was
    positive definite (where not, the results of the problem are meaningless).
    """
    T, B, n1, N = Fh.shape
    n = n1 - 1
    A, Bu, f = Fh[..., 1:, 1:n1], Fh[..., 1:, n1:], Fh[..., 1:, :1]
    Cxx, Cxu, Cuu = Ch[..., 1:n1, 1:n1], Ch[..., 1:n1, n1:], Ch[..., n1:, n1:]
    cx, cu = Ch[..., 1:n1, :1], Ch[..., n1:, :1]
    W, ok = spd_solve_small(Cuu, torch.cat([Cxu.mT, cu, Bu.mT], -1))      # R^-1 [M' | r | B']
    RM, Rr, RB = W.split([n, 1, n], -1)
    elems = (
        torch.cat([A - Bu @ RM, A.new_zeros(1, B, n, n)]),
        torch.cat([f - Bu @ Rr, f.new_zeros(1, B, n, 1)]),
        torch.cat([Bu @ RB, A.new_zeros(1, B, n, n)]),
        torch.cat([Cxu @ Rr - cx, -VTh[None, :, 1:, :1]]),
        torch.cat([Cxx - Cxu @ RM, VTh[None, :, 1:, 1:]]),
    )
    _, _, _, eta, J = scan(_value_compose, elems, reverse=True)
    Vh = torch.cat([torch.cat([torch.zeros_like(eta[..., :1, :]), -eta.mT], -1), torch.cat([-eta, J], -1)], -2)
    Q = Ch + Fh.mT @ Vh[1:] @ Fh
    Qu = Q[..., n1:, :]
    Quu = Qu[..., n1:]
    G, pd = spd_solve_small(Quu, Qu[..., :n1])
    return -G, Vh if keep else Vh[:1], Quu if keep else None, pd, ok.all(0)


def _value_compose(earlier, later):
    """Two conditional value functions ``(A, b, C, eta, J)``, ``x_i -> x_j`` then ``x_j -> x_k``, made one
    ``x_i -> x_k`` by minimizing over ``x_j`` (the combination rule of Saerkkae and Garcia-Fernandez 2023)."""
    A1, b1, C1, e1, J1 = earlier
    A2, b2, C2, e2, J2 = later
    n = A1.shape[-1]
    eye = torch.eye(n, dtype=A1.dtype, device=A1.device)
    # (I + C1 J2)^-1 [A1 | b1 + C1 e2 | C1]; an explicit inverse: batched LAPACK solves of many small systems cost
    # more than inverting them and one batched product
    X = torch.linalg.inv_ex(eye + C1 @ J2)[0] @ torch.cat([A1, b1 + C1 @ e2, C1], -1)
    XA, Xb, XC = X.split([n, 1, n], -1)
    C = torch.baddbmm(C2.flatten(0, 1), (A2 @ XC).flatten(0, 1), A2.flatten(0, 1).mT).view_as(C2)
    J = torch.baddbmm(J1.flatten(0, 1), (XA.mT @ J2).flatten(0, 1), A1.flatten(0, 1)).view_as(J1)
    return (A2 @ XA, A2 @ Xb + b2, torch.lerp(C, C.mT, 0.5), XA.mT @ (e2 - J2 @ b1) + e1, torch.lerp(J, J.mT, 0.5))


def _step(Fh, Kh, xh, t):
    """``[1; x_{t+1}] = Fh_t [1; x_t; u_t]`` with ``u_t = Kh_t [1; x_t]``; also returns ``u_t (B, m, 1)``."""
    u = torch.bmm(Kh[t], xh)
    return torch.bmm(Fh[t], torch.cat([xh, u], 1)), u


@dataclass
class Solved:
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


def solve(F, f, C, c, x0, C_final, c_final, keep: bool = True, parallel: bool = False) -> Solved:
    """Forward solve; ``keep`` retains what the adjoint backward needs (Vh, Quu); ``parallel`` runs it in time
    parallel (:func:`riccati_parallel`, and the rollout as an :func:`affine_scan`)."""
    return solve_augmented(*augment(F, f, C, c, C_final, c_final), x0, keep, parallel)


def solve_augmented(Fh, Ch, VTh, x0, keep: bool = True, parallel: bool = False) -> Solved:
    """:func:`solve` of the homogeneous blocks of :func:`augment` (time major) and ``x0 (B, n)``. In time parallel,
    ``pd`` is also False at every stage of a problem with a ``C_uu`` that is not positive definite (the parallel
    recursion needs them all positive definite: the caller solves such a problem sequentially)."""
    T, B, n1, N = Fh.shape
    if parallel:
        return _solve_parallel(Fh, Ch, VTh, x0, keep)
    Kh, Vh, Quu, pd = riccati(Fh, Ch, VTh, use_elimination(N - n1), keep)
    xh = torch.cat([x0.new_ones(B, 1), x0], -1).unsqueeze(-1)
    cost = 0.5 * (xh.mT @ Vh[0] @ xh).view(B)
    Xh, Uh = Stages(T + 1), Stages(T)
    Xh.put(0, xh)
    for t in range(T):
        xh, u = _step(Fh, Kh, xh, t)
        Xh.put(t + 1, xh)
        Uh.put(t, u)
    return Solved(Fh, Kh, Vh, Quu, Xh.get(), Uh.get(), cost, pd)


def _solve_parallel(Fh, Ch, VTh, x0, keep):
    T, B, n1, N = Fh.shape
    Kh, Vh, Quu, pd, ok = riccati_parallel(Fh, Ch, VTh, keep)
    Fx, Fu = Fh[..., 1:, :n1], Fh[..., 1:, n1:]
    closed = Fx + Fu @ Kh                                                  # (T,B,n,n+1): x_{t+1} = closed [1; x_t]
    X = affine_scan(closed[..., 1:], closed[..., :1], x0.unsqueeze(-1))
    Xh = torch.cat([torch.ones_like(X[..., :1, :]), X], -2)
    Uh = Kh @ Xh[:-1]
    tau = torch.cat([Xh[:-1], Uh], -2)
    cost = 0.5 * ((tau.mT @ Ch @ tau).sum(0) + Xh[T].mT @ VTh @ Xh[T]).view(B)
    return Solved(Fh, Kh, Vh, Quu, Xh, Uh, cost, pd & ok)


def lqr_with_costates(F, C, c, C_final, c_final):
    """The LQR with ``f = 0`` and ``x0 = 0`` (the shape of an adjoint system), not differentiable: ``X (B, T+1, n)``,
    ``U (B, T, m)`` and the costates ``lam (B, T+1, n)`` (the gradient of the optimal cost-to-go at ``x_t``, read
    off the value function: no extra sweep). Raises ``ValueError`` if some ``Q_uu`` is not positive definite."""
    B, T, n, _ = F.shape
    s = solve(F, F.new_zeros(B, T, n), C, c, F.new_zeros(B, n), C_final, c_final, keep=True)
    raise_if_not_pd(s.pd)
    X, U, *_ = s.outputs()
    return X, U, (s.Vh[:, :, 1:] @ s.Xh)[..., 0].transpose(0, 1)


def spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^{-1} b`` for a batch of small positive-definite ``A (..., m, m)``, ``b (..., m, 1)``."""
    M, _ = gauss_jordan(torch.cat([A, b], -1), 0)
    return M[..., A.shape[-1]:]



def spd_solve_small(A, b):
    """``A^{-1} b`` for ``A (B, m, m)`` symmetric and ``b (B, m, r)``, and whether each ``A`` is positive
    definite: unrolled elimination for small ``m`` (no LAPACK call per matrix, no thread wake-up),
    Cholesky otherwise."""
    m = A.shape[-1]
    if use_elimination(m):
        M, pivots = gauss_jordan(torch.cat([A, b], -1), 0)
        ok = torch.stack([p[..., 0, 0] > 0 for p in pivots], -1).all(-1)
        return M[..., m:], ok
    L, info = torch.linalg.cholesky_ex(A)
    return torch.cholesky_solve(b, L), info == 0


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


