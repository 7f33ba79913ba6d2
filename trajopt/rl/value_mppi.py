"""Value-guided MPPI: short-horizon MPPI through the learned ensemble, closed by a learned critic and seeded by a
learned policy (the idea of TD-MPC, Hansen et al. 2022, and TD-MPC2, 2024), as a
:class:`~trajopt.rl.agent.Planner` of :class:`~trajopt.rl.ModelBasedAgent`.

Planning (:meth:`ValueGuidedMPPI.act`, no gradients): at every step, :func:`trajopt.mppi` in receding horizon
over ``H`` steps of the fitted :class:`~dynamics.learned.ProbabilisticEnsemble` (the agent's elite members when it
chose some), deterministic mean predictions, so a candidate costs one rollout: by default each candidate follows one
member for the whole plan, the members sharing the candidates equally (``planning_model="members"``: model
disagreement spreads the candidates' costs, at one member's work per candidate), or the mean of all members' means
(``"mean"``); on

    J(U) = sum_{t<H} gamma^t cost.stage(x_t, u_t) - gamma^H V(x_H) / reward_scale,

the task's KNOWN stage cost (the reward negated, in the environment's units) closed by the learned critic ``V``
(learned in units of ``reward_scale`` times the reward: divided back here). The plan is warm-started from the
previous one shifted by a step (an episode's first from the policy's mean rollout); ``policy_samples`` of each
iteration's candidates come from the learned policy: its mean action sequence and ``policy_samples - 1`` draws of
its Gaussian, rolled through the same planning model from the current state for ``H`` steps and passed to
:func:`trajopt.mppi` as ``proposals`` (weighted with the ``samples`` perturbations of the plan in one softmax).

Learning (:meth:`ValueGuidedMPPI.update`, after every fit of the ensemble, when the data has grown):
``gradient_steps`` steps, each on ``batch_size`` real states drawn from all transitions so far:

- the policy prior (a :class:`~trajopt.rl.GaussianPolicy` on normalized observations) maximizes the
  ``rollout_horizon``-step return of its own stochastic (reparameterized) rollouts through the ensemble's mean plus
  the discounted target critic at the end, ``sum_{t<h} gamma^t r_t + gamma^h V'(x_h)``, ``r_t = -reward_scale
  cost.stage(x_t, u_t)``: first-order gradients through the learned model (SHAC's and Dreamer's actor loss);
- the critic ``V`` (a :class:`~trajopt.rl.ValueNetwork`) regresses TD(lambda) targets (:func:`td_lambda`,
  bootstrapped with the target critic ``V'``) of the same model rollouts (detached) and of windows of
  ``rollout_horizon`` consecutive real transitions (a window cut where ``x_next[i] != x[i + 1]``: an episode's
  end, bootstrapped there: the tasks have time limits, no termination; with ``envs > 1`` the agent interleaves the
  environments' transitions, so the real windows reduce to one-step TD);
- the target critic follows ``V`` by Polyak averaging (rate ``tau``).

Differences from TD-MPC: TD-MPC learns a latent model, a reward model and a Q-function end to end (latent
consistency, reward and TD losses) and plans by MPPI with elites and a shrinking spread in the latent space; here
the model is the observation-space ensemble fitted by :func:`dynamics.learned.fit` (not trained by the value
losses), the reward is the task's known cost, the critic is a state value ``V(x)`` learned by TD(lambda) on real and
model data, the policy is trained through the model (not through ``Q``), and the planner is the library's MPPI (a
fixed spread, no elites) with the policy's rollouts as proposals.

What is differentiable: nothing in planning or acting (run under ``no_grad``: MPPI's weights only choose a plan).
Only the policy's and the critic's training differentiate: the policy loss through the policy, the ensemble's
mean prediction, the known cost and the target critic (gradients taken for the policy's parameters only: the
model's weights get none), the critic loss through the critic with targets held fixed.
"""
from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Mapping

import numpy as np
import torch

from dynamics import Dynamics
from dynamics.learned import Transitions
from dynamics.validation import check_finite
from .._core.checks import check_bool, check_int, check_interval, check_positive
from .._core.costs import Cost
from .._core.problem import Problem
from .._solvers.sampling import mppi
from ._checks import (check_action_bounds, check_checkpoint, check_features, check_hidden, check_module_state,
                      check_noise_std)
