"""Kinematic bicycle (the P4 parking problem): position, heading and steering angle, driven by speed and steering rate.

``beta = atan(lr tan(delta) / L)``, ``x' = v cos(psi + beta)``, ``y' = v sin(psi + beta)``,
``psi' = v tan(delta) cos(beta) / L``, ``delta' = delta_rate``. P4 steps it by explicit
Euler with ``dt = 0.1`` (the default here).

Differentiable with respect to: state, control, ``L`` (wheelbase), ``lr`` (rear axle to centre of mass).
Defined for ``|delta| < pi/2`` (:meth:`KinematicBicycle.domain`): a step past it returns NaN.
"""
import math

import torch

from ..base import ContinuousDynamics, stack_columns
from ._params import scalar_parameters


class KinematicBicycle(ContinuousDynamics):
    """State ``(x, y, psi, delta)``, control ``(v, delta_rate)``; parameters ``L``, ``lr``."""

    default_dt = 0.1
    default_method = "euler"

    def __init__(self, L: float = 2.5, lr: float = 1.25):
        super().__init__(4, 2)
        scalar_parameters(self, positive=("L",), nonnegative=("lr",), L=L, lr=lr)
        if float(lr) > float(L):
            raise ValueError(f"KinematicBicycle: lr (rear axle to centre of mass) must be at most L={L}, got {lr!r}")

    def _terms(self, x):
        psi, d = x[..., 2], x[..., 3]
        tan_d = torch.tan(d)
        beta = torch.atan(self.lr * tan_d / self.L)
        return psi, d, tan_d, beta

    def domain(self, x):
        """The steering angle strictly inside ``(-pi/2, pi/2)``, where ``tan`` is finite and continuous."""
        return x[..., 3].abs() < math.pi / 2

    def derivative(self, x, u, t=None):
        psi, d, tan_d, beta = self._terms(x)
        v = u[..., 0]
        return stack_columns([v * torch.cos(psi + beta), v * torch.sin(psi + beta),
                              v * tan_d * torch.cos(beta) / self.L, u[..., 1]], x)

    def derivative_jacobians(self, x, u, t=None):
        psi, d, tan_d, beta = self._terms(x)
        v = u[..., 0]
        sec2 = 1.0 + tan_d ** 2
        r = self.lr * tan_d / self.L
        beta_d = self.lr / self.L * sec2 / (1.0 + r ** 2)
        cpb, spb, cb, sb = torch.cos(psi + beta), torch.sin(psi + beta), torch.cos(beta), torch.sin(beta)
        z, o = torch.zeros_like(v), torch.ones_like(v)
        gx = torch.stack([torch.stack([z, z, -v * spb, -v * spb * beta_d], -1),
                          torch.stack([z, z, v * cpb, v * cpb * beta_d], -1),
                          torch.stack([z, z, z, v / self.L * (sec2 * cb - tan_d * sb * beta_d)], -1),
                          torch.stack([z, z, z, z], -1)], -2)
        gu = torch.stack([torch.stack([cpb, z], -1), torch.stack([spb, z], -1),
                          torch.stack([tan_d * cb / self.L, z], -1), torch.stack([z, o], -1)], -2)
        return gx, gu
