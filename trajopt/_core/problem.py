"""The problem every nonlinear solver takes, the status each problem ends with, and the solution returned.

:class:`Problem` holds what defines a batch of trajectory-optimization problems and is validated once, at
construction; :class:`Solution` is what every solver returns, with one :class:`Status` per problem whose
meaning is the same in every solver; :func:`solver` is the one batch/unbatch round trip.
"""
from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import math
import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from dynamics import Dynamics, Discretized
from dynamics.validation import check_consistent, check_int, check_tensor
from .bounds import check_bounds, clamp
from .constraint import Constraint, FunctionConstraint
from .costs import Cost
from .per_problem import check_per_problem, has_per_problem, rows
from .stages import check_rows

__all__ = ["Problem", "Solution", "Status", "SolveError", "solver", "merge", "check_takes"]


class Status(enum.IntEnum):
    """How a problem's solve ended; one meaning in every solver.

    ``CONVERGED``: the solver's optimality test holds (first-order conditions within tolerance, constraints
    within ``constraint_tol`` where there are any). ``MAX_ITER``: the iteration budget ran out first.
    ``STALLED``: no step made progress (the line search failed at the largest regularization, or steps fell
    below rounding without meeting the test). ``NOT_FINITE``: the model or the cost produced NaN or Inf for this
    problem (from its initial guess, or everywhere the solver tried); its solution holds the last finite iterate.
    ``NO_CERTIFICATE``: the solver ran its budget and has no optimality test (sampling, random shooting).
    """

    CONVERGED = 0
    MAX_ITER = 1
    STALLED = 2
    NOT_FINITE = 3
    NO_CERTIFICATE = 4


class SolveError(RuntimeError):
    """Raised by :meth:`Solution.throw` when a problem ended with a status it was not allowed to."""


def check_module_tensors(where: str, modules: dict, x0: torch.Tensor, name_x0: str = "x0") -> None:
    """The models' and costs' tensors share ``x0``'s dtype and device (0-dim float64 constants excepted: they do
    not promote float32 arithmetic, and are moved to the device by PyTorch)."""
    for role, module in modules.items():
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if not tensor.is_floating_point() or tensor.ndim == 0:
                continue
            if tensor.dtype != x0.dtype:
                raise TypeError(f"{where}: {name_x0} is {x0.dtype} but the {role}'s tensor {name!r} is {tensor.dtype}; "
                                f"convert one side: {role}.to({x0.dtype}) or {name_x0}.to({tensor.dtype})")
            if tensor.device != x0.device:
                raise ValueError(f"{where}: {name_x0} is on {x0.device} but the {role}'s tensor {name!r} is on "
                                 f"{tensor.device}; move one side: {role}.to({str(x0.device)!r})")


