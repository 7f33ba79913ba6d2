"""Direct transcription: trajectory optimization as a nonlinear program in both states and controls.

Two transcriptions share one set of back ends. :func:`collocation` (Betts, *Practical Methods for Optimal
Control*, 2nd ed., sec. 4.5; Kelly 2017, "An introduction to trajectory optimization", sec. 3-4) makes the
knot states of a continuous model decision variables and asks each interval to satisfy a trapezoidal or a
Hermite-Simpson collocation equation; :func:`multiple_shooting` (Bock and Plitt 1984) makes every
``segment``-th state of a discrete model a decision variable and asks each segment's rollout to end on the
next knot. The problem is then ``min cost(X, U)`` subject to ``defects(X, U) = 0`` and box bounds on the
controls (and states), solved by a back end object:

- :class:`Scipy`: ``scipy.optimize.minimize`` (SLSQP or trust-constr) with exact equality constraints,
  bounds, gradients and constraint Jacobians by torch autograd, one call per problem (the exact reference
  back end; :mod:`.scipy_backend`); or
- :class:`Theseus`: an augmented-Lagrangian outer loop (Powell-Hestenes-Rockafellar; Nocedal and Wright,
  *Numerical Optimization*, 2nd ed., sec. 17.3-17.4) whose inner problems are nonlinear least squares solved by
  theseus-ai's Gauss-Newton or Levenberg-Marquardt, batched over problems (:mod:`.theseus_backend`).

The transcriptions and their interval-wise Jacobians are :mod:`.transcription`'s. Differentiable (either back
end) with respect to ``x0`` and every tensor of the model and the cost that requires grad: ``grad="implicit"``
applies the implicit-function theorem to the KKT conditions of the transcription at the returned solution
(:mod:`.kkt`: Hessian of the Lagrangian with least-squares multipliers, active bounds held; one dense KKT solve
and one vector-Jacobian product per backward pass), ``grad="unroll"`` (theseus) records the iterations.
"""
from __future__ import annotations

import contextlib
import numbers

import torch

from dynamics import ContinuousDynamics
from dynamics.validation import check_consistent, check_tensor
from ..._core.checks import check_choice, check_int, check_positive, resolve_grad, tolerance
from ..._core.problem import Problem, Solution, Status, solver
from ..._core.rollout import unchecked_rollout
from .kkt import implicit_solution
from .scipy_backend import Scipy
from .theseus_backend import Theseus
from .transcription import METHODS, Outcome, Transcription, collocation_interval, shooting_interval, violation

__all__ = ["collocation", "multiple_shooting", "collocation_defects", "Scipy", "Theseus"]


def collocation_defects(model: ContinuousDynamics, X: torch.Tensor, U: torch.Tensor, dt: float | None = None,
                        method: str = "hermite_simpson") -> torch.Tensor:
    """Collocation defects ``(B, T, n)`` of states ``X (B, T+1, n)`` under held controls ``U (B, T, m)``.

    ``trapezoidal``: ``x_t + dt/2 (f(x_t, u_t) + f(x_{t+1}, u_t)) - x_{t+1}``; ``hermite_simpson``:
    ``x_t + dt/6 (f(x_t, u_t) + 4 f(x_m, u_t) + f(x_{t+1}, u_t)) - x_{t+1}`` with the Hermite midpoint
    ``x_m = (x_t + x_{t+1})/2 + dt/8 (f(x_t, u_t) - f(x_{t+1}, u_t))``. Unbatched ``(T+1, n)``, ``(T, m)`` give
    ``(T, n)``. Differentiable with respect to ``X``, ``U`` and the model's tensors.
    """
    where = "collocation_defects"
    if not isinstance(model, ContinuousDynamics):
        raise TypeError(f"{where}: model must be a dynamics.ContinuousDynamics, got {type(model).__name__}")
    check_choice(where, "method", method, METHODS)
    dt = model.default_dt if dt is None else dt
    if dt is None:
        raise ValueError(f"{where}: dt must be a positive number (or model.default_dt set), got None")
    check_positive(where, dt=dt)            # a finite number > 0 (not a bool)
    dims = {"n": model.state_dim, "m": model.control_dim}
    check_tensor(where, "U", U, ("T", "m"), dims)
    dims["T+1"] = U.shape[-2] + 1
    check_tensor(where, "X", X, ("T+1", "n"), dims)
    if check_consistent(where, {"X": X, "U": U}, {"X": 2, "U": 2}) is None:
        return collocation_defects(model, X.unsqueeze(0), U.unsqueeze(0), dt, method)[0]
    B = max(X.shape[0], U.shape[0])
    X, U = X.expand(B, *X.shape[1:]), U.expand(B, *U.shape[1:])
    return collocation_interval(model, float(dt), method)(X[:, :-1], U.unsqueeze(2), X[:, 1:])[0]


