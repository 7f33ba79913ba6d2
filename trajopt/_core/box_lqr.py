"""The backward pass of box-constrained iLQR (Tassa, Mansard and Todorov 2014, "Control-limited differential
dynamic programming"): at every stage a small box QP gives the feedforward step, and the feedback acts on the
controls that are free at its solution. Shared by :func:`trajopt.ilqr` and the box-constrained :func:`trajopt.lqr`.
"""
from __future__ import annotations

import torch

from .riccati import augment, spd_solve_small

__all__ = ["box_qp", "box_lqr_backward"]


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
        step, ok = spd_solve_small(Hf, -(M * grad).unsqueeze(-1))
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
    sol, ok = spd_solve_small(Hf, (M.unsqueeze(-1) * rhs) if rhs is not None else M.unsqueeze(-1))
    return x, free, ok, (None if rhs is None else -sol * M.unsqueeze(-1))




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
    Fh, Ch, VTh = augment(F, F.new_zeros(B, T, n) if gaps is None else gaps, C, c, C_final, c_final)
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