@dataclass
class Solution:
    """A batch of solved problems. Batch first; an unbatched :class:`Problem` gives unbatched fields (no ``B``).

    Attributes:
        X: states ``(B, T+1, n)``; None only when a sampling solver was told not to roll out its plan.
        U: controls ``(B, T, m)``, within the control bounds.
        cost: objective of each problem ``(B,)`` (``inf`` for a problem with no finite iterate); None with ``X``.
        status: ``(B,)`` int64, a :class:`Status` per problem.
        iterations: ``(B,)`` int64, the iterations each problem ran (1 for a direct solve such as LQR).
        cost_history: ``(B, I+1)``: the objective before the first iteration and after each of the ``I`` the
            solver ran (a problem that stopped early repeats its last value).
        residual: ``(B,)`` first-order optimality residual the status was judged by (largest entry of the
            projected gradient, or of the Lagrangian's gradient for constrained solvers), or None for solvers that
            have none (sampling).
        K: feedback gains ``(B, T, m, n)`` where the solver computes them, else None.
        k: feedforward terms ``(B, T, m)``, so that ``U[:, t] = K[:, t] @ X[:, t] + k[:, t]`` (LQR).
        extras: solver-specific diagnostics, each a batch-first tensor (see each solver's docstring).

    A problem whose cost, states or controls are not finite is ``NOT_FINITE`` whatever its solver said, with cost
    ``inf``; non-finite entries of ``cost_history`` are ``inf``: no NaN is returned unflagged.

    ``sol[i]`` is problem ``i``'s solution (unbatched); ``sol[rows]`` with a slice, an index tensor or a bool mask
    keeps a batch. ``converged`` is ``status == Status.CONVERGED``.
    """

    X: torch.Tensor | None
    U: torch.Tensor
    cost: torch.Tensor | None
    status: torch.Tensor
    iterations: torch.Tensor
    cost_history: torch.Tensor
    residual: torch.Tensor | None = None
    K: torch.Tensor | None = None
    k: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        # The last guard of "nothing silent": a problem whose cost, states or controls are not finite is NOT_FINITE,
        # its cost and the non-finite entries of its cost history inf (solvers flag such problems themselves; this
        # catches what they cannot see, e.g. a cost that returns NaN only when evaluated again).
        if self.status.ndim:        # per problem (an empty selection of problems too)
            rows = lambda z: (z.flatten(1) if z.ndim > 1 else z.unsqueeze(-1)).all(-1)     # noqa: E731
        else:
            rows = lambda z: z.all()                                                          # noqa: E731
        finite = rows(torch.isfinite(self.U.detach()))
        for z in (self.X, self.cost):
            if z is not None:
                finite = finite & rows(torch.isfinite(z.detach()))
        self.status = torch.where(finite, self.status, int(Status.NOT_FINITE))
        if self.cost is not None:
            self.cost = torch.where(finite, self.cost, math.inf)
        self.cost_history = torch.where(torch.isfinite(self.cost_history), self.cost_history, math.inf)

    @property
    def converged(self) -> torch.Tensor:
        """``(B,)`` bool: ``status == Status.CONVERGED``."""
        return self.status == Status.CONVERGED

    def __getitem__(self, rows) -> Solution:
        B = self.status.shape[0] if self.status.ndim else None
        if B is None:
            raise IndexError("Solution: this solution is unbatched (its problem was); it has no problems to index")
        try:
            torch.arange(B, device=self.status.device)[rows]
        except (IndexError, TypeError, RuntimeError) as e:
            raise IndexError(f"Solution: index {rows!r} does not select problems of this batch of B={B} "
                             f"({e})") from None
        pick = (lambda z: z if z is None else z[rows])       # noqa: E731
        return Solution(**{f.name: {k: pick(v) for k, v in self.extras.items()} if f.name == "extras"
                           else pick(getattr(self, f.name)) for f in fields(self)})

    def summary(self) -> str:
        """One line: how many problems ended with each status, e.g. ``"32 problems: 30 converged, 2 max_iter"``."""
        status = self.status.reshape(-1)
        counts = [(s.name.lower(), int((status == s).sum())) for s in Status]
        return f"{status.numel()} problems: " + ", ".join(f"{c} {name}" for name, c in counts if c)

    def throw(self, allow=(Status.CONVERGED, Status.NO_CERTIFICATE)) -> Solution:
        """Raise :class:`SolveError` naming the problems whose status is not in ``allow`` (:class:`Status` values, or a
        single one); else return ``self``."""
        allow = (allow,) if isinstance(allow, int) and not isinstance(allow, bool) else allow
        try:
            items = list(allow)
            if any(isinstance(z, (bool, str)) for z in items):
                raise TypeError
            allow = tuple(Status(z) for z in items)
        except (TypeError, ValueError):
            raise ValueError(f"Solution.throw: allow must be trajopt.Status values (e.g. (Status.CONVERGED,)), "
                             f"got {allow!r}") from None
        allowed = torch.tensor([int(s) for s in allow], device=self.status.device)
        bad = ~torch.isin(self.status.reshape(-1), allowed)
        if bool(bad.any()):
            rows = bad.nonzero().flatten().tolist()
            named = ", ".join(f"{r}: {Status(int(self.status.reshape(-1)[r])).name}" for r in rows[:8])
            raise SolveError(f"{len(rows)} of {bad.numel()} problems did not finish as allowed "
                             f"({', '.join(Status(int(s)).name for s in allow)}): {named}{' ...' if len(rows) > 8 else ''}")
        return self


