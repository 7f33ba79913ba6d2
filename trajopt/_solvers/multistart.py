"""Many initial guesses per problem, solved as one batch, the cheapest kept.

Local solvers find the local minimum their initial guess leads to: from rest, every iLQR
stalls at the bottom of the pendulum swing-up, holding full torque. Solving each problem from
several guesses at once costs one larger batch, not a loop, and keeping the best turns the
batch into a cheap global search.
"""
from __future__ import annotations

import dataclasses

import torch

from dynamics.validation import check_tensor
from .._core.bounds import clamp
from .._core.checks import check_int, solver_name, solver_options
from .._core.problem import Problem, Solution, Status, check_takes, merge, solver as as_solver
from .ilqr import ilqr

__all__ = ["multistart"]


@as_solver
def multistart(problem: Problem, *, U_inits: torch.Tensor, screen_iter: int | None = None, solver=ilqr,
               **options) -> Solution:
    """Solve every problem from ``K`` initial guesses in one batch and keep the cheapest solution.

    Args:
        problem: the batch of problems (its ``U_init`` is replaced by the guesses; its bounds, ``X_init`` and
            constraint go to every solve).
        U_inits: guesses ``(K, T, m)`` shared by all problems, or ``(B, K, T, m)`` per problem, with the
            problem's ``T`` and ``m``; a float tensor, converted to the problem's dtype and device.
        screen_iter: iteration budget of the ``B * K`` screening solves (default: the solver's ``max_iter``
            in ``options``, else its own default); the winner of each problem is then solved on, from where
            its screening stopped, with the full ``options`` (so a short screening costs little and the result
            is still converged).
        solver: a solver ``solver(problem, **options) -> Solution`` (:func:`trajopt.ilqr` by default,
            :func:`trajopt.ddp`, :func:`trajopt.constrained_ilqr`, ...). The screening solves run without
            gradients (``grad=None`` where the solver takes ``grad``).
        **options: keyword options of ``solver`` (``max_iter``, ``grad``, ...), checked against its signature
            (an option it does not take raises a TypeError naming it).

    Returns:
        The winners' :class:`~trajopt.Solution` (differentiable as the solver's ``grad`` says; ``iterations`` and
        ``cost_history`` count each winner's screening iterations and then its own), with
        ``extras["candidates"]`` the screened cost of every guess ``(B, K)`` (``inf`` for a guess whose
        screening was not finite) and ``extras["choice"]`` the index of the winning guess ``(B,)``. A guess
        whose screening solve ends ``NOT_FINITE`` loses; a problem none of whose guesses has a finite screening
        cost gets ``Status.NOT_FINITE`` (``x0`` held over the horizon, its first guess clamped into the bounds,
        ``cost = inf``, zero iterations) while the other problems are solved.
    """
    where = "multistart"
    accepted = solver_options(where, solver, options)
    check_takes(where, problem, solver_name(solver), getattr(solver, "takes", None))
    if screen_iter is not None:
        check_int(where, screen_iter=screen_iter)
        if accepted is not None and "max_iter" not in accepted:
            raise TypeError(f"{where}: screen_iter needs a solver that takes max_iter; "
                            f"{solver_name(solver)} does not")
    B, T, m = problem.B, problem.T, problem.m
    if not isinstance(U_inits, torch.Tensor) or U_inits.ndim not in (3, 4) or U_inits.shape[-1] != m:
        got = (f"shape {tuple(U_inits.shape)}" if isinstance(U_inits, torch.Tensor) else type(U_inits).__name__)
        raise ValueError(f"{where}: U_inits must be (K, T, m) or (B, K, T, m) with m={m}, got {got}")
    if U_inits.ndim == 3:
        U_inits = U_inits.unsqueeze(0).expand(B, *U_inits.shape)
    if U_inits.shape[0] != B:
        raise ValueError(f"{where}: U_inits has {U_inits.shape[0]} problems, the problem has B={B}")
    if U_inits.shape[2] != T:
        raise ValueError(f"{where}: U_inits has T={U_inits.shape[2]} steps, the problem has T={T}")
    K = U_inits.shape[1]
    if K < 1:
        raise ValueError(f"{where}: U_inits holds no guess (K=0)")
    U_inits = check_tensor(where, "U_inits", U_inits.reshape(B * K, T, m), ("T", "m"), {"T": T, "m": m})
    U_inits = U_inits.to(problem.x0).view(B, K, T, m)

    screen = dict(options)
    if accepted is None or "grad" in accepted:
        screen["grad"] = None
    if screen_iter is not None:
        screen["max_iter"] = screen_iter
    rows = torch.arange(B, device=problem.device).repeat_interleave(K)
    with torch.no_grad():
        trial = solver(problem.select(rows).replace(U_init=U_inits.reshape(B * K, T, m).detach()), **screen)
    if not isinstance(trial, Solution):
        raise TypeError(f"{where}: solver must return a trajopt.Solution; {solver_name(solver)} returned "
                        f"{type(trial).__name__}")
    costs = trial.cost.detach().view(B, K)
    lost = (trial.status.view(B, K) == Status.NOT_FINITE) | ~torch.isfinite(costs)
    costs = torch.where(lost, float("inf"), costs)
    choice = costs.argmin(1)
    best = trial.U.detach().view(B, K, T, m)[torch.arange(B, device=problem.device), choice]
    good = ~lost.all(1)
    if bool(good.all()):
        sol = solver(problem.replace(U_init=best), **options)
    else:                                   # the problems with no finite guess are not solved again
        keep = good.nonzero().flatten()
        held = _not_finite(problem, U_inits[:, 0])
        if len(keep) == 0:
            sol = held
        else:
            part = solver(problem.select(keep).replace(U_init=best[keep]), **options)
            sol = merge(held, keep, part)
    picked = torch.arange(B, device=problem.device) * K + choice
    sol = _after_screening(sol, trial.iterations[picked], trial.cost_history[picked], good)
    sol.extras.update(candidates=costs, choice=choice)
    return sol