@solver(takes=("x_lower", "x_upper"))
def collocation(problem: Problem, *, method: str = "hermite_simpson", backend: Scipy | Theseus = Theseus(),
                grad: str | None = "implicit", max_iter: int = 200, grad_tol: float | None = None,
                constraint_tol: float | None = None) -> Solution:
    """Direct collocation of a :class:`~trajopt.Problem` whose dynamics is a discretized continuous model.

    The problem's dynamics must be ``model.discretize(dt)`` of a :class:`dynamics.ContinuousDynamics` (reached
    through ``problem.continuous``), so that one :class:`~trajopt.Problem` runs through :func:`trajopt.ilqr`,
    :func:`multiple_shooting`, :func:`collocation` and the other solvers alike. The transcription: knots
    ``x_0 .. x_T`` at times ``t dt`` (``x_0 = x0`` fixed, the others decision variables), controls
    ``u_0 .. u_{T-1}`` held constant (zero-order hold) on ``[t dt, (t+1) dt)``, and one defect per interval,
    ``(B, T, n)`` (see :func:`collocation_defects`): trapezoidal (second order) or Hermite-Simpson (the 3-stage
    Lobatto IIIA method: fourth order, since ``f(., u_t)`` is smooth on the interval when the control is held).
    The integrator of ``problem.dynamics`` is not used beyond the initial guess: the collocation equation links
    the knots. The objective is the discrete ``cost(X, U)`` on the knots and the ``T`` controls, so it is the
    problem :func:`trajopt.ilqr` solves with the same ``dt`` up to the integrator that links the knots. A
    time-varying model sees the interval index as ``t``.

    Args:
        problem: the batch of problems. The initial knots are ``problem.X_init`` (its first state replaced by
            ``x0``) or else the rollout of ``problem.U_init`` by ``problem.dynamics``; the controls start from
            ``problem.U_init`` and the returned ``U`` holds the control bounds exactly; ``problem.x_lower`` /
            ``x_upper`` bound the knots ``1..T`` (``x0`` is given). A ``problem.constraint`` is not taken (raises).
        method: ``"hermite_simpson"`` or ``"trapezoidal"``.
        backend: :class:`Theseus` (default; batched, augmented Lagrangian) or :class:`Scipy` (one
            ``scipy.optimize.minimize`` per problem; the exact reference). Each carries its own options.
        grad: ``"implicit"`` (either back end: the implicit-function theorem on the KKT conditions at the
            solution, see below), ``"unroll"`` (Theseus only: autograd through every inner iteration and
            multiplier update) or None (detached ``X``, ``U`` and ``cost``).
        max_iter: iterations of each inner theseus solve (one that stops short of stationarity feeds inaccurate
            multipliers to the next, and the penalty then runs up to ``penalty_max``); scipy's ``maxiter`` is ten
            (SLSQP) or twenty (trust-constr) times this.
        grad_tol: Theseus: a problem has converged when the largest entry of the gradient of the Lagrangian at its
            final multipliers is at most this; default ``1e-6`` in float64, scaled to the dtype's precision
            otherwise. Not taken with :class:`Scipy` (raises: scipy stops by its own tests, set through
            ``Scipy(options=...)``).
        constraint_tol: ... and its largest defect and bound violation are at most this (either back end; for
            trust-constr also the constraint violation scipy reports); default ``1e-8`` in float64, scaled to the
            dtype's precision otherwise (``8.1e-6`` in float32, whose defects carry rounding of about ``1e-7``).

    Returns:
        :class:`~trajopt.Solution` with ``X (B, T+1, n)`` (the knots), ``U (B, T, m)``, ``cost (B,)``
        (``cost(X, U)``), ``status`` (``CONVERGED``: the back end's test and the defects and bounds within
        ``constraint_tol``; ``MAX_ITER``; ``STALLED``; ``NOT_FINITE``: see :class:`Scipy` and :class:`Theseus`; a
        problem whose model or cost is non-finite at its initial guess is not solved: it keeps ``x0`` held over
        the horizon and its ``U_init``, with ``cost = inf``, and the rest of the batch is solved),
        ``iterations (B,)`` (Theseus: the inner iterations each problem took part in, summed over the outer loop;
        scipy: its ``nit``), ``cost_history`` (Theseus: ``(B, O+1)``, the cost at the start and after each outer
        iteration; scipy: ``(B, I+1)``, the cost at the start and at each iteration scipy reports to its
        callback; a problem that stopped repeats its last value; the last column is ``cost``), ``residual (B,)``
        (Theseus: the largest entry of the gradient of the augmented Lagrangian at the updated multipliers, which
        its status is judged by; scipy: the largest entry of the projected gradient of the Lagrangian at
        least-squares multipliers on the free variables, informative: scipy judges by its own tests; ``inf`` for
        ``NOT_FINITE``) and ``extras``:
        ``defect (B,)`` (largest absolute defect of the returned solution), ``violation (B,)`` (largest bound
        violation), ``multipliers (B, T, n)`` (the defects' multipliers, detached: Theseus the augmented
        Lagrangian's, trust-constr scipy's, SLSQP the least-squares ones), and ``outer_iterations (B,)``
        (Theseus) or ``scipy_status (B,)`` (scipy's exit status of each problem).

    Differentiable (``grad`` not None) with respect to ``x0`` and the tensors of the model and the cost that
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
    that did not converge get no gradient through the solve, as with :func:`trajopt.ilqr`: their knots and
    controls are constants (``X[:, 0]`` is still ``x0``, and ``cost`` still depends on the cost's tensors). The
    gradient is exact at the point returned, so its accuracy is the solve's: against central differences of the
    exact optimum both back ends agree to about ``1e-8`` relative (see the docs). trust-constr's barrier stops
    bounded controls short of their bounds (by about ``1e-5``), so they count as free: prefer SLSQP for gradients
    with active bounds. ``"unroll"`` (Theseus) follows every iteration (memory grows with them).
    """
    where = "collocation"
    check_choice(where, "method", method, METHODS)
    if problem.continuous is None:
        raise TypeError(f"{where}: problem.dynamics must be a discretized continuous model (model.discretize(dt) of "
                        f"a dynamics.ContinuousDynamics), got {type(problem.dynamics).__name__}; for a discrete "
                        "model use trajopt.multiple_shooting")
    model, dt = problem.continuous
    route, opts = _check_options(where, problem, backend, grad, max_iter, grad_tol, constraint_tol)
    tr = Transcription(collocation_interval(model, dt, method), problem.T, 1, problem.n, problem.m, model)
    return _solve(where, problem, tr, _initial_states(problem), backend, route, **opts)


