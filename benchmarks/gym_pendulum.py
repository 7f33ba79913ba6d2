"""Closed-loop MPC on Gymnasium's ``Pendulum-v1``: its own step, torque clip, speed clip and angle wrapping.

``episodes`` environments (seeds ``0 .. episodes-1``) run ``steps`` steps each. The controller is
:class:`trajopt.MPC` on :class:`dynamics.Pendulum` (Pendulum-v1's physics without its speed clip) with the
environment's reward as the cost (``theta^2 + 0.1 theta_dot^2 + 0.001 u^2``, ``theta`` wrapped to
``(-pi, pi]`` from the observation), one batch for all episodes. The first solve of each episode starts from
the swing-up recipe's pumping guesses (:func:`trajopt.multistart`); later ones warm-start from the shifted
plan under a fixed iteration budget. Reported: the mean, spread and worst of the episode returns, against
rl-baselines3-zoo's trained agents (TD3 -151.9, SAC -157.0, PPO -172.2), and the time per control step.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

import dynamics
import trajopt

ZOO = {"TD3": -151.9, "SAC": -157.0, "PPO": -172.2}


def pumping_guesses(T: int, dt: float = 0.05, u_max: float = 2.0, periods=(1.2, 1.6, 2.0), cycles=(1, 2)):
    """Zero, and ``u_max sin(2 pi t / period)`` of either sign cut after ``cycles`` periods: ``(K, T, 1)``."""
    t = torch.arange(T, dtype=torch.float64) * dt
    guesses = [torch.zeros(T, dtype=torch.float64)]
    for period in periods:
        for sign in (1.0, -1.0):
            for c in cycles:
                guesses.append(torch.where(t < c * period, sign * u_max * torch.sin(2 * math.pi * t / period), 0.0))
    return torch.stack(guesses).unsqueeze(-1)


def controller(horizon: int = 40, max_iter: int = 5) -> trajopt.MPC:
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], dtype=torch.float64)),
                                              torch.tensor([[0.002]], dtype=torch.float64))
    return trajopt.MPC(model, cost, horizon, u_lower=-2.0, u_upper=2.0, max_iter=max_iter, grad=None)


def states(obs: np.ndarray) -> torch.Tensor:
    """``(theta, theta_dot)`` with ``theta = atan2(sin, cos)`` in ``(-pi, pi]`` from observations ``(E, 3)``."""
    return torch.tensor(np.stack([np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], -1), dtype=torch.float64)


def episodes(count: int = 100, steps: int = 200, horizon: int = 40, max_iter: int = 5, first_iter: int = 100,
             progress: bool = True) -> dict:
    import gymnasium
    from tqdm import tqdm

    envs = [gymnasium.make("Pendulum-v1") for _ in range(count)]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    mpc = controller(horizon, max_iter)
    returns = np.zeros(count)
    t0 = time.perf_counter()
    for step in tqdm(range(steps), disable=not progress, desc="Pendulum-v1 MPC"):
        x = states(obs)
        if step == 0:
            guess = trajopt.multistart(mpc.dynamics, mpc.cost, x, pumping_guesses(horizon), screen_iter=20,
                                       max_iter=first_iter, grad=None, u_lower=-2.0, u_upper=2.0)
            u, _ = mpc(x, U_init=guess.U)
        else:
            u, _ = mpc(x)
        actions = u.detach().numpy()
        for i, env in enumerate(envs):
            obs[i], reward, terminated, truncated, _ = env.step(actions[i])
            returns[i] += reward
    seconds = time.perf_counter() - t0
    return dict(returns=returns, seconds=seconds, steps=steps, count=count, horizon=horizon, max_iter=max_iter)


def run(repeat: int = 1, quick: bool = False, progress: bool = True) -> str:
    """``repeat`` is ignored; ``quick`` runs 10 episodes instead of 100."""
    r = episodes(10 if quick else 100, progress=progress)
    R = r["returns"]
    zoo = ", ".join(f"{k} {v}" for k, v in ZOO.items())
    return "\n".join([
        f"Closed-loop MPC on gymnasium Pendulum-v1: {r['count']} episodes (seeds 0..{r['count'] - 1}) of {r['steps']} "
        f"steps, horizon {r['horizon']}, {r['max_iter']} iLQR iterations per step (warm start), one batch",
        f"mean return {R.mean():.1f} (std {R.std():.1f}, worst {R.min():.1f}, best {R.max():.1f}); "
        f"rl-baselines3-zoo agents: {zoo}",
        f"time per control step (all {r['count']} episodes at once): {1e3 * r['seconds'] / r['steps']:.1f} ms",
    ])
