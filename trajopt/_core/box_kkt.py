"""Optimality of a box-constrained optimal control problem ``min_U cost(rollout(x0, U), U)``, ``lower <= U <=
upper``: its first-order residual, and the implicit gradient of a solution through its KKT conditions (shared
by :func:`trajopt.ilqr`, :func:`trajopt.ddp` and :func:`trajopt.single_shooting`).
"""
from __future__ import annotations

import torch

from dynamics.validation import check_tensor
from .bounds import clamped, project
from .implicit import ImplicitRule, grad_tensors, implicit
from .problem import Problem, Status
from .riccati import costates, lqr_with_costates
from .rollout import raise_if_not_finite, second_order_terms, steps, unchecked_linearize, unchecked_rollout

__all__ = ["projected_gradient", "implicit_solution", "solution_costates", "fixed_start", "undefined_start"]


def projected_gradient(problem, U: torch.Tensor) -> torch.Tensor:
    """First-order optimality residual of ``problem`` (a :class:`~trajopt.Problem`) at controls ``U``, ``(B, T, m)``
    (``(T, m)`` for an unbatched problem): the projected gradient ``U - clamp(U - g)`` with ``g`` the gradient of the
    total cost in the controls. It equals ``g`` on controls away from their bounds and is zero on a control held
    at a bound by its gradient (a control outside its bounds adds its distance to them). Not differentiable
    (detached).

    ``U``: a finite float tensor of the problem's dtype and device, ``(B, T, m)`` with the problem's ``B``, or
    ``(T, m)`` (shared by every problem); anything else raises a TypeError or ValueError naming ``U``. Where the
    rollout of ``U``, the cost or its gradient is not finite for some problems (a model or cost that turns NaN or
    Inf there), it raises a ``FloatingPointError`` naming those rows, as :func:`trajopt.rollout` and
    :func:`trajopt.linearize` do: no NaN is returned (the solvers report such a problem ``Status.NOT_FINITE``).
    """
    where = "projected_gradient"
    if not isinstance(problem, Problem):
        raise TypeError(f"{where}: problem must be a trajopt.Problem, got {type(problem).__name__}")
    check_tensor(where, "U", U, ("T", "m"), {"T": problem.T, "m": problem.m})
    if U.dtype != problem.dtype:
        raise TypeError(f"{where}: U has dtype {U.dtype} but the problem has {problem.dtype}; convert it with "
                        f"U.to({problem.dtype})")
    if U.device != problem.device:
        raise ValueError(f"{where}: U is on {U.device} but the problem is on {problem.device}")
    if U.ndim == 3 and U.shape[0] != problem.B:
        raise ValueError(f"{where}: U has shape {tuple(U.shape)}; expected (B, T, m) = ({problem.B}, {problem.T}, "
                         f"{problem.m}) or (T, m) = ({problem.T}, {problem.m})")
    dynamics, cost = problem.dynamics, problem.cost
    U = U.expand(problem.B, problem.T, problem.m).detach()
    with torch.enable_grad(), problem.evaluating():
        Ud = U.clone().requires_grad_(True)
        X = unchecked_rollout(dynamics, problem.x0.detach(), Ud)
        J = cost(X, Ud)
        (g,) = torch.autograd.grad(J.sum(), Ud)
    raise_if_not_finite(where, "states", X.detach()[:, 1:].unsqueeze(-1))
    out = project(g, U, problem.u_lower, problem.u_upper)
    bad = ~(torch.isfinite(J.detach()) & torch.isfinite(out).flatten(1).all(1))
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise FloatingPointError(f"{where}: the cost or its gradient in U is NaN or Inf for row(s) {rows[:8]}"
                                 f"{' ...' if len(rows) > 8 else ''} at U (the states are finite); check the cost "
                                 "there. The solvers report such a problem as Status.NOT_FINITE instead")
    return out if problem.batched else out[0]


