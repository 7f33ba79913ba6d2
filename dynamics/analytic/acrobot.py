"""Gymnasium's Acrobot-v1 dynamics ("book" variant) with a continuous torque on the second joint.

State ``(theta1, theta2, theta1_dot, theta2_dot)``; ``theta1 = 0`` hangs down.
Gymnasium steps it by one RK4 step of ``dt = 0.2`` (the default here) with torque
in {-1, 0, 1}, then wraps the angles and clips the speeds; those are not part of
the model.

Differentiable with respect to: state, control, ``m1``, ``m2``, ``l1``, ``lc1``, ``lc2``, ``I1``, ``I2``, ``g``.
"""
import torch

from ..base import ContinuousDynamics, stack_columns
from ._params import scalar_parameters


class Acrobot(ContinuousDynamics):
    """Two-link underactuated arm (Sutton and Barto's equations, as in Gymnasium)."""

    positions = (0, 1)
    default_dt = 0.2
    default_method = "rk4"

    def __init__(self, m1=1.0, m2=1.0, l1=1.0, lc1=0.5, lc2=0.5, I1=1.0, I2=1.0, g=9.8):
        super().__init__(4, 1)
        scalar_parameters(self, positive=("m1", "m2", "l1", "lc1", "lc2", "I1", "I2"), m1=m1, m2=m2, l1=l1, lc1=lc1,
                          lc2=lc2, I1=I1, I2=I2, g=g)
        if float(self.lc1.detach()) > float(self.l1.detach()):
            raise ValueError(f"Acrobot: lc1 (the distance to the first link's centre of mass) must be at most l1 "
                             f"(the link's length), got lc1={lc1!r} > l1={l1!r}")

    def _terms(self, x, u):
        """Accelerations and, as ``(..., 5)`` rows over ``(theta1, theta2, w1, w2, torque)``, their partials."""
        th1, th2, w1, w2, a = x[..., 0], x[..., 1], x[..., 2], x[..., 3], u[..., 0]
        m2, l1, lc2, I2, g = self.m2, self.l1, self.lc2, self.I2, self.g
        s2, c2, s1, c1 = torch.sin(th2), torch.cos(th2), torch.sin(th1), torch.cos(th1)
        s12, c12 = torch.sin(th1 + th2), torch.cos(th1 + th2)
        h = m2 * l1 * lc2
        k = self.m1 * self.lc1 + m2 * l1
        z = torch.zeros_like(th1)

        def row(*entries):
            return torch.stack([e + z for e in entries], -1)

        d1 = self.m1 * self.lc1 ** 2 + m2 * (l1 ** 2 + lc2 ** 2 + 2 * l1 * lc2 * c2) + self.I1 + I2
        d1_p = row(z, -2 * h * s2, z, z, z)
        d2 = m2 * (lc2 ** 2 + l1 * lc2 * c2) + I2
        d2_p = row(z, -h * s2, z, z, z)
        phi2 = m2 * lc2 * g * s12                     # cos(theta1 + theta2 - pi/2)
        phi2_p = row(m2 * lc2 * g * c12, m2 * lc2 * g * c12, z, z, z)
        phi1 = -h * w2 ** 2 * s2 - 2 * h * w2 * w1 * s2 + k * g * s1 + phi2
        phi1_p = row(k * g * c1, -h * w2 ** 2 * c2 - 2 * h * w2 * w1 * c2, -2 * h * w2 * s2,
                     -2 * h * w2 * s2 - 2 * h * w1 * s2, z) + phi2_p
        r = d2 / d1
        r_p = (d2_p * d1.unsqueeze(-1) - d2.unsqueeze(-1) * d1_p) / (d1 ** 2).unsqueeze(-1)
        num = a + r * phi1 - h * w1 ** 2 * s2 - phi2
        num_p = (r_p * phi1.unsqueeze(-1) + r.unsqueeze(-1) * phi1_p
                 + row(z, -h * w1 ** 2 * c2, -2 * h * w1 * s2, z, z + 1.0) - phi2_p)
        den = m2 * lc2 ** 2 + I2 - d2 ** 2 / d1
        den_p = -(2 * d2.unsqueeze(-1) * d2_p * d1.unsqueeze(-1) - (d2 ** 2).unsqueeze(-1) * d1_p) / (
            d1 ** 2).unsqueeze(-1)
        dd2 = num / den
        dd2_p = (num_p * den.unsqueeze(-1) - num.unsqueeze(-1) * den_p) / (den ** 2).unsqueeze(-1)
        top = d2 * dd2 + phi1
        dd1 = -top / d1
        top_p = d2_p * dd2.unsqueeze(-1) + d2.unsqueeze(-1) * dd2_p + phi1_p
        dd1_p = -top_p / d1.unsqueeze(-1) + (top / d1 ** 2).unsqueeze(-1) * d1_p
        return dd1, dd2, dd1_p, dd2_p

    def derivative(self, x, u, t=None):
        dd1, dd2, _, _ = self._terms(x, u)
        return stack_columns([x[..., 2], x[..., 3], dd1, dd2], x)

    def derivative_jacobians(self, x, u, t=None):
        _, _, dd1_p, dd2_p = self._terms(x, u)
        z, o = torch.zeros_like(x[..., 0]), torch.ones_like(x[..., 0])
        gx = torch.stack([torch.stack([z, z, o, z], -1), torch.stack([z, z, z, o], -1),
                          dd1_p[..., :4], dd2_p[..., :4]], -2)
        gu = torch.stack([z, z, dd1_p[..., 4], dd2_p[..., 4]], -1).unsqueeze(-1)
        return gx, gu
