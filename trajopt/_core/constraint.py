"""Inequality constraints ``g(x_t, u_t, t) <= 0`` and ``h(x_T) <= 0``, part of a :class:`~trajopt.Problem`."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .stages import over_stages

__all__ = ["Constraint", "FunctionConstraint"]


class Constraint(nn.Module):
    """Inequality constraints ``stage(x_t, u_t, t) <= 0`` at the stages ``t < T`` and ``terminal(x_T) <= 0``.

    Subclasses override :meth:`stage` and/or :meth:`terminal` for batched inputs; each returns one
    value per constraint, ``(N, k)`` (``k`` may be zero: the default of both methods is no
    constraint). ``time_varying = True`` means :meth:`stage` looks at the stage index ``t``;
    otherwise all stages are evaluated in one call on ``N = B T`` rows. Like a cost, a constraint
    is shared by every problem of a batch. The solvers differentiate it twice by batched autograd,
    so write it with differentiable torch operations, row by row: row ``r`` of the output must
    depend on row ``r`` of ``x`` and ``u`` alone (no reductions over the batch).

    A plain callable ``g(x (N, n), u (N, m)) -> (N, k)`` given as a problem's ``constraint`` is taken
    as a stage constraint that does not depend on ``t``.
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
        return self.stages(X[:, :-1], U), self.terminal(X[:, -1])

    def stages(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Stage values ``(B, T, k)`` of the stage states ``X (B, T, n)`` and controls ``U (B, T, m)``."""
        return over_stages(self.stage, self, X, U)


class FunctionConstraint(Constraint):
    """A stage constraint given as a plain callable ``g(x, u) -> (N, k)``."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def stage(self, x, u, t=None):
        return self.fn(x, u)