def fixed_start(F, C, c=None, rows=None):
    """The local model of trajectories that start exactly at ``x0`` (``delta x_0 = 0``), safe at stage 0.

    The parts of stage 0 in ``x_0`` (``A_0 = F[:, 0, :, :n]``, the state rows and columns of ``C_0``, the state
    entries of ``c_0``) enter only the value function ``V_0``, the gains ``K_0`` and the costate ``lam_0``; since
    ``x_0`` is fixed they never move the step. Where they are not finite (a model or cost with no finite derivative
    at ``x0``, such as ``sqrt|theta - 3|`` from ``theta_0 = 3``) they would still poison it, as ``0 * inf = NaN``
    in the products; in those problems (of ``rows (B,)``, the ones with ``delta x_0 = 0``; default all) they are
    zeroed. Returns ``F``, ``C``, ``c`` (new tensors where changed) and ``start (B,)``: the problems zeroed (their
    ``K_0`` comes out zero, their ``lam_0`` is undefined: see :func:`undefined_start`). No change, and one
    finiteness test of stage 0, for every other problem."""
    B, T, n, nm = F.shape
    parts = [F[:, 0, :, :n].flatten(1), C[:, 0, :n].flatten(1), C[:, 0, n:, :n].flatten(1)]
    if c is not None:
        parts.append(c[:, 0, :n])
    start = ~torch.isfinite(torch.cat(parts, 1)).all(1)
    if rows is not None:
        start = start & rows
    if not bool(start.any()):
        return F, C, c, start
    x = torch.arange(nm, device=F.device) < n
    row = start.view(B, 1, 1)
    F0 = torch.where(row & x, 0.0, F[:, 0])
    C0 = torch.where(row & (x.view(-1, 1) | x), 0.0, C[:, 0])
    F, C = torch.cat([F0.unsqueeze(1), F[:, 1:]], 1), torch.cat([C0.unsqueeze(1), C[:, 1:]], 1)
    if c is not None:
        c = torch.cat([torch.where(start.view(B, 1) & x, 0.0, c[:, 0]).unsqueeze(1), c[:, 1:]], 1)
    return F, C, c, start


def undefined_start(lam, start, value=float("inf")):
    """The costates ``lam (B, T+1, n)`` with ``lam_0``, the sensitivity of the cost to ``x0``, set to ``value``
    (``inf``: not finite) in the problems ``start (B,)`` of :func:`fixed_start`, whose model has no finite
    derivative at ``x0``."""
    if not bool(start.any()):
        return lam
    return torch.cat([torch.where(start.view(-1, 1), value, lam[:, 0]).unsqueeze(1), lam[:, 1:]], 1)


def solution_costates(dynamics, cost, X, U):
    """The dynamics' Jacobians ``F (B, T, n, n+m)`` and the costates ``lam (B, T+1, n)`` at a trajectory from
    ``x0`` (``lam_0`` is ``inf`` where the model or cost has no finite derivative at ``x0``: see
    :func:`fixed_start`)."""
    with torch.no_grad():
        F, _ = unchecked_linearize(dynamics, X, U)
        q = cost.quadratize(X, U)
        Fs, C, c, start = fixed_start(F, q.C, q.c)
        return F, undefined_start(costates(Fs, C, c, q.C_final, q.c_final)[1], start)


def implicit_solution(problem, X, U, status, at=None):
    """``(X, U)`` made differentiable with respect to ``problem.x0`` and every tensor of its dynamics and cost that
    requires grad, by the implicit-function theorem on the KKT conditions (see :class:`BoxKKT`), for a solver whose
    ``CONVERGED`` problems (``status (B,)``) are strict local minima within the control bounds. ``at``: the
    Jacobians and costates at the solution (:func:`solution_costates`), if the solver has them. Returns the inputs
    when grad mode is off or nothing requires grad."""
    tensors = grad_tensors(problem.dynamics, problem.cost)
    x0 = problem.x0
    if not torch.is_grad_enabled() or not any(z.requires_grad for z in (x0, *tensors)):
        return X, U
    if not problem.cost.separable:          # the exact stagewise form, on the state [x_t; u_{t-1}]
        lifted, _ = problem.cost.separated(problem)
        previous = torch.cat([lifted.x0[:, problem.n:].unsqueeze(1).detach(), U.detach()], 1)
        X, U = implicit_solution(lifted, torch.cat([X.detach(), previous], -1), U, status)
        return X[..., :problem.n], U
    X, U = X.detach(), U.detach()
    if at is None:
        at = solution_costates(problem.dynamics, problem.cost, X, U)
    rule = BoxKKT(problem, X, U, at, status == Status.CONVERGED)
    return implicit(rule, (X, U), x0, tensors)


