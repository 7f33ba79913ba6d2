"""The implicit gradient of a transcription's solution, by the implicit-function theorem on its KKT
conditions (an :class:`~trajopt._core.implicit.ImplicitRule`), and the first-order residual of a solution at
least-squares multipliers (what the scipy back end reports as its residual)."""
from __future__ import annotations

import torch

from ..._core.bounds import project
from ..._core.implicit import ImplicitRule, grad_tensors, implicit
from .transcription import defect_jacobian, interval_jacobians

__all__ = ["HELD_TOL", "RANK_TOL", "held", "implicit_solution", "TranscriptionKKT", "kkt_adjoint",
           "lagrangian_hessian", "local_indices", "lagrangian_residual"]

HELD_TOL = 1e-8         # a variable this close to a finite bound (relative to 1 + |bound|; float32: 100 eps) is held
RANK_TOL = 1e-10        # a pivot of the QR of the free constraint Jacobian this small (relative) means dependent


def held(V, lower, upper):
    """Entries of ``V (B, ...)`` at (within :data:`HELD_TOL` of) a finite bound of ``lower``/``upper``
    (broadcastable to ``V``, or None)."""
    out = torch.zeros_like(V, dtype=torch.bool)
    tol = max(HELD_TOL, 100 * torch.finfo(V.dtype).eps)
    for b, sign in ((lower, -1.0), (upper, 1.0)):
        if b is not None:
            finite = torch.isfinite(b)
            b = torch.where(finite, b, 0.0)
            out |= finite & (sign * (V - b) >= -tol * (1 + b.abs()))
    return out


def _free(tr, knots, U, lower, upper, xl, xu):
    """``(B, N)``: the variables ``[knots 1..K, U]`` not held at a bound."""
    B = knots.shape[0]
    return ~torch.cat([held(knots.view(B, tr.K, tr.n), xl, xu).flatten(1), held(U, lower, upper).flatten(1)], 1)


def implicit_solution(problem, tr, knots, U, knot_bounds, converged):
    """The solution ``knots (B, K n)``, ``U (B, T, m)`` of the transcription ``tr`` of ``problem`` made differentiable
    with respect to ``problem.x0 (B, n)`` and the tensors of its dynamics and cost that require grad, by
    :class:`TranscriptionKKT`. Variables at a bound (the control bounds of ``problem``, the knots' ``knot_bounds``
    ``(B, K, n)`` or None) are held there, and so are all the variables of the problems not ``converged (B,)``.
    Returns the inputs when grad mode is off or nothing requires grad."""
    tensors = grad_tensors(problem.dynamics, problem.cost)
    x0 = problem.x0
    if not torch.is_grad_enabled() or not any(z.requires_grad for z in (x0, *tensors)):
        return knots, U
    B = x0.shape[0]
    knots, U = knots.detach().reshape(B, tr.K * tr.n), U.detach()
    free = _free(tr, knots, U, problem.u_lower, problem.u_upper, *knot_bounds) & converged.view(B, 1)
    rule = TranscriptionKKT(problem, tr, knots, U, free, tensors)
    return implicit(rule, (knots, U), x0, tensors)


class TranscriptionKKT(ImplicitRule):
    """The implicit gradient of a transcription's solution ``(knots (B, K n), U (B, T, m))``.

    With ``w = [knots, U]`` (the free entries: the held ones are constants), the defects ``h(w; x0, theta) = 0``
    and the Lagrangian ``L = cost + lam' h``, the conditions ``F = (grad_w L, h) = 0`` define ``(w, lam)`` as
    functions of ``p = (x0, theta)``, and a loss with gradient ``g`` in ``w`` has
    ``dloss/dp = -(v' d(grad_w L)/dp + nu' dh/dp)`` with ``[[H, A'], [A, 0]] [v; nu] = [g; 0]`` (the KKT matrix
    is symmetric; :func:`kkt_adjoint`). The product with ``dF/dp`` is one vector-Jacobian product of
    ``v' grad_w L + nu' h`` (a double backward through the cost and the model, all intervals at once), the
    :meth:`pairing`. Only the problems whose incoming gradient reaches a free variable are solved for; problems
    that did not converge have every variable held: no gradient through the solve (as in :func:`trajopt.ilqr`).
    """

    def __init__(self, problem, tr, knots, U, free, tensors):
        self.problem, self.tr, self.cost, self.x0 = problem, tr, problem.cost, problem.x0.detach()
        self.knots, self.U, self.free, self.tensors = knots, U, free, tensors

    def adjoint(self, grads):
        g_knots, g_U = grads
        knots, U, free = self.knots, self.U, self.free
        g = torch.cat([torch.zeros_like(knots) if g_knots is None else g_knots,
                       (torch.zeros_like(U) if g_U is None else g_U).flatten(1)], 1)
        rows = (free & (g != 0)).any(1).nonzero().squeeze(1)
        if rows.numel() == 0:           # nothing reaches a free variable of a converged problem: zero gradients
            return rows, None, None, None
        with torch.no_grad(), self.problem.evaluating(), self.problem.at(rows):
            v, nu, lam = kkt_adjoint(self.tr, self.cost, self.x0[rows], knots[rows], U[rows], free[rows], g[rows])
        return rows, v, nu, lam

    def x0_gradient(self, state):
        return torch.zeros_like(self.x0) if state[0].numel() == 0 else None

    def pairing(self, state, x0):
        rows, v, nu, lam = state
        if rows.numel() == 0:
            return sum((z * 0).sum() for z in (x0, *self.tensors))
        tr = self.tr
        Kn = tr.K * tr.n
        # -[v; nu]' dF/dp: the gradient of the Lagrangian differentiated along v, the defects along nu
        kn, Ug = self.knots[rows].requires_grad_(True), self.U[rows].requires_grad_(True)
        with self.problem.evaluating(), self.problem.at(rows):
            S = tr.knots(x0[rows], kn)
            h, Xs = tr.pieces(S, Ug)
            X = torch.cat([Xs.reshape(len(rows), tr.T, tr.n), S[:, -1:]], 1)
            h = h.flatten(1)
            gk, gu = torch.autograd.grad(self.cost(X, Ug).sum() + (lam * h).sum(), (kn, Ug), create_graph=True,
                                         materialize_grads=True)
        return (v[:, :Kn] * gk).sum() + (v[:, Kn:] * gu.flatten(1)).sum() + (nu * h).sum()


