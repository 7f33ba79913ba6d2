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

The loop (:func:`_solve`) runs named phases on a typed state (:class:`_State`, one row per problem):
:func:`_model` (linearize, quadratize, gradient and gaps), :func:`_test` (the stopping test),
:func:`_backward` (the candidate steps), :func:`_line_search` and :func:`_schedule` (the regularization
and the status of each problem).

Differentiable with respect to ``x0`` and every tensor of ``dynamics`` and ``cost`` that
requires grad: ``grad="implicit"`` differentiates the optimality conditions of the converged
solution (the adjoint LQR of the exact Newton system on the free controls, active set
fixed); ``grad="unroll"`` records the iterations for autograd.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._core.bounds import project
from .._core.box_kkt import fixed_start, implicit_solution, solution_costates, undefined_start
from .._core.box_lqr import box_lqr_backward
from .._core.checks import check_bool, check_int, check_positive, resolve_grad, tolerance
from .._core.costs import Quadratization
from .._core.linesearch import ALPHAS, rounding, sufficient_decrease
from .._core.problem import Problem, Solution, Status, solver
from .._core.riccati import costates
from .._core.rollout import second_order_terms, unchecked_linearize, unchecked_rollout
from .lqr import lqr as box_lqr

__all__ = ["ilqr", "ddp"]

_ROWS_AT_ONCE = 1024    # problems x step sizes evaluated in one forward pass
_QP_MAX_ITER = 50       # iteration budget of a step="qp" subproblem
_STRIKES = 3            # Newton steps below rounding in a row that do not halve the gradient: STALLED


