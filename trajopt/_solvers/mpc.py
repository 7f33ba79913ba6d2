"""Receding-horizon control as a differentiable layer.

:class:`MPC` solves a finite-horizon problem from the current state with :func:`trajopt.ilqr`
(or :func:`trajopt.ddp`, or a sampling solver such as :func:`trajopt.mppi`), warm-started from the previous plan shifted by one step, under a
fixed iteration budget, and returns the first control and the plan. Gradients flow from the
returned control and plan to the state and to every tensor of the model and the cost that
requires grad, by the solver's ``grad`` route.
"""
from __future__ import annotations

import torch
from torch import nn

from dynamics import Dynamics
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .ilqr import ilqr
from .._core.problem import Problem, Solution, Status, solver

__all__ = ["MPC"]


class MPC(nn.Module):
    """Model-predictive control by box-constrained iLQR/DDP, as an ``nn.Module``.

    Args:
        dynamics: a discrete :class:`dynamics.Dynamics` (a submodule: its parameters are this module's).
        cost: a time-invariant :class:`trajopt.Cost` over the horizon (a submodule too).
        horizon: ``T``, the number of planned controls.
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)``, or None.
        max_iter: iteration budget of each solve (the first solve from scratch may want more: see
            ``first_max_iter``).
        first_max_iter: budget of a solve with no plan to warm-start from (default ``max_iter``).
        grad: the solver's gradient route, ``"implicit"`` (default), ``"unroll"`` or None.
        second_order: use DDP's Newton steps.
        solver: None for :func:`trajopt.ilqr` (with ``max_iter``, ``grad`` and ``second_order`` above), or
            another solver of the same call signature, e.g. ``functools.partial(trajopt.mppi, samples=1000)``
            or :func:`trajopt.cem`; it is called as ``solver(dynamics, cost, x, U_init, horizon=T,
            u_lower=..., u_upper=..., **options)`` and its own options set its budget.
        **options: further keyword arguments of the solver (for iLQR ``grad_tol``, ``tol``, ``mu_init``, ...).

    Calling it on states ``x (B, n)`` returns ``(u (B, m), plan)`` with ``plan`` the :class:`Solution` of
    the solve; the next call warm-starts from ``plan.U`` shifted by one step (the last control repeated)
    when the batch size is unchanged. :meth:`reset` forgets the plan (call it at an episode's start).
    """

    def __init__(self, dynamics: Dynamics, cost: Cost, horizon: int, *, u_lower=None, u_upper=None,
                 max_iter: int = 10, first_max_iter: int | None = None, grad: str | None = "implicit",
                 second_order: bool = False, solver=None, **options):
        super().__init__()
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"MPC: dynamics must be a dynamics.Dynamics, got {type(dynamics).__name__}")
        if not isinstance(cost, Cost):
            raise TypeError(f"MPC: cost must be a trajopt.Cost, got {type(cost).__name__}")
        if cost.time_varying:
            raise ValueError("MPC: the cost must be time-invariant (the horizon recedes)")
        if int(horizon) < 1 or int(max_iter) < 1:
            raise ValueError(f"MPC: horizon and max_iter must be positive, got {horizon} and {max_iter}")
        self.dynamics, self.cost, self.horizon = dynamics, cost, int(horizon)
        self.u_lower, self.u_upper = u_lower, u_upper
        self.max_iter = int(max_iter)
        self.first_max_iter = self.max_iter if first_max_iter is None else int(first_max_iter)
        self.solver = solver
        self.options = dict(options) if solver is not None else dict(grad=grad, second_order=second_order, **options)
        self._plan: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the previous plan: the next solve starts from zero controls (or the ``U_init`` given)."""
        self._plan = None

    def forward(self, x: torch.Tensor, U_init: torch.Tensor | None = None) -> tuple[torch.Tensor, Solution]:
        """First control ``(B, m)`` (or ``(m,)``) and the plan's :class:`Solution` from states ``x (B, n)``.

        ``U_init (B, T, m)`` overrides the warm start.
        """
        warm = U_init is None and self._plan is not None and self._plan.shape[:-2] == x.shape[:-1]
        if warm:
            U_init = torch.cat([self._plan[..., 1:, :], self._plan[..., -1:, :]], -2)
        if self.solver is None:
            sol = ilqr(self.dynamics, self.cost, x, U_init, horizon=self.horizon, u_lower=self.u_lower,
                       u_upper=self.u_upper, max_iter=self.max_iter if warm else self.first_max_iter, **self.options)
        else:
            sol = self.solver(self.dynamics, self.cost, x, U_init, horizon=self.horizon, u_lower=self.u_lower,
                              u_upper=self.u_upper, **self.options)
        self._plan = sol.U.detach()
        return sol.U[..., 0, :], sol