def merge(base: Solution, rows: torch.Tensor, part: Solution) -> Solution:
    """``base`` (``B`` problems) with the problems ``rows`` taken from ``part`` (a batch of ``len(rows)``).
    Fields or extras that ``base`` lacks are filled (zeros; ``inf`` for costs and residuals) and histories of
    different lengths padded by repeating their last column. Differentiable through both."""
    B = base.U.shape[0]

    def put(old, new, fill):
        if new is None:
            return old
        if old is None or old.shape[1:] != new.shape[1:]:
            if old is not None and old.ndim == 2 and new.ndim == 2:          # a history: repeat the last column
                width = max(old.shape[1], new.shape[1])
                old, new = _widen(old, width), _widen(new, width)
            else:
                old = torch.full((B, *new.shape[1:]), fill, dtype=new.dtype, device=new.device)
        return old.to(new.dtype).index_put((rows,), new)

    fields = {name: put(getattr(base, name), getattr(part, name), fill)
              for name, fill in (("X", 0.0), ("U", 0.0), ("cost", float("inf")), ("status", 0), ("iterations", 0),
                                 ("cost_history", float("inf")), ("residual", float("inf")), ("K", 0.0),
                                 ("k", 0.0))}
    keys = list(base.extras) + [key for key in part.extras if key not in base.extras]
    extras = {key: put(base.extras.get(key), part.extras.get(key), 0) for key in keys}
    return Solution(**fields, extras=extras)


def _widen(history, width):
    return torch.cat([history, history[:, -1:].expand(-1, width - history.shape[1])], 1)


