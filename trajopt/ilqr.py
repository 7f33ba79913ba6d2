"""Box-constrained iLQR for batches of nonlinear trajectory-optimization problems.

Each iteration linearizes the dynamics and quadratizes the cost along the current
trajectory (the shared :func:`~trajopt.linearize` and ``Cost.quadratize``), runs the
box-constrained LQR backward pass of Tassa, Mansard and Todorov (2014) (a projected-Newton
box QP per stage, feedback on the free controls only; :func:`trajopt.lqr.box_lqr_backward`),
and line-searches the true cost over several step sizes at once. Levenberg-Marquardt
regularization of ``Q_uu`` grows on failure and shrinks on success. Every problem of the
batch has its own regularization, step size and stopping test, and stops changing once it
has converged.

Differentiable with respect to: nothing yet (the solution is returned detached); implicit
gradients through the converged solution are planned (issue 4).
"""
from __future__ import annotations

import torch

from dynamics import Dynamics
from dynamics._validation import check_consistent, check_tensor
from .costs import Cost
from .lqr import box_lqr_backward
from .problem import Solution
from .rollout import linearize, rollout

__all__ = ["ilqr", "projected_gradient"]

_MAX_ATTEMPTS = 12
_ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001)


def projected_gradient(dynamics: Dynamics, cost: Cost, x0, U, u_lower=None, u_upper=None):
    """Gradient of the total cost with respect to the controls ``(B, T, m)``, with the components that
    push against an active bound zeroed (the first-order optimality residual of the box-constrained problem)."""
    with torch.enable_grad():
        U = U.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(cost(rollout(dynamics, x0, U), U).sum(), U)
    if u_lower is not None:
        g = torch.where((U.detach() <= u_lower) & (g > 0), torch.zeros_like(g), g)
    if u_upper is not None:
        g = torch.where((U.detach() >= u_upper) & (g < 0), torch.zeros_like(g), g)
    return g


