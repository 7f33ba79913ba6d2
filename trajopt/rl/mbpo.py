"""MBPO (Janner et al. 2019): a stable-baselines3 SAC policy trained on short branched rollouts of the learned ensemble,
as a :class:`~trajopt.rl.agent.Planner` of :class:`~trajopt.rl.ModelBasedAgent`.

The agent collects real episodes with the policy's actions and refits the ensemble after each iteration; then
:meth:`MBPO.update` does MBPO's work: ``rollout_batch`` start states drawn from the real transitions are rolled
``k`` steps through the ensemble (a random member per row per step, sampling its Gaussian) under the current policy's
stochastic actions, scored by the task's known reward (``-cost.stage(x, u)``) and stopped by its known termination
function; the rollouts go into a first-in first-out model buffer; SAC then takes ``updates_per_step`` gradient
steps per new real step, each on a minibatch of which a ``real_ratio`` fraction is real transitions and the rest
model transitions.

Needs stable-baselines3 (``pip install stable-baselines3``, the ``rl`` extra); it is imported when an
:class:`MBPO` is built, not with :mod:`trajopt.rl`. Nothing here is differentiable: the policy is trained by SAC's
own losses, the model by :func:`dynamics.learned.fit`, and rollouts and acting run without gradients.
"""
from __future__ import annotations

import math
import numbers
import time
from collections.abc import Mapping

import numpy as np
import torch

from .._core.checks import check_bool, check_callable, check_int, check_interval, check_positive
from .._core.costs import Cost
from ._checks import check_action_bounds, check_checkpoint, check_features, check_module_state
from ._draws import draw_randint, draw_randn
from .logs import cpu_copy
from .agent import Planner, check_update

__all__ = ["MBPO"]

INSTALL = ("MBPO needs stable-baselines3 (its SAC is the learner): pip install stable-baselines3, or the rl extra: "
           "pip install -e '.[rl]'")
# SAC's own options that MBPO sets itself (sac_options may not repeat them)
_OWN = ("policy", "env", "learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma",
        "ent_coef", "target_entropy", "replay_buffer_class", "replay_buffer_kwargs", "device", "seed", "verbose",
        "train_freq", "gradient_steps", "_init_setup_model")
_FIELDS = ("obs", "action", "reward", "next_obs", "done")


def _stable_baselines3():
    try:
        import stable_baselines3
    except ImportError as error:
        raise ImportError(INSTALL) from error
    return stable_baselines3


class _Mixture:
    """The minibatches SAC trains on: ``real_ratio`` of each from the real transitions, the rest from the model
    buffer (all real while the model buffer is empty). Tensors of SAC's device, float32: ``obs (N, n)``, ``action
    (N, m)`` (squashed to [-1, 1], as SAC stores actions), ``reward (N,)``, ``next_obs (N, n)``, ``done (N,)``.
    The model buffer also keeps ``born (N,)``: the update whose rollouts made each row (newest rows last)."""

    def __init__(self, real_ratio: float):
        self.real_ratio = real_ratio
        self.real: dict | None = None
        self.model: dict | None = None
        self.generator: torch.Generator | None = None

    def model_size(self) -> int:
        return 0 if self.model is None else len(self.model["obs"])

    def add_model(self, rows: dict, capacity: int) -> None:
        """Append ``rows`` and keep the newest ``capacity`` rows (first in, first out)."""
        if self.model is not None:
            rows = {k: torch.cat([self.model[k], rows[k]]) for k in rows}
        self.model = {k: v[-capacity:] for k, v in rows.items()} if capacity else None

    def resize(self, capacity: int) -> None:
        if self.model is not None:
            self.model = {k: v[-capacity:] for k, v in self.model.items()}

    def sample(self, batch_size: int):
        """``(obs, action, next_obs, done (B, 1), reward (B, 1))``: the first ``int(batch_size * real_ratio)`` rows
        real (all when the model buffer is empty), the others from the model buffer, drawn uniformly with
        replacement from ``generator``."""
        if self.real is None:
            raise RuntimeError("MBPO: no transitions to train on yet (update(model, data) first)")
        size = self.model_size()
        n_real = batch_size if size == 0 else int(batch_size * self.real_ratio)
        g = self.generator
        device = self.real["obs"].device
        parts = [(self.real, torch.randint(len(self.real["obs"]), (n_real,), generator=g,
                                           device=g.device if g is not None else device).to(device))]
        if batch_size > n_real:
            parts.append((self.model, torch.randint(size, (batch_size - n_real,), generator=g,
                                                    device=g.device if g is not None else device).to(device)))
        out = {k: torch.cat([source[k][idx] for source, idx in parts]) for k in _FIELDS}
        return out["obs"], out["action"], out["next_obs"], out["done"][:, None], out["reward"][:, None]