@solver(takes=())
def ilqr(problem: Problem, *, max_iter: int = 100, grad_tol: float | None = None, tol: float | None = None,
         second_order: bool = False, grad: str | None = "implicit", mu_init: float = 1e-6, mu_min: float = 1e-9,
         mu_max: float = 1e10, step: str = "box_ddp") -> Solution:
    """Solve a :class:`~trajopt.Problem` ``min_U cost(rollout(x0, U), U)`` within its control bounds by iLQR.

    Starts from ``problem.U_init``; with ``problem.X_init`` from that infeasible state guess instead, where each
    accepted step of size ``alpha`` closes the fraction ``alpha`` of every gap ``dynamics(x_t, u_t) - x_{t+1}``
    (feasibility-driven DDP, Mastalli et al. 2020), so the first full step makes it a rollout. A guess near the
    goal often leads to a better local minimum than a rollout of ``U_init`` (crocoddyl's default guess is the zero
    state). A problem counts as converged only once feasible; one still infeasible at the end is returned as the
    rollout of its controls.

    Args:
        problem: the batch of problems (state bounds and a constraint are not used: see
            :func:`trajopt.constrained_ilqr`).
        max_iter: iteration budget per problem (0: evaluate the initial guess only).
        grad_tol: a problem has converged when its projected gradient's largest entry is at most ``grad_tol``;
            default ``1e-6`` in float64, scaled to the dtype's precision otherwise (``8.1e-4`` in float32, which
            P3's float32 solves reach).
        tol: relative decrease predicted by the model below which the cost can no longer tell progress from
            rounding: steps are then judged by the gradient and use Newton's model (see the module docstring);
            default ``1e-12`` in float64, scaled by the dtype's ``eps`` otherwise.
        second_order: add the dynamics' second-order terms (see :func:`ddp`).
        grad: ``"implicit"`` (default), ``"unroll"`` or None (a detached solution).
        mu_init, mu_min, mu_max: the regularization ``mu`` of the backward pass (``Q_uu + mu B'B``; ``mu I`` on the
            control Hessian with ``step="qp"``); it shrinks fourfold after a full step, grows fourfold after a short
            one and tenfold after a rejected one.
        step: ``"box_ddp"`` (default) the box-constrained backward pass of Tassa, Mansard and Todorov (2014): a box
            QP per stage, the bounds of later stages seen only through the value function; ``"qp"`` the exact step
            of the box-constrained LQ subproblem (the whole horizon's bounds at once, an SQP step), solved by the
            bounded :func:`trajopt.lqr`'s solver (active-set iterations, then an interior point;
            :mod:`trajopt._core.interior_point`), with feedback on the controls free at its solution.

    Returns:
        :class:`~trajopt.Solution` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``, ``status``
        (``CONVERGED``; ``MAX_ITER``; ``STALLED`` when no step was accepted even at ``mu_max``, or Newton steps below
        rounding stopped shrinking the gradient short of ``grad_tol`` (three in a row did not halve it);
        ``NOT_FINITE`` when the initial rollout or guess is not finite: that problem keeps ``x0`` held over the horizon, its ``U_init`` and ``cost = inf``, and
        the rest of the batch is solved; ``NOT_FINITE`` too when the Jacobians or the quadratization along an
        iterate are not finite where the step needs them: that problem keeps that iterate, with ``cost = inf`` and
        ``residual = inf``), ``iterations (B,)``, ``cost_history (B, I+1)``, ``residual (B,)`` (the projected
        gradient's largest entry), feedback ``K (B, T, m, n)`` and feedforward ``k`` of the last backward pass, and
        ``extras``: ``mu (B,)`` and ``costates (B, T+1, n)`` (the multipliers of the dynamics at the final
        trajectory; ``costates[:, 0]`` is the gradient of the cost in ``x0``; detached).

    ``x0`` is fixed, so the model's and the cost's derivatives in ``x`` at ``x0`` never move a step: where they are
    not finite (a model such as ``sqrt|theta - 3|`` started at ``theta = 3``) the problem is solved without them;
    its ``K[:, 0]`` is then zero, its ``costates[:, 0]`` is ``inf`` and, on the implicit route, its gradient in
    ``x0`` is NaN (undefined), while the model's and cost's tensors get theirs. No field of the solution holds NaN.

    The model and the cost must treat the rows of a batch independently: the solver evaluates them on
    selections of the batch (the problems still iterating, several step sizes at once).

    Differentiable (``X``, ``U``, ``cost``) with respect to ``x0`` and the tensors of ``dynamics`` and
    ``cost`` that require grad (parameters, buffers, tensor attributes), not with respect to the bounds or
    ``U_init``. The implicit route is exact at a converged strict local minimum; controls clamped at a bound get
    zero gradient, problems that did not converge get none through the solve (only through the final rollout), as
    with mpc.pytorch's ``detach_unconverged``; it raises if the reduced Hessian on the free controls of a
    converged problem is not positive definite. ``K`` and ``k`` are detached.
    """
    where = "ddp" if second_order is True else "ilqr"
    if not problem.cost.separable:          # a cost coupling stages: its exact stagewise form on a larger state
        lifted, back = problem.cost.separated(problem)
        return back(ilqr.__wrapped__(lifted, max_iter=max_iter, grad_tol=grad_tol, tol=tol, second_order=second_order,
                                     grad=grad, mu_init=mu_init, mu_min=mu_min, mu_max=mu_max, step=step))
    check_int(where, minimum=0, max_iter=max_iter)
    max_iter = int(max_iter)                # a NumPy integer too
    check_bool(where, second_order=second_order)
    if step not in ("box_ddp", "qp"):
        raise ValueError(f"{where}: step must be 'box_ddp' or 'qp', got {step!r}")
    check_positive(where, mu_init=mu_init, mu_min=mu_min, mu_max=mu_max)
    if not mu_min <= mu_init <= mu_max:
        raise ValueError(f"{where}: need mu_min <= mu_init <= mu_max, got {mu_min}, {mu_init}, {mu_max}")
    check_positive(where, **{k: v for k, v in (("grad_tol", grad_tol), ("tol", tol)) if v is not None})
    route = resolve_grad(where, grad)
    opts = dict(max_iter=max_iter, grad_tol=tolerance(grad_tol, 1e-6, problem.dtype), second_order=second_order,
                tol=float(tol) if tol is not None else None, mu_init=mu_init, mu_min=mu_min, mu_max=mu_max, step=step)
    with torch.set_grad_enabled(route == "unroll"):
        s = _solve(problem, unroll=route == "unroll", **opts)
    X, U = s.X, s.U
    if route == "implicit":
        X, U = implicit_solution(problem, X, U, s.status, s.at)
    J = problem.cost(X, U) if route is not None else s.J
    J = torch.where(s.status == Status.NOT_FINITE, float("inf"), J)
    residual = torch.where(s.status == Status.NOT_FINITE, float("inf"), s.pg.abs().flatten(1).amax(-1))
    return Solution(X=X, U=U, cost=J, status=s.status, iterations=s.iterations,
                    cost_history=torch.stack(s.history, 1), residual=residual, K=s.K, k=s.k,
                    extras={"mu": s.mu, "costates": s.at[1]})


