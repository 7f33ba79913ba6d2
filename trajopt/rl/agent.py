"""A model-based agent on real Gymnasium environments, and PETS (Chua et al. 2018) as its planner.

:class:`ModelBasedAgent` runs the loop of model-based RL on an environment's own ``step``: collect episodes
(uniform random actions for the first ``random_iterations``, then the planner's), fit a learned model to
everything collected so far (:func:`dynamics.learned.fit`: normalization, bootstrap members, early stopping;
optionally the best members by held-out error as elites), hand it to the planner, and repeat. It is seeded end
to end (the same seed gives the same log, wall time apart), writes a CSV log of the episode returns against
environment steps and wall time, checkpoints atomically after every iteration (a run killed at any point
resumes from its last checkpoint and continues the same curve) and shows a tqdm bar. :meth:`evaluate` runs a
batch of seeded episodes with the planner; :func:`plot_learning_curves` draws logs (matplotlib, optional).

The planner is a strategy, :class:`Planner`: ``reset(count, generator)`` at the start of ``count`` parallel
episodes, ``act(obs (B, n)) -> (B, m)`` at every step, ``update(model, data, info)`` after every fit, and a
``state_dict`` for what a checkpoint must keep. :class:`RandomPlanner` samples uniform actions; :class:`PETS`
is the cross-entropy method (or MPPI) in receding horizon on the task's known cost through the probabilistic
ensemble with trajectory sampling: ``P`` particles per candidate sequence, each following one member for the
whole plan (TS-1, ``propagation="random"``) or a fresh one at every step (TS-infinity,
``propagation="random_every_step"``), optionally sampling the member's Gaussian; a candidate's cost is the mean
over its particles.

How particles reach :func:`trajopt.cem` and :func:`trajopt.mppi` unchanged: :class:`ParticleDynamics` is a
:class:`dynamics.Dynamics` on the stacked state ``(P n,)`` of ``P`` particles (its batch rows are the solver's
problems x samples, so the particles are the problem's rows repeated ``P`` times, kept side by side), and
:class:`ParticleCost` averages the task's cost over them. The ensemble runs once per step on all particles of
all samples as one batched product per layer, each member on its own particles.

Nothing here is differentiable: acting, planning (CEM sorts) and collecting run without gradients, and the model
is trained by :func:`~dynamics.learned.fit`.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
import csv
import math
import numbers
import os
import time

import numpy as np
import torch

from dynamics import Dynamics
from dynamics.learned import ProbabilisticEnsemble, Transitions, fit
from dynamics.validation import check_finite
from .._core.checks import check_bool, check_int, check_positive
from .._core.costs import Cost
from .._core.problem import Problem
from .._solvers.sampling import cem, mppi
from ._checks import (check_action_bounds, check_checkpoint, check_features, check_float_dtype, check_module_state,
                      check_noise_std, check_output_path, check_state_tensor)
from .logs import atomic_write, read_checkpoint, write_rows

__all__ = ["Planner", "RandomPlanner", "PETS", "ParticleDynamics", "ParticleCost", "ModelBasedAgent",
           "PendulumV1Cost", "plot_learning_curves", "read_log"]

LOG_COLUMNS = ("iteration", "phase", "env_steps", "episodes", "return_mean", "return_std", "return_min",
               "return_max", "transitions", "fit_epochs", "val_loss", "elite_members", "time")


class PendulumV1Cost(Cost):
    """Gymnasium ``Pendulum-v1``'s reward, negated, on its observation ``x = (cos theta, sin theta, theta_dot)``:
    ``atan2(sin, cos)^2 + 0.1 theta_dot^2 + 0.001 u^2`` (the reward of the state an action is taken in, as the
    environment scores it). ``x (..., 3)``, ``u (..., 1)`` give ``(...)``; differentiable in both. Their shapes
    are checked, not their values (NaN propagates to the cost of its row)."""

    def stage(self, x, u, t=None):
        check_features("PendulumV1Cost.stage", "x", x, 3, dims="3")
        check_features("PendulumV1Cost.stage", "u", u, 1, dims="1")
        theta = torch.atan2(x[..., 1], x[..., 0])
        return theta ** 2 + 0.1 * x[..., 2] ** 2 + 0.001 * u[..., 0] ** 2


# ---------------------------------------------------------------------------------------------- planners
class Planner(abc.ABC):
    """The strategy a :class:`ModelBasedAgent` acts with. Subclasses override :meth:`act` and whatever else they
    need; every method has a do-nothing default except :meth:`act`.

    - ``update(model, data, info)``: after every fit, the fitted model, all transitions so far and a dict
      ``info`` (``elites``: the ensemble members chosen, or None; ``history``: :func:`~dynamics.learned.fit`'s,
      None when the agent rebuilds the planner from a checkpoint; ``generator``: a seeded ``torch.Generator``
      for the update's own draws, absent on a rebuild).
    - ``reset(count, generator)``: ``count`` episodes start in parallel; ``generator`` (a seeded
      ``torch.Generator`` on the model's device) is the planner's random source until the next reset.
    - ``act(obs (B, n)) -> actions (B, m)``: actions for the current observations (a tensor of the model's
      dtype and device). Rows of episodes that have ended are still passed (their last observation); their
      actions are ignored.
    - ``state_dict()`` / ``load_state_dict(state)``: what a checkpoint taken between iterations must keep
      (a planner with trained weights, say); reset state need not be kept.
    - ``evaluating``: True while :meth:`ModelBasedAgent.evaluate` runs (the agent sets it), so that a planner may
      act differently there (:class:`~trajopt.rl.MBPO`: its policy's mean action).
    """

    evaluating: bool = False

    def update(self, model, data: Transitions, info: dict | None = None) -> None:
        """Nothing to learn by default (a planner on a fixed model or a random one)."""

    def reset(self, count: int, generator: torch.Generator) -> None:
        """No per-episode state by default."""

    @abc.abstractmethod
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions ``(B, m)`` for observations ``(B, n)``."""

    def state_dict(self) -> dict:
        """Nothing to checkpoint by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore by default."""



def check_update(where: str, model, data, info, bounds, dims, seen: int, use_elites: bool):
    """The checks of a learning planner's :meth:`Planner.update` (MBPO, ValueGuidedMPPI): ``model`` an ensemble
    (:class:`~dynamics.learned.ProbabilisticEnsemble`'s interface), ``data`` its :class:`Transitions` that only grow
    (``seen`` of the last update), ``info`` None or a dict, ``bounds`` ``((name, tensor or number), ...)`` of sizes 1
    or ``m``, ``dims`` ``(n, m)`` of the planner's networks or None, ``info["generator"]`` a ``torch.Generator`` or
    None and ``info["elites"]`` (read when ``use_elites``) None or member indices. Returns ``(info, generator,
    elites)``."""
    if not all(hasattr(model, k) for k in ("member_outputs", "members", "state_dim", "control_dim", "out_std",
                                           "out_mean", "parameters")):
        raise TypeError(f"{where}: model must be an ensemble such as dynamics.learned.ProbabilisticEnsemble "
                        f"(member_outputs, members, state_dim, control_dim), got {type(model).__name__}")
    if not isinstance(data, Transitions):
        raise TypeError(f"{where}: data must be a dynamics.learned.Transitions, got {type(data).__name__}")
    data.check_model(where, model)
    if info is not None and not isinstance(info, Mapping):
        raise TypeError(f"{where}: info must be a dict (elites, generator) or None, got {type(info).__name__}")
    info = info or {}
    n, m = model.state_dim, model.control_dim
    for name, value in bounds:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[-1] not in (1, m):
            raise ValueError(f"{where}: {name} has shape {tuple(value.shape)} but the model's actions have "
                             f"m = {m}; expected a number or (m,) = ({m},)")
    if dims is not None and dims != (n, m):
        raise ValueError(f"{where}: model has n={n}, m={m} but this planner's networks were built for n={dims[0]}, "
                         f"m={dims[1]}")
    if len(data) < seen:
        raise ValueError(f"{where}: data holds {len(data)} transitions, fewer than the {seen} of the last update; it "
                         "must only grow (all real transitions so far)")
    generator = info.get("generator")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: info['generator'] must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    elites = info.get("elites") if use_elites else None
    if elites is not None and not (isinstance(elites, (list, tuple)) and elites and all(
            isinstance(e, numbers.Integral) and not isinstance(e, bool) and 0 <= e < model.members
            for e in elites)):
        raise ValueError(f"{where}: info['elites'] must be None or a non-empty list of member indices in "
                         f"[0, {model.members}), got {elites!r}")
    return info, generator, elites

class RandomPlanner(Planner):
    """Uniform random actions in ``[low, high]``: the agent's collection phase.

    ``low``, ``high``: finite, ``low <= high``, each a number (a NumPy scalar too) or a float tensor of at most
    one dimension, broadcastable together to ``(m,)``. A list, tuple or NumPy array raises a TypeError naming the
    bound, as every bound of :mod:`trajopt` does (pass ``torch.tensor(...)``: its shape is then the action size).

    ``action_dim``: the action size ``m`` (an int >= 1), to which the bounds broadcast: ``act`` returns
    ``(B, m)``. When None (the default) the actions take the bounds' own shape: ``(B, m)`` for ``(m,)`` tensors,
    ``(B,)`` for two numbers, until a :class:`ModelBasedAgent` is given the planner: it sets ``action_dim`` to its
    environment's ``m`` (so ``RandomPlanner(-2.0, 2.0)`` serves an environment of any action size)."""

    def __init__(self, low, high, action_dim: int | None = None):
        self.low, self.high = check_action_bounds("RandomPlanner", low, high)
        self.action_dim = None
        if action_dim is not None:
            check_int("RandomPlanner", action_dim=action_dim)
            self.action_dim = int(action_dim)
            self.shape_for("RandomPlanner", self.action_dim)
        self.generator = None

    def shape_for(self, where, m, name="low and high"):
        """The actions' shape ``(m,)`` for an action size ``m``, checked: the bounds must broadcast to it (a
        ValueError names the planner's bounds otherwise)."""
        shape = torch.broadcast_shapes(self.low.shape, self.high.shape)
        try:
            ok = torch.broadcast_shapes(shape, (m,)) == (m,)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{where}: {name} broadcast to {tuple(shape)}, not to the actions' (m,) = ({m},); give "
                             f"numbers or bounds of shape ({m},)")
        return (m,)

    def reset(self, count, generator):
        self.generator = generator

    def act(self, obs):
        if not (isinstance(obs, torch.Tensor) and obs.ndim == 2 and obs.is_floating_point()):
            raise ValueError(f"RandomPlanner.act: obs must be a float tensor (B, n), got "
                             f"{tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
        low, high = (b.to(obs) for b in (self.low, self.high))
        m = torch.broadcast_shapes(low.shape, high.shape) if self.action_dim is None else (self.action_dim,)
        draw = torch.rand(obs.shape[0], *m, generator=self.generator, dtype=obs.dtype, device=obs.device)
        return low + (high - low) * draw


class ParticleDynamics(Dynamics):
    """``P`` particles of a :class:`~dynamics.learned.ProbabilisticEnsemble` side by side: state ``(R, P n)``
    (particle ``p`` in columns ``p n .. p n + n - 1``), control ``(R, m)`` shared by a row's particles.

    Particle ``p`` follows member ``members[p % K]`` of the ``K`` members used (all, or the elites). With
    ``propagation="random"`` (TS-1) that holds for the whole plan; with ``"random_every_step"`` (TS-infinity)
    each row's particles are shuffled at every step first (a random permutation, so every member still gets
    ``P / K`` particles of each row); ``"expectation"`` moves every particle by the mean of all members' means.
    ``sample`` adds each member's Gaussian noise (its predicted standard deviation) to its mean, as PETS does.
    ``P`` must be a multiple of ``K`` for the two random propagations. Random draws come from ``generator``
    (set by the planner before each solve). Not differentiable in use (called under ``no_grad``), though it
    would be in the states and the weights with ``sample=False`` and ``propagation="random"``.
    """

    def __init__(self, model: ProbabilisticEnsemble, particles: int, propagation: str = "random",
                 sample: bool = True, members=None):
        check_int("ParticleDynamics", particles=particles)
        particles = int(particles)
        super().__init__(particles * model.state_dim, model.control_dim)
        if propagation not in ProbabilisticEnsemble.PROPAGATIONS:
            raise ValueError(f"ParticleDynamics: propagation must be one of {ProbabilisticEnsemble.PROPAGATIONS}, "
                             f"got {propagation!r}")
        self.model, self.particles, self.propagation, self.sample = model, particles, propagation, sample
        self.member_ids = None if members is None else [int(e) for e in members]
        K = model.members if members is None else len(self.member_ids)
        if propagation != "expectation" and particles % K:
            raise ValueError(f"ParticleDynamics: particles ({particles}) must be a multiple of the members used ({K})")
        self.K = K
        self.generator: torch.Generator | None = None

    def forward(self, x, u, t=None):
        R, P, K = x.shape[0], self.particles, self.K
        n, m = self.model.state_dim, u.shape[-1]
        z = x.reshape(R, P, n)
        opts = dict(dtype=x.dtype, device=x.device, generator=self.generator)
        if self.propagation == "expectation":
            mean, logvar = self.model.member_outputs(z.reshape(R * P, n), u.repeat_interleave(P, 0), self.member_ids)
            if self.sample:
                mean = mean + torch.randn(mean.shape, **opts) * (0.5 * logvar).exp()
            delta = mean.mean(0) * self.model.out_std + self.model.out_mean
            return (z.reshape(R * P, n) + delta).reshape(R, P * n)
        if self.propagation == "random_every_step":
            perm = torch.rand(R, P, **opts).argsort(1)
            z = z.gather(1, perm.unsqueeze(-1).expand(R, P, n))
        k = P // K
        zz = z.reshape(R, k, K, n).permute(2, 0, 1, 3).reshape(K, R * k, n)      # member-major
        uu = u.reshape(1, R, 1, m).expand(K, R, k, m).reshape(K, R * k, m)
        mean, logvar = self.model.member_outputs(zz, uu, self.member_ids)
        if self.sample:
            mean = mean + torch.randn(mean.shape, **opts) * (0.5 * logvar).exp()
        nxt = zz + mean * self.model.out_std + self.model.out_mean
        return nxt.reshape(K, R, k, n).permute(1, 2, 0, 3).reshape(R, P * n)


class ParticleCost(Cost):
    """The mean of ``cost`` over the ``particles`` stacked in a :class:`ParticleDynamics` state: stage
    ``(...)`` of ``x (..., P n)``, ``u (..., m)``; terminal likewise. Differentiable as ``cost`` is."""

    def __init__(self, cost: Cost, particles: int, state_dim: int):
        super().__init__()
        if cost.time_varying or not cost.separable:
            raise ValueError("ParticleCost: cost must be time-invariant and separable over stages")
        self.cost, self.particles, self.n = cost, particles, state_dim

    def _split(self, x):
        return x.reshape(*x.shape[:-1], self.particles, self.n)

    def stage(self, x, u, t=None):
        return self.cost.stage(self._split(x), u.unsqueeze(-2), t).mean(-1)

    def terminal(self, x):
        return self.cost.terminal(self._split(x)).mean(-1)


class PETS(Planner):
    """PETS: a probabilistic ensemble with trajectory sampling, planned by CEM (or MPPI) in receding horizon.

    At every step the plan of each row is warm-started from the previous one shifted by a step (the last control
    repeated), and :func:`trajopt.cem` (``solver="cem"``: ``samples``, ``elites``, ``iterations``, initial spread
    ``noise_std``, reset at every step as in PETS) or :func:`trajopt.mppi` (``solver="mppi"``: ``samples``,
    ``iterations``, ``noise_std``, ``temperature``) refines it on :class:`ParticleCost` of ``cost`` through
    :class:`ParticleDynamics` of the fitted ensemble; the first control is applied. ``first_iterations``
    (default ``iterations``) is the budget of an episode's first, cold solve.

    Args:
        cost: the task's known :class:`trajopt.Cost` on observations (time-invariant).
        horizon: planned steps ``T``.
        u_lower, u_upper: the action bounds, finite, each a number (a NumPy scalar too) or a float tensor
            broadcastable to ``(m,)``; a list, tuple or NumPy array raises a TypeError naming it (pass
            ``torch.tensor(...)``), as every bound of :mod:`trajopt` does. :meth:`update` checks them against the
            model's ``m``.
        particles: ``P`` per candidate sequence (a multiple of the members used).
        samples, iterations, elites: candidate sequences per iteration, iterations per step, and CEM's elite
            samples (not the ensemble's elite members, which the agent chooses).
        noise_std: the solver's initial spread, a positive finite number or float tensor ``(m,)``; a quarter of
            the bounds' width by default.
        propagation: ``"random"`` (TS-1), ``"random_every_step"`` (TS-infinity) or ``"expectation"``.
        sample: draw each particle's next state from its member's Gaussian (else its mean).
        use_elites: plan with the elite members the agent chose (``info["elites"]``) when it chose some.
        compile: passed to the solver (a compiled rollout of the samples).

    Counts may be NumPy integers and bounds NumPy scalars; every option is checked at construction (an error names
    it).
    """

    def __init__(self, cost: Cost, horizon: int, u_lower, u_upper, *, solver: str = "cem", particles: int = 20,
                 propagation: str = "random", sample: bool = True, samples: int = 400, iterations: int = 5,
                 first_iterations: int | None = None, elites: int = 40, noise_std=None, temperature: float = 1.0,
                 use_elites: bool = True, compile: bool = False):
        where = "PETS"
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost on observations (e.g. PendulumV1Cost()), got "
                            f"{type(cost).__name__}")
        if cost.time_varying or not cost.separable:
            raise ValueError(f"{where}: cost must be time-invariant and separable over stages")
        if solver not in ("cem", "mppi"):
            raise ValueError(f"{where}: solver must be 'cem' or 'mppi', got {solver!r}")
        if propagation not in ProbabilisticEnsemble.PROPAGATIONS:
            raise ValueError(f"{where}: propagation must be one of {ProbabilisticEnsemble.PROPAGATIONS}, "
                             f"got {propagation!r}")
        check_int(where, horizon=horizon, particles=particles, samples=samples, iterations=iterations, elites=elites)
        if first_iterations is not None:
            check_int(where, first_iterations=first_iterations)
        if solver == "cem" and elites > samples:
            raise ValueError(f"{where}: elites ({elites}) must be at most samples ({samples})")
        check_positive(where, temperature=temperature)
        check_bool(where, sample=sample, use_elites=use_elites, compile=compile)
        self.u_lower, self.u_upper = check_action_bounds(where, u_lower, u_upper, ("u_lower", "u_upper"))
        noise_std = check_noise_std(where, noise_std)
        self.cost, self.horizon, self.solver = cost, int(horizon), solver
        self.particles, self.propagation, self.sample = int(particles), propagation, sample
        self.samples, self.iterations, self.elites = int(samples), int(iterations), int(elites)
        self.first_iterations = self.iterations if first_iterations is None else int(first_iterations)
        self.noise_std = ((self.u_upper - self.u_lower) / 4).clamp_min(1e-3) if noise_std is None else noise_std
        self.temperature, self.use_elites, self.compile = float(temperature), use_elites, compile
        self.dynamics: ParticleDynamics | None = None
        self.particle_cost: ParticleCost | None = None
        self.generator, self._plan = None, None

    def update(self, model, data, info=None):
        """Plan with ``model`` (a :class:`~dynamics.learned.ProbabilisticEnsemble`) from now on; its ``m`` must fit
        the bounds and ``noise_std``, and ``particles`` must be a multiple of the members used."""
        where = "PETS.update"
        if not all(hasattr(model, k) for k in ("member_outputs", "members", "state_dim", "control_dim")):
            raise TypeError(f"{where}: model must be an ensemble such as dynamics.learned.ProbabilisticEnsemble "
                            f"(member_outputs, members, state_dim, control_dim), got {type(model).__name__}")
        m = model.control_dim
        for name, value in (("u_lower", self.u_lower), ("u_upper", self.u_upper), ("noise_std", self.noise_std)):
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[-1] not in (1, m):
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)} but the model's actions have "
                                 f"m = {m}; expected a number or (m,) = ({m},)")
        members = (info or {}).get("elites") if self.use_elites else None
        K = model.members if members is None else len(members)
        if self.propagation != "expectation" and self.particles % K:
            raise ValueError(f"{where}: particles ({self.particles}) must be a multiple of the ensemble members "
                             f"used ({K}{' elites' if members is not None else ''}) with propagation "
                             f"{self.propagation!r}")
        self.dynamics = ParticleDynamics(model, self.particles, self.propagation, self.sample, members)
        self.particle_cost = ParticleCost(self.cost, self.particles, model.state_dim)

    def reset(self, count, generator):
        self.generator, self._plan = generator, None

    @torch.no_grad()
    def act(self, obs):
        if self.dynamics is None:
            raise RuntimeError("PETS.act: no model yet; call update(model, data) first")
        if not (isinstance(obs, torch.Tensor) and obs.ndim == 2):
            raise ValueError(f"PETS.act: obs must be a tensor (B, n), got "
                             f"{tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
        model_dtype = next((p.dtype for p in self.dynamics.model.parameters() if p.is_floating_point()), None)
        check_features("PETS.act", "obs", obs, self.dynamics.model.state_dim, model_dtype, dims="n")
        check_finite("PETS.act", {"obs": obs})
        B, T, m = obs.shape[0], self.horizon, self.dynamics.control_dim
        low, high = (b.to(obs).expand(m) for b in (self.u_lower, self.u_upper))
        if self._plan is None or self._plan.shape[0] != B:
            U, budget = ((low + high) / 2).expand(B, T, m).clone(), self.first_iterations
        else:
            U, budget = torch.cat([self._plan[:, 1:], self._plan[:, -1:]], 1), self.iterations
        self.dynamics.generator = self.generator
        problem = Problem(self.dynamics, self.particle_cost, obs.repeat(1, self.particles), U_init=U, horizon=T,
                          u_lower=low.expand(B, T, m), u_upper=high.expand(B, T, m))
        common = dict(samples=self.samples, max_iter=budget, noise_std=self.noise_std, generator=self.generator,
                      rollout_plan=False, compile=self.compile)
        if self.solver == "cem":
            sol = cem(problem, elites=self.elites, **common)
        else:
            sol = mppi(problem, temperature=self.temperature, **common)
        self._plan = sol.U
        return sol.U[:, 0]


# ---------------------------------------------------------------------------------------------- the agent
class ModelBasedAgent:
    """The model-based RL loop on a real Gymnasium environment: collect, fit, update the planner, repeat.

    One iteration runs ``envs`` episodes in parallel (environments made by ``make_env()``, seeded from ``seed``
    and the iteration), with uniform random actions in the action space for the first ``random_iterations``
    iterations and ``planner``'s afterwards; then fits ``model`` (warm: it keeps its weights from the last fit) to
    all transitions ``(observation, action, next observation)`` so far, with ``fit_options`` for
    :func:`dynamics.learned.fit` (seeded with ``seed`` and the iteration; ``progress`` off); with ``elite_members``
    (an int ``K``) picks the ``K`` members of an ensemble with the least held-out error (on ``fit``'s validation
    split); and calls ``planner.update(model, data, {"elites": ..., "history": ...})``.

    Args:
        make_env: a function returning a fresh ``gymnasium.Env`` (a ``Box`` action space), or an environment id.
        model: the learned model (a :class:`~dynamics.learned.ProbabilisticEnsemble` for PETS) of the observation.
        planner: a :class:`Planner`; its actions must be ``(B, m)`` for the action space's ``m`` and finite (an
            error names the planner otherwise). A :class:`RandomPlanner`'s bounds must broadcast to ``(m,)`` (numbers
            do: the agent sets its ``action_dim`` to ``m``) and a :class:`PETS`'s be numbers or of size 1 or ``m``:
            checked here.
        seed: an int >= 0; seeds everything (episode resets, random actions, the planner's draws, the fits).
        envs: episodes per iteration, stepped in parallel and planned as one batch.
        random_iterations: iterations of uniform random actions first (at least 1: the planner needs a model).
        max_episode_steps: cut episodes at this length, an int >= 1 (default None: the environment's own limit).
        dtype: of the observations, the model and the plans, torch.float32 (the default: the planner's
            speed) or torch.float64.
        log: CSV path of one row per iteration (:data:`LOG_COLUMNS`), rewritten from the checkpoint on resume.
        checkpoint: path written atomically after every iteration; :meth:`train` resumes from it when it exists.
            ``log`` and ``checkpoint`` must lie in folders that exist (a FileNotFoundError naming the path at
            construction, not at the first write).
        progress: a tqdm bar over environment steps.

    ``rows`` holds the log; a row's ``return_*`` are the returns of that iteration's episodes, ``env_steps`` the
    steps taken so far (all environments), ``val_loss`` and ``fit_epochs`` the fit after them, ``time`` the
    seconds of this run so far (carried across resumes).
    """

    def __init__(self, make_env, model, planner: Planner, *, seed: int = 0, envs: int = 1,
                 random_iterations: int = 1, fit_options: dict | None = None, elite_members: int | None = None,
                 max_episode_steps: int | None = None, dtype: torch.dtype = torch.float32, log: str | None = None,
                 checkpoint: str | None = None, progress: bool = True):
        where = "ModelBasedAgent"
        env_id = None
        if isinstance(make_env, str):
            env_id = make_env

            def make_env():
                import gymnasium
                return gymnasium.make(env_id)
        if not callable(make_env):
            raise TypeError(f"{where}: make_env must be a function or an environment id, got "
                            f"{type(make_env).__name__}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{where}: model must be a learned model of dynamics.learned (a torch.nn.Module such "
                            f"as ProbabilisticEnsemble), got {type(model).__name__}")
        if not isinstance(planner, Planner):
            raise TypeError(f"{where}: planner must be a trajopt.rl.agent.Planner, got "
                            f"{type(planner).__name__}")
        check_int(where, envs=envs, random_iterations=random_iterations)
        check_int(where, minimum=0, seed=seed)
        if max_episode_steps is not None:
            check_int(where, max_episode_steps=max_episode_steps)
            max_episode_steps = int(max_episode_steps)
        if elite_members is not None and not (isinstance(model, ProbabilisticEnsemble)
                                              and isinstance(elite_members, numbers.Integral)
                                              and not isinstance(elite_members, bool)
                                              and 1 <= elite_members <= model.members):
            raise ValueError(f"{where}: elite_members must be None or an int in [1, members] for a "
                             f"ProbabilisticEnsemble, got {elite_members!r}")
        seed, envs, random_iterations = int(seed), int(envs), int(random_iterations)
        elite_members = None if elite_members is None else int(elite_members)
        if fit_options is not None and not isinstance(fit_options, dict):
            raise TypeError(f"{where}: fit_options must be a dict of dynamics.learned.fit's options or None, got "
                            f"{type(fit_options).__name__}")
        check_float_dtype(where, dtype)
        check_output_path(where, "log", log)
        check_output_path(where, "checkpoint", checkpoint)
        check_bool(where, progress=progress)
        self.make_env, self.model, self.planner = make_env, model.to(dtype), planner
        self.seed, self.envs, self.random_iterations = seed, envs, random_iterations
        self.elite_members = elite_members
        self.fit_options = dict(fit_options or {})
        self.max_episode_steps, self.dtype = max_episode_steps, dtype
        self.log_path, self.checkpoint_path, self.progress = log, checkpoint, progress
        try:
            self._envs = [make_env() for _ in range(envs)]
        except Exception as error:
            import gymnasium
            if env_id is None or not isinstance(error, gymnasium.error.Error):
                raise
            raise ValueError(f"{where}: make_env {env_id!r} is not an environment id Gymnasium can make: "
                             f"{error}") from error
        space = self._envs[0].action_space
        if not (hasattr(space, "low") and hasattr(space, "high") and len(getattr(space, "shape", ()) or ()) == 1):
            raise TypeError(f"{where}: make_env must make environments with a Box action space (m,), got "
                            f"{space!r}")
        obs_shape = getattr(self._envs[0].observation_space, "shape", None)
        for name, want in (("state_dim", obs_shape[0] if obs_shape and len(obs_shape) == 1 else None),
                           ("control_dim", space.shape[0])):
            have = getattr(model, name, None)
            if want is not None and isinstance(have, numbers.Integral) and have != want:
                raise ValueError(f"{where}: model has {name} = {have} but the environment's "
                                 f"{'observations' if name == 'state_dim' else 'actions'} have {want}")
        self.action_dim = m = int(space.shape[0])
        if all(isinstance(getattr(planner, name, None), torch.Tensor) for name in ("u_lower", "u_upper")):
            for name in ("u_lower", "u_upper"):        # a planner with bounds (PETS, ValueGuidedMPPI)
                bound = getattr(planner, name)
                if bound.ndim and bound.shape[-1] not in (1, m):
                    raise ValueError(f"{where}: planner ({type(planner).__name__}) has {name} of shape "
                                     f"{tuple(bound.shape)} but the environment's actions have m = {m}; expected a "
                                     f"number or (m,) = ({m},)")
        elif isinstance(planner, RandomPlanner):
            if planner.action_dim is not None and planner.action_dim != m:
                raise ValueError(f"{where}: planner (RandomPlanner) has action_dim = {planner.action_dim} but the "
                                 f"environment's actions have m = {m}")
            planner.shape_for(where, m, "planner (RandomPlanner)'s low and high")
            planner.action_dim = m
        self.u_low = torch.as_tensor(space.low, dtype=dtype)
        self.u_high = torch.as_tensor(space.high, dtype=dtype)
        self.random = RandomPlanner(self.u_low, self.u_high)
        self.iteration, self.env_steps, self.elapsed, self.rows = 0, 0, 0.0, []
        self.data: Transitions | None = None
        self.chosen_elites = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _seed(self, *salt: int) -> int:
        """A seed derived from the agent's ``seed`` and ``salt`` (the same on every run)."""
        return int(np.random.SeedSequence([self.seed, *salt]).generate_state(1)[0])

    def _generator(self, *salt: int) -> torch.Generator:
        """A generator on the model's device seeded by :meth:`_seed`."""
        return torch.Generator(self.device).manual_seed(self._seed(*salt))

    # ---------------------------------------------------------------------------------- episodes
    def _episodes(self, envs, planner: Planner, seeds, generator, record: bool, bar=None):
        """Run one episode in each of ``envs`` (reset with ``seeds``) under ``planner``, all rows at once; returns
        the episode returns ``(len(envs),)``, the transitions (when ``record``) and the steps taken."""
        obs = np.stack([env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)])
        planner.reset(len(envs), generator)
        limit = self.max_episode_steps or math.inf
        done, returns, length = np.zeros(len(envs), bool), np.zeros(len(envs)), 0
        xs, us, nexts = [], [], []
        while not done.all() and length < limit:
            x = torch.as_tensor(obs, dtype=self.dtype, device=self.device)
            actions = self._actions(planner, planner.act(x), len(envs))
            live = np.flatnonzero(~done)
            new = obs.copy()
            for i in live:
                new[i], reward, terminated, truncated, _ = envs[i].step(actions[i].astype(envs[i].action_space.dtype))
                returns[i] += reward
                done[i] = terminated or truncated
            if record:
                xs.append(obs[live]), us.append(actions[live]), nexts.append(new[live])
            obs, length = new, length + 1
            if bar is not None:
                bar.update(len(live))
        data = None
        if record:
            data = Transitions(*(torch.as_tensor(np.concatenate(a), dtype=self.dtype, device=self.device)
                                 for a in (xs, us, nexts)))
        return returns, data, sum(len(x) for x in xs) if record else None

    def _actions(self, planner, actions, B):
        """The planner's actions as a float64 array ``(B, m)``: a tensor of that shape, finite (a planner's NaN would
        reach the environment, its returns and the data the model is fitted to)."""
        m, name = self.action_dim, type(planner).__name__
        if not (isinstance(actions, torch.Tensor) and actions.shape == (B, m)):
            got = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
            raise ValueError(f"ModelBasedAgent: planner ({name}).act must return actions (B, m) = ({B}, {m}) (the "
                             f"environment's action size m = {m}), got {got}")
        actions = actions.detach().to("cpu", torch.float64).numpy()
        bad = np.flatnonzero(~np.isfinite(actions).all(-1))
        if bad.size:
            raise ValueError(f"ModelBasedAgent: planner ({name}).act returned NaN or Inf actions in row(s) "
                             f"{bad[:8].tolist()}")
        return actions

    # ---------------------------------------------------------------------------------- training
    def train(self, env_steps: int, *, resume: bool = True) -> list[dict]:
        """Run iterations until at least ``env_steps`` environment steps have been taken in all (whole
        iterations: the last may pass the budget). With ``resume`` and an existing checkpoint file, continue from
        it first. Returns the log rows."""
        check_int("ModelBasedAgent.train", minimum=0, env_steps=env_steps)
        check_bool("ModelBasedAgent.train", resume=resume)
        if resume and self.checkpoint_path is not None and os.path.exists(self.checkpoint_path) and self.iteration == 0:
            self.load(self.checkpoint_path)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=env_steps, initial=min(self.env_steps, env_steps), desc="model-based agent", unit="step")
        try:
            while self.env_steps < env_steps:
                row = self.step(bar)
                if bar is not None:
                    bar.set_postfix(ret=f"{row['return_mean']:.1f}", it=row["iteration"])
        finally:
            if bar is not None:
                bar.close()
        return self.rows

    def step(self, bar=None) -> dict:
        """One iteration: episodes, fit, planner update, log row and checkpoint. Returns the row."""
        start = time.perf_counter()
        it = self.iteration
        phase = "random" if it < self.random_iterations else "planner"
        planner = self.random if phase == "random" else self.planner
        seeds = [self._seed(1, it, i) for i in range(self.envs)]
        returns, new, steps = self._episodes(self._envs, planner, seeds, self._generator(2, it), True, bar)
        self.data = new if self.data is None else Transitions(*(torch.cat([a, b]) for a, b in zip(
            (self.data.x, self.data.u, self.data.x_next), (new.x, new.u, new.x_next))))
        self.env_steps += steps
        options = {"progress": False, **self.fit_options, "seed": self._seed(3, it)}
        history = fit(self.model, self.data, **options)
        self.chosen_elites = self._choose_elites(options) if self.elite_members is not None else None
        self.planner.update(self.model, self.data, {"elites": self.chosen_elites, "history": history,
                                                    "generator": self._generator(5, it)})
        self.iteration += 1
        self.elapsed += time.perf_counter() - start
        row = dict(iteration=it, phase=phase, env_steps=self.env_steps, episodes=len(returns),
                   return_mean=float(returns.mean()), return_std=float(returns.std()),
                   return_min=float(returns.min()), return_max=float(returns.max()), transitions=len(self.data),
                   fit_epochs=history["epochs"], val_loss=min(history["val_loss"]),
                   elite_members=" ".join(map(str, self.chosen_elites)) if self.chosen_elites is not None else "",
                   time=round(self.elapsed, 3))
        self.rows.append(row)
        self._write_log()
        if self.checkpoint_path is not None:
            self.save(self.checkpoint_path)
        return row

    @torch.no_grad()
    def _choose_elites(self, options) -> list[int]:
        """The ``elite_members`` members with the least mean squared error (normalized) on ``fit``'s validation split
        (the same split: :meth:`Transitions.split` with a generator seeded as ``fit`` seeds its own)."""
        _, val = self.data.split(options.get("val_fraction", 0.1),
                                 generator=torch.Generator().manual_seed(options["seed"]))
        mean, _ = self.model.member_outputs(val.x, val.u)
        err = (mean - self.model.normalized_targets(val)).square().mean((1, 2))
        return sorted(err.argsort()[:self.elite_members].tolist())

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(self, episodes: int = 100, *, seed: int = 0, progress: bool | None = None) -> np.ndarray:
        """Returns ``(episodes,)`` of the planner on ``episodes`` fresh environments reset with seeds ``seed ..
        seed + episodes - 1``, all planned as one batch (the planner's draws seeded by the agent's seed and
        ``seed``), with ``planner.evaluating`` True meanwhile. Changes nothing of the training run."""
        check_int("ModelBasedAgent.evaluate", episodes=episodes)
        check_int("ModelBasedAgent.evaluate", minimum=0, seed=seed)
        if progress is not None:
            check_bool("ModelBasedAgent.evaluate", progress=progress)
        if self.iteration == 0:
            raise RuntimeError("ModelBasedAgent.evaluate: train first (the planner has no model)")
        envs = [self.make_env() for _ in range(episodes)]
        bar = None
        if self.progress if progress is None else progress:
            from tqdm.auto import tqdm
            bar = tqdm(desc=f"evaluate ({episodes} episodes)", unit="step")
        self.planner.evaluating = True
        try:
            returns, _, _ = self._episodes(envs, self.planner, range(seed, seed + episodes),
                                           self._generator(4, seed), False, bar)
        finally:
            self.planner.evaluating = False
            if bar is not None:
                bar.close()
            for env in envs:
                env.close()
        return returns

    # ---------------------------------------------------------------------------------- checkpoints and the log
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue the same curve (taken between iterations)."""
        data = None if self.data is None else {k: getattr(self.data, k).cpu() for k in ("x", "u", "x_next")}
        return dict(iteration=self.iteration, env_steps=self.env_steps, elapsed=self.elapsed, rows=list(self.rows),
                    model=self.model.state_dict(), planner=self.planner.state_dict(), data=data,
                    elites=self.chosen_elites, seed=self.seed, envs=self.envs)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict`). Everything of the agent's own is checked before anything
        is loaded: a state of another run (its ``seed``, ``envs``, the model's sizes, the data's) raises a
        ValueError naming what differs, and the agent is left as it was (the planner's own state is the planner's
        to check)."""
        self._load(state, "ModelBasedAgent.load_state_dict", "the state dict")

    _STATE_KEYS = ("iteration", "env_steps", "elapsed", "rows", "model", "planner", "data", "elites", "seed", "envs")

    def _load(self, state, where, source):
        check_checkpoint(where, source, state, self._STATE_KEYS, dict(seed=self.seed, envs=self.envs))
        check_module_state(where, source, "model", self.model, state["model"])
        data = state["data"]
        if data is not None:
            if not (isinstance(data, dict) and all(k in data for k in ("x", "u", "x_next"))):
                raise ValueError(f"{where}: {source}'s data must be None or a dict of x, u, x_next, got "
                                 f"{type(data).__name__}")
            N = len(data["x"]) if isinstance(data["x"], torch.Tensor) and data["x"].ndim else -1
            dims = dict(x=getattr(self.model, "state_dim", None), u=getattr(self.model, "control_dim", None))
            dims["x_next"] = dims["x"]
            for k, d in dims.items():
                value = data[k]
                shape = (N, value.shape[-1] if d is None and isinstance(value, torch.Tensor) else d)
                check_state_tensor(where, source, f"data[{k!r}]", value, shape)
        elites = state["elites"]
        members = getattr(self.model, "members", None)
        if elites is not None and not (isinstance(elites, (list, tuple)) and all(
                isinstance(e, numbers.Integral) and (members is None or 0 <= e < members) for e in elites)):
            raise ValueError(f"{where}: {source}'s elites must be None or a list of member indices in [0, {members}), "
                             f"got {elites!r}")
        self.iteration, self.env_steps, self.elapsed = state["iteration"], state["env_steps"], state["elapsed"]
        self.rows = list(state["rows"])
        self.model.load_state_dict(state["model"])
        self.planner.load_state_dict(state["planner"])
        self.data = None if data is None else Transitions(
            *(data[k].to(self.device, self.dtype) for k in ("x", "u", "x_next")))
        self.chosen_elites = elites
        if self.data is not None:
            self.planner.update(self.model, self.data, {"elites": self.chosen_elites, "history": None})

    def save(self, path: str) -> None:
        """Write a checkpoint atomically (:func:`trajopt.rl.logs.atomic_write`)."""
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))

    def load(self, path: str) -> None:
        """Resume from a checkpoint written by :meth:`save` (rewrites the CSV log to the checkpoint's rows). A
        missing file raises a FileNotFoundError, an unreadable one a ValueError, and a checkpoint of another run a
        ValueError naming the file and what differs (see :meth:`load_state_dict`)."""
        state = read_checkpoint("ModelBasedAgent.load", path, map_location=self.device)
        self._load(state, "ModelBasedAgent.load", f"the checkpoint {os.fspath(path)!r}")
        self._write_log()

    def _write_log(self):
        if self.log_path is None:
            return
        write_rows(self.log_path, LOG_COLUMNS, self.rows)


