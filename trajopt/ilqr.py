"""Box-constrained iLQR and DDP for batches of nonlinear trajectory-optimization problems.

Each iteration linearizes the dynamics and quadratizes the cost along the current
trajectory (the shared :func:`~trajopt.linearize` and ``Cost.quadratize``), computes the
exact gradient with respect to the controls by the adjoint pass (for the stopping test),
runs the box-constrained LQR backward pass of Tassa, Mansard and Todorov (2014) (a box QP
per stage, feedback on the free controls only; :func:`trajopt.lqr.box_lqr_backward`), and
line-searches the true cost over several step sizes at once. The regularization ``mu`` of
the next value Hessian (``Q_uu + mu B'B``, Tassa et al. 2012) grows on failure and shrinks
on success. From a state guess (``X_init``) the gaps of the infeasible trajectory enter the
backward pass and each step closes a fraction of them (feasibility-driven DDP, Mastalli et
al. 2020). Every problem of the
batch has its own regularization, step size and stopping test, and stops changing once it
has converged.

With ``second_order=True`` (:func:`ddp`) the quadratic model also holds the dynamics'
second derivatives contracted with the costates of the current trajectory, from
vector-Hessian products (never a full Hessian of the model): the backward pass is then the
exact Newton step on the controls (the stagewise Newton method of Dunn and Bertsekas 1989,
which DDP approximates to second order).

Differentiable with respect to ``x0`` and every tensor of ``dynamics`` and ``cost`` that
requires grad: ``grad="implicit"`` differentiates the optimality conditions of the converged
solution (the adjoint LQR of the exact Newton system on the free controls, active set
fixed); ``grad="unroll"`` records the iterations for autograd.
"""
from __future__ import annotations

import itertools

import torch
from torch.autograd.function import once_differentiable

from dynamics import Dynamics
from dynamics._validation import check_consistent, check_tensor
from .costs import Cost
from .lqr import box_lqr_backward, costates, lqr_with_costates
from .problem import Solution
from .rollout import linearize, rollout

__all__ = ["ilqr", "ddp", "projected_gradient"]

_ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001)
_ROWS_AT_ONCE = 1024    # problems x step sizes evaluated in one forward pass
_ROUNDOFF = 1e-12       # relative cost increases below this are taken for rounding


def projected_gradient(dynamics: Dynamics, cost: Cost, x0, U, u_lower=None, u_upper=None):
    """First-order optimality residual of the box-constrained problem, ``(B, T, m)``: the projected gradient
    ``U - clamp(U - g, u_lower, u_upper)`` with ``g`` the gradient of the total cost in the controls. It
    equals ``g`` on controls away from their bounds and is zero on a control held at a bound by its gradient."""
    with torch.enable_grad():
        U = U.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(cost(rollout(dynamics, x0, U), U).sum(), U)
    bound = [None if b is None else torch.as_tensor(b, dtype=g.dtype, device=g.device) for b in (u_lower, u_upper)]
    return _project(g, U.detach(), *bound)


def _project(g, U, lower, upper):
    return U - clamp_to_bounds(U - g, lower, upper)


def clamp_to_bounds(U, lower=None, upper=None):
    """``U`` clamped into ``[lower, upper]`` (either may be None: unbounded), broadcasting."""
    U = U if lower is None else torch.maximum(U, lower)
    return U if upper is None else torch.minimum(U, upper)


def check_problem(where, dynamics, cost, x0, U_init, horizon):
    """Check the arguments every trajectory solver shares; returns ``x0``, ``U_init`` (zeros of length
    ``horizon`` when None) and the dimensions ``{"n": n, "m": m}``."""
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics (call .discretize() on a "
                        f"ContinuousDynamics), got {type(dynamics).__name__}")
    if not isinstance(cost, Cost):
        raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
    dims = {"n": dynamics.state_dim, "m": dynamics.control_dim}
    x0 = check_tensor(where, "x0", x0, ("n",), dims)
    if U_init is None:
        if horizon is None or horizon < 1:
            raise ValueError(f"{where}: give U_init (B, T, m) or a positive horizon")
        U_init = x0.new_zeros((*x0.shape[:-1], horizon, dims["m"]))
    return x0, check_tensor(where, "U_init", U_init, ("T", "m"), dims), dims