@solver(takes=())
def ddp(problem: Problem, **options) -> Solution:
    """:func:`ilqr` with ``second_order=True``: the backward pass adds ``sum_i lam_i f_i''`` (the dynamics'
    second derivatives contracted with the costates of the current trajectory, by
    :meth:`dynamics.Dynamics.vector_hessians`) to the cost's Hessians, so each step is a Newton step on
    the controls, regularized where the Hessian is not positive definite. Same options and result."""
    if "second_order" in options:
        raise TypeError("ddp: second_order is always True; call trajopt.ilqr for Gauss-Newton steps")
    return ilqr.__wrapped__(problem, second_order=True, **options)


@dataclass
class _State:
    """The iteration state, one row per problem of the batch (the shapes of ``B`` problems)."""

    X: torch.Tensor             # (B, T+1, n) current trajectory (a rollout of U once feasible)
    U: torch.Tensor             # (B, T, m)
    J: torch.Tensor             # (B,) its cost
    feasible: torch.Tensor      # (B,) X is a rollout of U (no gaps)
    mu: torch.Tensor            # (B,) regularization
    status: torch.Tensor        # (B,) Status, MAX_ITER until decided
    done: torch.Tensor          # (B,) stopped iterating
    fine: torch.Tensor          # (B,) the last accepted step was below rounding
    polished: torch.Tensor      # (B,) ... and a Newton step
    pg: torch.Tensor            # (B, T, m) projected gradient at the current trajectory
    pg_prev: torch.Tensor       # (B,) its largest entry at the previous iteration (the least since Newton steps
    #                             stopped halving it)
    strikes: torch.Tensor       # (B,) Newton steps below rounding in a row that did not halve it
    iterations: torch.Tensor    # (B,)
    K: torch.Tensor             # (B, T, m, n) gains of the last backward pass
    k: torch.Tensor             # (B, T, m)
    at: tuple                   # Jacobians F (B, T, n, n+m) and costates (B, T+1, n) at the current trajectory
    history: list               # the costs J after each iteration


@dataclass
class _Model:
    """The local model of the problems ``a`` still iterating."""

    a: torch.Tensor             # (A,) problem indices
    F: torch.Tensor             # (A, T, n, n+m), stage 0 safe (``fixed_start``)
    q: tuple                    # the cost's Quadratization, stage 0 safe
    lam: torch.Tensor           # (A, T+1, n)
    gaps: torch.Tensor | None   # (A, T, n) defects of the infeasible problems, or None
    gap0: torch.Tensor | None   # (A, n)
    fixed: torch.Tensor | None  # (A,) the step leaves x_0 where it is (gap0 = 0), or None: all

    def rows(self, keep):
        pick = lambda z: None if z is None else z[keep]          # noqa: E731
        return _Model(self.a[keep], self.F[keep], type(self.q)(*(z[keep] for z in self.q)), self.lam[keep],
                      pick(self.gaps), pick(self.gap0), pick(self.fixed))


