"""Box bounds: the one check every solver's bounds pass, clamping, the projected gradient and the clamped set."""
from __future__ import annotations

import numbers

import torch

__all__ = ["check_bounds", "clamp", "project", "clamped"]


def check_bounds(where, lower, upper, shape, like, names=("u_lower", "u_upper"), dims="(B, T, m)"):
    """Bounds (control bounds unless ``names`` and ``dims`` say otherwise) as tensors of ``like``'s dtype and
    device expanded to ``shape`` (or None), checked once.

    A bound is None (unbounded), a Python number (the same bound everywhere; converted to ``like``'s dtype and
    device: the one conversion) or a float tensor of ``like``'s dtype broadcastable to ``shape``; anything else (a
    list, an int tensor, a tensor of another dtype) raises a TypeError naming it. No NaN; ``lower <= upper``
    everywhere, and no bound excludes every value (``lower = +inf`` or ``upper = -inf``)."""
    bounds = []
    for name, value in zip(names, (lower, upper)):
        if value is None:
            bounds.append(None)
            continue
        if isinstance(value, numbers.Real) and not isinstance(value, bool):      # NumPy numbers too
            value = torch.tensor(float(value), dtype=like.dtype, device=like.device)
        elif not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}: {name} must be a number or a tensor broadcastable to {dims}, "
                            f"got {type(value).__name__}")
        elif value.dtype != like.dtype:
            raise TypeError(f"{where}: {name} is {value.dtype}; a bound tensor must have the problem's dtype "
                            f"{like.dtype} (convert it: {name}.to({like.dtype}), or pass a number)")
        else:
            value = value.to(like.device)
        try:
            bounds.append(value.expand(shape).clone())
        except RuntimeError:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a shape broadcastable "
                             f"to {dims} = {tuple(shape)}") from None
        if bool(torch.isnan(value).any()):
            raise ValueError(f"{where}: {name} contains NaN")
    lower, upper = bounds
    if lower is not None and bool((lower == float("inf")).any()):
        raise ValueError(f"{where}: {names[0]} is +inf somewhere (no value lies above it); use a finite bound, "
                         "or -inf / None for no bound")
    if upper is not None and bool((upper == -float("inf")).any()):
        raise ValueError(f"{where}: {names[1]} is -inf somewhere (no value lies below it); use a finite bound, "
                         "or +inf / None for no bound")
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