def ilqr(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
         X_init: torch.Tensor | None = None, horizon: int | None = None, u_lower=None, u_upper=None, max_iter: int = 100, tol: float = 1e-12,
         grad_tol: float = 1e-6, second_order: bool = False, grad: str | None = "implicit",
         mu_init: float = 1e-6, mu_min: float = 1e-9, mu_max: float = 1e10) -> Solution:
    """Solve ``min_U cost(rollout(x0, U), U)`` subject to ``u_lower <= U <= u_upper`` for a batch of problems.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics`.
        cost: a :class:`trajopt.Cost` (stage and terminal terms).
        x0: initial states ``(B, n)`` (or ``(n,)``).
        U_init: initial controls ``(B, T, m)`` (or ``(T, m)``), clipped into the bounds; zeros of
            length ``horizon`` if None.
        X_init: an optional state guess ``(B, T+1, n)`` (or ``(T+1, n)``), which need not be a rollout of
            ``U_init`` nor start at ``x0``: the solver then starts from this infeasible trajectory and each
            accepted step of size ``alpha`` closes the fraction ``alpha`` of every gap
            ``dynamics(x_t, u_t) - x_{t+1}`` (feasibility-driven DDP, Mastalli et al. 2020), so the first
            full step makes it a rollout. A guess near the goal often leads to a better local minimum
            than a rollout of ``U_init`` (crocoddyl's default guess is the zero state). A problem counts as
            converged only once feasible; one still infeasible at the end is returned as the rollout of
            its controls.
        horizon: ``T`` when ``U_init`` is None.
        u_lower, u_upper: bounds broadcastable to ``(B, T, m)`` (per problem, per step, per control), or None.
        max_iter: iteration budget per problem.
        tol: below this relative decrease predicted by the model, the cost can no longer tell progress from
            rounding: steps are then judged by the gradient and use Newton's model (see the module docstring).
        grad_tol: a problem has converged when its projected gradient's largest entry is at most ``grad_tol``.
        second_order: add the dynamics' second-order terms (see :func:`ddp`).
        grad: ``"implicit"`` (default), ``"unroll"`` or None (a detached solution).
        mu_init, mu_min, mu_max: the regularization ``mu`` (see :func:`trajopt.lqr.box_lqr_backward`).

    Returns:
        ``Solution`` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``converged (B,)``,
        ``iterations`` (the most any problem used), feedback ``K (B, T, m, n)`` and feedforward ``k``
        of the last backward pass, and ``history``: ``cost`` per iteration ``(iters+1, B)``,
        ``projected_gradient`` (final largest entry, ``(B,)``), ``mu`` and ``iterations`` ``(B,)``, and
        ``costates`` ``(B, T+1, n)`` (the multipliers of the dynamics at the final trajectory; detached).

    The model and the cost must treat the rows of a batch independently: the solver evaluates them on
    selections of the batch (the problems still iterating, several step sizes at once).

    Differentiable (``X``, ``U``, ``cost``) with respect to ``x0`` and the tensors of ``dynamics`` and
    ``cost`` that require grad, not with respect to the bounds or ``U_init``. The implicit route is exact
    at a converged strict local minimum; controls clamped at a bound get zero gradient, problems that did
    not converge get none through the solve (only through the final rollout), as with mpc.pytorch's
    ``detach_unconverged``; it raises if the reduced Hessian on the free controls of a converged problem is
    not positive definite. ``K`` and ``k`` are detached.
    """
    where = "ddp" if second_order else "ilqr"
    if grad not in ("implicit", "unroll", None):
        raise ValueError(f"{where}: grad must be 'implicit', 'unroll' or None, got {grad!r}")
    x0, U_init, dims = check_problem(where, dynamics, cost, x0, U_init, horizon)
    options = dict(u_lower=u_lower, u_upper=u_upper, max_iter=max_iter, tol=tol, grad_tol=grad_tol,
                   second_order=second_order, grad=grad, mu_init=mu_init, mu_min=mu_min, mu_max=mu_max)
    tensors, ranks = {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2}
    if X_init is not None:
        tensors["X_init"] = X_init = check_tensor(where, "X_init", X_init, ("T+1", "n"),
                                                  {**dims, "T+1": U_init.shape[-2] + 1})
        ranks["X_init"] = 2
    batch = check_consistent(where, tensors, ranks)
    if batch is None:
        sol = ilqr(dynamics, cost, x0.unsqueeze(0), U_init.unsqueeze(0),
                   X_init=None if X_init is None else X_init.unsqueeze(0), **options)
        return Solution(X=sol.X[0], U=sol.U[0], cost=sol.cost[0], converged=sol.converged[0],
                        iterations=sol.iterations, K=sol.K[0], k=sol.k[0],
                        history={k: v[..., 0] if k == "cost" else v[0] for k, v in sol.history.items()})
    B, T, m = batch, U_init.shape[-2], dims["m"]
    x0 = x0.expand(B, dims["n"])
    shape = (B, T, m)
    lower, upper = check_bounds(where, u_lower, u_upper, shape, x0)
    U0 = clamp_to_bounds(U_init.detach().expand(shape), lower, upper)

    unroll = grad == "unroll" and torch.is_grad_enabled()
    with torch.set_grad_enabled(unroll):
        X0 = None if X_init is None else X_init.detach().expand(B, T + 1, dims["n"])
        out, at = _solve(dynamics, cost, x0 if unroll else x0.detach(), U0, X0, lower, upper, where, **options)
    if grad == "implicit":
        implicit_gradient(dynamics, cost, x0, out, lower, upper, at)
    out.history["projected_gradient"] = out.history.pop("pg").abs().flatten(1).amax(-1)
    return out