def _solve(p: Problem, *, unroll, max_iter, grad_tol, tol, second_order, mu_init, mu_min, mu_max,
           step="box_ddp") -> _State:
    """The iterations; differentiable when grad mode is on (the unroll route).

    Each iteration works on the problems still iterating only: one linearization, one backward pass and one
    batched line search for all of them. A problem whose step is rejected grows its regularization and tries
    again in the next iteration with the others (an iteration is one linearization, as in mpc.pytorch), so
    that a batch costs what its slow members need and no pass runs for a few stragglers alone.
    """
    s = _start(p, unroll, mu_init)
    x0 = p.x0 if unroll else p.x0.detach()
    for it in range(1, max_iter + 2):
        a = (~s.done).nonzero().flatten()                    # the problems still iterating
        if len(a) == 0:
            break
        model = _model(p, s, a)
        if len(model.a) == 0:
            continue
        go = _test(s, model, grad_tol, budget_spent=it > max_iter, shrink=0.5 if p.cost.separable else 1.0)
        if len(go) == 0:
            break
        model = model.rows(go)
        cand = _backward(p, s, model, second_order, tol, step)
        chosen = _line_search(p, s, x0, cand)
        _schedule(s, model.a, cand, chosen, mu_min, mu_max)
        s.history.append(s.J.detach())
    _finish(p, s, x0)
    return s


def _start(p, unroll, mu_init) -> _State:
    """The state at the initial guess; problems whose rollout (or guess) is not finite are ``NOT_FINITE``."""
    B, T, m, n = p.B, p.T, p.m, p.n
    x0 = p.x0 if unroll else p.x0.detach()
    U = p.U_init.detach()
    X = unchecked_rollout(p.dynamics, x0, U) if p.X_init is None else p.X_init.detach()
    J = p.cost(X, U)
    finite = torch.isfinite(J) & torch.isfinite(X).flatten(1).all(-1)
    if p.X_init is not None:        # the model at the guess enters the first step's gaps
        with torch.no_grad():
            nxt = unchecked_linearize(p.dynamics, X, U)[1]
        finite &= torch.isfinite(nxt).flatten(1).all(-1)
    opts, flags = dict(dtype=p.dtype, device=p.device), dict(dtype=torch.bool, device=p.device)
    status = torch.where(finite, int(Status.MAX_ITER), int(Status.NOT_FINITE))
    if not bool(finite.all()):      # a bad row never sinks the batch: it keeps x0 held and its initial controls
        held = x0.unsqueeze(1).expand(B, T + 1, n)
        X = torch.where(finite.view(B, 1, 1), X, held)
        J = torch.where(finite, J, p.cost(held, U))
    at = (torch.zeros(B, T, n, n + m, **opts), torch.zeros(B, T + 1, n, **opts))
    return _State(X=X, U=U, J=J, feasible=torch.full((B,), p.X_init is None, **flags),
                  mu=torch.full((B,), mu_init, **opts), status=status.long(), done=~finite,
                  fine=torch.zeros(B, **flags), polished=torch.zeros(B, **flags), pg=torch.zeros(B, T, m, **opts),
                  pg_prev=torch.full((B,), float("inf"), **opts),
                  strikes=torch.zeros(B, dtype=torch.long, device=p.device),
                  iterations=torch.zeros(B, dtype=torch.long, device=p.device),
                  K=torch.zeros(B, T, m, n, **opts), k=torch.zeros(B, T, m, **opts), at=at, history=[J.detach()])


