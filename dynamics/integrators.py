"""Fixed-step integrators that turn ``dx/dt = g(x, u, t)`` into a discrete step.

Each takes the vector field ``g``, batched ``x (B, n)``, ``u (B, m)`` (held
constant over the step), the step ``dt`` and the stage index ``t``, and returns
``x_next (B, n)``. All are differentiable with respect to their inputs and to
whatever ``g`` closes over.
"""
from __future__ import annotations

import torch

__all__ = ["euler", "semi_implicit_euler", "rk4", "METHODS"]


def euler(g, x, u, dt, t=None):
    """Explicit Euler: ``x + dt g(x, u)``. First order."""
    return x + dt * g(x, u, t)


def semi_implicit_euler(g, x, u, dt, positions: torch.Tensor, t=None):
    """Semi-implicit (symplectic) Euler: velocities first, then positions with the new velocities.

    ``positions (n,)`` is a bool mask of the position coordinates; the others are
    velocities. With ``q' = v``, ``v' = a(q, v, u)`` this is
    ``v+ = v + dt a(q, v, u)``, ``q+ = q + dt v+`` (Gymnasium's Pendulum-v1 step).
    The vector field is evaluated twice, so any kinematics ``q' = h(q, v)`` works.
    """
    velocities_updated = torch.where(positions, x, x + dt * g(x, u, t))
    return torch.where(positions, x + dt * g(velocities_updated, u, t), velocities_updated)


def rk4(g, x, u, dt, t=None):
    """Classic fourth-order Runge-Kutta with the control held over the step."""
    k1 = g(x, u, t)
    k2 = g(x + 0.5 * dt * k1, u, t)
    k3 = g(x + 0.5 * dt * k2, u, t)
    k4 = g(x + dt * k3, u, t)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


METHODS = {"euler": euler, "semi_implicit_euler": semi_implicit_euler, "rk4": rk4}