def ddp(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, **options) -> Solution:
    """:func:`ilqr` with ``second_order=True``: the backward pass adds ``sum_i lam_i f_i''`` (the dynamics'
    second derivatives contracted with the costates of the current trajectory, by
    :meth:`dynamics.Dynamics.vector_hessians`) to the cost's Hessians, so each step is a Newton step on
    the controls, regularized where the Hessian is not positive definite. Same arguments and result."""
    return ilqr(dynamics, cost, x0, U_init, second_order=True, **options)


def _solve(dynamics, cost, x0, U, X0, lower, upper, where, *, max_iter, tol, grad_tol, second_order,
           mu_init, mu_min, mu_max, **_):
    """The iterations; differentiable when grad mode is on (the unroll route).

    Each iteration works on the problems still iterating only: one linearization, one backward pass and one
    batched line search for all of them. A problem whose step is rejected grows its regularization and tries
    again in the next iteration with the others (an iteration is one linearization, as in mpc.pytorch), so
    that a batch costs what its slow members need and no pass runs for a few stragglers alone.
    """
    B, T, m = U.shape
    opts = dict(dtype=x0.dtype, device=x0.device)
    flags = dict(dtype=torch.bool, device=x0.device)
    inf = torch.full((B, T, m), float("inf"), **opts)
    lower_t = -inf if lower is None else lower
    upper_t = inf if upper is None else upper
    X = rollout(dynamics, x0, U) if X0 is None else X0
    feasible = torch.full((B,), X0 is None, **flags)       # X is a rollout of U (no gaps)
    J = cost(X, U)
    J = torch.where(torch.isfinite(X).flatten(1).all(-1), J, float("nan"))
    if not bool(torch.isfinite(J).all()):
        raise ValueError(f"{where}: the initial {'rollout' if X0 is None else 'guess'} is not finite for batch "
                         f"element(s) {(~torch.isfinite(J)).nonzero().flatten().tolist()[:8]}")
    mu = torch.full((B,), mu_init, **opts)
    converged, done, fine_before, polished = (torch.zeros(B, **flags) for _ in range(4))
    pg = torch.zeros(B, T, m, **opts)
    at = None       # the dynamics' Jacobians and the costates at each problem's current trajectory
    pg_prev = torch.full((B,), float("inf"), **opts)
    iterations = torch.zeros(B, dtype=torch.long, device=x0.device)
    history = [J.detach()]
    alphas = torch.tensor(_ALPHAS, **opts)
    K = torch.zeros(B, T, m, x0.shape[-1], **opts)
    k = torch.zeros(B, T, m, **opts)
    it = 0
    for it in range(1, max_iter + 2):
        a = (~done).nonzero().flatten()                    # the problems still iterating
        if len(a) == 0:
            break
        Xa, Ua, lo, hi = X[a], U[a], lower_t[a], upper_t[a]
        F, f = linearize(dynamics, Xa, Ua)
        q = cost.quadratize(Xa, Ua)
        g, lam = costates(F, q.C, q.c, q.C_final, q.c_final)
        gaps, gap0 = _gaps(F, f, Xa, Ua, x0[a], feasible[a], where)
        pga = _project(g, Ua, lo, hi).detach()
        pg = pg.index_put((a,), pga)
        at = _keep(at, a, B, F, lam)
        pg_max = pga.abs().flatten(1).amax(-1)
        now_converged = (pg_max <= grad_tol) & feasible[a]
        # once steps are below rounding, Newton steps go on only while they still shrink the gradient
        stop = now_converged | (polished[a] & (pg_max > 0.5 * pg_prev[a]))
        converged = converged.index_put((a,), converged[a] | now_converged)
        done = done.index_put((a,), stop)
        pg_prev = pg_prev.index_put((a,), pg_max)
        if it > max_iter or bool(done.all()):
            break
        go = (~stop).nonzero().flatten()
        a = a[go]
        F, lam = F[go], lam[go]
        q = type(q)(*(z[go] for z in q))
        if gaps is not None:
            gaps, gap0 = gaps[go], gap0[go]
        # Newton's model where asked, and where Gauss-Newton steps have reached rounding (at a strict local
        # minimum the exact Hessian is positive definite and its steps converge quadratically). A problem on
        # Newton's model also tries the Gauss-Newton step, in the same batched passes, and keeps the cheaper.
        newton = fine_before[a] | second_order
        alt = newton.nonzero().flatten()                    # positions in ``a`` with a Gauss-Newton alternative
        C = q.C
        if len(alt):
            C = C.index_put((alt,), C[alt] + _second_order_terms(dynamics, X[a[alt]], U[a[alt]], lam[alt]))
        pos = torch.cat([torch.arange(len(a), device=x0.device), alt])   # each candidate's position in ``a``
        on_newton = torch.cat([newton, torch.zeros(len(alt), **flags)])
        b = a[pos]
        nonconvex = on_newton & fine_before[b]
        Kc, kc, (d1, d2), _, ok = box_lqr_backward(
            F[pos], torch.cat([C, q.C[alt]]), q.c[pos], q.C_final[pos], q.c_final[pos], lower_t[b] - U[b],
            upper_t[b] - U[b], mu[b], *((None, None) if gaps is None else (gaps[pos], gap0[pos])),
            nonconvex=nonconvex if bool(nonconvex.any()) else None)
        scale = J[b].abs().clamp_min(1.0)
        fine_c = ok & feasible[b] & (-d1 <= tol * scale)    # the model's decrease is too small for the cost to verify
        R, n = len(pos), X.shape[-1]
        got_c = torch.zeros(R, **flags)
        J_c, step_c = torch.full((R,), float("inf"), **opts), torch.zeros(R, **opts)
        X_c, U_c = X.new_zeros(R, T + 1, n), U.new_zeros(R, T, m)
        # all step sizes in one batched forward pass while that is cheap (per-operation overhead dominates);
        # for large batches the full step first and the shorter ones only where it was rejected. Below
        # rounding only the full step counts.
        together = R * len(alphas) <= _ROWS_AT_ONCE
        for group in ((alphas,) if together else (alphas[:1], alphas[1:])):
            r = (ok & ~got_c & (~fine_c if group[0] < 1 else True)).nonzero().flatten()
            if len(r) == 0:
                continue
            br = b[r]
            Xt, Ut = _forward(dynamics, x0[br], X[br], U[br], Kc[r], kc[r], group, lower_t[br], upper_t[br],
                              *((None, None) if gaps is None else (gaps[pos[r]], gap0[pos[r]])))
            Jt = cost(Xt.flatten(0, 1), Ut.flatten(0, 1)).view(len(group), len(r))
            decrease = J[br] - Jt
            predicted = -(group.unsqueeze(-1) * d1[r] + group.unsqueeze(-1) ** 2 * d2[r])   # (A, R)
            # closing gaps may cost: an infeasible problem accepts an increase up to twice the predicted one
            sufficient = torch.where(feasible[br] | (predicted > 0),
                                     (decrease > 0) & (decrease >= 1e-4 * predicted), decrease >= 2 * predicted)
            finite = torch.isfinite(Jt) & torch.isfinite(Xt).flatten(2).all(-1)   # a cost may ignore x_T
            accept = finite & torch.where(fine_c[r], (decrease >= -_ROUNDOFF * scale[r]) &
                                          (group == 1).unsqueeze(-1), sufficient)
            hit = accept.any(0)
            first = torch.argmax(accept.to(torch.int8), 0)                         # largest accepted step
            w, pick = r[hit], first[hit]
            sel = hit.nonzero().flatten()
            X_c, U_c = X_c.index_put((w,), Xt[pick, sel]), U_c.index_put((w,), Ut[pick, sel])
            J_c, step_c = J_c.index_put((w,), Jt[pick, sel]), step_c.index_put((w,), group[pick])
            got_c = got_c.index_put((w,), torch.ones(len(w), **flags))
        # each problem's candidate: its first, or its Gauss-Newton alternative where that alone was accepted
        # or was cheaper
        first_c = torch.arange(len(a), device=x0.device)
        choice = first_c.index_put((alt,), torch.where(got_c[len(a):] & (~got_c[alt] | (J_c[len(a):] < J_c[alt])),
                                                         torch.arange(len(a), R, device=x0.device), alt))
        got, fine, step, used_newton = got_c[choice], fine_c[choice], step_c[choice], on_newton[choice]
        K, k = K.index_put((a,), Kc[choice]), k.index_put((a,), kc[choice])
        w = got.nonzero().flatten()
        cw, aw = choice[w], a[w]
        X, U, J = X.index_put((aw,), X_c[cw]), U.index_put((aw,), U_c[cw]), J.index_put((aw,), J_c[cw])
        feasible = feasible.index_put((aw,), feasible[aw] | (step[w] == 1))
        # trust the model more after a full step, less after a short one, and grow mu after a rejected one (a
        # rejected problem tries again in the next iteration, batched with the others: cheaper than retry
        # passes for a few stragglers)
        mb = mu[a]
        mb = torch.where(got & (step >= 0.5), torch.clamp(mb / 4, min=mu_min), mb)
        mb = torch.where(got & (step < 0.1), torch.clamp(mb * 4, max=mu_max), mb)
        stalled = ~got & (mb >= mu_max)                     # no step even at mu_max
        mb = torch.where(~got, torch.clamp(mb * 10, max=mu_max), mb)
        mu = mu.index_put((a,), mb)
        iterations = iterations.index_put((a,), iterations[a] + 1)
        fine_before = fine_before.index_put((a,), fine & got)
        polished = polished.index_put((a,), fine & got & used_newton)
        done = done.index_put((a,), stalled)
        history.append(J.detach())
    if not bool(feasible.all()):                             # still infeasible: the rollout of the controls
        i = (~feasible).nonzero().flatten()
        Xi = rollout(dynamics, x0[i], U[i])
        X, J = X.index_put((i,), Xi), J.index_put((i,), cost(Xi, U[i]))
        F, _ = linearize(dynamics, Xi, U[i])
        q = cost.quadratize(Xi, U[i])
        at = _keep(at, i, B, F, costates(F, q.C, q.c, q.C_final, q.c_final)[1])
    history = {"cost": torch.stack(history), "pg": pg, "mu": mu, "iterations": iterations, "costates": at[-1]}
    return Solution(X=X, U=U, cost=J, converged=converged, iterations=int(iterations.max()), K=K, k=k,
                    history=history), at


