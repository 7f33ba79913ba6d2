"""Input checks shared by every public entry point.

Each public function validates its arguments once, here, so that a user error
names the argument, the shape it got and the shape it wanted; inner code trusts
what passed.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

__all__ = ["check_tensor", "set_dim", "check_outputs", "check_consistent", "check_finite", "check_positive", "check_nonnegative", "check_int",
           "check_fraction", "check_interval", "check_bool", "check_callable"]

_FLOAT_DTYPES = (torch.float32, torch.float64)
_SET_BY = " set by"      # check_tensor's record, in ``dims``, of the argument that fixed each dimension


def _shape_str(names: Sequence[str], dims: Mapping[str, int]) -> str:
    named = ", ".join(names)
    sized = ", ".join(str(dims[k]) if k in dims else k for k in names)
    return f"({named}) = ({sized})" if named != sized else f"({named})"


def check_tensor(
    where: str,
    name: str,
    value,
    trailing: Sequence[str],
    dims: Mapping[str, int],
    *,
    batchable: bool = True,
    finite: bool = True,
) -> torch.Tensor:
    """Check that ``value`` is a finite float tensor of shape ``(B, *trailing)`` or ``trailing``.

    ``trailing`` names each dimension (``"T"``, ``"n"``, ``"n+m"`` ...); ``dims``
    gives the size of the names that are already known. Names not in ``dims``
    are learned from ``value`` and written back into ``dims`` (so the first
    argument checked fixes ``T``, ``n`` and ``m`` for the others). ``finite=False``
    skips the NaN/Inf scan, for callers that run :func:`check_finite` only when
    their output turns out non-finite (a pass over large inputs is not free).
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: {name} must be float32 or float64, got {value.dtype}")
    k = len(trailing)
    learned = dict(dims)               # a name repeated in ``trailing`` ("n", "n": square) must match itself too
    shape_ok = value.ndim == k or (batchable and value.ndim == k + 1)
    for d, s in zip(trailing, value.shape[value.ndim - k:] if shape_ok else ()):
        shape_ok = shape_ok and learned.setdefault(d, s) == s
    set_by = dims.get(_SET_BY, {})
    if not shape_ok:
        want = _shape_str(trailing, dims)
        if batchable:
            want = f"{_shape_str(('B', *trailing), dims)} or {want}"
        got = dict(zip(trailing, value.shape[value.ndim - k:])) if value.ndim in (k, k + 1) else {}
        known = [f"{d} = {dims[d]} from {set_by[d]}" for d in dict.fromkeys(trailing)
                 if d in set_by and d in got and got[d] != dims[d]]
        known = f" ({', '.join(known)}: this argument or that one is wrong)" if known else ""
        raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected {want}{known}")
    if isinstance(dims, dict):
        dims[_SET_BY] = {**{d: name for d in learned if d not in dims}, **set_by}
    dims.update(learned)
    if finite:
        check_finite(where, {name: value})
    return value


def check_outputs(where: str, out, shapes, like: torch.Tensor, labels, context: str = "") -> None:
    """What a call (``where``, e.g. ``"MyModel.forward"``) returned: a tensor of the one shape in ``shapes`` or a
    tuple (or list) of ``len(shapes)`` tensors, each of its full shape in ``shapes`` and of ``like``'s dtype and
    device; otherwise a TypeError or ValueError names ``where`` and the output (``labels``, one per output;
    ``context`` ends the shape error, e.g. the inputs' shapes). Shapes and dtypes only."""
    single = len(shapes) == 1
    outs = (out,) if single else out
    if isinstance(outs, (tuple, list)) and len(outs) == len(shapes) and all(
            isinstance(o, torch.Tensor) and o.shape == s and o.dtype is like.dtype and o.device == like.device
            for o, s in zip(outs, shapes)):
        return
    want = " and ".join(str(tuple(s)) for s in shapes)
    if not isinstance(outs, (tuple, list)) or len(outs) != len(shapes):
        raise TypeError(f"{where} must return {'a tensor' if single else f'{len(shapes)} tensors'} {want}, got "
                        f"{type(out).__name__}{'' if not isinstance(out, (tuple, list)) else f' of {len(out)}'}")
    for o, s, label in zip(outs, shapes, labels):
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{where} must return {'a tensor' if single else 'tensors'} {want}; {label} is a "
                            f"{type(o).__name__}")
        if o.shape != s:
            raise ValueError(f"{where} returned shape {tuple(o.shape)} as {label}; expected {tuple(s)}{context}")
        if o.dtype is not like.dtype:
            raise TypeError(f"{where} returned {o.dtype} as {label} for {like.dtype} inputs; it must compute in its "
                            "inputs' dtype")
        if o.device != like.device:
            raise ValueError(f"{where} returned {label} on {o.device} for inputs on {like.device}")