@solver(takes=("x_lower", "x_upper"))
def multiple_shooting(problem: Problem, *, segment: int = 1, backend: Scipy | Theseus = Theseus(),
                      grad: str | None = "implicit", max_iter: int = 200, grad_tol: float | None = None,
                      constraint_tol: float | None = None) -> Solution:
    """Multiple shooting of a :class:`~trajopt.Problem`, the problem :func:`trajopt.ilqr` solves.

    The states ``x_0, x_s, x_2s, .., x_T`` (``s = segment``, which must divide ``T``; ``x_0 = x0`` fixed) are
    decision variables with the controls. Every segment is rolled out from its knot under its ``s`` controls
    by :func:`trajopt.rollout` of ``problem.dynamics`` (all problems x segments in one batch; a time-varying
    model sees each segment's own stages) and its defect is the rollout's end minus the next knot,
    ``(B, T/s, n)``. The cost is ``cost(X, U)`` on the segments' rollouts; at a feasible point ``X`` is the
    rollout of ``U`` from ``x0``, so the optimum is iLQR's. ``segment=1`` is the fully discrete transcription
    (every state a variable); ``segment=T`` is single shooting.

    Args:
        problem: the batch of problems; the knots start from ``problem.X_init`` (every ``s``-th state, its first
            replaced by ``x0``) or else the rollout of ``problem.U_init``. State bounds ``problem.x_lower`` /
            ``x_upper`` need ``segment=1`` (every state a knot). A ``problem.constraint`` is not taken (raises).
        segment: ``s``, the steps per segment.
        backend, grad, max_iter, grad_tol, constraint_tol: as for :func:`collocation`.

    Returns:
        as :func:`collocation` (``extras["multipliers"]`` is ``(B, T/s, n)``; ``X`` holds the segments'
        rollouts).

    Differentiable (``grad`` not None) with respect to ``x0`` and the tensors of the dynamics and the cost that
    require grad, as for :func:`collocation`: ``"implicit"`` (either back end) differentiates the KKT
    conditions of the transcription (knots and controls, active bounds held, least-squares multipliers), so
    at a converged solution it equals :func:`trajopt.ilqr`'s implicit gradient of the same problem (the
    states inside a segment are rollouts of their knot, differentiated directly).
    """
    where = "multiple_shooting"
    T = problem.T
    if isinstance(segment, bool) or not (isinstance(segment, numbers.Integral) and 1 <= segment <= T
                                         and T % segment == 0):
        raise ValueError(f"{where}: segment must be a positive int dividing the horizon T={T}, got {segment!r}")
    segment = int(segment)
    if (problem.x_lower is not None or problem.x_upper is not None) and segment > 1:
        raise ValueError(f"{where}: x_lower/x_upper bound the decision variables, which are every state only "
                         f"with segment=1 (got segment={segment}: the states inside a segment are not variables)")
    route, opts = _check_options(where, problem, backend, grad, max_iter, grad_tol, constraint_tol)
    dynamics = problem.dynamics
    tr = Transcription(shooting_interval(dynamics), T, segment, problem.n, problem.m, dynamics)
    return _solve(where, problem, tr, _initial_states(problem)[:, ::segment], backend, route, **opts)


