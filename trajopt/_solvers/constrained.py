"""State and path constraints for iLQR by an augmented-Lagrangian outer loop.

Solves, for a batch of problems,
``min_U cost(X, U)`` subject to ``x_{t+1} = f(x_t, u_t, t)``, ``u_lower <= U <= u_upper``,
``g(x_t, u_t, t) <= 0`` for ``t < T`` and ``h(x_T) <= 0``.
The control bounds stay with the box-constrained :func:`~trajopt.ilqr`; the inequalities
``g`` and ``h`` move into the cost through the Powell-Hestenes-Rockafellar augmented
Lagrangian (Rockafellar 1973; Nocedal and Wright, *Numerical Optimization*, 2nd ed., sec. 17.4;
the outer loop of ALTRO, Howell, Jackson and Manchester 2019): each constraint value ``g_i``
with multiplier ``lambda_i >= 0`` and penalty ``rho_i > 0`` adds

    ``(max(0, lambda_i + rho_i g_i)^2 - lambda_i^2) / (2 rho_i)``

to the cost. After each inner iLQR solve, warm-started
from the previous controls, the multipliers become ``max(0, lambda + rho g)`` and the penalty
of every constraint whose violation did not shrink enough grows. Every problem of the batch
has its own multipliers and penalties and stops once it has converged.

Differentiable with respect to: nothing yet; the solution is returned detached (as by
:func:`~trajopt.ilqr`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from dynamics import Dynamics
from dynamics.validation import check_consistent, check_finite
from .._core.costs import Cost, Quadratization
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .ilqr import ilqr
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import rollout

__all__ = ["Constraint", "constrained_ilqr"]


class Constraint(nn.Module):
    """Inequality constraints ``stage(x_t, u_t, t) <= 0`` at the stages ``t < T`` and ``terminal(x_T) <= 0``.

    Subclasses override :meth:`stage` and/or :meth:`terminal` for batched inputs; each returns one
    value per constraint, ``(N, k)`` (``k`` may be zero: the default of both methods is no
    constraint). ``time_varying = True`` means :meth:`stage` looks at the stage index ``t``;
    otherwise all stages are evaluated in one call on ``N = B T`` rows. Like a cost, a constraint
    is shared by every problem of a batch. The solvers differentiate it twice by batched autograd,
    so write it with differentiable torch operations, row by row: row ``r`` of the output must
    depend on row ``r`` of ``x`` and ``u`` alone (no reductions over the batch).

    A plain callable ``g(x (N, n), u (N, m)) -> (N, k)`` passed to :func:`constrained_ilqr`
    is taken as a stage constraint that does not depend on ``t``.
    """

    time_varying: bool = False

    def stage(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Constraint values ``(N, k)`` of ``x (N, n)``, ``u (N, m)`` at stage ``t``; none unless overridden."""
        return x.new_zeros(*x.shape[:-1], 0)

    def terminal(self, x: torch.Tensor) -> torch.Tensor:
        """Constraint values ``(N, k_T)`` of ``x_T (N, n)``; none unless overridden."""
        return x.new_zeros(*x.shape[:-1], 0)

    def forward(self, X: torch.Tensor, U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage values ``(B, T, k)`` and terminal values ``(B, k_T)`` of ``X (B, T+1, n)``, ``U (B, T, m)``."""
        return self._stages(X[:, :-1], U), self.terminal(X[:, -1])

    def _stages(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Stage values ``(B, T, k)`` of the stage states ``X (B, T, n)`` and controls ``U (B, T, m)``."""
        B, T = U.shape[:2]
        if self.time_varying:
            return torch.stack([self.stage(X[:, t], U[:, t], t) for t in range(T)], 1)
        G = self.stage(X.reshape(B * T, -1), U.reshape(B * T, -1))
        return G.reshape(B, T, *G.shape[1:])


class _FunctionConstraint(Constraint):
    """A stage constraint given as a plain callable ``g(x, u) -> (N, k)``."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def stage(self, x, u, t=None):
        return self.fn(x, u)


def _phr(g, lam, rho):
    """PHR augmented-Lagrangian term of inequalities ``g <= 0``, elementwise."""
    return (torch.clamp(lam + rho * g, min=0) ** 2 - lam ** 2) / (2 * rho)


class _Tagged(Dynamics):
    """``dynamics`` with one more, constant, state: the index of the problem a trajectory belongs to.

    A solver may evaluate the cost on any selection of the batch's trajectories (a line search over
    several step sizes, the problems still iterating); the tag in ``X[..., n]`` tells
    :class:`_AugmentedLagrangianCost` whose multipliers apply to each row.
    """

    def __init__(self, dynamics: Dynamics):
        super().__init__(dynamics.state_dim + 1, dynamics.control_dim)
        self.dynamics = dynamics
        self.time_varying = dynamics.time_varying

    def forward(self, x, u, t=None):
        n = self.dynamics.state_dim
        return torch.cat([self.dynamics(x[..., :n], u, t), x[..., n:]], -1)

    def jacobians(self, x, u, t=None):
        n = self.dynamics.state_dim
        A, Bu = self.dynamics.jacobians(x[..., :n], u, t)
        A = _pad(_pad(A, n, -1), n, -2)
        A[..., n, n] = 1.0
        return A, _pad(Bu, n, -2)

    def vector_hessians(self, x, u, lam, t=None):
        n = self.dynamics.state_dim
        hxx, hux, huu = self.dynamics.vector_hessians(x[..., :n], u, lam[..., :n], t)
        return _pad(_pad(hxx, n, -1), n, -2), _pad(hux, n, -1), huu


def _pad(a, i, dim):
    """``a`` with a zero slice inserted at position ``i`` of dimension ``dim``."""
    shape = list(a.shape)
    shape[dim] = 1
    return torch.cat([a.narrow(dim, 0, i), a.new_zeros(shape), a.narrow(dim, i, a.shape[dim] - i)], dim)


class _AugmentedLagrangianCost(Cost):
    """``cost(X, U)`` plus the PHR augmented-Lagrangian terms of a :class:`Constraint`, per problem.

    ``sum_{t,i} (max(0, lam_ti + rho_ti g_ti)^2 - lam_ti^2) / (2 rho_ti)`` over the stage
    constraints ``g = constraint.stage`` and the same over the terminal ones.

    Args:
        cost: the :class:`~trajopt.Cost` to augment.
        constraint: a :class:`Constraint` with ``k`` stage and ``k_T`` terminal values.
        multipliers, penalty: ``(B, T, k)``, ``lambda >= 0`` and ``rho > 0`` of every problem, stage and constraint.
        terminal_multipliers, terminal_penalty: ``(B, k_T)``.

    It acts on *tagged* trajectories, those of :class:`_Tagged` dynamics: ``X (N, T+1, n+1)`` whose
    last state is the index ``b`` of the problem (in ``0..B-1``) whose multipliers apply, ``U (N, T, m)``.
    ``cost`` and ``constraint`` see ``X[..., :n]``; the tag is constant and costs nothing.
    The stage term depends on ``t`` through the multipliers, so the cost is time-varying;
    :meth:`forward` and :meth:`quadratize` still treat all stages at once (the quadratization of
    the constraint terms is exact, including the constraints' second derivatives).

    Differentiable with respect to: states, controls, the parameters of ``cost`` and ``constraint``
    (the value; :meth:`quadratize` returns the constraint part detached).
    """

    time_varying = True

    def __init__(self, cost: Cost, constraint: Constraint, multipliers: torch.Tensor, penalty: torch.Tensor,
                 terminal_multipliers: torch.Tensor, terminal_penalty: torch.Tensor):
        super().__init__()
        self.cost, self.constraint = cost, constraint
        self.register_buffer("multipliers", multipliers.detach())
        self.register_buffer("penalty", penalty.detach())
        self.register_buffer("terminal_multipliers", terminal_multipliers.detach())
        self.register_buffer("terminal_penalty", terminal_penalty.detach())

    @staticmethod
    def _problem(x):
        """The problem index of each row of tagged states ``x (N, ..., n+1)``: ``(N,)``."""
        tag = x[..., -1] if x.ndim == 2 else x[:, 0, -1]
        return tag.detach().round().long()

    def forward(self, X, U):
        b = self._problem(X)
        x = X[..., :-1]
        G, GT = self.constraint(x, U)
        return (self.cost(x, U) + _phr(G, self.multipliers[b], self.penalty[b]).sum((-1, -2))
                + _phr(GT, self.terminal_multipliers[b], self.terminal_penalty[b]).sum(-1))

    def stage(self, x, u, t=None):
        if t is None:
            raise ValueError("_AugmentedLagrangianCost: the multipliers differ by stage; pass the stage index t")
        b = self._problem(x)
        x = x[..., :-1]
        g = self.constraint.stage(x, u, t)
        return (self.cost.stage(x, u, t if self.cost.time_varying else None)
                + _phr(g, self.multipliers[b, t], self.penalty[b, t]).sum(-1))

    def terminal(self, x):
        b = self._problem(x)
        x = x[..., :-1]
        return (self.cost.terminal(x)
                + _phr(self.constraint.terminal(x), self.terminal_multipliers[b], self.terminal_penalty[b]).sum(-1))

    def quadratize(self, X, U):
        """The cost's own quadratization plus the exact one of the constraint terms, zero for the tag.

        Per stage, with ``w = max(0, lambda + rho g)``: gradient ``sum_i w_i g_i'`` and Hessian
        ``sum_i (rho_i [w_i > 0] g_i' g_i'^T + w_i g_i'')``, the constraints' derivatives by batched
        autograd (one backward pass per constraint and one per entry of ``tau``; no Python loop over
        the batch or, for constraints that are not time-varying, the stages). The constraint part is
        returned detached.
        """
        b = self._problem(X)
        x = X[..., :-1]
        n = x.shape[-1]
        C, c, C_final, c_final = self.cost.quadratize(x, U)
        constraint = self.constraint
        if self.multipliers.shape[-1]:
            H, h = _penalty_quadratization(lambda tau: constraint._stages(tau[..., :n], tau[..., n:]),
                                           torch.cat([x[:, :-1], U], -1), self.multipliers[b], self.penalty[b])
            C, c = C + H, c + h
        if self.terminal_multipliers.shape[-1]:
            H, h = _penalty_quadratization(constraint.terminal, x[:, -1], self.terminal_multipliers[b],
                                           self.terminal_penalty[b])
            C_final, c_final = C_final + H, c_final + h
        return Quadratization(_pad(_pad(C, n, -1), n, -2), _pad(c, n, -1),
                              _pad(_pad(C_final, n, -1), n, -2), _pad(c_final, n, -1))


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


def constrained_ilqr(dynamics: Dynamics, cost: Cost, constraint: Constraint | Callable, x0: torch.Tensor,
                     U_init: torch.Tensor | None = None, *, horizon: int | None = None, u_lower=None, u_upper=None,
                     max_outer: int = 20, max_iter: int = 100, tol: float | None = None, grad_tol: float = 1e-6,
                     intermediate_grad_tol: float | None = 1e-2, constraint_tol: float = 1e-6,
                     penalty_init: float = 1.0, penalty_growth: float = 10.0, penalty_max: float = 1e8,
                     violation_shrink: float = 0.1, progress: bool = False) -> Solution:
    """Solve ``min_U cost(X, U)`` subject to the dynamics, ``u_lower <= U <= u_upper`` and ``constraint <= 0``.

    An augmented-Lagrangian outer loop around :func:`~trajopt.ilqr` (see the module docstring).

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics`.
        cost: a :class:`trajopt.Cost`.
        constraint: a :class:`Constraint` (stage values ``(N, k)``, terminal values ``(N, k_T)``, all ``<= 0``
            when satisfied), or a callable ``g(x (N, n), u (N, m)) -> (N, k)`` applied at every stage ``t < T``
            (``x_T`` is then unconstrained).
        x0: initial states ``(B, n)`` (or ``(n,)``).
        U_init: initial controls ``(B, T, m)`` (or ``(T, m)``), clipped into the bounds; zeros of length
            ``horizon`` if None. They need not satisfy the constraint.
        horizon: ``T`` when ``U_init`` is None.
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)``, or None; kept exactly by iLQR.
        max_outer: most multiplier updates (inner solves) per problem.
        max_iter, tol: options of each inner :func:`~trajopt.ilqr` solve (``tol``: ilqr's default when None).
        grad_tol: the inner solve that ends a problem must have converged to this ilqr ``grad_tol``.
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
            ``penalty_growth`` (up to ``penalty_max``) where its multiplier step ``|lambda_new - lambda| / rho
            = |max(g, -lambda / rho)|`` (the violation of a violated constraint; for a satisfied one, how far it
            is from active while its multiplier is still positive) is above ``constraint_tol`` and did not
            shrink below ``violation_shrink`` times its value after the previous solve.
        violation_shrink: that factor, in ``(0, 1)``.
        progress: show a progress bar over the outer iterations.

    Returns:
        ``Solution`` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)`` (of ``cost`` alone),
        ``converged (B,)``, ``iterations`` (inner iLQR iterations summed over the outer ones), ``K``, ``k``
        of each problem's last inner solve, and ``history``: ``violation (B,)`` (largest ``max(0, g)`` over
        every constraint of the final solution), ``complementarity (B,)``, ``outer_iterations (B,)``,
        ``inner_converged (B,)``, ``multipliers (B, T, k)``, ``penalty (B, T, k)``,
        ``terminal_multipliers (B, k_T)``, ``terminal_penalty (B, k_T)`` (the final estimates), and per
        outer iteration ``outer_cost`` and ``outer_violation`` ``(J+1, B)`` (row 0: the initial controls),
        ``inner_iterations`` and ``inner_grad_tol`` (lists, one entry per inner solve of the batch).

    Differentiable with respect to: nothing yet; the solution is detached.
    """
    where = "constrained_ilqr"
    if not isinstance(constraint, Constraint):
        if not callable(constraint):
            raise TypeError(f"{where}: constraint must be a trajopt.Constraint or a callable g(x, u) -> (N, k), "
                            f"got {type(constraint).__name__}")
        constraint = _FunctionConstraint(constraint)
    _check_options(where, max_outer=max_outer, max_iter=max_iter, grad_tol=grad_tol,
                   intermediate_grad_tol=grad_tol if intermediate_grad_tol is None else intermediate_grad_tol,
                   constraint_tol=constraint_tol,
                   penalty_init=penalty_init, penalty_growth=penalty_growth, penalty_max=penalty_max,
                   violation_shrink=violation_shrink)
    x0, U_init, dims = check_problem(where, dynamics, cost, x0, U_init, horizon)
    batch = check_consistent(where, {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2})
    options = dict(horizon=horizon, u_lower=u_lower, u_upper=u_upper, max_outer=max_outer, max_iter=max_iter,
                   tol=tol, grad_tol=grad_tol, intermediate_grad_tol=intermediate_grad_tol,
                   constraint_tol=constraint_tol, penalty_init=penalty_init,
                   penalty_growth=penalty_growth, penalty_max=penalty_max, violation_shrink=violation_shrink,
                   progress=progress)
    if batch is None:
        sol = constrained_ilqr(dynamics, cost, constraint, x0.unsqueeze(0), U_init.unsqueeze(0), **options)
        history = {key: value if isinstance(value, list) else value[:, 0] if key.startswith("outer_") and
                   key != "outer_iterations" else value[0] for key, value in sol.history.items()}
        return Solution(X=sol.X[0], U=sol.U[0], cost=sol.cost[0], converged=sol.converged[0],
                        iterations=sol.iterations, K=sol.K[0], k=sol.k[0], history=history)

    B, T, n, m = batch, U_init.shape[-2], dims["n"], dims["m"]
    x0 = x0.expand(B, n).detach()
    shape = (B, T, m)
    lower, upper = check_bounds(where, u_lower, u_upper, shape, x0)

    inner = {} if tol is None else {"tol": tol}
    loosest = grad_tol if intermediate_grad_tol is None else max(grad_tol, intermediate_grad_tol)
    with torch.no_grad():
        U = clamp_to_bounds(U_init.expand(shape).detach(), lower, upper).clone()   # written in place below
        X = rollout(dynamics, x0, U)
        bad = ~torch.isfinite(X).flatten(1).all(-1)
        if bool(bad.any()):
            raise ValueError(f"{where}: the initial rollout is not finite for batch element(s) "
                             f"{bad.nonzero().flatten().tolist()[:8]}")
        G, GT = _evaluate(where, constraint, X, U)
        k, kT = G.shape[-1], GT.shape[-1]
        lam, lam_T = x0.new_zeros(B, T, k), x0.new_zeros(B, kT)
        rho, rho_T = torch.full_like(lam, penalty_init), torch.full_like(lam_T, penalty_init)
        violation = _largest(G.clamp_min(0), GT.clamp_min(0))
        prev, prev_T = torch.full_like(lam, float("inf")), torch.full_like(lam_T, float("inf"))
        complementarity = torch.zeros_like(violation)
        residual = torch.full_like(violation, float("inf"))
        J = cost(X, U)
        outer_cost, outer_violation, inner_iterations, inner_grad_tol = [J.clone()], [violation.clone()], [], []
        done = torch.zeros(B, dtype=torch.bool, device=x0.device)
        inner_ok = torch.zeros_like(done)
        outer = torch.zeros(B, dtype=torch.long, device=x0.device)
        K, kff = x0.new_zeros(B, T, m, n), x0.new_zeros(B, T, m)
        tagged = _Tagged(dynamics)
        x0_tagged = torch.cat([x0, torch.arange(B, dtype=x0.dtype, device=x0.device).unsqueeze(-1)], -1)
        total = 0
        bar = tqdm(range(max_outer), desc=where, disable=not progress, leave=False)
        for _ in bar:
            idx = (~done).nonzero().flatten()
            if idx.numel() == 0:
                break
            # loose inner solves while every pending problem is far from converged, tight ones near the end
            far = float(residual[idx].min())
            omega = max(grad_tol, min(loosest, far)) if far > constraint_tol else grad_tol
            al = _AugmentedLagrangianCost(cost, constraint, lam, rho, lam_T, rho_T)
            sol = ilqr(tagged, al, x0_tagged[idx], U[idx], u_lower=None if lower is None else lower[idx],
                       u_upper=None if upper is None else upper[idx], max_iter=max_iter, grad_tol=omega, **inner)
            total += sol.iterations
            inner_iterations.append(sol.iterations)
            inner_grad_tol.append(omega)
            Xi, Ui = sol.X[..., :n], sol.U
            X[idx], U[idx] = Xi, Ui
            if sol.K is not None:           # (None when the warm start was already optimal: no backward pass)
                K[idx], kff[idx] = sol.K[..., :n], sol.k
            inner_ok[idx] = sol.converged & (omega <= grad_tol)
            outer[idx] += 1
            G, GT = constraint(Xi, Ui)
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
            residual[idx] = torch.maximum(violation[idx], _largest(step, step_T))
            complementarity[idx] = _largest(torch.minimum(new_lam, -G).clamp_min(0),
                                            torch.minimum(new_lam_T, -GT).clamp_min(0))
            done[idx] = inner_ok[idx] & (violation[idx] <= constraint_tol) & (complementarity[idx] <= constraint_tol)
            J[idx] = cost(Xi, Ui)
            outer_cost.append(J.clone())
            outer_violation.append(violation.clone())
            bar.set_postfix(pending=int((~done).sum()), violation=f"{float(violation.max()):.1e}")
        bar.close()
    history = {"violation": violation, "complementarity": complementarity, "outer_iterations": outer,
               "inner_converged": inner_ok, "multipliers": lam, "penalty": rho, "terminal_multipliers": lam_T,
               "terminal_penalty": rho_T, "outer_cost": torch.stack(outer_cost),
               "outer_violation": torch.stack(outer_violation), "inner_iterations": inner_iterations,
               "inner_grad_tol": inner_grad_tol}
    return Solution(X=X, U=U, cost=J, converged=done, iterations=total, K=K, k=kff, history=history)


def _check_options(where, **values):
    checks = {"max_outer": (lambda v: isinstance(v, int) and v >= 1, "a positive int"),
              "max_iter": (lambda v: isinstance(v, int) and v >= 1, "a positive int"),
              "grad_tol": (lambda v: v > 0, "> 0"),
              "intermediate_grad_tol": (lambda v: v > 0, "> 0 or None"),
              "constraint_tol": (lambda v: v > 0, "> 0"),
              "penalty_init": (lambda v: v > 0, "> 0"),
              "penalty_growth": (lambda v: v > 1, "> 1"),
              "penalty_max": (lambda v: v >= values["penalty_init"], ">= penalty_init"),
              "violation_shrink": (lambda v: 0 < v < 1, "in (0, 1)")}
    for name, value in values.items():
        test, wanted = checks[name]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (ok and test(value)):
            raise ValueError(f"{where}: {name} must be {wanted}, got {value!r}")


def _evaluate(where, constraint, X, U):
    """The constraint at the initial trajectory, with its output shapes and values checked."""
    B, T = U.shape[:2]
    x, u = X[:, :-1].reshape(B * T, -1), U.reshape(B * T, -1)
    N = B * T
    if constraint.time_varying:
        x, u, N = X[:, 0], U[:, 0], B
    g = constraint.stage(x, u, 0 if constraint.time_varying else None)
    _check_output(where, "constraint.stage" if not isinstance(constraint, _FunctionConstraint) else "constraint",
                  g, N, x, u, "x (N, n), u (N, m)")
    gT = constraint.terminal(X[:, -1])
    _check_output(where, "constraint.terminal", gT, B, X[:, -1], None, "x (N, n)")
    G, GT = constraint(X, U)
    if G.shape[-1] + GT.shape[-1] == 0:
        raise ValueError(f"{where}: constraint has no constraints (k = 0 stage and k_T = 0 terminal values); "
                         "use trajopt.ilqr")
    check_finite(where, {"the constraint at the initial trajectory": G,
                         "the terminal constraint at the initial trajectory": GT})
    return G, GT


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


def _grow(rho, measure, prev, tol, shrink, growth, cap):
    """Multiply the penalty of constraints whose measure stayed above ``tol`` and ``shrink * prev``."""
    grow = (measure > tol) & (measure > shrink * prev)
    return torch.where(grow, torch.clamp(rho * growth, max=cap), rho)


def _largest(a, b):
    """Largest entry per problem over ``a (B, T, k)`` and ``b (B, k_T)``, ``(B,)``; entries are >= 0."""
    return torch.cat([a.flatten(1), b, a.new_zeros(a.shape[0], 1)], 1).amax(-1)