class BoxKKT(ImplicitRule):
    """The implicit gradient of a box-constrained solution ``(X, U)``.

    With ``L`` the Lagrangian (costates ``lam`` of the solution) and the clamped controls held at their bounds,
    a loss with gradients ``g = (dX, dU)`` has ``dloss/dtheta = -w' d(KKT)/dtheta`` where ``w = (tau~, lam~)``
    solves the KKT system of one LQR: Hessians ``d^2 L`` (the Newton system), dynamics ``F``, linear terms
    ``-g``, ``x~_0 = 0``, clamped controls removed; ``lam~`` are its costates. The product with the derivative
    of the KKT conditions in the parameters is one vector-Jacobian product of the Lagrangian's gradient along
    ``tau~`` and of the dynamics along ``lam~``, evaluated at all stages at once (no sequential graph), so a
    backward pass costs one LQR solve, one adjoint sweep and a few batched model evaluations. Problems that did
    not converge are treated as having every control clamped: they get the gradient of the rollout of their
    controls (none through the solve).
    """

    def __init__(self, problem, X, U, at, converged):
        self.problem, self.X, self.U, self.at, self.converged = problem, X, U, at, converged

    def adjoint(self, grads):
        gX, gU = grads
        X, U, (F, lam) = self.X, self.U, self.at
        gX = torch.zeros_like(X) if gX is None else gX
        gU = torch.zeros_like(U) if gU is None else gU
        p = self.problem
        B, T, m = U.shape
        n = X.shape[-1]
        with torch.no_grad(), p.evaluating():
            # the Newton system: the cost's Hessians and the dynamics' second-order terms, with the solution's costates
            q = p.cost.quadratize(X, U)
            g = q.c[..., n:] + (F[..., n:].mT @ lam[:, 1:].unsqueeze(-1)).squeeze(-1)      # dJ/dU
            keep = ~clamped(U, g, p.u_lower, p.u_upper) & self.converged.view(B, 1, 1)
            H = q.C + second_order_terms(p.dynamics, X, U, lam)
            # x~_0 = 0: stage 0's parts in x_0 matter only to lam~_0, the gradient in x0, which is undefined (NaN)
            # where they are not finite; they must not poison the rest (nor, through the sum, the other problems)
            F, H, _, start = fixed_start(F, H)
            tau, lam_t = _adjoint_kkt(F, H, q.C_final, gX, gU, keep, self.converged)
            return tau, undefined_start(lam_t, start, float("nan"))

    def x0_gradient(self, state):
        return -state[1][:, 0]

    def pairing(self, state, x0):
        tau, lam_t = state
        p, (_, lam) = self.problem, self.at
        T, n = self.U.shape[1], self.X.shape[-1]
        # -w' d(KKT)/dtheta: the Lagrangian sum_t l_t + lam_{t+1}' f_t + l_T differentiated along tau~ (its
        # -lam_t' x_t terms depend on no parameter), and the dynamics along lam~, at all stages at once
        Xg, Ug = self.X.clone().requires_grad_(True), self.U.clone().requires_grad_(True)
        with p.evaluating():
            nxt = steps(p.dynamics, Xg[:, :T], Ug)
            gx, gu = torch.autograd.grad(p.cost(Xg, Ug).sum() + (lam[:, 1:] * nxt).sum(), (Xg, Ug),
                                         create_graph=True, materialize_grads=True)
        return ((gx * tau[..., :n]).sum() + (gu * tau[:, :T, n:]).sum() + (lam_t[:, 1:] * nxt).sum()
                + (lam_t[:, 0] * x0).sum())


def _adjoint_kkt(F, H, H_T, gX, gU, keep, converged):
    """The LQR of the KKT system at the solution (Hessians ``H``, ``H_T`` of the Lagrangian, dynamics ``F``,
    linear terms ``-g``): ``tau~ (B, T+1, n+m)`` (the last stage holds ``x~_T``, zero controls) and its costates
    ``lam~ (B, T+1, n)``; the controls not in ``keep`` are held at zero."""
    B, T, m = gU.shape
    n = gX.shape[-1]
    opts = dict(dtype=gU.dtype, device=gU.device)
    C = torch.where(converged.view(B, 1, 1, 1), H, torch.eye(n + m, **opts))
    k = keep.to(gU.dtype)
    Fk = torch.cat([F[..., :n], F[..., n:] * k.unsqueeze(-2)], -1)
    mask = torch.cat([torch.ones(B, T, n, **opts), k], -1)
    C = C * mask.unsqueeze(-1) * mask.unsqueeze(-2) + torch.diag_embed(1 - mask)
    c = -torch.cat([gX[:, :T], gU], -1) * mask
    try:
        Xt, Ut, lam_t = lqr_with_costates(Fk, C, c, H_T, -gX[:, T])
    except ValueError as err:
        raise ValueError("grad='implicit': the Hessian of the cost in the free controls is not positive definite "
                         "at the solution (not a strict local minimum, or not converged); use grad='unroll' or "
                         "solve to convergence") from err
    tau = torch.cat([Xt[:, :T], Ut], -1)
    return torch.cat([tau, torch.cat([Xt[:, T:], torch.zeros(B, 1, m, **opts)], -1)], 1), lam_t
