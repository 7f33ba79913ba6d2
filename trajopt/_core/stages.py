"""The time-varying stage dispatch: a function of one stage applied at every stage of a trajectory."""
from __future__ import annotations

import torch

__all__ = ["over_stages"]


def over_stages(fn, time_varying: bool, *tensors):
    """``fn(*rows, t)`` at every stage of ``tensors`` (each ``(B, T, ...)``), stacked to ``(B, T, ...)``.

    A function that does not look at ``t`` (``time_varying`` False) is called once on all ``B T`` rows with
    ``t=None``; a time-varying one once per stage ``t`` on that stage's ``B`` rows. ``fn`` returns a tensor or a
    tuple of tensors (rows first); the result has the same structure. Differentiable like ``fn``.
    """
    B, T = tensors[0].shape[:2]
    if time_varying:
        outs = [fn(*(z[:, t] for z in tensors), t) for t in range(T)]
        if isinstance(outs[0], torch.Tensor):
            return torch.stack(outs, 1)
        return tuple(torch.stack(o, 1) for o in zip(*outs))
    out = fn(*(z.reshape(B * T, *z.shape[2:]) for z in tensors), None)
    if isinstance(out, torch.Tensor):
        return out.reshape(B, T, *out.shape[1:])
    return tuple(o.reshape(B, T, *o.shape[1:]) for o in out)
