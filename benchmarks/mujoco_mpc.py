"""Receding-horizon control on Gymnasium's MuJoCo tasks (v5), on the real environments (their own ``step``),
planning on the MuJoCo model with the negative reward as the cost (:mod:`trajopt.rl.mujoco_tasks`).

Each task runs ``seeds`` episodes (seeds ``0 .. seeds-1``) of up to ``steps`` steps under one batched
:class:`trajopt.MPC` (all episodes at once): iLQR (box-constrained, warm-started from the shifted plan, a few
iterations per control step) or MPPI (sampling, one or a few iterations per step). An episode that Gymnasium
terminates stops there (its return is what it has collected). Reported per task and planner: the mean and
spread of the returns, the number of episodes that survived to the end, and the wall time per control step
(all episodes of the batch at once, and divided by the number of episodes).

Run: ``python -m benchmarks mujoco-mpc`` (this module's :func:`run`), or ``python -m benchmarks.mujoco_mpc
--task InvertedDoublePendulum-v5 --planner ilqr --seeds 10 --steps 1000``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import trajopt
from trajopt.rl.mujoco_tasks import mujoco_task

# Planner settings per task: the task's options (cost form, horizon) and the MPC's.
ILQR = {
    "InvertedPendulum-v5": dict(task=dict(exact=True, horizon=20, margin=0.15, cart_weight=0.1), max_iter=3,
                                first_max_iter=20),
    # the planning terms (cart position and speed, link angles) keep the cart off the rail's ends and give
    # Gauss-Newton curvature at the upright pose; the positions are those of the current state (exact=False)
    "InvertedDoublePendulum-v5": dict(task=dict(exact=False, horizon=20, barrier=100.0, cart_weight=1.0,
                                                angle_weight=10.0), max_iter=3, first_max_iter=30),
    "HalfCheetah-v5": dict(task=dict(exact=False, horizon=30), max_iter=2, first_max_iter=10),
    "Hopper-v5": dict(task=dict(exact=False, horizon=40), max_iter=2, first_max_iter=10),
}
MPPI = {
    "InvertedPendulum-v5": dict(task=dict(exact=False, horizon=20), samples=128, noise_std=0.5, temperature=0.1),
    "InvertedDoublePendulum-v5": dict(task=dict(exact=False, horizon=20), samples=256, noise_std=0.3,
                                      temperature=0.1),
    "HalfCheetah-v5": dict(task=dict(exact=False, horizon=30), samples=256, noise_std=0.3, temperature=0.1),
    "Hopper-v5": dict(task=dict(exact=False, horizon=40), samples=256, noise_std=0.3, temperature=0.1),
}
# stable-baselines3's SAC trained here (`python -m benchmarks shac-mujoco`: 300 s on one thread, 3 seeds, its mean
# return and training time); rl-baselines3-zoo's published v5 figures were not found in the installed packages' docs.
SB3_SAC = {"HalfCheetah-v5": "-6.0 after 300 s of training (3 seeds)"}


def controller(env_id: str, planner: str = "ilqr", seed: int = 0, **overrides):
    """``(task, mpc)``: the :class:`~trajopt.rl.mujoco_tasks.MuJoCoTask` and its :class:`trajopt.MPC` with
    :data:`ILQR`'s or :data:`MPPI`'s settings (``overrides`` replace them; ``task=dict(...)`` the task's)."""
    settings = dict((ILQR if planner == "ilqr" else MPPI)[env_id])
    task_options = dict(settings.pop("task"))
    task_options.update(overrides.pop("task", {}))
    settings.update(overrides)
    task = mujoco_task(env_id, **task_options)
    bounds = dict(u_lower=task.u_lower, u_upper=task.u_upper)
    if planner == "ilqr":
        mpc = trajopt.MPC(task.model, task.cost, task.horizon, grad=None, **bounds, **settings)
    else:
        mpc = trajopt.MPC(task.model, task.cost, task.horizon, solver=trajopt.mppi,
                          max_iter=settings.pop("max_iter", 1),
                          generator=torch.Generator().manual_seed(seed), rollout_plan=False, **bounds, **settings)
    return task, mpc


def episodes(env_id: str, planner: str = "ilqr", seeds: int = 5, steps: int | None = None, progress: bool = True,
             frames: bool = False, **overrides) -> dict:
    """Run episodes ``0 .. seeds-1`` of ``env_id`` under one batched MPC; returns ``returns (seeds,)``,
    ``survived (seeds,)`` (not terminated), ``lengths``, ``seconds`` (total controller time), ``steps``, the
    settings, and with ``frames`` the states ``(steps + 1, seeds, n)`` of the episodes."""
    from tqdm import tqdm
    task, mpc = controller(env_id, planner, **overrides)
    steps = task.max_steps if steps is None else steps
    envs = [task.make_env() for _ in range(seeds)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    x = torch.stack([task.state(env) for env in envs])
    returns, alive, lengths = np.zeros(seeds), np.ones(seeds, bool), np.zeros(seeds, int)
    history = [x.clone()]
    seconds = 0.0
    for _ in tqdm(range(steps), disable=not progress, desc=f"{env_id} {planner}"):
        t0 = time.perf_counter()
        u, _ = mpc(x)
        seconds += time.perf_counter() - t0
        actions = u.detach().numpy()
        for i, env in enumerate(envs):
            if not alive[i]:
                continue
            _, reward, terminated, truncated, _ = env.step(actions[i])
            returns[i] += reward
            lengths[i] += 1
            if terminated:
                alive[i] = False
        x = torch.stack([task.state(env) for env in envs])
        history.append(x.clone())
        if not alive.any():
            break
    for env in envs:
        env.close()
    out = dict(env_id=env_id, planner=planner, returns=returns, survived=alive, lengths=lengths, seconds=seconds,
               steps=len(history) - 1, seeds=seeds, horizon=task.horizon, max_return=task.max_return,
               threads=torch.get_num_threads())
    if frames:
        out["states"] = torch.stack(history)
    return out


def line(r: dict) -> str:
    R = r["returns"]
    per_step = r["seconds"] / max(r["steps"], 1)
    sac = SB3_SAC.get(r["env_id"])
    return (f"| {r['env_id']} | {r['planner']} | {r['seeds']} x {r['steps']} | {R.mean():.1f} +- {R.std():.1f} "
            f"(min {R.min():.1f}, max {R.max():.1f}) | {int(r['survived'].sum())}/{r['seeds']} | "
            f"{1e3 * per_step:.0f} ms ({1e3 * per_step / r['seeds']:.0f} ms per episode) | "
            f"{'' if sac is None else sac} |")


HEADER = ("| task | planner | seeds x steps | return mean +- std | survived | time per control step (batch) | "
          "SB3 SAC (measured here) |\n|---|---|---|---|---|---|---|")


def run(repeat: int = 1, quick: bool = True, progress: bool = False) -> str:
    """The suite: ``quick`` (default) runs InvertedDoublePendulum-v5 iLQR 10 x 1000 and HalfCheetah-v5 and
    Hopper-v5 2 seeds x 200 steps per planner; ``quick=False`` 5 seeds x 1000 for those. ``repeat`` is ignored."""
    rows = [episodes("InvertedDoublePendulum-v5", "ilqr", 10, 1000, progress)]
    for env_id in ("HalfCheetah-v5", "Hopper-v5"):
        for planner in ("ilqr", "mppi"):
            rows.append(episodes(env_id, planner, 2 if quick else 5, 200 if quick else 1000, progress))
    return "\n".join([HEADER] + [line(r) for r in rows])


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="InvertedDoublePendulum-v5")
    ap.add_argument("--planner", default="ilqr", choices=["ilqr", "mppi"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    r = episodes(a.task, a.planner, a.seeds, a.steps)
    print(HEADER)
    print(line(r))
    print("returns", np.round(r["returns"], 1).tolist())