def ilqr(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
         horizon: int | None = None, u_lower=None, u_upper=None, max_iter: int = 100, tol: float = 1e-9,
         grad_tol: float = 1e-7, mu_init: float = 1e-6, mu_min: float = 1e-9, mu_max: float = 1e10,
         progress: bool = False) -> Solution:
    """Solve ``min_U cost(rollout(x0, U), U)`` subject to ``u_lower <= U <= u_upper`` for a batch of problems.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics`.
        cost: a :class:`trajopt.Cost` (stage and terminal terms).
        x0: initial states ``(B, n)`` (or ``(n,)``).
        U_init: initial controls ``(B, T, m)`` (or ``(T, m)``), clipped into the bounds; zeros of
            length ``horizon`` if None.
        horizon: ``T`` when ``U_init`` is None.
        u_lower, u_upper: bounds broadcastable to ``(B, T, m)`` (per problem, per step, per control), or None.
        max_iter: iteration budget per problem.
        tol, grad_tol: a problem has converged when an accepted step lowers its cost by less than
            ``tol`` relative and its projected gradient's largest entry is at most ``grad_tol``.
        mu_init, mu_min, mu_max: Levenberg-Marquardt regularization of ``Q_uu``.

    Returns:
        ``Solution`` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``converged (B,)``,
        ``iterations`` (the most any problem used), feedback ``K (B, T, m, n)`` and feedforward ``k``
        of the last backward pass, and ``history`` (cost per iteration ``(iters, B)``, the final
        projected-gradient norm and regularization).

    Differentiable with respect to: nothing yet; the solution is detached.
    """
    where = "ilqr"
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics, got {type(dynamics).__name__}")
    if not isinstance(cost, Cost):
        raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
    dims = {"n": dynamics.state_dim, "m": dynamics.control_dim}
    x0 = check_tensor(where, "x0", x0, ("n",), dims)
    if U_init is None:
        if horizon is None or horizon < 1:
            raise ValueError(f"{where}: give U_init (B, T, m) or a positive horizon")
        U_init = x0.new_zeros((*x0.shape[:-1], horizon, dims["m"]))
    U_init = check_tensor(where, "U_init", U_init, ("T", "m"), dims)
    batch = check_consistent(where, {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2})
    if batch is None:
        sol = ilqr(dynamics, cost, x0.unsqueeze(0), U_init.unsqueeze(0), u_lower=u_lower, u_upper=u_upper,
                   max_iter=max_iter, tol=tol, grad_tol=grad_tol, mu_init=mu_init, mu_min=mu_min, mu_max=mu_max)
        return Solution(X=sol.X[0], U=sol.U[0], cost=sol.cost[0], converged=sol.converged[0],
                        iterations=sol.iterations, K=sol.K[0], k=sol.k[0], history=sol.history)
    B, T, m = batch, U_init.shape[-2], dims["m"]
    x0 = x0.expand(B, dims["n"]).detach()
    shape = (B, T, m)
    lower = None if u_lower is None else _bound(where, "u_lower", u_lower, shape, x0)
    upper = None if u_upper is None else _bound(where, "u_upper", u_upper, shape, x0)
    if lower is not None and upper is not None and bool((lower > upper).any()):
        raise ValueError(f"{where}: u_lower exceeds u_upper somewhere")
    inf = torch.full(shape, float("inf"), dtype=x0.dtype, device=x0.device)
    lower_t = -inf if lower is None else lower
    upper_t = inf if upper is None else upper

    with torch.no_grad():
        U = torch.clamp(U_init.expand(shape).detach(), lower_t, upper_t)
        X = rollout(dynamics, x0, U)
        J = cost(X, U)
        if not bool(torch.isfinite(J).all()):
            raise ValueError(f"{where}: the initial rollout is not finite for batch element(s) "
                             f"{(~torch.isfinite(J)).nonzero().flatten().tolist()[:8]}")
        mu = torch.full((B,), mu_init, dtype=x0.dtype, device=x0.device)
        converged = torch.zeros(B, dtype=torch.bool, device=x0.device)
        history = [J.clone()]
        alphas = torch.tensor(_ALPHAS, dtype=x0.dtype, device=x0.device)
        K = k = None
        it = 0
        for it in range(1, max_iter + 1):
            F, _ = linearize(dynamics, X, U)
            q = cost.quadratize(X, U)
            pending = ~converged
            has = torch.zeros(B, dtype=torch.bool, device=x0.device)
            rel = torch.zeros_like(J)
            # Backward and forward passes at growing regularization until every pending problem has
            # an accepted step (or hit mu_max); the linearization is reused across the attempts.
            for _ in range(_MAX_ATTEMPTS):
                K, k, (d1, d2), _, ok = box_lqr_backward(F, q.C, q.c, q.C_final, q.c_final,
                                                             lower_t - U, upper_t - U, mu)
                Xa, Ua = _forward(dynamics, x0, X, U, K, k, alphas, lower_t, upper_t)
                Ja = cost(Xa.flatten(0, 1), Ua.flatten(0, 1)).view(len(_ALPHAS), B)
                expected = alphas.unsqueeze(-1) * d1 + alphas.unsqueeze(-1) ** 2 * d2      # (A, B), <= 0
                decrease = J - Ja
                accept = torch.isfinite(Ja) & (decrease > 0) & (decrease >= -1e-4 * expected)
                accept &= (ok & pending & ~has).unsqueeze(0)
                got = accept.any(0)
                first = torch.argmax(accept.to(torch.int8), 0)                         # largest accepted step
                idx = torch.arange(B, device=x0.device)
                newJ = torch.where(got, Ja[first, idx], J)
                rel = torch.where(got, (J - newJ) / J.abs().clamp_min(1e-30), rel)
                X = torch.where(got.view(B, 1, 1), Xa[first, idx], X)
                U = torch.where(got.view(B, 1, 1), Ua[first, idx], U)
                J = newJ
                has |= got
                waiting = pending & ~has
                # trust the model more after a full step, less after a short one
                step = alphas[first]
                mu = torch.where(got & (step >= 0.5), torch.clamp(mu / 4, min=mu_min), mu)
                mu = torch.where(got & (step < 0.1), torch.clamp(mu * 4, max=mu_max), mu)
                mu = torch.where(waiting, torch.clamp(mu * 10, max=mu_max), mu)
                if not bool((waiting & (mu < mu_max)).any()):
                    break
            step_small = has & (rel < tol)
            stalled = pending & ~has
            if bool(step_small.any()):        # a small step is convergence only where the gradient agrees
                pg = projected_gradient(dynamics, cost, x0, U, lower, upper).abs().flatten(1).amax(-1)
                converged |= step_small & (pg <= grad_tol)
            history.append(J.clone())
            if bool((converged | stalled | ~pending).all()):
                break
        pg = projected_gradient(dynamics, cost, x0, U, lower, upper).abs().flatten(1).amax(-1)
        converged |= pg <= grad_tol
    return Solution(X=X, U=U, cost=J, converged=converged, iterations=it, K=K, k=k,
                    history={"cost": torch.stack(history), "projected_gradient": pg, "mu": mu})


def _bound(where, name, value, shape, like):
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    try:
        return value.expand(shape).clone()
    except RuntimeError:
        raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a shape broadcastable "
                         f"to (B, T, m) = {shape}") from None


def _forward(dynamics, x0, X, U, K, k, alphas, lower, upper):
    """Closed-loop rollouts ``u = clamp(U + alpha k + K (x - X))`` for every step size: ``(A, B, T+1, n)``, ``(A, B, T, m)``."""
    A, (B, T, m) = alphas.shape[0], U.shape
    x = x0.expand(A, *x0.shape).reshape(A * B, -1)
    xs, us = [x], []
    for t in range(T):
        dx = x.view(A, B, -1) - X[:, t]
        u = U[:, t] + alphas.view(A, 1, 1) * k[:, t] + (K[:, t] @ dx.unsqueeze(-1)).squeeze(-1)
        u = torch.clamp(u, lower[:, t], upper[:, t]).reshape(A * B, m)
        x = dynamics(x, u, t)
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 1).view(A, B, T + 1, -1), torch.stack(us, 1).view(A, B, T, m)
