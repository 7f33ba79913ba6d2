"""The one batched rollout, and the linearization of a model along a trajectory.

Every solver calls these instead of stepping a model itself.

Differentiable with respect to: ``x0``, ``U`` and the model's parameters.
"""
from __future__ import annotations

import numbers
import operator

import torch

from dynamics import Dynamics
from dynamics.validation import check_consistent, check_tensor
from .stages import over_stages

__all__ = ["rollout", "unchecked_rollout", "linearize", "unchecked_linearize", "steps", "second_order_terms",
           "raise_if_not_finite"]


def _check_model(where, dynamics):
    if not isinstance(dynamics, Dynamics):
        raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics (a discrete model; "
                        f"call .discretize(dt) on a ContinuousDynamics), got {type(dynamics).__name__}")
    return {"n": dynamics.state_dim, "m": dynamics.control_dim}


def rollout(dynamics: Dynamics, x0: torch.Tensor, U: torch.Tensor, t0: int = 0) -> torch.Tensor:
    """States ``X (B, T+1, n)`` reached from ``x0 (B, n)`` under controls ``U (B, T, m)``.

    Unbatched ``x0 (n,)`` and ``U (T, m)`` give unbatched ``X (T+1, n)``; an
    unbatched ``x0`` with batched ``U`` (or the reverse) is broadcast. ``t0`` is the stage index of ``U[:, 0]``
    (for a time-varying model rolled out from the middle of a horizon).
    Differentiable with respect to ``x0``, ``U`` and the model's parameters.

    Raises a ``FloatingPointError`` naming the rows and the first step where the states are NaN or Inf (a model
    undefined there, or an overflow): no NaN is returned. (Solvers roll out with :func:`unchecked_rollout` and
    report such problems as ``Status.NOT_FINITE``.)
    """
    where = "rollout"
    dims = _check_model(where, dynamics)
    t0 = _check_t0(where, t0)
    check_tensor(where, "x0", x0, ("n",), dims)
    check_tensor(where, "U", U, ("T", "m"), dims)
    batch = check_consistent(where, {"x0": x0, "U": U}, {"x0": 1, "U": 2})
    if batch is None:
        return rollout(dynamics, x0.unsqueeze(0), U.unsqueeze(0), t0).squeeze(0)
    X = unchecked_rollout(dynamics, x0.expand(batch, dims["n"]), U.expand(batch, *U.shape[-2:]), t0)
    raise_if_not_finite(where, "states", X[:, 1:].unsqueeze(-1))
    return X


def _check_t0(where, t0):
    if isinstance(t0, bool) or not isinstance(t0, numbers.Integral) or t0 < 0:     # NumPy integers too
        raise ValueError(f"{where}: t0 must be an int >= 0 (the stage index of U[:, 0]), got {t0!r}")
    return operator.index(t0)


def raise_if_not_finite(where, what, value):
    """Raise a FloatingPointError naming the rows and the first step where ``value (B, T, ...)`` is NaN or Inf;
    nothing when it is finite."""
    bad = ~torch.isfinite(value)
    if not bool(bad.any()):
        return
    bad = bad.flatten(2).any(-1)                                                  # (B, T)
    rows = bad.any(1).nonzero().flatten().tolist()
    step = int(bad.any(0).nonzero()[0])
    raise FloatingPointError(f"{where}: the model gave NaN or Inf {what} for row(s) {rows[:8]}"
                             f"{' ...' if len(rows) > 8 else ''}, first at step t={step}; check the model there (or "
                             "its inputs: huge controls overflow). The solvers report such a problem as "
                             "Status.NOT_FINITE instead")


def unchecked_rollout(dynamics: Dynamics, x0: torch.Tensor, U: torch.Tensor, t0: int = 0) -> torch.Tensor:
    """:func:`rollout` of batched ``x0 (B, n)``, ``U (B, T, m)`` without the argument checks (no scan for
    NaN), for solvers that roll out controls they made themselves."""
    xs = [x0]
    for t in range(U.shape[1]):
        xs.append(dynamics(xs[-1], U[:, t], t0 + t))
    return torch.stack(xs, 1)


