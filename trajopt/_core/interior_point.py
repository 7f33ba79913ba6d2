"""Batches of box-constrained linear-quadratic problems: primal-dual active-set iterations, and for the problems
they leave a primal-dual interior-point method, both on the Riccati structure. Shared by the bounded
:func:`trajopt.lqr`.

For every problem in a batch it solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t],   lower_t <= u_t <= upper_t

(bounds per problem, stage and control, possibly infinite).

Active-set iterations (the primal-dual active-set method of Hintermueller, Ito and Kunisch 2002, a semismooth
Newton method): the controls of a guess beyond a bound are fixed there and the LQR of that active set solved by one
batched Riccati pass (:func:`fix_active`); its solution is optimal when it is within the bounds and its projected
gradient vanishes (both checked, to a tolerance, on the returned point); otherwise the controls beyond a bound join
the active set and the fixed ones whose gradient pulls them inside leave it. From the unbounded solution this
usually ends in a few solves; it may cycle where the controls are strongly coupled, and a problem still unsolved
after a few goes on to the interior-point method.

Interior point (the method of HPIPM: Frison and Diehl 2020, "HPIPM: a high-performance quadratic programming
framework for model predictive control"): Mehrotra's predictor-corrector on the KKT system with slacks
``s_l = u - lower``, ``s_u = upper - u`` and their multipliers ``z_l, z_u``. With the slacks and multipliers
eliminated, the Newton system is the KKT system of one LQR whose control Hessian is ``C_uu`` plus the barrier
diagonal ``Sigma = Z_l / S_l + Z_u / S_u`` and whose control gradient is corrected accordingly; each iteration
factorizes it by one batched Riccati pass (Cholesky of each ``Q_uu``: ``Sigma`` makes it ill-conditioned), and the
corrector reuses that factorization (only its linear term changes: two matrix-vector sweeps). Each problem has its
own step size, centering and stopping test; once its complementarity is small, its active set (a multiplier above
its slack) is solved as above.

Either way the answer is the equality-constrained LQR of the active set (the controls at their bounds fixed,
:func:`fix_active`): exact to rounding, and what the implicit gradient differentiates. The passes work on the
homogeneous blocks of :func:`~trajopt._core.riccati.augment`, time major; each stage of a pass is a few batched
products on the problems still unsolved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import project
from .checks import tolerance
from .riccati import augment, costates, solve_augmented

__all__ = ["interior_point", "InteriorPoint", "unbounded", "fix_active", "projected_residual"]

_FRACTION_TO_BOUNDARY = 0.995


@dataclass
class InteriorPoint:
    """The outcome, batch first. ``X (B, T+1, n)``, ``U (B, T, m)``: where ``converged``, the solution of the
    LQR with the active set fixed (exact to rounding), else the last interior-point iterate clamped into the
    bounds and its rollout. ``K (B, T, m, n)``, ``k (B, T, m)``: that LQR's feedback (zero rows on the fixed
    controls, ``k`` their values). ``fixed (B, T, m)``: the controls held at their bounds (every control where
    not converged), ``converged (B,)``: the projected-gradient test held, ``finite (B,)``: no step overflowed or met
    a ``Q_uu + Sigma`` that is not positive definite, ``residual (B,)``: the projected gradient's largest entry,
    ``iterations (B,)``: active-set solves and interior-point iterations."""

    X: torch.Tensor
    U: torch.Tensor
    K: torch.Tensor
    k: torch.Tensor
    fixed: torch.Tensor
    converged: torch.Tensor
    finite: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor


@dataclass
class Blocks:
    """A batch's homogeneous blocks, time major: ``Fh (T, B, n+1, N)``, ``Ch (T, B, N, N)``, ``VTh (B, n+1, n+1)``
    (:func:`~trajopt._core.riccati.augment`) and ``x0h = [1; x0] (B, n+1, 1)``."""

    Fh: torch.Tensor
    Ch: torch.Tensor
    VTh: torch.Tensor
    x0h: torch.Tensor

    def rows(self, i):
        return Blocks(self.Fh[:, i], self.Ch[:, i], self.VTh[i], self.x0h[i])


def unbounded(F, f, C, c, x0, C_final, c_final):
    """The unbounded LQR, exactly as :func:`~trajopt._core.riccati.solve` solves it, not differentiable (inputs batch
    first, as :func:`interior_point` takes them): ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``K (B, T, m,
    n)``, ``k (B, T, m)``, whether every ``Q_uu`` was positive definite ``(B,)``, and the :class:`Blocks` (for
    :func:`interior_point`)."""
    Fh, Ch, VTh = augment(F, f, C, c, C_final, c_final)
    X, U, cost, K, k, pd = solve_augmented(Fh, Ch, VTh, x0, keep=False).outputs()
    x0h = torch.cat([x0.new_ones(x0.shape[0], 1), x0], -1).unsqueeze(-1)
    return X, U, cost, K, k, pd.all(0), Blocks(Fh, Ch, VTh, x0h)


def interior_point(F, f, C, c, x0, C_final, c_final, lower, upper, U, X, *, tol: float, max_iter: int,
                   polish: float | None = None, active_set: int = 10, blocks: Blocks | None = None) -> InteriorPoint:
    """Box-constrained LQ problems by active-set iterations, then Mehrotra's predictor-corrector for those they
    leave (see the module docstring); not differentiable.

    ``F (B, T, n, n+m)``, ``f (B, T, n)``, ``C (B, T, n+m, n+m)``, ``c (B, T, n+m)``, ``x0 (B, n)``,
    ``C_final (B, n, n)``, ``c_final (B, n)``; ``lower``, ``upper (B, T, m)`` (``-inf``/``inf`` where unbounded);
    ``U (B, T, m)`` a start (any; the unbounded solution is a good one) and ``X (B, T+1, n)`` its rollout;
    ``blocks`` the :class:`Blocks` of these problems if at hand (:func:`unbounded` returns them).

    First up to ``active_set`` active-set solves from the active set of ``U`` (its controls beyond a bound, and
    those with equal bounds). A solve has converged when its solution is within the bounds (to ``tol`` relative to
    the bounds) and its projected gradient's largest entry is at most ``tol`` relative to the gradient's scale
    (:func:`projected_residual`); otherwise the next active set has the controls of the solution beyond a bound
    and the fixed ones whose gradient is below ``-tol`` (times that scale) at a lower bound or above ``tol`` at an
    upper one released. The problems left go on to the interior-point method from their last solution: once a
    problem's mean complementarity ``mean(s z)`` is at most ``polish`` and its slacks' residual at most ``tol``,
    its active set (a multiplier above its slack) is solved, with the same test. ``max_iter`` bounds the
    solves and iterations of both phases together; a problem out of them keeps its last interior-point iterate,
    clamped into the bounds. See :class:`InteriorPoint` for what is returned.
    """
    B, T, n, nm = F.shape
    m = nm - n
    dtype, device = F.dtype, F.device
    polish = tolerance(polish, 1e-6, dtype)
    if blocks is None:
        Fh, Ch, VTh = augment(F, f, C, c, C_final, c_final)
        blocks = Blocks(Fh, Ch, VTh, torch.cat([x0.new_ones(B, 1), x0], -1).unsqueeze(-1))
    out = InteriorPoint(X=X.clone(), U=U.clone(), K=F.new_zeros(B, T, m, n), k=U.clone(),
                        fixed=torch.ones_like(U, dtype=torch.bool), converged=torch.zeros(B, dtype=torch.bool,
                        device=device), finite=torch.ones(B, dtype=torch.bool, device=device),
                        residual=torch.full((B,), torch.inf, dtype=dtype, device=device),
                        iterations=torch.zeros(B, dtype=torch.long, device=device))
    rows = torch.arange(B, device=device)                          # the problems not yet solved
    bound = torch.where(torch.isfinite(lower), lower.abs(), 0.0).maximum(
        torch.where(torch.isfinite(upper), upper.abs(), 0.0))
    equal = lower == upper
    at_lower, at_upper = (U < lower) | equal, (U > upper) & ~equal
    used = min(active_set, max_iter)
    for j in range(used):
        good, U, g, scale = _polish(out, rows, blocks, lower, upper, at_lower, at_upper, tol, j + 1)
        if bool(good.all()):
            return out
        rest = ~good
        rows, blocks, lower, upper, bound, equal = rows[rest], blocks.rows(rest), lower[rest], upper[rest], \
            bound[rest], equal[rest]
        at_lower, at_upper, U, g, gtol = at_lower[rest], at_upper[rest], U[rest], g[rest], \
            tol * scale[rest].view(-1, 1, 1)
        free, utol = ~(at_lower | at_upper), tol * (1 + bound)
        at_lower = (at_lower & (g >= -gtol)) | (free & (U < lower - utol)) | equal
        at_upper = ((at_upper & (g <= gtol)) | (free & (U > upper + utol))) & ~equal
    _interior_point(out, rows, blocks, lower, upper, U, tol=tol, max_iter=max_iter - used, polish=polish,
                    offset=used)
    return out


def _interior_point(out, rows, blocks, lower, upper, U, *, tol, max_iter, polish, offset):
    """Mehrotra's predictor-corrector for the problems ``rows`` (their blocks, bounds ``(R, T, m)``), from their
    controls ``U (R, T, m)``; writes into ``out`` (``iterations`` counted from ``offset``)."""
    Fh, Ch, VTh, x0h = blocks.Fh, blocks.Ch, blocks.VTh, blocks.x0h
    T, B, n1, N = Fh.shape
    m, n = N - n1, n1 - 1
    dtype = Fh.dtype
    lo, hi = lower.transpose(0, 1), upper.transpose(0, 1)          # (T, B, m)
    wl, wu = torch.isfinite(lo).to(dtype), torch.isfinite(hi).to(dtype)
    lo, hi = torch.where(wl > 0, lo, 0.0), torch.where(wu > 0, hi, 0.0)
    u = U.transpose(0, 1).contiguous()
    zeros_x = Fh.new_zeros(T, B, m, n)
    count = (wl + wu).sum((0, 2)).clamp(min=1.0)                   # bounded components of each problem

    # start: slacks at least a quarter of the box width (within [1e-2, 1]; a start outside the bounds is fine,
    # the slacks' residual goes with the steps), multipliers 1 on the bounded components
    floor = torch.where((wl * wu) > 0, torch.clamp(0.25 * (hi - lo), min=1e-2, max=1.0), 1.0)
    sl = torch.where(wl > 0, torch.maximum(u - lo, floor), 1.0)
    su = torch.where(wu > 0, torch.maximum(hi - u, floor), 1.0)
    zl, zu = wl.clone(), wu.clone()
    waited = 0
    for it in range(max_iter + 1):
        rpl, rpu = (u - lo - sl) * wl, (hi - u - su) * wu
        mu = (sl * zl * wl + su * zu * wu).sum((0, 2)) / count
        rp = torch.maximum(rpl.abs().amax((0, 2)), rpu.abs().amax((0, 2)))
        last = it == max_iter
        ready = (mu <= polish) & (rp <= tol)
        # the active-set solve costs about one iteration whatever the number of problems in it, so it waits until
        # nearly all the problems still iterating are ready for it (those that are keep iterating meanwhile)
        try_ = ready | last
        waited = waited + 1 if bool(ready.any()) else 0
        if bool(try_.any()) and (last or waited > 2 or 10 * int(ready.sum()) >= 9 * ready.numel()):
            waited = 0
            t = lambda z: z[:, try_].transpose(0, 1)               # noqa: E731
            at_lower, at_upper = (t(zl) > t(sl)) & (t(wl) > 0), (t(zu) > t(su)) & (t(wu) > 0)
            done, *_ = _polish(out, rows[try_], Blocks(Fh[:, try_], Ch[:, try_], VTh[try_], x0h[try_]),
                               lower[try_], upper[try_], at_lower, at_upper, tol, offset + it,
                               iterate=t(u) if last else None)
            keep = torch.ones_like(try_)
            keep[try_] = ~done
            if not bool(keep.any()):
                break
            rows, VTh, count, x0h, lower, upper = rows[keep], VTh[keep], count[keep], x0h[keep], lower[keep], \
                upper[keep]
            Fh, Ch, lo, hi, wl, wu, rpl, rpu, u, sl, su, zl, zu, zeros_x = (
                z[:, keep] for z in (Fh, Ch, lo, hi, wl, wu, rpl, rpu, u, sl, su, zl, zu, zeros_x))
            mu = mu[keep]

        # the Newton system: the LQR with Sigma on the control Hessian and the corrected control gradient, factorized
        # by one Riccati pass; the predictor's controls by the closed-loop rollout
        Sl, Su = zl / sl * wl, zu / su * wu
        S = Sl + Su
        q = Sl * rpl - Su * rpu - S * u
        L, Kh, pd, _ = _factor(Fh, Ch, VTh, torch.cat([q.unsqueeze(-1), zeros_x, torch.diag_embed(S)], -1))
        M = _closed_loop(Fh, Kh)
        u_aff = _rollout(M, Kh, x0h)[1]

        # predictor (affine scaling) and Mehrotra's centering
        du = u_aff - u
        dsl, dsu = (du + rpl) * wl, (rpu - du) * wu
        dzl, dzu = -zl - Sl * dsl, -zu - Su * dsu
        a = _step_to_boundary(1.0, (sl, dsl), (su, dsu), (zl, dzl), (zu, dzu)).view(1, -1, 1)
        mu_aff = ((sl + a * dsl) * (zl + a * dzl) * wl + (su + a * dsu) * (zu + a * dzu) * wu).sum((0, 2)) / count
        sigma = (mu_aff / mu).clamp(0.0, 1.0) ** 3
        target = (sigma * mu).view(1, -1, 1)
        tl, tu = (target - dsl * dzl) * wl, (target - dsu * dzu) * wu

        # corrector: the same factorization, only the control gradient changed (by dq; f = 0, x0 = 0)
        du = du + _resolve(M, Fh, Kh, L, tu / su - tl / sl)
        dsl, dsu = (du + rpl) * wl, (rpu - du) * wu
        dzl, dzu = (tl / sl - zl - Sl * dsl) * wl, (tu / su - zu - Su * dsu) * wu
        alpha = _step_to_boundary(_FRACTION_TO_BOUNDARY, (sl, dsl), (su, dsu), (zl, dzl), (zu, dzu))
        a = alpha.view(1, -1, 1)
        new = [u + a * du, sl + a * dsl, su + a * dsu, zl + a * dzl, zu + a * dzu]
        ok = pd & torch.isfinite(torch.stack(new)).all(-1).all(1).all(0)
        if not bool(ok.all()):          # a problem whose step is not finite keeps its last iterate and stops
            bad = ~ok
            sel = rows[bad]
            out.finite[sel] = False
            out.iterations[sel] = offset + it + 1
            Ub = torch.clamp(u[:, bad].transpose(0, 1), lower[bad], upper[bad])
            out.U[sel], out.k[sel] = Ub, Ub
            xh, _, _, _ = _solve_fixed(Blocks(Fh[:, bad], Ch[:, bad], VTh[bad], x0h[bad]),
                                       torch.ones_like(Ub, dtype=torch.bool), Ub)
            out.X[sel] = xh[..., 1:, 0].transpose(0, 1)
            rows, VTh, count, x0h, lower, upper = rows[ok], VTh[ok], count[ok], x0h[ok], lower[ok], upper[ok]
            if rows.numel() == 0:
                break
            Fh, Ch, lo, hi, wl, wu, zeros_x, *new = (z[:, ok] for z in (Fh, Ch, lo, hi, wl, wu, zeros_x, *new))
        u, sl, su, zl, zu = new


def _polish(out, sel, blocks, lower, upper, at_lower, at_upper, tol, iterations, iterate=None):
    """Solve the LQR of the active set ``at_lower``, ``at_upper (R, T, m)`` of the problems ``sel`` (their blocks and
    bounds) and keep those it proves optimal in ``out``; with ``iterate (R, T, m)`` (out of iterations) keep all, the
    others with that iterate clamped and every control fixed. Returns which ones it proved optimal ``(R,)``, the
    solution's controls ``(R, T, m)``, its gradient ``(R, T, m)`` and that gradient's scale ``(R,)``."""
    fixed = at_lower | at_upper
    values = torch.where(at_lower, lower, upper)
    xh, Up, Kh, pd = _solve_fixed(blocks, fixed, values)
    Uc = torch.clamp(Up, lower, upper)
    bound = torch.where(torch.isfinite(lower), lower.abs(), 0.0).maximum(torch.where(torch.isfinite(upper),
                                                                                      upper.abs(), 0.0))
    violation = ((Up - Uc).abs() / (1 + bound)).amax((1, 2))
    g, scale = _gradient_h(blocks, xh, Uc)
    pg = project(g, Uc, lower, upper).abs().amax((1, 2))
    good = pd & torch.isfinite(pg) & (violation <= tol) & (pg <= tol * scale)
    stop = good
    Xp, Kp, kp = xh[..., 1:, 0].transpose(0, 1), Kh[..., 1:].transpose(0, 1), Kh[..., 0].transpose(0, 1)
    if iterate is not None:
        stop = torch.ones_like(good)
        if not bool(good.all()):      # out of iterations: the iterate, clamped, with every control fixed
            bad = ~good
            Ub = torch.clamp(iterate[bad], lower[bad], upper[bad])
            xb, _, _, _ = _solve_fixed(blocks.rows(bad), torch.ones_like(Ub, dtype=torch.bool), Ub)
            Xp, Uc, Kp, kp, fixed = Xp.clone(), Uc.clone(), Kp.clone(), kp.clone(), fixed.clone()
            Xp[bad], Uc[bad], Kp[bad], kp[bad], fixed[bad] = xb[..., 1:, 0].transpose(0, 1), Ub, 0.0, Ub, True
            pg[bad] = project(_gradient_h(blocks.rows(bad), xb, Ub)[0], Ub, lower[bad], upper[bad]).abs().amax((1, 2))
    if bool(stop.any()):
        idx = sel[stop]
        out.X[idx], out.U[idx], out.K[idx], out.k[idx], out.fixed[idx] = (z[stop] for z in (Xp, Uc, Kp, kp, fixed))
        out.converged[idx], out.residual[idx], out.iterations[idx] = good[stop], pg[stop], iterations
    return good, Up, g, scale


def _solve_fixed(blocks, fixed, values):
    """The LQR of :func:`fix_active` on the homogeneous ``blocks``, solved without a graph, for ``fixed``, ``values
    (B, T, m)``: the homogeneous states ``(T+1, B, n+1, 1)``, the controls ``(B, T, m)`` (the fixed ones exactly
    their values), the gains ``Kh (T, B, m, n+1)`` (with the fixed values in ``k``) and whether it was well posed
    ``(B,)``."""
    Fh, Ch = blocks.Fh, blocks.Ch
    T, B, n1, N = Fh.shape
    fixed_t, e = fixed.transpose(0, 1), torch.where(fixed, values, 0.0).transpose(0, 1).unsqueeze(-1)
    keep = (~fixed_t).to(Fh.dtype)
    mask = torch.cat([keep.new_ones(T, B, n1), keep], -1)          # (T, B, N)
    Fk = Fh * mask.unsqueeze(-2)
    Fk[..., 0] += (Fh[..., n1:] @ e)[..., 0]
    lin = (Ch[..., 0] + (Ch[..., n1:] @ e)[..., 0]) * mask
    Ck = (Ch * mask.unsqueeze(-1)).mul_(mask.unsqueeze(-2))
    Ck[..., 0], Ck[..., 0, :] = lin, lin
    Ck.diagonal(0, -2, -1)[..., n1:] += 1 - keep
    _, Kh, pd, _ = _factor(Fk, Ck, blocks.VTh, None)
    xh, u = _rollout(_closed_loop(Fk, Kh), Kh, blocks.x0h, states=True)
    Kh = torch.cat([Kh[..., :1] + e, Kh[..., 1:]], -1)
    return xh, torch.where(fixed, values, u.transpose(0, 1)), Kh, pd


def _gradient_h(blocks, xh, U):
    """The gradient of the total cost in the controls at the states ``xh (T+1, B, n+1, 1)`` (homogeneous, a rollout of
    ``U``) and controls ``U (B, T, m)``, ``(B, T, m)``, by the adjoint pass on the homogeneous ``blocks``, and its scale
    ``(B,)`` (see :func:`projected_residual`)."""
    Fh, Ch, VTh = blocks.Fh, blocks.Ch, blocks.VTh
    T, B, n1, N = Fh.shape
    n = n1 - 1
    direct = Ch[..., 1:, :] @ torch.cat([xh[:T], U.transpose(0, 1).unsqueeze(-1)], 2)    # (T, B, n+m, 1)
    lam = VTh[:, 1:] @ xh[T]
    gs = [None] * T
    for t in range(T - 1, -1, -1):
        p = torch.baddbmm(direct[t], Fh[t, :, 1:, 1:].mT, lam)
        lam, gs[t] = p[:, :n], p[:, n:]
    g = torch.stack(gs)[..., 0]
    du = direct[:, :, n:, 0]
    scale = 1 + du.abs().amax((0, 2)) + (g - du).abs().amax((0, 2))
    return g.transpose(0, 1), scale


def _factor(Fh, Ch, VTh, D):
    """The Riccati factorization of an LQR on its homogeneous blocks ``Fh (T, B, n+1, N)``, ``Ch (T, B, N, N)``,
    ``VTh (B, n+1, n+1)``, with ``D (T, B, m, N)`` (or None) added to the control rows of each ``Q_t`` (the barrier
    diagonal and the gradient correction of the interior point; their transpose, by symmetry, is never formed).
    Returns the Cholesky factors ``L (T, B, m, m)`` of ``Q_uu``, the gains ``Kh (T, B, m, n+1)``, whether each
    problem's ``Q_uu`` were all positive definite ``(B,)`` and the value matrix ``Vh_0 (B, n+1, n+1)``; keeps
    nothing else."""
    T, B, n1, N = Fh.shape
    V = VTh
    Ls, Ys, infos = [None] * T, [None] * T, [None] * T
    for t in range(T - 1, -1, -1):
        Ft = Fh[t]
        Q = torch.baddbmm(Ch[t], Ft.mT, torch.bmm(V, Ft))
        Qu = Q[:, n1:] if D is None else Q[:, n1:] + D[t]
        L, infos[t] = torch.linalg.cholesky_ex(Qu[..., n1:])
        Y = torch.linalg.solve_triangular(L, Qu[..., :n1], upper=False)
        V = torch.baddbmm(Q[:, :n1, :n1], Y.mT, Y, alpha=-1.0)
        Ls[t], Ys[t] = L, Y
    L = torch.stack(Ls)
    Kh = torch.linalg.solve_triangular(L.mT, torch.stack(Ys), upper=True).neg_()
    return L, Kh, (torch.stack(infos) == 0).all(0), V


def _closed_loop(Fh, Kh):
    """``M_t = Fh_t [I; Kh_t] (T, B, n+1, n+1)``: ``[1; x_{t+1}] = M_t [1; x_t]`` under ``u_t = Kh_t [1; x_t]``."""
    n1 = Fh.shape[-2]
    M = torch.baddbmm(Fh[..., :n1].flatten(0, 1), Fh[..., n1:].flatten(0, 1), Kh.flatten(0, 1))
    return M.view(*Fh.shape[:2], n1, n1)


def _rollout(M, Kh, x0h, states: bool = False):
    """The closed-loop rollout from ``x0h = [1; x0] (B, n+1, 1)``: its homogeneous states ``(T+1, B, n+1, 1)`` (None
    unless ``states``) and controls ``u_t = Kh_t [1; x_t] (T, B, m)``."""
    T = M.shape[0]
    xh, xs = x0h, [x0h]
    for t in range(T if states else T - 1):
        xh = torch.bmm(M[t], xh)
        xs.append(xh)
    xs = torch.stack(xs)
    return (xs if states else None), (Kh @ xs[:T])[..., 0]


def _resolve(M, Fh, Kh, L, dq):
    """The controls ``(T, B, m)`` of the LQR of the same factorization with control gradient ``dq (T, B, m)`` only
    (``f = 0``, ``x0 = 0``, no other linear term), by the value-gradient sweep ``v_t = (A + B K)_t' v_{t+1} + K_t'
    dq_t`` and the closed-loop rollout (no new factorization)."""
    T, B, n1, N = Fh.shape
    Kx = Kh[..., 1:]
    Acl, Bu = M[:, :, 1:, 1:], Fh[:, :, 1:, n1:]
    dq = dq.unsqueeze(-1)
    offset = Kx.mT @ dq
    v = torch.zeros_like(offset[0])
    vs = [v] * T
    for t in range(T - 1, 0, -1):
        v = torch.baddbmm(offset[t], Acl[t].mT, v)
        vs[t - 1] = v
    k = torch.cholesky_solve(dq + Bu.mT @ torch.stack(vs), L).neg_()
    Bk = Bu @ k
    x = torch.zeros_like(v)
    xs = [x]
    for t in range(T - 1):
        x = torch.baddbmm(Bk[t], Acl[t], x)
        xs.append(x)
    return (Kx @ torch.stack(xs) + k)[..., 0]


def _step_to_boundary(eta, *pairs):
    """The largest step ``alpha <= 1`` of each problem (dim 1) keeping every ``s + alpha ds`` at least
    ``(1 - eta) s``, for the pairs ``(s, ds)`` of ``(T, B, m)`` tensors."""
    s = torch.stack([p[0] for p in pairs])
    ds = torch.stack([p[1] for p in pairs])
    ratio = torch.where(ds < 0, s / -ds.clamp(max=-torch.finfo(s.dtype).tiny), torch.inf)
    return torch.clamp(eta * ratio.amin((0, 1, 3)), max=1.0)


def _gradient(C, c, X, U):
    """The cost's gradient ``C_t tau_t + c_t`` along the trajectory, ``(B, T, n+m)`` (symmetric part of ``C``)."""
    tau = torch.cat([X[:, :-1], U], -1).unsqueeze(-1)
    return c + 0.5 * (C @ tau + C.mT @ tau)[..., 0]


