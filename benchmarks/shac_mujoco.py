"""SHAC through MuJoCo against stable-baselines3's PPO and SAC at the same wall time, on a Gymnasium MuJoCo task.

SHAC (:class:`trajopt.rl.SHAC`) learns in :meth:`trajopt.rl.mujoco_tasks.MuJoCoTask.diff_env`: the task's MuJoCo
model as a differentiable environment (64 copies, Gymnasium's reset distribution, its reward and termination),
with the gradient of each step from MuJoCo's finite-differenced transition Jacobians (forward differences of
step :data:`EPS`). PPO and SAC
(:mod:`benchmarks.sb3`) learn on the Gymnasium environment itself. Every method gets the same training time
(``seconds`` per seed, evaluations excluded) on one thread; every policy is scored the same way: its
deterministic actions on the real environment (the Gymnasium ``step``), ``episodes`` full episodes reset with
seeds 10,000 and up. SHAC's policy sees the model's state without the root position (:meth:`MuJoCoTask.observe`),
the others Gymnasium's observation.

``python -m benchmarks shac-mujoco`` runs the suite (:func:`run`); ``python -m benchmarks.shac_mujoco --method shac
--seed 0 --seconds 600`` one run.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import benchmarks  # noqa: F401  (OMP_WAIT_POLICY before torch's first parallel region)
from benchmarks import sb3

ENV_ID = "HalfCheetah-v5"
# SHAC's settings (Xu et al. 2022's HalfCheetah: horizon 32, 64 environments, learning rates 2e-3, a 400-200-100
# actor). Screened on HalfCheetah-v5, seed 0, 150 s: with their horizon of 32 and the model's Jacobian step (1e-6)
# the actor's gradient norms reached 1e3-2e5 through MuJoCo's contacts and the return fell (0 to -14); a horizon of
# 8, a difference step of 1e-4 (smoothing across contacts) and an actor rate of 1e-3 reached 880-1213; at a constant
# rate the return then swung between 0 and 1841 (seed 0, 300 s): the rates decay linearly to zero over the epochs the
# time budget allows (SHAC's schedule), estimated from the first three.
SHAC_OPTIONS = dict(horizon=8, actor_lr=1e-3, critic_lr=2e-3, gamma=0.99, lam=0.95, hidden=(128, 128),
                    critic_iterations=16, critic_minibatches=2, target_alpha=0.2, grad_norm=1.0, init_std=0.5)
NUM_ENVS, EPS = 64, 1e-4


@torch.no_grad()
def evaluate_shac(shac, task, episodes: int = 5, seed: int = 10_000) -> np.ndarray:
    """Returns ``(episodes,)``: SHAC's deterministic policy on the real environment, reset with seeds ``seed ..``,
    all episodes stepped in turn (one batched policy call per step)."""
    envs = [task.make_env() for _ in range(episodes)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    returns, done = np.zeros(episodes), np.zeros(episodes, bool)
    dtype = shac._obs.dtype
    while not done.all():
        x = torch.stack([task.state(env) for env in envs]).to(dtype)
        u = shac.act(task.observe(x)).clamp(task.u_lower.to(dtype), task.u_upper.to(dtype)).double().numpy()
        for i in np.flatnonzero(~done):
            _, reward, terminated, truncated, _ = envs[i].step(u[i])
            returns[i] += reward
            done[i] = terminated or truncated
    for env in envs:
        env.close()
    return returns


def train_shac(env_id: str = ENV_ID, seconds: float = 300.0, seed: int = 0, eval_every: int = 20,
               episodes: int = 5, threads: int = 1, progress: bool = False, log: bool = False, **options) -> dict:
    """SHAC on ``env_id`` for ``seconds`` of training time (evaluations excluded); returns ``points`` as
    :func:`benchmarks.sb3.train` does: ``[(env_steps, train_seconds, mean_return, std_return), ...]``; ``log``
    prints each epoch's log row."""
    from trajopt.rl import SHAC
    from trajopt.rl.mujoco_tasks import mujoco_task
    torch.set_num_threads(threads)
    healthy = {"barrier": 0.0} if env_id in ("Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5",
                                             "InvertedDoublePendulum-v5") else {}
    task = mujoco_task(env_id, **healthy)
    env = task.diff_env(NUM_ENVS, seed=seed, eps=EPS, dtype=torch.float32)
    points = []

    def score(shac):
        R = evaluate_shac(shac, task, episodes)
        points.append((int(shac.env_steps), float(shac.elapsed), float(R.mean()), float(R.std())))
        return -float(R.mean())

    settings = {**SHAC_OPTIONS, **options}
    shac = SHAC(env, epochs=10 ** 6, seed=seed, evaluate=score, eval_every=eval_every, progress=progress, **settings)
    started = time.perf_counter()
    while shac.elapsed < seconds:           # training time only: SHAC's clock excludes scoring
        row = shac.step()
        if shac.epoch == 3:                 # the linear schedule over the epochs the budget allows, from the first 3
            shac.epochs = max(4, int(seconds / (shac.elapsed / 3)))
        if shac.epoch >= shac.epochs:
            break
        if log:
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if not points or points[-1][0] != shac.env_steps:
        score(shac)
    return dict(algo="shac", env_id=env_id, seed=seed, points=points, env_steps=shac.env_steps,
                train_seconds=shac.elapsed, wall_seconds=time.perf_counter() - started)