def _model(p, s, a) -> _Model:
    """Linearize and quadratize along the current trajectories of the problems ``a``; their projected gradients and
    costates go into the state. Stage 0's parts in ``x_0``, which a step from ``x0`` never uses, are dropped where
    they are not finite (:func:`~trajopt._core.box_kkt.fixed_start`: a model with no finite derivative at ``x0``).
    A problem whose local model is still not finite is ``NOT_FINITE`` (it keeps its current, finite iterate) and
    is left out of the model returned."""
    Xa, Ua = s.X[a], s.U[a]
    with p.at(a):
        F, f = unchecked_linearize(p.dynamics, Xa, Ua)
        q = p.cost.quadratize(Xa, Ua)
    gaps, gap0 = _gaps(F, f, Xa, Ua, p.x0[a], s.feasible[a])
    fixed = None if gap0 is None else (gap0 == 0).all(-1)
    Fs, C, c, start = fixed_start(F, q.C, q.c, fixed)
    q = Quadratization(C, c, q.C_final, q.c_final)
    g, lam = costates(Fs, q.C, q.c, q.C_final, q.c_final)
    lam = undefined_start(lam, start)
    parts = [Fs.flatten(1), *(z.flatten(1) for z in q), g.flatten(1), lam[:, 1:].flatten(1)]
    parts += [] if gaps is None else [gaps.flatten(1), gap0]
    finite = torch.stack([torch.isfinite(z).all(1) for z in parts]).all(0)     # no copy of the model
    if not bool(finite.all()):      # a model not finite along the iterate: that problem alone stops
        bad = a[~finite]
        s.status = s.status.index_put((bad,), torch.full_like(bad, int(Status.NOT_FINITE)))
        s.done = s.done.index_put((bad,), torch.ones_like(bad, dtype=torch.bool))
    model = _Model(a, Fs, q, lam, gaps, gap0, fixed)
    if not bool(finite.all()):
        keep = finite.nonzero().flatten()
        model, F, Ua = model.rows(keep), F[keep], Ua[keep]
        g, lam = g[keep], lam[keep]
    a = model.a
    lo, hi = (None if b is None else b[a] for b in (p.u_lower, p.u_upper))
    s.pg = s.pg.index_put((a,), project(g, Ua, lo, hi).detach())
    s.at = tuple(buf.index_put((a,), z.detach()) for buf, z in zip(s.at, (F, lam)))
    return model


def _test(s, model, grad_tol, budget_spent, shrink):
    """The stopping test of the problems ``model.a``; returns the positions in ``model.a`` that go on."""
    a = model.a
    pg_max = s.pg[a].abs().flatten(1).amax(-1)
    now_converged = (pg_max <= grad_tol) & s.feasible[a]
    # once steps are below rounding, Newton steps go on only while they still shrink the gradient: by half per
    # step with an exact model, at all with a cost that couples stages (its model lacks the coupling blocks). A
    # gradient computed in float32 is noisy there: the problem stalls after _STRIKES such steps in a row.
    weak = s.polished[a] & (pg_max > shrink * s.pg_prev[a]) & ~now_converged
    strikes = torch.where(weak, s.strikes[a] + 1, 0)
    stuck = strikes >= _STRIKES
    status = torch.where(now_converged, int(Status.CONVERGED), torch.where(stuck, int(Status.STALLED), s.status[a]))
    s.status = s.status.index_put((a,), status)
    stop = now_converged | stuck | budget_spent
    s.done = s.done.index_put((a,), stop)
    s.strikes = s.strikes.index_put((a,), strikes)
    s.pg_prev = s.pg_prev.index_put((a,), torch.where(weak, torch.minimum(pg_max, s.pg_prev[a]), pg_max))
    return (~stop).nonzero().flatten()


@dataclass
class _Candidates:
    """Candidate steps: each problem's first (its own model) and, for problems on Newton's model, a Gauss-Newton
    alternative; ``pos`` maps each candidate to its problem's position in the model's rows."""

    pos: torch.Tensor; on_newton: torch.Tensor; alt: torch.Tensor             # noqa: E702
    K: torch.Tensor; k: torch.Tensor; d1: torch.Tensor; d2: torch.Tensor     # noqa: E702
    ok: torch.Tensor; fine: torch.Tensor; scale: torch.Tensor; model: _Model  # noqa: E702


