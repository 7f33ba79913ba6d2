"""The time-varying stage dispatch: a function of one stage applied at every stage of a trajectory."""
from __future__ import annotations

import torch

from .per_problem import has_per_problem, rows

__all__ = ["over_stages"]


def over_stages(fn, module, *tensors):
    """``fn(*rows, t)`` at every stage of ``tensors`` (each ``(B, T, ...)``), stacked to ``(B, T, ...)``.

    ``module`` is the model, cost or constraint ``fn`` evaluates. One that does not look at ``t`` (``time_varying``
    False) is called once on all ``B T`` rows with ``t=None`` (its per-problem tensors repeated ``T`` times each); a
    time-varying one once per stage ``t`` on that stage's ``B`` rows. ``fn`` returns a tensor or a tuple of
    tensors (rows first); the result has the same structure. Differentiable like ``fn``.
    """
    B, T = tensors[0].shape[:2]
    if module.time_varying:
        outs = [fn(*(z[:, t] for z in tensors), t) for t in range(T)]
        if isinstance(outs[0], torch.Tensor):
            return torch.stack(outs, 1)
        return tuple(torch.stack(o, 1) for o in zip(*outs))
    index = torch.arange(B, device=tensors[0].device).repeat_interleave(T) if has_per_problem(module) else None
    with rows(index, module):
        out = fn(*(z.reshape(B * T, *z.shape[2:]) for z in tensors), None)
    if isinstance(out, torch.Tensor):
        return out.reshape(B, T, *out.shape[1:])
    return tuple(o.reshape(B, T, *o.shape[1:]) for o in out)
