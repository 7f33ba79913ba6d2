"""Fixed-step integrators that turn ``dx/dt = g(x, u, t)`` into a discrete step, and the step's Jacobians.

Each step takes the vector field ``g``, batched ``x (B, n)``, ``u (B, m)`` (held
constant over the step), the step ``dt`` and the stage index ``t``, and returns
``x_next (B, n)``; each ``*_jacobians`` also takes ``jac(x, u, t) -> (g_x, g_u)``
and returns ``(A (B, n, n), B (B, n, m))`` of the step by the chain rule through
its stages (closed-form whenever ``jac`` is). All are differentiable with respect
to their inputs and to whatever ``g`` closes over. The public functions check their arguments (a TypeError or
ValueError names the one that is wrong); :data:`METHODS`, what the models' discretizations call, holds the same
functions unchecked.
"""
from __future__ import annotations

import functools

import torch

from .validation import check_callable, check_consistent, check_outputs, check_positive, check_tensor

__all__ = ["euler", "semi_implicit_euler", "rk4", "euler_jacobians", "semi_implicit_euler_jacobians",
           "rk4_jacobians", "METHODS"]


def _eye(x):
    return torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)


def _euler(g, x, u, dt, t=None, positions=None):
    """Explicit Euler: ``x + dt g(x, u)``. First order."""
    return torch.add(x, g(x, u, t), alpha=dt)


def _euler_jacobians(g, jac, x, u, dt, t=None, positions=None):
    gx, gu = jac(x, u, t)
    return _eye(x) + dt * gx, dt * gu


def _semi_implicit_euler(g, x, u, dt, t=None, positions: torch.Tensor = None):
    """Semi-implicit (symplectic) Euler: velocities first, then positions with the new velocities.

    ``positions (n,)`` is a bool mask of the position coordinates; the others are
    velocities. With ``q' = v``, ``v' = a(q, v, u)`` this is
    ``v+ = v + dt a(q, v, u)``, ``q+ = q + dt v+`` (Gymnasium's Pendulum-v1 step).
    The vector field is evaluated twice, so any kinematics ``q' = h(q, v)`` works.
    """
    y = torch.where(positions, x, torch.add(x, g(x, u, t), alpha=dt))
    return torch.where(positions, torch.add(x, g(y, u, t), alpha=dt), y)


def _semi_implicit_euler_jacobians(g, jac, x, u, dt, t=None, positions: torch.Tensor = None):
    """The chain rule through the two stages, selecting the rows each stage leaves alone instead of multiplying
    them by zero (or by an identity row): the positions' derivative at ``x`` and the velocities' at the
    intermediate ``y`` are not part of the step, and the second stage passes the velocities through, so a NaN or
    Inf in any of these (a kinematics or an acceleration whose derivative is undefined there) reaches only the
    rows that depend on it (``0 * inf`` is NaN). The products, and so the rounding, are those of the plain chain
    rule."""
    p = positions.unsqueeze(-1)                       # (n, 1) selects position rows
    eye = _eye(x)
    gx, gu = jac(x, u, t)
    y = torch.where(positions, x, x + dt * g(x, u, t))
    dy_dx, dy_du = torch.where(p, eye, eye + dt * gx), torch.where(p, 0.0, dt * gu)    # velocities: v + dt a(x)
    hx, hu = jac(y, u, t)
    M = eye + dt * hx                                 # its position rows: positions q + dt h(y)
    return torch.where(p, M @ dy_dx, dy_dx), torch.where(p, M @ dy_du + dt * hu, dy_du)