def _backward(p, s, model, second_order, tol, step="box_ddp") -> _Candidates:
    """The box-constrained backward pass of every candidate, in one batch.

    Newton's model where asked, and where Gauss-Newton steps have reached rounding (at a strict local minimum the
    exact Hessian is positive definite and its steps converge quadratically). A problem on Newton's model also tries
    the Gauss-Newton step, in the same batched passes, and keeps the cheaper."""
    a, q, device = model.a, model.q, p.device
    newton = s.fine[a] | second_order
    alt = newton.nonzero().flatten()                        # positions in ``a`` with a Gauss-Newton alternative
    C = q.C
    if len(alt):
        with p.at(a[alt]):
            C = C.index_put((alt,), C[alt] + second_order_terms(p.dynamics, s.X[a[alt]], s.U[a[alt]], model.lam[alt]))
    pos = torch.cat([torch.arange(len(a), device=device), alt])
    on_newton = torch.cat([newton, torch.zeros(len(alt), dtype=torch.bool, device=device)])
    b = a[pos]
    nonconvex = on_newton & s.fine[b]
    lower, upper = _bounds(p, s.U)
    gaps = (None, None) if model.gaps is None else (model.gaps[pos], model.gap0[pos])
    # the Newton terms at x0 may be what is not finite there: stage 0's parts in x_0 dropped again
    F, C, _, _ = fixed_start(model.F[pos], torch.cat([C, q.C[alt]]), None,
                             None if model.fixed is None else model.fixed[pos])
    if step == "qp":
        K, k, (d1, d2), ok = _qp_step(F, C, q.c[pos], q.C_final[pos], q.c_final[pos], lower[b] - s.U[b],
                                      upper[b] - s.U[b], s.mu[b], *gaps)
    else:
        K, k, (d1, d2), _, ok = box_lqr_backward(
            F, C, q.c[pos], q.C_final[pos], q.c_final[pos], lower[b] - s.U[b], upper[b] - s.U[b], s.mu[b], *gaps,
            nonconvex=nonconvex if bool(nonconvex.any()) else None)
    # a candidate whose step is not finite (a Newton model that is not, say) is not tried, and leaves no NaN gains
    ok = ok & torch.isfinite(torch.cat([d1.unsqueeze(1), d2.unsqueeze(1), k.flatten(1), K.flatten(1)], 1)).all(1)
    K, k = torch.where(ok.view(-1, 1, 1, 1), K, 0.0), torch.where(ok.view(-1, 1, 1), k, 0.0)
    scale = s.J[b].abs().clamp_min(1.0)
    fine = ok & s.feasible[b] & (-d1 <= (rounding(s.J[b], guarded=False) if tol is None else tol * scale))
    return _Candidates(pos, on_newton, alt, K, k, d1, d2, ok, fine, scale, model)


def _qp_step(F, C, c, C_final, c_final, du_lower, du_upper, mu, gaps=None, dx0=None):
    """The exact step of the box-constrained LQ subproblem in deltas (the model of :func:`box_lqr_backward`, with
    ``mu I`` on the control Hessian), by the bounded LQR's solver: its feedback ``K (B, T, m, n)`` (zero rows on the
    controls at a bound) and ``k (B, T, m)``, the terms ``(d1, d2)`` of the model's change ``alpha d1 + alpha^2 d2``
    along ``alpha`` times the step (gaps scaled alike) and ``ok (B,)`` (solved, finite). Not differentiable."""
    B, T, n, nm = F.shape
    m = nm - n
    # a row whose subproblem is not finite fails alone (the bounded LQR would refuse the whole batch)
    parts = [F, C, c, C_final, c_final] + [z for z in (gaps, dx0) if z is not None]
    good = torch.isfinite(torch.cat([z.flatten(1) for z in parts], 1)).all(1)
    if not bool(good.all()):
        row = lambda z: good.view(-1, *([1] * (z.ndim - 1)))      # noqa: E731
        eye = torch.eye(nm, dtype=C.dtype, device=C.device)
        F, c, c_final = (torch.where(row(z), z, 0.0) for z in (F, c, c_final))
        C, C_final = torch.where(row(C), C, eye), torch.where(row(C_final), C_final, eye[:n, :n])
        gaps, dx0 = (None if z is None else torch.where(row(z), z, 0.0) for z in (gaps, dx0))
    Creg = C.clone()
    Creg[..., n:, n:] += mu.view(B, 1, 1, 1) * torch.eye(m, dtype=C.dtype, device=C.device)
    f = F.new_zeros(B, T, n) if gaps is None else gaps
    x0 = F.new_zeros(B, n) if dx0 is None else dx0
    with torch.no_grad():
        sol = box_lqr(F, f, Creg, c, x0, C_final=C_final, c_final=c_final, u_lower=du_lower, u_upper=du_upper,
                      grad=None, max_iter=_QP_MAX_ITER)
    tau = torch.cat([sol.X[:, :-1], sol.U], -1)
    xT = sol.X[:, -1]
    d1 = (c * tau).sum((1, 2)) + (c_final * xT).sum(-1)
    d2 = 0.5 * (torch.einsum("bti,btij,btj->b", tau, C, tau) + torch.einsum("bi,bij,bj->b", xT, C_final, xT))
    ok = (sol.status == int(Status.CONVERGED)) & torch.isfinite(d1) & torch.isfinite(d2) & good
    return sol.K, sol.k, (d1, d2), ok