def local_indices(tr, device):
    """``(K, 2 n + s m)``: the index in ``w = [knots 1..K, U]`` of each entry of interval ``k``'s
    ``(left knot, controls, right knot)``; ``x0`` (interval 0's left knot, not a variable) maps to ``K n + T m``."""
    K, n, sm, N = tr.K, tr.n, tr.s * tr.m, tr.K * tr.n + tr.T * tr.m
    k = torch.arange(K, device=device).view(K, 1)
    left = torch.where(k == 0, N, (k - 1) * n + torch.arange(n, device=device))
    controls = K * n + k * sm + torch.arange(sm, device=device)
    return torch.cat([left, controls, k * n + torch.arange(n, device=device)], 1)


def lagrangian_hessian(tr, cost, S, U, lam):
    """The Hessian ``(B, N, N)`` of ``cost(X, U) + lam' h`` (``lam (B, K, n)``, ``h`` the defects) in the
    variables ``w = [knots 1..K, U]`` at knots ``S (B, K+1, n)`` and controls ``U (B, T, m)``. Interval ``k``'s
    part (its stages' cost, its defects, and the terminal cost for the last) depends on its two knots and its
    controls alone, so its Hessian blocks come from ``2 n + s m`` batched double-backward passes over all
    intervals at once (:func:`interval_jacobians` of the interval-wise gradient), summed into ``w``'s indices."""
    B, K, T, n, m = S.shape[0], tr.K, tr.T, tr.n, tr.m
    N = K * n + T * m

    def gradient(left, Useg, right):
        h, Xs = tr.interval(left, Useg, right)
        X = torch.cat([Xs.reshape(B, T, n), right[:, -1:]], 1)
        L = cost(X, Useg.reshape(B, T, m)).sum() + (lam * h).sum()
        parts = torch.autograd.grad(L, (left, Useg, right), create_graph=True, materialize_grads=True)
        return torch.cat([z.flatten(2) for z in parts], -1)

    _, (HL, HU, HR) = interval_jacobians(gradient, (S[:, :-1], U.view(B, K, tr.s, m), S[:, 1:]), False)
    blocks = torch.cat([HL, HU.flatten(3), HR], -1)                         # (B, K, d, d)
    idx = local_indices(tr, S.device)
    flat = (idx.unsqueeze(-1) * (N + 1) + idx.unsqueeze(-2)).reshape(-1)
    H = blocks.new_zeros(B, (N + 1) ** 2).index_add_(1, flat, blocks.reshape(B, -1))
    H = H.view(B, N + 1, N + 1)[:, :N, :N]
    return 0.5 * (H + H.mT)


def _cost_gradient(tr, cost, x0, knots, U):
    """``(B, K n + T m)``: the gradient of the cost in ``w = [knots 1..K, U]``."""
    with torch.enable_grad():
        kn, Ug = knots.detach().requires_grad_(True), U.detach().requires_grad_(True)
        J = cost(tr.states(tr.knots(x0, kn), Ug), Ug).sum()
        grads = torch.autograd.grad(J, (kn, Ug), allow_unused=True, materialize_grads=True)
    return torch.cat([z.flatten(1) for z in grads], 1)