from ._draws import draw_randint, draw_randn
from .logs import cpu_copy
from .agent import ParticleDynamics, Planner, check_update
from ._returns import td_lambda
from .policies import GaussianPolicy, ObservationNormalizer, ValueNetwork

__all__ = ["ValueGuidedMPPI", "td_lambda"]


class _PlanningCost(Cost):
    """``J = sum_{t<H} gamma^t cost.stage(x_t, u_t) - gamma^H V(x_H) / reward_scale``: the known stage cost,
    discounted, closed by the critic on normalized observations. ``x (R, n)``, ``u (R, m)`` give ``(R,)``."""

    time_varying = True          # the discount looks at t

    def __init__(self, cost, critic, normalizer, gamma, horizon, reward_scale):
        super().__init__()
        self.cost, self.critic, self.normalizer = cost, critic, normalizer
        self.gamma, self.horizon, self.reward_scale = gamma, horizon, reward_scale

    def stage(self, x, u, t=None):
        c = self.cost.stage(x, u, t)
        return c if not t else c * self.gamma ** t

    def terminal(self, x):
        return self.critic(self.normalizer(x)) * (-self.gamma ** self.horizon / self.reward_scale)


class _SplitDynamics(Dynamics):
    """The ensemble's members side by side: row ``r`` of ``x (R, n)``, ``u (R, m)`` follows member ``members[r % E]``
    of the ``E`` used (all, or the elites), its mean prediction: each member runs once on its ``R / E`` rows. In
    :func:`trajopt.mppi`'s batch (rows ``b (1 + N + K) + i``) a candidate follows one member for the whole plan, and
    the members share the candidates equally. Differentiable in the states, the controls and the members' weights."""

    def __init__(self, model, members=None):
        super().__init__(model.state_dim, model.control_dim)
        self.model, self.members = model, members
        self.E = model.members if members is None else len(members)

    def forward(self, x, u, t=None):
        R, E, n, m = x.shape[0], self.E, x.shape[-1], u.shape[-1]
        k = -(-R // E)
        xx, uu = x, u
        if k * E > R:                                    # pad with copies of row 0 (their predictions are dropped)
            xx = torch.cat([x, x[:1].expand(k * E - R, n)])
            uu = torch.cat([u, u[:1].expand(k * E - R, m)])
        mean, _ = self.model.member_outputs(xx.reshape(k, E, n).transpose(0, 1), uu.reshape(k, E, m).transpose(0, 1),
                                            self.members)                              # (E, k, n)
        delta = (mean * self.model.out_std + self.model.out_mean).transpose(0, 1).reshape(k * E, n)
        return x + delta[:R]


_NETWORKS = ("policy", "critic", "target_critic", "normalizer", "actor_optimizer", "critic_optimizer")


class ValueGuidedMPPI(Planner):
    """Value-guided MPPI (TD-MPC's idea on the observation-space ensemble and the known cost): see the module.

    Args:
        cost: the task's known :class:`trajopt.Cost` on observations (time-invariant, separable): ``cost.stage(x
            (R, n), u (R, m)) -> (R,)`` in the environment's units (the reward negated). Its terminal term is not
            used: the critic closes the horizon.
        horizon: ``H``, the planned steps (short: 5-10).
        u_lower, u_upper: the action bounds, finite, each a number (a NumPy scalar too) or a float tensor
            broadcastable to ``(m,)``; a list, tuple or NumPy array raises a TypeError naming it (pass
            ``torch.tensor(...)``). :meth:`update` checks them against the model's ``m``.
        samples: ``N``, perturbations of the plan per MPPI iteration.
        policy_samples: ``K``, the policy's candidate sequences per iteration (its mean rollout and ``K - 1`` draws;
            0: none, the policy is then only the first plan of an episode).
        iterations, first_iterations: MPPI iterations per step, and of an episode's first (cold) step (default
            ``iterations``).
        noise_std: MPPI's perturbation spread, a positive finite number or float tensor ``(m,)``; a quarter of the
            bounds' width by default.
        temperature: MPPI's ``lambda`` (in units of the cost).
        gamma: the discount of planning and learning, in ``(0, 1]``; lam: TD(lambda)'s lambda, in ``[0, 1]``.
        reward_scale: the critic learns ``reward_scale`` times the return (a positive number; the planner divides
            it back).
        rollout_horizon: ``h``, the steps of the policy's model rollouts and of the real windows in learning.
        gradient_steps: policy and critic steps per update (an update whose data has not grown takes none).
        batch_size: real start states (and real windows) per gradient step.
        actor_lr, critic_lr: Adam's learning rates; grad_norm: clip each gradient's norm to it (None: no clipping).
        tau: the target critic's Polyak rate in ``(0, 1]`` (it moves that fraction towards the critic per step).
        hidden: the policy's and the critic's hidden layer widths; init_std: the policy's initial spread.
        planning_model: how candidates move in planning (and the policy's proposals): ``"members"`` (the default):
            each candidate follows one member's mean prediction for the whole plan, the members taking equal shares
            of the candidates (candidate row ``r`` of MPPI's batch follows member ``r mod E``; no draws), one member's
            work per candidate; ``"mean"``: the mean of all members' means, ``E`` times the work. Learning always
            rolls out the mean.
        use_elites: plan and learn with the agent's elite members (``info["elites"]``) when it chose some.
        seed: an int >= 0, the seed source when :meth:`update` gets no ``info["generator"]`` (a loop of one's own).

    Counts may be NumPy integers; every option is checked at construction (an error names it).

    Shapes: :meth:`act` takes observations ``(B, n)`` (the model's dtype and device) and returns actions ``(B, m)``;
    each row plans its own ``H``-step sequence (kept in ``plan``, ``(B, H, m)``) from ``N + K`` candidates per
    iteration, all rows and candidates in one batch. The networks are built at the first :meth:`update` (their sizes
    from the model, weights seeded from the agent's generator), in the model's dtype and on its device.

    ``stats``: one dict per update that learned (``update``, ``new_steps``, ``gradient_steps``, the mean
    ``actor_loss``, ``critic_loss`` (model and real windows) and ``model_return`` of its steps, ``skipped`` steps with a
    non-finite gradient, ``seconds``).
    """

    def __init__(self, cost: Cost, horizon: int, u_lower, u_upper, *, samples: int = 256, policy_samples: int = 16,
                 iterations: int = 2, first_iterations: int | None = None, noise_std=None, temperature: float = 1.0,
                 gamma: float = 0.99, lam: float = 0.95, reward_scale: float = 1.0, rollout_horizon: int = 5,
                 gradient_steps: int = 200, batch_size: int = 256, actor_lr: float = 1e-3, critic_lr: float = 1e-3,
                 grad_norm: float | None = 10.0, tau: float = 0.01, hidden=(64, 64), init_std: float = 0.4,
                 planning_model: str = "members", use_elites: bool = True, seed: int = 0):
        where = "ValueGuidedMPPI"
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost on observations (e.g. PendulumV1Cost()), got "
                            f"{type(cost).__name__}")
        if cost.time_varying or not cost.separable:
            raise ValueError(f"{where}: cost must be time-invariant and separable over stages")
        check_int(where, horizon=horizon, samples=samples, iterations=iterations, rollout_horizon=rollout_horizon,
                  gradient_steps=gradient_steps, batch_size=batch_size)
        check_int(where, minimum=0, policy_samples=policy_samples, seed=seed)
        if first_iterations is not None:
            check_int(where, first_iterations=first_iterations)
        check_positive(where, temperature=temperature, reward_scale=reward_scale, actor_lr=actor_lr,
                       critic_lr=critic_lr, init_std=init_std)
        if grad_norm is not None:
            check_positive(where, grad_norm=grad_norm)
        check_interval(where, 0, 1, include_low=False, gamma=gamma, tau=tau)
        check_interval(where, 0, 1, lam=lam)
        check_hidden(where, hidden, allow_empty=False)
        check_bool(where, use_elites=use_elites)
        if planning_model not in ("members", "mean"):
            raise ValueError(f"{where}: planning_model must be 'members' or 'mean', got {planning_model!r}")
        self.u_lower, self.u_upper = check_action_bounds(where, u_lower, u_upper, ("u_lower", "u_upper"))
        noise_std = check_noise_std(where, noise_std)
        self.cost, self.horizon = cost, int(horizon)
        self.samples, self.policy_samples, self.iterations = int(samples), int(policy_samples), int(iterations)
        self.first_iterations = self.iterations if first_iterations is None else int(first_iterations)
        self.noise_std = ((self.u_upper - self.u_lower) / 4).clamp_min(1e-3) if noise_std is None else noise_std
        self.temperature, self.gamma, self.lam = float(temperature), float(gamma), float(lam)
        self.reward_scale, self.rollout_horizon = float(reward_scale), int(rollout_horizon)
        self.gradient_steps, self.batch_size = int(gradient_steps), int(batch_size)
        self.actor_lr, self.critic_lr = float(actor_lr), float(critic_lr)
        self.grad_norm = None if grad_norm is None else float(grad_norm)
        self.tau, self.hidden, self.init_std = float(tau), tuple(int(h) for h in hidden), float(init_std)
        self.use_elites, self.seed, self.planning_model = use_elites, int(seed), planning_model
        self.dims: tuple[int, int] | None = None
        self.policy = self.critic = self.target_critic = self.normalizer = None
        self.actor_optimizer = self.critic_optimizer = None
        self.model, self.members, self.dynamics, self.mean_dynamics, self.planning_cost = None, None, None, None, None
        self.updates, self.seen = 0, 0      # updates that learned; real transitions seen by the last one
        self.stats: list[dict] = []
        self.generator, self.plan = None, None

    # ------------------------------------------------------------------------------------------ networks
    def _build(self, n: int, m: int, seed: int, dtype: torch.dtype, device) -> None:
        """Fresh networks and optimizers for observations ``(n,)`` and actions ``(m,)``, weights drawn from ``seed``
        (torch's global generator left as it was)."""
        device = torch.device(device)
        low, high = (b.to(dtype).expand(m) for b in (self.u_lower, self.u_upper))
        devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            policy = GaussianPolicy(n, m, low, high, hidden=self.hidden, init_std=self.init_std, dtype=dtype)
            critic = ValueNetwork(n, hidden=self.hidden, dtype=dtype)
        self.policy, self.critic = policy.to(device), critic.to(device)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.normalizer = ObservationNormalizer(n, dtype=dtype).to(device)
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=self.critic_lr)
        self.dims = (n, m)

    def _networks_state(self) -> dict:
        return {name: cpu_copy(getattr(self, name).state_dict()) for name in _NETWORKS}

    def _load_networks(self, state: dict) -> None:
        for name in _NETWORKS:
            getattr(self, name).load_state_dict(state[name])

    # ------------------------------------------------------------------------------------------ planning
    def reset(self, count, generator):
        self.generator, self.plan = generator, None

    def _rollout(self, dynamics, x: torch.Tensor, noise: torch.Tensor):
        """The policy's rollout through ``dynamics`` from ``x (R, n)`` under its ``noise (h, R, m)``: states
        ``(h + 1, R, n)`` and actions ``(h, R, m)``. Differentiable (in the policy, the model and ``x``)."""
        xs, us = [x], []
        for t in range(noise.shape[0]):
            u = self.policy(self.normalizer(x), noise[t])
            x = dynamics(x, u)
            xs.append(x), us.append(u)
        return torch.stack(xs), torch.stack(us)

    def proposals(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The policy's ``K = policy_samples`` candidate sequences ``(B, K, H, m)`` from ``obs (B, n)``: its mean
        action sequence first, then ``K - 1`` draws of its Gaussian (standard normal noise ``(H, B, K - 1, m)`` from
        ``generator``), each rolled through the planning model (``planning_model``). Not differentiable (no
        graph)."""
        B, K, H, m = obs.shape[0], self.policy_samples, self.horizon, self.dims[1]
        noise = draw_randn((H, B, K, m), generator, obs.dtype, obs.device) if K > 1 else obs.new_zeros(H, B, K, m)
        noise[:, :, 0] = 0.0                                             # the mean rollout
        with torch.no_grad():
            _, us = self._rollout(self.dynamics, obs.repeat_interleave(K, 0), noise.reshape(H, B * K, m))
        return us.view(H, B, K, m).permute(1, 2, 0, 3)

    @torch.no_grad()
    def act(self, obs):
        """The first action ``(B, m)`` of each row's plan for ``obs (B, n)`` (the model's dtype and device, finite):
        :func:`trajopt.mppi` on the value-closed cost with the policy's proposals (see the module), its draws from the
        generator of :meth:`reset`. Not differentiable."""
        where = "ValueGuidedMPPI.act"
        if self.dynamics is None:
            raise RuntimeError(f"{where}: no model yet; call update(model, data) first")
        if not (isinstance(obs, torch.Tensor) and obs.ndim == 2):
            raise ValueError(f"{where}: obs must be a tensor (B, n), got "
                             f"{tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
        check_features(where, "obs", obs, self.dims[0], self.policy.log_std.dtype, dims="n")
        check_finite(where, {"obs": obs})
        B, H, m = obs.shape[0], self.horizon, self.dims[1]
        low, high = (b.to(obs).expand(m) for b in (self.u_lower, self.u_upper))
        proposals = self.proposals(obs, self.generator) if self.policy_samples else None
        if self.plan is None or self.plan.shape[0] != B:
            U = proposals[:, 0] if proposals is not None else ((low + high) / 2).expand(B, H, m).clone()
            budget = self.first_iterations
        else:
            plan = self.plan.to(obs)
            U, budget = torch.cat([plan[:, 1:], plan[:, -1:]], 1), self.iterations
        problem = Problem(self.dynamics, self.planning_cost, obs, U_init=U, horizon=H, u_lower=low.expand(B, H, m),
                          u_upper=high.expand(B, H, m))
        sol = mppi(problem, samples=self.samples, max_iter=budget, temperature=self.temperature,
                   noise_std=self.noise_std, proposals=proposals, generator=self.generator, rollout_plan=False)
        self.plan = sol.U
        return sol.U[:, 0]

    # ------------------------------------------------------------------------------------------ learning
    def _reward(self, where, x, u):
        """``-reward_scale cost.stage(x, u)`` of ``x (..., n)``, ``u (..., m)`` (flattened for the cost)."""
        c = self.cost.stage(x.reshape(-1, x.shape[-1]), u.reshape(-1, u.shape[-1]))
        R = x.shape[:-1].numel()
        if not (isinstance(c, torch.Tensor) and c.shape == (R,)):
            got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(f"{where}: cost.stage(x, u) must return (R,) = ({R},), got {got}")
        return -self.reward_scale * c.view(x.shape[:-1])

    def update(self, model, data, info=None):
        """Plan with ``model`` (a :class:`~dynamics.learned.ProbabilisticEnsemble`) from now on and, when ``data``
        (all real transitions so far, a :class:`~dynamics.learned.Transitions`; it may only grow) holds new ones,
        learn: the observation statistics of the new ones, then ``gradient_steps`` policy and critic steps (see the
        module). ``info``: the agent's dict (``elites``; ``generator``, the seed of this update's draws) or None. The
        bounds and ``noise_std`` must fit the model's ``m``."""
        where = "ValueGuidedMPPI.update"
        info, generator, elites = check_update(where, model, data, info, (
            ("u_lower", self.u_lower), ("u_upper", self.u_upper), ("noise_std", self.noise_std)),
            self.dims, self.seen, self.use_elites)
        n, m = model.state_dim, model.control_dim
        param = next(model.parameters())
        dtype, device = param.dtype, param.device
        if data.x.dtype != dtype:
            raise TypeError(f"{where}: data is {data.x.dtype} but the model's parameters are {dtype}")
        new = len(data) - self.seen
        seed = None
        if new > 0:
            data.check(where, 1)
            seed = (int(torch.randint(2 ** 62, (), generator=generator, device=generator.device))
                    if generator is not None else
                    int(np.random.SeedSequence([self.seed, self.updates]).generate_state(1, np.uint64)[0] >> 2))
        if self.policy is None:
            self._build(n, m, self.seed if seed is None else seed + 1, dtype, device)
        elif self.policy.log_std.device != device or self.policy.log_std.dtype != dtype:
            state = self._networks_state()           # restored on the CPU, the model elsewhere: follow the model
            self._build(n, m, self.seed, dtype, device)
            self._load_networks(state)
        self.model, self.members = model, None if elites is None else [int(e) for e in elites]
        self.mean_dynamics = ParticleDynamics(model, 1, "expectation", False, self.members)
        self.dynamics = (self.mean_dynamics if self.planning_model == "mean" else
                         _SplitDynamics(model, self.members))
        self.planning_cost = _PlanningCost(self.cost, self.critic, self.normalizer, self.gamma, self.horizon,
                                           self.reward_scale)
        if new == 0:
            return
        start = time.perf_counter()
        self.normalizer.update(data.x[self.seen:])
        losses = self._learn(where, data, torch.Generator(device).manual_seed(seed))
        self.stats.append(dict(update=self.updates, new_steps=new, gradient_steps=self.gradient_steps, **losses,
                               seconds=round(time.perf_counter() - start, 3)))
        self.updates += 1
        self.seen = len(data)

    def _step(self, optimizer, params, loss) -> bool:
        """One Adam step on ``loss``'s gradient for ``params`` only (clipped); False (no step) if it is not finite."""
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g
        if self.grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        if not math.isfinite(float(norm)):
            return False
        optimizer.step()
        return True

    @torch.no_grad()
    def window_targets(self, data: Transitions, idx: torch.Tensor):
        """The critic's real data: windows ``idx (L, B)`` of row indices into ``data`` (``idx[k + 1] = idx[k] + 1``)
        give their states ``(L, B, n)`` and TD(lambda) targets ``(L, B)`` (:func:`td_lambda`) of the rewards
        ``-reward_scale cost.stage(x, u)`` and the target critic at the next states, cut after transition ``k``
        where ``x_next[idx[k]] != x[idx[k] + 1]`` (an episode's end: bootstrapped there). No graph."""
        where = "ValueGuidedMPPI.window_targets"
        x = data.x[idx]
        rewards = self._reward(where, x, data.u[idx])
        cuts = (data.x_next[idx[:-1]] != data.x[idx[:-1] + 1]).any(-1)                    # (L - 1, B)
        values = self.target_critic(self.normalizer(data.x_next[idx]))
        return x, td_lambda(rewards, values, self.gamma, self.lam, cuts)

    def _learn(self, where, data, g) -> dict:
        """``gradient_steps`` policy, critic and target-critic steps (see the module), their draws from ``g`` in this
        order per step: start rows ``(batch,)``, policy noise ``(h, batch, m)``, real window starts ``(batch,)``.
        Returns the mean losses."""
        N, h, batch, m = len(data), self.rollout_horizon, self.batch_size, self.dims[1]
        L = min(h, N)                                     # real windows: L consecutive transitions
        device, dtype = data.x.device, data.x.dtype
        discounts = self.gamma ** torch.arange(h, dtype=dtype, device=device)
        offsets = torch.arange(L, device=device).unsqueeze(1)
        actor_params = [p for p in self.policy.parameters() if p.requires_grad]
        critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        totals = dict(actor_loss=0.0, critic_loss=0.0, model_return=0.0)
        skipped = 0
        with torch.enable_grad():                        # the agent may call under no_grad
            for _ in range(self.gradient_steps):
                starts = draw_randint(N, (batch,), g, device)
                noise = draw_randn((h, batch, m), g, dtype, device)
                windows = draw_randint(N - L + 1, (batch,), g, device)
                # the policy: its model return, differentiated through the ensemble's mean and the target critic
                xs, us = self._rollout(self.mean_dynamics, data.x[starts].detach(), noise)
                rewards = self._reward(where, xs[:-1], us)                              # (h, batch)
                end = self.target_critic(self.normalizer(xs[-1]))
                ret = (discounts.unsqueeze(1) * rewards).sum(0) + self.gamma ** h * end
                actor_loss = -ret.mean() / h
                skipped += not self._step(self.actor_optimizer, actor_params, actor_loss)
                # the critic: TD(lambda) targets of the model rollout (detached) and of real windows
                with torch.no_grad():
                    values = self.target_critic(self.normalizer(xs[1:].detach()))
                    model_targets = td_lambda(rewards.detach(), values, self.gamma, self.lam)
                    real_x, real_targets = self.window_targets(data, windows.unsqueeze(0) + offsets)
                predicted = self.critic(self.normalizer(torch.cat([xs[:-1].detach(), real_x])))   # (h + L, batch)
                critic_loss = ((predicted[:h] - model_targets).square().mean()
                               + (predicted[h:] - real_targets).square().mean())
                skipped += not self._step(self.critic_optimizer, critic_params, critic_loss)
                with torch.no_grad():
                    for target, p in zip(self.target_critic.parameters(), self.critic.parameters()):
                        target.lerp_(p, self.tau)
                totals["actor_loss"] += float(actor_loss.detach())
                totals["critic_loss"] += float(critic_loss.detach())
                totals["model_return"] += float(ret.detach().mean())
        return {**{k: v / self.gradient_steps for k, v in totals.items()}, "skipped": skipped}

    # ------------------------------------------------------------------------------------------ checkpoints
    _KEYS = ("dims", "updates", "seen", "stats", "networks", "plan")

    def state_dict(self) -> dict:
        """Everything a resumed run needs (taken between updates): the policy, the critic, the target critic, the
        observation statistics, both Adam states, the counters, ``stats`` and the warm-start ``plan``. No generator
        state: every update reseeds its draws from the agent's generator, and acting draws from :meth:`reset`'s.
        CPU tensors, copies."""
        return dict(dims=self.dims, updates=self.updates, seen=self.seen, stats=[dict(r) for r in self.stats],
                    networks=None if self.policy is None else self._networks_state(),
                    plan=None if self.plan is None else self.plan.detach().cpu().clone())

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict`); everything is checked before anything is loaded (a
        ValueError names what does not fit: other layer widths, observation or action sizes)."""
        where, source = "ValueGuidedMPPI.load_state_dict", "the state dict"
        check_checkpoint(where, source, state, self._KEYS)
        dims, networks = state["dims"], state["networks"]
        for name in ("updates", "seen"):
            if isinstance(state[name], bool) or not isinstance(state[name], numbers.Integral) or state[name] < 0:
                raise ValueError(f"{where}: {source}'s {name} must be an int >= 0, got {state[name]!r}")
        if not (isinstance(state["stats"], list) and all(isinstance(r, Mapping) for r in state["stats"])):
            raise ValueError(f"{where}: {source}'s stats must be a list of dicts, got {type(state['stats']).__name__}")
        plan = state["plan"]
        if plan is not None and not (isinstance(plan, torch.Tensor) and plan.ndim == 3 and plan.shape[1] == self.horizon
                                     and (dims is None or plan.shape[2] == dims[1])):
            raise ValueError(f"{where}: {source}'s plan must be None or a tensor (B, H, m) with H = {self.horizon}, "
                             f"got {tuple(plan.shape) if isinstance(plan, torch.Tensor) else type(plan).__name__}")
        if networks is None:
            if self.policy is not None:
                raise ValueError(f"{where}: {source} holds no networks (written before the first update) but this "
                                 "planner has trained ones; load it into a fresh planner")
        else:
            if not (isinstance(dims, (tuple, list)) and len(dims) == 2 and all(
                    isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 1 for d in dims)):
                raise ValueError(f"{where}: {source}'s dims must be (n, m), got {dims!r}")
            dims = (int(dims[0]), int(dims[1]))
            if self.dims is not None and self.dims != dims:
                raise ValueError(f"{where}: {source} was written by another configuration: it has dims (n, m) = "
                                 f"{dims}, this planner's networks {self.dims}")
            if not (isinstance(networks, Mapping) and all(k in networks for k in _NETWORKS)):
                raise ValueError(f"{where}: {source}'s networks must be a dict of {list(_NETWORKS)}")
            if self.policy is None:             # built on the CPU; update moves them to the model's device
                dtype = networks["policy"].get("log_std") if isinstance(networks["policy"], Mapping) else None
                dtype = dtype.dtype if isinstance(dtype, torch.Tensor) and dtype.is_floating_point() else torch.float32
                self._build(*dims, self.seed, dtype, "cpu")
            for name in _NETWORKS:
                check_module_state(where, source, name, getattr(self, name), networks[name])
            self._load_networks(networks)
        self.updates, self.seen = int(state["updates"]), int(state["seen"])
        self.stats = [dict(r) for r in state["stats"]]
        self.plan = None if plan is None else plan.clone()
