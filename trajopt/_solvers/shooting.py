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

A problem whose rollout, cost or gradient is not finite at its initial guess, or (Adam) at an iterate, stops
there with ``Status.NOT_FINITE`` and keeps its last finite iterate; the rest of the batch is solved. A line-search
step is accepted only where the whole trajectory, the cost and the gradient are finite.

Differentiable with respect to ``x0`` and the tensors of the model and the cost that require grad, with
``bounds="project"``: the converged solution gets the implicit gradient of :func:`trajopt.ilqr` (the KKT
conditions of the same problem, :func:`trajopt._core.box_kkt.implicit_solution`), not a differentiation through
the iterations.
"""
from __future__ import annotations

import torch

from .._core.bounds import clamp, clamped, project
from .._core.box_kkt import implicit_solution
from .._core.checks import check_choice, check_int, check_positive, resolve_grad, tolerance
from .._core.linesearch import ALPHAS, rounding, sufficient_decrease
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import unchecked_rollout

__all__ = ["single_shooting"]


@solver(takes=())
def single_shooting(problem: Problem, *, optimizer: str = "lbfgs", bounds: str = "project", max_iter: int = 1000,
                    grad_tol: float | None = None, memory: int | None = None, lr: float | None = None,
                    lr_final: float | None = None, grad: str | None = "implicit") -> Solution:
    """Minimize ``cost(rollout(x0, U), U)`` over ``u_lower <= U <= u_upper`` by gradient, for a batch of problems.

    Starts from ``problem.U_init``. ``problem.X_init``, the state bounds and the constraint are not used.

    Args:
        problem: the batch of problems (a :class:`~trajopt.Problem`).
        optimizer: ``"lbfgs"`` (default) or ``"adam"``.
        bounds: ``"project"`` (default; exact bounds, the box-constrained optimum) or ``"squash"``
            (``u = (u_upper + u_lower)/2 + (u_upper - u_lower)/2 tanh(z)``, optimized in ``z``; needs both bounds,
            finite, with ``u_lower < u_upper``).
        max_iter: iterations per problem (L-BFGS: one gradient and one batched line search each; Adam: one
            gradient each).
        grad_tol: a problem has converged when the largest entry of its projected gradient (``"project"``) or
            of its gradient in ``z`` (``"squash"``) is at most ``grad_tol``; default ``1e-6`` in float64, scaled to
            the dtype's precision otherwise (``8.1e-4`` in float32).
        memory: L-BFGS's number of stored curvature pairs (default 10); L-BFGS only.
        lr, lr_final: Adam's learning rate (default 0.05), decayed geometrically to ``lr_final`` (default ``lr``:
            constant); Adam only.
        grad: ``"implicit"`` (default; needs ``bounds="project"``) or None (a detached solution).

    Returns:
        :class:`~trajopt.Solution` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``status``
        (``CONVERGED``; ``MAX_ITER``; ``STALLED``: L-BFGS found no descent even along the shortest steepest-descent
        step, at a kink or at the limits of rounding; ``NOT_FINITE``: the rollout, cost or gradient was not finite at
        the initial guess, where the problem keeps ``x0`` held over the horizon and its ``U_init``, or (Adam) at an
        iterate, where it keeps the last finite one; its ``cost`` is ``inf``), ``iterations (B,)``,
        ``cost_history (B, I+1)`` (the cost of each problem's iterate before the first iteration and after each;
        a problem that stopped repeats its value; ``inf`` for a problem not finite at its initial guess),
        ``residual (B,)`` (the largest entry of the projected gradient, or of the gradient in ``z``, at the final
        iterate; ``inf`` for ``NOT_FINITE``). No ``K``, ``k`` or extras.

    The model and the cost must treat the rows of a batch independently: the solver evaluates them on
    selections of the batch (the problems still iterating, several step sizes at once).

    Differentiable (``grad="implicit"``, ``bounds="project"``; ``X``, ``U``, ``cost``) with respect to ``x0`` and
    the tensors of ``dynamics`` and ``cost`` that require grad, as :func:`trajopt.ilqr`'s implicit route: exact at a
    converged strict local minimum; clamped controls and unconverged problems get no gradient through the solve
    (only through the final rollout).
    """
    where = "single_shooting"
    check_choice(where, "optimizer", optimizer, ("lbfgs", "adam"))
    check_choice(where, "bounds", bounds, ("project", "squash"))
    route = resolve_grad(where, grad, ("implicit", None))
    if route == "implicit" and bounds == "squash":
        raise ValueError(f"{where}: grad='implicit' needs bounds='project' (a squashed control never reaches its "
                         "bound, so the active set is not defined); pass grad=None")
    check_int(where, max_iter=max_iter)
    if grad_tol is not None:
        check_positive(where, grad_tol=grad_tol)
    grad_tol = tolerance(grad_tol, 1e-6, problem.dtype)
    other = "adam" if optimizer == "lbfgs" else "lbfgs"
    for name, value in ((("lr", lr), ("lr_final", lr_final)) if optimizer == "lbfgs" else (("memory", memory),)):
        if value is not None:
            raise ValueError(f"{where}: {name} applies to optimizer={other!r} only, not {optimizer!r}")
    if optimizer == "lbfgs":
        memory = 10 if memory is None else memory
        check_int(where, memory=memory)
        opts = dict(memory=memory)
    else:
        lr = 0.05 if lr is None else lr
        check_positive(where, lr=lr)
        lr_final = lr if lr_final is None else lr_final
        check_positive(where, lr_final=lr_final)
        opts = dict(lr=lr, lr_final=lr_final)
    lower, upper = problem.u_lower, problem.u_upper
    if bounds == "squash":
        if lower is None or upper is None:
            raise ValueError(f"{where}: bounds='squash' needs both u_lower and u_upper")
        if not bool(torch.isfinite(upper - lower).all()) or bool((upper <= lower).any()):
            raise ValueError(f"{where}: bounds='squash' needs finite u_lower < u_upper everywhere")
    B, T, n = problem.B, problem.T, problem.n
    dynamics, cost = problem.dynamics, problem.cost
    x0 = problem.x0.detach()
    box = _Box(lower, upper, bounds)

    def evaluate(rows, Z):
        """Cost ``(R,)``, its gradient in ``Z (R, T, m)`` for the problems ``rows``, and whether each is finite
        (the whole trajectory, the cost and the gradient)."""
        with torch.enable_grad(), problem.at(rows):
            Z = Z.detach().requires_grad_(True)
            U = box.to_u(Z, rows)
            X = unchecked_rollout(dynamics, x0[rows], U)
            J = cost(X, U)
            (g,) = torch.autograd.grad(J.sum(), Z)
        ok = torch.isfinite(J) & torch.isfinite(X.detach()).flatten(1).all(-1) & torch.isfinite(g).flatten(1).all(-1)
        return J.detach(), g, ok

    with torch.no_grad():
        z = box.to_z(problem.U_init.detach())
        run = _lbfgs if optimizer == "lbfgs" else _adam
        z, r = run(evaluate, box, z, max_iter=max_iter, grad_tol=grad_tol, **opts)
        # a problem not finite at its initial guess keeps x0 held over the horizon and its U_init
        U = torch.where(r["start_bad"].view(B, 1, 1), problem.U_init.detach(), box.to_u(z))
        X = unchecked_rollout(dynamics, x0, U)
        X = torch.where(r["start_bad"].view(B, 1, 1), x0.unsqueeze(1).expand(B, T + 1, n), X)
        J = cost(X, U)
    status = torch.full((B,), int(Status.MAX_ITER), dtype=torch.long, device=problem.device)
    status = torch.where(r["stalled"], int(Status.STALLED), status)
    status = torch.where(r["converged"], int(Status.CONVERGED), status)
    status = torch.where(r["bad"], int(Status.NOT_FINITE), status)
    if route == "implicit":
        X, U = implicit_solution(problem, X, U, status)
        J = cost(X, U)
    bad = status == Status.NOT_FINITE
    return Solution(X=X, U=U, cost=torch.where(bad, float("inf"), J), status=status, iterations=r["iterations"],
                    cost_history=r["cost"], residual=torch.where(bad, float("inf"), r["residual"]))


class _Box:
    """The controls as the optimizer sees them: ``U`` itself with projection, or ``z`` with ``U = mid + half
    tanh(z)``; ``rows`` selects problems of the batch."""

    def __init__(self, lower, upper, mode):
        self.lower, self.upper, self.squash = lower, upper, mode == "squash"
        if self.squash:
            self.mid, self.half = (upper + lower) / 2, (upper - lower) / 2

    def _rows(self, rows):
        return tuple(b if b is None or rows is None else b[rows] for b in (self.lower, self.upper))

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
        return clamp(Z, *self._rows(rows))

    def residual(self, Z, g, rows):
        """The optimality residual (projected gradient, or the gradient in ``z``), ``(R, T, m)``."""
        if self.squash:
            return g
        return project(g, Z, *self._rows(rows))

    def free(self, Z, g, rows):
        """Controls not held at a bound by their gradient (float mask)."""
        if self.squash:
            return torch.ones_like(Z)
        return (~clamped(Z, g, *self._rows(rows))).to(Z.dtype)


def _dot(a, b):
    return (a * b).flatten(1).sum(-1)


def _start(evaluate, box, z):
    """The cost, gradient and residual (largest entry and squared norm) at the initial guess ``z (B, T, m)``, and
    the problems not finite there (their cost ``inf``, gradient zero, residual ``inf``)."""
    rows = torch.arange(z.shape[0], device=z.device)
    J, g, ok = evaluate(rows, z)
    res = box.residual(z, g, rows)
    res, res_norm = res.abs().flatten(1).amax(-1), _dot(res, res)
    bad = ~(ok & torch.isfinite(res) & torch.isfinite(res_norm))
    if bool(bad.any()):
        J, res, res_norm = (torch.where(bad, float("inf"), v) for v in (J, res, res_norm))
        g = torch.where(bad.view(-1, 1, 1), 0.0, g)
    return J, g, res, res_norm, bad


def _lbfgs(evaluate, box, z, *, max_iter, grad_tol, memory):
    """Batched projected L-BFGS; returns the final ``z (B, T, m)`` and the per-problem record."""
    B = z.shape[0]
    opts = dict(dtype=z.dtype, device=z.device)
    flags = dict(dtype=torch.bool, device=z.device)
    J, g, res, res_norm, bad = _start(evaluate, box, z)
    S, Y = z.new_zeros(B, memory, *z.shape[1:]), z.new_zeros(B, memory, *z.shape[1:])
    valid = torch.zeros(B, memory, **flags)
    steepest = torch.zeros(B, **flags)                      # the last step failed: next direction is -g
    converged, stalled = torch.zeros(B, **flags), torch.zeros(B, **flags)
    iterations = torch.zeros(B, dtype=torch.long, device=z.device)
    scale = 1 / g.abs().flatten(1).amax(-1).clamp_min(1e-300)    # steepest descent's step scale
    shrink = torch.ones(B, **opts)      # after failed steepest-descent steps: the next ones are shorter
    alphas = torch.tensor(ALPHAS, **opts)
    history = [J]
    for _ in range(max_iter):
        converged = converged | (res <= grad_tol)
        a = (~converged & ~stalled & ~bad).nonzero().flatten()
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
        Jt, gt, ok = evaluate(rr, Zt)
        rt = box.residual(Zt, gt, rr)
        rt, rt_norm = rt.abs().flatten(1).amax(-1).view(A, R), _dot(rt, rt).view(A, R)
        Jt = Jt.view(A, R)
        decrease = J[a] - Jt
        predicted = -_dot(ga.repeat(A, 1, 1), Zt - za.repeat(A, 1, 1)).view(A, R)
        # the whole trajectory, the cost and the gradient finite (a cost may ignore a non-finite final state)
        finite = ok.view(A, R) & torch.isfinite(Jt) & torch.isfinite(rt)
        # below rounding the cost cannot confirm a decrease: a step is then judged by the optimality residual's norm
        tiny = rounding(J[a])
        fine = predicted <= tiny
        accept = finite & torch.where(fine, (decrease >= -tiny) & (rt_norm < res_norm[a]),
                                      sufficient_decrease(decrease, predicted))
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
    return z, dict(cost=torch.stack(history, 1), residual=res, iterations=iterations, converged=converged,
                   stalled=stalled & ~converged, bad=bad, start_bad=bad)


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


def _adam(evaluate, box, z, *, max_iter, grad_tol, lr, lr_final):
    """Batched Adam (each problem stops updating once converged, or once an iterate is not finite: it then goes
    back to the previous one); returns the final ``z`` and the per-problem record."""
    B = z.shape[0]
    flags = dict(dtype=torch.bool, device=z.device)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m1, m2 = torch.zeros_like(z), torch.zeros_like(z)
    converged = torch.zeros(B, **flags)
    iterations = torch.zeros(B, dtype=torch.long, device=z.device)
    J, g, res, _, bad = _start(evaluate, box, z)
    start_bad = bad
    history = [J]
    decay = (lr_final / lr) ** (1.0 / max(max_iter - 1, 1))
    z_prev = z
    for it in range(max_iter + 1):
        if it > 0:
            rows = (~bad).nonzero().flatten()           # every problem with a finite iterate, converged ones too
            Jr, gr, ok = evaluate(rows, z[rows])
            rr = box.residual(z[rows], gr, rows).abs().flatten(1).amax(-1)
            ok = ok & torch.isfinite(rr)
            # a problem whose new iterate is not finite stops at the previous one
            now_bad = rows[~ok]
            z = z.index_put((now_bad,), z_prev[now_bad])
            bad = bad.index_put((now_bad,), torch.ones(len(now_bad), **flags))
            res = res.index_put((now_bad,), torch.full((len(now_bad),), float("inf"), dtype=z.dtype, device=z.device))
            good = rows[ok]
            J, res = J.index_put((good,), Jr[ok]), res.index_put((good,), rr[ok])
            g = torch.zeros_like(z).index_put((good,), gr[ok])
            history.append(J)
        converged = converged | (res <= grad_tol)
        if it == max_iter or bool((converged | bad).all()):
            break
        live = ~converged & ~bad
        m1 = beta1 * m1 + (1 - beta1) * g
        m2 = beta2 * m2 + (1 - beta2) * g * g
        step = lr * decay ** it * (m1 / (1 - beta1 ** (it + 1))) / ((m2 / (1 - beta2 ** (it + 1))).sqrt() + eps)
        z_prev = z
        z = box.project(torch.where(live.view(-1, 1, 1), z - step, z))
        iterations = iterations + live.long()
    return z, dict(cost=torch.stack(history, 1), residual=res, iterations=iterations, converged=converged,
                   stalled=torch.zeros(B, **flags), bad=bad, start_bad=start_bad)