class Problem:
    """A batch of trajectory-optimization problems: ``min_U cost(X, U)`` with ``X`` the rollout of ``U`` from ``x0``
    under ``dynamics``, subject to the bounds and (for the solvers that take one) ``constraint(X, U) <= 0``.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics`. A continuous model enters as ``model.discretize(dt)``;
            :func:`trajopt.collocation` reaches the continuous model and ``dt`` through it.
        cost: a :class:`trajopt.Cost`.
        x0: initial states ``(B, n)`` or ``(n,)``. Gradients reach it where the solver is differentiable.
        horizon: ``T`` (an int >= 1), when ``U_init`` is not given (the initial guess is then zeros).
        U_init: initial controls ``(B, T, m)`` or ``(T, m)``, clipped into the bounds.
        X_init: an optional state guess ``(B, T+1, n)`` or ``(T+1, n)`` (need not be a rollout of ``U_init``).
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)`` (per problem, stage and control), or None.
        x_lower, x_upper: state bounds broadcastable to ``(B, T+1, n)``, or None (transcription solvers).
        constraint: a :class:`trajopt.Constraint`, or a callable ``g(x (N, n), u (N, m)) -> (N, k)`` (each stage
            ``t < T``), for the solvers that take constraints.
        module_rows: where the modules hold per-problem tensors for a larger batch: the index ``(B,)`` of each of
            this problem's rows in them (an integer tensor or array, or a sequence of ints; what :meth:`select`
            sets); None: row ``b`` is their row ``b``.

    Per-problem data rides on the modules: a model, cost or constraint lists in its attribute ``per_problem`` the
    tensors whose leading dimension is the problem batch (``QuadraticCost(..., batched=True)``,
    ``LinearDynamics(..., batched=True)``, or a user's module); their batch sets ``B`` when ``x0`` has none, and
    must match it otherwise. Gradients reach these tensors themselves.

    The batch size is that of the batched arguments (an argument without ``B`` is shared); a problem built from
    unbatched arguments only is *unbatched*, and every solver then returns unbatched fields. Every tensor is
    stored batched: ``x0 (B, n)``, ``U_init (B, T, m)``, ``X_init (B, T+1, n)`` or None, the bounds ``(B, T, m)``,
    ``(B, T+1, n)`` or None. Dtype and device are ``x0``'s; every tensor must share them.

    Attributes:
        B, T, n, m: the dimensions; batched: whether the caller's input had a batch dimension; dtype, device;
        per_problem: whether the modules hold per-problem tensors.

    :meth:`select` keeps some problems of the batch, :meth:`replace` changes fields (and validates again).
    """

    def __init__(self, dynamics: Dynamics, cost: Cost, x0: torch.Tensor, *, horizon: int | None = None,
                 U_init: torch.Tensor | None = None, X_init: torch.Tensor | None = None, u_lower=None, u_upper=None,
                 x_lower=None, x_upper=None, constraint=None, module_rows=None):
        where = "Problem"
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics (a discrete model: call .discretize(dt) "
                            f"on a ContinuousDynamics), got {type(dynamics).__name__}")
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
        self._given = dict(dynamics=dynamics, cost=cost, x0=x0, horizon=horizon, U_init=U_init, X_init=X_init,
                           u_lower=u_lower, u_upper=u_upper, x_lower=x_lower, x_upper=x_upper, constraint=constraint,
                           module_rows=module_rows)
        dims = {"n": dynamics.state_dim, "m": dynamics.control_dim}
        x0 = check_tensor(where, "x0", x0, ("n",), dims)
        if U_init is None and horizon is None:
            raise ValueError(f"{where}: give U_init (B, T, m) or horizon, a positive int; got horizon=None")
        if horizon is not None:
            check_int(where, horizon=horizon)
            horizon = operator.index(horizon)
        if U_init is None:
            try:
                U_init = x0.new_zeros((*x0.shape[:-1], horizon, dims["m"]))
            except RuntimeError as e:       # the allocator's own message, named
                raise ValueError(f"{where}: horizon={horizon} is too long to allocate its controls "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        U_init = check_tensor(where, "U_init", U_init, ("T", "m"), dims)
        T = U_init.shape[-2]
        if T < 1:
            raise ValueError(f"{where}: U_init has shape {tuple(U_init.shape)}; the horizon T must be at least 1")
        if horizon is not None and horizon != T:
            raise ValueError(f"{where}: horizon={horizon!r} contradicts U_init's length T={T}; give one of them")
        tensors, ranks = {"x0": x0, "U_init": U_init}, {"x0": 1, "U_init": 2}
        if X_init is not None:
            tensors["X_init"] = check_tensor(where, "X_init", X_init, ("T+1", "n"), {**dims, "T+1": T + 1})
            ranks["X_init"] = 2
        batch = check_consistent(where, tensors, ranks)
        constraint = _constraint(where, constraint)
        modules = {"dynamics": dynamics, "cost": cost, "constraint": constraint}
        check_module_tensors(where, modules, x0)
        if module_rows is None:
            batch = check_per_problem(where, modules, batch)
        else:
            module_rows = _module_rows(where, module_rows, x0.device)
            if batch is not None and batch != len(module_rows):
                raise ValueError(f"{where}: module_rows has {len(module_rows)} entries; the problem has B={batch}")
            size = check_per_problem(where, modules, None)
            if size is not None and len(module_rows) and not 0 <= int(module_rows.min()) <= int(module_rows.max()) < size:
                raise ValueError(f"{where}: module_rows must index the {size} problems of the per-problem tensors")
            batch = len(module_rows)
        if batch == 0:
            raise ValueError(f"{where}: the batch is empty (B=0)")
        B, n, m = batch or 1, dims["n"], dims["m"]
        check_cost_dims(where, cost, n, m, T, x0)
        stages = getattr(dynamics, "stages", None)
        if isinstance(stages, int) and stages < T:
            raise ValueError(f"{where}: the dynamics is time-varying with {stages} stages, fewer than the horizon "
                             f"T={T} (a per-problem model needs batched=True)")
        self.dynamics, self.cost = dynamics, cost
        self.B, self.T, self.n, self.m, self.batched = B, T, n, m, batch is not None
        self.x0 = x0.expand(B, n)
        self.u_lower, self.u_upper = check_bounds(where, u_lower, u_upper, (B, T, m), self.x0)
        self.x_lower, self.x_upper = check_bounds(where, x_lower, x_upper, (B, T + 1, n), self.x0,
                                                  ("x_lower", "x_upper"), "(B, T+1, n)")
        self.U_init = clamp(U_init.expand(B, T, m), self.u_lower, self.u_upper)
        self.X_init = None if X_init is None else X_init.expand(B, T + 1, n)
        self.constraint = constraint
        self.module_rows = module_rows
        self.per_problem = has_per_problem(dynamics, cost, constraint)
        self._evaluating = 0                    # depth of evaluating() contexts open on this problem

    @property
    def dtype(self) -> torch.dtype:
        return self.x0.dtype

    @property
    def device(self) -> torch.device:
        return self.x0.device

    @property
    def continuous(self):
        """``(model, dt)`` when the dynamics is a discretized :class:`dynamics.ContinuousDynamics`, else None."""
        d = self.dynamics
        return (d.model, d.dt) if isinstance(d, Discretized) else None

    def replace(self, **changes) -> Problem:
        """A new problem with the given constructor arguments changed (validated again). ``horizon`` is dropped
        when ``U_init`` changes, and the reverse. Within :meth:`evaluating`, the new problem's rows are this
        problem's rows as they are then (``module_rows`` is not carried over)."""
        given = dict(self._given)
        if "U_init" in changes:
            given["horizon"] = None
        if "horizon" in changes:
            given["U_init"] = None
        if self._evaluating:                # inside evaluating() the per-problem tensors already are its rows
            given["module_rows"] = None
        unknown = set(changes) - set(given)
        if unknown:
            raise TypeError(f"Problem.replace: unknown field(s) {sorted(unknown)}; expected some of {sorted(given)}")
        given.update(changes)
        dynamics, cost, x0 = given.pop("dynamics"), given.pop("cost"), given.pop("x0")
        return Problem(dynamics, cost, x0, **given)

    def select(self, rows) -> Problem:
        """The problems ``rows`` (an index tensor, a list, a slice or a bool mask) as a batched problem; per-problem
        tensors of the modules are selected with them (by ``module_rows``)."""
        try:
            index = torch.arange(self.B, device=self.device)[rows].reshape(-1)
        except (IndexError, TypeError, RuntimeError) as e:
            raise IndexError(f"Problem.select: rows {rows!r} do not select problems of this batch of B={self.B} "
                             f"({e})") from None
        pick = lambda z: None if z is None else z[index]      # noqa: E731
        # inside evaluating() the per-problem tensors already are this problem's rows: select among those
        base = index if self.module_rows is None or self._evaluating else self.module_rows[index]
        return Problem(self.dynamics, self.cost, pick(self.x0), U_init=pick(self.U_init), X_init=pick(self.X_init),
                       u_lower=pick(self.u_lower), u_upper=pick(self.u_upper), x_lower=pick(self.x_lower),
                       x_upper=pick(self.x_upper), constraint=self.constraint, module_rows=base)

    @contextlib.contextmanager
    def evaluating(self):
        """A context in which the modules' per-problem tensors are this problem's rows, in order (a no-op unless
        the problem was selected from a larger batch). Every solver runs inside it; so do implicit backward passes.
        Within it, :meth:`select` selects among those rows (a solver that solves parts of its problem again)."""
        with rows(self.module_rows if self.per_problem else None, self.dynamics, self.cost, self.constraint):
            self._evaluating += 1
            try:
                yield
            finally:
                self._evaluating -= 1

    def at(self, index):
        """A context in which the modules evaluate the rows ``index (R,)`` of this problem (inside
        :meth:`evaluating`): row ``r`` of every model, cost or constraint call belongs to problem ``index[r]``."""
        return rows(index if self.per_problem else None, self.dynamics, self.cost, self.constraint)

    def at_repeated(self, each: int):
        """:meth:`at` for ``each`` consecutive rows per problem (``B each`` rows, problem-major: samples)."""
        index = torch.arange(self.B, device=self.device).repeat_interleave(each) if self.per_problem else None
        return self.at(index)

    def __repr__(self) -> str:
        return (f"Problem(B={self.B}{'' if self.batched else ' (unbatched)'}, T={self.T}, n={self.n}, m={self.m}, "
                f"dynamics={type(self.dynamics).__name__}, cost={type(self.cost).__name__}, dtype={self.dtype})")


_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()     # cost -> {(n, m, T, dtype)} it passed


def check_cost_dims(where, cost, n, m, T, like):
    """The cost fits the dynamics' ``n``, ``m`` and the horizon ``T``: by the dimensions it declares
    (:meth:`trajopt.Cost.declared_dims`), else by one call of its ``stage`` on zeros ``(1, n)``, ``(1, m)`` and of
    its ``terminal`` on zeros ``(1, n)``, each of which must return a float tensor ``(1,)`` of the problem's dtype
    (:func:`~trajopt._core.stages.check_rows`, as the solvers check every evaluation; once per cost, dimensions and dtype; not for a cost with per-problem tensors, whose rows are the batch's, nor
    for one that couples stages). A constraint is checked by the solver that takes it."""
    declared = cost.declared_dims()
    if declared:
        have = {"n": n, "m": m, "n+m": n + m, "T": T}
        for key in ("n", "m", "n+m", "T"):
            value = declared.get(key)
            if value is not None and value != have[key]:
                if key == "T":
                    raise ValueError(f"{where}: the cost is time-varying with T={value} stages but the problem's "
                                     f"horizon is T={T}; build the cost for {T} stages (or the problem with "
                                     f"horizon={value})")
                raise ValueError(f"{where}: the cost is for {key}={value} but the dynamics has {key}={have[key]} "
                                 f"(n={n}, m={m}); build the cost for this model")
        return
    if not cost.separable or has_per_problem(cost):
        return
    key = (n, m, T if cost.time_varying else None, like.dtype)
    if key in _PROBED.get(cost, ()):
        return
    calls = ((f"cost.stage(zeros(1, {n}), zeros(1, {m}){', t=0' if cost.time_varying else ''})", cost.stage,
              lambda: cost.stage(like.new_zeros(1, n), like.new_zeros(1, m), 0 if cost.time_varying else None)),
             (f"cost.terminal(zeros(1, {n}))", cost.terminal, lambda: cost.terminal(like.new_zeros(1, n))))
    for call, method, evaluate in calls:
        try:
            with torch.no_grad():
                out = evaluate()
        except Exception as e:              # noqa: BLE001 -- any failure here is the user's cost meeting n and m
            raise ValueError(f"{where}: the cost failed on the dynamics' states (n={n}) and controls (m={m}): "
                             f"{call} raised {type(e).__name__}: {e}") from e
        check_rows(cost, method, out, 1, like, scalar=True)      # the check of every evaluation in the solvers
    with contextlib.suppress(TypeError):        # a cost that is not weak-referenceable is probed again next time
        _PROBED.setdefault(cost, set()).add(key)


def _module_rows(where, value, device) -> torch.Tensor:
    """``module_rows`` as an int64 index ``(B,)``: an integer tensor or array, or a sequence of ints."""
    want = "an integer index (B,) of the per-problem rows (an int tensor or a sequence of ints)"
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"{where}: module_rows must be {want}, got {type(value).__name__}")
    try:
        index = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: module_rows must be {want}, got {type(value).__name__}") from None
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise TypeError(f"{where}: module_rows must be {want}, got dtype {index.dtype}")
    if index.ndim > 1:
        raise ValueError(f"{where}: module_rows must be {want}, got shape {tuple(index.shape)}")
    return index.to(dtype=torch.long, device=device).reshape(-1)