def read_log(path: str) -> list[dict]:
    """The rows of a CSV log written by :class:`ModelBasedAgent`, numbers as floats (``phase``, ``elite_members`` kept
    as text)."""
    with open(path, newline="") as f:
        return [{k: (v if k in ("phase", "elite_members") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def plot_learning_curves(logs: dict, path: str | None = None, *, x: str = "env_steps", ax=None, target=None):
    """Draw the mean episode return (and its min-max band) of each log against ``x`` (``"env_steps"`` or
    ``"time"``). ``logs`` maps a label to a CSV path, a list of rows or a :class:`ModelBasedAgent`; ``target``
    draws a horizontal line. Saves to ``path`` (a str or os.PathLike in an existing folder, checked before
    anything is drawn) when given; returns the matplotlib axes. Needs matplotlib."""
    where = "plot_learning_curves"
    if x not in ("env_steps", "time"):
        raise ValueError(f"{where}: x must be 'env_steps' or 'time', got {x!r}")
    if not isinstance(logs, dict):
        raise TypeError(f"{where}: logs must be a dict label -> log (a CSV path, a list of rows or a "
                        f"ModelBasedAgent), got {type(logs).__name__}")
    if target is not None:
        if isinstance(target, bool) or not isinstance(target, numbers.Real):
            raise TypeError(f"{where}: target must be a number or None, got {target!r}")
        if not math.isfinite(target):
            raise ValueError(f"{where}: target must be a finite number (a return to draw), got {target!r}")
    curves, keys = {}, (x, "return_mean", "return_min", "return_max")
    for label, log in logs.items():
        if isinstance(log, (str, os.PathLike)):
            rows = read_log(log)
        elif isinstance(log, ModelBasedAgent):
            rows = log.rows
        elif isinstance(log, (list, tuple)):
            rows = log
        else:
            raise TypeError(f"{where}: logs[{label!r}] must be a CSV path, a list of rows or a ModelBasedAgent, "
                            f"got {type(log).__name__}")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or any(k not in row for k in keys):
                raise ValueError(f"{where}: logs[{label!r}] rows must be dicts with the keys {keys} (as "
                                 f"ModelBasedAgent's log); row {i} is "
                                 f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        curves[label] = rows
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"{where}: path must be a file path (str or os.PathLike) or None, got "
                            f"{type(path).__name__}")
        check_output_path(where, "path", path)
    try:
        import matplotlib
        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plot_learning_curves needs matplotlib (pip install matplotlib)") from error
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for label, rows in curves.items():
        xs = [float(r[x]) for r in rows]
        ax.plot(xs, [float(r["return_mean"]) for r in rows], marker="o", label=label)
        ax.fill_between(xs, [float(r["return_min"]) for r in rows], [float(r["return_max"]) for r in rows], alpha=0.2)
    if target is not None:
        ax.axhline(target, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("environment steps" if x == "env_steps" else "wall time (s)")
    ax.set_ylabel("episode return")
    ax.legend()
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
