"""Per-problem tensors of models, costs and constraints: weights, targets or parameters that differ by problem.

A module lists them in its attribute ``per_problem`` (a tuple of attribute names): each is a tensor whose leading
dimension is the problem batch ``B`` (mpc.pytorch's ``(T, B, ...)`` tensors, batch first). A solver evaluates a
module on a selection of rows (the problems still iterating, several step sizes per problem, ``N`` samples per
problem) inside :func:`rows`, which shows the module each tensor indexed by the rows' problems; the indexing is
differentiable, so gradients reach the caller's own tensors. Contexts nest: an inner index selects from the outer
selection.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["per_problem_tensors", "rows", "check_per_problem", "has_per_problem"]


def per_problem_tensors(*modules):
    """``(submodule, name, tensor)`` for every per-problem tensor of ``modules`` (None entries are skipped)."""
    out = []
    for module in modules:
        if module is None:
            continue
        for sub in module.modules():
            for name in getattr(sub, "per_problem", ()):
                out.append((sub, name, getattr(sub, name)))
    return out


def check_per_problem(where, modules: dict, B: int | None):
    """The batch size the per-problem tensors of ``modules`` (``{name: module}``) give, checked against ``B``
    (None: not fixed yet). Raises naming the module and the tensor whose leading dimension disagrees."""
    for label, module in modules.items():
        for sub, name, value in per_problem_tensors(module):
            if not isinstance(value, torch.Tensor) or value.ndim < 1:
                raise TypeError(f"{where}: {label}'s per-problem {name!r} ({type(sub).__name__}) must be a tensor with "
                                f"a leading batch dimension, got {type(value).__name__}")
            if B is None:
                B = value.shape[0]
            elif value.shape[0] != B:
                raise ValueError(f"{where}: {label}'s per-problem {name!r} ({type(sub).__name__}) has {value.shape[0]} "
                                 f"problems (shape {tuple(value.shape)}); the problem has B={B}")
    return B


_MISSING = object()


@contextlib.contextmanager
def rows(index, *modules):
    """Within the context, each per-problem tensor of ``modules`` reads ``tensor[index]``: the problem of each row
    the solver evaluates (``index (R,)``, int64). A no-op for modules without per-problem tensors or ``index``
    None."""
    found = [] if index is None else per_problem_tensors(*modules)
    saved = [(sub, name, sub.__dict__.get(name, _MISSING)) for sub, name, _ in found]
    for sub, name, value in found:
        object.__setattr__(sub, name, value[index])      # shadows the registered tensor in the instance dict
    try:
        yield
    finally:
        for sub, name, previous in reversed(saved):
            if previous is _MISSING:
                del sub.__dict__[name]
            else:
                sub.__dict__[name] = previous


def has_per_problem(*modules) -> bool:
    return bool(per_problem_tensors(*modules))