def _constraint(where, constraint):
    if constraint is None:
        return None
    if isinstance(constraint, Constraint):
        return constraint
    if callable(constraint):
        return FunctionConstraint(constraint)
    raise TypeError(f"{where}: constraint must be a trajopt.Constraint or a callable g(x, u) -> (N, k), "
                    f"got {type(constraint).__name__}")


# Where a problem's optional fields go when the solver it was given does not take them.
_ELSEWHERE = {"x_lower": "state bounds: use trajopt.collocation or trajopt.multiple_shooting (or express them as a "
                         "constraint of trajopt.constrained_ilqr)",
              "x_upper": "state bounds: use trajopt.collocation or trajopt.multiple_shooting (or express them as a "
                         "constraint of trajopt.constrained_ilqr)",
              "constraint": "a constraint: use trajopt.constrained_ilqr"}


def check_takes(where, problem: Problem, name: str, takes) -> None:
    """Raise a ValueError naming the first optional field of ``problem`` (state bounds, constraint) that the solver
    ``name`` does not take (``takes``: the fields it does; None: every field)."""
    if takes is None:
        return
    for field_name in ("x_lower", "x_upper", "constraint"):
        if getattr(problem, field_name) is not None and field_name not in takes:
            raise ValueError(f"{where}: the problem has {field_name}, which {name} does not take (it would be "
                             f"ignored); for {_ELSEWHERE[field_name]}")


