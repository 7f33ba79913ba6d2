"""Transition datasets: collected by rolling out any model or a Gymnasium environment."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base import Dynamics
from ..validation import (check_callable, check_consistent, check_finite, check_int, check_interval, check_nonnegative,
                          check_tensor)


@dataclass
class Transitions:
    """``N`` transitions: states ``x (N, n)``, controls ``u (N, m)``, next states ``x_next (N, n)``: float tensors of
    one dtype and device (a TypeError or ValueError names the one that is not). Finiteness is checked where they are
    used (:func:`~dynamics.learned.fit`, :func:`~dynamics.learned.identify`), which name the first bad row."""

    x: torch.Tensor
    u: torch.Tensor
    x_next: torch.Tensor

    def __post_init__(self):
        where = "Transitions"
        for name, dim in (("x", "n"), ("u", "m"), ("x_next", "n")):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a torch.Tensor (N, {dim}), got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"{where}: {name} must be a float tensor, got {value.dtype}")
            if value.ndim != 2:
                raise ValueError(f"{where}: {name} must be (N, {dim}), got shape {tuple(value.shape)}")
        check_consistent(where, {"x": self.x, "u": self.u, "x_next": self.x_next}, {"x": 1, "u": 1, "x_next": 1})
        if self.x.shape != self.x_next.shape:
            raise ValueError(f"{where}: x {tuple(self.x.shape)}, u {tuple(self.u.shape)} and x_next "
                             f"{tuple(self.x_next.shape)} must be (N, n), (N, m), (N, n)")

    @classmethod
    def _unchecked(cls, x, u, x_next) -> Transitions:
        """Transitions of tensors already checked (rows of a checked set; ``(E, N, ...)`` for ensembles)."""
        out = object.__new__(cls)
        out.x, out.u, out.x_next = x, u, x_next
        return out

    def __len__(self):
        return len(self.x)

    def check_model(self, where: str, model) -> None:
        """Raise naming ``where`` unless ``model`` (a :class:`~dynamics.Dynamics`) has this data's ``n`` and ``m``."""
        n, m = self.x.shape[-1], self.u.shape[-1]
        if (model.state_dim, model.control_dim) != (n, m):
            raise ValueError(f"{where}: data has n={n} states and m={m} controls but the model has "
                             f"n={model.state_dim}, m={model.control_dim}")

    def check(self, where: str, at_least: int) -> None:
        """Raise a ValueError naming ``where`` unless there are ``at_least`` transitions, all finite floats."""
        if len(self) < at_least:
            raise ValueError(f"{where}: data holds {len(self)} transition(s); at least {at_least} are needed")
        for name in ("x", "u", "x_next"):
            value = getattr(self, name)
            if not value.is_floating_point():
                raise TypeError(f"{where}: data.{name} must be a float tensor, got {value.dtype}")
            bad = ~torch.isfinite(value).all(-1)
            if bool(bad.any()):
                raise ValueError(f"{where}: data.{name} is not finite in {int(bad.sum())} of {len(self)} "
                                 f"transitions (first: row {int(bad.nonzero()[0])}); drop or repair them first")

    def __getitem__(self, index) -> Transitions:
        return Transitions._unchecked(self.x[index], self.u[index], self.x_next[index])

    def split(self, fraction: float, generator: torch.Generator | None = None):
        """A random ``(1 - fraction, fraction)`` split, e.g. into training and validation sets; ``fraction`` in
        ``(0, 1)``."""
        check_interval("Transitions.split", 0, 1, include_low=False, include_high=False, fraction=fraction)
        perm = torch.randperm(len(self), generator=generator)
        cut = len(self) - max(1, int(round(fraction * len(self))))
        return self[perm[:cut]], self[perm[cut:]]


