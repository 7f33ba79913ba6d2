"""Single shooting: the controls are the only unknowns, the states are their rollout, and the total cost is
minimized by its gradient through the shared :func:`~trajopt.rollout`.

Two optimizers, both batched (each problem keeps its own memory, step size and stopping test):

- ``"lbfgs"``: limited-memory BFGS with a projected line search, for bounds by projection as in
  L-BFGS-B's active-set idea: controls held at a bound by their gradient are fixed for the step, the
  two-loop recursion runs on the free ones, and the step is projected back into the box. Several step
  sizes are tried in one batched pass (problems x step sizes rows) and the longest that satisfies Armijo's
  condition is kept.
- ``"adam"``: Adam (Kingma and Ba) on every control, with a geometric learning-rate schedule; the
  first-order baseline that gradient-based policy learning uses.

Bounds are kept either by ``bounds="project"`` (clamping into the box; the solution is the box-constrained
optimum, the same as :func:`trajopt.ilqr`'s) or by ``bounds="squash"`` (``u = mid + half tanh(z)``, an
unconstrained problem in ``z``; bounds are approached but never reached).

Differentiable with respect to ``x0`` and the tensors of the model and the cost that require grad, with
``bounds="project"``: the converged solution gets the implicit gradient of :func:`trajopt.ilqr` (the KKT
conditions of the same problem), not a differentiation through the iterations.
"""
from __future__ import annotations

import torch

from dynamics import Dynamics
from dynamics.validation import check_consistent
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import rollout

__all__ = ["single_shooting"]

_ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001)
_ARMIJO = 1e-4
_ROUNDOFF = 1e-12     # relative cost changes below this are taken for rounding