def _rk4(g, x, u, dt, t=None, positions=None):
    """Classic fourth-order Runge-Kutta with the control held over the step."""
    k1 = g(x, u, t)
    k2 = g(torch.add(x, k1, alpha=0.5 * dt), u, t)
    k3 = g(torch.add(x, k2, alpha=0.5 * dt), u, t)
    k4 = g(torch.add(x, k3, alpha=dt), u, t)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _rk4_jacobians(g, jac, x, u, dt, t=None, positions=None):
    eye = _eye(x)
    ks, dk_dx, dk_du = [], [], []
    for c in (0.0, 0.5, 0.5, 1.0):
        if ks:
            xi = x + c * dt * ks[-1]
            dxi_dx, dxi_du = eye + c * dt * dk_dx[-1], c * dt * dk_du[-1]
        else:
            xi, dxi_dx, dxi_du = x, eye, None
        gx, gu = jac(xi, u, t)
        ks.append(g(xi, u, t) if c < 1.0 else None)
        dk_dx.append(gx @ dxi_dx)
        dk_du.append(gu if dxi_du is None else gx @ dxi_du + gu)
    w = (1.0, 2.0, 2.0, 1.0)
    A = eye + dt / 6.0 * sum(wi * d for wi, d in zip(w, dk_dx))
    B = dt / 6.0 * sum(wi * d for wi, d in zip(w, dk_du))
    return A, B


def _checked_jac(where, jac):
    """``jac`` whose outputs must be ``(g_x (B, n, n), g_u (B, n, m))`` of its inputs' dtype, or a TypeError or
    ValueError names ``jac`` (:func:`~dynamics.validation.check_outputs`)."""
    def checked(x, u, t):
        out = jac(x, u, t)
        n, batch = x.shape[-1], x.shape[:-1]
        check_outputs(f"{where}: jac", out, [(*batch, n, n), (*batch, n, u.shape[-1])], x, ("g_x", "g_u"))
        return out
    return checked


def _checked(fn, jacobians):
    """``fn`` (a step, or its Jacobians when ``jacobians``) behind a check of its arguments, naming the one that is
    wrong: ``g`` (and ``jac``) callable, ``x (B, n)`` and ``u (B, m)`` (or unbatched) float tensors of one dtype,
    device and batch, ``dt`` a finite positive number, ``positions`` (where the method uses it) a bool mask ``(n,)``.
    The models' own discretizations call the unchecked functions of :data:`METHODS` (their inputs are checked
    once, by the model call)."""
    where = fn.__name__.lstrip("_")

    @functools.wraps(fn)
    def wrapper(g, *args, t=None, positions=None):
        if jacobians:
            if len(args) != 4:
                raise TypeError(f"{where}(g, jac, x, u, dt, t=None, positions=None) takes 5 positional arguments, "
                                f"got {1 + len(args)}")
            jac, x, u, dt = args
            check_callable(where, jac=jac)
            args = (_checked_jac(where, jac), x, u, dt)
        else:
            if len(args) != 3:
                raise TypeError(f"{where}(g, x, u, dt, t=None, positions=None) takes 4 positional arguments, got "
                                f"{1 + len(args)}")
            x, u, dt = args
        check_callable(where, g=g)
        dims = {}
        check_tensor(where, "x", x, ("n",), dims, finite=False)
        check_tensor(where, "u", u, ("m",), dims, finite=False)
        check_consistent(where, {"x": x, "u": u}, {"x": 1, "u": 1})
        check_positive(where, dt=dt)
        if "semi_implicit" in where and not (isinstance(positions, torch.Tensor) and positions.dtype == torch.bool
                                             and positions.shape == (dims["n"],)):
            raise TypeError(f"{where}: positions must be a bool tensor ({dims['n']},) marking the position "
                            f"coordinates, got {positions!r}")
        return fn(g, *args, t, positions)
    return wrapper


euler, semi_implicit_euler, rk4 = (_checked(f, False) for f in (_euler, _semi_implicit_euler, _rk4))
euler_jacobians, semi_implicit_euler_jacobians, rk4_jacobians = (
    _checked(f, True) for f in (_euler_jacobians, _semi_implicit_euler_jacobians, _rk4_jacobians))

# the models' dispatch table: unchecked (a model call checks its inputs once)
METHODS = {
    "euler": (_euler, _euler_jacobians),
    "semi_implicit_euler": (_semi_implicit_euler, _semi_implicit_euler_jacobians),
    "rk4": (_rk4, _rk4_jacobians),
}
