"""State and path constraints for iLQR by an augmented-Lagrangian outer loop.

Solves, for a batch of problems,
``min_U cost(X, U)`` subject to ``x_{t+1} = f(x_t, u_t, t)``, ``u_lower <= U <= u_upper``,
``g(x_t, u_t, t) <= 0`` for ``t < T`` and ``h(x_T) <= 0`` (the problem's :class:`~trajopt.Constraint`).
The control bounds stay with the box-constrained :func:`~trajopt.ilqr`; the inequalities
``g`` and ``h`` move into the cost through the Powell-Hestenes-Rockafellar augmented
Lagrangian (Rockafellar 1973; Nocedal and Wright, *Numerical Optimization*, 2nd ed., sec. 17.4;
the outer loop of ALTRO, Howell, Jackson and Manchester 2019): each constraint value ``g_i``
with multiplier ``lambda_i >= 0`` and penalty ``rho_i > 0`` adds

    ``(max(0, lambda_i + rho_i g_i)^2 - lambda_i^2) / (2 rho_i)``

to the cost. After each inner iLQR solve, warm-started
from the previous controls, the multipliers become ``max(0, lambda + rho g)`` and the penalty
of every constraint whose violation did not shrink enough grows. Every problem of the batch
has its own multipliers, penalties and status, and stops once it has converged.

Differentiable with respect to: nothing yet; the solution is returned detached.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .._core.checks import check_bool, check_int, check_interval, check_positive, tolerance
from .._core.constraint import Constraint, FunctionConstraint
from .._core.costs import Cost, Quadratization
from .._core.per_problem import has_per_problem, rows
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import unchecked_rollout
from .ilqr import ilqr

__all__ = ["constrained_ilqr"]


def _phr(g, lam, rho):
    """PHR augmented-Lagrangian term of inequalities ``g <= 0``, elementwise."""
    return (torch.clamp(lam + rho * g, min=0) ** 2 - lam ** 2) / (2 * rho)


class AugmentedLagrangianCost(Cost):
    """``cost(X, U)`` plus the PHR augmented-Lagrangian terms of a :class:`~trajopt.Constraint`, per problem.

    ``sum_{t,i} (max(0, lam_ti + rho_ti g_ti)^2 - lam_ti^2) / (2 rho_ti)`` over the stage
    constraints ``g = constraint.stage`` and the same over the terminal ones.

    Args:
        cost: the :class:`~trajopt.Cost` to augment.
        constraint: a :class:`~trajopt.Constraint` with ``k`` stage and ``k_T`` terminal values.
        multipliers, penalty: ``(B, T, k)``, ``lambda >= 0`` and ``rho > 0`` of every problem, stage and constraint.
        terminal_multipliers, terminal_penalty: ``(B, k_T)``.

    The multipliers and penalties are per-problem tensors (``per_problem``): row ``r`` of every evaluation belongs
    to the problem the solver's row context names (see :meth:`trajopt.Problem.at`), so any selection of the
    batch's trajectories sees its own problems' terms. The stage term depends on ``t`` through the multipliers,
    so the cost is time-varying; :meth:`forward` and :meth:`quadratize` still treat all stages at once (the
    quadratization of the constraint terms is exact, including the constraints' second derivatives).

    Differentiable with respect to: states, controls, the parameters of ``cost`` and ``constraint``
    (the value; :meth:`quadratize` returns the constraint part detached).
    """

    time_varying = True
    per_problem = ("multipliers", "penalty", "terminal_multipliers", "terminal_penalty")

    def __init__(self, cost: Cost, constraint: Constraint, multipliers: torch.Tensor, penalty: torch.Tensor,
                 terminal_multipliers: torch.Tensor, terminal_penalty: torch.Tensor):
        super().__init__()
        self.cost, self.constraint = cost, constraint
        self.register_buffer("multipliers", multipliers.detach())
        self.register_buffer("penalty", penalty.detach())
        self.register_buffer("terminal_multipliers", terminal_multipliers.detach())
        self.register_buffer("terminal_penalty", terminal_penalty.detach())

    def forward(self, X, U):
        G, GT = self.constraint(X, U)
        return (self.cost(X, U) + _phr(G, self.multipliers, self.penalty).sum((-1, -2))
                + _phr(GT, self.terminal_multipliers, self.terminal_penalty).sum(-1))

    def stage(self, x, u, t=None):
        if t is None:
            raise ValueError("AugmentedLagrangianCost: the multipliers differ by stage; pass the stage index t")
        g = self.constraint.stage(x, u, t)
        return (self.cost.stage(x, u, t if self.cost.time_varying else None)
                + _phr(g, self.multipliers[:, t], self.penalty[:, t]).sum(-1))

    def terminal(self, x):
        return (self.cost.terminal(x)
                + _phr(self.constraint.terminal(x), self.terminal_multipliers, self.terminal_penalty).sum(-1))

    def quadratize(self, X, U):
        """The cost's own quadratization plus the exact one of the constraint terms.

        Per stage, with ``w = max(0, lambda + rho g)``: gradient ``sum_i w_i g_i'`` and Hessian
        ``sum_i (rho_i [w_i > 0] g_i' g_i'^T + w_i g_i'')``, the constraints' derivatives by batched
        autograd (one backward pass per constraint and one per entry of ``tau``; no Python loop over
        the batch or, for constraints that are not time-varying, the stages). The constraint part is
        returned detached.
        """
        n = X.shape[-1]
        C, c, C_final, c_final = self.cost.quadratize(X, U)
        constraint = self.constraint
        if self.multipliers.shape[-1]:
            H, h = _penalty_quadratization(lambda tau: constraint.stages(tau[..., :n], tau[..., n:]),
                                           torch.cat([X[:, :-1], U], -1), self.multipliers, self.penalty)
            C, c = C + H, c + h
        if self.terminal_multipliers.shape[-1]:
            H, h = _penalty_quadratization(constraint.terminal, X[:, -1], self.terminal_multipliers,
                                           self.terminal_penalty)
            C_final, c_final = C_final + H, c_final + h
        return Quadratization(C, c, C_final, c_final)


def _penalty_quadratization(values, z, lam, rho):
    """Hessian ``(..., d, d)`` and gradient ``(..., d)`` in ``z (..., d)`` of ``sum_i phr(g_i, lam_i, rho_i)``.

    ``values(z) -> g (..., k)``, each row of ``g`` a function of the same row of ``z`` alone, so that
    the derivatives of the sum over rows are the rows' own.
    """
    d = z.shape[-1]
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        g = values(z)
        k = g.shape[-1]
        w = torch.clamp(lam + rho * g.detach(), min=0)
        if not g.requires_grad:                                   # constant constraints
            return z.new_zeros(*z.shape, d), z.new_zeros(z.shape)
        (h,) = torch.autograd.grad((g * w).sum(), z, create_graph=True, allow_unused=True)
        h = torch.zeros_like(z) if h is None else h
        J = torch.stack([_grad_or_zero(g[..., i].sum(), z) for i in range(k)], -2)          # (..., k, d)
        H = (J.mT * (rho * (w > 0)).unsqueeze(-2)) @ J
        if h.requires_grad:                                       # the constraints' curvature, row by row
            H = H + torch.stack([_grad_or_zero(h[..., j].sum(), z) for j in range(d)], -2)
    return H.detach(), h.detach()


def _grad_or_zero(scalar, z):
    (out,) = torch.autograd.grad(scalar, z, retain_graph=True, allow_unused=True)
    return torch.zeros_like(z) if out is None else out


@solver(takes=("constraint",))
def constrained_ilqr(problem: Problem, *, max_outer: int = 20, max_iter: int = 100, tol: float | None = None,
                     grad_tol: float | None = None, intermediate_grad_tol: float | None = 1e-2,
                     constraint_tol: float = 1e-6, penalty_init: float = 1.0, penalty_growth: float = 10.0,
                     penalty_max: float = 1e8, violation_shrink: float = 0.1, progress: bool = False) -> Solution:
    """Solve a :class:`~trajopt.Problem` with a ``constraint``: ``min_U cost(X, U)`` subject to the dynamics,
    ``u_lower <= U <= u_upper`` and ``constraint <= 0``.

    An augmented-Lagrangian outer loop around :func:`~trajopt.ilqr` (see the module docstring), from
    ``problem.U_init`` (which need not satisfy the constraint).

    Args:
        problem: the batch of problems; ``problem.constraint`` is a :class:`~trajopt.Constraint` (stage values
            ``(N, k)``, terminal values ``(N, k_T)``, all ``<= 0`` when satisfied) or a callable
            ``g(x (N, n), u (N, m)) -> (N, k)`` applied at every stage ``t < T`` (``x_T`` is then
            unconstrained). A state guess ``X_init`` and state bounds are not taken (express state bounds in
            the constraint).
        max_outer: most multiplier updates (inner solves) per problem.
        max_iter, tol: options of each inner :func:`~trajopt.ilqr` solve (``tol``: ilqr's default when None).
        grad_tol: the inner solve that ends a problem must have converged to this ilqr ``grad_tol`` (default
            ``1e-6`` in float64, scaled to the dtype's precision as ilqr's).
        intermediate_grad_tol: while the multipliers are far from converged, inner solves stop at the looser
            ``min(intermediate_grad_tol, residual)`` (``residual``: the smallest, over the unconverged problems,
            of the largest violation or multiplier step ``|lambda_new - lambda| / rho`` of the previous solve),
            never below ``grad_tol``, and at ``grad_tol`` once ``residual <= constraint_tol``; None solves every
            inner problem to ``grad_tol``.
        constraint_tol: a problem has converged when its inner solve converged at ``grad_tol``, its largest
            violation ``max(0, g)`` is at most ``constraint_tol`` and so is its complementarity residual
            ``max_i min(lambda_i, -g_i)`` (a constraint with a positive multiplier must be active).
        penalty_init: initial penalty ``rho`` of every constraint (multipliers start at zero).
        penalty_growth, penalty_max: after each solve, ``rho`` of a constraint is multiplied by
            ``penalty_growth`` (``> 1``, up to ``penalty_max``) where its multiplier step
            ``|lambda_new - lambda| / rho = |max(g, -lambda / rho)|`` (the violation of a violated constraint; for
            a satisfied one, how far it is from active while its multiplier is still positive) is above
            ``constraint_tol`` and did not shrink below ``violation_shrink`` times its value after the previous
            solve.
        violation_shrink: that factor, in ``(0, 1)``.
        progress: show a progress bar over the outer iterations.

    Returns:
        :class:`~trajopt.Solution` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)`` (of the problem's cost
        alone), ``status``: ``CONVERGED`` (as ``constraint_tol`` says above); ``MAX_ITER`` (``max_outer`` inner
        solves without converging); ``STALLED`` when the outer loop cannot make progress: every constraint whose
        multiplier step is still above ``constraint_tol`` has its penalty at ``penalty_max`` and the last inner
        solve did not lower the problem's largest violation or multiplier step (a larger penalty is all that could
        help, and the cap forbids it); ``NOT_FINITE`` when the rollout of ``U_init`` or its cost is not finite (that
        problem keeps ``x0`` held over the horizon and its ``U_init``; the rest of the batch is solved) or an inner
        solve of it turned non-finite (it keeps its last finite iterate); either way its ``cost`` is ``inf``.
        ``iterations (B,)``: inner iLQR iterations summed over the outer ones; ``cost_history (B, J+1)``: the cost
        at ``U_init`` and after each of the ``J`` outer iterations the batch ran (a problem that stopped repeats
        its value); ``residual (B,)``: the largest of the violation, the complementarity residual and the last
        inner solve's projected gradient; ``K``, ``k`` of each problem's last inner solve (zero where no inner
        iteration ran); and ``extras`` (batch first): ``violation (B,)`` (largest ``max(0, g)`` over every
        constraint of the final solution), ``complementarity (B,)``, ``outer_iterations (B,)``,
        ``inner_converged (B,)`` (the last inner solve converged at ``grad_tol``), ``multipliers (B, T, k)``,
        ``penalty (B, T, k)``, ``terminal_multipliers (B, k_T)``, ``terminal_penalty (B, k_T)`` (the final
        estimates), and per outer iteration ``outer_violation (B, J+1)`` (column 0: the initial controls),
        ``inner_iterations (B, J)`` and ``inner_grad_tol (B, J)`` (the inner solve's iterations and tolerance;
        0 where the problem had stopped). Violations of a ``NOT_FINITE`` problem without a finite iterate are
        ``inf``.

    Differentiable with respect to: nothing yet; the solution is detached.
    """
    where = "constrained_ilqr"
    constraint = problem.constraint
    if constraint is None:
        raise TypeError(f"{where}: the problem has no constraint; give trajopt.Problem(..., constraint=g) with a "
                        "trajopt.Constraint or a callable g(x, u) -> (N, k), or solve it with trajopt.ilqr")
    if problem.X_init is not None:
        raise ValueError(f"{where}: a state guess X_init is not taken (the outer loop starts from the rollout of "
                         "U_init); drop X_init")
    if problem.x_lower is not None or problem.x_upper is not None:
        raise ValueError(f"{where}: state bounds x_lower/x_upper are not taken; express them in the constraint")
    check_int(where, max_outer=max_outer, max_iter=max_iter)
    check_bool(where, progress=progress)
    check_positive(where, constraint_tol=constraint_tol, penalty_init=penalty_init, penalty_max=penalty_max)
    for name, value in (("grad_tol", grad_tol), ("intermediate_grad_tol", intermediate_grad_tol), ("tol", tol)):
        if value is not None:
            check_positive(where, **{name: value})
    check_interval(where, 1, math.inf, include_low=False, include_high=False, penalty_growth=penalty_growth)
    check_interval(where, 0, 1, include_low=False, include_high=False, violation_shrink=violation_shrink)
    if penalty_max < penalty_init:
        raise ValueError(f"{where}: penalty_max must be >= penalty_init ({penalty_init!r}), got {penalty_max!r}")
    # NumPy numbers as Python's (a NumPy bool met with a tensor in the loop below would not combine)
    max_outer, max_iter = int(max_outer), int(max_iter)
    constraint_tol, penalty_init, penalty_max, penalty_growth, violation_shrink = (
        float(v) for v in (constraint_tol, penalty_init, penalty_max, penalty_growth, violation_shrink))
    grad_tol, intermediate_grad_tol, tol = (None if v is None else float(v)
                                            for v in (grad_tol, intermediate_grad_tol, tol))
    grad_tol = tolerance(grad_tol, 1e-6, problem.dtype)

    B, T, n, m = problem.B, problem.T, problem.n, problem.m
    dynamics, cost, lower, upper = problem.dynamics, problem.cost, problem.u_lower, problem.u_upper
    inner = {} if tol is None else {"tol": float(tol)}
    loosest = grad_tol if intermediate_grad_tol is None else max(grad_tol, intermediate_grad_tol)
    inf = float("inf")
    with torch.no_grad():
        x0 = problem.x0.detach()
        U = problem.U_init.detach().clone()                 # written in place below
        X = unchecked_rollout(dynamics, x0, U)
        J = cost(X, U)
        finite = torch.isfinite(J) & torch.isfinite(X).flatten(1).all(-1)
        status = torch.where(finite, int(Status.MAX_ITER), int(Status.NOT_FINITE)).long()
        # a bad row never sinks the batch: it keeps x0 held and its initial controls, and is not solved
        X = torch.where(finite.view(B, 1, 1), X, x0.unsqueeze(1).expand(B, T + 1, n)).clone()
        J = torch.where(finite, J, inf)
        G, GT = _evaluate(where, constraint, X, U)
        # a row whose constraint is not finite at its initial trajectory is NOT_FINITE too, and not solved
        bad = finite & ~(torch.isfinite(G).flatten(1).all(1) & torch.isfinite(GT).all(1))
        if bool(bad.any()):
            finite = finite & ~bad
            status = torch.where(bad, int(Status.NOT_FINITE), status)
            X = torch.where(bad.view(B, 1, 1), x0.unsqueeze(1).expand(B, T + 1, n), X).clone()
            J = torch.where(bad, inf, J)
        G, GT = torch.where(finite.view(B, 1, 1), G, 0.0), torch.where(finite.view(B, 1), GT, 0.0)
        k, kT = G.shape[-1], GT.shape[-1]
        lam, lam_T = x0.new_zeros(B, T, k), x0.new_zeros(B, kT)
        rho, rho_T = torch.full_like(lam, penalty_init), torch.full_like(lam_T, penalty_init)
        violation = torch.where(finite, _largest(G.clamp_min(0), GT.clamp_min(0)), inf)
        prev, prev_T = torch.full_like(lam, inf), torch.full_like(lam_T, inf)
        complementarity = torch.where(finite, 0.0, torch.full_like(violation, inf))
        residual = torch.full_like(violation, inf)           # largest violation or multiplier step
        pg = torch.full_like(violation, inf)                 # the last inner solve's projected gradient
        costs, violations, inner_iterations, inner_tols = [J.clone()], [violation.clone()], [], []
        done = ~finite
        inner_ok = torch.zeros_like(done)
        outer = torch.zeros(B, dtype=torch.long, device=x0.device)
        total = torch.zeros_like(outer)
        K, kff = x0.new_zeros(B, T, m, n), x0.new_zeros(B, T, m)
        bar = tqdm(range(max_outer), desc=where, disable=not progress, leave=False)
        for _ in bar:
            idx = (~done).nonzero().flatten()
            if idx.numel() == 0:
                break
            # loose inner solves while every pending problem is far from converged, tight ones near the end
            far = float(residual[idx].min())
            omega = max(grad_tol, min(loosest, far)) if far > constraint_tol else grad_tol
            al = AugmentedLagrangianCost(cost, constraint, lam, rho, lam_T, rho_T)
            sub = Problem(dynamics, al, x0[idx], U_init=U[idx], u_lower=None if lower is None else lower[idx],
                          u_upper=None if upper is None else upper[idx], module_rows=idx)
            sol = ilqr(sub, max_iter=max_iter, grad_tol=omega, grad=None, **inner)
            total[idx] += sol.iterations
            step_iterations = torch.zeros_like(outer).index_put((idx,), sol.iterations)
            inner_iterations.append(step_iterations)
            inner_tols.append(torch.zeros_like(violation).index_put((idx,), torch.full_like(sol.cost, omega)))
            outer[idx] += 1
            # an inner solve that turned non-finite (its augmented cost at the warm start): that problem stops
            # with its last finite iterate
            bad = sol.status == Status.NOT_FINITE
            if bool(bad.any()):
                status[idx[bad]] = int(Status.NOT_FINITE)
                done[idx[bad]] = True
                J[idx[bad]] = inf
                residual[idx[bad]] = inf
                keep = (~bad).nonzero().flatten()
                idx, sol = idx[keep], sol[keep]
            Xi, Ui = sol.X, sol.U
            X[idx], U[idx] = Xi, Ui
            ran = sol.iterations > 0            # a problem already optimal at its warm start keeps its gains
            K[idx[ran]], kff[idx[ran]] = sol.K[ran], sol.k[ran]
            inner_ok[idx] = sol.converged & (omega <= grad_tol)
            pg[idx] = sol.residual
            with problem.at(idx):
                G, GT = _call(where, "constraint", constraint, Xi, Ui)
            # multipliers first (with the penalties the solve used), then the penalties
            new_lam = torch.clamp(lam[idx] + rho[idx] * G, min=0)
            new_lam_T = torch.clamp(lam_T[idx] + rho_T[idx] * GT, min=0)
            # |lambda_new - lambda| / rho = |max(g, -lambda / rho)|: the violation, or how far a constraint whose
            # multiplier is still positive is from active
            step, step_T = (new_lam - lam[idx]).abs() / rho[idx], (new_lam_T - lam_T[idx]).abs() / rho_T[idx]
            rho[idx] = _grow(rho[idx], step, prev[idx], constraint_tol, violation_shrink, penalty_growth, penalty_max)
            rho_T[idx] = _grow(rho_T[idx], step_T, prev_T[idx], constraint_tol, violation_shrink, penalty_growth,
                               penalty_max)
            lam[idx], lam_T[idx], prev[idx], prev_T[idx] = new_lam, new_lam_T, step, step_T
            violation[idx] = _largest(G.clamp_min(0), GT.clamp_min(0))
            before = residual[idx]
            residual[idx] = torch.maximum(violation[idx], _largest(step, step_T))
            complementarity[idx] = _largest(torch.minimum(new_lam, -G).clamp_min(0),
                                            torch.minimum(new_lam_T, -GT).clamp_min(0))
            converged = inner_ok[idx] & (violation[idx] <= constraint_tol) & (complementarity[idx] <= constraint_tol)
            # stalled: what is still off can only be fixed by a larger penalty, which the cap forbids, and the
            # last solve did not help
            capped = _all(((step <= constraint_tol) | (rho[idx] >= penalty_max)),
                          ((step_T <= constraint_tol) | (rho_T[idx] >= penalty_max)))
            stalled = ~converged & capped & (residual[idx] > constraint_tol) & (residual[idx] >= before)
            status[idx] = torch.where(converged, int(Status.CONVERGED),
                                      torch.where(stalled, int(Status.STALLED), status[idx]))
            done[idx] = converged | stalled
            with problem.at(idx):
                J[idx] = cost(Xi, Ui)
            costs.append(J.clone())
            violations.append(violation.clone())
            shown = torch.where(status == Status.NOT_FINITE, 0.0, violation)
            bar.set_postfix(pending=int((~done).sum()), violation=f"{float(shown.max()):.1e}")
        bar.close()
        not_finite = status == Status.NOT_FINITE
        J = torch.where(not_finite, inf, J)
        worst = torch.maximum(torch.maximum(violation, complementarity), pg)
        worst = torch.where(not_finite, inf, worst)
    stack = lambda zs, like: torch.stack(zs, 1) if zs else like.new_zeros(B, 0)     # noqa: E731
    extras = {"violation": violation, "complementarity": complementarity, "outer_iterations": outer,
              "inner_converged": inner_ok, "multipliers": lam, "penalty": rho, "terminal_multipliers": lam_T,
              "terminal_penalty": rho_T, "outer_violation": torch.stack(violations, 1),
              "inner_iterations": stack(inner_iterations, outer), "inner_grad_tol": stack(inner_tols, violation)}
    return Solution(X=X, U=U, cost=J, status=status, iterations=total, cost_history=torch.stack(costs, 1),
                    residual=worst, K=K, k=kff, extras=extras)


def _evaluate(where, constraint, X, U):
    """The constraint at the initial trajectory, with its output shapes checked."""
    B, T = U.shape[:2]
    x, u = X[:, :-1].reshape(B * T, -1), U.reshape(B * T, -1)
    N = B * T
    if constraint.time_varying:
        x, u, N = X[:, 0], U[:, 0], B
    name = "constraint" if isinstance(constraint, FunctionConstraint) else "constraint.stage"
    t0 = 0 if constraint.time_varying else None
    stage_rows = None if constraint.time_varying else torch.arange(B, device=U.device).repeat_interleave(T)
    with rows(stage_rows, constraint):          # a per-problem tensor's row b serves the T stages of problem b
        g = _call(where, name, constraint.stage, x, u, t0)
    _check_output(where, name, g, N, x, u, "x (N, n), u (N, m)")
    gT = _call(where, "constraint.terminal", constraint.terminal, X[:, -1])
    _check_output(where, "constraint.terminal", gT, B, X[:, -1], None, "x (N, n)")
    # row r of the output must be a function of row r alone: the solvers evaluate selections of the rows (a
    # constraint with per-problem tensors is evaluated by rows of its problems: not tested here)
    if not has_per_problem(constraint):
        _check_rows(where, name, g, lambda r: constraint.stage(x[r], u[r], t0))
        _check_rows(where, "constraint.terminal", gT, lambda r: constraint.terminal(X[r, -1]))
    G, GT = _call(where, "constraint", constraint, X, U)
    if G.shape[-1] + GT.shape[-1] == 0:
        raise ValueError(f"{where}: constraint has no constraints (k = 0 stage and k_T = 0 terminal values); "
                         "use trajopt.ilqr")
    return G, GT


def _call(where, name, fn, *args):
    """``fn(*args)``, an error inside it re-raised as a RuntimeError naming the solver and the constraint."""
    try:
        return fn(*args)
    except Exception as e:          # noqa: BLE001 -- the user's constraint failed: say where
        raise RuntimeError(f"{where}: the problem's {name} raised {type(e).__name__}: {e}") from e


def _check_output(where, name, value, N, x, u, args):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must return a torch.Tensor (N, k), got {type(value).__name__}")
    if value.ndim != 2 or value.shape[0] != N:
        hint = " (use g.unsqueeze(-1) for a single constraint)" if value.ndim == 1 and value.shape[0] == N else ""
        shapes = f"x {tuple(x.shape)}" + ("" if u is None else f", u {tuple(u.shape)}")
        raise ValueError(f"{where}: {name} returned shape {tuple(value.shape)} for {shapes}; expected (N, k) = "
                         f"({N}, k) for {args}{hint}")
    if value.dtype != x.dtype:
        raise TypeError(f"{where}: {name} returned dtype {value.dtype}; expected the states' {x.dtype}")


def _check_rows(where, name, full, part):
    """``full (N, k)``, the constraint on every row, against ``part(r)``, the same on the last row alone: they differ
    when the constraint mixes the rows (a sum or mean over the batch), which the solvers cannot take (they evaluate
    selections of the rows: the problems still iterating, several step sizes at once)."""
    if full.shape[0] < 2 or full.shape[-1] == 0:
        return
    r = slice(full.shape[0] - 1, None)
    alone = _call(where, name, part, r)
    tol = torch.finfo(full.dtype).eps ** 0.5
    if not (isinstance(alone, torch.Tensor) and alone.shape == full[r].shape
            and torch.allclose(alone, full[r], rtol=tol, atol=tol, equal_nan=True)):
        raise ValueError(f"{where}: {name} must treat the rows of its input independently (row r of its output "
                         f"(N, k) a function of row r of x and u alone, no sum or mean over the batch); on the last "
                         f"row alone it returned {alone.tolist() if isinstance(alone, torch.Tensor) else alone!r}, "
                         f"on all {full.shape[0]} rows {full[r].tolist()} for that row")


def _grow(rho, measure, prev, tol, shrink, growth, cap):
    """Multiply the penalty of constraints whose measure stayed above ``tol`` and ``shrink * prev``."""
    grow = (measure > tol) & (measure > shrink * prev)
    return torch.where(grow, torch.clamp(rho * growth, max=cap), rho)


def _largest(a, b):
    """Largest entry per problem over ``a (B, T, k)`` and ``b (B, k_T)``, ``(B,)``; entries are >= 0."""
    return torch.cat([a.flatten(1), b, a.new_zeros(a.shape[0], 1)], 1).amax(-1)


def _all(a, b):
    """Per problem, whether every entry of ``a (B, T, k)`` and ``b (B, k_T)`` holds, ``(B,)``."""
    return torch.cat([a.flatten(1), b], 1).all(-1)