def set_dim(dims: dict, name: str, size: int, source: str) -> None:
    """Fix the dimension ``name`` of ``dims`` to ``size``, derived from ``source`` (e.g. ``"X and U"``), for the
    :func:`check_tensor` calls that follow: their shape errors name it as where the size came from."""
    dims[name] = size
    dims[_SET_BY] = {**dims.get(_SET_BY, {}), name: source}


def check_finite(where: str, tensors: Mapping[str, torch.Tensor | None]) -> None:
    """Raise a ValueError naming the first tensor that holds NaN or Inf."""
    for name, value in tensors.items():
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{where}: {name} contains NaN or Inf")


def check_consistent(where: str, tensors: Mapping[str, torch.Tensor], trailing_ndims: Mapping[str, int]) -> int | None:
    """Check that dtypes, devices and batch sizes agree; return the batch size (None if unbatched).

    ``trailing_ndims[name]`` is the number of non-batch dimensions of ``name``,
    so a tensor with one more dimension than that is batched.
    """
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    batch, batch_name = None, None
    for name, v in items:
        if v.dtype != first.dtype:
            raise TypeError(f"{where}: {name} has dtype {v.dtype} but {first_name} has {first.dtype}; "
                            "all inputs must share one dtype")
        if v.device != first.device:
            raise ValueError(f"{where}: {name} is on {v.device} but {first_name} is on {first.device}; "
                             "all inputs must share one device")
        if v.ndim > trailing_ndims[name]:
            if batch is None:
                batch, batch_name = v.shape[0], name
            elif v.shape[0] != batch:
                raise ValueError(f"{where}: batch sizes differ: {batch_name} has B={batch}, "
                                 f"{name} has B={v.shape[0]}")
    return batch


def _number(value):
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(where, allow_inf=False, **values):
    """Each value a finite positive number (``inf`` too where ``allow_inf``)."""
    for name, value in values.items():
        if not (_number(value) and value > 0 and (allow_inf or math.isfinite(value))):
            raise ValueError(f"{where}: {name} must be a positive{'' if allow_inf else ' finite'} number, got {value!r}")


def check_nonnegative(where, **values):
    """Each value a finite number ``>= 0``."""
    for name, value in values.items():
        if not (_number(value) and value >= 0 and math.isfinite(value)):
            raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")


def check_int(where, minimum=1, **values):
    """Each value an int of at least ``minimum``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")


def check_fraction(where, **values):
    """Each value a number in ``[0, 1)``."""
    for name, value in values.items():
        if not (_number(value) and 0.0 <= value < 1.0):
            raise ValueError(f"{where}: {name} must be in [0, 1), got {value!r}")


def check_interval(where, low, high, include_low=True, include_high=True, **values):
    """Each value a number between ``low`` and ``high``, each end included or not (``check_interval(where, 0, 1,
    gamma=gamma)``: a discount in ``[0, 1]``; ``check_interval(where, 1, math.inf, include_low=False,
    include_high=False, growth=growth)``: a finite factor above 1)."""
    for name, value in values.items():
        ok = _number(value) and (low <= value if include_low else low < value) and (
            value <= high if include_high else value < high)
        if not ok:
            interval = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
            raise ValueError(f"{where}: {name} must be a number in {interval}, got {value!r}")


def check_bool(where, **values):
    """Each value a bool (not a truthy stand-in such as ``'yes'`` or ``1``)."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {name} must be a bool (True or False), got {value!r}")


def check_callable(where, allow_none=False, **values):
    """Each value callable (or None where ``allow_none``)."""
    for name, value in values.items():
        if not (callable(value) or (allow_none and value is None)):
            raise TypeError(f"{where}: {name} must be callable{' or None' if allow_none else ''}, "
                            f"got {type(value).__name__}")
