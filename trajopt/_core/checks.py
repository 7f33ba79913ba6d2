"""Option checks shared by the solvers: each names the option and what was expected.

The argument checks of tensors (shapes, dtypes, batches, NaN) and of scalar options (``check_positive``,
``check_int``, ``check_fraction``) are :mod:`dynamics.validation`'s, public for model authors; a
:class:`~trajopt.Problem` runs them once at construction.
"""
from __future__ import annotations

import inspect

import torch

from dynamics.validation import (check_bool, check_callable, check_fraction, check_int, check_interval,
                                 check_nonnegative, check_positive)

__all__ = ["check_positive", "check_nonnegative", "check_int", "check_fraction", "check_interval", "check_choice",
           "check_bool", "check_callable",
           "resolve_grad", "tolerance", "solver_name", "solver_options"]

GRAD_ROUTES = ("implicit", "unroll", None)


def check_choice(where, name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{where}: {name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def resolve_grad(where, grad, routes=GRAD_ROUTES):
    """The gradient route: ``grad`` checked against the solver's ``routes``; returns the route that will run, None
    when grad mode is off (nothing to record)."""
    if grad not in routes:
        raise ValueError(f"{where}: grad must be one of {tuple(routes)} for this solver, got {grad!r}")
    return grad if torch.is_grad_enabled() else None


def tolerance(value, default, dtype):
    """An absolute stopping tolerance for ``dtype``: ``value`` when given (the caller checks it), else ``default``
    (stated for float64) scaled to the dtype's precision, ``default * (eps / eps64) ** (1/3)`` (``1e-6`` becomes
    ``8.1e-4`` in float32, which P2 and P3 reach where float64 reaches ``1e-6``)."""
    if value is not None:
        return float(value)
    scale = (torch.finfo(dtype).eps / torch.finfo(torch.float64).eps) ** (1 / 3)
    return default * scale


def solver_name(solver) -> str:
    solver = getattr(solver, "func", solver)            # a functools.partial names its function
    return getattr(solver, "__name__", type(solver).__name__)


def solver_options(where, solver, options):
    """The keyword options ``solver`` (a function ``solver(problem, **options)``) takes, None when it takes any
    (``**options``); raises a TypeError naming an option of ``options`` that it does not take. What a composite
    (MPC, multistart) checks before forwarding options, so that none is dropped or misapplied silently."""
    if not callable(solver):
        raise TypeError(f"{where}: solver must be a solver function solver(problem, **options), "
                        f"got {type(solver).__name__}")
    try:
        params = list(inspect.signature(getattr(solver, "__wrapped__", solver)).parameters.values())
    except (TypeError, ValueError):         # no signature to read: the solver checks its options itself
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in positional if p.default is p.empty]
    if len(required) > 1 or (not positional and not any(p.kind is p.VAR_POSITIONAL for p in params)):
        raise TypeError(f"{where}: solver must be a solver(problem, **options) of a trajopt.Problem (such as "
                        f"trajopt.ilqr); {solver_name(solver)} takes ({', '.join(p.name for p in params)})")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    accepted = {p.name for p in params[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for name in options:
        if name not in accepted:
            raise TypeError(f"{where}: solver {solver_name(solver)} takes no option {name!r}; it takes "
                            f"{sorted(accepted)}")
    return accepted
