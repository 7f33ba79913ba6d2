"""The time-varying stage dispatch: a function of one stage applied at every stage of a trajectory."""
from __future__ import annotations

import torch

from .per_problem import has_per_problem, rows

__all__ = ["over_stages", "check_rows"]


def over_stages(fn, module, *tensors, scalar: bool = False):
    """``fn(*rows, t)`` at every stage of ``tensors`` (each ``(B, T, ...)``), stacked to ``(B, T, ...)``.

    ``module`` is the model, cost or constraint ``fn`` evaluates. One that does not look at ``t`` (``time_varying``
    False) is called once on all ``B T`` rows with ``t=None`` (its per-problem tensors repeated ``T`` times each); a
    time-varying one once per stage ``t`` on that stage's ``B`` rows. ``fn`` returns a tensor or a tuple of
    tensors (rows first); the result has the same structure, checked by :func:`check_rows` (``scalar``: one value
    per row, as a cost's stage returns). Differentiable like ``fn``.
    """
    B, T = tensors[0].shape[:2]
    like = tensors[0]
    if module.time_varying:
        outs = [check_rows(module, fn, fn(*(z[:, t] for z in tensors), t), B, like, scalar) for t in range(T)]
        if isinstance(outs[0], torch.Tensor):
            return torch.stack(outs, 1)
        return tuple(torch.stack(o, 1) for o in zip(*outs))
    index = torch.arange(B, device=tensors[0].device).repeat_interleave(T) if has_per_problem(module) else None
    with rows(index, module):
        out = check_rows(module, fn, fn(*(z.reshape(B * T, *z.shape[2:]) for z in tensors), None), B * T, like,
                         scalar)
    if isinstance(out, torch.Tensor):
        return out.reshape(B, T, *out.shape[1:])
    return tuple(o.reshape(B, T, *o.shape[1:]) for o in out)


def check_rows(module, fn, out, count: int, like: torch.Tensor, scalar: bool = False):
    """``out``, what ``fn`` (a method of the model, cost or constraint ``module``) returned for ``count`` rows of
    inputs like ``like``: a tensor (or tuple of tensors) with ``count`` rows first (``scalar``: of shape
    ``(count,)``, one value per row), of ``like``'s dtype. Otherwise a TypeError or ValueError names the method (a
    user's cost returning ``(1,)``, ``(B, 1)`` or float32 would broadcast or be promoted silently). Shapes and dtypes
    only."""
    parts = out if isinstance(out, tuple) else (out,)
    if all(type(o) is torch.Tensor and o.ndim >= 1 and o.shape[0] == count and o.dtype is like.dtype
           and (o.ndim == 1 or not scalar) for o in parts):
        return out
    where = f"{type(module).__name__}.{getattr(fn, '__name__', 'call')}"
    want = f"({count},)" if scalar else f"({count}, ...)"
    for o in parts:
        if not isinstance(o, torch.Tensor):
            raise TypeError(f"{where} must return a tensor {want} (one row per input row), got {type(o).__name__}")
        if o.ndim < 1 or o.shape[0] != count or (scalar and o.ndim != 1):
            raise ValueError(f"{where} returned shape {tuple(o.shape)} for {count} input rows; it must return "
                             f"{'one value' if scalar else 'one row'} per input row: {want}")
        if o.dtype is not like.dtype:
            raise TypeError(f"{where} returned {o.dtype} for {like.dtype} inputs; it must compute in its inputs' "
                            "dtype")
    return out
