"""Smooth contact primitives: each replaces a discontinuity by a smooth function whose sharpness is ``k``.

As ``k`` grows each tends to its hard counterpart (a step, a one-sided penalty, Coulomb
friction); for moderate ``k`` their derivatives are finite everywhere, which is what
gradient-based trajectory optimization and policy learning need through contact
(the smoothed-contact idea of the source notes; see also Pang et al. 2023).
All are element-wise and differentiable in every argument, ``k`` included.

Inputs: the distances and velocities are float tensors; each constant (``k``, ``mu``) is a finite number
(``k > 0``, ``mu >= 0``) or a float tensor broadcastable against them (a model's learnable parameter, say).
A TypeError or ValueError names the argument that is not. These run inside models' vector fields, at every
stage of every step, so tensors are checked by dtype and shape only, never scanned: a tensor constant out of
its range (check it once where it is made, as :class:`~dynamics.contact.BouncingMass` does) or a non-finite
entry of ``d`` or ``v`` gives non-finite output entries.
"""
import numbers

import torch

from ..validation import check_nonnegative, check_positive

__all__ = ["soft_step", "softplus_penetration", "smooth_coulomb_friction"]


def _check_tensor(where, name, value, min_ndim=0):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a float torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{where}: {name} must be a float tensor, got {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(f"{where}: {name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")


def _check_broadcast(where, name, value, shape, against, device, dtype):
    """A tensor ``value`` of more than 0 dimensions must be on ``device``, of ``dtype`` and broadcast to ``shape``
    (a 0-dim one goes anywhere and takes the other's dtype, as torch lets it)."""
    if value.ndim and value.device != device:
        raise ValueError(f"{where}: {name} is on {value.device} but {against} is on {device}")
    if value.ndim and value.dtype != dtype:      # torch would promote the result (a 0-dim tensor does not)
        raise TypeError(f"{where}: {name} has dtype {value.dtype} but {against.split(' ')[0].rstrip(chr(39) + 's')} "
                        f"has {dtype}; one dtype for all")
    if value.ndim:
        try:
            torch.broadcast_shapes(value.shape, shape)
        except RuntimeError:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, which does not broadcast against "
                             f"{against} {tuple(shape)}") from None


def _check_constant(where, name, value, shape, against, device, dtype, positive=True):
    """``value`` a finite number ``> 0`` (``>= 0`` unless ``positive``) or a float tensor broadcastable to ``shape``."""
    rng = "positive finite number" if positive else "finite number >= 0"
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{where}: {name} must be a {rng} or a float tensor, got a {value.dtype} tensor")
        _check_broadcast(where, name, value, shape, against, device, dtype)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        (check_positive if positive else check_nonnegative)(where, **{name: value})
    else:
        raise TypeError(f"{where}: {name} must be a {rng} or a float tensor, got {type(value).__name__}")


def soft_step(d: torch.Tensor, k) -> torch.Tensor:
    """``1/2 + 1/2 tanh(k d)``: tends to the Heaviside step ``H(d)`` as ``k -> inf``.

    ``d`` a float tensor; ``k > 0`` a finite number or a float tensor broadcastable against it (of ``d``'s dtype
    unless 0-dim).
    Values are not scanned (module docstring): a NaN or Inf in ``d`` or in a tensor ``k`` gives that entry NaN.
    """
    _check_tensor("soft_step", "d", d)
    _check_constant("soft_step", "k", k, d.shape, "d", d.device, d.dtype)
    return 0.5 + 0.5 * torch.tanh(k * d)


def softplus_penetration(d: torch.Tensor, k) -> torch.Tensor:
    """``softplus(-k d) / k``: tends to the penetration depth ``max(0, -d)`` of a signed distance ``d``.

    Its error is at most ``log(2) / k`` (at ``d = 0``); multiply by a stiffness for a penalty force.
    ``d`` a float tensor; ``k > 0`` a finite number or a float tensor broadcastable against it (of ``d``'s dtype
    unless 0-dim).
    Values are not scanned (module docstring): a NaN or Inf in ``d`` or in a tensor ``k`` gives that entry NaN, and
    a tensor ``k <= 0`` is the caller's to rule out.
    """
    _check_tensor("softplus_penetration", "d", d)
    _check_constant("softplus_penetration", "k", k, d.shape, "d", d.device, d.dtype)
    return torch.nn.functional.softplus(-k * d) / k


def smooth_coulomb_friction(v: torch.Tensor, normal_force: torch.Tensor, mu, k) -> torch.Tensor:
    """Friction force opposing the sliding velocity ``v (..., dim)``: ``-mu N v / sqrt(|v|^2 + 1/k^2)``.

    Tends to Coulomb's ``-mu N v / |v|`` (and zero at rest) as ``k -> inf``; ``normal_force`` is a float tensor
    broadcastable to ``(...)``; ``mu >= 0`` and ``k > 0`` (a velocity sharpness, s/m) are finite numbers or float
    tensors broadcastable to ``(..., 1)``; every tensor of more than 0 dimensions of ``v``'s dtype. Tensor values
    are not scanned (module docstring): non-finite entries, a negative tensor ``mu`` or ``normal_force``, pass
    through.
    """
    where = "smooth_coulomb_friction"
    _check_tensor(where, "v", v, min_ndim=1)
    _check_tensor(where, "normal_force", normal_force)
    _check_broadcast(where, "normal_force", normal_force, v.shape[:-1], "v's (...)", v.device, v.dtype)
    batch = (*v.shape[:-1], 1)
    _check_constant(where, "mu", mu, batch, "v's (..., 1)", v.device, v.dtype, positive=False)
    _check_constant(where, "k", k, batch, "v's (..., 1)", v.device, v.dtype)
    speed = torch.sqrt((v * v).sum(-1, keepdim=True) + 1.0 / k ** 2)
    return -mu * normal_force.unsqueeze(-1) * v / speed