def one(method: str, env_id: str, seconds: float, seed: int, episodes: int = 5) -> dict:
    if method == "shac":
        return train_shac(env_id, seconds, seed, episodes=episodes)
    r = sb3.train(method, env_id, seed=seed, seconds=seconds, eval_every=20_000, eval_episodes=episodes)
    r.pop("model")
    return r


def report(results: list[dict], seconds: float) -> str:
    lines = [f"{results[0]['env_id']}: {seconds:.0f} s of training per run (one thread), return of the deterministic "
             "policy on the real environment (5 episodes, seeds 10000..)", "",
             "| method | seed | env steps | return (mean +- std over episodes) | best during training |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        steps, _, mean, std = r["points"][-1]
        best = max(p[2] for p in r["points"])
        lines.append(f"| {r['algo']} | {r['seed']} | {steps:,} | {mean:.1f} +- {std:.1f} | {best:.1f} |")
    by = {}
    for r in results:
        by.setdefault(r["algo"], []).append(r["points"][-1][2])
    lines.append("")
    lines += [f"{algo}: mean over seeds {np.mean(v):.1f} (std {np.std(v):.1f}, {len(v)} seeds)" for algo, v in by.items()]
    return "\n".join(lines)


def run(repeat: int = 1, quick: bool = False, seconds: float = 300.0, seeds=(0, 1, 2)) -> str:
    """SHAC, PPO and SAC on HalfCheetah-v5, ``seconds`` each per seed (``quick``: 60 s, seed 0). ``repeat``
    is ignored."""
    if not sb3.available():
        return "shac-mujoco: stable-baselines3 is not installed (pip install stable-baselines3, the rl extra)"
    if quick:
        seconds, seeds = 60.0, (0,)
    results = [one(method, ENV_ID, seconds, seed) for seed in seeds for method in ("shac", "ppo", "sac")]
    return report(results, seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shac_mujoco", description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="shac", choices=("shac", "ppo", "sac"))
    parser.add_argument("--env", default=ENV_ID)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run the suite's three methods on these")
    parser.add_argument("--methods", nargs="+", default=("shac", "ppo", "sac"), help="with --seeds: these methods")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    if a.seeds is not None:
        results = []
        for seed in a.seeds:
            for method in a.methods:
                results.append(one(method, a.env, a.seconds, seed))
                r = results[-1]
                print(f"{method} seed {seed}: " + ", ".join(f"{p[0]}: {p[2]:.1f}" for p in r["points"]), flush=True)
        print(report(results, a.seconds))
        return
    r = one(a.method, a.env, a.seconds, a.seed)
    for steps, spent, mean, std in r["points"]:
        print(f"{a.method} {a.env} seed {a.seed}: {steps} steps, {spent:.0f} s: {mean:.1f} +- {std:.1f}")
    print(report([r], a.seconds))


if __name__ == "__main__":
    main()
