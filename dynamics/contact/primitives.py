"""Smooth contact primitives: each replaces a discontinuity by a smooth function whose sharpness is ``k``.

As ``k`` grows each tends to its hard counterpart (a step, a one-sided penalty, Coulomb
friction); for moderate ``k`` their derivatives are finite everywhere, which is what
gradient-based trajectory optimization and policy learning need through contact
(the smoothed-contact idea of the source notes; see also Pang et al. 2023).
All are element-wise and differentiable in every argument, ``k`` included.
"""
import torch

__all__ = ["soft_step", "softplus_penetration", "smooth_coulomb_friction"]


def soft_step(d: torch.Tensor, k) -> torch.Tensor:
    """``1/2 + 1/2 tanh(k d)``: tends to the Heaviside step ``H(d)`` as ``k -> inf``."""
    return 0.5 + 0.5 * torch.tanh(k * d)


def softplus_penetration(d: torch.Tensor, k) -> torch.Tensor:
    """``softplus(-k d) / k``: tends to the penetration depth ``max(0, -d)`` of a signed distance ``d``.

    Its error is at most ``log(2) / k`` (at ``d = 0``); multiply by a stiffness for a penalty force.
    """
    return torch.nn.functional.softplus(-k * d) / k


def smooth_coulomb_friction(v: torch.Tensor, normal_force: torch.Tensor, mu, k) -> torch.Tensor:
    """Friction force opposing the sliding velocity ``v (..., dim)``: ``-mu N v / sqrt(|v|^2 + 1/k^2)``.

    Tends to Coulomb's ``-mu N v / |v|`` (and zero at rest) as ``k -> inf``; ``normal_force`` is ``(...)``.
    """
    speed = torch.sqrt((v * v).sum(-1, keepdim=True) + 1.0 / k ** 2)
    return -mu * normal_force.unsqueeze(-1) * v / speed
