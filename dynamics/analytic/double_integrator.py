"""Double integrator in any dimension: ``q'' = u / mass``.

Differentiable with respect to: state, control, ``mass``.
"""
import torch

from ..base import ContinuousDynamics
from ..validation import check_int
from ._params import scalar_parameters


class DoubleIntegrator(ContinuousDynamics):
    """State ``(q (dim), q_dot (dim))``, control ``u (dim)``; parameter ``mass``."""

    default_dt = 0.1
    default_method = "semi_implicit_euler"

    def __init__(self, dim: int = 1, mass: float = 1.0):
        check_int("DoubleIntegrator", dim=dim)
        super().__init__(2 * dim, dim)
        self.dim = int(dim)
        self.positions = tuple(range(dim))
        scalar_parameters(self, positive=("mass",), mass=mass)

    def derivative(self, x, u, t=None):
        return torch.cat([x[..., self.dim:], u / self.mass], -1)

    def derivative_jacobians(self, x, u, t=None):
        d, batch = self.dim, x.shape[:-1]
        eye = torch.eye(d, dtype=x.dtype, device=x.device)
        zero = torch.zeros(d, d, dtype=x.dtype, device=x.device)
        gx = torch.cat([torch.cat([zero, eye], -1), torch.cat([zero, zero], -1)], -2)
        gu = torch.cat([zero, eye / self.mass], -2)
        return gx.expand(*batch, 2 * d, 2 * d), gu.expand(*batch, 2 * d, d)