def collect_from_model(model: Dynamics, x0: torch.Tensor, steps: int, u_low, u_high, *,
                       noise_std: float = 0.0, relative_noise: float = 0.0,
                       generator: torch.Generator | None = None) -> Transitions:
    """Roll ``model`` out from ``x0 (B, n)`` for ``steps`` with uniform random controls in ``[u_low, u_high]``.

    Returns ``B * steps`` transitions. Noise is added to the recorded states as a sensor would
    (each recorded state once, so ``x`` of one transition is ``x_next`` of the one before), not to
    the simulated ones: Gaussian with standard deviation ``noise_std`` plus ``relative_noise`` times
    each coordinate's spread over the rollouts.

    Raises a TypeError or ValueError naming the argument for a ``model`` that is not a :class:`~dynamics.Dynamics`,
    an ``x0`` that is not a finite float tensor ``(B, n)`` with ``B >= 1``, ``steps`` not an int ``>= 1``, bounds
    that are not finite numbers or tensors broadcastable to ``(m,)`` with ``u_low <= u_high``, and noise levels
    that are not finite numbers ``>= 0``.
    """
    where = "collect_from_model"
    if not isinstance(model, Dynamics):
        raise TypeError(f"{where}: model must be a dynamics.Dynamics (call .discretize() on a ContinuousDynamics), "
                        f"got {type(model).__name__}")
    check_tensor(where, "x0", x0, ("B", "n"), {"n": model.state_dim}, batchable=False)
    if x0.shape[0] < 1:
        raise ValueError(f"{where}: x0 must hold at least one initial state (B >= 1), got shape {tuple(x0.shape)}")
    check_int(where, steps=steps)
    check_nonnegative(where, noise_std=noise_std, relative_noise=relative_noise)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    B, m = x0.shape[0], model.control_dim
    low = _control_bound(where, "u_low", u_low, x0.dtype, m)          # drawn on the CPU (the generator's
    high = _control_bound(where, "u_high", u_high, x0.dtype, m)       # device), then moved to x0's
    if bool((low > high).any()):
        raise ValueError(f"{where}: u_low must be <= u_high in every coordinate, got u_low={u_low!r} and "
                         f"u_high={u_high!r}")
    U = (low + (high - low) * torch.rand(B, steps, m, generator=generator, dtype=x0.dtype)).to(x0.device)
    xs = [x0]
    with torch.no_grad():
        for t in range(steps):
            xs.append(model(xs[-1], U[:, t], t))
    X = torch.stack(xs, 1)
    bad = ~torch.isfinite(X).flatten(1).all(1)
    if bool(bad.any()):                 # data collection is once: no NaN goes into a dataset
        rows = bad.nonzero().flatten().tolist()
        step = int((~torch.isfinite(X[rows[0]])).any(-1).nonzero()[0])
        raise FloatingPointError(f"{where}: the model's rollout is not finite from x0 row(s) {rows[:10]}"
                                 f"{' ...' if len(rows) > 10 else ''} (row {rows[0]} from step {step}); collect from "
                                 "states and controls where the model is defined")
    if noise_std > 0 or relative_noise > 0:
        std = noise_std + relative_noise * X.reshape(-1, X.shape[-1]).std(0)
        X = X + std * torch.randn(X.shape, generator=generator, dtype=X.dtype).to(X.device)
    n = X.shape[-1]
    return Transitions(X[:, :-1].reshape(-1, n), U.reshape(-1, m), X[:, 1:].reshape(-1, n))


def _control_bound(where, name, value, dtype, m):
    """``value`` (a number or a tensor broadcastable to ``(m,)``) as a finite CPU tensor ``(m,)``."""
    try:
        bound = torch.as_tensor(value, dtype=dtype).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{where}: {name} must be a number or a float tensor broadcastable to (m,) = ({m},), "
                        f"got {type(value).__name__}") from None
    try:
        bound = bound.expand(m)
    except RuntimeError:
        raise ValueError(f"{where}: {name} has shape {tuple(bound.shape)}; expected a number or (m,) = ({m},)"
                         ) from None
    check_finite(where, {name: bound})
    return bound


def _describe(value) -> str:
    return f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__