_BUFFER_CLASS = None


def _replay_buffer_class():
    """stable-baselines3's ``ReplayBuffer`` whose ``sample`` draws MBPO's mixed minibatches (built once, when
    stable-baselines3 is first needed)."""
    global _BUFFER_CLASS
    if _BUFFER_CLASS is None:
        from stable_baselines3.common.buffers import ReplayBuffer
        from stable_baselines3.common.type_aliases import ReplayBufferSamples

        class MBPOReplayBuffer(ReplayBuffer):
            """SAC's replay buffer in MBPO: ``sample`` returns :class:`_Mixture`'s minibatches (``mixture``, set by
            :class:`MBPO`); MBPO fills it, so ``add`` (SAC's own collection) is refused."""

            def __init__(self, buffer_size, observation_space, action_space, device="auto", n_envs=1, **kwargs):
                super().__init__(1, observation_space, action_space, device, n_envs=n_envs)
                self.mixture: _Mixture | None = None

            def add(self, *args, **kwargs):
                raise RuntimeError("MBPO's replay buffer is filled by MBPO.update, not by SAC.learn")

            def sample(self, batch_size, env=None):
                return ReplayBufferSamples(*self.mixture.sample(batch_size))

        _BUFFER_CLASS = MBPOReplayBuffer
    return _BUFFER_CLASS


def _rng_devices(device: torch.device) -> list:
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


