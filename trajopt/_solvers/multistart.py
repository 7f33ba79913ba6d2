"""Many initial guesses per problem, solved as one batch, the cheapest kept.

Local solvers find the local minimum their initial guess leads to: from rest, every iLQR
stalls at the bottom of the pendulum swing-up, holding full torque. Solving each problem from
several guesses at once costs one larger batch, not a loop, and keeping the best turns the
batch into a cheap global search.
"""
from __future__ import annotations

import torch

from dynamics import Dynamics
from dynamics.validation import check_tensor
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .ilqr import ilqr
from .._core.problem import Problem, Solution, Status, solver

__all__ = ["multistart"]


def multistart(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_inits: torch.Tensor, *,
               screen_iter: int | None = None, solver=ilqr, **options) -> Solution:
    """Solve every problem from ``K`` initial guesses in one batch and keep the cheapest solution.

    Args:
        dynamics, cost: as for :func:`trajopt.ilqr`.
        x0: initial states ``(B, n)``.
        U_inits: guesses ``(K, T, m)`` shared by all problems, or ``(B, K, T, m)`` per problem.
        screen_iter: iteration budget of the ``B * K`` solves (default: ``options["max_iter"]``); the
            winner of each problem is then solved on, from where its screening stopped, with the full
            ``options`` (so a short screening costs little and the result is still converged).
        solver: :func:`trajopt.ilqr` or :func:`trajopt.ddp` (any function of that signature).
        **options: keyword arguments of ``solver`` (bounds, ``max_iter``, ``grad``, ...).

    Returns:
        The winners' :class:`Solution` (differentiable as the solver's ``grad`` says), with
        ``history["candidates"]`` the screened cost of every guess ``(B, K)`` and
        ``history["choice"]`` the index of the winning guess ``(B,)``.
    """
    where = "multistart"
    dims = {"n": dynamics.state_dim, "m": dynamics.control_dim}
    x0 = check_tensor(where, "x0", x0, ("n",), dims, batchable=True)
    if x0.ndim != 2:
        raise ValueError(f"{where}: x0 must be batched (B, n), got shape {tuple(x0.shape)}")
    if not isinstance(U_inits, torch.Tensor) or U_inits.ndim not in (3, 4) or U_inits.shape[-1] != dims["m"]:
        raise ValueError(f"{where}: U_inits must be (K, T, m) or (B, K, T, m) with m={dims['m']}, got shape "
                         f"{tuple(getattr(U_inits, 'shape', ()))}")
    B = x0.shape[0]
    if U_inits.ndim == 3:
        U_inits = U_inits.unsqueeze(0).expand(B, *U_inits.shape)
    if U_inits.shape[0] != B:
        raise ValueError(f"{where}: U_inits has {U_inits.shape[0]} problems, x0 has {B}")
    U_inits = check_tensor(where, "U_inits", U_inits.flatten(0, 1), ("T", "m"), dims).view(U_inits.shape)
    K, T, m = U_inits.shape[1:]
    screen = dict(options, grad=None)
    if screen_iter is not None:
        screen["max_iter"] = screen_iter
    with torch.no_grad():
        trial = solver(dynamics, cost, x0.detach().repeat_interleave(K, 0), U_inits.reshape(B * K, T, m), **screen)
    costs = trial.cost.view(B, K)
    choice = torch.where(torch.isfinite(costs), costs, torch.full_like(costs, float("inf"))).argmin(1)
    best = trial.U.view(B, K, T, m)[torch.arange(B, device=x0.device), choice]
    sol = solver(dynamics, cost, x0, best, **options)
    sol.history.update(candidates=costs, choice=choice)
    return sol
