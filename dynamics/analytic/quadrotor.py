"""Planar quadrotor: two rotors at distance ``arm`` from the centre, thrusts ``(T1, T2)``.

``x'' = -(T1 + T2) sin(theta) / m``, ``z'' = (T1 + T2) cos(theta) / m - g``,
``theta'' = arm (T1 - T2) / inertia``; hovering needs ``T1 = T2 = m g / 2``.

Differentiable with respect to: state, control, ``m``, ``arm``, ``inertia``, ``g``.
"""
import torch

from ..base import ContinuousDynamics, stack_columns
from ._params import scalar_parameters


class Quadrotor2D(ContinuousDynamics):
    """State ``(x, z, theta, x_dot, z_dot, theta_dot)``, control ``(T1, T2)``."""

    positions = (0, 1, 2)
    default_dt = 0.05
    default_method = "rk4"

    def __init__(self, m: float = 1.0, arm: float = 0.25, inertia: float = 0.0125, g: float = 9.81):
        super().__init__(6, 2)
        scalar_parameters(self, positive=("m", "arm", "inertia"), m=m, arm=arm, inertia=inertia, g=g)

    def derivative(self, x, u, t=None):
        th = x[..., 2]
        thrust = u[..., 0] + u[..., 1]
        return stack_columns([x[..., 3], x[..., 4], x[..., 5],
                              -thrust * torch.sin(th) / self.m, thrust * torch.cos(th) / self.m - self.g,
                              self.arm * (u[..., 0] - u[..., 1]) / self.inertia], x)

    def derivative_jacobians(self, x, u, t=None):
        th = x[..., 2]
        s, c = torch.sin(th), torch.cos(th)
        thrust = u[..., 0] + u[..., 1]
        z, o = torch.zeros_like(th), torch.ones_like(th)
        gx = torch.stack([torch.stack([z, z, z, o, z, z], -1),
                          torch.stack([z, z, z, z, o, z], -1),
                          torch.stack([z, z, z, z, z, o], -1),
                          torch.stack([z, z, -thrust * c / self.m, z, z, z], -1),
                          torch.stack([z, z, -thrust * s / self.m, z, z, z], -1),
                          torch.stack([z, z, z, z, z, z], -1)], -2)
        a = self.arm / self.inertia * o
        gu = torch.stack([torch.stack([z, z], -1), torch.stack([z, z], -1), torch.stack([z, z], -1),
                          torch.stack([-s / self.m, -s / self.m], -1), torch.stack([c / self.m, c / self.m], -1),
                          torch.stack([a, -a], -1)], -2)
        return gx, gu
