"""The canonical problems P1-P4 as :class:`~trajopt.Problem` values, built on the library's models.

:mod:`trajopt.problems.reference` is the canonical NumPy definition (a copy of the project's shared
``problems.py``): step functions, starts, weights and ``trajectory_cost``, the reference every figure is
quoted in. The builders here give the same problems to the solvers: the cost is ``problems.py``'s (no 1/2,
so ``QuadraticCost.from_weights(2 Q, 2 R)``) and every model's parameters are frozen.

P4 starts from a forward-speed guess ``v = 1`` (zero steering rate), as ``problems.py`` does. From zero controls
iLQR reaches the same optimum (1074.3504, L-BFGS-B's from that start): an early step there would swing the
steering angle past ``pi/2``, where ``tan`` jumps, and the bicycle's :meth:`~dynamics.KinematicBicycle.domain`
makes the line search reject it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

import dynamics
from dynamics.validation import check_int, check_positive
from .._core.costs import QuadraticCost
from .._core.problem import Problem
from . import reference

__all__ = ["pendulum", "cartpole", "bicycle", "random_lqr", "pumping_guesses", "reference"]


def _check(where, dtype, seed=0, **sizes):
    """``sizes`` ints ``>= 1``, ``seed`` an int ``>= 0``, ``dtype`` float32 or float64."""
    check_int(where, **sizes)
    check_int(where, minimum=0, seed=seed)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{where}: dtype must be torch.float32 or torch.float64, got {dtype!r}")


def _cost(spec, dtype):
    Q, R = np.asarray(spec["Q"], float), np.atleast_2d(spec["R"]).astype(float)
    target = spec.get("target")
    return QuadraticCost.from_weights(torch.tensor(2 * Q, dtype=dtype), torch.tensor(2 * R, dtype=dtype),
                                      x_goal=None if target is None else torch.tensor(target, dtype=dtype))


def pendulum(B: int = 32, seed: int = 0, dtype=torch.float64, **fields) -> Problem:
    """P2, the pendulum swing-up: ``B`` starts of ``reference.pendulum_x0`` (the first hanging at rest), zero
    controls, ``|u| <= 2``, ``T = 100``. ``fields`` override :class:`~trajopt.Problem` arguments (which checks
    them). ``B`` is an int ``>= 1``, ``seed`` an int ``>= 0``, ``dtype`` float32 or float64: a ValueError or TypeError
    names the one that is not (here and in the other builders)."""
    _check("pendulum", dtype, seed, B=B)
    spec = reference.PENDULUM
    x0 = torch.tensor(reference.pendulum_x0(B, seed), dtype=dtype)
    return Problem(**{**dict(dynamics=dynamics.Pendulum().discretize().to(dtype).requires_grad_(False),
                             cost=_cost(spec, dtype), x0=x0, horizon=spec["T"], u_lower=-spec["u_max"],
                             u_upper=spec["u_max"]), **fields})


def cartpole(B: int = 32, seed: int = 0, dtype=torch.float64, **fields) -> Problem:
    """P3, the cart-pole swing-up: ``B`` starts of ``reference.cartpole_x0``, zero controls, ``|u| <= 10``,
    ``T = 60``. ``B >= 1``, ``seed >= 0`` ints, ``dtype`` float32 or float64."""
    _check("cartpole", dtype, seed, B=B)
    spec = reference.CARTPOLE
    x0 = torch.tensor(reference.cartpole_x0(B, seed), dtype=dtype)
    return Problem(**{**dict(dynamics=dynamics.CartPole().discretize().to(dtype).requires_grad_(False),
                             cost=_cost(spec, dtype), x0=x0, horizon=spec["T"], u_lower=-spec["u_max"],
                             u_upper=spec["u_max"]), **fields})


def bicycle(B: int = 1, dtype=torch.float64, **fields) -> Problem:
    """P4, kinematic-bicycle parking from the origin to ``(10, 5, 0, 0)``: ``|v| <= 5``, ``|delta rate| <= 0.5``,
    ``T = 50``, from the guess ``v = 1`` (see the module docstring). ``B`` an int ``>= 1``, ``dtype`` float32 or
    float64."""
    _check("bicycle", dtype, B=B)
    spec = reference.BICYCLE
    u_max = torch.tensor(spec["u_max"], dtype=dtype)
    U_init = torch.zeros(B, spec["T"], 2, dtype=dtype)
    U_init[..., 0] = 1.0
    return Problem(**{**dict(dynamics=dynamics.KinematicBicycle().discretize().to(dtype).requires_grad_(False),
                             cost=_cost(spec, dtype), x0=torch.zeros(B, 4, dtype=dtype), U_init=U_init,
                             u_lower=-u_max, u_upper=u_max), **fields})


def random_lqr(B: int = 64, T: int = 50, n: int = 8, m: int = 3, seed: int = 0, dtype=torch.float64) -> dict:
    """P1, random time-varying LQR, as the tensors of :func:`trajopt.lqr`: ``F, f, C, c, x0``. ``B``, ``T``,
    ``n``, ``m`` ints ``>= 1``, ``seed`` an int ``>= 0``, ``dtype`` float32 or float64."""
    _check("random_lqr", dtype, seed, B=B, T=T, n=n, m=m)
    p = reference.lqr_problem(B=B, T=T, n=n, m=m, seed=seed)
    return {k: torch.tensor(v, dtype=dtype) for k, v in p.items()}


def pumping_guesses(T: int, dt: float = 0.05, u_max: float = 2.0, periods=(1.2, 1.6, 2.0), cycles=(1, 2),
                    dtype=torch.float64) -> torch.Tensor:
    """Swing-up guesses for a pendulum (P2's recipe with :func:`trajopt.multistart`): zero, and
    ``u_max sin(2 pi t / period)`` of either sign, cut after ``cycles`` periods: ``(K, T, 1)``, ``K = 1 + 2 *
    len(periods) * len(cycles)``. Local solvers from rest stall at the bottom of the swing; from these guesses the
    cheapest of the local optima is the swing-up. ``T`` an int ``>= 1``; ``dt`` and ``u_max`` finite numbers
    ``> 0``; ``periods`` and ``cycles`` lists, tuples or arrays of finite numbers ``> 0``; ``dtype`` float32 or
    float64."""
    where = "pumping_guesses"
    _check(where, dtype, T=T)
    check_positive(where, dt=dt, u_max=u_max)
    for name, values in (("periods", periods), ("cycles", cycles)):
        if not isinstance(values, Iterable) or isinstance(values, (str, bytes)):
            raise TypeError(f"{where}: {name} must be a list or tuple of numbers > 0, got {type(values).__name__}")
    periods, cycles = tuple(periods), tuple(cycles)
    for name, values in (("periods", periods), ("cycles", cycles)):
        check_positive(where, **{f"{name}[{i}]": v for i, v in enumerate(values)})
    t = torch.arange(T, dtype=dtype) * dt
    guesses = [torch.zeros(T, dtype=dtype)]
    for period in periods:
        for sign in (1.0, -1.0):
            for c in cycles:
                guesses.append(torch.where(t < c * period, sign * u_max * torch.sin(2 * math.pi * t / period), 0.0))
    return torch.stack(guesses).unsqueeze(-1)