def _bounds(p, like):
    inf = torch.full_like(like, float("inf"))
    return (-inf if p.u_lower is None else p.u_lower), (inf if p.u_upper is None else p.u_upper)


def _line_search(p, s, x0, c: _Candidates):
    """Every candidate's rollouts for all step sizes in one batched forward pass while that is cheap (per-operation
    overhead dominates); for large batches the full step first and the shorter ones only where it was rejected.
    Below rounding only the full step counts. Returns per candidate: accepted, step size, X, U, J."""
    a, pos = c.model.a, c.pos
    b = a[pos]
    R, T, m, n = len(pos), p.T, p.m, p.n
    opts, flags = dict(dtype=p.dtype, device=p.device), dict(dtype=torch.bool, device=p.device)
    lower, upper = _bounds(p, s.U)
    alphas = torch.tensor(ALPHAS, **opts)
    got = torch.zeros(R, **flags)
    J_c, step_c = torch.full((R,), float("inf"), **opts), torch.zeros(R, **opts)
    X_c, U_c = s.X.new_zeros(R, T + 1, n), s.U.new_zeros(R, T, m)
    gaps, gap0 = c.model.gaps, c.model.gap0
    together = R * len(alphas) <= _ROWS_AT_ONCE
    for group in ((alphas,) if together else (alphas[:1], alphas[1:])):
        r = (c.ok & ~got & (~c.fine if group[0] < 1 else True)).nonzero().flatten()
        if len(r) == 0:
            continue
        br = b[r]
        with p.at(br.repeat_interleave(len(group))):          # rows problem-major in the rollouts
            Xt, Ut = _forward(p.dynamics, x0[br], s.X[br], s.U[br], c.K[r], c.k[r], group, lower[br], upper[br],
                              *((None, None) if gaps is None else (gaps[pos[r]], gap0[pos[r]])))
        with p.at(br.repeat(len(group))):                      # step-size-major in the costs
            Jt = p.cost(Xt.flatten(0, 1), Ut.flatten(0, 1)).view(len(group), len(r))
        decrease = s.J[br] - Jt
        predicted = -(group.unsqueeze(-1) * c.d1[r] + group.unsqueeze(-1) ** 2 * c.d2[r])   # (A, R)
        # closing gaps may cost: an infeasible problem accepts an increase up to twice the predicted one
        sufficient = torch.where(s.feasible[br] | (predicted > 0), sufficient_decrease(decrease, predicted),
                                 decrease >= 2 * predicted)
        finite = torch.isfinite(Jt) & torch.isfinite(Xt).flatten(2).all(-1)   # a cost may ignore x_T
        accept = finite & torch.where(c.fine[r], (decrease >= -rounding(s.J[br], guarded=False)) & (group == 1).unsqueeze(-1),
                                      sufficient)
        hit = accept.any(0)
        first = torch.argmax(accept.to(torch.int8), 0)                         # largest accepted step
        w, pick = r[hit], first[hit]
        sel = hit.nonzero().flatten()
        X_c, U_c = X_c.index_put((w,), Xt[pick, sel]), U_c.index_put((w,), Ut[pick, sel])
        J_c, step_c = J_c.index_put((w,), Jt[pick, sel]), step_c.index_put((w,), group[pick])
        got = got.index_put((w,), torch.ones(len(w), **flags))
    # each problem's candidate: its first, or its Gauss-Newton alternative where that alone was accepted or cheaper
    alt, na = c.alt, len(a)
    choice = torch.arange(na, device=p.device).index_put(
        (alt,), torch.where(got[na:] & (~got[alt] | (J_c[na:] < J_c[alt])), torch.arange(na, R, device=p.device), alt))
    return choice, got, step_c, X_c, U_c, J_c


