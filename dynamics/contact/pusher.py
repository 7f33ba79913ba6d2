"""A planar pusher: a round finger, driven by its velocity, pushes a square box that slides on the table.

Top view, state ``(finger_x, finger_y, box_x, box_y, box_vx, box_vy)``, control the
finger's velocity ``(ux, uy)``. The box keeps its orientation (axis-aligned, half-width
``half_width``). Its signed distance to the finger is smoothed with the same sharpness ``k``
(a log-sum-exp over the two axes, a smooth absolute value), the contact force is a stiff
spring on ``softplus_penetration`` along that distance's gradient, with a damper on the
rate of penetration (ratio ``damping_ratio`` of critical, gated by ``soft_step``), and the table resists
sliding with smooth Coulomb friction ``mu m g`` of velocity sharpness ``friction_k`` (s/m;
stiff: an explicit step needs ``dt < 2 / (mu g friction_k)``). As ``k`` grows the contact
becomes the hard one: no force until the finger touches the box, and a penetration of only ``F / K``.

Differentiable with respect to: state, control and every parameter.
"""
import torch

from ..analytic._params import scalar_parameters
from ..base import ContinuousDynamics
from ..validation import check_consistent
from .primitives import smooth_coulomb_friction, soft_step, softplus_penetration


class PlanarPusher(ContinuousDynamics):
    """Parameters: sharpness ``k`` (1/m), contact ``stiffness`` (N/m) and ``damping_ratio``, box ``mass``,
    table friction ``mu`` and ``friction_k`` (s/m), box half-width ``half_width``, finger ``radius``, gravity ``g``:
    finite numbers, ``damping_ratio`` and ``mu`` ``>= 0``, ``g`` of any sign and the others ``> 0`` (a ValueError
    names the one that is not)."""

    positions = (0, 1, 2, 3)
    default_dt = 0.01
    default_method = "semi_implicit_euler"

    def __init__(self, k=200.0, stiffness=1000.0, damping_ratio=1.0, mass=1.0, mu=0.3, friction_k=20.0,
                 half_width=0.1, radius=0.02, g=9.81):
        super().__init__(6, 2)
        scalar_parameters(self, positive=("k", "stiffness", "mass", "friction_k", "half_width", "radius"),
                          nonnegative=("damping_ratio", "mu"), k=k, stiffness=stiffness, damping_ratio=damping_ratio,
                          mass=mass, mu=mu, friction_k=friction_k, half_width=half_width, radius=radius, g=g)

    def signed_distance(self, finger: torch.Tensor, box: torch.Tensor):
        """Smoothed distance from the finger's centre to the box's surface ``(...)``, and its gradient
        in the finger's position ``(..., 2)`` (the outward normal of the box).

        ``finger`` and ``box`` are float tensors ``(..., 2)`` of positions, of one dtype and device and broadcastable
        batch shapes (a TypeError or ValueError names the one that is not; the values are not scanned)."""
        where = "PlanarPusher.signed_distance"
        for name, value in (("finger", finger), ("box", box)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a float torch.Tensor (..., 2), got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{where}: {name} must be a float tensor, got {value.dtype}")
            if value.ndim < 1 or value.shape[-1] != 2:
                raise ValueError(f"{where}: {name} must have shape (..., 2), got {tuple(value.shape)}")
        check_consistent(where, {"finger": finger, "box": box}, {"finger": finger.ndim, "box": box.ndim})
        try:
            torch.broadcast_shapes(finger.shape, box.shape)
        except RuntimeError:
            raise ValueError(f"{where}: finger {tuple(finger.shape)} and box {tuple(box.shape)} do not broadcast"
                             ) from None
        d = finger - box
        smooth_abs = torch.sqrt(d * d + 1.0 / self.k ** 2)
        q = smooth_abs - self.half_width
        dist = torch.logsumexp(self.k * q, -1) / self.k
        normal = torch.softmax(self.k * q, -1) * d / smooth_abs
        return dist, normal

    def derivative(self, x, u, t=None):
        finger, box, v = x[..., 0:2], x[..., 2:4], x[..., 4:6]
        dist, normal = self.signed_distance(finger, box)
        gap = dist - self.radius
        closing = -(normal * (u - v)).sum(-1)                     # rate of penetration
        damping = 2 * self.damping_ratio * torch.sqrt(self.stiffness * self.mass)
        push = self.stiffness * softplus_penetration(gap, self.k) + damping * closing * soft_step(-gap, self.k)
        weight = self.mass * self.g
        friction = smooth_coulomb_friction(v, torch.zeros_like(push) + weight, self.mu, self.friction_k)
        accel = (-push.unsqueeze(-1) * normal + friction) / self.mass
        return torch.cat([u, v, accel], -1)