def kkt_adjoint(tr, cost, x0, knots, U, free, g):
    """The adjoint of the KKT system at a solution (``x0 (B, n)``, ``knots (B, K n)``, ``U (B, T, m)``, the free
    variables ``free (B, N)``): multipliers ``lam (B, K n)`` by least squares on the stationarity of the free
    variables, ``grad J + A' lam = 0``; then ``(v (B, N), nu (B, K n))`` solving
    ``[[H, A'], [A, 0]] [v; nu] = [g; 0]`` (``H``: the Hessian of the Lagrangian, ``A``: the defects' Jacobian,
    both on the free variables; the held ones get ``v = 0``). By the null-space method: ``A' = [Y Z] [R; 0]``
    (QR), ``v = Z (Z' H Z)^{-1} Z' g`` by Cholesky, ``nu = R^{-1} Y' (g - H v)``; a dependent ``A`` (the
    constraints not linearly independent on the free variables) or a reduced Hessian ``Z' H Z`` that is not
    positive definite (not a strict local minimum) raises ``ValueError``."""
    B, K, n = x0.shape[0], tr.K, tr.n
    M = K * n
    f = free.to(g.dtype)
    gJ = _cost_gradient(tr, cost, x0, knots, U) * f
    S = tr.knots(x0, knots)
    A = defect_jacobian(tr, S, U)[1] * f.unsqueeze(1)
    Q, R = torch.linalg.qr(A.mT, mode="complete")
    R = R[:, :M]
    pivots = R.diagonal(dim1=-2, dim2=-1).abs()
    if bool((pivots <= RANK_TOL * pivots.amax(-1, keepdim=True).clamp_min(1e-300)).any()):
        raise ValueError("collocation/multiple_shooting (grad='implicit'): the defects' Jacobian on the free "
                         "variables is rank deficient at the solution (too many variables held at their bounds for "
                         "the constraints to be independent); the implicit gradient is not defined there. Use "
                         "grad='unroll' (backend=Theseus()) or grad=None")
    Y, Z = Q[..., :M], Q[..., M:]
    lam = -torch.linalg.solve_triangular(R, Y.mT @ gJ.unsqueeze(-1), upper=True)
    H = lagrangian_hessian(tr, cost, S, U, lam.view(B, K, n))
    H = H * f.unsqueeze(-1) * f.unsqueeze(-2) + torch.diag_embed(1 - f)
    L, info = torch.linalg.cholesky_ex(Z.mT @ H @ Z)
    if bool((info != 0).any()):
        raise ValueError("collocation/multiple_shooting (grad='implicit'): the Hessian of the Lagrangian on the "
                         "null space of the defects' Jacobian (free variables) is not positive definite at the "
                         "solution (not a strict local minimum, or not converged); use grad='unroll' "
                         "(backend=Theseus()) or solve to convergence")
    a = (g * f).unsqueeze(-1)
    v = Z @ torch.cholesky_solve(Z.mT @ a, L)
    nu = torch.linalg.solve_triangular(R, Y.mT @ (a - H @ v), upper=True)
    return v.squeeze(-1), nu.squeeze(-1), lam.squeeze(-1)


def lagrangian_residual(tr, cost, x0, knots, U, lower, upper, xl, xu):
    """The first-order residual ``(B,)`` of the points ``knots (B, K n)``, ``U (B, T, m)`` and the multipliers
    ``(B, K, n)`` it uses: ``lam`` by least squares on the stationarity of the free variables (those not held at a
    bound, as for the implicit gradient), ``grad cost + A' lam = 0``, and the largest entry of the projected
    gradient of the Lagrangian ``cost + lam' h`` in ``w = [knots 1..K, U]`` (a variable at a bound counts only when
    its gradient points into the box). Not differentiable."""
    B, K, n = x0.shape[0], tr.K, tr.n
    with torch.no_grad():
        knots, U = knots.detach().reshape(B, K * n), U.detach()
        gJ = _cost_gradient(tr, cost, x0, knots, U)
        A = defect_jacobian(tr, tr.knots(x0, knots), U)[1]
        f = _free(tr, knots, U, lower, upper, xl, xu).to(gJ.dtype)
        lam = torch.linalg.lstsq((A * f.unsqueeze(1)).mT, -(gJ * f).unsqueeze(-1)).solution.squeeze(-1)
        gL = gJ + (A.mT @ lam.unsqueeze(-1)).squeeze(-1)
        w = torch.cat([knots, U.flatten(1)], 1)
        flat = [torch.cat([(x.reshape(B, -1) if x is not None else w.new_full((B, K * n), inf)),
                           (u.reshape(B, -1) if u is not None else w.new_full((B, U[0].numel()), inf))], 1)
                for x, u, inf in ((xl, lower, -float("inf")), (xu, upper, float("inf")))]
        residual = project(gL, w, *flat).abs().amax(1)
    return residual, lam.view(B, K, n)