# ------------------------------------------------------------------------------------------------ checks
def _check_options(where, problem, backend, grad, max_iter, grad_tol, constraint_tol):
    """The gradient route and the checked numeric options."""
    if not isinstance(backend, (Scipy, Theseus)):
        raise TypeError(f"{where}: backend must be trajopt.Theseus(...) or trajopt.Scipy(...), "
                        f"got {type(backend).__name__}")
    if problem.constraint is not None:
        raise ValueError(f"{where}: problem.constraint is not taken (the transcription's constraints are its "
                         "defects and the bounds); use trajopt.constrained_ilqr, or drop the constraint")
    route = resolve_grad(where, grad)
    backend.check(where, grad, grad_tol)
    check_int(where, max_iter=max_iter)
    if constraint_tol is not None:
        check_positive(where, constraint_tol=constraint_tol)
    return route, dict(max_iter=max_iter, grad_tol=tolerance(grad_tol, 1e-6, problem.dtype),
                       constraint_tol=tolerance(constraint_tol, 1e-8, problem.dtype))


def _initial_states(problem):
    """``(B, T+1, n)``: ``problem.X_init`` with its first state replaced by ``x0``, or the rollout of ``U_init``
    (detached)."""
    x0 = problem.x0.detach()
    if problem.X_init is None:
        return unchecked_rollout(problem.dynamics, x0, problem.U_init.detach())
    return torch.cat([x0.unsqueeze(1), problem.X_init[:, 1:]], 1).detach()


