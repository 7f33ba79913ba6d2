"""Short-Horizon Actor-Critic (SHAC; Xu et al. 2022, "Accelerated Policy Learning with Parallel
Differentiable Simulation", Algorithm 1).

Each epoch rolls the ``B`` copies of a :class:`~trajopt.rl.DiffEnv` forward ``horizon`` steps with the
stochastic actor, keeping the graph through the dynamics; the actor loss is minus the mean over copies
and steps of the discounted short-horizon return plus ``gamma^h V'(s_h)`` (``V'`` the target critic; an
episode that ends inside the window contributes its return up to the end plus the discounted value of
its final state, zero if it terminated). One backward pass gives the actor's first-order gradient. The
critic then regresses TD(lambda) targets of the same (detached) rollout for a few passes of minibatches,
and the target critic follows it by Polyak averaging.

Around the algorithm: observation normalization, gradient-norm clipping, linear or constant
learning-rate schedules, a seeded generator for every random draw (runs are reproducible), atomic
checkpoints from which a resumed run continues the same curve, a CSV log, a tqdm progress bar, and
data parallelism over ``torch.distributed`` processes (each steps its shard of the copies; gradients
and normalization statistics are averaged, so ``k`` processes give the update of one).
"""
from __future__ import annotations

import csv
import inspect
import math
import os
import time
import warnings
from contextlib import nullcontext

import torch
from torch import nn

from dynamics.validation import check_tensor
from .._core.bounds import clamp
from .._core.checks import check_bool, check_callable, check_fraction, check_int, check_interval, check_positive
from .env import DiffEnv
from .logs import atomic_write, read_checkpoint, write_rows
from ._checks import (check_checkpoint, check_features, check_float_dtype, check_hidden, check_module_state,
                      check_output_path, check_score, check_state_tensor)
from ._returns import td_lambda
from .policies import GaussianPolicy, ObservationNormalizer, ValueNetwork

__all__ = ["SHAC"]

_SCHEDULES = ("linear", "constant", "cosine")
_COLUMNS = ("epoch", "env_steps", "time", "actor_loss", "critic_loss", "actor_grad_norm", "episode_cost",
            "episodes", "actor_lr", "eval_cost")


