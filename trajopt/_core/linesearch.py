"""Line-search constants and the acceptance test the gradient-based solvers share."""
from __future__ import annotations

import torch

__all__ = ["ALPHAS", "ARMIJO", "ROUNDOFF", "sufficient_decrease", "rounding"]

ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001)   # step sizes tried, largest first
ARMIJO = 1e-4                                              # fraction of the predicted decrease a step must achieve
ROUNDOFF = 1e-12                                           # float64 relative cost change taken for rounding


def rounding(J: torch.Tensor, guarded: bool = True) -> torch.Tensor:
    """The cost change ``(B,)`` below which ``J (B,)`` cannot tell progress from rounding: ``ROUNDOFF`` in float64,
    relative to ``max(|J|, 1)``, and scaled to the dtype's precision otherwise.

    The band is also how much a step judged below rounding may raise the cost. A ``guarded`` caller accepts such a
    step only if an optimality residual decreases too (single shooting): the band scales with ``eps / eps64``
    (5.4e-4 in float32). An unguarded one (iLQR, whose steps below rounding the cost alone judges) gets
    ``(eps / eps64)^(2/3)`` (6.6e-7 in float32): the linear band, thousands of float32 eps, let float32 iLQR accept
    real increases and wander off an optimum it had reached (docs/ilqr.md gives the measurements)."""
    scale = torch.finfo(J.dtype).eps / torch.finfo(torch.float64).eps
    return ROUNDOFF * (scale if guarded else scale ** (2 / 3)) * J.abs().clamp_min(1.0)


def sufficient_decrease(decrease: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Armijo's condition: a positive ``decrease`` of at least ``ARMIJO`` times the ``predicted`` one."""
    return (decrease > 0) & (decrease >= ARMIJO * predicted)
