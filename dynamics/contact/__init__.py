"""Smoothed-contact physics: primitives with a sharpness ``k``, and models built on them."""
from .bouncing import BouncingMass, event_based_bounce
from .primitives import smooth_coulomb_friction, soft_step, softplus_penetration
from .pusher import PlanarPusher

__all__ = ["BouncingMass", "PlanarPusher", "event_based_bounce", "soft_step", "softplus_penetration",
           "smooth_coulomb_friction"]