def single_shooting(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
                    horizon: int | None = None, u_lower=None, u_upper=None, optimizer: str = "lbfgs",
                    bounds: str = "project", max_iter: int = 1000, grad_tol: float = 1e-6, memory: int = 10,
                    lr: float = 0.05, lr_final: float | None = None, grad: str | None = "implicit") -> Solution:
    """Minimize ``cost(rollout(x0, U), U)`` over ``u_lower <= U <= u_upper`` by gradient, for a batch of problems.

    Args:
        dynamics, cost, x0, U_init, horizon, u_lower, u_upper: as for :func:`trajopt.ilqr` (``x0 (B, n)``,
            ``U_init (B, T, m)`` or zeros of length ``horizon``; bounds broadcastable to ``(B, T, m)``).
        optimizer: ``"lbfgs"`` (default) or ``"adam"``.
        bounds: ``"project"`` (default; exact bounds, the box-constrained optimum) or ``"squash"``
            (``u = (u_upper + u_lower)/2 + (u_upper - u_lower)/2 tanh(z)``, optimized in ``z``; needs both bounds).
        max_iter: iterations per problem (L-BFGS: one gradient and one batched line search each; Adam: one
            gradient each).
        grad_tol: a problem has converged when the largest entry of its projected gradient (``"project"``) or
            of its gradient in ``z`` (``"squash"``) is at most ``grad_tol``.
        memory: L-BFGS's number of stored curvature pairs.
        lr, lr_final: Adam's learning rate, decayed geometrically to ``lr_final`` (default: constant).
        grad: ``"implicit"`` (default; needs ``bounds="project"``) or None (detached).

    Returns:
        ``Solution`` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``converged (B,)``, ``iterations``,
        and ``history``: ``cost (iters+1, B)`` (after each iteration), ``projected_gradient`` (final largest
        entry, ``(B,)``), ``iterations (B,)``, ``stalled (B,)`` (L-BFGS found no descent even along the steepest
        direction: at a kink, or at the limits of rounding).

    Differentiable (``grad="implicit"``, ``bounds="project"``) as :func:`trajopt.ilqr`'s implicit route: exact
    at a converged strict local minimum; clamped controls and unconverged problems get no gradient through the
    solve.
    """
    where = "single_shooting"
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"{where}: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if bounds not in ("project", "squash"):
        raise ValueError(f"{where}: bounds must be 'project' or 'squash', got {bounds!r}")
    if grad not in ("implicit", None):
        raise ValueError(f"{where}: grad must be 'implicit' or None, got {grad!r}")
    if grad == "implicit" and bounds == "squash" and torch.is_grad_enabled():
        raise ValueError(f"{where}: grad='implicit' needs bounds='project' (a squashed control never reaches its "
                         "bound, so the active set is not defined); pass grad=None")
    for name, value in (("max_iter", max_iter), ("memory", memory), ("lr", lr), ("grad_tol", grad_tol)):
        if not value > 0:
            raise ValueError(f"{where}: {name} must be positive, got {value}")
    x0, U_init, dims = check_problem(where, dynamics, cost, x0, U_init, horizon)
    batch = check_consistent(where, {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2})
    options = dict(u_lower=u_lower, u_upper=u_upper, optimizer=optimizer, bounds=bounds, max_iter=max_iter,
                   grad_tol=grad_tol, memory=memory, lr=lr, lr_final=lr_final, grad=grad)
    if batch is None:
        sol = single_shooting(dynamics, cost, x0.unsqueeze(0), U_init.unsqueeze(0), **options)
        return Solution(X=sol.X[0], U=sol.U[0], cost=sol.cost[0], converged=sol.converged[0],
                        iterations=sol.iterations,
                        history={k: v[..., 0] if k == "cost" else v[0] for k, v in sol.history.items()})
    B, T, m = batch, U_init.shape[-2], dims["m"]
    x0 = x0.expand(B, dims["n"])
    lower, upper = check_bounds(where, u_lower, u_upper, (B, T, m), x0)
    if bounds == "squash":
        if lower is None or upper is None:
            raise ValueError(f"{where}: bounds='squash' needs both u_lower and u_upper")
        if not bool(torch.isfinite(upper - lower).all()) or bool((upper <= lower).any()):
            raise ValueError(f"{where}: bounds='squash' needs finite u_lower < u_upper everywhere")
    box = _Box(lower, upper, bounds)
    z = box.to_z(U_init.detach().expand(B, T, m))

    def evaluate(rows, Z):
        """Cost ``(R,)`` and its gradient in ``Z (R, T, m)`` for the problems ``rows``."""
        with torch.enable_grad():
            Z = Z.detach().requires_grad_(True)
            U = box.to_u(Z, rows)
            J = cost(rollout(dynamics, x0.detach()[rows], U), U)
            (g,) = torch.autograd.grad(J.sum(), Z)
        return J.detach(), g

    run = _lbfgs if optimizer == "lbfgs" else _adam
    z, history = run(evaluate, box, z, max_iter=max_iter, grad_tol=grad_tol, memory=memory, lr=lr,
                     lr_final=lr if lr_final is None else lr_final)
    U = box.to_u(z)
    X = rollout(dynamics, x0.detach(), U)
    sol = Solution(X=X, U=U, cost=cost(X, U), converged=history.pop("converged"),
                   iterations=int(history["iterations"].max()), history=history)
    if grad == "implicit":
        implicit_gradient(dynamics, cost, x0, sol, lower, upper)
    return sol


class _Box:
    """The controls as the optimizer sees them: ``U`` itself with projection, or ``z`` with ``U = mid + half
    tanh(z)``; ``rows`` selects problems of the batch."""

    def __init__(self, lower, upper, mode):
        self.lower, self.upper, self.squash = lower, upper, mode == "squash"
        if self.squash:
            self.mid, self.half = (upper + lower) / 2, (upper - lower) / 2

    def to_u(self, Z, rows=None):
        if not self.squash:
            return Z
        mid, half = (self.mid, self.half) if rows is None else (self.mid[rows], self.half[rows])
        return mid + half * torch.tanh(Z)

    def to_z(self, U):
        if not self.squash:
            return self.project(U)
        return torch.atanh(((U - self.mid) / self.half).clamp(-1 + 1e-6, 1 - 1e-6))

    def project(self, Z, rows=None):
        if self.squash:
            return Z
        return clamp_to_bounds(Z, *(b if b is None or rows is None else b[rows] for b in (self.lower, self.upper)))

    def residual(self, Z, g, rows):
        """The optimality residual (projected gradient, or the gradient in ``z``), ``(R, T, m)``."""
        if self.squash:
            return g
        return _project(g, Z, *(None if b is None else b[rows] for b in (self.lower, self.upper)))

    def free(self, Z, g, rows):
        """Controls not held at a bound by their gradient (float mask)."""
        if self.squash:
            return torch.ones_like(Z)
        return (~_clamped(Z, g, *(None if b is None else b[rows] for b in (self.lower, self.upper)))).to(Z.dtype)


def _dot(a, b):
    return (a * b).flatten(1).sum(-1)