def implicit_gradient(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, sol: Solution, lower=None, upper=None,
                      at=None) -> Solution:
    """Make ``sol.X``, ``sol.U`` and ``sol.cost`` differentiable by the implicit-function theorem on the KKT
    conditions of the box-constrained problem (see :class:`_ImplicitSolution`), for any solver whose
    ``sol.converged`` problems are local minima of ``cost(rollout(x0, U), U)`` within ``lower <= U <= upper``
    (``(B, T, m)`` or None). ``at``: the dynamics' Jacobians ``F`` and the costates at the solution, if the
    solver has them. Does nothing when grad mode is off or nothing requires grad. Modifies ``sol`` in place."""
    inputs = [x0] + grad_tensors(dynamics, cost)
    if not torch.is_grad_enabled() or not any(z.requires_grad for z in inputs):
        return sol
    if at is None:
        with torch.no_grad():
            F, _ = linearize(dynamics, sol.X.detach(), sol.U.detach())
            q = cost.quadratize(sol.X.detach(), sol.U.detach())
            at = (F, costates(F, q.C, q.c, q.C_final, q.c_final)[1])
    problem = (dynamics, cost, sol.X.detach(), sol.U.detach(), at, lower, upper, sol.converged)
    sol.X, sol.U = _ImplicitSolution.apply(sol.X.detach(), sol.U.detach(), problem, *inputs)
    sol.cost = cost(sol.X, sol.U)
    return sol