def _after_screening(sol: Solution, iterations: torch.Tensor, history: torch.Tensor, good: torch.Tensor) -> Solution:
    """``sol`` with each winner's screening ``iterations (B,)`` and ``history (B, I_s+1)`` put before its own
    (problems not ``good (B,)`` were not screened to a finite guess and keep theirs)."""
    iterations = torch.where(good, iterations, 0)
    total = sol.iterations + iterations
    steps = torch.arange(int(total.max()) + 1, device=total.device)
    first = history.gather(1, torch.minimum(steps, iterations.unsqueeze(1)).clamp(max=history.shape[1] - 1))
    rest = sol.cost_history.gather(1, (steps - iterations.unsqueeze(1)).clamp(0, sol.cost_history.shape[1] - 1))
    joined = torch.where(good.unsqueeze(1) & (steps <= iterations.unsqueeze(1)), first, rest)
    return dataclasses.replace(sol, iterations=total, cost_history=joined.to(sol.cost_history))


def _not_finite(problem: Problem, U: torch.Tensor) -> Solution:
    """The solution of problems with no finite guess: ``x0`` held, ``U`` clamped into the bounds, ``cost = inf``."""
    B, T, n = problem.B, problem.T, problem.n
    U = clamp(U, problem.u_lower, problem.u_upper)
    inf = problem.x0.new_full((B,), float("inf"))
    return Solution(X=problem.x0.unsqueeze(1).expand(B, T + 1, n), U=U, cost=inf,
                    status=torch.full((B,), int(Status.NOT_FINITE), dtype=torch.long, device=problem.device),
                    iterations=torch.zeros(B, dtype=torch.long, device=problem.device),
                    cost_history=inf.unsqueeze(1), residual=inf)