def _lbfgs(evaluate, box, z, *, max_iter, grad_tol, memory, **_):
    """Batched projected L-BFGS; returns the final ``z (B, T, m)`` and the history."""
    B = z.shape[0]
    opts = dict(dtype=z.dtype, device=z.device)
    flags = dict(dtype=torch.bool, device=z.device)
    rows = torch.arange(B, device=z.device)
    J, g = evaluate(rows, z)
    if not bool(torch.isfinite(J).all()):
        raise ValueError(f"single_shooting: the initial rollout is not finite for batch element(s) "
                         f"{(~torch.isfinite(J)).nonzero().flatten().tolist()[:8]}")
    S, Y = z.new_zeros(B, memory, *z.shape[1:]), z.new_zeros(B, memory, *z.shape[1:])
    valid = torch.zeros(B, memory, **flags)
    steepest = torch.zeros(B, **flags)                      # the last step failed: next direction is -g
    converged, stalled = torch.zeros(B, **flags), torch.zeros(B, **flags)
    iterations = torch.zeros(B, dtype=torch.long, device=z.device)
    res = box.residual(z, g, rows)
    res, res_norm = res.abs().flatten(1).amax(-1), _dot(res, res)
    scale = 1 / g.abs().flatten(1).amax(-1).clamp_min(1e-300)    # steepest descent's step scale
    shrink = torch.ones(B, **opts)      # after failed steepest-descent steps: the next ones are shorter
    alphas = torch.tensor(_ALPHAS, **opts)
    history = [J]
    for _ in range(max_iter):
        converged = converged | (res <= grad_tol)
        a = (~converged & ~stalled).nonzero().flatten()
        if len(a) == 0:
            break
        za, ga, free = z[a], g[a], box.free(z[a], g[a], a)
        use = valid[a] & ~steepest[a, None]
        d = -_two_loop(ga * free, S[a] * free.unsqueeze(1), Y[a] * free.unsqueeze(1), use) * free
        # without curvature pairs, a steepest-descent step scaled by the last pair's s'y/y'y (at the start: largest
        # entry 1)
        first = ~use.any(1)
        d = torch.where(first.view(-1, 1, 1), -ga * free * scale[a].view(-1, 1, 1), d)
        descent = _dot(ga, d) < 0
        d = torch.where(descent.view(-1, 1, 1), d, -ga * free * scale[a].view(-1, 1, 1))
        A, R = len(alphas), len(a)
        rr = a.repeat(A)                                     # rows in (step size, problem) order
        step = (alphas.view(A, 1) * shrink[a]).view(-1, 1, 1)
        Zt = box.project(za.repeat(A, 1, 1) + step * d.repeat(A, 1, 1), rr)
        Jt, gt = evaluate(rr, Zt)
        rt = box.residual(Zt, gt, rr)
        rt, rt_norm = rt.abs().flatten(1).amax(-1).view(A, R), _dot(rt, rt).view(A, R)
        Jt = Jt.view(A, R)
        decrease = J[a] - Jt
        predicted = -_dot(ga.repeat(A, 1, 1), Zt - za.repeat(A, 1, 1)).view(A, R)
        finite = torch.isfinite(Jt) & torch.isfinite(rt)
        # below rounding the cost cannot confirm a decrease: a step is then judged by the optimality residual's norm
        rounding = _ROUNDOFF * J[a].abs().clamp_min(1.0)
        fine = predicted <= rounding
        accept = finite & torch.where(fine, (decrease >= -rounding) & (rt_norm < res_norm[a]),
                                      (decrease > 0) & (decrease >= _ARMIJO * predicted))
        hit = accept.any(0)
        pick = torch.argmax(accept.to(torch.int8), 0) * R + torch.arange(R, device=z.device)   # longest step
        w = hit.nonzero().flatten()
        aw, pw = a[w], pick[w]
        z_new, g_new = Zt[pw], gt[pw]
        s, y = z_new - z[aw], g_new - g[aw]
        sy, yy = _dot(s, y), _dot(y, y)
        good = sy > 1e-12 * (_dot(s, s) * yy).sqrt()
        keep = aw[good]
        S = S.index_put((keep,), torch.cat([S[keep, 1:], s[good].unsqueeze(1)], 1))
        Y = Y.index_put((keep,), torch.cat([Y[keep, 1:], y[good].unsqueeze(1)], 1))
        valid = valid.index_put((keep,), torch.cat([valid[keep, 1:], torch.ones(len(keep), 1, **flags)], 1))
        scale = scale.index_put((keep,), sy[good] / yy[good])
        z, g, J = z.index_put((aw,), z_new), g.index_put((aw,), g_new), J.index_put((aw,), Jt.flatten()[pw])
        res = res.index_put((aw,), rt.flatten()[pw])
        res_norm = res_norm.index_put((aw,), rt_norm.flatten()[pw])
        # a failed step restarts from the steepest direction; failed steepest steps shrink it, down to a stop
        failed = a[~hit]
        shrink = shrink.index_put((failed,), torch.where(first[~hit], shrink[failed] * 1e-3, shrink[failed]))
        shrink = shrink.index_put((aw,), torch.ones_like(aw, dtype=z.dtype))
        stalled = stalled.index_put((failed,), shrink[failed] < 1e-10)
        valid = valid.index_put((failed,), torch.zeros(len(failed), memory, **flags))
        steepest = steepest.index_put((a,), ~hit)
        iterations = iterations.index_put((a,), iterations[a] + 1)
        history.append(J.clone())
    converged = converged | (res <= grad_tol)
    return z, {"cost": torch.stack(history), "projected_gradient": res, "iterations": iterations,
               "stalled": stalled & ~converged, "converged": converged}


