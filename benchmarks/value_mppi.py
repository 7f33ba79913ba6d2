"""Value-guided MPPI (TD-MPC's idea) on Gymnasium's ``Pendulum-v1`` through :class:`trajopt.rl.ModelBasedAgent`.

The agent and the protocol are :mod:`benchmarks.mbrl`'s PETS benchmark with another planner: one episode (200
steps) of uniform random torques, then episodes planned by :class:`trajopt.rl.value_mppi.ValueGuidedMPPI`
(:data:`PLANNER`), refitting the same ensemble with the same settings (:data:`benchmarks.mbrl.MODEL`,
:data:`benchmarks.mbrl.FIT`) after every episode, up to ``env_steps`` environment steps in all. The planner runs
MPPI over a 10-step horizon of the ensemble (each candidate following one member) on the known cost
(:class:`trajopt.rl.PendulumV1Cost`) closed by a learned critic, with a learned policy's rollouts among the
candidates; after every fit it trains the critic (TD(lambda) on real windows and on model rollouts) and the policy
(through the model), ``gradient_steps`` steps each. Then the evaluation of :mod:`benchmarks.mbrl`: 100 episodes
with seeds ``0 .. 99``, all planned as one batch. Reported: the learning curve (the return of each training episode
against environment steps, with the planner's losses and update times), the evaluation's mean, spread and worst
return against rl-baselines3-zoo's trained model-free agents (TD3 -151.9, SAC -157.0, PPO -172.2), and the wall
time of each phase.

``python -m benchmarks.value_mppi --seed 0 --steps 5000 [--out DIR]`` runs one seed (with a CSV log and a
checkpoint in ``DIR``: a killed run resumes from it); ``run`` is a suite's entry (``python -m benchmarks
value-mppi`` once registered).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from benchmarks import mbrl
from benchmarks.mbrl import FIT, MODEL      # imports benchmarks: OMP_WAIT_POLICY before any parallel region
from dynamics.learned import ProbabilisticEnsemble
from trajopt.rl.agent import ModelBasedAgent, PendulumV1Cost
from trajopt.rl.value_mppi import ValueGuidedMPPI

ENV_STEPS, EPISODES, SEEDS = 5000, 100, (0,)
PLANNER = dict(horizon=10, samples=128, policy_samples=16, iterations=2, first_iterations=4, temperature=1.0,
               gamma=0.98, lam=0.95, reward_scale=0.1, rollout_horizon=5, gradient_steps=100, batch_size=256)


def make_agent(seed: int = 0, out: str | None = None, progress: bool = False, **planner) -> ModelBasedAgent:
    """The agent of this benchmark (``planner`` overrides :data:`PLANNER`), logging and checkpointing to
    ``out/value_mppi_seed<seed>.{csv,pt}`` when ``out`` is given."""
    torch.manual_seed(seed)                        # the ensemble's initial weights (as benchmarks.mbrl's PETS)
    model = ProbabilisticEnsemble(3, 1, **MODEL)
    options = {**PLANNER, **planner}
    vm = ValueGuidedMPPI(PendulumV1Cost(), options.pop("horizon"), -2.0, 2.0, seed=seed, **options)
    stem = None if out is None else os.path.join(out, f"value_mppi_seed{seed}")
    return ModelBasedAgent("Pendulum-v1", model, vm, seed=seed, fit_options=FIT, progress=progress,
                           log=None if stem is None else stem + ".csv",
                           checkpoint=None if stem is None else stem + ".pt")


def learn_and_evaluate(seed: int = 0, env_steps: int = ENV_STEPS, episodes: int = EPISODES, *,
                       out: str | None = None, verbose: bool = True, **planner) -> dict:
    """Train one agent to ``env_steps`` (whole iterations; resuming from ``out``'s checkpoint if there is one), then
    evaluate it on ``episodes`` seeded episodes (seeds 0..); returns the log ``rows``, the planner's ``stats``, the
    evaluation ``returns`` and the seconds of both phases."""
    agent = make_agent(seed, out, **planner)
    while agent.env_steps < env_steps:
        agent.train(agent.env_steps + 1)               # one iteration (the first call resumes a checkpoint)
        if verbose and agent.rows:
            row = agent.rows[-1]
            stat = agent.planner.stats[-1] if agent.planner.stats else {}
            print(f"  it {row['iteration']} ({row['phase']}): {row['env_steps']} steps, return "
                  f"{row['return_mean']:.1f}, {row['time']:.0f} s (update {stat.get('seconds', 0):.1f} s, critic loss "
                  f"{stat.get('critic_loss', float('nan')):.3g}, model return {stat.get('model_return', float('nan')):.3g})",
                  flush=True)
    t0 = time.perf_counter()
    returns = agent.evaluate(episodes, seed=0, progress=False)
    result = dict(seed=seed, rows=agent.rows, stats=agent.planner.stats, returns=returns.tolist(),
                  train_seconds=agent.rows[-1]["time"], eval_seconds=time.perf_counter() - t0,
                  env_steps=agent.env_steps, planner={**PLANNER, **planner})
    if out is not None:
        with open(os.path.join(out, f"value_mppi_seed{seed}.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
    return result


def report(results: list[dict]) -> str:
    return mbrl.report(results, f"Value-guided MPPI on gymnasium Pendulum-v1 from observations: planner "
                                f"{results[0]['planner']}, ensemble {MODEL}, fit {FIT}",
                       lambda r: f" (planner updates {sum(s['seconds'] for s in r['stats']):.0f} s)")


def run(repeat: int = 1, quick: bool = False, verbose: bool = False) -> str:
    """``repeat`` is ignored (seeds :data:`SEEDS`); ``quick`` trains 1,000 steps and evaluates 10 episodes."""
    steps, episodes = (1000, 10) if quick else (ENV_STEPS, EPISODES)
    return report([learn_and_evaluate(seed, steps, episodes, verbose=verbose) for seed in SEEDS])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.value_mppi", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=ENV_STEPS)
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the CSV log, the checkpoint and the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
    print(report([learn_and_evaluate(args.seed, args.steps, args.episodes, out=args.out)]))


if __name__ == "__main__":
    main()