def collect_from_env(env, steps: int, *, seed: int = 0, policy=None) -> Transitions:
    """Step a Gymnasium environment ``steps`` times (random actions unless a ``policy(obs) -> action`` is
    given), resetting when an episode ends; transitions are ``(observation, action, next observation)``.

    ``env`` follows the Gymnasium API (``reset(seed=...) -> (observation, info)``, ``step(action) -> (observation,
    reward, terminated, truncated, info)``) with a continuous (Box) action space of shape ``(m,)`` or ``()``;
    ``steps`` is an int ``>= 1``, ``seed`` an int ``>= 0`` (it seeds the first reset and the action space), and
    ``policy`` a callable or None. Every observation must be a finite vector ``(n,)`` (``n`` from the first) and
    every action a finite vector of the action space's ``m`` entries (a NumPy array, a number or a tensor). A
    TypeError or ValueError names the argument, or the step and what the environment or policy returned.
    """
    where = "collect_from_env"
    check_int(where, steps=steps)
    check_int(where, minimum=0, seed=seed)
    seed = int(seed)                        # Gymnasium takes Python integers only
    check_callable(where, allow_none=True, policy=policy)
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(f"{where}: env must be a Gymnasium environment (with reset() and step()), "
                        f"got {type(env).__name__}")
    space = getattr(env, "action_space", None)
    shape = getattr(space, "shape", None)
    if not (all(hasattr(space, a) for a in ("low", "high", "sample", "seed")) and isinstance(shape, tuple)):
        raise TypeError(f"{where}: env.action_space must be a continuous (Box) space, got {type(space).__name__}")
    if len(shape) > 1:
        raise ValueError(f"{where}: env.action_space must have shape (m,) or (), got {shape}")
    m = shape[0] if shape else 1

    first = []                                      # the first observation's shape, (n,)

    def observation(value, what):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{where}: {what} must be a vector of numbers, got {type(value).__name__}") from None
        if value.ndim != 1 or (first and value.shape != first[0]):
            want = f"{first[0]}, as the first one" if first else "(n,)"
            raise ValueError(f"{where}: {what} has shape {value.shape}; expected {want}")
        if not first:
            first.append(value.shape)
        if not np.isfinite(value).all():
            raise ValueError(f"{where}: {what} is not finite: {value}")
        return value

    def reset(what, **kwargs):
        out = env.reset(**kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"{where}: env.reset() must return (observation, info) (the Gymnasium API), "
                            f"got {_describe(out)}")
        return observation(out[0], what)

    xs, us, nxt = [], [], []
    obs = reset("the observation of env.reset(seed=seed)", seed=seed)
    space.seed(seed)
    for t in range(steps):
        source = "env.action_space.sample()" if policy is None else "policy(observation)"
        raw = space.sample() if policy is None else policy(obs)
        if isinstance(raw, torch.Tensor):
            raw = raw.detach().cpu().numpy()
        try:
            if raw is None:
                raise TypeError
            action = np.atleast_1d(np.asarray(raw, dtype=np.float64))
        except (TypeError, ValueError):
            raise TypeError(f"{where}: {source} at step {t} must return numbers, got {type(raw).__name__}"
                            ) from None
        if action.shape != (m,):
            raise ValueError(f"{where}: {source} at step {t} returned an action of shape {action.shape}; "
                             f"env.action_space has m = {m} entries")
        if not np.isfinite(action).all():
            raise ValueError(f"{where}: {source} at step {t} returned a non-finite action: {action}")
        out = env.step(raw)
        if not (isinstance(out, tuple) and len(out) == 5):
            raise TypeError(f"{where}: env.step() must return (observation, reward, terminated, truncated, info) "
                            f"(the Gymnasium API), got {_describe(out)}")
        new_obs, _, terminated, truncated, _ = out
        new_obs = observation(new_obs, f"the observation of env.step() at step {t}")
        xs.append(obs)
        us.append(action)
        nxt.append(new_obs)
        obs = new_obs
        if terminated or truncated:
            obs = reset(f"the observation of env.reset() after step {t}")
    return Transitions(*(torch.tensor(np.stack(a)) for a in (xs, us, nxt)))