def _schedule(s, a, c: _Candidates, chosen, mu_min, mu_max):
    """Take each problem's chosen step, and adapt its regularization: trust the model more after a full step, less
    after a short one, and grow ``mu`` after a rejected one (a rejected problem tries again in the next iteration,
    batched with the others: cheaper than retry passes for a few stragglers). No step even at ``mu_max``: stalled."""
    choice, got_c, step_c, X_c, U_c, J_c = chosen
    got, fine, step, used_newton = got_c[choice], c.fine[choice], step_c[choice], c.on_newton[choice]
    s.K, s.k = s.K.index_put((a,), c.K[choice]), s.k.index_put((a,), c.k[choice])
    w = got.nonzero().flatten()
    cw, aw = choice[w], a[w]
    s.X, s.U, s.J = s.X.index_put((aw,), X_c[cw]), s.U.index_put((aw,), U_c[cw]), s.J.index_put((aw,), J_c[cw])
    s.feasible = s.feasible.index_put((aw,), s.feasible[aw] | (step[w] == 1))
    mb = s.mu[a]
    mb = torch.where(got & (step >= 0.5), torch.clamp(mb / 4, min=mu_min), mb)
    mb = torch.where(got & (step < 0.1), torch.clamp(mb * 4, max=mu_max), mb)
    stalled = ~got & (mb >= mu_max)
    mb = torch.where(~got, torch.clamp(mb * 10, max=mu_max), mb)
    s.mu = s.mu.index_put((a,), mb)
    s.iterations = s.iterations.index_put((a,), s.iterations[a] + 1)
    s.fine = s.fine.index_put((a,), fine & got)
    s.polished = s.polished.index_put((a,), fine & got & used_newton)
    s.done = s.done.index_put((a,), stalled)
    s.status = s.status.index_put((a,), torch.where(stalled, int(Status.STALLED), s.status[a]))


def _finish(p, s, x0):
    """Problems still infeasible at the end are returned as the rollout of their controls."""
    if bool(s.feasible.all()):
        return
    i = (~s.feasible & (s.status != Status.NOT_FINITE)).nonzero().flatten()
    if len(i) == 0:
        return
    with p.at(i):
        Xi = unchecked_rollout(p.dynamics, x0[i], s.U[i])
        Ji = p.cost(Xi, s.U[i])
    ok = torch.isfinite(Ji) & torch.isfinite(Xi).flatten(1).all(-1)
    s.status = s.status.index_put((i,), torch.where(ok, torch.where(s.status[i] == Status.CONVERGED,
                                                                     int(Status.MAX_ITER), s.status[i]),
                                                    int(Status.NOT_FINITE)))
    keep = i[ok]
    s.X, s.J = s.X.index_put((keep,), Xi[ok]), s.J.index_put((keep,), Ji[ok])
    with p.at(keep):
        s.at = tuple(buf.index_put((keep,), z) for buf, z in
                     zip(s.at, solution_costates(p.dynamics, p.cost, Xi[ok], s.U[keep])))


def _gaps(F, f, X, U, x0, feasible):
    """The defects of the problems not yet feasible, ``dynamics(x_t, u_t) - x_{t+1}`` ``(B, T, n)`` and
    ``x0 - X_0`` ``(B, n)`` (exactly zero on feasible problems), or None when all are feasible."""
    if bool(feasible.all()):
        return None, None
    T = U.shape[1]
    nxt = (F @ torch.cat([X[:, :T], U], -1).unsqueeze(-1)).squeeze(-1) + f
    gaps = torch.where(feasible.view(-1, 1, 1), 0.0, nxt - X[:, 1:])
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