def _keep(at, rows, B, F, lam):
    """Write the Jacobians ``F`` and the costates ``lam`` of the problems ``rows`` into ``at`` (detached buffers
    for the whole batch, made on first use)."""
    parts = (F, lam)
    if at is None:
        at = tuple(z.new_zeros(B, *z.shape[1:]) for z in parts)
    return tuple(buf.index_put((rows,), z.detach()) for buf, z in zip(at, parts))


def _second_order_terms(dynamics, X, U, lam):
    """``sum_i lam_{t+1,i} d^2 f_i / d tau_t^2`` as ``(B, T, n+m, n+m)`` blocks."""
    B, T, n = U.shape[0], U.shape[1], X.shape[-1]
    if dynamics.time_varying:
        parts = [dynamics.vector_hessians(X[:, t], U[:, t], lam[:, t + 1], t) for t in range(T)]
        hxx, hux, huu = (torch.stack(z, 1) for z in zip(*parts))
    else:
        hxx, hux, huu = (z.view(B, T, *z.shape[1:]) for z in dynamics.vector_hessians(
            X[:, :T].reshape(B * T, n), U.reshape(B * T, -1), lam[:, 1:].reshape(B * T, n)))
    return torch.cat([torch.cat([hxx, hux.mT], -1), torch.cat([hux, huu], -1)], -2)


