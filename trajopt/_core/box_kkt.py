"""Optimality of a box-constrained optimal control problem ``min_U cost(rollout(x0, U), U)``, ``lower <= U <=
upper``: its first-order residual, and the implicit gradient of a solution through its KKT conditions (shared
by :func:`trajopt.ilqr`, :func:`trajopt.ddp` and :func:`trajopt.single_shooting`).
"""
from __future__ import annotations

import torch

from .bounds import clamped, project
from .implicit import ImplicitRule, grad_tensors, implicit
from .problem import Status
from .riccati import costates, lqr_with_costates
from .rollout import second_order_terms, steps, unchecked_linearize, unchecked_rollout

__all__ = ["projected_gradient", "implicit_solution", "solution_costates"]


def projected_gradient(problem, U: torch.Tensor) -> torch.Tensor:
    """First-order optimality residual of ``problem`` (a :class:`~trajopt.Problem`) at controls ``U (B, T, m)``,
    ``(B, T, m)``: the projected gradient ``U - clamp(U - g)`` with ``g`` the gradient of the total cost in the
    controls. It equals ``g`` on controls away from their bounds and is zero on a control held at a bound by its
    gradient. Not differentiable (detached)."""
    dynamics, cost = problem.dynamics, problem.cost
    U = U.expand(problem.B, problem.T, problem.m) if U.ndim == 2 else U
    with torch.enable_grad(), problem.evaluating():
        Ud = U.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(cost(unchecked_rollout(dynamics, problem.x0.detach(), Ud), Ud).sum(), Ud)
    out = project(g, U.detach(), problem.u_lower, problem.u_upper)
    return out if problem.batched else out[0]


def solution_costates(dynamics, cost, X, U):
    """The dynamics' Jacobians ``F (B, T, n, n+m)`` and the costates ``lam (B, T+1, n)`` at a trajectory."""
    with torch.no_grad():
        F, _ = unchecked_linearize(dynamics, X, U)
        q = cost.quadratize(X, U)
        return F, costates(F, q.C, q.c, q.C_final, q.c_final)[1]


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
            return _adjoint_kkt(F, H, q.C_final, gX, gU, keep, self.converged)

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