def solver(fn: Callable | None = None, *, takes=None) -> Callable:
    """Make ``fn(problem, **options) -> Solution`` (written for a batched :class:`Problem`) a public solver: the
    problem is checked to be a :class:`Problem` whose optional fields (``x_lower``, ``x_upper``, ``constraint``) the
    solver takes, and an unbatched one gets its solution unbatched.

    ``takes``: the optional fields ``fn`` uses (a tuple of names; ``()``: none of them, so a problem holding one
    raises, naming the solver that takes it), or None: every field (no check; a user's solver). Used as
    ``@solver(takes=(...))``; the wrapper carries it as ``wrapper.takes`` (what :func:`trajopt.multistart` checks for
    its inner solver)."""
    if fn is None:
        return functools.partial(solver, takes=takes)
    name = fn.__name__
    takes = tuple(takes) if takes is not None else None

    @functools.wraps(fn)
    def wrapper(problem, *args, **options) -> Solution:
        if args or not isinstance(problem, Problem):
            raise TypeError(f"{name}: the first argument must be a trajopt.Problem (and options follow by keyword), got "
                            f"{type(problem).__name__}{' and %d more positional' % len(args) if args else ''}; build one "
                            f"with trajopt.Problem(dynamics, cost, x0, horizon=T) (or U_init=...)")
        check_takes(name, problem, name, takes)
        with problem.evaluating():
            sol = fn(problem, **options)
        return sol if problem.batched else sol[0]
    wrapper.takes = takes
    wrapper.takes_problem = True
    return wrapper
