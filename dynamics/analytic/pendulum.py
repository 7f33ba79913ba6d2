"""Gymnasium's Pendulum-v1 (the P2 swing-up): ``theta = 0`` upright, torque input.

``theta'' = 3 g / (2 l) sin(theta) + 3 / (m l^2) u``; Pendulum-v1 steps it by
semi-implicit Euler with ``dt = 0.05`` (the default discretization here). The
environment's torque clip (2) and speed clip (8) are not part of the model.

Differentiable with respect to: state, control, ``g``, ``m``, ``l``.
"""
import torch

from ..base import ContinuousDynamics, stack_columns
from ._params import scalar_parameters


class Pendulum(ContinuousDynamics):
    """State ``(theta, theta_dot)``, control ``(torque,)``; parameters ``g``, ``m`` (mass), ``l`` (length)."""

    positions = (0,)
    default_dt = 0.05
    default_method = "semi_implicit_euler"
    fused_methods = ("semi_implicit_euler",)

    def __init__(self, g: float = 10.0, m: float = 1.0, l: float = 1.0):
        super().__init__(2, 1)
        scalar_parameters(self, positive=("m", "l"), g=g, m=m, l=l)

    def _acceleration(self, x, u):
        return torch.addcmul(torch.sin(x[..., 0]) * (1.5 * self.g / self.l), u[..., 0], 3.0 / (self.m * self.l ** 2))

    def derivative(self, x, u, t=None):
        return stack_columns([x[..., 1], self._acceleration(x, u)], x)

    def fused_step(self, x, u, dt, t=None):
        """Pendulum-v1's step: ``thd+ = thd + dt thdd``, ``th+ = th + dt thd+``."""
        thd = torch.add(x[..., 1], self._acceleration(x, u), alpha=dt)
        return stack_columns([torch.add(x[..., 0], thd, alpha=dt), thd], x)
