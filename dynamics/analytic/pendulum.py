"""Gymnasium's Pendulum-v1 (the P2 swing-up): ``theta = 0`` upright, torque input.

``theta'' = 3 g / (2 l) sin(theta) + 3 / (m l^2) u``; Pendulum-v1 steps it by
semi-implicit Euler with ``dt = 0.05`` (the default discretization here). The
environment's torque clip (2) and speed clip (8) are not part of the model.

Differentiable with respect to: state, control, ``g``, ``m``, ``l``.
"""
import torch

from ..base import ContinuousDynamics
from ._params import scalar_parameters


class Pendulum(ContinuousDynamics):
    """State ``(theta, theta_dot)``, control ``(torque,)``; parameters ``g``, ``m`` (mass), ``l`` (length)."""

    positions = (0,)
    default_dt = 0.05
    default_method = "semi_implicit_euler"

    def __init__(self, g: float = 10.0, m: float = 1.0, l: float = 1.0):
        super().__init__(2, 1)
        scalar_parameters(self, g=g, m=m, l=l)

    def derivative(self, x, u, t=None):
        th, thd = x[..., 0], x[..., 1]
        thdd = 1.5 * self.g / self.l * torch.sin(th) + 3.0 / (self.m * self.l ** 2) * u[..., 0]
        return torch.stack([thd, thdd], -1)

    def derivative_jacobians(self, x, u, t=None):
        th = x[..., 0]
        zero, one = torch.zeros_like(th), torch.ones_like(th)
        gx = torch.stack([torch.stack([zero, one], -1),
                          torch.stack([1.5 * self.g / self.l * torch.cos(th), zero], -1)], -2)
        gu = torch.stack([zero, one * (3.0 / (self.m * self.l ** 2))], -1).unsqueeze(-1)
        return gx, gu
