"""Returns for critics: TD(lambda) targets, shared by SHAC and the value-guided planner."""
from __future__ import annotations

import torch

__all__ = ["td_lambda"]


def td_lambda(rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float,
              cuts: torch.Tensor | None = None) -> torch.Tensor:
    """TD(lambda) targets ``(L, B)`` of ``L`` steps of ``B`` sequences: ``rewards (L, B)`` of each step and
    ``next_values (L, B)``, the (target) critic at each step's next state:

        G_{L-1} = r_{L-1} + gamma V_{L-1},    G_k = r_k + gamma ((1 - lam) V_k + lam G_{k+1}),

    with ``G_{k+1}`` replaced by ``V_k`` where ``cuts[k]`` (a bool ``(L - 1, B)``: step ``k + 1`` does not follow
    step ``k``, e.g. a new episode) is True. ``lam = 1`` gives the ``L``-step return bootstrapped at the end, ``lam
    = 0`` one-step TD. Differentiable like its inputs."""
    L = rewards.shape[0]
    targets = torch.empty_like(rewards)
    G = None
    for k in reversed(range(L)):
        boot = next_values[k]
        if G is not None:
            mixed = (1.0 - lam) * next_values[k] + lam * G
            boot = mixed if cuts is None else torch.where(cuts[k], next_values[k], mixed)
        G = rewards[k] + gamma * boot
        targets[k] = G
    return targets