def grad_tensors(*modules):
    """The tensors (parameters or buffers) of ``modules`` that require grad, each once: what an implicit
    backward differentiates into."""
    seen, out = set(), []
    for z in itertools.chain.from_iterable(itertools.chain(m.parameters(), m.buffers()) for m in modules):
        if z.requires_grad and id(z) not in seen:
            seen.add(id(z))
            out.append(z)
    return out


class _ImplicitSolution(torch.autograd.Function):
    """Identity on the converged ``(X, U)`` whose backward is the implicit-function theorem on the KKT conditions.

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

    @staticmethod
    def forward(ctx, X, U, problem, *inputs):
        ctx.problem, ctx.inputs = problem, inputs
        return X.clone(), U.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, gX, gU):
        dynamics, cost, X, U, (F, lam), lower, upper, converged = ctx.problem
        x0, *tensors = ctx.inputs
        X, U = X.detach(), U.detach()
        gX = torch.zeros_like(X) if gX is None else gX
        gU = torch.zeros_like(U) if gU is None else gU
        B, T, m = U.shape
        n = X.shape[-1]
        with torch.no_grad():
            # the Newton system: the cost's Hessians and the dynamics' second-order terms (the same ones the
            # solve's Newton steps use), with the costates of the solution
            q = cost.quadratize(X, U)
            g = q.c[..., n:] + (F[..., n:].mT @ lam[:, 1:].unsqueeze(-1)).squeeze(-1)      # dJ/dU
            keep = ~_clamped(U, g, lower, upper) & converged.view(B, 1, 1)
            H = q.C + _second_order_terms(dynamics, X, U, lam)
            tau, lam_t = _adjoint_kkt(F, H, q.C_final, gX, gU, keep, converged)
        if not any(z.requires_grad for z in tensors):       # x0 alone: its gradient is -lam~_0
            return (None, None, None, -lam_t[:, 0], *[None] * len(tensors))
        # x0 as a fresh leaf: through its own history (an earlier solve in a closed loop, say) x0 may depend on
        # these same parameters, and that path is the outer backward's to follow, not this product's
        x0 = x0.detach().requires_grad_(x0.requires_grad)
        wrt = [z for z in (x0, *tensors) if z.requires_grad]
        with torch.enable_grad():
            # -w' d(KKT)/dtheta: the Lagrangian sum_t l_t + lam_{t+1}' f_t + l_T differentiated along tau~
            # (its -lam_t' x_t terms depend on no parameter), and the dynamics along lam~, at all stages at once
            Xg, Ug = X.requires_grad_(True), U.requires_grad_(True)
            nxt = _steps(dynamics, Xg[:, :T], Ug)
            gx, gu = torch.autograd.grad(cost(Xg, Ug).sum() + (lam[:, 1:] * nxt).sum(), (Xg, Ug),
                                         create_graph=True, materialize_grads=True)
            phi = (gx * tau[..., :n]).sum() + (gu * tau[:, :T, n:]).sum() + (lam_t[:, 1:] * nxt).sum() \
                + (lam_t[:, 0] * x0).sum()
            grads = iter(torch.autograd.grad(phi, wrt, allow_unused=True) if phi.requires_grad else [None] * len(wrt))
        out = [None if not z.requires_grad else _neg(next(grads)) for z in (x0, *tensors)]
        return (None, None, None, *out)


def _neg(z):
    return None if z is None else -z


def _clamped(U, g, lower, upper):
    """Controls held at a bound by their gradient ``(B, T, m)`` (an exact test: the projected gradient would
    round tiny free entries to zero)."""
    clamped = torch.zeros_like(U, dtype=torch.bool)
    if lower is not None:
        clamped |= (U <= lower) & (g > 0)
    if upper is not None:
        clamped |= (U >= upper) & (g < 0)
    return clamped


def _steps(dynamics, X, U):
    """``dynamics(x_t, u_t, t)`` at every stage, ``(B, T, n)``, in one batched call for a time-invariant model."""
    B, T, n = X.shape
    if dynamics.time_varying:
        return torch.stack([dynamics(X[:, t], U[:, t], t) for t in range(T)], 1)
    return dynamics(X.reshape(B * T, n), U.reshape(B * T, -1)).view(B, T, n)


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
        raise ValueError("ilqr (grad='implicit'): the Hessian of the cost in the free controls is not "
                         "positive definite at the solution (not a strict local minimum, or not converged); "
                         "use grad='unroll' or solve to convergence") from err
    tau = torch.cat([Xt[:, :T], Ut], -1)
    return torch.cat([tau, torch.cat([Xt[:, T:], torch.zeros(B, 1, m, **opts)], -1)], 1), lam_t


def check_bounds(where, u_lower, u_upper, shape, like, names=("u_lower", "u_upper"), dims="(B, T, m)"):
    """Bounds (control bounds unless ``names`` and ``dims`` say otherwise) as tensors of ``like``'s dtype and
    device expanded to ``shape`` (or None), checked once for every solver: broadcastable to ``shape``, no NaN,
    and lower <= upper."""
    bounds = []
    for name, value in zip(names, (u_lower, u_upper)):
        if value is None:
            bounds.append(None)
            continue
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        try:
            bounds.append(value.expand(shape).clone())
        except RuntimeError:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a shape broadcastable "
                             f"to {dims} = {shape}") from None
        if bool(torch.isnan(value).any()):
            raise ValueError(f"{where}: {name} contains NaN")
    lower, upper = bounds
    if lower is not None and upper is not None and bool((lower > upper).any()):
        raise ValueError(f"{where}: {names[0]} exceeds {names[1]} somewhere")
    return lower, upper


def _gaps(F, f, X, U, x0, feasible, where):
    """The defects of the problems not yet feasible, ``dynamics(x_t, u_t) - x_{t+1}`` ``(B, T, n)`` and
    ``x0 - X_0`` ``(B, n)`` (exactly zero on feasible problems), or None when all are feasible."""
    if bool(feasible.all()):
        return None, None
    T = U.shape[1]
    nxt = (F @ torch.cat([X[:, :T], U], -1).unsqueeze(-1)).squeeze(-1) + f
    gaps = torch.where(feasible.view(-1, 1, 1), 0.0, nxt - X[:, 1:])
    if not bool(torch.isfinite(gaps).all()):
        raise ValueError(f"{where}: the model is not finite at the state guess X_init")
    return gaps, torch.where(feasible.view(-1, 1), 0.0, x0 - X[:, 0])


def _forward(dynamics, x0, X, U, K, k, alphas, lower, upper, gaps=None, gap0=None):
    """Closed-loop rollouts ``u = clamp(U + alpha k + K (x - X))`` for every step size: ``(A, B, T+1, n)``,
    ``(A, B, T, m)``; with ``gaps`` (and ``gap0``), the fraction ``1 - alpha`` of each is left open.

    Rows run problem-major, ``(B, A)``, so that the feedback of every step size is one batched product."""
    A, (B, T, m) = alphas.shape[0], U.shape
    n = X.shape[-1]
    a = alphas.view(1, A, 1, 1)
    feedforward = (U.unsqueeze(1) + a * k.unsqueeze(1)).unbind(2)      # T x (B, A, m)
    nominal, gains_t = X.unsqueeze(1).unbind(2), K.mT.unbind(1)         # (B, 1, n), (B, n, m)
    lo, hi = lower.unsqueeze(1).unbind(2), upper.unsqueeze(1).unbind(2)
    x = x0.unsqueeze(1).expand(B, A, n)
    if gap0 is not None:
        x = x - (1 - a[..., 0]) * gap0.unsqueeze(1)
    left_open = None if gaps is None else ((1 - a) * gaps.unsqueeze(1)).unbind(2)
    xs, us = [x], []
    for t in range(T):
        u = torch.clamp(torch.baddbmm(feedforward[t], x - nominal[t], gains_t[t]), lo[t], hi[t])
        x = dynamics(x.reshape(B * A, n), u.reshape(B * A, m), t).view(B, A, n)
        if left_open is not None:
            x = x - left_open[t]
        xs.append(x)
        us.append(u)
    return torch.stack(xs, 2).transpose(0, 1), torch.stack(us, 2).transpose(0, 1)