# ------------------------------------------------------------------------------- shared solver machinery
def _solve(where, problem, tr, S0, backend, route, *, max_iter, grad_tol, constraint_tol):
    """Solve the transcribed problem from the knots ``S0 (B, K+1, n)`` and controls ``problem.U_init``. A problem
    whose cost, states or defects are non-finite at that guess is left out of the back end's solve
    (``NOT_FINITE``)."""
    cost, x0, lower, upper = problem.cost, problem.x0, problem.u_lower, problem.u_upper
    B = problem.B
    U0 = problem.U_init.detach()
    knot_bounds = [None if b is None else b[:, ::tr.s][:, 1:] for b in (problem.x_lower, problem.x_upper)]
    with torch.no_grad():
        start = _finite(tr, cost, x0.detach(), S0[:, 1:].reshape(B, -1), U0)
    rows = None if bool(start.all()) else start.nonzero().squeeze(1)
    pick = (lambda z: z) if rows is None else (lambda z: None if z is None else z[rows])     # noqa: E731
    if rows is not None and rows.numel() == 0:          # no problem is finite at its guess: nothing to solve
        out = _no_outcome(tr, x0, U0)
    else:
        with contextlib.nullcontext() if rows is None else problem.at(rows):
            out = backend.solve(where, tr, cost, pick(x0), pick(S0[:, 1:]).reshape(-1, tr.K * tr.n), pick(U0),
                                pick(lower), pick(upper), *map(pick, knot_bounds), at=problem.at, route=route,
                                max_iter=max_iter, grad_tol=grad_tol, constraint_tol=constraint_tol)
    if rows is not None:
        out = _scatter(out, rows, start, S0[:, 1:].reshape(B, -1), U0)
    S, U = out.knots, out.U
    with torch.no_grad():
        finite = _finite(tr, cost, x0.detach(), S.detach(), U.detach())
        defect = tr.defects(tr.knots(x0.detach(), S.detach()), U.detach()).abs().flatten(1).amax(1)
        defect = torch.where(finite, defect, float("inf"))
        worst = violation(U.detach(), lower, upper)
        if knot_bounds[0] is not None or knot_bounds[1] is not None:
            worst = torch.maximum(worst, violation(S.detach().reshape(B, tr.K, tr.n), *knot_bounds))
        worst = torch.where(finite, worst, float("inf"))
    converged = out.ok & finite & (defect <= constraint_tol) & (worst <= constraint_tol)
    status = torch.where(converged, int(Status.CONVERGED), out.fallback)
    status = torch.where(finite, status, int(Status.NOT_FINITE))
    notfinite = status == Status.NOT_FINITE
    if not bool(finite.all()):          # not finite at the start: x0 held over the horizon and U_init
        S = torch.where(finite.view(B, 1), S, x0.detach().repeat(1, tr.K))
        U = torch.where(finite.view(B, 1, 1), U, U0)
    if route == "implicit":
        S, U = implicit_solution(problem, tr, S, U, knot_bounds, converged)
    if route is None:
        with torch.no_grad():
            X, J = _trajectory(problem, tr, x0, S, U, finite)
        X, U, J = X.detach(), U.detach(), J.detach()
    else:
        X, J = _trajectory(problem, tr, x0, S, U, finite)
    J = torch.where(notfinite, float("inf"), J)
    residual = torch.where(notfinite, float("inf"), out.residual.detach())
    extras = {"defect": defect, "violation": worst, "multipliers": out.multipliers, **out.extras}
    return Solution(X=X, U=U, cost=J, status=status.long(), iterations=out.iterations.long(),
                    cost_history=_ending(out.cost_history.detach(), J.detach()), residual=residual, extras=extras)


