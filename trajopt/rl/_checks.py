"""Argument checks of :mod:`trajopt.rl` beyond the shared ones (:mod:`trajopt._core.checks`, which re-exports
:mod:`dynamics.validation`'s): each raises naming the argument and what was expected, in the house form
``"{where}: {name} must be ..., got ..."``.

The checks of tensors here read shapes and dtypes only (no pass over the values, no host sync), so they may run
at every step of a rollout; scans for NaN belong to construction and to user-supplied data.
"""
from __future__ import annotations

import torch

from .._core.checks import check_int

__all__ = ["check_hidden", "check_float_dtype", "check_features",
           "check_action_bounds"]


def check_hidden(where, hidden, allow_empty=True):
    """``hidden``: a tuple or list of layer widths, ints ``>= 1`` (non-empty unless ``allow_empty``)."""
    if not (isinstance(hidden, (tuple, list)) and (allow_empty or hidden)):
        raise ValueError(f"{where}: hidden must be a {'' if allow_empty else 'non-empty '}tuple of layer widths "
                         f"(ints >= 1), got {hidden!r}")
    check_int(where, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})


def check_float_dtype(where, dtype, name="dtype"):
    """``dtype`` a floating ``torch.dtype``."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"{where}: {name} must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")


def check_features(where, name, value, size, dtype=None, dims="o"):
    """``value`` a float tensor ``(..., size)`` (of ``dtype`` when given). Shapes and dtypes only: cheap enough
    for every step; NaN in ``value`` is not looked for (it propagates to the output)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor (..., {dims}), got {type(value).__name__}")
    if value.ndim < 1 or value.shape[-1] != size:
        want = f"(..., {size})" if dims == str(size) else f"(..., {dims}) = (..., {size})"
        raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected {want}")
    if dtype is not None and value.dtype != dtype:
        raise TypeError(f"{where}: {name} is {value.dtype} but the module's parameters are {dtype}; convert it "
                        f"({name}.to({dtype})) or the module (.to({value.dtype}))")
    if dtype is None and not value.is_floating_point():
        raise TypeError(f"{where}: {name} must be a float tensor, got {value.dtype}")


def check_action_bounds(where, low, high, names=("low", "high")):
    """Finite action bounds ``low <= high``, broadcastable together to ``(m,)``: numbers, float tensors or
    sequences of numbers (integers are converted to the default float dtype). Returns them as tensors."""
    out = []
    for name, value in zip(names, (low, high)):
        if value is None or isinstance(value, (bool, str)):
            raise TypeError(f"{where}: {name} must be a finite number or a float tensor broadcastable to (m,), "
                            f"got {value!r}")
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"{where}: {name} must be a finite number or a float tensor broadcastable to "
                                f"(m,), got {type(value).__name__}") from None
            if not value.is_floating_point() and value.dtype != torch.bool:
                value = value.to(torch.get_default_dtype())
        if not value.is_floating_point():
            raise TypeError(f"{where}: {name} must be a float tensor or a number, got a {value.dtype} tensor")
        if value.ndim > 1:
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a number or (m,)")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} must be finite (actions are drawn between the bounds), "
                             f"got {value.tolist()}")
        out.append(value)
    low, high = out
    try:
        torch.broadcast_shapes(low.shape, high.shape)
    except RuntimeError:
        raise ValueError(f"{where}: {names[0]} has shape {tuple(low.shape)} and {names[1]} {tuple(high.shape)}; "
                         "they must be broadcastable to one shape (m,)") from None
    if bool((low > high.to(low)).any()):
        raise ValueError(f"{where}: {names[0]} must not exceed {names[1]}, got {names[0]}={low.tolist()}, "
                         f"{names[1]}={high.tolist()}")
    return low, high