def _final_gradient(C_final, c_final, X):
    xT = X[:, -1].unsqueeze(-1)
    return c_final + 0.5 * (C_final @ xT + C_final.mT @ xT)[..., 0]


def projected_residual(F, C, c, C_final, c_final, X, U, lower, upper):
    """The first-order residual of ``(X, U)`` (``X`` the rollout of ``U``): the largest entry of the projected
    gradient of the total cost in the controls, ``(B,)``, and its scale ``(B,)`` (one plus the largest entries of
    the two parts of the gradient, ``C_u tau + c_u`` and ``B' lambda``, against which rounding is measured)."""
    direct = _gradient(C, c, X, U)
    g, _ = costates(F, C, direct, C_final, _final_gradient(C_final, c_final, X))
    n = X.shape[-1]
    scale = 1 + direct[..., n:].abs().amax((1, 2)) + (g - direct[..., n:]).abs().amax((1, 2))
    return project(g, U, lower, upper).abs().amax((1, 2)), scale


def fix_active(F, f, C, c, fixed, values):
    """The LQR of the box-constrained problem with the controls ``fixed (B, T, m)`` (bool) held at ``values``
    (their bounds): ``(F', f', C', c', constant)``, batch first, differentiable in every input.

    With ``u = u' + e`` (``e`` the fixed values, zero elsewhere), ``F'`` has the fixed controls' columns zeroed,
    ``f' = f + F_u e``, and ``C'``, ``c'`` are ``sym(C)`` and ``c + sym(C) [0; e]`` with the fixed controls' rows and
    columns replaced by those of the identity (so that ``u' = 0`` there); the cost of ``u`` is that of ``u'`` plus
    ``constant (B,)``. Its solution ``u = u' + e`` is the bounded solution when ``fixed`` is its active set.
    """
    B, T, n, nm = F.shape
    keep = (~fixed).to(F.dtype)
    e_u = torch.where(fixed, values, 0.0)
    e = torch.cat([e_u.new_zeros(B, T, n), e_u], -1)
    Cs = 0.5 * (C + C.mT)
    mask = torch.cat([keep.new_ones(B, T, n), keep], -1)
    Ck = Cs * mask.unsqueeze(-1) * mask.unsqueeze(-2) + torch.diag_embed(1 - mask)
    Ce = (Cs @ e.unsqueeze(-1))[..., 0]
    constant = (0.5 * Ce * e + c * e).sum((1, 2))
    Fk = torch.cat([F[..., :n], F[..., n:] * keep.unsqueeze(-2)], -1)
    return Fk, f + (F[..., n:] @ e_u.unsqueeze(-1))[..., 0], Ck, (c + Ce) * mask, constant