class MBPO(Planner):
    """MBPO: model-based policy optimization (Janner et al. 2019) with stable-baselines3's SAC as the learner.

    :meth:`act` is the SAC policy: its stochastic (squashed Gaussian) action while training, its mean action while
    :meth:`ModelBasedAgent.evaluate <trajopt.rl.ModelBasedAgent.evaluate>` runs (the agent sets ``evaluating``).
    :meth:`update`, called by the agent after every fit of the ensemble, does the rest, in proportion to the
    ``new`` real transitions since the last update:

    1. ``k = rollout_length(epoch)``, ``epoch`` the number of updates before this one (one per agent iteration);
       the model buffer's capacity becomes ``retain_epochs * rollout_batch * k`` (its newest rows kept).
    2. Branched rollouts (:meth:`rollout`): ``rollout_batch`` start states drawn uniformly from all real
       transitions, ``k`` steps through the ensemble (the agent's elite members with ``use_elites`` when it chose
       some) under the policy's stochastic actions; rewards ``-cost.stage(x, u)``, a row stops after a step
       ``terminate`` marks (or whose prediction is not finite: dropped). Appended to the model buffer.
    3. ``updates_per_step * new`` SAC gradient steps (``SAC.train``) on minibatches of ``batch_size``, of which
       ``int(batch_size * real_ratio)`` rows are real transitions (rewards from the known cost, done from
       ``terminate`` of the next observation) and the rest model transitions, drawn uniformly with replacement.
       The minibatches come from a custom stable-baselines3 ``ReplayBuffer`` subclass whose ``sample`` draws
       them from MBPO's two buffers (SAC's own collection, ``learn``, is not used).

    The three pitfalls that mbrl-lib's MBPO had to fix (facebookresearch/mbrl-lib#61) are avoided:

    - Model data is not wiped at every model fit (mbrl-lib's bug): every update adds rollouts of the current model
      and policy, and the oldest leave a first-in first-out buffer holding ``retain_epochs`` updates' rollouts
      (MBPO's ``model_retain_epochs``), so the policy always trains on recent rollouts of recent models.
    - Bootstrap indices are drawn once per fit, not per epoch or minibatch (:func:`dynamics.learned.fit` draws
      each member's resample once per call; the agent calls it once per iteration, when the data has grown), so
      the members see different data.
    - The ensemble's weights start from PyTorch's bounded ``nn.Linear`` initialization, each member its own draw
      (no truncated normal whose samples escape the truncation).

    Randomness: each update draws its seed from the agent's ``info["generator"]`` (else from ``seed`` and the
    update's count), which seeds the rollouts, the minibatch draws and SAC's own sampling (run under
    ``torch.random.fork_rng``: the global generator is left as it was); :meth:`act` draws from the generator
    of :meth:`reset`. So a run is seeded end to end by the agent, and a checkpoint needs no generator state.

    Args:
        cost: the task's known :class:`trajopt.Cost` on observations (time-invariant): the reward of a step is
            ``-cost.stage(x, u)`` (``x (B, n)``, ``u (B, m)`` in the environment's units give ``(B,)``).
        u_lower, u_upper: the action bounds (the environment's action space), finite, each a number (a NumPy
            scalar too) or a float tensor broadcastable to ``(m,)``; a list, tuple or NumPy array raises a TypeError
            naming it (pass ``torch.tensor(...)``). SAC's squashed actions in ``[-1, 1]`` map onto them.
        terminate: None (the task never terminates) or the known termination function ``terminate(x_next (B, n))
            -> bool (B,)``: rollout rows stop after the step it marks, and those transitions (real ones too) have no
            value beyond them.
        rollout_batch: start states per update.
        rollout_schedule: the rollout length ``k``: an int, or MBPO's linear schedule ``(start_epoch, end_epoch,
            min_length, max_length)``: ``min_length`` up to ``start_epoch``, then linear (rounded down) to
            ``max_length`` at ``end_epoch`` and after (ints, ``0 <= start_epoch <= end_epoch``, lengths >= 1).
        retain_epochs: updates whose rollouts the model buffer keeps (capacity ``retain_epochs * rollout_batch * k``).
        real_ratio: the fraction of real transitions in each minibatch, in ``[0, 1]`` (MBPO: 0.05).
        updates_per_step: SAC gradient steps per new real transition.
        batch_size: SAC's minibatch size.
        net_arch: the hidden layer widths of SAC's actor and critics. The defaults suit a CPU: SAC with 256x256
            networks does about 30 gradient steps per second on one core here, 64x64 about 80 (batch 256).
        learning_rate, gamma, tau: SAC's (Adam's learning rate, the discount, the target networks' Polyak rate).
        ent_coef, target_entropy: SAC's entropy coefficient (``"auto"``, ``"auto_<initial value>"`` or a positive
            number) and its target (``"auto"``: ``-m``; or a number).
        use_elites: roll out only the elite members when the agent chose some (``info["elites"]``).
        seed: an int >= 0, the seed source when :meth:`update` gets no ``info["generator"]`` (a loop of one's own).
        sac_options: further keyword arguments of ``stable_baselines3.SAC`` (``policy_kwargs``, ...), not those
            set above.

    ``stats``: one dict per update that learned (``epoch``, ``k``, ``new_steps``, ``rollout_rows`` kept,
    ``model_buffer`` size, ``gradient_steps``, SAC's last losses and entropy coefficient, ``seconds``).
    Options are checked at construction (an error names the option); stable-baselines3 missing raises an
    ImportError naming ``pip install stable-baselines3``.
    """

    def __init__(self, cost: Cost, u_lower, u_upper, *, terminate=None, rollout_batch: int = 10_000,
                 rollout_schedule=1, retain_epochs: int = 5, real_ratio: float = 0.05, updates_per_step: int = 10,
                 batch_size: int = 256, net_arch=(64, 64), learning_rate: float = 1e-3, gamma: float = 0.99,
                 tau: float = 0.005, ent_coef="auto", target_entropy="auto", use_elites: bool = True,
                 seed: int = 0, sac_options: dict | None = None):
        where = "MBPO"
        _stable_baselines3()
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost on observations (e.g. PendulumV1Cost()), got "
                            f"{type(cost).__name__}")
        if cost.time_varying or not cost.separable:
            raise ValueError(f"{where}: cost must be time-invariant and separable over stages")
        self.u_lower, self.u_upper = check_action_bounds(where, u_lower, u_upper, ("u_lower", "u_upper"))
        if not bool((self.u_lower < self.u_upper.to(self.u_lower)).all()):
            raise ValueError(f"{where}: u_lower must be below u_upper in every coordinate (SAC squashes its actions "
                             f"into the open interval), got u_lower={self.u_lower.tolist()}, "
                             f"u_upper={self.u_upper.tolist()}")
        check_callable(where, allow_none=True, terminate=terminate)
        check_int(where, rollout_batch=rollout_batch, retain_epochs=retain_epochs,
                  updates_per_step=updates_per_step, batch_size=batch_size)
        self.schedule = self._check_schedule(where, rollout_schedule)
        check_interval(where, 0, 1, real_ratio=real_ratio)
        if not (isinstance(net_arch, (tuple, list)) and net_arch and all(
                isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in net_arch)):
            raise ValueError(f"{where}: net_arch must be a non-empty tuple of layer widths (ints >= 1), got "
                             f"{net_arch!r}")
        check_positive(where, learning_rate=learning_rate)
        check_interval(where, 0, 1, include_low=False, gamma=gamma, tau=tau)
        if isinstance(ent_coef, str):
            ok = ent_coef == "auto" or (ent_coef.startswith("auto_") and _positive_float(ent_coef[5:]))
        else:
            ok = _real(ent_coef) and 0 < ent_coef < math.inf
        if not ok:
            raise ValueError(f"{where}: ent_coef must be 'auto', 'auto_<initial value>' or a positive number, got "
                             f"{ent_coef!r}")
        if not (target_entropy == "auto" or (_real(target_entropy) and math.isfinite(target_entropy))):
            raise ValueError(f"{where}: target_entropy must be 'auto' or a finite number, got {target_entropy!r}")
        check_bool(where, use_elites=use_elites)
        check_int(where, minimum=0, seed=seed)
        if sac_options is not None and not isinstance(sac_options, Mapping):
            raise TypeError(f"{where}: sac_options must be a dict of stable_baselines3.SAC's keyword arguments or "
                            f"None, got {type(sac_options).__name__}")
        clash = sorted(set(sac_options or {}) & set(_OWN))
        if clash:
            raise ValueError(f"{where}: sac_options may not set {clash}: MBPO sets them (use its own options)")
        self.cost, self.terminate = cost, terminate
        self.rollout_batch, self.retain_epochs = int(rollout_batch), int(retain_epochs)
        self.real_ratio, self.updates_per_step, self.batch_size = float(real_ratio), int(updates_per_step), int(batch_size)
        self.net_arch = tuple(int(h) for h in net_arch)
        self.learning_rate, self.gamma, self.tau = float(learning_rate), float(gamma), float(tau)
        self.ent_coef = ent_coef if isinstance(ent_coef, str) else float(ent_coef)
        self.target_entropy = target_entropy if isinstance(target_entropy, str) else float(target_entropy)
        self.use_elites, self.seed = use_elites, int(seed)
        self.sac_options = dict(sac_options or {})
        self.sac = None                     # built at the first update (the sizes come from the model)
        self.dims: tuple[int, int] | None = None
        self.model, self.members = None, None
        self.mixture = _Mixture(self.real_ratio)
        self.updates, self.seen = 0, 0      # updates that learned; real transitions seen by the last one
        self.stats: list[dict] = []
        self.generator = None

    # ------------------------------------------------------------------------------------------ options
    @staticmethod
    def _check_schedule(where, schedule):
        if isinstance(schedule, numbers.Integral) and not isinstance(schedule, bool):
            check_int(where, rollout_schedule=schedule)
            return (0, 0, int(schedule), int(schedule))
        if not (isinstance(schedule, (tuple, list)) and len(schedule) == 4 and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in schedule)):
            raise ValueError(f"{where}: rollout_schedule must be an int >= 1 or (start_epoch, end_epoch, min_length, "
                             f"max_length), four ints, got {schedule!r}")
        start, end, low, high = (int(v) for v in schedule)
        if not (0 <= start <= end and low >= 1 and high >= 1):
            raise ValueError(f"{where}: rollout_schedule (start_epoch, end_epoch, min_length, max_length) needs "
                             f"0 <= start_epoch <= end_epoch and lengths >= 1, got {tuple(schedule)}")
        return (start, end, low, high)

    def rollout_length(self, epoch: int) -> int:
        """The rollout length ``k`` at ``epoch`` (an int >= 0; the update's count): MBPO's truncated linear
        schedule ``min_length`` for ``epoch <= start_epoch``, then ``int(min_length + (max_length - min_length) *
        min(1, (epoch - start_epoch) / (end_epoch - start_epoch)))``."""
        check_int("MBPO.rollout_length", minimum=0, epoch=epoch)
        start, end, low, high = self.schedule
        if epoch <= start:
            return low
        fraction = 1.0 if end == start else min(1.0, (epoch - start) / (end - start))
        return int(low + fraction * (high - low))

    @property
    def model_buffer(self) -> dict | None:
        """The model buffer's rows (oldest first): ``obs (N, n)``, ``action (N, m)`` (squashed, in ``[-1, 1]``),
        ``reward (N,)``, ``next_obs (N, n)``, ``done (N,)`` (float32, SAC's device) and ``born (N,)`` (the update
        that rolled each row out); None when empty."""
        return self.mixture.model

    # ------------------------------------------------------------------------------------------ SAC
    def _build_sac(self, n: int, m: int, seed: int, device):
        """A fresh SAC for observations ``(n,)`` and actions ``(m,)`` on ``device``, its weights drawn from
        ``seed`` (the global generator untouched)."""
        sb3 = _stable_baselines3()
        import gymnasium
        from stable_baselines3.common.logger import Logger

        low = self.u_lower.expand(m).detach().cpu().numpy().astype(np.float32)
        high = self.u_upper.expand(m).detach().cpu().numpy().astype(np.float32)
        if not (high > low).all():
            raise ValueError(f"MBPO: u_lower must be below u_upper in every coordinate for SAC's squashed actions, got "
                             f"u_lower={low.tolist()}, u_upper={high.tolist()}")

        class Spaces(gymnasium.Env):          # SAC is built from spaces; MBPO feeds it, nothing steps this
            observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (n,), np.float32)
            action_space = gymnasium.spaces.Box(low, high, (m,), np.float32)

            def reset(self, *, seed=None, options=None):
                raise RuntimeError("MBPO's SAC does not collect: the agent steps the real environment")

            def step(self, action):
                raise RuntimeError("MBPO's SAC does not collect: the agent steps the real environment")

        device = torch.device(device)
        with torch.random.fork_rng(devices=_rng_devices(device)):
            torch.manual_seed(seed)
            sac = sb3.SAC("MlpPolicy", Spaces(), learning_rate=self.learning_rate, buffer_size=1, learning_starts=0,
                          batch_size=self.batch_size, tau=self.tau, gamma=self.gamma, ent_coef=self.ent_coef,
                          target_entropy=self.target_entropy, replay_buffer_class=_replay_buffer_class(),
                          policy_kwargs={**dict(self.sac_options.get("policy_kwargs") or {}),
                                         "net_arch": list(self.net_arch)},
                          device=device, seed=None, verbose=0,
                          **{k: v for k, v in self.sac_options.items() if k != "policy_kwargs"})
        sac.set_logger(Logger(None, []))
        sac.replay_buffer.mixture = self.mixture
        return sac

    def _bounds(self, like):
        m = self.dims[1]
        return self.u_lower.to(like).expand(m), self.u_upper.to(like).expand(m)

    def _squashed(self, x, noise):
        """SAC's action in ``[-1, 1]`` for observations ``x (B, n)`` (any float dtype): ``tanh(mean + std *
        noise)``, the mean action for ``noise`` None. Float32 on SAC's device."""
        actor = self.sac.actor
        mean, log_std, _ = actor.get_action_dist_params(x.to(self.sac.device, torch.float32))
        return torch.tanh(mean if noise is None else mean + log_std.exp() * noise)

    def _unscale(self, a, like):
        low, high = self._bounds(like)
        return low + 0.5 * (a.to(like) + 1) * (high - low)

    def _scale(self, u):
        low, high = self._bounds(u)
        return (2 * (u - low) / (high - low) - 1).clamp(-1, 1)

    # ------------------------------------------------------------------------------------------ planner
    def reset(self, count, generator):
        self.generator = generator

    @torch.no_grad()
    def act(self, obs):
        """The policy's actions ``(B, m)`` for ``obs (B, n)`` (of ``obs``'s dtype and device): a draw of its squashed
        Gaussian (from the generator of :meth:`reset`), or its mean action while ``evaluating``."""
        if self.sac is None:
            raise RuntimeError("MBPO.act: no policy yet; call update(model, data) first")
        if not (isinstance(obs, torch.Tensor) and obs.ndim == 2):
            raise ValueError(f"MBPO.act: obs must be a tensor (B, n), got "
                             f"{tuple(obs.shape) if isinstance(obs, torch.Tensor) else type(obs).__name__}")
        check_features("MBPO.act", "obs", obs, self.dims[0], dims="n")
        noise = None if self.evaluating else draw_randn((obs.shape[0], self.dims[1]), self.generator,
                                                         torch.float32, self.sac.device)
        return self._unscale(self._squashed(obs, noise), obs)

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, steps: int, generator: torch.Generator | None = None) -> dict:
        """Branched rollouts of the current policy in the current model (:meth:`update` first): ``steps`` steps from
        ``x0 (B, n)`` (the model's dtype and device).

        At every step, in this order of draws from ``generator`` (else torch's global one): the policy's noise
        ``(B, m)`` (float32; action ``tanh(mean + std * noise)`` mapped onto the bounds), each row's member
        ``(B,)`` among the members used (all, or the elites), and the Gaussian noise ``(B, n)`` of the member's
        prediction; ``x_next = x + (mu + noise * exp(logvar / 2)) * out_std + out_mean``. Rows are drawn for and
        computed together (no loop over rows); a row that terminated (``terminate(x_next)``) or whose prediction or
        reward is not finite stops there (its later steps are computed from its frozen state but not kept).

        Returns a dict of ``(steps, B, ...)`` tensors: ``obs``, ``u`` (environment units), ``action`` (squashed, in
        ``[-1, 1]``), ``reward`` (``-cost.stage(obs, u)``), ``next_obs``, ``done`` (bool: ``terminate`` marked the
        step), ``kept`` (bool: the row was still running, the step finite: what :meth:`update` stores).
        Not differentiable (no graph is recorded)."""
        where = "MBPO.rollout"
        if self.model is None:
            raise RuntimeError(f"{where}: no model yet; call update(model, data) first")
        check_int(where, minimum=0, steps=steps)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")
        model, members = self.model, self.members
        dtype = next(p.dtype for p in model.parameters())
        if not (isinstance(x0, torch.Tensor) and x0.ndim == 2):
            raise ValueError(f"{where}: x0 must be a tensor (B, n), got "
                             f"{tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__}")
        check_features(where, "x0", x0, model.state_dim, dtype, dims="n")
        B, n, m = x0.shape[0], model.state_dim, model.control_dim
        K = model.members if members is None else len(members)
        rows = torch.arange(B, device=x0.device)
        alive = torch.ones(B, dtype=torch.bool, device=x0.device)
        out = {k: [] for k in ("obs", "u", "action", "reward", "next_obs", "done", "kept")}
        x = x0
        for _ in range(steps):
            a = self._squashed(x, draw_randn((B, m), generator, torch.float32, self.sac.device))
            u = self._unscale(a, x)
            member = draw_randint(K, (B,), generator, x.device)
            mean, logvar = model.member_outputs(x, u, members)
            noise = draw_randn((B, n), generator, x.dtype, x.device)
            delta = (mean[member, rows] + noise * (0.5 * logvar[member, rows]).exp()) * model.out_std + model.out_mean
            x_next = x + delta
            reward = -self._stage(where, x, u)
            finite = torch.isfinite(x_next).all(-1) & torch.isfinite(reward)
            done = self._terminated(where, x_next) & finite
            kept = alive & finite
            for k, v in zip(out, (x, u, a, reward, x_next, done, kept)):
                out[k].append(v)
            alive = kept & ~done
            x = torch.where(alive[:, None], x_next, x)
        if steps == 0:
            shapes = dict(obs=(0, B, n), u=(0, B, m), action=(0, B, m), reward=(0, B), next_obs=(0, B, n))
            return {**{k: x0.new_zeros(s) for k, s in shapes.items()},
                    "done": torch.zeros(0, B, dtype=torch.bool, device=x0.device),
                    "kept": torch.zeros(0, B, dtype=torch.bool, device=x0.device)}
        return {k: torch.stack(v) for k, v in out.items()}

    def _stage(self, where, x, u):
        r = self.cost.stage(x, u)
        if not (isinstance(r, torch.Tensor) and r.shape == x.shape[:-1]):
            got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise ValueError(f"{where}: cost.stage(x, u) must return (B,) = ({x.shape[0]},), got {got}")
        return r

    def _terminated(self, where, x_next):
        if self.terminate is None:
            return torch.zeros(x_next.shape[0], dtype=torch.bool, device=x_next.device)
        done = self.terminate(x_next)
        if not (isinstance(done, torch.Tensor) and done.dtype == torch.bool and done.shape == x_next.shape[:-1]):
            got = f"{done.dtype} {tuple(done.shape)}" if isinstance(done, torch.Tensor) else type(done).__name__
            raise ValueError(f"{where}: terminate(x_next) must return a bool tensor (B,) = ({x_next.shape[0]},), "
                             f"got {got}")
        return done.to(x_next.device)

    def update(self, model, data, info=None):
        """MBPO's work after a fit of ``model`` (a :class:`~dynamics.learned.ProbabilisticEnsemble`) on ``data``
        (all real transitions, a :class:`~dynamics.learned.Transitions`), in proportion to the transitions added
        since the last update: rollouts into the model buffer, then ``updates_per_step`` SAC gradient steps per new
        transition (see the class). With no new transitions (the agent rebuilding the planner from a checkpoint)
        it only takes the model and the data. ``info``: the agent's (``elites``, ``generator``) or None. The
        bounds must fit the model's ``m``; ``data`` may only grow between updates."""
        where = "MBPO.update"
        info, generator, elites = check_update(where, model, data, info, (("u_lower", self.u_lower),
                                                                          ("u_upper", self.u_upper)),
                                               self.dims, self.seen, self.use_elites)
        n, m = model.state_dim, model.control_dim
        self.model, self.members = model, None if elites is None else [int(e) for e in elites]
        new = len(data) - self.seen
        seed = None
        if new > 0:
            seed = (int(torch.randint(2 ** 62, (), generator=generator, device=generator.device))
                    if generator is not None else
                    int(np.random.SeedSequence([self.seed, self.updates]).generate_state(1, np.uint64)[0] >> 2))
        device = next(model.parameters()).device
        if self.sac is None:
            self.dims = (n, m)
            self.sac = self._build_sac(n, m, self.seed if seed is None else seed + 3, device)
        elif self.sac.device != device:               # restored on the CPU, the model elsewhere: follow the model
            state = self.state_dict()
            self.sac = self._build_sac(n, m, self.seed, device)
            self._load_sac(self.sac, state["sac"])
            self.mixture.model = None if state["model_buffer"] is None else {
                k: v.to(device) for k, v in state["model_buffer"].items()}
        self._set_real(data)
        if new == 0:
            return
        start = time.perf_counter()
        k = self.rollout_length(self.updates)
        capacity = self.retain_epochs * self.rollout_batch * k
        self.mixture.resize(capacity)
        g = torch.Generator(device).manual_seed(seed)
        x0 = data.x[torch.randint(len(data), (self.rollout_batch,), generator=g, device=device)]
        roll = self.rollout(x0.detach(), k, g)
        kept = roll["kept"].reshape(-1)
        sac_device = self.sac.device
        rows = {"obs": roll["obs"], "action": roll["action"], "reward": roll["reward"], "next_obs": roll["next_obs"],
                "done": roll["done"]}
        rows = {name: v.reshape(k * self.rollout_batch, *v.shape[2:])[kept].to(sac_device, torch.float32)
                for name, v in rows.items()}
        rows["born"] = torch.full((len(rows["obs"]),), self.updates, dtype=torch.long, device=sac_device)
        self.mixture.add_model(rows, capacity)
        steps = self.updates_per_step * new
        self.mixture.generator = torch.Generator(sac_device).manual_seed(seed + 1)
        with torch.random.fork_rng(devices=_rng_devices(sac_device)), torch.enable_grad():   # under no_grad too
            torch.manual_seed(seed + 2)
            self.sac.train(gradient_steps=steps, batch_size=self.batch_size)
        logged = self.sac.logger.name_to_value
        self.stats.append(dict(epoch=self.updates, k=k, new_steps=new, rollout_rows=int(kept.sum()),
                               model_buffer=self.mixture.model_size(), gradient_steps=steps,
                               critic_loss=float(logged.get("train/critic_loss", math.nan)),
                               actor_loss=float(logged.get("train/actor_loss", math.nan)),
                               ent_coef=float(logged.get("train/ent_coef", math.nan)),
                               seconds=round(time.perf_counter() - start, 3)))
        self.updates += 1
        self.seen = len(data)

    @torch.no_grad()
    def _set_real(self, data):
        """The real transitions as SAC trains on them: rewards from the known cost, done from ``terminate``."""
        where = "MBPO.update"
        x, u, x_next = (t.detach() for t in (data.x, data.u, data.x_next))
        device = self.sac.device
        self.mixture.real = {"obs": x, "action": self._scale(u), "reward": -self._stage(where, x, u),
                             "next_obs": x_next, "done": self._terminated(where, x_next)}
        self.mixture.real = {k: v.to(device, torch.float32) for k, v in self.mixture.real.items()}

    # ------------------------------------------------------------------------------------------ checkpoints
    _KEYS = ("dims", "updates", "seen", "stats", "sac", "model_buffer")

    def state_dict(self) -> dict:
        """Everything a resumed run needs (taken between updates): SAC's actor, critics and target critics, their
        Adam states, the entropy coefficient and its optimizer, the model buffer, the counters and ``stats``.
        No generator state: every update reseeds its draws (see the class). CPU tensors, copies."""
        sac = None
        if self.sac is not None:
            s = self.sac
            sac = {"policy": {k: v.detach().cpu().clone() for k, v in s.policy.state_dict().items()},
                   "actor_optimizer": cpu_copy(s.actor.optimizer.state_dict()),
                   "critic_optimizer": cpu_copy(s.critic.optimizer.state_dict()),
                   "log_ent_coef": None if s.log_ent_coef is None else s.log_ent_coef.detach().cpu().clone(),
                   "ent_coef_optimizer": None if s.ent_coef_optimizer is None else
                   cpu_copy(s.ent_coef_optimizer.state_dict()),
                   "n_updates": int(s._n_updates)}
        buffer = None if self.mixture.model is None else {k: v.cpu().clone() for k, v in self.mixture.model.items()}
        return dict(dims=self.dims, updates=self.updates, seen=self.seen, stats=[dict(r) for r in self.stats],
                    sac=sac, model_buffer=buffer)

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (a :meth:`state_dict`); everything is checked before anything is loaded (a
        ValueError names what does not fit this MBPO: other network sizes, observation or action sizes)."""
        where, source = "MBPO.load_state_dict", "the state dict"
        check_checkpoint(where, source, state, self._KEYS)
        dims, sac_state = state["dims"], state["sac"]
        if sac_state is None:
            self.sac, self.dims, self.model, self.members = None, None, None, None
            self.mixture = _Mixture(self.real_ratio)
            self.updates, self.seen, self.stats = 0, 0, []
            return
        if not (isinstance(dims, (tuple, list)) and len(dims) == 2 and all(
                isinstance(d, numbers.Integral) and d >= 1 for d in dims)):
            raise ValueError(f"{where}: {source}'s dims must be (n, m), got {dims!r}")
        dims = (int(dims[0]), int(dims[1]))
        if not (isinstance(sac_state, Mapping) and all(k in sac_state for k in (
                "policy", "actor_optimizer", "critic_optimizer", "log_ent_coef", "ent_coef_optimizer", "n_updates"))):
            raise ValueError(f"{where}: {source}'s sac is not an MBPO's SAC state")
        if self.dims is not None and self.dims != dims:
            raise ValueError(f"{where}: {source} was written by another configuration: it has dims (n, m) = {dims}, "
                             f"this MBPO's policy {self.dims}")
        sac = self.sac if self.sac is not None else self._build_sac(*dims, self.seed, "cpu")   # moved by update
        check_module_state(where, source, "sac policy", sac.policy, sac_state["policy"])
        check_module_state(where, source, "sac actor optimizer", sac.actor.optimizer, sac_state["actor_optimizer"])
        check_module_state(where, source, "sac critic optimizer", sac.critic.optimizer, sac_state["critic_optimizer"])
        if (sac_state["log_ent_coef"] is None) != (sac.log_ent_coef is None):
            raise ValueError(f"{where}: {source} was written by another configuration: its entropy coefficient is "
                             f"{'fixed' if sac_state['log_ent_coef'] is None else 'learned'}, this MBPO's "
                             f"{'fixed' if sac.log_ent_coef is None else 'learned'} (ent_coef)")
        buffer = state["model_buffer"]
        n, m = dims
        if buffer is not None:
            shapes = dict(obs=(n,), action=(m,), reward=(), next_obs=(n,), done=(), born=())
            if not (isinstance(buffer, Mapping) and set(buffer) == set(shapes)):
                raise ValueError(f"{where}: {source}'s model_buffer must be None or a dict of {sorted(shapes)}")
            N = len(buffer["obs"]) if isinstance(buffer["obs"], torch.Tensor) and buffer["obs"].ndim else -1
            for k, tail in shapes.items():
                v = buffer[k]
                if not (isinstance(v, torch.Tensor) and tuple(v.shape) == (N, *tail)):
                    got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                    raise ValueError(f"{where}: {source}'s model_buffer[{k!r}] must be {(N, *tail)}, got {got}")
        for name in ("updates", "seen"):
            if isinstance(state[name], bool) or not isinstance(state[name], numbers.Integral) or state[name] < 0:
                raise ValueError(f"{where}: {source}'s {name} must be an int >= 0, got {state[name]!r}")
        if not (isinstance(state["stats"], list) and all(isinstance(r, Mapping) for r in state["stats"])):
            raise ValueError(f"{where}: {source}'s stats must be a list of dicts, got {type(state['stats']).__name__}")
        self._load_sac(sac, sac_state)
        self.sac, self.dims = sac, dims
        self.mixture.model = None if buffer is None else {k: v.to(sac.device) for k, v in buffer.items()}
        self.updates, self.seen = int(state["updates"]), int(state["seen"])
        self.stats = [dict(r) for r in state["stats"]]


    @staticmethod
    def _load_sac(sac, state):
        sac.policy.load_state_dict(state["policy"])
        sac.actor.optimizer.load_state_dict(state["actor_optimizer"])
        sac.critic.optimizer.load_state_dict(state["critic_optimizer"])
        if sac.log_ent_coef is not None:
            with torch.no_grad():
                sac.log_ent_coef.copy_(state["log_ent_coef"].to(sac.log_ent_coef))
            sac.ent_coef_optimizer.load_state_dict(state["ent_coef_optimizer"])
        sac._n_updates = int(state["n_updates"])


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _positive_float(text: str) -> bool:
    try:
        return 0 < float(text) < math.inf
    except ValueError:
        return False
