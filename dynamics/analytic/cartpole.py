"""The classic cart-pole (Barto et al. 1983; Gymnasium's CartPole-v1 equations) with a continuous force.

State ``(p, p_dot, theta, theta_dot)`` with ``theta = 0`` upright, control the
force on the cart. ``l`` is the pole's half-length, as in Gymnasium. P3 steps it
by explicit Euler with ``dt = 0.05`` (the default here); Gymnasium uses 0.02.

Differentiable with respect to: state, control, ``mc``, ``mp``, ``l``, ``g``.
"""
import torch

from ..base import ContinuousDynamics, stack_columns
from ._params import scalar_parameters


class CartPole(ContinuousDynamics):
    """Parameters ``mc`` (cart mass), ``mp`` (pole mass), ``l`` (half-length), ``g``."""

    positions = (0, 2)
    default_dt = 0.05
    default_method = "euler"
    fused_methods = ("euler",)

    def __init__(self, mc: float = 1.0, mp: float = 0.1, l: float = 0.5, g: float = 9.8):
        super().__init__(4, 1)
        scalar_parameters(self, positive=("mc", "mp", "l"), mc=mc, mp=mp, l=l, g=g)

    def _terms(self, x, u):
        thd, th, force = x[..., 3], x[..., 2], u[..., 0]
        s, c = torch.sin(th), torch.cos(th)
        M = self.mc + self.mp
        temp = (force + self.mp * self.l * thd ** 2 * s) / M
        den = self.l * (4.0 / 3.0 - self.mp * c ** 2 / M)
        thdd = (self.g * s - c * temp) / den
        pdd = temp - self.mp * self.l * thdd * c / M
        return s, c, M, temp, den, thdd, pdd

    def fused_step(self, x, u, dt, t=None):
        """P3's explicit Euler step in closed form (a third of the generic step's tensor operations)."""
        thd, th = x[..., 3], x[..., 2]
        s, c = torch.sin(th), torch.cos(th)
        inv_M = 1.0 / (self.mc + self.mp)
        ml = self.mp * self.l
        # the constants in x's dtype at once: mixing 0-dim float64 parameters into float32 costs a cast per use
        inv_M, ml, ml_M, g, l43 = torch.stack([inv_M, ml, ml * inv_M, self.g, self.l * (4.0 / 3.0)]).to(x.dtype)
        temp = (u[..., 0] + ml * thd * thd * s) * inv_M
        thdd = (g * s - c * temp) / (l43 - ml_M * c * c)
        pdd = temp - ml_M * thdd * c
        return torch.add(x, stack_columns([x[..., 1], pdd, thd, thdd], x), alpha=dt)

    def derivative(self, x, u, t=None):
        *_, thdd, pdd = self._terms(x, u)
        return stack_columns([x[..., 1], pdd, x[..., 3], thdd], x)

    def derivative_jacobians(self, x, u, t=None):
        s, c, M, temp, den, thdd, pdd = self._terms(x, u)
        thd = x[..., 3]
        ml = self.mp * self.l
        temp_th, temp_thd, temp_f = ml * thd ** 2 * c / M, 2 * ml * thd * s / M, 1.0 / M
        den_th = self.l * 2 * self.mp * c * s / M
        num = self.g * s - c * temp
        num_th = self.g * c + s * temp - c * temp_th
        thdd_th = (num_th * den - num * den_th) / den ** 2
        thdd_thd = -c * temp_thd / den
        thdd_f = -c * temp_f / den
        pdd_th = temp_th - ml / M * (thdd_th * c - thdd * s)
        pdd_thd = temp_thd - ml / M * c * thdd_thd
        pdd_f = temp_f - ml / M * c * thdd_f
        z, o = torch.zeros_like(thd), torch.ones_like(thd)
        gx = torch.stack([torch.stack([z, o, z, z], -1),
                          torch.stack([z, z, pdd_th, pdd_thd], -1),
                          torch.stack([z, z, z, o], -1),
                          torch.stack([z, z, thdd_th, thdd_thd], -1)], -2)
        gu = torch.stack([z, pdd_f * o, z, thdd_f * o], -1).unsqueeze(-1)
        return gx, gu
