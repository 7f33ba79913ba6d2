"""A point mass bouncing (or hopping, with thrust) over a ground plane, with smoothed contact,
and the event-based hard-contact model it approaches.

Vertical plane, state ``(x, z, vx, vz)``, control a force ``(fx, fz)`` on the mass. The
ground pushes with a stiff spring on the smoothed penetration ``softplus(-k z) / k``
whose stiffness is ``K`` while the mass sinks in and ``e^2 K`` while it comes back out
(switched smoothly by ``soft_step`` on the vertical velocity): a spring that returns the
fraction ``e^2`` of the energy it stored sends the mass off at ``e`` times its impact
speed, whatever ``K``. As ``k`` and ``K`` grow, the bounces approach instantaneous impacts
that set ``vz <- -e vz``. Tangential contact friction is smooth Coulomb with its own
velocity sharpness ``friction_k`` (s/m); it is stiff, so an explicit step needs
``dt < 2 m / (mu N friction_k)`` at the largest normal force ``N``; the default ``mu`` is 0.

Differentiable with respect to: state, control, ``mass``, ``k``, ``stiffness``, ``restitution``, ``mu``,
``friction_k``, ``g``.
"""
import math

import torch

from ..analytic._params import scalar_parameters
from ..base import ContinuousDynamics
from ..validation import check_int, check_interval, check_nonnegative, check_positive
from .primitives import smooth_coulomb_friction, soft_step, softplus_penetration


class BouncingMass(ContinuousDynamics):
    """Parameters: ``mass > 0``, sharpness ``k > 0`` (1/m), ground ``stiffness > 0`` (N/m), ``restitution`` e in
    [0, 1], friction coefficient ``mu >= 0`` and its velocity sharpness ``friction_k > 0`` (s/m), gravity ``g``
    (any finite number), all finite (a ValueError names the one that is not)."""

    positions = (0, 1)
    default_dt = 1e-3
    default_method = "semi_implicit_euler"

    def __init__(self, k=1000.0, stiffness=1e5, restitution=0.8, mass=1.0, mu=0.0, friction_k=10.0, g=9.81):
        super().__init__(4, 2)
        scalar_parameters(self, positive=("k", "stiffness", "mass", "friction_k"), nonnegative=("mu",),
                          fraction=("restitution",), k=k, stiffness=stiffness, restitution=restitution, mass=mass,
                          mu=mu, friction_k=friction_k, g=g)

    def derivative(self, x, u, t=None):
        z, vx, vz = x[..., 1], x[..., 2], x[..., 3]
        in_contact = soft_step(-z, self.k)
        e2 = self.restitution ** 2
        stiffness = self.stiffness * (e2 + (1 - e2) * soft_step(-vz, self.k))
        normal = stiffness * softplus_penetration(z, self.k)
        friction = smooth_coulomb_friction(vx.unsqueeze(-1), normal * in_contact, self.mu, self.friction_k)[..., 0]
        ax = (u[..., 0] + friction) / self.mass
        az = (u[..., 1] + normal) / self.mass - self.g
        return torch.stack([vx, vz, ax, az], -1)


def event_based_bounce(z0: float, vz0: float, restitution: float, g: float = 9.81, bounces: int = 3):
    """Apex heights of the hard-contact model: ballistic flight, impacts that set ``vz <- -e vz`` at ``z = 0``.

    Returns a list of ``bounces`` apex heights after successive impacts (closed form, no time stepping).
    ``z0 >= 0`` (at or above the ground) and ``vz0`` are finite numbers, ``restitution`` is in ``[0, 1]``, ``g > 0``
    finite and ``bounces`` an int ``>= 0``; a ValueError names the argument that is not.
    """
    where = "event_based_bounce"
    check_nonnegative(where, z0=z0)
    check_interval(where, -math.inf, math.inf, include_low=False, include_high=False, vz0=vz0)
    check_interval(where, 0, 1, restitution=restitution)
    check_positive(where, g=g)
    check_int(where, minimum=0, bounces=bounces)
    v_impact = math.sqrt(vz0 ** 2 + 2 * g * z0)
    apexes = []
    for _ in range(bounces):
        v_impact *= restitution
        apexes.append(v_impact ** 2 / (2 * g))
    return apexes