def linearize(dynamics: Dynamics, X: torch.Tensor, U: torch.Tensor):
    """Affine model of ``dynamics`` around a trajectory, in the ``tau = [x; u]`` form of :func:`trajopt.lqr`.

    Args:
        X: states ``(B, T+1, n)`` (only ``X[:, :T]`` is used) or ``(B, T, n)``.
        U: controls ``(B, T, m)``.

    Returns:
        ``F (B, T, n, n+m)`` and ``f (B, T, n)`` with ``F_t tau_t + f_t = dynamics(x_t, u_t, t)``
        at the given points and the model's first derivatives there.

    Raises a ``FloatingPointError`` naming the rows and the first step where the values or Jacobians are NaN or
    Inf (no NaN is returned). Differentiable with respect to ``X``, ``U`` and the model's parameters.
    """
    where = "linearize"
    dims = _check_model(where, dynamics)
    T = U.shape[-2] if isinstance(U, torch.Tensor) and U.ndim >= 2 else None
    check_tensor(where, "U", U, ("T", "m"), dims)
    if isinstance(X, torch.Tensor) and X.ndim >= 2 and X.shape[-2] == T + 1:
        X = X[..., :T, :]
    if isinstance(X, torch.Tensor) and X.ndim >= 2 and X.shape[-2] != T:
        raise ValueError(f"{where}: X has shape {tuple(X.shape)}; expected T+1 = {T + 1} (or T = {T}) states for "
                         f"U's T = {T} controls")
    check_tensor(where, "X", X, ("T", "n"), dims)
    B = check_consistent(where, {"X": X, "U": U}, {"X": 2, "U": 2})
    if B is None:
        F, f = linearize(dynamics, X.unsqueeze(0), U.unsqueeze(0))
        return F[0], f[0]
    F, f = unchecked_linearize(dynamics, X.expand(B, T, dims["n"]), U.expand(B, T, dims["m"]))
    raise_if_not_finite(where, "values or Jacobians", torch.cat([F.flatten(-2), f], -1).unsqueeze(-1))
    return F, f


def unchecked_linearize(dynamics: Dynamics, X: torch.Tensor, U: torch.Tensor):
    """:func:`linearize` of batched ``X (B, T+1, n)`` or ``(B, T, n)`` and ``U (B, T, m)`` without the argument
    checks and the NaN scan (a row where the model is not finite comes back non-finite), for solvers."""
    X = X[:, :U.shape[1]]
    nxt, A, Bu = over_stages(lambda x, u, t: (dynamics(x, u, t), *dynamics.jacobians(x, u, t)),
                             dynamics, X, U)
    F = torch.cat([A, Bu], -1)
    f = nxt - (A @ X.unsqueeze(-1)).squeeze(-1) - (Bu @ U.unsqueeze(-1)).squeeze(-1)
    return F, f


def steps(dynamics: Dynamics, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``dynamics(x_t, u_t, t)`` at every stage of ``X (B, T, n)``, ``U (B, T, m)``: ``(B, T, n)``, one batched call
    for a time-invariant model. Differentiable with respect to ``X``, ``U`` and the model's tensors."""
    return over_stages(dynamics, dynamics, X, U)


def second_order_terms(dynamics: Dynamics, X: torch.Tensor, U: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``sum_i lam_{t+1,i} d^2 f_i / d tau_t^2`` at every stage of ``X (B, T+1, n)``, ``U (B, T, m)`` with costates
    ``lam (B, T+1, n)``, as ``(B, T, n+m, n+m)`` blocks (by :meth:`dynamics.Dynamics.vector_hessians`: never a full
    Hessian of the model). What DDP's Newton steps and the implicit gradients add to the cost's Hessians."""
    T = U.shape[1]
    hxx, hux, huu = over_stages(lambda x, u, lm, t: dynamics.vector_hessians(x, u, lm, t), dynamics,
                                X[:, :T], U, lam[:, 1:])
    return torch.cat([torch.cat([hxx, hux.mT], -1), torch.cat([hux, huu], -1)], -2)
