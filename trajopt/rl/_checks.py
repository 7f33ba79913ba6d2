"""Argument checks of :mod:`trajopt.rl` beyond the shared ones (:mod:`trajopt._core.checks`, which re-exports
:mod:`dynamics.validation`'s): each raises naming the argument and what was expected, in the house form
``"{where}: {name} must be ..., got ..."``.

The checks of tensors here read shapes and dtypes only (no pass over the values, no host sync), so they may run
at every step of a rollout; scans for NaN belong to construction and to user-supplied data.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import torch

from .._core.checks import check_int, check_positive

__all__ = ["check_hidden", "check_float_dtype", "check_features", "as_bound", "check_action_bounds",
           "check_checkpoint", "check_module_state", "check_state_tensor", "check_score", "check_output_path"]


def check_hidden(where, hidden, allow_empty=True):
    """``hidden``: a tuple or list of layer widths, ints ``>= 1`` (non-empty unless ``allow_empty``)."""
    if not (isinstance(hidden, (tuple, list)) and (allow_empty or hidden)):
        raise ValueError(f"{where}: hidden must be a {'' if allow_empty else 'non-empty '}tuple of layer widths "
                         f"(ints >= 1), got {hidden!r}")
    check_int(where, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})


def check_float_dtype(where, dtype, name="dtype"):
    """``dtype`` one of the floating dtypes the library computes in: ``torch.float32`` or ``torch.float64``
    (a TypeError otherwise: half precision too, as :func:`dynamics.validation.check_tensor` refuses its tensors)."""
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where}: {name} must be a floating torch.dtype, torch.float32 or torch.float64, got "
                        f"{dtype!r}")


def check_output_path(where, name, path):
    """``path`` None or a file path (str or os.PathLike) in a folder that exists: a TypeError, or a
    FileNotFoundError naming ``name``, the path and the folder (checked when a run is built, not when it first
    writes there)."""
    if path is None:
        return
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: {name} must be a path (str or os.PathLike) or None, got {type(path).__name__}")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{where}: {name} {os.fspath(path)!r} is in a folder that does not exist "
                                f"({folder!r}); create it first")


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


def as_bound(where, name, value, dims="(m,)", finite=False):
    """A control bound as the rest of :mod:`trajopt` takes it: None (unbounded), a real number (Python's or a NumPy
    scalar, returned as a Python float: the one conversion) or a tensor (returned as it is, for the caller's check
    of dtype and shape). Anything else (a list, a tuple, a NumPy array, a string) raises a TypeError naming
    ``name``: a sequence is never read as a bound, so that its length is checked where the tensor's shape is."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    hint = " (convert it: torch.tensor(...))" if isinstance(value, (list, tuple)) or hasattr(value, "__array__") else ""
    raise TypeError(f"{where}: {name} must be a {'finite ' if finite else ''}number or a float tensor broadcastable "
                    f"to {dims}, got "
                    f"{type(value).__name__}{hint}")


def check_action_bounds(where, low, high, names=("low", "high")):
    """Finite action bounds ``low <= high``, broadcastable together to ``(m,)``: each a real number (Python's or a
    NumPy scalar; converted to a 0-dim tensor of the default float dtype) or a float tensor of at most one
    dimension. Lists, tuples and NumPy arrays raise a TypeError naming the bound (as every bound of
    :mod:`trajopt` does: :func:`trajopt._core.bounds.check_bounds`); pass ``torch.tensor(...)``. Returns them as
    tensors."""
    out = []
    for name, value in zip(names, (low, high)):
        if value is None:
            raise TypeError(f"{where}: {name} must be a finite number or a float tensor broadcastable to (m,), "
                            "got None")
        value = as_bound(where, name, value, finite=True)
        if not isinstance(value, torch.Tensor):
            value = torch.tensor(value, dtype=torch.get_default_dtype())
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