def _ending(history, J):
    """``history (B, I+1)`` whose last column is the returned cost ``J (B,)`` (the back ends record it up to the
    clamping of the controls into their bounds; a ``NOT_FINITE`` problem's is ``inf``)."""
    if history.shape[1] == 1 and not torch.equal(history[:, 0], J):
        return torch.cat([history, J.unsqueeze(1)], 1)
    return torch.cat([history[:, :-1], J.unsqueeze(1)], 1)


def _finite(tr, cost, x0, knots, U):
    """``(B,)``: whether the cost, the states and the defects at ``knots (B, K n)``, ``U (B, T, m)`` are finite."""
    S = tr.knots(x0, knots)
    h, Xs = tr.pieces(S, U)
    X = torch.cat([Xs.reshape(S.shape[0], tr.T, tr.n), S[:, -1:]], 1)
    return (torch.isfinite(cost(X, U)) & torch.isfinite(X).flatten(1).all(1) & torch.isfinite(h).flatten(1).all(1)
            & torch.isfinite(U).flatten(1).all(1))


def _no_outcome(tr, x0, U0):
    """The back end's outcome for no problem (every problem is non-finite at its guess)."""
    empty = dict(dtype=x0.dtype, device=x0.device)
    index = dict(dtype=torch.long, device=x0.device)
    return Outcome(knots=x0.new_zeros(0, tr.K * tr.n), U=U0[:0], ok=torch.zeros(0, dtype=torch.bool, device=x0.device),
                   fallback=torch.zeros(0, **index), iterations=torch.zeros(0, **index),
                   cost_history=torch.zeros(0, 1, **empty), residual=torch.zeros(0, **empty),
                   multipliers=torch.zeros(0, tr.K, tr.n, **empty))


def _scatter(out, rows, start, knots0, U0):
    """The back end's outcome for the problems ``rows`` spread over the batch; the others (not finite at the
    start) keep their initial guess, ``NOT_FINITE``."""
    B = start.shape[0]

    def spread(full, part):
        return full.index_put((rows,), part)
    like = lambda z, fill: z.new_full((B, *z.shape[1:]), fill)      # noqa: E731
    history = out.cost_history
    extras = {k: spread(like(v, 0), v) for k, v in out.extras.items()}
    return type(out)(knots=spread(knots0, out.knots), U=spread(U0, out.U),
                     ok=spread(like(out.ok, False), out.ok), fallback=spread(like(out.fallback, int(Status.NOT_FINITE)),
                                                                            out.fallback),
                     iterations=spread(like(out.iterations, 0), out.iterations),
                     cost_history=spread(like(history, float("inf")), history),
                     residual=spread(like(out.residual, float("inf")), out.residual),
                     multipliers=spread(like(out.multipliers, 0.0), out.multipliers), extras=extras)


def _trajectory(problem, tr, x0, S, U, finite):
    """``X (B, T+1, n)`` and ``cost (B,)`` of the knots ``S (B, K n)`` and controls ``U``, with the graph the route
    gives them; the problems not ``finite (B,)`` get ``x0`` held over the horizon and ``cost = inf`` (their model
    is not evaluated, so that no NaN reaches a gradient)."""
    cost = problem.cost
    if bool(finite.all()):
        X = tr.states(tr.knots(x0, S), U)
        return X, cost(X, U)
    B, T, n = problem.B, problem.T, problem.n
    ok = finite.nonzero().squeeze(1)
    X = x0.unsqueeze(1).expand(B, T + 1, n)
    J = torch.full((B,), float("inf"), dtype=x0.dtype, device=x0.device)
    if ok.numel():
        with problem.at(ok):
            Xo = tr.states(tr.knots(x0[ok], S[ok]), U[ok])
            X, J = X.index_put((ok,), Xo), J.index_put((ok,), cost(Xo, U[ok]))
    return X, J
