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


def report(results: list[dict]) -> str:
    first = results[0]
    lines = [f"PETS ({first['solver'].upper()}, {first['propagation']}) on gymnasium Pendulum-v1 from observations: "
             f"ensemble {MODEL}, planner {PLANNER}, fit {FIT}"]
    for r in results:
        curve = ", ".join(f"{int(row['env_steps'])}: {row['return_mean']:.0f}" for row in r["rows"])
        R = np.asarray(r["returns"])
        lines += [f"seed {r['seed']}: learning curve (env steps: return) {curve}",
                  f"  {len(R)} evaluation episodes (seeds 0..{len(R) - 1}, one batch): mean {R.mean():.1f} "
                  f"(std {R.std():.1f}, worst {R.min():.1f}, best {R.max():.1f}) after {r['env_steps']} env steps; "
                  f"training {r['train_seconds']:.0f} s, evaluation {r['eval_seconds']:.0f} s"]
    if len(results) > 1:
        means = [np.mean(r["returns"]) for r in results]
        lines.append(f"over {len(results)} seeds: mean {np.mean(means):.1f} (std {np.std(means):.1f})")
    lines.append("rl-baselines3-zoo agents: " + ", ".join(f"{k} {v}" for k, v in ZOO.items()))
    return "\n".join(lines)


def run(repeat: int = 1, quick: bool = False, progress: bool = True) -> str:
    """``repeat`` is ignored (seeds :data:`SEEDS`); ``quick`` trains 1,000 steps and evaluates 10 episodes."""
    steps, episodes = (1000, 10) if quick else (ENV_STEPS, EPISODES)
    return report([learn_and_evaluate(seed, steps, episodes, progress=progress) for seed in SEEDS])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mbrl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=ENV_STEPS)
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--propagation", default="random", choices=ProbabilisticEnsemble.PROPAGATIONS)
    parser.add_argument("--solver", default="cem", choices=("cem", "mppi"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the CSV log, the checkpoint and the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    print(report([learn_and_evaluate(args.seed, args.steps, args.episodes, propagation=args.propagation,
                                     solver=args.solver, out=args.out)]))


if __name__ == "__main__":
    main()