# ---------------------------------------------------------------------------------------------- checkpoints
def check_noise_std(where, noise_std):
    """A sampling planner's ``noise_std``: None, a positive finite number (returned as a float) or a float tensor
    ``(m,)`` (or 0-dim) of positive finite values."""
    if noise_std is None:
        return None
    if isinstance(noise_std, torch.Tensor):
        if not (noise_std.is_floating_point() and noise_std.ndim <= 1
                and bool((torch.isfinite(noise_std) & (noise_std > 0)).all())):
            raise ValueError(f"{where}: noise_std must be a positive finite number or float tensor (m,), got "
                             f"{noise_std!r}")
        return noise_std
    if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real):
        raise TypeError(f"{where}: noise_std must be a positive finite number, a float tensor (m,) or None, got "
                        f"{type(noise_std).__name__}")
    check_positive(where, noise_std=noise_std)
    return float(noise_std)


def check_checkpoint(where, source, state, keys, expected=None):
    """``state`` (read from ``source``, e.g. ``"the checkpoint 'run.pt'"``) a dict holding ``keys``, whose entries
    named in ``expected`` equal this run's values there; a ValueError names ``source`` and what differs."""
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: {source} is not a checkpoint of this kind (a dict with the keys {sorted(keys)}); "
                         f"it holds a {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{where}: {source} is not a checkpoint of this kind: it lacks the entries {missing}")
    for name, mine in (expected or {}).items():
        try:
            differs = bool(state[name] != mine)
        except (TypeError, ValueError, RuntimeError):       # a tensor or an array where a count belongs
            differs = True
        if differs:
            raise ValueError(f"{where}: {source} was written by another configuration: it has {name} = "
                             f"{state[name]!r}, this run {mine!r}")


def check_module_state(where, source, name, module, state):
    """``state`` fits ``module.load_state_dict`` (a module's: the same keys, tensors of the same shapes; an
    optimizer's: the same parameter groups and their sizes), checked without loading anything: a ValueError names
    ``source``, ``name`` and the first mismatches."""
    mine = module.state_dict()
    kind = type(module).__name__
    if not isinstance(state, Mapping):
        raise ValueError(f"{where}: {source}'s {name} is not a state dict of a {kind}; it holds a "
                         f"{type(state).__name__}")
    if isinstance(module, torch.optim.Optimizer):
        groups = state.get("param_groups")
        sizes = [len(g.get("params", ())) if isinstance(g, Mapping) else None for g in groups] \
            if isinstance(groups, (list, tuple)) else None
        want = [len(g["params"]) for g in mine["param_groups"]]
        if sizes != want or "state" not in state:
            raise ValueError(f"{where}: {source} was written by another configuration: its {name} optimizes "
                             f"parameter groups of sizes {sizes}, this run's {want} (another actor or critic)")
        return
    problems = [f"missing {k}" for k in mine if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in mine]
    for k, v in mine.items():
        got = state.get(k)
        if isinstance(v, torch.Tensor) and k in state and not (isinstance(got, torch.Tensor) and got.shape == v.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            problems.append(f"{k} has shape {shape}, this run's {tuple(v.shape)}")
    if problems:
        more = f" and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise ValueError(f"{where}: {source} was written by another configuration: its {name} does not fit this "
                         f"run's {kind}: {'; '.join(problems[:4])}{more} (other layer widths, observation or "
                         "action sizes, or another kind of module)")


def check_state_tensor(where, source, name, value, shape, dtype=None, allow_none=False):
    """A tensor ``value`` of a checkpoint with this run's ``shape`` (and ``dtype`` when given); a ValueError names
    ``source`` and ``name``."""
    if value is None and allow_none:
        return
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{where}: {source}'s {name} must be a tensor {tuple(shape)}, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{where}: {source} was written by another configuration: its {name} has shape "
                         f"{tuple(value.shape)}, this run's {tuple(shape)}")
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"{where}: {source} was written by another configuration: its {name} is {value.dtype}, "
                         f"this run's {dtype}")


def check_score(where, name, value):
    """What a user's scoring callable ``name`` returned: a real number, not NaN (returned as a float; ``inf`` is a
    score, the one :func:`trajopt.rl.tasks.score` gives a policy that leaves the model's domain)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must return a number, got {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{where}: {name} returned NaN; it must return a number (inf for a diverged policy)")
    return float(value)
