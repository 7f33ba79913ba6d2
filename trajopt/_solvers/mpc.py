"""Receding-horizon control as a differentiable layer.

:class:`MPC` solves a finite-horizon :class:`~trajopt.Problem` from the current state with a solver
(:func:`trajopt.ilqr` by default; :func:`trajopt.ddp`, or a sampling solver such as :func:`trajopt.mppi`),
warm-started from the previous plan shifted by one step, under a fixed iteration budget, and returns the first
control and the plan. Gradients flow from the returned control and plan to the state and to every tensor of
the model and the cost that requires grad, by the solver's ``grad`` route.
"""
from __future__ import annotations


import torch
from torch import nn

from dynamics import Dynamics
from dynamics.validation import check_tensor
from .._core.checks import check_int, solver_name, solver_options
from .._core.costs import Cost
from .._core.problem import Problem, Solution, Status, check_module_tensors, merge
from .ilqr import ilqr

__all__ = ["MPC"]

_RECOVER = (int(Status.NOT_FINITE), int(Status.STALLED))


class MPC(nn.Module):
    """Model-predictive control by a trajectory solver (box-constrained iLQR by default), as an ``nn.Module``.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics` (a submodule: its parameters are this module's).
        cost: a time-invariant :class:`trajopt.Cost` over the horizon (a submodule too).
        horizon: ``T``, the number of planned controls (a positive int).
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)``, or None.
        solver: the solver, called as ``solver(trajopt.Problem(dynamics, cost, x, U_init=warm start or None,
            horizon=T, u_lower=..., u_upper=...), max_iter=..., **options)``: :func:`trajopt.ilqr` (default),
            :func:`trajopt.ddp`, :func:`trajopt.mppi`, :func:`trajopt.cem`, a ``functools.partial`` of one, or any
            function of that call.
        max_iter: iteration budget of each warm-started solve, passed to a solver that takes ``max_iter`` (an
            explicit budget for one that does not raises).
        first_max_iter: budget of a solve with no plan to warm-start from (default ``max_iter``).
        **options: further keyword options of the solver (for iLQR ``grad``, ``grad_tol``, ``tol``,
            ``second_order``, ...; for MPPI ``samples``, ``temperature``, ...), checked against its signature here:
            an option the solver does not take raises a TypeError naming it.

    Calling it on states ``x (B, n)`` (or ``(n,)``) returns ``(u (B, m), plan)`` with ``plan`` the
    :class:`~trajopt.Solution` of the solve; the next call warm-starts from ``plan.U`` shifted by one step (the
    last control repeated) when the batch size is unchanged. :meth:`reset` forgets the plan (call it at an
    episode's start).

    Warm-start recovery: where a warm-started solve ends ``NOT_FINITE`` or ``STALLED`` (a shifted plan can
    lead a local solver somewhere it cannot leave), those problems are solved again from a cold start (zero
    controls clamped into the bounds, the ``first_max_iter`` budget) and the cheaper of the two solutions is
    kept (the warm one on a tie; for a solver told not to roll out its plan, which reports no cost, the cold one
    only where the warm one was ``NOT_FINITE``). ``plan.extras["recovered"] (B,)`` marks the problems whose
    cold solve was kept; their ``cost_history`` is the cold solve's, padded by repeating its last value where
    the warm solve ran longer.
    """

    def __init__(self, dynamics: Dynamics, cost: Cost, horizon: int, *, u_lower=None, u_upper=None, solver=ilqr,
                 max_iter: int = 10, first_max_iter: int | None = None, **options):
        super().__init__()
        where = "MPC"
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics, got {type(dynamics).__name__}")
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
        if cost.time_varying:
            raise ValueError(f"{where}: the cost must be time-invariant (the horizon recedes)")
        check_int(where, horizon=horizon, max_iter=max_iter)
        if first_max_iter is not None:
            check_int(where, first_max_iter=first_max_iter)
        accepted = solver_options(where, solver, options)
        self.takes_max_iter = accepted is None or "max_iter" in accepted
        if not self.takes_max_iter and (max_iter != 10 or first_max_iter is not None):
            raise TypeError(f"{where}: {solver_name(solver)} takes no max_iter; its own options set its budget")
        self.dynamics, self.cost, self.horizon = dynamics, cost, horizon
        self.u_lower, self.u_upper = u_lower, u_upper
        self.max_iter = max_iter
        self.first_max_iter = max_iter if first_max_iter is None else first_max_iter
        self.solver = solver
        self.options = dict(options)
        self._plan: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous plan: the next solve starts from zero controls (or the ``U_init`` given)."""
        self._plan = None

    def forward(self, x: torch.Tensor, U_init: torch.Tensor | None = None) -> tuple[torch.Tensor, Solution]:
        """First control ``(B, m)`` (or ``(m,)``) and the plan's :class:`~trajopt.Solution` from states
        ``x (B, n)`` (or ``(n,)``).

        ``U_init (B, T, m)`` (or ``(T, m)``) overrides the warm start; its length must be the horizon.
        """
        if U_init is not None and (not isinstance(U_init, torch.Tensor) or U_init.ndim < 2
                                   or U_init.shape[-2] != self.horizon):
            raise ValueError(f"MPC: U_init must be (B, T, m) or (T, m) with the horizon T={self.horizon}, got "
                             f"{tuple(U_init.shape) if isinstance(U_init, torch.Tensor) else type(U_init).__name__}")
        check_tensor("MPC", "x", x, ("n",), {"n": self.dynamics.state_dim})
        check_module_tensors("MPC", {"dynamics": self.dynamics, "cost": self.cost}, x, "x")
        batched = isinstance(x, torch.Tensor) and x.ndim == 2
        if isinstance(x, torch.Tensor) and x.ndim == 1:
            x = x.unsqueeze(0)
            U_init = None if U_init is None or U_init.ndim == 3 else U_init.unsqueeze(0)
        warm = U_init is None and self._plan is not None and self._plan.shape[0] == x.shape[0]
        if warm:
            U_init = torch.cat([self._plan[:, 1:], self._plan[:, -1:]], 1)
        problem = Problem(self.dynamics, self.cost, x, U_init=U_init, horizon=self.horizon, u_lower=self.u_lower,
                          u_upper=self.u_upper)
        sol = self._solve(problem, self.max_iter if warm else self.first_max_iter)
        recovered = torch.zeros(problem.B, dtype=torch.bool, device=problem.device)
        if warm:
            rows = torch.isin(sol.status, torch.tensor(_RECOVER, device=sol.status.device)).nonzero().flatten()
            if len(rows):
                cold = self._solve(problem.select(rows).replace(horizon=self.horizon), self.first_max_iter)
                if sol.cost is None or cold.cost is None:    # a plan without its cost: replace what diverged
                    better = (sol.status[rows] == Status.NOT_FINITE) & (cold.status != Status.NOT_FINITE)
                else:
                    better = cold.cost.detach() < sol.cost.detach()[rows]
                if bool(better.any()):
                    sol = merge(sol, rows[better], cold[better])
                    recovered[rows[better]] = True
        sol.extras["recovered"] = recovered
        self._plan = sol.U.detach()
        if not batched:
            sol = sol[0]
        return sol.U[..., 0, :], sol

    def _solve(self, problem: Problem, max_iter: int) -> Solution:
        budget = {"max_iter": max_iter} if self.takes_max_iter else {}
        return self.solver(problem, **budget, **self.options)