class SHAC:
    """Train an actor and a critic on a :class:`DiffEnv` by Short-Horizon Actor-Critic.

    Args:
        env: the environment (its ``num_envs`` copies, or this process's shard of them).
        actor: an actor (see :mod:`trajopt.rl.policies`); a :class:`GaussianPolicy` of ``hidden`` widths when
            None. Built from ``seed``, like every default here. Called once on the first observations at
            construction (deterministically, the global random state kept): an actor that does not take the env's
            observations ``(B, o)`` or does not return actions ``(B, m)`` of the env's dtype raises an error
            naming ``actor``.
        critic: a module ``obs (B, o) -> (B,)``; a :class:`ValueNetwork` when None. Called once on the first
            observations at construction: another output shape (``(B, 1)`` say) raises a ValueError.
        horizon: ``h``, the steps of each differentiated window.
        epochs: the length of the run (the learning-rate schedule runs over it).
        gamma, lam: discount and TD(lambda)'s lambda, numbers in ``[0, 1]`` (as ``target_alpha``).
        actor_lr, critic_lr: initial learning rates (Adam with ``betas``).
        lr_schedule: ``"linear"`` (to zero at ``epochs``, SHAC's), ``"cosine"`` or ``"constant"``.
        critic_iterations, critic_minibatches: passes over each rollout and minibatches per pass (a minibatch
            is a set of time steps, all copies).
        target_alpha: the target critic keeps this fraction of itself at each update.
        grad_norm: clip the actor's and the critic's gradient norms to it (None: no clipping).
        obs_norm: normalize observations for the critic and for actors that want it.
        reward_scale: rewards are multiplied by it for learning (the log reports unscaled costs).
        hidden, init_std: of the default networks.
        seed: seeds the default networks' initialization and the generator of the resets, the exploration
            noise and the minibatches.
        log: path of a CSV log, one row per epoch (columns ``epoch, env_steps, time, actor_loss, critic_loss,
            actor_grad_norm, episode_cost, episodes, actor_lr, eval_cost``), or None. NaN in a row means "not
            measured": ``episode_cost`` is NaN in an epoch where no episode finished, ``eval_cost`` in an epoch
            without an evaluation (no ``evaluate``, or not an ``eval_every`` epoch).
        checkpoint: path to write checkpoints to (atomically; ``.rank{r}`` is appended under
            ``torch.distributed`` with more than one process), or None. ``log`` and ``checkpoint`` must lie in
            folders that exist (a FileNotFoundError naming the path at construction, not at the first write).
        checkpoint_every: epochs between checkpoints.
        evaluate: ``evaluate(shac) -> float`` (e.g. a closed-loop cost), called every ``eval_every`` epochs and
            at the end; logged as ``eval_cost``, not counted in ``time``.
        progress: show a tqdm bar.
        dtype, device: of the default networks and the statistics (default: the observations'); ``dtype``
            torch.float32 or torch.float64.

    Counts may be NumPy integers; every option is checked at construction (an error names it).

    Differentiable: the actor loss is differentiated through the environment (dynamics, reward or cost, and
    the actor, including solver layers inside it); nothing is differentiated through the critic's targets.
    """

    def __init__(self, env: DiffEnv, actor: nn.Module | None = None, critic: nn.Module | None = None, *,
                 horizon: int = 32, epochs: int = 500, gamma: float = 0.99, lam: float = 0.95,
                 actor_lr: float = 2e-3, critic_lr: float = 2e-3, betas=(0.7, 0.95), lr_schedule: str = "linear",
                 critic_iterations: int = 16, critic_minibatches: int = 4, target_alpha: float = 0.2,
                 grad_norm: float | None = 1.0, obs_norm: bool = True, reward_scale: float = 1.0,
                 hidden=(64, 64), init_std: float = 0.4, seed: int = 0, log: str | None = None,
                 checkpoint: str | None = None, checkpoint_every: int = 50, evaluate=None, eval_every: int = 10,
                 progress: bool = True, dtype: torch.dtype | None = None, device=None):
        where = "SHAC"
        if not isinstance(env, DiffEnv):
            raise TypeError(f"{where}: env must be a trajopt.rl.DiffEnv, got {type(env).__name__}")
        check_int(where, horizon=horizon, epochs=epochs, critic_iterations=critic_iterations,
                  critic_minibatches=critic_minibatches, checkpoint_every=checkpoint_every, eval_every=eval_every)
        if critic_minibatches > horizon:
            raise ValueError(f"{where}: critic_minibatches ({critic_minibatches}) must be at most horizon ({horizon})")
        check_interval(where, 0, 1, gamma=gamma, lam=lam, target_alpha=target_alpha)
        check_positive(where, actor_lr=actor_lr, critic_lr=critic_lr, reward_scale=reward_scale)
        if grad_norm is not None:
            check_positive(where, grad_norm=grad_norm)
        if lr_schedule not in _SCHEDULES:
            raise ValueError(f"{where}: lr_schedule must be one of {_SCHEDULES}, got {lr_schedule!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{where}: betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
        check_fraction(where, **{"betas[0]": betas[0], "betas[1]": betas[1]})
        check_int(where, minimum=0, seed=seed)
        check_bool(where, obs_norm=obs_norm, progress=progress)
        check_callable(where, allow_none=True, evaluate=evaluate)
        check_output_path(where, "log", log)
        check_output_path(where, "checkpoint", checkpoint)
        if dtype is not None:
            check_float_dtype(where, dtype)
        if device is not None:
            if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
                raise TypeError(f"{where}: device must be a torch.device, a str or None, got {type(device).__name__}")
            try:
                device = torch.device(device)
            except RuntimeError as error:
                raise ValueError(f"{where}: device {device!r} is not a device torch knows: {error}") from None
            try:
                torch.empty(0, device=device)
            except (AssertionError, RuntimeError) as error:
                raise ValueError(f"{where}: device {str(device)!r} is not available on this machine "
                                 f"({type(error).__name__}: {error})") from None
        if actor is None or critic is None:
            check_hidden(where, hidden, allow_empty=False)
        for name, value, call in (("actor", actor, "actor(obs, noise) -> actions (as trajopt.rl.GaussianPolicy)"),
                                  ("critic", critic, "critic(obs) -> values (as trajopt.rl.ValueNetwork)")):
            if value is None:
                continue
            if not isinstance(value, nn.Module):
                raise TypeError(f"{where}: {name} must be a torch.nn.Module or None (the default network), got "
                                f"{type(value).__name__}")
            try:
                signature = inspect.signature(value.forward)
            except (TypeError, ValueError):         # no signature to read: trust the module
                continue
            try:
                signature.bind(*([None] * (2 if name == "actor" else 1)))
            except TypeError:
                raise TypeError(f"{where}: {name} must be called as {call}; {type(value).__name__}.forward takes "
                                f"{signature}") from None
        self.world = env.world
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if self.world > 1 and not (distributed and torch.distributed.get_world_size() == self.world
                                   and torch.distributed.get_rank() == env.rank):
            raise ValueError(f"{where}: env is sharded as (rank, world) = ({env.rank}, {self.world}); initialize "
                             "torch.distributed with that rank and world size first")
        self.env = env
        self.generator = torch.Generator().manual_seed(int(seed))
        first = env.reset(self.generator)
        dtype = first.dtype if dtype is None else dtype
        device = first.device if device is None else device
        obs_dim = first.shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            if actor is None:
                if env.lower is None or env.upper is None:
                    raise ValueError(f"{where}: the default actor needs the env's u_lower and u_upper")
                actor = GaussianPolicy(obs_dim, env.control_dim, env.lower, env.upper, hidden=hidden,
                                       init_std=init_std, dtype=dtype)
            if critic is None:
                critic = ValueNetwork(obs_dim, hidden=hidden, dtype=dtype)
        self.actor, self.critic = actor.to(device), critic.to(device)
        self.normalizer = ObservationNormalizer(obs_dim, dtype=dtype).to(device)
        self.obs_norm = bool(obs_norm)
        self._check_actor(where, first.to(device))
        self._check_critic(where, first.to(device), bool(obs_norm))
        self.target_critic = _frozen_copy(self.critic)
        self.actor_params = [p for p in self.actor.parameters() if p.requires_grad]
        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        if not self.actor_params:
            raise ValueError(f"{where}: the actor has no parameter that requires grad")
        self.actor_opt = torch.optim.Adam(self.actor_params, lr=actor_lr, betas=betas)
        self.critic_opt = torch.optim.Adam(self.critic_params, lr=critic_lr, betas=betas)
        self.horizon, self.epochs, self.gamma, self.lam = int(horizon), int(epochs), float(gamma), float(lam)
        self.actor_lr, self.critic_lr, self.lr_schedule = float(actor_lr), float(critic_lr), lr_schedule
        self.critic_iterations, self.critic_minibatches = int(critic_iterations), int(critic_minibatches)
        self.target_alpha, self.grad_norm = float(target_alpha), grad_norm
        self.obs_norm, self.reward_scale = bool(obs_norm), float(reward_scale)
        self.log_path, self.checkpoint_path = log, checkpoint
        if checkpoint is not None and self.world > 1:
            self.checkpoint_path = f"{checkpoint}.rank{env.rank}"
        self.checkpoint_every, self.evaluate, self.eval_every = int(checkpoint_every), evaluate, int(eval_every)
        self.progress = progress
        self.epoch, self.env_steps, self.elapsed = 0, 0, 0.0
        self.rows: list[dict] = []
        self._episode_cost = torch.zeros(env.local_envs, dtype=dtype, device=device)
        self._obs = first
        if self.obs_norm:
            self.normalizer.update(first)

    def _check_actor(self, where, first):
        """The actor's deterministic actions for the first observations must be ``(B, m)`` of the env's dtype
        (otherwise the first step would fail inside the actor, blaming ``obs``, or in the env, blaming ``u``).
        Run as :meth:`act` runs it, with the global random state and the actor's warm start (``reset``) kept."""
        B, o, m, state_dtype = first.shape[0], first.shape[-1], self.env.control_dim, self.env.state.dtype
        raw = getattr(self.actor, "raw_observations", False)
        inputs = self._actor_input(first)
        try:
            with torch.random.fork_rng(devices=[]), (torch.enable_grad() if raw else torch.no_grad()):
                u = self.actor(inputs, None)
        except (RuntimeError, ValueError, TypeError) as error:
            dtypes = {p.dtype for p in self.actor.parameters() if p.is_floating_point()}
            other = dtypes - {inputs.dtype}
            kind = TypeError if isinstance(error, TypeError) or other else ValueError
            params = f"; the actor's parameters are {', '.join(sorted(map(str, dtypes)))}" if other else ""
            raise kind(f"{where}: actor does not take the env's observations (B, o) = {tuple(first.shape)} "
                       f"({'raw' if raw or not self.obs_norm else 'normalized'}, {inputs.dtype}){params}: "
                       f"{error}") from error
        finally:
            if hasattr(self.actor, "reset"):
                self.actor.reset()
        if not (isinstance(u, torch.Tensor) and u.is_floating_point() and u.shape == (B, m)):
            got = (f"a {u.dtype} tensor of shape {tuple(u.shape)}" if isinstance(u, torch.Tensor)
                   else type(u).__name__)
            raise ValueError(f"{where}: actor must return actions (B, m) = ({B}, {m}) (the env's control_dim m = "
                             f"{m}) for observations (B, o) = ({B}, {o}), got {got}")
        if u.dtype != state_dtype:
            raise TypeError(f"{where}: actor returns {u.dtype} actions but the env's states are {state_dtype}; "
                            f"build the actor in {state_dtype} (or pass dtype={state_dtype})")

    def _check_critic(self, where, first, obs_norm):
        """The critic's values of the first observations must be ``(B,)`` (a ``(B, 1)`` would broadcast against
        the rewards ``(B,)`` into ``(B, B)`` without an error)."""
        B = first.shape[0]
        try:
            with torch.no_grad():
                values = self.critic(self.normalizer(first) if obs_norm else first)
        except (RuntimeError, ValueError, TypeError) as error:
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"{where}: critic failed on the first observations {tuple(first.shape)} (B, o): "
                       f"{error}") from error
        if not (isinstance(values, torch.Tensor) and values.shape == (B,) and values.is_floating_point()):
            got = (f"{values.dtype} tensor of shape {tuple(values.shape)}" if isinstance(values, torch.Tensor)
                   else type(values).__name__)
            raise ValueError(f"{where}: critic must return float values of shape (B,) = ({B},) for observations "
                             f"(B, o) = {tuple(first.shape)}, got a {got} (squeeze the last dimension, as "
                             "trajopt.rl.ValueNetwork does)")

    # ------------------------------------------------------------------ acting
    def _actor_input(self, obs):
        return obs if getattr(self.actor, "raw_observations", False) or not self.obs_norm else self.normalizer(obs)

    def _critic_input(self, obs):
        return self.normalizer(obs) if self.obs_norm else obs

    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The actor's control ``(B, m)`` for observations ``obs (B, o)``: deterministic unless ``noise``
        (standard normal ``(B, m)``) is given. Differentiable. The shape of ``obs`` is checked, not its values (a NaN
        observation gives a NaN action)."""
        check_features("SHAC.act", "obs", obs, self.normalizer.mean.shape[0])
        return self.actor(self._actor_input(obs), noise)

    @torch.no_grad()
    def closed_loop(self, x0: torch.Tensor, steps: int | None = None,
                    dynamics=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the deterministic policy on ``dynamics`` (default the env's) from ``x0 (B, n)`` for ``steps``
        (default the episode length; an int >= 0) steps, without resets; returns states ``(B, steps+1, n)`` and
        controls ``(B, steps, m)``. ``x0`` must be finite, of the environment's dtype.

        No NaN is returned: when the dynamics give NaN or Inf states (a model undefined there, e.g. outside its
        :meth:`~dynamics.ContinuousDynamics.domain`, or an overflow), or the policy NaN or Inf controls, it raises
        a FloatingPointError naming the rows and the first step, as :func:`trajopt.rollout` does (one check, after
        the loop)."""
        where, env = "SHAC.closed_loop", self.env
        check_tensor(where, "x0", x0, ("B", "n"), {"n": env.state_dim}, batchable=False)
        dtype = (env.state if env.state is not None else self._obs).dtype
        if x0.dtype != dtype:
            raise TypeError(f"{where}: x0 is {x0.dtype} but the environment's states are {dtype}; "
                            f"convert it: x0.to({dtype})")
        if steps is not None:
            check_int(where, minimum=0, steps=steps)
        check_callable(where, allow_none=True, dynamics=dynamics)
        steps = env.episode_length if steps is None else int(steps)
        dynamics = env.dynamics if dynamics is None else dynamics
        if steps == 0:
            return x0.unsqueeze(1).clone(), x0.new_zeros(x0.shape[0], 0, env.control_dim)
        if hasattr(self.actor, "reset"):
            self.actor.reset()
        with torch.enable_grad() if getattr(self.actor, "raw_observations", False) else nullcontext():
            X, U, x = [x0], [], x0           # (a solver layer may need autograd inside its solve)
            for t in range(steps):
                u = self.act(env.observe(x, torch.full(x.shape[:-1], t, device=x.device))).detach()
                u = clamp(u, env.lower, env.upper)
                x = dynamics(x, u).detach()
                X.append(x)
                U.append(u)
        if hasattr(self.actor, "reset"):
            self.actor.reset()
        X, U = torch.stack(X, 1), torch.stack(U, 1)
        bad_x, bad_u = ~torch.isfinite(X[:, 1:]).all(-1), ~torch.isfinite(U).all(-1)      # (B, steps)
        if bool((bad_x | bad_u).any()):
            parts = []
            for what, bad in (("the dynamics gave NaN or Inf states", bad_x),
                              ("the policy gave NaN or Inf controls", bad_u)):
                if bool(bad.any()):
                    rows = bad.any(1).nonzero().flatten().tolist()
                    step = int(bad.any(0).nonzero()[0])
                    parts.append(f"{what} for row(s) {rows[:8]}{' ...' if len(rows) > 8 else ''}, first at step "
                                 f"t={step}")
            raise FloatingPointError(f"{where}: {'; '.join(parts)}; check the model there (or the policy: a "
                                     "closed loop that leaves the model's domain or overflows)")
        return X, U

    # ------------------------------------------------------------------ training
    def train(self, epochs: int | None = None, *, time_limit: float | None = None) -> list[dict]:
        """Run epochs until ``epochs`` (default: the run's ``epochs``) are done in total, or until ``time_limit``
        seconds of wall time (evaluations included) have passed in this call; an epoch that ends without a
        score is scored at the end. Returns the log rows (dicts) of the whole run (the columns of ``log``; NaN
        in a row means "not measured": ``episode_cost`` where no episode finished in that epoch, ``eval_cost``
        where it was not evaluated)."""
        if epochs is not None:
            check_int("SHAC.train", minimum=0, epochs=epochs)
        if time_limit is not None:
            check_positive("SHAC.train", allow_inf=True, time_limit=time_limit)
        stop = self.epochs if epochs is None else int(epochs)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=stop, initial=self.epoch, desc="SHAC", unit="epoch")
        started = time.perf_counter()
        try:
            while self.epoch < stop:
                if time_limit is not None and time.perf_counter() - started >= time_limit:
                    break
                row = self.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{row[k]:.4g}" for k in ("episode_cost", "eval_cost")
                                     if isinstance(row[k], float) and not math.isnan(row[k])})
        finally:
            if bar is not None:
                bar.close()
        if self.evaluate is not None and self.rows and math.isnan(self.rows[-1]["eval_cost"]):
            self.rows[-1]["eval_cost"] = check_score("SHAC", "evaluate", self.evaluate(self))
            self._write_log()
        return self.rows

    def step(self) -> dict:
        """One epoch: the actor update, the critic updates, the target critic and the statistics. Returns
        its log row."""
        tick = time.perf_counter()
        fraction = min(self.epoch / self.epochs, 1.0)
        factor = {"linear": 1.0 - fraction, "constant": 1.0,
                  "cosine": 0.5 * (1.0 + math.cos(math.pi * fraction))}[self.lr_schedule]
        for opt, lr in ((self.actor_opt, self.actor_lr), (self.critic_opt, self.critic_lr)):
            for group in opt.param_groups:
                group["lr"] = lr * factor
        actor_loss, grad_norm, record, costs = self._actor_update()
        obs = record["obs"]
        critic_loss = self._critic_update(obs, self._targets(record["rewards"], record["dones"], record["values"]))
        with torch.no_grad():
            for target, p in zip(self.target_critic.parameters(), self.critic.parameters()):
                target.mul_(self.target_alpha).add_(p, alpha=1.0 - self.target_alpha)
        if self.obs_norm:
            self.normalizer.update(obs)
        self.epoch += 1
        self.env_steps += self.horizon * self.env.num_envs
        self.elapsed += time.perf_counter() - tick
        count, total = costs
        row = dict(epoch=self.epoch, env_steps=self.env_steps, time=self.elapsed, actor_loss=actor_loss,
                   critic_loss=critic_loss, actor_grad_norm=grad_norm,
                   episode_cost=total / count if count else math.nan, episodes=int(count),
                   actor_lr=self.actor_lr * factor, eval_cost=math.nan)
        if self.evaluate is not None and (self.epoch % self.eval_every == 0 or self.epoch == self.epochs):
            row["eval_cost"] = check_score("SHAC", "evaluate", self.evaluate(self))
        self.rows.append(row)
        self._append_log(row)
        if self.checkpoint_path is not None and (self.epoch % self.checkpoint_every == 0
                                                 or self.epoch == self.epochs):
            self.save(self.checkpoint_path)
        return row

    def actor_loss(self) -> tuple[torch.Tensor, dict]:
        """Roll the environment one window of ``horizon`` steps forward with exploration noise and return the
        actor loss (a 0-dim tensor differentiable with respect to the actor's parameters, through the
        dynamics) and the rollout's detached record: ``obs (h, B, o)``, ``rewards (h, B)`` (scaled),
        ``dones (h, B)``, ``values (h, B)`` (the target critic at each next state, zero after a
        termination), ``finished`` and ``finished_cost`` (episodes ended in the window and their summed
        unscaled cost). Advances the environment and the generator."""
        env, h, N = self.env, self.horizon, self.env.local_envs
        env.detach()
        obs = self._obs.detach()
        noise = torch.randn(h, env.num_envs, env.control_dim, generator=self.generator, dtype=obs.dtype)
        noise = noise[:, env.rank * N:(env.rank + 1) * N].to(obs.device)
        obs_buf, rew_buf, done_buf, val_buf = [], [], [], []
        ret = obs.new_zeros(N)
        disc = obs.new_ones(N)
        loss = obs.new_zeros(())
        finished_cost, finished = obs.new_zeros(()), obs.new_zeros(())
        for i in range(h):
            obs_buf.append(obs.detach())
            step = env.step(self.act(obs, noise[i]), self.generator)
            reward = step.reward * self.reward_scale
            value = self.target_critic(self._critic_input(step.final_obs))
            value = torch.where(step.terminated, 0.0, value)
            ret = ret + disc * reward
            end = torch.ones_like(step.done) if i == h - 1 else step.done
            loss = loss - torch.where(end, ret + (disc * self.gamma) * value, 0.0).sum()
            ret = torch.where(step.done, 0.0, ret)
            disc = torch.where(step.done, 1.0, disc * self.gamma)
            with torch.no_grad():
                self._episode_cost = self._episode_cost - step.reward
                finished_cost = finished_cost + torch.where(step.done, self._episode_cost, 0.0).sum()
                finished = finished + step.done.sum()
                self._episode_cost = torch.where(step.done, 0.0, self._episode_cost)
            rew_buf.append(reward.detach())
            done_buf.append(step.done)
            val_buf.append(value.detach())
            obs = step.obs
        self._obs = obs.detach()
        record = dict(obs=torch.stack(obs_buf), rewards=torch.stack(rew_buf), dones=torch.stack(done_buf),
                      values=torch.stack(val_buf), finished=finished, finished_cost=finished_cost)
        return loss / (h * N), record

    def _actor_update(self):
        loss, record = self.actor_loss()
        self.actor_opt.zero_grad(set_to_none=False)
        loss.backward()
        grad_norm = self._reduce_and_clip(self.actor_params)
        if math.isfinite(grad_norm):
            self.actor_opt.step()
        else:
            warnings.warn(f"SHAC: non-finite actor gradient at epoch {self.epoch}; the actor update was skipped",
                          RuntimeWarning, stacklevel=3)
        loss_value = self._mean_over_processes(loss.detach())
        episodes = self._sum_over_processes(torch.stack([record["finished"], record["finished_cost"]]))
        return loss_value, grad_norm, record, (float(episodes[0]), float(episodes[1]))

    @torch.no_grad()
    def _targets(self, rewards, dones, values):
        """TD(lambda) targets ``(h, B)`` (:func:`~trajopt.rl._returns.td_lambda`): ``G_i = r_i + gamma ((1 - lam)
        V'(s_{i+1}) + lam G_{i+1})``, with ``G_{i+1}`` replaced by ``V'(s_{i+1})`` at the window's end and at an
        episode's end (where ``V'`` is of the final state, zero if terminated)."""
        return td_lambda(rewards, values, self.gamma, self.lam, dones[:-1])

    def _critic_update(self, obs, targets):
        inputs = self._critic_input(obs)
        total = 0.0
        for _ in range(self.critic_iterations):
            order = torch.randperm(self.horizon, generator=self.generator)
            for rows in order.chunk(self.critic_minibatches):
                rows = rows.to(obs.device)
                loss = (self.critic(inputs[rows]) - targets[rows]).pow(2).mean()
                self.critic_opt.zero_grad(set_to_none=False)
                loss.backward()
                if math.isfinite(self._reduce_and_clip(self.critic_params)):
                    self.critic_opt.step()
                total += float(loss.detach())
        return self._mean_over_processes(torch.tensor(total / (self.critic_iterations * self.critic_minibatches)))

    def _reduce_and_clip(self, params) -> float:
        """Average the gradients over processes, clip their norm; returns the norm before clipping."""
        for p in params:
            if p.grad is None:          # a parameter the loss did not reach this time
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        if self.world > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            torch.distributed.all_reduce(flat)
            flat /= self.world
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        if self.grad_norm is None:
            return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        return float(torch.nn.utils.clip_grad_norm_(params, self.grad_norm))

    def _sum_over_processes(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return value

    def _mean_over_processes(self, value: torch.Tensor) -> float:
        return float(self._sum_over_processes(value)) / self.world

    # ------------------------------------------------------------------ checkpoints and the log
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue the same curve."""
        return dict(epoch=self.epoch, env_steps=self.env_steps, elapsed=self.elapsed, rows=list(self.rows),
                    actor=self.actor.state_dict(), critic=self.critic.state_dict(),
                    target_critic=self.target_critic.state_dict(), normalizer=self.normalizer.state_dict(),
                    actor_opt=self.actor_opt.state_dict(), critic_opt=self.critic_opt.state_dict(),
                    generator=self.generator.get_state(), env_state=self.env.state, env_t=self.env.t,
                    obs=self._obs, episode_cost=self._episode_cost, epochs=self.epochs,
                    num_envs=self.env.num_envs, horizon=self.horizon)

    _STATE_KEYS = ("epoch", "env_steps", "elapsed", "rows", "actor", "critic", "target_critic", "normalizer",
                   "actor_opt", "critic_opt", "generator", "env_state", "env_t", "obs", "episode_cost", "epochs",
                   "num_envs", "horizon")

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict`). Everything is checked before anything is loaded: a state
        of another configuration (its ``epochs``, ``num_envs``, ``horizon``, the networks' sizes, the dtype of the
        states) raises a ValueError naming what differs, and the run is left as it was."""
        self._load(state, "SHAC.load_state_dict", "the state dict")

    def _load(self, state, where, source):
        check_checkpoint(where, source, state, self._STATE_KEYS,
                         dict(epochs=self.epochs, num_envs=self.env.num_envs, horizon=self.horizon))
        for name in ("actor", "critic", "target_critic", "normalizer", "actor_opt", "critic_opt"):
            check_module_state(where, source, name, getattr(self, name), state[name])
        N, dtype = self.env.local_envs, self._obs.dtype
        check_state_tensor(where, source, "obs", state["obs"], tuple(self._obs.shape), dtype)
        check_state_tensor(where, source, "env_state", state["env_state"], (N, self.env.state_dim), dtype,
                           allow_none=True)
        check_state_tensor(where, source, "env_t", state["env_t"], (N,), torch.long, allow_none=True)
        check_state_tensor(where, source, "episode_cost", state["episode_cost"], tuple(self._episode_cost.shape))
        check_state_tensor(where, source, "generator", state["generator"], tuple(self.generator.get_state().shape),
                           torch.uint8)
        if not isinstance(state["rows"], (list, tuple)):
            raise ValueError(f"{where}: {source}'s rows must be a list of log rows, got {type(state['rows']).__name__}")
        self.epoch, self.env_steps, self.elapsed = state["epoch"], state["env_steps"], state["elapsed"]
        self.rows = list(state["rows"])
        for name in ("actor", "critic", "target_critic", "normalizer", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.generator.set_state(state["generator"])
        self.env.state, self.env.t = state["env_state"], state["env_t"]
        self._obs, self._episode_cost = state["obs"], state["episode_cost"]
        if hasattr(self.actor, "reset"):
            self.actor.reset()

    def save(self, path: str) -> None:
        """Write a checkpoint atomically (a temporary file renamed over ``path``; the temporary files of writes
        that were killed are removed)."""
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))

    def load(self, path: str) -> None:
        """Resume from a checkpoint written by :meth:`save` (rewrites the CSV log to the checkpoint's rows). A
        missing file raises a FileNotFoundError, an unreadable one a ValueError, and a checkpoint of another run's
        configuration a ValueError naming the file and what differs (see :meth:`load_state_dict`); the run is left
        as it was."""
        state = read_checkpoint("SHAC.load", path)
        self._load(state, "SHAC.load", f"the checkpoint {os.fspath(path)!r}")
        self._write_log()

    def _append_log(self, row):
        if self.log_path is None or self.env.rank:
            return
        new = not os.path.exists(self.log_path) or len(self.rows) == 1
        with open(self.log_path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, _COLUMNS)
            if new:
                writer.writeheader()
                for earlier in self.rows[:-1]:
                    writer.writerow(earlier)
            writer.writerow(row)

    def _write_log(self):
        if self.log_path is None or self.env.rank:
            return
        write_rows(self.log_path, _COLUMNS, self.rows)


def _frozen_copy(module: nn.Module) -> nn.Module:
    import copy
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target
