"""Direct transcription: trajectory optimization as a nonlinear program in both states and controls.

Two transcriptions share one set of solvers. :func:`collocation` (Betts, *Practical Methods for Optimal
Control*, 2nd ed., sec. 4.5; Kelly 2017, "An introduction to trajectory optimization", sec. 3-4) makes the
knot states of a continuous model decision variables and asks each interval to satisfy a trapezoidal or a
Hermite-Simpson collocation equation; :func:`multiple_shooting` (Bock and Plitt 1984) makes every
``segment``-th state of a discrete model a decision variable and asks each segment's rollout to end on the
next knot. The problem is then ``min cost(X, U)`` subject to ``defects(X, U) = 0`` and box bounds on the
controls (and states), solved either by

- ``solver="scipy"``: ``scipy.optimize.minimize`` (SLSQP or trust-constr) with exact equality constraints,
  bounds, gradients and constraint Jacobians by torch autograd, one call per problem (the exact reference
  backend); or
- ``solver="theseus"``: an augmented-Lagrangian outer loop (Powell-Hestenes-Rockafellar; Nocedal and
  Wright, *Numerical Optimization*, 2nd ed., sec. 17.3-17.4) whose inner problems are nonlinear least
  squares solved by theseus-ai's Gauss-Newton or Levenberg-Marquardt, batched over problems.

Differentiable (either back end) with respect to ``x0`` and every tensor of the model and the cost that
requires grad: ``grad="implicit"`` applies the implicit-function theorem to the KKT conditions of the
transcription at the returned solution (Hessian of the Lagrangian with least-squares multipliers, active
bounds held; one dense KKT solve and one vector-Jacobian product per backward pass), ``grad="unroll"``
(theseus) records the iterations.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from dynamics import ContinuousDynamics, Dynamics
from dynamics.validation import check_consistent, check_tensor
from .._core.costs import Cost, QuadraticCost
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import rollout

__all__ = ["collocation", "multiple_shooting", "collocation_defects"]

METHODS = ("hermite_simpson", "trapezoidal")
_SOLVERS = ("theseus", "scipy")
_OPTIMIZERS = ("levenberg_marquardt", "gauss_newton")
_SCIPY_METHODS = ("SLSQP", "trust-constr")
_GRADS = ("implicit", "unroll", None)
_CHUNK = 5      # theseus iterations between two checks of the inner problem's stationarity


# ------------------------------------------------------------------------------------------ transcriptions
def _derivative(model, x, u):
    """``model.derivative`` on ``x (B, K, n)``, ``u (B, K, m)``: the interval index ``k`` is the stage index."""
    B, K, n = x.shape
    if model.time_varying:
        return torch.stack([model.derivative(x[:, k], u[:, k], k) for k in range(K)], 1)
    return model.derivative(x.reshape(B * K, n), u.reshape(B * K, -1)).view(B, K, n)


def _collocation_interval(model, dt, method):
    """Defects ``(B, K, n)`` and stage states ``(B, K, 1, n)`` of intervals ``left -> right`` under the held
    controls ``U (B, K, 1, m)``."""
    def interval(left, U, right):
        u = U[:, :, 0]
        fl, fr = _derivative(model, left, u), _derivative(model, right, u)
        if method == "trapezoidal":
            end = left + 0.5 * dt * (fl + fr)
        else:
            fm = _derivative(model, 0.5 * (left + right) + 0.125 * dt * (fl - fr), u)
            end = left + dt / 6.0 * (fl + 4.0 * fm + fr)
        return end - right, left.unsqueeze(2)
    return interval


def _shooting_interval(dynamics):
    """Defects ``(B, K, n)`` (rollout end minus next knot) and the rollout states ``(B, K, s, n)`` of segments
    of controls ``U (B, K, s, m)``; one :func:`trajopt.rollout` for all problems x segments (a time-varying model:
    one per segment, from its own first stage)."""
    def interval(left, U, right):
        B, K, s, m = U.shape
        n = left.shape[-1]
        if dynamics.time_varying:
            X = torch.stack([rollout(dynamics, left[:, k], U[:, k], k * s) for k in range(K)], 1)
        else:
            X = rollout(dynamics, left.reshape(B * K, n), U.reshape(B * K, s, m)).view(B, K, s + 1, n)
        return X[:, :, -1] - right, X[:, :, :s]
    return interval


class _Transcription:
    """Knots ``S (B, K+1, n)`` (``S[:, 0] = x0``, the others decision variables) and controls ``U (B, T, m)``,
    ``T = K s``: interval ``k`` joins ``S[:, k]`` to ``S[:, k+1]`` under ``U[:, k s:(k+1) s]``. ``model``: the
    module whose tensors the intervals use (for the implicit gradient)."""

    def __init__(self, interval, T, segment, n, m, model):
        self.interval, self.T, self.s, self.K, self.n, self.m = interval, T, segment, T // segment, n, m
        self.model = model

    def knots(self, x0, flat):
        """``S (B, K+1, n)`` from ``x0 (B, n)`` and the flat knot variables ``(B, K n)``."""
        return torch.cat([x0.unsqueeze(1), flat.view(-1, self.K, self.n)], 1)

    def pieces(self, S, U):
        return self.interval(S[:, :-1], U.view(-1, self.K, self.s, self.m), S[:, 1:])

    def defects(self, S, U):
        return self.pieces(S, U)[0]

    def states(self, S, U):
        """The whole trajectory ``X (B, T+1, n)`` (the rollouts of the segments, then the last knot)."""
        stage = self.pieces(S, U)[1]
        return torch.cat([stage.reshape(S.shape[0], self.T, self.n), S[:, -1:]], 1)


def collocation_defects(model: ContinuousDynamics, X: torch.Tensor, U: torch.Tensor, dt: float | None = None,
                        method: str = "hermite_simpson") -> torch.Tensor:
    """Collocation defects ``(B, T, n)`` of states ``X (B, T+1, n)`` under held controls ``U (B, T, m)``.

    ``trapezoidal``: ``x_t + dt/2 (f(x_t, u_t) + f(x_{t+1}, u_t)) - x_{t+1}``; ``hermite_simpson``:
    ``x_t + dt/6 (f(x_t, u_t) + 4 f(x_m, u_t) + f(x_{t+1}, u_t)) - x_{t+1}`` with the Hermite midpoint
    ``x_m = (x_t + x_{t+1})/2 + dt/8 (f(x_t, u_t) - f(x_{t+1}, u_t))``. Unbatched ``(T+1, n)``, ``(T, m)`` give
    ``(T, n)``. Differentiable with respect to ``X``, ``U`` and the model's tensors.
    """
    where = "collocation_defects"
    dt = _check_model(where, model, dt, method)
    dims = {"n": model.state_dim, "m": model.control_dim}
    check_tensor(where, "U", U, ("T", "m"), dims)
    dims["T+1"] = U.shape[-2] + 1
    check_tensor(where, "X", X, ("T+1", "n"), dims)
    if check_consistent(where, {"X": X, "U": U}, {"X": 2, "U": 2}) is None:
        return collocation_defects(model, X.unsqueeze(0), U.unsqueeze(0), dt, method)[0]
    B = max(X.shape[0], U.shape[0])
    X, U = X.expand(B, *X.shape[1:]), U.expand(B, *U.shape[1:])
    return _collocation_interval(model, dt, method)(X[:, :-1], U.unsqueeze(2), X[:, 1:])[0]


# ---------------------------------------------------------------------------------------- public solvers
def collocation(model: ContinuousDynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None,
                X_init: torch.Tensor | None = None, *, horizon: int | None = None, dt: float | None = None,
                method: str = "hermite_simpson", u_lower=None, u_upper=None, x_lower=None, x_upper=None,
                solver: str = "theseus", optimizer: str = "levenberg_marquardt", scipy_method: str = "SLSQP",
                grad: str | None = "implicit", max_iter: int = 200, max_outer: int = 30, grad_tol: float = 1e-6,
                constraint_tol: float = 1e-8, penalty_init: float = 1e4, penalty_growth: float = 10.0,
                penalty_max: float = 1e8, options: dict | None = None) -> Solution:
    """Direct collocation of ``min cost(X, U)`` for a continuous model ``dx/dt = f(x, u, t)``.

    The transcription: knots ``x_0 .. x_T`` at times ``t dt`` (``x_0 = x0`` fixed, the others decision
    variables), controls ``u_0 .. u_{T-1}`` held constant (zero-order hold) on ``[t dt, (t+1) dt)``, and one
    defect per interval, ``(B, T, n)`` (see :func:`collocation_defects`): trapezoidal (second order) or
    Hermite-Simpson (the 3-stage Lobatto IIIA method: fourth order, since ``f(., u_t)`` is smooth on the
    interval when the control is held). The objective is the discrete ``cost(X, U)`` on the knots and the
    ``T`` controls, so it is the problem :func:`trajopt.ilqr` solves with the same ``dt`` up to the
    integrator that links the knots. A time-varying model sees the interval index as ``t``.

    Args:
        model: a :class:`dynamics.ContinuousDynamics`.
        cost: a :class:`trajopt.Cost`. ``solver="theseus"`` needs it as a sum of squares: a
            :class:`trajopt.QuadraticCost` with positive semidefinite ``C`` (and ``C_final``), factored by
            Cholesky (by ``eigh`` when only semidefinite), or a cost with ``stage_residuals(x, u, t) -> (B, k)``
            (and optionally ``terminal_residuals(x) -> (B, k_T)``) such that ``stage = 1/2 |r|^2`` up to a
            constant.
        x0: initial states ``(B, n)`` (or ``(n,)``).
        U_init: initial controls ``(B, T, m)`` (or ``(T, m)``), clipped into the bounds; zeros of length
            ``horizon`` if None.
        X_init: initial knots ``(B, T+1, n)`` (or ``(T+1, n)``; its first state is replaced by ``x0``); if
            None, the RK4 rollout of ``U_init`` with step ``dt``.
        horizon: ``T`` when ``U_init`` is None.
        dt: the interval length; ``model.default_dt`` if None.
        method: ``"hermite_simpson"`` or ``"trapezoidal"``.
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)``, or None; the returned ``U`` holds them
            exactly.
        x_lower, x_upper: state bounds broadcastable to ``(B, T+1, n)`` on the knots ``1..T`` (``x0`` is
            given), or None.
        solver: ``"theseus"`` (batched) or ``"scipy"`` (one ``scipy.optimize.minimize`` per problem: scipy is
            not batched; that loop is acceptable because this is the exact reference backend).
        optimizer: theseus's ``"levenberg_marquardt"`` (adaptive damping) or ``"gauss_newton"``.
        scipy_method: ``"SLSQP"`` or ``"trust-constr"`` (exact Hessian-vector products of the Lagrangian).
        grad: ``"implicit"`` (either back end: the implicit-function theorem on the KKT conditions at the
            solution, see below), ``"unroll"`` (theseus only: autograd through every inner iteration and
            multiplier update) or None (detached ``X``, ``U`` and ``cost``).
        max_iter: iterations of each inner theseus solve (one that stops short of stationarity feeds
            inaccurate multipliers to the next, and the penalty then runs up to ``penalty_max``); scipy's
            ``maxiter`` is ten times this.
        max_outer: multiplier updates of the augmented Lagrangian (theseus).
        grad_tol: a problem has converged when the largest entry of the gradient of the Lagrangian at its final
            multipliers is at most this (theseus) or scipy reports success (scipy; its ``ftol``/``gtol`` is
            ``1e-10``/``1e-9`` unless ``options`` says otherwise);
        constraint_tol: ... and its largest defect and bound violation are at most this.
        penalty_init, penalty_growth, penalty_max: the augmented Lagrangian's penalty ``rho`` of each
            constraint: it starts at ``penalty_init`` and grows by ``penalty_growth`` (up to ``penalty_max``)
            after an inner solve in which the constraint's violation stayed above ``constraint_tol`` and did
            not fall below a quarter of its previous value. A small ``penalty_init`` lets the first inner
            solves trade large defects for cost (defects ~1 at ``rho = 10`` on the pendulum swing-up), which
            carries the controls into other basins (and ``z`` of bounded controls onto other branches of the
            ``sin``) from which the later, stiff (``rho -> penalty_max``) inner problems do not recover; start it
            near the cost's scale over the defects' (``1e4`` for the benchmark problems).
        options: extra options for the back end: ``scipy.optimize.minimize``'s ``options``, or theseus
            optimizer keyword arguments (e.g. ``damping``, ``step_size``).

    Returns:
        ``Solution`` with ``X (B, T+1, n)`` (the knots), ``U (B, T, m)``, ``cost (B,)`` (``cost(X, U)``),
        ``converged (B,)``, ``iterations`` (theseus: inner iterations summed over the outer loop; scipy: the
        most any problem used) and ``history``: ``defect (B,)`` (largest absolute defect of the returned
        solution), ``violation (B,)`` (largest bound violation), ``stationarity (B,)`` (theseus) and
        ``multipliers (B, T, n)`` (the defects' multipliers, detached), ``outer_iterations (B,)`` (theseus),
        ``status``/``message`` (scipy, per problem).

    Bounds: scipy keeps them as box bounds. The theseus route writes a control with two finite bounds as
    ``u = mid + half sin(z)`` and optimizes ``z`` (zero-valued residual rows add the squashing's curvature
    to Gauss-Newton's ``J'J``, which it otherwise loses where a bound is active); other bounds are
    inequalities of the augmented Lagrangian (the residual ``sqrt(rho) max(0, g + mu / rho)`` of ``g <= 0``).
    With the default penalty schedule it solves P2 with its active bounds (``|u| <= 2``) to scipy's optimum.

    Differentiable (``grad`` not None) with respect to ``x0`` and the tensors of ``model`` and ``cost`` that
    require grad, not the bounds or the initial guess. ``"implicit"`` (either back end) is the exact derivative
    of the constrained optimum by the implicit-function theorem on the transcription's KKT conditions at the
    returned solution: the variables ``w`` are the knots ``1..K`` and the controls, the constraints the
    defects ``h = 0`` (``x0`` enters them as knot 0); variables at a bound (within ``1e-8`` relative) are held
    there and get zero gradient; the multipliers are recomputed by least squares on the stationarity of the
    free variables, ``grad cost + A' lambda = 0`` (``A = dh/dw``). The backward pass assembles the Hessian
    ``H`` of the Lagrangian ``cost + lambda' h`` (interval blocks by batched double backward, stored dense),
    solves the KKT system ``[[H, A'], [A, 0]]`` once (null-space method: QR of ``A'``, Cholesky of the
    reduced Hessian) and takes one vector-Jacobian product of ``(grad_w L, h)`` into ``x0`` and the
    parameters. The backward pass raises ``ValueError`` if the defects' Jacobian on the free variables is
    rank deficient or the reduced Hessian is not positive definite (not a strict local minimum). Problems
    that did not converge (``converged`` False) get no gradient through the solve, as with
    :func:`trajopt.ilqr`: their knots and controls are constants (``X[:, 0]`` is still ``x0``, and ``cost``
    still depends on the cost's tensors). The gradient is exact at the point returned, so its accuracy is the
    solve's: against central differences of the exact optimum both back ends agree to about ``1e-8``
    relative (see the docs). trust-constr's barrier stops bounded controls short of their bounds (by about
    ``1e-5``), so they count as free: prefer SLSQP for gradients with active bounds. ``"unroll"`` (theseus)
    follows every iteration (memory grows with them).
    """
    where = "collocation"
    dt = _check_model(where, model, dt, method)
    step = model.discretize(dt, "rk4")
    x0, U_init, X_init, lower, upper, xl, xu, single = _check_inputs(
        where, step, cost, x0, U_init, X_init, horizon, u_lower, u_upper, x_lower, x_upper)
    if X_init is None:
        X_init = rollout(step, x0.detach(), U_init.detach())
    tr = _Transcription(_collocation_interval(model, dt, method), U_init.shape[1], 1, model.state_dim,
                        model.control_dim, model)
    sol = _solve(where, tr, cost, x0, X_init, U_init, lower, upper, xl, xu, solver=solver, optimizer=optimizer,
                 scipy_method=scipy_method, grad=grad, max_iter=max_iter, max_outer=max_outer, grad_tol=grad_tol,
                 constraint_tol=constraint_tol, penalty_init=penalty_init, penalty_growth=penalty_growth,
                 penalty_max=penalty_max, options=options)
    return _unbatch(sol) if single else sol


def multiple_shooting(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None,
                      X_init: torch.Tensor | None = None, *, horizon: int | None = None, segment: int = 1,
                      u_lower=None, u_upper=None, x_lower=None, x_upper=None, solver: str = "theseus",
                      optimizer: str = "levenberg_marquardt", scipy_method: str = "SLSQP",
                      grad: str | None = "implicit", max_iter: int = 200, max_outer: int = 30,
                      grad_tol: float = 1e-6, constraint_tol: float = 1e-8, penalty_init: float = 1e4,
                      penalty_growth: float = 10.0, penalty_max: float = 1e8, options: dict | None = None) -> Solution:
    """Multiple shooting of ``min cost(X, U)`` for a discrete model, the problem :func:`trajopt.ilqr` solves.

    The states ``x_0, x_s, x_2s, .., x_T`` (``s = segment``, which must divide ``T``; ``x_0 = x0`` fixed) are
    decision variables with the controls. Every segment is rolled out from its knot under its ``s`` controls
    by :func:`trajopt.rollout` (all problems x segments in one batch) and its defect is the rollout's end
    minus the next knot, ``(B, T/s, n)``. The cost is ``cost(X, U)`` on the segments' rollouts; at a
    feasible point ``X`` is the rollout of ``U`` from ``x0``, so the optimum is iLQR's. ``segment=1`` is the
    fully discrete transcription (every state a variable); ``segment=T`` is single shooting.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics` (a time-varying one sees each segment's own stages).
        X_init: initial states ``(B, T+1, n)``; the knots are taken from it (every ``s``-th state); if None, the
            rollout of ``U_init``.
        segment: ``s``, the steps per segment.
        x_lower, x_upper: state bounds broadcastable to ``(B, T+1, n)``, only with ``segment=1`` (every state a
            knot).
        The other arguments and the returned ``Solution`` (``history["multipliers"]`` is ``(B, T/s, n)``): as
        for :func:`collocation`.

    Differentiable (``grad`` not None) with respect to ``x0`` and the tensors of ``dynamics`` and ``cost`` that
    require grad, as for :func:`collocation`: ``"implicit"`` (either back end) differentiates the KKT
    conditions of the transcription (knots and controls, active bounds held, least-squares multipliers), so
    at a converged solution it equals :func:`trajopt.ilqr`'s implicit gradient of the same problem (the
    states inside a segment are rollouts of their knot, differentiated directly).
    """
    where = "multiple_shooting"
    x0, U_init, X_init, lower, upper, xl, xu, single = _check_inputs(
        where, dynamics, cost, x0, U_init, X_init, horizon, u_lower, u_upper, x_lower, x_upper)
    T = U_init.shape[1]
    if not (isinstance(segment, int) and 1 <= segment <= T and T % segment == 0):
        raise ValueError(f"{where}: segment must be a positive int dividing the horizon T={T}, got {segment!r}")
    if (xl is not None or xu is not None) and segment > 1:
        raise ValueError(f"{where}: x_lower/x_upper bound the decision variables, which are every state only "
                         f"with segment=1 (got segment={segment}: the states inside a segment are not variables)")
    if X_init is None:
        X_init = rollout(dynamics, x0.detach(), U_init.detach())
    tr = _Transcription(_shooting_interval(dynamics), T, segment, dynamics.state_dim, dynamics.control_dim, dynamics)
    sol = _solve(where, tr, cost, x0, X_init[:, ::segment], U_init, lower, upper, xl, xu, solver=solver,
                 optimizer=optimizer, scipy_method=scipy_method, grad=grad, max_iter=max_iter, max_outer=max_outer,
                 grad_tol=grad_tol, constraint_tol=constraint_tol, penalty_init=penalty_init,
                 penalty_growth=penalty_growth, penalty_max=penalty_max, options=options)
    return _unbatch(sol) if single else sol


# ------------------------------------------------------------------------------------------------ checks
def _check_model(where, model, dt, method):
    if not isinstance(model, ContinuousDynamics):
        raise TypeError(f"{where}: model must be a dynamics.ContinuousDynamics, got {type(model).__name__} "
                        "(for a discrete model use trajopt.multiple_shooting)")
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}, got {method!r}")
    dt = model.default_dt if dt is None else dt
    if dt is None or not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"{where}: dt must be a positive number (or model.default_dt set), got {dt!r}")
    return float(dt)


def _check_inputs(where, dynamics, cost, x0, U_init, X_init, horizon, u_lower, u_upper, x_lower, x_upper):
    """Batched ``x0 (B, n)``, ``U_init (B, T, m)`` (clamped), ``X_init (B, T+1, n)`` (or None), the control and
    state bounds ``(B, T, m)``, ``(B, T+1, n)`` (or None) and whether the input was unbatched."""
    x0, U_init, dims = check_problem(where, dynamics, cost, x0, U_init, horizon)
    T = U_init.shape[-2]
    tensors, ndims = {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2}
    if X_init is not None:
        dims["T+1"] = T + 1
        tensors["X_init"] = check_tensor(where, "X_init", X_init, ("T+1", "n"), dims)
        ndims["X_init"] = 2
    batch = check_consistent(where, tensors, ndims)
    B, n, m = batch or 1, dims["n"], dims["m"]
    x0 = x0.expand(B, n)
    lower, upper = check_bounds(where, u_lower, u_upper, (B, T, m), x0)
    U_init = clamp_to_bounds(U_init.expand(B, T, m), lower, upper)
    if X_init is not None:
        X_init = torch.cat([x0.unsqueeze(1), X_init.expand(B, T + 1, n)[:, 1:]], 1).detach()
    xl, xu = check_bounds(where, x_lower, x_upper, (B, T + 1, n), x0, ("x_lower", "x_upper"), "(B, T+1, n)")
    return x0, U_init, X_init, lower, upper, xl, xu, batch is None


def _check_options(where, solver, optimizer, scipy_method, grad, **values):
    for name, value, allowed in (("solver", solver, _SOLVERS), ("optimizer", optimizer, _OPTIMIZERS),
                                 ("scipy_method", scipy_method, _SCIPY_METHODS), ("grad", grad, _GRADS)):
        if value not in allowed:
            raise ValueError(f"{where}: {name} must be one of {allowed}, got {value!r}")
    for name, value in values.items():
        wanted = {"max_iter": 1, "max_outer": 1}.get(name)
        if wanted is not None:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        else:
            ok = isinstance(value, (int, float)) and value > (1 if name == "penalty_growth" else 0)
        if not ok:
            raise ValueError(f"{where}: {name} must be {'a positive int' if wanted else '> 1' if name == 'penalty_growth' else '> 0'}, "
                             f"got {value!r}")


def _unbatch(sol):
    history = {k: v[0] if isinstance(v, torch.Tensor) and v.ndim >= 1 else v[0] if isinstance(v, list) else v
               for k, v in sol.history.items()}
    return Solution(X=sol.X[0], U=sol.U[0], cost=sol.cost[0], converged=sol.converged[0], iterations=sol.iterations,
                    history=history)


# ------------------------------------------------------------------------------- shared solver machinery
def _solve(where, tr, cost, x0, X_init, U_init, lower, upper, xl, xu, *, solver, optimizer, scipy_method, grad,
           max_iter, max_outer, grad_tol, constraint_tol, penalty_init, penalty_growth, penalty_max, options):
    """Solve the transcribed problem from the knots ``X_init (B, K+1, n)`` and controls ``U_init (B, T, m)``."""
    _check_options(where, solver, optimizer, scipy_method, grad, max_iter=max_iter, max_outer=max_outer,
                   grad_tol=grad_tol, constraint_tol=constraint_tol, penalty_init=penalty_init,
                   penalty_growth=penalty_growth, penalty_max=penalty_max)
    if penalty_max < penalty_init:
        raise ValueError(f"{where}: penalty_max ({penalty_max}) must be at least penalty_init ({penalty_init})")
    if solver == "scipy" and grad == "unroll":
        raise ValueError(f"{where}: grad='unroll' needs solver='theseus' (scipy's iterations are not recorded); "
                         "use grad='implicit' or None with solver='scipy'")
    knot_bounds = [None if b is None else b[:, ::tr.s][:, 1:] for b in (xl, xu)]
    if solver == "scipy":
        S, U, history, iterations = _solve_scipy(tr, cost, x0.detach(), X_init[:, 1:], U_init, lower, upper,
                                                 *knot_bounds, scipy_method, max_iter, options or {})
        converged = history.pop("success")
    else:
        residuals = _cost_residuals(where, cost, tr.T)
        S, U, history, iterations = _solve_theseus(
            where, tr, residuals, x0, X_init[:, 1:], U_init, lower, upper, *knot_bounds, optimizer=optimizer,
            grad=grad, max_iter=max_iter, max_outer=max_outer, grad_tol=grad_tol, constraint_tol=constraint_tol,
            penalty_init=penalty_init, penalty_growth=penalty_growth, penalty_max=penalty_max, options=options or {})
        converged = history["stationarity"] <= grad_tol
    with torch.no_grad():
        X = tr.states(tr.knots(x0, S), U)
        J = cost(X, U)
        defect = tr.defects(tr.knots(x0, S), U).abs().flatten(1).amax(1)
        violation = _violation(U, lower, upper)
        if xl is not None or xu is not None:
            violation = torch.maximum(violation, _violation(S.reshape(-1, tr.K, tr.n), *knot_bounds))
        finite = torch.isfinite(J) & torch.isfinite(X).flatten(1).all(1) & torch.isfinite(U).flatten(1).all(1)
    converged = converged & (defect <= constraint_tol) & (violation <= constraint_tol) & finite
    history.update(defect=defect, violation=violation)
    if grad is not None and torch.is_grad_enabled():
        if grad == "implicit":
            S, U = _implicit_solution(tr, cost, x0, S, U, lower, upper, *knot_bounds, converged)
        X = tr.states(tr.knots(x0, S), U)       # again, with its graph (x0 and the model reach X directly too)
        J = cost(X, U)
    return Solution(X=X, U=U, cost=J, converged=converged, iterations=iterations, history=history)


def _violation(V, lower, upper):
    out = V.new_zeros(V.shape[0])
    for b, sign in ((lower, -1.0), (upper, 1.0)):
        if b is not None:
            g = torch.where(torch.isfinite(b), sign * (V - b), -1.0)
            out = torch.maximum(out, g.clamp_min(0).flatten(1).amax(1))
    return out


def _interval_jacobians(fn, inputs, graph):
    """``r = fn(*inputs) (B, K, d)`` and its Jacobians ``(B, K, d, *z.shape[2:])`` in each input ``z (B, K, ...)``,
    where interval ``k`` of ``r`` depends on interval ``k`` of the inputs alone: the rows of every interval's
    block come from ``d`` batched backward passes of ``r`` summed over the intervals (never a dense Jacobian).
    ``graph``: keep the graph (a differentiable ``r`` and Jacobian)."""
    with torch.enable_grad():
        leaves = [z if graph and z.requires_grad else z.detach().requires_grad_(True) for z in inputs]
        r = fn(*leaves)
        if not r.requires_grad:         # constant in every input (e.g. the gradient of a linear function)
            jac = [r.new_zeros(*r.shape, *z.shape[2:]) for z in leaves]
            return r.detach(), jac
        d = r.shape[-1]
        eye = torch.eye(d, dtype=r.dtype, device=r.device).view(d, 1, 1, d).expand(d, *r.shape)
        jac = torch.autograd.grad(r, leaves, eye, is_grads_batched=True, create_graph=graph, allow_unused=True,
                                  materialize_grads=True)
    jac = [j.movedim(0, 2) for j in jac]
    return (r, jac) if graph else (r.detach(), [j.detach() for j in jac])


def _block_diagonal(J):
    """``J (B, K, d, c)`` as the block-diagonal ``(B, K d, K c)``."""
    B, K, d, c = J.shape
    out = J.new_zeros(B, K, d, K, c)
    k = torch.arange(K, device=J.device)
    out[:, k, :, k] = J.transpose(0, 1)
    return out.view(B, K * d, K * c)


def _knot_jacobian(J_left, J_right):
    """Jacobian ``(B, K d, K n)`` in the knots ``1..K`` of interval residuals with blocks ``J_left``,
    ``J_right`` ``(B, K, d, n)`` in their left and right knots (knot 0, ``x0``, is not a variable)."""
    B, K, d, n = J_left.shape
    out = J_left.new_zeros(B, K, d, K + 1, n)
    k = torch.arange(K, device=J_left.device)
    out[:, k, :, k] = J_left.transpose(0, 1)
    out[:, k, :, k + 1] = J_right.transpose(0, 1)
    return out[:, :, :, 1:].reshape(B, K * d, K * n)


def _defect_jacobian(tr, S, U):
    """The defects ``(B, K, n)`` of knots ``S (B, K+1, n)`` and controls ``U (B, T, m)`` and their Jacobian
    ``(B, K n, K n + T m)`` in the variables ``[knots 1..K, U]`` (block sparse, stored dense)."""
    inputs = (S[:, :-1], U.reshape(-1, tr.K, tr.s, tr.m), S[:, 1:])
    r, (JL, JU, JR) = _interval_jacobians(lambda *a: tr.interval(*a)[0], inputs, False)
    return r, torch.cat([_knot_jacobian(JL, JR), _block_diagonal(JU.flatten(3))], -1)


# ----------------------------------------------------------------------------------------- scipy backend
def _solve_scipy(tr, cost, x0, knots, U, lower, upper, xl, xu, method, max_iter, options):
    """One ``scipy.optimize.minimize`` per problem over ``z = [knots 1..K (K n), U (T m)]``."""
    import scipy.optimize as so
    from scipy.sparse.linalg import LinearOperator

    B, K, n, T, m = x0.shape[0], tr.K, tr.n, tr.T, tr.m
    opts = dict(dtype=x0.dtype, device=x0.device)
    N = K * n

    def split(z, b):
        z = torch.as_tensor(z, **opts)
        return tr.knots(x0[b:b + 1], z[:N].view(1, N)), z[N:].view(1, T, m)

    def objective(z, b):
        with torch.enable_grad():
            zt = torch.as_tensor(z, **opts).requires_grad_(True)
            S, Ub = split(zt, b)
            J = cost(tr.states(S, Ub), Ub).sum()
            (g,) = torch.autograd.grad(J, zt)
        return J.item(), g.cpu().double().numpy()

    def constraint(z, b):
        S, Ub = split(z, b)
        r, jac = _defect_jacobian(tr, S, Ub)
        return r.flatten().cpu().double().numpy(), jac[0].cpu().double().numpy()

    def lagrangian_hvp(z, b, v=None):
        """Hessian-vector products of the cost (``v`` None) or of ``v' defects`` at ``z``, for trust-constr."""
        zt = torch.as_tensor(z, **opts).requires_grad_(True)
        with torch.enable_grad():
            S, Ub = split(zt, b)
            val = cost(tr.states(S, Ub), Ub).sum() if v is None else \
                (tr.defects(S, Ub).flatten() * torch.as_tensor(v, **opts)).sum()
            (g,) = torch.autograd.grad(val, zt, create_graph=True)

        def matvec(p):
            with torch.enable_grad():
                (hp,) = torch.autograd.grad(g, zt, torch.as_tensor(np.ravel(p), **opts), retain_graph=True,
                                            allow_unused=True, materialize_grads=True)
            return hp.cpu().double().numpy()
        return LinearOperator((len(z), len(z)), matvec=matvec, dtype=np.float64)

    inf = np.inf
    S_out, U_out = knots.detach().clone().reshape(B, N), U.detach().clone()
    status, message, nit, success, multipliers = [], [], [], [], []
    for b in range(B):
        lb = np.concatenate([_np_bound(xl, b, N, -inf), _np_bound(lower, b, T * m, -inf)])
        ub = np.concatenate([_np_bound(xu, b, N, inf), _np_bound(upper, b, T * m, inf)])
        z0 = np.clip(torch.cat([knots[b].reshape(-1), U[b].reshape(-1)]).detach().cpu().double().numpy(), lb, ub)
        cache = {}

        def cons(z, b=b, cache=cache):
            key = z.tobytes()
            if key not in cache:
                cache.clear()
                cache[key] = constraint(z, b)
            return cache[key]
        bounds = so.Bounds(lb, ub)
        if method == "SLSQP":
            res = so.minimize(objective, z0, args=(b,), jac=True, method="SLSQP", bounds=bounds,
                              constraints=[{"type": "eq", "fun": lambda z: cons(z)[0], "jac": lambda z: cons(z)[1]}],
                              options={"maxiter": max_iter * 10, "ftol": 1e-10, **options})
            ok = bool(res.success)
            lam = None
        else:
            con = so.NonlinearConstraint(lambda z: cons(z)[0], 0.0, 0.0, jac=lambda z: cons(z)[1],
                                         hess=lambda z, v, b=b: lagrangian_hvp(z, b, v))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)   # "delta_grad == 0.0": quasi-Newton not used here
                res = so.minimize(objective, z0, args=(b,), jac=True, hess=lambda z, *a, b=b: lagrangian_hvp(z, b),
                                  method="trust-constr", bounds=bounds, constraints=[con],
                                  options={"maxiter": max_iter * 20, "gtol": 1e-9, "xtol": 1e-14, **options})
            ok = res.status in (1, 2) and res.constr_violation <= 1e-8
            lam = torch.as_tensor(-np.asarray(res.v[0]), **opts)
        z = np.clip(res.x, lb, ub)
        S_out[b], U_out[b] = torch.as_tensor(z[:N], **opts), torch.as_tensor(z[N:], **opts).view(T, m)
        status.append(int(res.status))
        message.append(str(res.message))
        nit.append(int(getattr(res, "nit", 0) or 0))
        success.append(ok)
        multipliers.append(torch.full((N,), float("nan"), **opts) if lam is None else lam)
    history = {"status": status, "message": message, "success": torch.tensor(success, device=x0.device),
               "multipliers": torch.stack(multipliers).view(B, K, n), "iterations": torch.tensor(nit)}
    return S_out, U_out, history, max(nit)


def _np_bound(bound, b, size, fill):
    return np.full(size, fill) if bound is None else bound[b].reshape(-1).detach().cpu().double().numpy()


# --------------------------------------------------------------------------------------- theseus backend
def _cost_residuals(where, cost, T):
    """``(stage, terminal)``: residual functions of a cost ``1/2 |r|^2 + const``: ``stage(X (B, T, n),
    U (B, T, m)) -> (B, T, k)`` and ``terminal(x (B, n)) -> (B, k_T)`` or None."""
    if isinstance(cost, QuadraticCost):
        C, c, _ = cost._stage_tensors(T)
        R, o = _square_root(where, "C", C, c)
        stage = lambda X, U: torch.einsum("tkj,btj->btk", R, torch.cat([X, U], -1)) + o   # noqa: E731
        if cost.C_final is None:
            if cost.c_final is not None:
                raise TypeError(f"{where}: solver='theseus' needs the cost as a sum of squares; cost has a linear "
                                "terminal term c_final without C_final. Use solver='scipy'")
            return stage, None
        Cf = 0.5 * (cost.C_final + cost.C_final.mT)
        cf = Cf.new_zeros(Cf.shape[-1]) if cost.c_final is None else cost.c_final
        Rf, of = _square_root(where, "C_final", Cf.unsqueeze(0), cf.unsqueeze(0))
        return stage, lambda x: x @ Rf[0].mT + of[0]
    if callable(getattr(cost, "stage_residuals", None)):
        def stage(X, U):
            B, T_, n = X.shape
            if cost.time_varying:
                return torch.stack([cost.stage_residuals(X[:, t], U[:, t], t) for t in range(T_)], 1)
            r = cost.stage_residuals(X.reshape(B * T_, n), U.reshape(B * T_, -1), None)
            return r.view(B, T_, -1)
        return stage, getattr(cost, "terminal_residuals", None)
    raise TypeError(f"{where}: solver='theseus' needs cost as a sum of squares: a trajopt.QuadraticCost or a Cost "
                    f"with stage_residuals(x, u, t) (and terminal_residuals(x)); got {type(cost).__name__}. "
                    "Use solver='scipy' for any other cost")


def _square_root(where, name, C, c):
    """``R (T, k, N)``, ``o (T, k)`` with ``1/2 tau' C tau + c' tau = 1/2 |R tau + o|^2 - 1/2 |o|^2``: ``R = L'``
    and ``o = L^{-1} c`` by Cholesky ``C = L L'``; for a semidefinite ``C`` by ``eigh`` (``c`` must then lie
    in its range)."""
    L, info = torch.linalg.cholesky_ex(C)
    if not bool((info != 0).any()):
        return L.mT, torch.linalg.solve_triangular(L, c.unsqueeze(-1), upper=False).squeeze(-1)
    w, V = torch.linalg.eigh(C)
    scale = w.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    tiny = w <= 1e-10 * scale
    if bool((w < -1e-10 * scale).any()):
        raise ValueError(f"{where}: solver='theseus' needs a positive semidefinite cost.{name}; it has eigenvalue "
                         f"{float(w.min()):.3g} (an indefinite quadratic is not a sum of squares). Use solver='scipy'")
    proj = (V.mT @ c.unsqueeze(-1)).squeeze(-1)
    if bool((tiny & (proj.abs() > 1e-8 * (1 + c.abs().amax(-1, keepdim=True)))).any()):
        raise ValueError(f"{where}: solver='theseus': the linear term of cost.{name} has a component in the null "
                         f"space of the semidefinite {name} (unbounded below, not a sum of squares). "
                         "Use solver='scipy'")
    root = torch.where(tiny, 0.0, w.clamp_min(0).sqrt())
    return root.unsqueeze(-1) * V.mT, torch.where(tiny, 0.0, proj / torch.where(tiny, 1.0, root))


class _AugmentedLagrangian:
    """The residuals of the inner least-squares problem of the augmented Lagrangian, and their Jacobians.

    Variables: the knots ``1..K`` ``(B, K n)`` and ``z (B, T m)``: a control with two finite bounds is
    ``u = mid + half sin(z)`` (``mid``, ``half``: the middle and half-width of its box), any other ``u = z``.
    Residual, ``1/2 |r|^2 = cost + sum (rho/2) |h + lam/rho|^2 + sum (rho/2) max(0, g + mu/rho)^2`` up to
    constants: per interval ``k`` the defects' ``sqrt(rho) h_k + lam_k / sqrt(rho)`` and the cost residuals of
    its stages, then the terminal cost residual, then one PHR residual per remaining bound ``g <= 0`` (one-sided
    control bounds, knot bounds).
    """

    def __init__(self, tr, residuals, x0, lower, upper, xl, xu, penalty_init):
        self.tr, (self.stage, self.terminal), self.x0 = tr, residuals, x0
        B, K, n = x0.shape[0], tr.K, tr.n
        self.lam, self.rho = x0.new_zeros(B, K, n), x0.new_full((B, K, n), penalty_init)
        flat = [None if z is None else z.reshape(B, -1) for z in (lower, upper)]
        self.squash = torch.zeros(B, tr.T * tr.m, dtype=torch.bool, device=x0.device)
        if flat[0] is not None and flat[1] is not None:
            self.squash = torch.isfinite(flat[0]) & torch.isfinite(flat[1])
            lo, hi = (torch.where(self.squash, z, 0.0) for z in flat)
            self.mid, self.half = (lo + hi) / 2, (hi - lo) / 2
        self.bounds = []            # (variable: 0 knots / 1 controls, sign, bound (B, N) finite-filled, mask (B, N))
        for var, pair in ((0, (xl, xu)), (1, flat)):
            for z, sign in zip(pair, (-1.0, 1.0)):
                if z is not None:
                    z = z.reshape(B, -1)
                    mask = torch.isfinite(z) & (~self.squash if var == 1 else True)
                    if bool(mask.any()):
                        self.bounds.append((var, sign, torch.where(mask, z, 0.0), mask))
        self.mu = [x0.new_zeros(z[2].shape) for z in self.bounds]
        self.rho_g = [x0.new_full(z[2].shape, penalty_init) for z in self.bounds]

    def controls(self, z):
        """``U (B, T m)`` of the variables ``z`` and ``dU/dz``."""
        if not bool(self.squash.any()):
            return z, torch.ones_like(z)
        U = torch.where(self.squash, self.mid + self.half * torch.sin(z), z)
        return U, torch.where(self.squash, self.half * torch.cos(z), 1.0)

    def variables(self, U):
        """``z`` of controls ``U (B, T m)`` inside their bounds (kept off the bounds, where ``dU/dz = 0``)."""
        if not bool(self.squash.any()):
            return U
        ratio = ((U - self.mid) / torch.where(self.squash, self.half, 1.0)).clamp(-0.999, 0.999)
        return torch.where(self.squash, torch.asin(ratio), U)

    def _interval(self, left, U, right):
        B, K = left.shape[:2]
        h, Xs = self.tr.interval(left, U, right)
        root = self.rho.sqrt()
        stage = self.stage(Xs.reshape(B, self.tr.T, -1), U.reshape(B, self.tr.T, -1)).reshape(B, K, -1)
        return torch.cat([root * h + self.lam / root, stage], -1)

    def _inequalities(self, knots, U):
        """Values ``g`` (``<= 0`` when satisfied, 0 where there is no bound) of every bound set."""
        V = (knots, U)
        return [torch.where(mask, sign * (V[var] - b), 0.0) for var, sign, b, mask in self.bounds]

    def residual(self, knots, z, jacobians=False, graph=False):
        """``r (B, R)`` and, with ``jacobians``, ``(J_knots (B, R, K n), J_z (B, R, T m))``."""
        tr = self.tr
        B, K, s, m = z.shape[0], tr.K, tr.s, tr.m
        S = tr.knots(self.x0, knots)
        U, dU = self.controls(z)
        Useg = U.view(B, K, s, m)
        if jacobians:
            r, (JL, JU, JR) = _interval_jacobians(self._interval, (S[:, :-1], Useg, S[:, 1:]), graph)
            Jk, Ju = [_knot_jacobian(JL, JR)], [_block_diagonal(JU.flatten(3))]
        else:
            r = self._interval(S[:, :-1], Useg, S[:, 1:])
        parts = [r.flatten(1)]
        if self.terminal is not None:
            if jacobians:
                rT, (JT,) = _interval_jacobians(lambda x: self.terminal(x[:, 0]).unsqueeze(1), (S[:, -1:],), graph)
                rT, JT = rT[:, 0], JT[:, 0, :, 0]
                Jk.append(torch.cat([JT.new_zeros(B, JT.shape[1], (K - 1) * tr.n), JT], -1))
                Ju.append(JT.new_zeros(B, JT.shape[1], tr.T * m))
            else:
                rT = self.terminal(S[:, -1])
            parts.append(rT)
        for (var, sign, _, mask), g, mu, rho in zip(self.bounds, self._inequalities(knots, U), self.mu, self.rho_g):
            active = mask & (g + mu / rho > 0)
            parts.append(torch.where(active, rho.sqrt() * g + mu / rho.sqrt(), 0.0))
            if jacobians:
                D = torch.diag_embed(torch.where(active, sign * rho.sqrt(), 0.0))
                Jk.append(D if var == 0 else D.new_zeros(B, D.shape[1], K * tr.n))
                Ju.append(D if var == 1 else D.new_zeros(B, D.shape[1], tr.T * m))
        if not jacobians:
            return torch.cat(parts + ([z.new_zeros(B, tr.T * m)] if bool(self.squash.any()) else []), 1)
        Jk, Ju = torch.cat(Jk, 1), torch.cat(Ju, 1)
        if bool(self.squash.any()):
            # rows of value zero whose Jacobian adds diag(max(0, dE/du d2u/dz2)) to Gauss-Newton's J'J: the
            # squashing's own curvature, the exact Newton term where a bound is active (there du/dz = 0, so that
            # Gauss-Newton alone sees no curvature and converges only linearly)
            gu = (Ju.mT @ torch.cat(parts, 1).unsqueeze(-1)).squeeze(-1)
            curvature = torch.where(self.squash, -gu * self.half * torch.sin(z), 0.0).clamp_min(0).detach()
            parts.append(z.new_zeros(B, tr.T * m))
            Jk = torch.cat([Jk, Jk.new_zeros(B, tr.T * m, K * tr.n)], 1)
            Ju = torch.cat([Ju * dU.unsqueeze(1), torch.diag_embed(curvature.sqrt())], 1)
        return torch.cat(parts, 1), Jk, Ju

    def stationarity(self, knots, z):
        """Largest entry of the gradient of ``1/2 |r|^2`` (the Lagrangian's at the updated multipliers), ``(B,)``."""
        r, Jk, Ju = self.residual(knots, z, jacobians=True)
        g = torch.cat([Jk, Ju], -1).mT @ r.unsqueeze(-1)
        return g.abs().flatten(1).amax(1)

    def update(self, knots, z, active, tol, growth, cap, previous):
        """Multiplier and penalty updates of the problems ``active (B,)``; returns the violations ``(B,)`` and the
        progress measures ``(B,)`` to compare with at the next update (largest ``|lambda_new - lambda| / rho``)."""
        U = self.controls(z)[0]
        h = self.tr.defects(self.tr.knots(self.x0, knots), U)
        gs = self._inequalities(knots, U)
        # one penalty per problem (per-constraint penalties that drift orders of magnitude apart leave the inner
        # least-squares problems too ill-conditioned for Gauss-Newton)
        measure = torch.stack([h.abs().flatten(1).amax(1)] + [torch.maximum(g, -mu / rho).abs().amax(1)
                                                               for g, mu, rho in zip(gs, self.mu, self.rho_g)], 1).amax(1)
        previous = torch.full_like(measure, float("inf")) if previous is None else previous
        grow = active & (measure > tol) & (measure > 0.25 * previous)
        a3, a2 = active.view(-1, 1, 1), active.view(-1, 1)
        self.lam = torch.where(a3, self.lam + self.rho * h, self.lam)
        self.rho = torch.where(grow.view(-1, 1, 1), (self.rho * growth).clamp(max=cap), self.rho)
        for i, g in enumerate(gs):
            self.mu[i] = torch.where(a2, (self.mu[i] + self.rho_g[i] * g).clamp_min(0), self.mu[i])
            self.rho_g[i] = torch.where(grow.view(-1, 1), (self.rho_g[i] * growth).clamp(max=cap), self.rho_g[i])
        violation = torch.stack([h.abs().flatten(1).amax(1)] + [g.clamp_min(0).amax(1) for g in gs], 1).amax(1)
        return violation, torch.where(active, measure, previous)


def _import_theseus(where):
    try:
        with warnings.catch_warnings():   # without scikit-sparse theseus warns that CHOLMOD is unavailable
            warnings.simplefilter("ignore", UserWarning)
            import theseus as th
    except ImportError as err:  # pragma: no cover - exercised where theseus-ai is absent
        raise ImportError(f"{where}(solver='theseus') needs theseus-ai; see the README for its install "
                          "(pip install --no-build-isolation --no-deps theseus-ai ...), or use solver='scipy'") from err
    return th


def _theseus_layer(th, al, B, dtype, optimizer, max_iter):
    """A TheseusLayer over one cost function: the residuals of ``al`` in the variables ``knots (B, K n)`` and
    ``controls (B, T m)`` (Jacobians by :meth:`_AugmentedLagrangian.residual`, not by theseus's autograd)."""
    tr = al.tr
    dim = al.residual(al.x0.new_zeros(B, tr.K * tr.n), al.x0.new_zeros(B, tr.T * tr.m)).shape[1]

    class Residual(th.CostFunction):
        def __init__(self, knots, controls, name=None):
            super().__init__(th.ScaleCostWeight(torch.ones(1, 1, dtype=dtype)), name=name)
            self.knots, self.controls = knots, controls
            self.register_optim_vars(["knots", "controls"])

        def error(self):
            return al.residual(self.knots.tensor, self.controls.tensor)

        def jacobians(self):
            r, Jk, Ju = al.residual(self.knots.tensor, self.controls.tensor, jacobians=True,
                                    graph=torch.is_grad_enabled())
            return [Jk, Ju], r

        def dim(self):
            return dim

        def _copy_impl(self, new_name=None):
            return Residual(self.knots.copy(), self.controls.copy(), name=new_name)

    objective = th.Objective(dtype=dtype)
    objective.add(Residual(th.Vector(tr.K * tr.n, name="knots", dtype=dtype),
                           th.Vector(tr.T * tr.m, name="controls", dtype=dtype), name="augmented_lagrangian"))
    cls = th.LevenbergMarquardt if optimizer == "levenberg_marquardt" else th.GaussNewton
    # no tolerance: theseus would count a problem whose step was rejected (no change) as converged; the caller
    # runs short solves and judges convergence itself
    opt = cls(objective, max_iterations=max_iter, abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    return th.TheseusLayer(opt, vectorize=False)


def _solve_theseus(where, tr, residuals, x0, knots, U, lower, upper, xl, xu, *, optimizer, grad, max_iter, max_outer,
                   grad_tol, constraint_tol, penalty_init, penalty_growth, penalty_max, options):
    th = _import_theseus(where)
    B, dtype = x0.shape[0], x0.dtype
    al = _AugmentedLagrangian(tr, residuals, x0 if grad == "unroll" else x0.detach(), lower, upper, xl, xu,
                              penalty_init)
    layer = _theseus_layer(th, al, B, dtype, optimizer, max_iter)
    kwargs = {"damping": 1e-3, "adaptive_damping": True} if optimizer == "levenberg_marquardt" else {}
    kwargs.update(options)
    adaptive = bool(kwargs.get("adaptive_damping"))
    knots, U = knots.reshape(B, -1).detach(), al.variables(U.reshape(B, -1).detach())
    done = torch.zeros(B, dtype=torch.bool, device=x0.device)
    outer = torch.zeros(B, dtype=torch.long, device=x0.device)
    stationarity = torch.full((B,), float("inf"), dtype=dtype, device=x0.device)
    iterations, previous = 0, None

    def inner(knots, U, backward_mode, budget):
        """One theseus solve of at most ``budget`` iterations; theseus's Levenberg-Marquardt gives up after
        three rejected steps in a row, so each problem's next call starts from the damping this one ended with."""
        layer.optimizer.set_params(max_iterations=budget)
        with warnings.catch_warnings():   # theseus 0.2.3 calls np.array(tensor, copy=False), which numpy 2 flags
            warnings.simplefilter("ignore", DeprecationWarning)
            values, info = layer.forward({"knots": knots, "controls": U},
                                         optimizer_kwargs={"backward_mode": backward_mode, **kwargs})
        if adaptive:
            kwargs["damping"] = layer.optimizer._damping.detach().clone()
        its = torch.where(info.converged_iter < 0, budget, info.converged_iter)
        return values["knots"], values["controls"], max(1, int(its.max()))

    with torch.set_grad_enabled(grad == "unroll" and torch.is_grad_enabled()):
        for _ in range(max_outer):
            used = 0
            while used < max_iter:          # the inner problem, to stationarity grad_tol or max_iter iterations
                kn, Un, its = inner(knots, U, "unroll", min(_CHUNK, max_iter - used))
                used += its
                keep = done.view(-1, 1)
                knots, U = torch.where(keep, knots, kn), torch.where(keep, U, Un)
                with torch.no_grad():
                    stationarity = torch.where(done, stationarity, al.stationarity(knots, U))
                if bool((done | (stationarity <= grad_tol)).all()):
                    break
            iterations += used
            violation, previous = al.update(knots, U, ~done, constraint_tol, penalty_growth, penalty_max, previous)
            outer = outer + (~done).long()
            done = done | ((violation <= constraint_tol) & (stationarity <= grad_tol))
            if bool(done.all()):
                break
    U = clamp_to_bounds(al.controls(U)[0].view(B, tr.T, tr.m), lower, upper)      # clamp: rounding of mid + half sin
    if grad != "unroll":
        knots, U = knots.detach(), U.detach()
    history = {"stationarity": stationarity, "outer_iterations": outer, "multipliers": al.lam.detach()}
    return knots, U, history, iterations


# ------------------------------------------------------------------------------------------ implicit gradient
_HELD_TOL = 1e-8        # a variable this close to a finite bound (relative to 1 + |bound|; float32: 100 eps) is held
_RANK_TOL = 1e-10       # a pivot of the QR of the free constraint Jacobian this small (relative) means dependent


def _held(V, lower, upper):
    """Entries of ``V (B, ...)`` at (within :data:`_HELD_TOL` of) a finite bound of ``lower``/``upper``
    (broadcastable to ``V``, or None)."""
    held = torch.zeros_like(V, dtype=torch.bool)
    tol = max(_HELD_TOL, 100 * torch.finfo(V.dtype).eps)
    for b, sign in ((lower, -1.0), (upper, 1.0)):
        if b is not None:
            finite = torch.isfinite(b)
            b = torch.where(finite, b, 0.0)
            held |= finite & (sign * (V - b) >= -tol * (1 + b.abs()))
    return held


def _implicit_solution(tr, cost, x0, knots, U, lower, upper, xl, xu, converged):
    """The solution ``knots (B, K n)``, ``U (B, T, m)`` made differentiable with respect to ``x0 (B, n)`` and the
    tensors of the model and the cost that require grad, by :class:`_ImplicitTranscription`. Variables at a bound
    (``lower``/``upper`` ``(B, T, m)``, the knots' ``xl``/``xu`` ``(B, K, n)``, or None) are held there, and so are
    all the variables of the problems not ``converged (B,)``. Returns the inputs when grad mode is off or nothing
    requires grad."""
    inputs = [x0] + grad_tensors(tr.model, cost)
    if not torch.is_grad_enabled() or not any(z.requires_grad for z in inputs):
        return knots, U
    B = x0.shape[0]
    knots, U = knots.detach().reshape(B, tr.K * tr.n), U.detach()
    held = torch.cat([_held(knots.view(B, tr.K, tr.n), xl, xu).flatten(1), _held(U, lower, upper).flatten(1)], 1)
    free = ~held & converged.view(B, 1)
    problem = (tr, cost, x0.detach(), knots, U, free)
    return _ImplicitTranscription.apply(knots, U, problem, *inputs)


def _local_indices(tr, device):
    """``(K, 2 n + s m)``: the index in ``w = [knots 1..K, U]`` of each entry of interval ``k``'s
    ``(left knot, controls, right knot)``; ``x0`` (interval 0's left knot, not a variable) maps to ``K n + T m``."""
    K, n, sm, N = tr.K, tr.n, tr.s * tr.m, tr.K * tr.n + tr.T * tr.m
    k = torch.arange(K, device=device).view(K, 1)
    left = torch.where(k == 0, N, (k - 1) * n + torch.arange(n, device=device))
    controls = K * n + k * sm + torch.arange(sm, device=device)
    return torch.cat([left, controls, k * n + torch.arange(n, device=device)], 1)


def _lagrangian_hessian(tr, cost, S, U, lam):
    """The Hessian ``(B, N, N)`` of ``cost(X, U) + lam' h`` (``lam (B, K, n)``, ``h`` the defects) in the
    variables ``w = [knots 1..K, U]`` at knots ``S (B, K+1, n)`` and controls ``U (B, T, m)``. Interval ``k``'s
    part (its stages' cost, its defects, and the terminal cost for the last) depends on its two knots and its
    controls alone, so its Hessian blocks come from ``2 n + s m`` batched double-backward passes over all
    intervals at once (:func:`_interval_jacobians` of the interval-wise gradient), summed into ``w``'s indices."""
    B, K, T, n, m = S.shape[0], tr.K, tr.T, tr.n, tr.m
    N = K * n + T * m

    def gradient(left, Useg, right):
        h, Xs = tr.interval(left, Useg, right)
        X = torch.cat([Xs.reshape(B, T, n), right[:, -1:]], 1)
        L = cost(X, Useg.reshape(B, T, m)).sum() + (lam * h).sum()
        parts = torch.autograd.grad(L, (left, Useg, right), create_graph=True, materialize_grads=True)
        return torch.cat([z.flatten(2) for z in parts], -1)

    _, (HL, HU, HR) = _interval_jacobians(gradient, (S[:, :-1], U.view(B, K, tr.s, m), S[:, 1:]), False)
    blocks = torch.cat([HL, HU.flatten(3), HR], -1)                         # (B, K, d, d)
    idx = _local_indices(tr, S.device)
    flat = (idx.unsqueeze(-1) * (N + 1) + idx.unsqueeze(-2)).reshape(-1)
    H = blocks.new_zeros(B, (N + 1) ** 2).index_add_(1, flat, blocks.reshape(B, -1))
    H = H.view(B, N + 1, N + 1)[:, :N, :N]
    return 0.5 * (H + H.mT)


def _kkt_adjoint(tr, cost, x0, knots, U, free, g):
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
    with torch.enable_grad():
        kn, Ug = knots.detach().requires_grad_(True), U.detach().requires_grad_(True)
        J = cost(tr.states(tr.knots(x0, kn), Ug), Ug).sum()
        grads = torch.autograd.grad(J, (kn, Ug), allow_unused=True, materialize_grads=True)
    gJ = torch.cat([z.flatten(1) for z in grads], 1) * f
    S = tr.knots(x0, knots)
    A = _defect_jacobian(tr, S, U)[1] * f.unsqueeze(1)
    Q, R = torch.linalg.qr(A.mT, mode="complete")
    R = R[:, :M]
    pivots = R.diagonal(dim1=-2, dim2=-1).abs()
    if bool((pivots <= _RANK_TOL * pivots.amax(-1, keepdim=True).clamp_min(1e-300)).any()):
        raise ValueError("collocation/multiple_shooting (grad='implicit'): the defects' Jacobian on the free "
                         "variables is rank deficient at the solution (too many variables held at their bounds for "
                         "the constraints to be independent); the implicit gradient is not defined there. Use "
                         "grad='unroll' (theseus) or grad=None")
    Y, Z = Q[..., :M], Q[..., M:]
    lam = -torch.linalg.solve_triangular(R, Y.mT @ gJ.unsqueeze(-1), upper=True)
    H = _lagrangian_hessian(tr, cost, S, U, lam.view(B, K, n))
    H = H * f.unsqueeze(-1) * f.unsqueeze(-2) + torch.diag_embed(1 - f)
    L, info = torch.linalg.cholesky_ex(Z.mT @ H @ Z)
    if bool((info != 0).any()):
        raise ValueError("collocation/multiple_shooting (grad='implicit'): the Hessian of the Lagrangian on the "
                         "null space of the defects' Jacobian (free variables) is not positive definite at the "
                         "solution (not a strict local minimum, or not converged); use grad='unroll' (theseus) or "
                         "solve to convergence")
    a = (g * f).unsqueeze(-1)
    v = Z @ torch.cholesky_solve(Z.mT @ a, L)
    nu = torch.linalg.solve_triangular(R, Y.mT @ (a - H @ v), upper=True)
    return v.squeeze(-1), nu.squeeze(-1), lam.squeeze(-1)


class _ImplicitTranscription(torch.autograd.Function):
    """Identity on the solution ``(knots (B, K n), U (B, T, m))`` of a transcription whose backward is the
    implicit-function theorem on its KKT conditions.

    With ``w = [knots, U]`` (the free entries: the held ones are constants), the defects ``h(w; x0, theta) = 0``
    and the Lagrangian ``L = cost + lam' h``, the conditions ``F = (grad_w L, h) = 0`` define ``(w, lam)`` as
    functions of ``p = (x0, theta)``, and a loss with gradient ``g`` in ``w`` has
    ``dloss/dp = -(v' d(grad_w L)/dp + nu' dh/dp)`` with ``[[H, A'], [A, 0]] [v; nu] = [g; 0]`` (the KKT matrix
    is symmetric; :func:`_kkt_adjoint`). The product with ``dF/dp`` is one vector-Jacobian product of
    ``v' grad_w L + nu' h`` (a double backward through the cost and the model, all intervals at once). Problems
    that did not converge have every variable held: no gradient through the solve (as in :func:`trajopt.ilqr`).
    """

    @staticmethod
    def forward(ctx, knots, U, problem, *inputs):
        ctx.problem, ctx.inputs = problem, inputs
        return knots.clone(), U.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, g_knots, g_U):
        tr, cost, x0d, knots, U, free = ctx.problem
        x0, *tensors = ctx.inputs
        g = torch.cat([torch.zeros_like(knots) if g_knots is None else g_knots,
                       (torch.zeros_like(U) if g_U is None else g_U).flatten(1)], 1)
        rows = (free & (g != 0)).any(1).nonzero().squeeze(1)
        if rows.numel() == 0:           # nothing reaches a free variable of a converged problem
            return (None, None, None, *[torch.zeros_like(z) if z.requires_grad else None for z in ctx.inputs])
        # x0 as a fresh leaf: through its own history (an earlier solve in a closed loop, say) x0 may depend on
        # these same parameters, and that path is the outer backward's to follow, not this product's
        inputs = (x0.detach().requires_grad_(x0.requires_grad), *tensors)
        x0 = inputs[0]
        wrt = [z for z in inputs if z.requires_grad]
        with torch.no_grad():
            v, nu, lam = _kkt_adjoint(tr, cost, x0d[rows], knots[rows], U[rows], free[rows], g[rows])
        Kn = tr.K * tr.n
        with torch.enable_grad():
            # -[v; nu]' dF/dp: the gradient of the Lagrangian differentiated along v, the defects along nu
            kn, Ug = knots[rows].requires_grad_(True), U[rows].requires_grad_(True)
            S = tr.knots(x0[rows], kn)
            h, Xs = tr.pieces(S, Ug)
            X = torch.cat([Xs.reshape(len(rows), tr.T, tr.n), S[:, -1:]], 1)
            h = h.flatten(1)
            gk, gu = torch.autograd.grad(cost(X, Ug).sum() + (lam * h).sum(), (kn, Ug), create_graph=True,
                                         materialize_grads=True)
            phi = (v[:, :Kn] * gk).sum() + (v[:, Kn:] * gu.flatten(1)).sum() + (nu * h).sum()
            grads = torch.autograd.grad(phi, wrt, allow_unused=True) if phi.requires_grad else [None] * len(wrt)
        grads = iter(grads)
        out = [None if not z.requires_grad else _neg(next(grads)) for z in inputs]
        return (None, None, None, *out)


def _neg(z):
    return None if z is None else -z
