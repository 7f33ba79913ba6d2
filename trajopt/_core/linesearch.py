"""Line-search constants and the acceptance test the gradient-based solvers share."""
from __future__ import annotations

import torch

__all__ = ["ALPHAS", "ARMIJO", "ROUNDOFF", "sufficient_decrease", "rounding"]

ALPHAS = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01, 0.003, 0.001)   # step sizes tried, largest first
ARMIJO = 1e-4                                              # fraction of the predicted decrease a step must achieve
ROUNDOFF = 1e-12                                           # float64 relative cost change taken for rounding


def rounding(J: torch.Tensor) -> torch.Tensor:
    """The cost change ``(B,)`` below which ``J (B,)`` cannot tell progress from rounding: ``ROUNDOFF`` in float64,
    scaled by the dtype's precision (``eps / eps64``) otherwise, relative to ``max(|J|, 1)``."""
    scale = torch.finfo(J.dtype).eps / torch.finfo(torch.float64).eps
    return ROUNDOFF * scale * J.abs().clamp_min(1.0)


def sufficient_decrease(decrease: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """Armijo's condition: a positive ``decrease`` of at least ``ARMIJO`` times the ``predicted`` one."""
    return (decrease > 0) & (decrease >= ARMIJO * predicted)
