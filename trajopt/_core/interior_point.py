"""A primal-dual interior-point method for batches of box-constrained linear-quadratic problems, on the Riccati
structure (the method of HPIPM: Frison and Diehl 2020, "HPIPM: a high-performance quadratic programming framework
for model predictive control"). Shared by the bounded :func:`trajopt.lqr`.

For every problem in a batch it solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t],   lower_t <= u_t <= upper_t

(bounds per problem, stage and control, possibly infinite) by Mehrotra's predictor-corrector on the KKT system
with slacks ``s_l = u - lower``, ``s_u = upper - u`` and their multipliers ``z_l, z_u``. With the slacks and
multipliers eliminated, the Newton system is the KKT system of one LQR whose control Hessian is ``C_uu`` plus the
barrier diagonal ``Sigma = Z_l / S_l + Z_u / S_u`` and whose control gradient is corrected accordingly; each
iteration factorizes it by one batched Riccati pass (:func:`~trajopt._core.riccati.riccati`), and the corrector
reuses that factorization (only its linear term changes: two matrix-vector sweeps). Each problem has its own
step size, centering and stopping test, and stops being computed once it has stopped.

At the end, :func:`fix_active` states the bounded solution as the equality-constrained LQR of its active set (the
controls at their bounds fixed): its solve makes the interior-point solution exact (to rounding) and is what the
implicit gradient differentiates.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .bounds import project
from .checks import tolerance
from .riccati import augment, costates, riccati, solve

__all__ = ["interior_point", "InteriorPoint", "fix_active", "projected_residual"]

_FRACTION_TO_BOUNDARY = 0.995


@dataclass
class InteriorPoint:
    """The outcome, batch first. ``X (B, T+1, n)``, ``U (B, T, m)``: where ``converged``, the solution of the
    LQR with the active set fixed (exact to rounding), else the last interior-point iterate clamped into the
    bounds and its rollout. ``K (B, T, m, n)``, ``k (B, T, m)``: that LQR's feedback (zero rows on the fixed
    controls, ``k`` their values). ``fixed (B, T, m)``: the controls held at their bounds (every control where
    not converged), ``converged (B,)``: the projected-gradient test held, ``finite (B,)``: no step overflowed or met
    a ``Q_uu + Sigma`` that is not positive definite, ``residual (B,)``: the projected gradient's largest entry,
    ``iterations (B,)``."""

    X: torch.Tensor
    U: torch.Tensor
    K: torch.Tensor
    k: torch.Tensor
    fixed: torch.Tensor
    converged: torch.Tensor
    finite: torch.Tensor
    residual: torch.Tensor
    iterations: torch.Tensor


def interior_point(F, f, C, c, x0, C_final, c_final, lower, upper, U, X, *, tol: float, max_iter: int,
                   polish: float | None = None) -> InteriorPoint:
    """Mehrotra's predictor-corrector on a batch of box-constrained LQ problems, not differentiable.

    ``F (B, T, n, n+m)``, ``f (B, T, n)``, ``C (B, T, n+m, n+m)``, ``c (B, T, n+m)``, ``x0 (B, n)``,
    ``C_final (B, n, n)``, ``c_final (B, n)``; ``lower``, ``upper (B, T, m)`` (``-inf``/``inf`` where unbounded);
    ``U (B, T, m)`` a start (any, e.g. the unbounded solution) and ``X (B, T+1, n)`` its rollout.

    Convergence: once a problem's mean complementarity ``mean(s z)`` is at most ``polish`` (times the scale of its
    gradient) and its slacks' residual at most ``tol``, its active set (a multiplier above its slack) is fixed
    and the LQR of that active set solved (:func:`fix_active`); the problem has converged when that solution is
    within the bounds (to ``tol`` relative to the bounds) and its projected gradient's largest entry is at most
    ``tol`` relative to the gradient's scale (:func:`projected_residual`), the first-order conditions checked
    on the returned point itself. Otherwise the iterations go on; after ``max_iter`` the problem keeps its last
    iterate. See :class:`InteriorPoint` for what is returned.
    """
    B, T, n, nm = F.shape
    m, n1 = nm - n, n + 1
    dtype, device = F.dtype, F.device
    polish = tolerance(polish, 1e-6, dtype)
    whole = (F, f, C, c, x0, C_final, c_final, lower, upper)
    Fh, Ch, VTh = augment(F, f, C, c, C_final, c_final)
    lo, hi = lower.transpose(0, 1), upper.transpose(0, 1)          # (T, B, m)
    wl, wu = torch.isfinite(lo).to(dtype), torch.isfinite(hi).to(dtype)
    lo, hi = torch.where(wl > 0, lo, 0.0), torch.where(wu > 0, hi, 0.0)
    u, x = U.transpose(0, 1).contiguous(), X.transpose(0, 1).contiguous()
    count = (wl + wu).sum((0, 2)).clamp(min=1.0)                   # bounded components of each problem

    # start: slacks at least a quarter of the box width (within [1e-2, 1]; a start outside the bounds is fine,
    # the slacks' residual goes with the steps), multipliers 1 on the bounded components
    floor = torch.where((wl * wu) > 0, torch.clamp(0.25 * (hi - lo), min=1e-2, max=1.0), 1.0)
    sl = torch.where(wl > 0, torch.maximum(u - lo, floor), 1.0)
    su = torch.where(wu > 0, torch.maximum(hi - u, floor), 1.0)
    zl, zu = wl.clone(), wu.clone()

    out = InteriorPoint(X=X.clone(), U=U.clone(), K=F.new_zeros(B, T, m, n), k=U.clone(),
                        fixed=torch.ones_like(U, dtype=torch.bool), converged=torch.zeros(B, dtype=torch.bool,
                        device=device), finite=torch.ones(B, dtype=torch.bool, device=device),
                        residual=torch.full((B,), torch.inf, dtype=dtype, device=device),
                        iterations=torch.zeros(B, dtype=torch.long, device=device))
    rows = torch.arange(B, device=device)                          # the problems still iterating
    diag = torch.arange(n1, n1 + m, device=device)
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
            sel = rows[try_]
            t = lambda z: z[:, try_].transpose(0, 1)               # noqa: E731
            at_lower, at_upper = (t(zl) > t(sl)) & (t(wl) > 0), (t(zu) > t(su)) & (t(wu) > 0)
            done = _polish(out, sel, [z[sel] for z in whole], at_lower, at_upper, t(u), tol, it, last)
            keep = torch.ones_like(try_)
            keep[try_] = ~done
            if not bool(keep.any()):
                break
            rows, VTh, count = rows[keep], VTh[keep], count[keep]
            Fh, Ch, lo, hi, wl, wu, rpl, rpu, u, x, sl, su, zl, zu = (
                z[:, keep] for z in (Fh, Ch, lo, hi, wl, wu, rpl, rpu, u, x, sl, su, zl, zu))
            mu = mu[keep]

        # the Newton system: the LQR with Sigma on the control Hessian and the corrected control gradient
        Sl, Su = zl / sl * wl, zu / su * wu
        S = Sl + Su
        Chk = Ch.clone()
        Chk[..., diag, diag] += S
        q = Sl * rpl - Su * rpu - S * u
        Chk[..., n1:, 0] += q
        Chk[..., 0, n1:] += q
        Kh, _, Quu, pd = riccati(Fh, Chk, VTh, False, keep=True)   # Cholesky: Sigma makes Q_uu ill-conditioned
        xh, u_aff = _rollout(Fh, Kh, x[0])

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
        ddx, ddu = _resolve(Fh, Kh, Quu, tu / su - tl / sl)
        du = du + ddu
        dx = xh[..., 1:, 0] + ddx - x
        dsl, dsu = (du + rpl) * wl, (rpu - du) * wu
        dzl, dzu = (tl / sl - zl - Sl * dsl) * wl, (tu / su - zu - Su * dsu) * wu
        alpha = _step_to_boundary(_FRACTION_TO_BOUNDARY, (sl, dsl), (su, dsu), (zl, dzl), (zu, dzu))
        a = alpha.view(1, -1, 1)
        new = [u + a * du, x + a * dx, sl + a * dsl, su + a * dsu, zl + a * dzl, zu + a * dzu]
        ok = pd.all(0) & torch.stack([torch.isfinite(z).flatten(2).all(-1).all(0) for z in new]).all(0)
        if not bool(ok.all()):          # a problem whose step is not finite keeps its last iterate and stops
            bad = ~ok
            sel = rows[bad]
            out.finite[sel] = False
            out.iterations[sel] = it + 1
            out.U[sel] = torch.clamp(u[:, bad].transpose(0, 1), lower[sel], upper[sel])
            out.X[sel] = x[:, bad].transpose(0, 1)
            out.k[sel] = out.U[sel]
            rows, VTh, count = rows[ok], VTh[ok], count[ok]
            if rows.numel() == 0:
                break
            Fh, Ch, lo, hi, wl, wu, *new = (z[:, ok] for z in (Fh, Ch, lo, hi, wl, wu, *new))
        u, x, sl, su, zl, zu = new
    return out


def _polish(out, sel, problem, at_lower, at_upper, u, tol, it, last):
    """Solve the LQR of the active set of the problems ``sel`` and keep those it proves optimal (or all on the
    ``last`` iteration, the others with their iterate and every control fixed); returns which ones stopped."""
    F, f, C, c, x0, C_final, c_final, lower, upper = problem
    fixed = at_lower | at_upper
    values = torch.where(at_lower, lower, upper)
    Xp, Up, Kp, kp, pd = _fixed_solve(F, f, C, c, x0, C_final, c_final, fixed, values)
    Uc = torch.clamp(Up, lower, upper)
    bound = torch.where(torch.isfinite(lower), lower.abs(), 0.0).maximum(torch.where(torch.isfinite(upper),
                                                                                      upper.abs(), 0.0))
    violation = ((Up - Uc).abs() / (1 + bound)).amax((1, 2))
    pg, scale = projected_residual(F, C, c, C_final, c_final, Xp, Uc, lower, upper)
    good = pd & torch.isfinite(pg) & (violation <= tol) & (pg <= tol * scale)
    stop = good | last
    if last and not bool(good.all()):      # out of iterations: the iterate, clamped, with every control fixed
        bad = ~good
        Ub = torch.clamp(u[bad], lower[bad], upper[bad])
        all_fixed = torch.ones_like(Ub, dtype=torch.bool)
        Xb, _, _, _, _ = _fixed_solve(*(z[bad] for z in (F, f, C, c, x0, C_final, c_final)), all_fixed, Ub)
        Xp, Uc, Kp, kp, fixed = Xp.clone(), Uc.clone(), Kp.clone(), kp.clone(), fixed.clone()
        Xp[bad], Uc[bad], Kp[bad], kp[bad], fixed[bad] = Xb, Ub, 0.0, Ub, True
        pg[bad] = projected_residual(*(z[bad] for z in (F, C, c, C_final, c_final)), Xb, Ub, lower[bad],
                                     upper[bad])[0]
    idx = sel[stop]
    out.X[idx], out.U[idx], out.K[idx], out.k[idx], out.fixed[idx] = (z[stop] for z in (Xp, Uc, Kp, kp, fixed))
    out.converged[idx], out.residual[idx], out.iterations[idx] = good[stop], pg[stop], it
    return stop


def _fixed_solve(F, f, C, c, x0, C_final, c_final, fixed, values):
    """The LQR of :func:`fix_active`, solved without a graph: ``X, U, K, k`` and whether it was well posed."""
    Fk, fk, Ck, ck, _ = fix_active(F, f, C, c, fixed, values)
    X, U, _, K, k, pd = solve(Fk, fk, Ck, ck, x0, C_final, c_final, keep=False).outputs()
    e = torch.where(fixed, values, 0.0)
    return X, U * (~fixed) + e, K, k + e, pd.all(0)


def _rollout(Fh, Kh, x0):
    """The closed-loop rollout ``[1; x_{t+1}] = Fh_t [I; Kh_t] [1; x_t]`` from ``x0 (B, n)``: ``xh (T+1, B, n+1, 1)``
    and the controls ``u (T, B, m)``."""
    n1 = Fh.shape[-2]
    M = torch.baddbmm(Fh[..., :n1].flatten(0, 1), Fh[..., n1:].flatten(0, 1), Kh.flatten(0, 1))
    M = M.view(*Fh.shape[:2], n1, n1)
    xh = torch.cat([x0.new_ones(x0.shape[0], 1), x0], -1).unsqueeze(-1)
    xs = [xh]
    for t in range(Fh.shape[0]):
        xh = torch.bmm(M[t], xh)
        xs.append(xh)
    xh = torch.stack(xs)
    return xh, (Kh @ xh[:-1])[..., 0]


def _resolve(Fh, Kh, Quu, dq):
    """The LQR of the same factorization with control gradient ``dq (T, B, m)`` only (``f = 0``, ``x0 = 0``, no
    other linear term): its states ``(T+1, B, n)`` and controls ``(T, B, m)``, by the value-gradient sweep
    ``v_t = (A + B K)_t' v_{t+1} + K_t' dq_t`` and the closed-loop rollout (no new factorization)."""
    T, B, n1, N = Fh.shape
    Kx = Kh[..., 1:]
    A, Bu = Fh[:, :, 1:, 1:n1], Fh[:, :, 1:, n1:]
    Acl = A + Bu @ Kx
    dq = dq.unsqueeze(-1)
    offset = Kx.mT @ dq
    v = torch.zeros_like(offset[0])
    vs = [None] * T
    for t in range(T - 1, -1, -1):
        vs[t] = v
        v = torch.baddbmm(offset[t], Acl[t].mT, v)
    L, _ = torch.linalg.cholesky_ex(Quu)
    k = -torch.cholesky_solve(dq + Bu.mT @ torch.stack(vs), L)
    Bk = Bu @ k
    x = torch.zeros_like(v)
    xs = [x]
    for t in range(T):
        x = torch.baddbmm(Bk[t], Acl[t], x)
        xs.append(x)
    xs = torch.stack(xs)
    return xs[..., 0], (Kx @ xs[:-1] + k)[..., 0]


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