def _two_loop(g, S, Y, valid):
    """L-BFGS's two-loop recursion: ``H g`` for each problem with its pairs ``S, Y (R, M, ...)`` (oldest first;
    ``valid (R, M)`` marks the pairs to use) and the initial scaling ``s'y / y'y`` of the newest valid pair."""
    M = S.shape[1]
    q, coef, rho = g, [None] * M, [None] * M
    gamma = torch.ones(g.shape[0], dtype=g.dtype, device=g.device)
    scaled = torch.zeros_like(valid[:, 0])
    for i in range(M - 1, -1, -1):
        s, y = S[:, i], Y[:, i]
        sy, yy = _dot(s, y), _dot(y, y)
        ok = valid[:, i] & (sy > 1e-12 * (_dot(s, s) * yy).sqrt())
        rho[i] = torch.where(ok, 1 / torch.where(ok, sy, 1.0), 0.0)
        coef[i] = rho[i] * _dot(s, q)
        q = q - coef[i].view(-1, *[1] * (g.ndim - 1)) * y
        gamma = torch.where(ok & ~scaled, sy / torch.where(ok, yy, 1.0), gamma)
        scaled = scaled | ok
    r = gamma.view(-1, *[1] * (g.ndim - 1)) * q
    for i in range(M):
        beta = rho[i] * _dot(Y[:, i], r)
        r = r + (coef[i] - beta).view(-1, *[1] * (g.ndim - 1)) * S[:, i]
    return r


def _adam(evaluate, box, z, *, max_iter, grad_tol, lr, lr_final, **_):
    """Batched Adam (each problem stops updating once converged); returns the final ``z`` and the history."""
    B = z.shape[0]
    flags = dict(dtype=torch.bool, device=z.device)
    rows = torch.arange(B, device=z.device)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m1, m2 = torch.zeros_like(z), torch.zeros_like(z)
    converged = torch.zeros(B, **flags)
    iterations = torch.zeros(B, dtype=torch.long, device=z.device)
    history = []
    decay = (lr_final / lr) ** (1.0 / max(max_iter - 1, 1))
    for it in range(max_iter + 1):
        J, g = evaluate(rows, z)
        history.append(J)
        res = box.residual(z, g, rows).abs().flatten(1).amax(-1)
        converged = converged | (res <= grad_tol)
        if it == max_iter or bool(converged.all()):
            break
        if not bool(torch.isfinite(J).all()):
            raise ValueError(f"single_shooting (adam): the cost became non-finite for batch element(s) "
                             f"{(~torch.isfinite(J)).nonzero().flatten().tolist()[:8]}; lower lr")
        live = (~converged).to(z.dtype).view(-1, 1, 1)
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        step = lr * decay ** it * (m1 / (1 - beta1 ** (it + 1))) / ((m2 / (1 - beta2 ** (it + 1))).sqrt() + eps)
        z = box.project(z - live * step)
        iterations = iterations + (~converged).long()
    return z, {"cost": torch.stack(history), "projected_gradient": res, "iterations": iterations,
               "stalled": torch.zeros(B, **flags), "converged": converged}
