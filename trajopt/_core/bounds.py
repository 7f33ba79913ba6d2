"""Box bounds: the one check every solver's bounds pass, clamping, the projected gradient and the clamped set."""
from __future__ import annotations

import torch

__all__ = ["check_bounds", "clamp", "project", "clamped"]


def check_bounds(where, lower, upper, shape, like, names=("u_lower", "u_upper"), dims="(B, T, m)"):
    """Bounds (control bounds unless ``names`` and ``dims`` say otherwise) as tensors of ``like``'s dtype and
    device expanded to ``shape`` (or None), checked once: broadcastable to ``shape``, no NaN, lower <= upper."""
    bounds = []
    for name, value in zip(names, (lower, upper)):
        if value is None:
            bounds.append(None)
            continue
        try:
            value = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{where}: {name} must be a number or a tensor broadcastable to {dims}, "
                            f"got {type(value).__name__}") from None
        try:
            bounds.append(value.expand(shape).clone())
        except RuntimeError:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a shape broadcastable "
                             f"to {dims} = {tuple(shape)}") from None
        if bool(torch.isnan(value).any()):
            raise ValueError(f"{where}: {name} contains NaN")
    lower, upper = bounds
    if lower is not None and upper is not None and bool((lower > upper).any()):
        raise ValueError(f"{where}: {names[0]} exceeds {names[1]} somewhere")
    return lower, upper


def clamp(U, lower=None, upper=None):
    """``U`` clamped into ``[lower, upper]`` (either may be None: unbounded), broadcasting. Differentiable like
    ``torch.clamp``."""
    U = U if lower is None else torch.maximum(U, lower)
    return U if upper is None else torch.minimum(U, upper)


def project(g, U, lower=None, upper=None):
    """The projected gradient ``U - clamp(U - g)``: ``g`` on controls away from their bounds, zero on a control
    held at a bound by its gradient."""
    return U - clamp(U - g, lower, upper)


def clamped(U, g, lower=None, upper=None):
    """Controls held at a bound by their gradient ``g``, a bool mask like ``U`` (an exact test: the projected
    gradient would round tiny free entries to zero)."""
    out = torch.zeros_like(U, dtype=torch.bool)
    if lower is not None:
        out |= (U <= lower) & (g > 0)
    if upper is not None:
        out |= (U >= upper) & (g < 0)
    return out
