"""PPO (stable-baselines3, optional peer) on the task SHAC learns in :mod:`benchmarks.rl`: the same model,
cost, episode length, observation (the same features and elapsed fraction), training starts and scoring.

The environment is a Gymnasium ``Env`` stepping ``problems.py``'s NumPy step function (exactly P3's
physics), with reward ``-reward_scale * (x'Qx + u'Ru)`` and the episode's end as a termination (P3 is a
finite sum; no value is bootstrapped past it), actions in ``[-1, 1]`` scaled to the force bound.
``python -m benchmarks ppo`` trains 3 seeds and reports environment steps and wall time to a mean cost of
980 and the cost reached after the time budget.
"""
from __future__ import annotations

import math
import time

import numpy as np

from trajopt.problems import reference as problems

# Screened on seed 0 for 4 minutes each (cost at the end / best; wide starts as SHAC's):
#   8 envs, n_steps 1024, batch 256, lr 3e-4, gamma 0.99 (SB3's defaults): 2657 / 2657, with VecNormalize 2662 / 2660;
#   16 envs, n_steps 256, batch 512, lr 1e-3, VecNormalize: 2576 / 2576; the same with gamma 0.98 and gSDE
#   (state-dependent exploration, resampled every 4 steps): 996 / 928, 980 reached at 340k steps and 136 s.
PPO_OPTIONS = dict(n_steps=256, batch_size=512, learning_rate=1e-3, gamma=0.98, gae_lambda=0.95, ent_coef=0.0,
                   use_sde=True, sde_sample_freq=4)
SCALE = {"P2": np.array([math.pi, 4.0]), "P3": np.array([1.0, 3.0, 3.0, 5.0])}
ANGLE = {"P2": 0, "P3": 2}


def _spec(name):
    if name == "P2":
        return problems.PENDULUM, problems.pendulum_step, problems.pendulum_x0
    return problems.CARTPOLE, problems.cartpole_step, problems.cartpole_x0


def features(name, x, t, T):
    """The observation of :func:`trajopt.rl.tasks.task`: ``x / scale``, sin and cos of the angle, ``t / T``."""
    a = x[..., ANGLE[name]]
    return np.concatenate([x / SCALE[name], np.sin(a)[..., None], np.cos(a)[..., None],
                           np.broadcast_to(np.asarray(t / T, float), x.shape[:-1])[..., None]], -1).astype(np.float32)


def make_env(name="P3", reward_scale=0.01, wide_starts=0.0):
    """The Gymnasium environment class of a task; ``wide_starts`` as in :func:`trajopt.rl.tasks.task`."""
    import gymnasium as gym
    p, step, _ = _spec(name)

    class Task(gym.Env):
        metadata = {}

        def __init__(self):
            n = len(SCALE[name])
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n + 3,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
            self.Q, self.R = np.asarray(p["Q"]), np.atleast_2d(p["R"])

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            if name == "P3":
                angle = self.np_random.uniform(-math.pi, math.pi) if self.np_random.random() < wide_starts else math.pi
                self.x = np.array([0.0, 0.0, angle, 0.0]) + 0.05 * self.np_random.standard_normal(4)
            else:
                self.x = np.array([self.np_random.uniform(-math.pi, math.pi), self.np_random.uniform(-1, 1)])
            self.t = 0
            return features(name, self.x, 0, p["T"]), {}

        def step(self, action):
            u = np.clip(np.asarray(action, float), -1, 1) * p["u_max"]
            cost = self.x @ self.Q @ self.x + u @ self.R @ u
            self.x = step(self.x, u)
            self.t += 1
            done = self.t >= p["T"]
            return features(name, self.x, self.t, p["T"]), -reward_scale * float(cost), done, False, {}

    return Task


def score(model, name="P3", normalize=None) -> float:
    """Mean ``trajectory_cost`` of the deterministic policy from ``*_x0(32, seed=0)``; ``normalize``: the
    training ``VecNormalize`` whose observation statistics the policy expects, if any."""
    p, step, starts = _spec(name)
    x0 = starts(32, seed=0)
    X, U = x0.copy(), []
    for t in range(p["T"]):
        obs = features(name, X, t, p["T"])
        a, _ = model.predict(obs if normalize is None else normalize.normalize_obs(obs), deterministic=True)
        u = np.clip(a, -1, 1) * p["u_max"]
        U.append(u)
        X = step(X, u)
    U = np.stack(U, 1)
    return float(np.mean([problems.trajectory_cost(step, x0[b], U[b], p["Q"], p["R"]) for b in range(len(x0))]))


def train_ppo(name="P3", seconds=900.0, seed=0, eval_every=20_000, n_envs=16, wide_starts=0.0, normalize=True,
              **options):
    """PPO for ``seconds`` of wall time (evaluations excluded); returns ``[(time, env_steps, cost), ...]``.
    ``normalize``: running normalization of observations and rewards (``VecNormalize``)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    env = make_vec_env(make_env(name, wide_starts=wide_starts), n_envs=n_envs, seed=seed)
    if normalize:
        from stable_baselines3.common.vec_env import VecNormalize
        env = VecNormalize(env, gamma=options.get("gamma", PPO_OPTIONS["gamma"]))
    defaults = dict(PPO_OPTIONS, policy_kwargs=dict(net_arch=[64, 64]), verbose=0, seed=seed, device="cpu")
    defaults.update(options)
    model = PPO("MlpPolicy", env, **defaults)
    points = []

    class Clock(BaseCallback):
        def __init__(self):
            super().__init__()
            self.spent, self.tick, self.next = 0.0, time.perf_counter(), eval_every

        def _on_step(self):
            if self.num_timesteps >= self.next:
                self.spent += time.perf_counter() - self.tick
                points.append((self.spent, self.num_timesteps,
                               score(self.model, name, env if normalize else None)))
                self.next += eval_every
                self.tick = time.perf_counter()
            return self.spent + time.perf_counter() - self.tick < seconds

    model.learn(total_timesteps=10 ** 9, callback=Clock())
    return points


def run(repeat: int = 1, quick: bool = False, seconds: float = 900.0, seeds=(0, 1, 2)) -> str:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return "PPO baseline: stable-baselines3 is not installed (pip install stable-baselines3)"
    from trajopt.rl.tasks import P3_STARTS
    if quick:
        seconds, seeds = 60.0, (0,)
    lines = [f"PPO (stable-baselines3) on P3, {seconds:.0f} s per seed", "",
             "| seed | steps to 980 | time to 980 | cost at end | best |", "| --- | --- | --- | --- | --- |"]
    for seed in seeds:
        points = train_ppo("P3", seconds, seed, **P3_STARTS)
        reach = next(((s, t) for t, s, c in points if c <= 980), None)
        lines.append(f"| {seed} | " + (f"{reach[0]:,} | {reach[1]:.0f} s" if reach else "not reached | -")
                     + f" | {points[-1][2]:.1f} | {min(c for *_, c in points):.1f} |")
    return "\n".join(lines)
