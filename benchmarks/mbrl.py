"""Model-based RL on Gymnasium's ``Pendulum-v1``: PETS (Chua et al. 2018) through :class:`trajopt.rl.ModelBasedAgent`.

The agent learns on the environment's own ``step`` from its observation ``(cos theta, sin theta, theta_dot)``:
one episode (200 steps) of uniform random torques, then episodes planned by PETS, refitting the ensemble after
every episode, up to ``env_steps`` environment steps in all. The model is a
:class:`dynamics.learned.ProbabilisticEnsemble` (:data:`MODEL`; normalization, bootstrap members, early
stopping: :data:`FIT`), the planner :class:`trajopt.rl.PETS` (:data:`PLANNER`): CEM in receding horizon on the
known cost (:class:`trajopt.rl.PendulumV1Cost`, the reward negated), ``particles`` per candidate, TS-1 or
TS-infinity propagation. Then the learned agent runs the evaluation protocol of :mod:`benchmarks.gym_pendulum`:
100 episodes with seeds ``0 .. 99``, all planned as one batch. Reported: the learning curve (return of each
training episode against environment steps), the evaluation's mean, spread and worst return against
rl-baselines3-zoo's trained model-free agents (TD3 -151.9, SAC -157.0, PPO -172.2), and the wall time of each
phase. Measured (docs/rl.md): -144.7, -145.9 and -148.3 on seeds 0, 1, 2 after 5,000 steps; about 15 minutes of
training and 8 of evaluation per seed on one thread of a shared machine.

``python -m benchmarks.mbrl --seed 0 --out DIR`` runs one seed with a CSV log and a checkpoint in ``DIR`` (a
killed run resumes from it); ``run`` is the suite of ``python -m benchmarks mbrl``.

``--method mbpo`` trains :class:`trajopt.rl.MBPO` (stable-baselines3's SAC on branched rollouts of the ensemble,
:data:`MBPO_OPTIONS`) in the same agent loop and evaluates it by the same protocol (its mean action);
``--method sac`` trains stable-baselines3's SAC alone (:func:`benchmarks.sb3.train`, rl-baselines3-zoo's settings)
for the same steps and evaluates it on the same 100 seeds. ``--env InvertedPendulum-v5`` (MBPO and SAC) uses the
task's known reward, 1 per step (:class:`InvertedPendulumCost`), and its known termination,
``|qpos[1]| > 0.2`` on the observation ``[qpos, qvel]`` (:func:`inverted_pendulum_done`). ``--seconds`` caps the
training time (MBPO: whole iterations; the last may pass it). Both need stable-baselines3 (the ``rl`` extra).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import benchmarks  # noqa: F401  (OMP_WAIT_POLICY before torch's first parallel region)
from dynamics.learned import ProbabilisticEnsemble
from trajopt import Cost
from trajopt.rl.agent import PETS, ModelBasedAgent, PendulumV1Cost

ZOO = {"TD3": -151.9, "SAC": -157.0, "PPO": -172.2}
ENV_STEPS, EPISODES, SEEDS = 5000, 100, (0,)
MODEL = dict(members=5, hidden=(64, 64))
FIT = dict(epochs=60, batch_size=64, lr=1e-3, patience=10, val_fraction=0.1)
PLANNER = dict(horizon=20, particles=5, samples=150, iterations=2, first_iterations=5, elites=15, sample=True)


def make_agent(seed: int = 0, propagation: str = "random", solver: str = "cem", out: str | None = None,
               progress: bool = True, **planner) -> ModelBasedAgent:
    """The PETS agent of this benchmark (``propagation``: ``"random"`` TS-1 or ``"random_every_step"``
    TS-infinity; ``solver``: ``"cem"`` or ``"mppi"``; ``planner`` overrides :data:`PLANNER`), logging and
    checkpointing to ``out/pets_<solver>_<propagation>_seed<seed>.{csv,pt}`` when ``out`` is given."""
    torch.manual_seed(seed)                        # the ensemble's initial weights
    model = ProbabilisticEnsemble(3, 1, **MODEL)
    options = {**PLANNER, **planner}
    if solver == "mppi":
        options.pop("elites")
    pets = PETS(PendulumV1Cost(), options.pop("horizon"), -2.0, 2.0, solver=solver, propagation=propagation,
                **options)
    stem = None if out is None else os.path.join(out, f"pets_{solver}_{propagation}_seed{seed}")
    return ModelBasedAgent("Pendulum-v1", model, pets, seed=seed, fit_options=FIT, progress=progress,
                           log=None if stem is None else stem + ".csv",
                           checkpoint=None if stem is None else stem + ".pt")


def learn_and_evaluate(seed: int = 0, env_steps: int = ENV_STEPS, episodes: int = EPISODES, *,
                       propagation: str = "random", solver: str = "cem", out: str | None = None,
                       progress: bool = True, **planner) -> dict:
    """Train one agent to ``env_steps`` (resuming from ``out``'s checkpoint if there is one), then evaluate it on
    ``episodes`` seeded episodes; returns the log ``rows``, the evaluation ``returns`` and the seconds of both."""
    agent = make_agent(seed, propagation, solver, out, progress, **planner)
    rows = agent.train(env_steps)
    t0 = time.perf_counter()
    returns = agent.evaluate(episodes, seed=0)
    seconds = time.perf_counter() - t0
    result = dict(seed=seed, propagation=propagation, solver=solver, rows=rows, returns=returns.tolist(),
                  train_seconds=rows[-1]["time"], eval_seconds=seconds, env_steps=agent.env_steps)
    if out is not None:
        with open(os.path.join(out, f"pets_{solver}_{propagation}_seed{seed}.json"), "w") as f:
            json.dump(result, f, indent=1)
    return result


def report(results: list[dict], title: str | None = None, phases=None) -> str:
    """The learning curves and the evaluation of ``results`` (one dict per seed: ``rows``, ``returns``,
    ``env_steps``, ``train_seconds``, ``eval_seconds``) under a ``title`` line (default: PETS's settings);
    ``phases(r)``: extra words on the training time of one result."""
    first = results[0]
    title = title or (f"PETS ({first['solver'].upper()}, {first['propagation']}) on gymnasium Pendulum-v1 from "
                      f"observations: ensemble {MODEL}, planner {PLANNER}, fit {FIT}")
    lines = [title]
    for r in results:
        curve = ", ".join(f"{int(row['env_steps'])}: {row['return_mean']:.0f}" for row in r["rows"])
        R = np.asarray(r["returns"])
        lines += [f"seed {r['seed']}: learning curve (env steps: return) {curve}",
                  f"  {len(R)} evaluation episodes (seeds 0..{len(R) - 1}, one batch): mean {R.mean():.1f} "
                  f"(std {R.std():.1f}, worst {R.min():.1f}, best {R.max():.1f}) after {r['env_steps']} env steps; "
                  f"training {r['train_seconds']:.0f} s{phases(r) if phases else ''}, evaluation "
                  f"{r['eval_seconds']:.0f} s"]
    if len(results) > 1:
        means = [np.mean(r["returns"]) for r in results]
        lines.append(f"over {len(results)} seeds: mean {np.mean(means):.1f} (std {np.std(means):.1f})")
    lines.append("rl-baselines3-zoo agents: " + ", ".join(f"{k} {v}" for k, v in ZOO.items()))
    return "\n".join(lines)


def run(repeat: int = 1, quick: bool = False, progress: bool = True) -> str:
    """``repeat`` is ignored (seeds :data:`SEEDS`); ``quick`` trains 1,000 steps and evaluates 10 episodes."""
    steps, episodes = (1000, 10) if quick else (ENV_STEPS, EPISODES)
    return report([learn_and_evaluate(seed, steps, episodes, progress=progress) for seed in SEEDS])


# ---------------------------------------------------------------------------------------------- MBPO and SAC
class InvertedPendulumCost(Cost):
    """Gymnasium ``InvertedPendulum-v5``'s reward negated, as known to the agent: -1 per step (the environment gives
    1 per step that does not terminate, 0 on the terminating one; :func:`inverted_pendulum_done` ends the rollouts).
    ``x (..., 4)``, ``u (..., 1)`` give ``(...)``."""

    def stage(self, x, u, t=None):
        return -torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)


def inverted_pendulum_done(x_next):
    """``InvertedPendulum-v5``'s termination on its observation ``[qpos (2), qvel (2)]``: the pole's angle
    ``|qpos[1]| > 0.2`` or a non-finite observation; ``(B, 4) -> bool (B,)``."""
    return (x_next[..., 1].abs() > 0.2) | ~torch.isfinite(x_next).all(-1)


# per environment: (observation size, action bound, known cost, known termination)
TASKS = {"Pendulum-v1": (3, 2.0, PendulumV1Cost, None),
         "InvertedPendulum-v5": (4, 3.0, InvertedPendulumCost, inverted_pendulum_done)}
MBPO_MODEL = dict(members=5, hidden=(64, 64))
MBPO_FIT = dict(epochs=60, batch_size=64, lr=1e-3, patience=10, val_fraction=0.1)
MBPO_OPTIONS = {"Pendulum-v1": dict(rollout_batch=10_000, rollout_schedule=1, retain_epochs=5, real_ratio=0.05,
                                    updates_per_step=10, batch_size=256, net_arch=(64, 64), learning_rate=1e-3),
                "InvertedPendulum-v5": dict(rollout_batch=10_000, rollout_schedule=1, retain_epochs=5,
                                            real_ratio=0.05, updates_per_step=10, batch_size=256, net_arch=(64, 64),
                                            learning_rate=1e-3)}


def make_mbpo_agent(env_id: str = "Pendulum-v1", seed: int = 0, out: str | None = None, progress: bool = False,
                    **options) -> ModelBasedAgent:
    """The MBPO agent of this benchmark on ``env_id`` (a key of :data:`TASKS`; ``options`` override
    :data:`MBPO_OPTIONS`), logging and checkpointing to ``out/mbpo_<env>_seed<seed>.{csv,pt}`` when ``out`` is
    given."""
    from trajopt.rl import MBPO
    n, bound, cost, done = TASKS[env_id]
    torch.manual_seed(seed)                        # the ensemble's initial weights
    model = ProbabilisticEnsemble(n, 1, **MBPO_MODEL)
    planner = MBPO(cost(), -bound, bound, terminate=done, **{**MBPO_OPTIONS[env_id], **options})
    stem = None if out is None else os.path.join(out, f"mbpo_{env_id}_seed{seed}")
    return ModelBasedAgent(env_id, model, planner, seed=seed, fit_options=MBPO_FIT, progress=progress,
                           log=None if stem is None else stem + ".csv",
                           checkpoint=None if stem is None else stem + ".pt")


def mbpo_learn_and_evaluate(env_id: str = "Pendulum-v1", seed: int = 0, env_steps: int = ENV_STEPS,
                            episodes: int = EPISODES, *, seconds: float | None = None, out: str | None = None,
                            verbose: bool = True, **options) -> dict:
    """Train MBPO to ``env_steps`` or ``seconds`` of training (whole iterations; resuming from ``out``'s checkpoint
    if there is one), then evaluate its mean action on ``episodes`` seeded episodes (seeds 0..)."""
    agent = make_mbpo_agent(env_id, seed, out, **options)
    while agent.env_steps < env_steps and (seconds is None or agent.elapsed < seconds):
        agent.train(agent.env_steps + 1)               # one iteration (the first call resumes a checkpoint)
        if verbose and agent.rows:
            row, stat = agent.rows[-1], (agent.planner.stats or [{}])[-1]
            print(f"  it {row['iteration']}: {row['env_steps']} steps, return {row['return_mean']:.1f}, "
                  f"{row['time']:.0f} s (update {stat.get('seconds', 0):.0f} s, k {stat.get('k')}, model buffer "
                  f"{stat.get('model_buffer')}, critic loss {stat.get('critic_loss', float('nan')):.3g}, "
                  f"entropy coef {stat.get('ent_coef', float('nan')):.3g})", flush=True)
    t0 = time.perf_counter()
    returns = agent.evaluate(episodes, seed=0, progress=False)
    result = dict(method="mbpo", env_id=env_id, seed=seed, rows=agent.rows, returns=returns.tolist(),
                  train_seconds=agent.rows[-1]["time"], eval_seconds=time.perf_counter() - t0,
                  env_steps=agent.env_steps, stats=agent.planner.stats,
                  options={**MBPO_OPTIONS[env_id], **options})
    if out is not None:
        with open(os.path.join(out, f"mbpo_{env_id}_seed{seed}.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result


def sac_learn_and_evaluate(env_id: str = "Pendulum-v1", seed: int = 0, env_steps: int = ENV_STEPS,
                           episodes: int = EPISODES, *, seconds: float | None = None, threads: int = 1) -> dict:
    """stable-baselines3's SAC alone (:func:`benchmarks.sb3.train`) for ``env_steps`` or ``seconds``, then its
    deterministic policy on ``episodes`` seeded episodes (seeds 0..)."""
    from benchmarks import sb3
    r = sb3.train("sac", env_id, seed=seed, env_steps=env_steps, seconds=seconds,
                  eval_every=max(env_steps // 5, 1), eval_episodes=10, threads=threads)
    t0 = time.perf_counter()
    returns = sb3.evaluate(r["model"], env_id, episodes, seed=0)
    return dict(method="sac", env_id=env_id, seed=seed, points=r["points"], returns=returns.tolist(),
                train_seconds=r["train_seconds"], eval_seconds=time.perf_counter() - t0, env_steps=r["env_steps"])


def report_peer(r: dict) -> str:
    """The report of an MBPO or SAC run."""
    R = np.asarray(r["returns"])
    if r["method"] == "mbpo":
        curve = ", ".join(f"{int(row['env_steps'])}: {row['return_mean']:.0f}" for row in r["rows"])
        head = f"MBPO on {r['env_id']}: {r['options']}, ensemble {MBPO_MODEL}, fit {MBPO_FIT}"
        curve = f"learning curve (env steps: training episode return) {curve}"
    else:
        head = f"SAC (stable-baselines3, benchmarks.sb3's settings) on {r['env_id']}"
        curve = "10-episode evaluations (env steps: mean) " + ", ".join(f"{s}: {m:.0f}" for s, _, m, _ in r["points"])
    return "\n".join([head, f"seed {r['seed']}: {curve}",
                      f"  {len(R)} evaluation episodes (seeds 0..{len(R) - 1}): mean {R.mean():.1f} (std {R.std():.1f}, "
                      f"worst {R.min():.1f}, best {R.max():.1f}) after {r['env_steps']} env steps; training "
                      f"{r['train_seconds']:.0f} s, evaluation {r['eval_seconds']:.0f} s"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mbrl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="pets", choices=("pets", "mbpo", "sac"))
    parser.add_argument("--env", default="Pendulum-v1", choices=sorted(TASKS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=ENV_STEPS)
    parser.add_argument("--seconds", type=float, default=None, help="training time cap (mbpo, sac)")
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--propagation", default="random", choices=ProbabilisticEnsemble.PROPAGATIONS)
    parser.add_argument("--solver", default="cem", choices=("cem", "mppi"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the CSV log, the checkpoint and the result")
    args = parser.parse_args(argv)
    if args.method == "pets" and args.env != "Pendulum-v1":
        parser.error("--method pets runs on Pendulum-v1 only (its known cost); use --method mbpo or sac")
    if args.method == "pets" and args.seconds is not None:
        parser.error("--seconds is for --method mbpo and sac")
    torch.set_num_threads(args.threads)
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    if args.method == "mbpo":
        print(report_peer(mbpo_learn_and_evaluate(args.env, args.seed, args.steps, args.episodes,
                                                  seconds=args.seconds, out=args.out)))
    elif args.method == "sac":
        print(report_peer(sac_learn_and_evaluate(args.env, args.seed, args.steps, args.episodes,
                                                 seconds=args.seconds, threads=args.threads)))
    else:
        print(report([learn_and_evaluate(args.seed, args.steps, args.episodes, propagation=args.propagation,
                                         solver=args.solver, out=args.out)]))


if __name__ == "__main__":
    main()
