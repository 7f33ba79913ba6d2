"""The result type every solver returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Solution:
    """A batch of solved trajectory-optimization problems.

    Shapes are batch first; an unbatched problem gives unbatched fields (no ``B``). ``X`` and ``cost`` are None
    only when a sampling solver was told not to roll out its final plan (``rollout_plan=False``).

    Attributes:
        X: states ``(B, T+1, n)``, ``X[:, 0]`` is the initial state.
        U: controls ``(B, T, m)``.
        cost: objective value of each problem ``(B,)``.
        converged: ``(B,)`` bool, whether each problem met its stopping test.
        iterations: iterations the solver ran (1 for a direct solve such as LQR).
        K: feedback gains ``(B, T, m, n)`` where the solver computes them, else None.
        k: feedforward terms ``(B, T, m)``, so that ``U[:, t] = K[:, t] @ X[:, t] + k[:, t]``.
        history: per-iteration diagnostics where the solver records them.
    """

    X: torch.Tensor | None
    U: torch.Tensor
    cost: torch.Tensor | None
    converged: torch.Tensor
    iterations: int
    K: torch.Tensor | None = None
    k: torch.Tensor | None = None
    history: dict = field(default_factory=dict)
