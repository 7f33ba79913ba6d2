"""Model-free peers from stable-baselines3 (SAC, PPO) on Gymnasium environments, for the model-based and MuJoCo
suites: the same environment versions, the same evaluation protocol, a budget in environment steps or in wall time.

Hyperparameters are rl-baselines3-zoo's (``hyperparams/sac.yml``, ``ppo.yml``) where it tunes the task:
:data:`SAC_OPTIONS` (Pendulum-v1: learning rate 1e-3; the MuJoCo tasks: 10,000 random steps first) and
:data:`PPO_OPTIONS`; elsewhere stable-baselines3's defaults. Evaluation (:func:`evaluate`): the deterministic policy
on ``episodes`` fresh environments reset with seeds ``seed .. seed + episodes - 1`` (the protocol of
:mod:`benchmarks.gym_pendulum` and of :meth:`trajopt.rl.ModelBasedAgent.evaluate`), the full episode each.
Evaluation time is not counted in the training time.

``python -m benchmarks.sb3 --algo sac --env Pendulum-v1 --steps 20000 --seed 0`` trains one run and prints its
curve; :func:`train` is the library call the suites use.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import benchmarks  # noqa: F401  (OMP_WAIT_POLICY before torch's first parallel region)

# rl-baselines3-zoo hyperparams/sac.yml: Pendulum-v1 (n_timesteps 20000) and the MuJoCo defaults (learning_starts).
SAC_OPTIONS = {"Pendulum-v1": dict(learning_rate=1e-3),
               **{k: dict(learning_starts=10_000) for k in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Ant-v5")},
               "Swimmer-v5": dict(learning_starts=10_000, gamma=0.9999)}
# rl-baselines3-zoo hyperparams/ppo.yml (Pendulum-v1: 4 environments, gSDE); MuJoCo tasks: stable-baselines3's defaults.
PPO_OPTIONS = {"Pendulum-v1": dict(n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                                   learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4)}


def available() -> bool:
    """Whether stable-baselines3 is importable (``pip install stable-baselines3``, the ``rl`` extra)."""
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate(model, env_id: str, episodes: int = 10, seed: int = 0) -> np.ndarray:
    """Returns ``(episodes,)``: the deterministic policy of a stable-baselines3 ``model`` on ``env_id``, one
    full episode from each reset seed ``seed .. seed + episodes - 1``, all environments stepped in turn."""
    import gymnasium
    envs = [gymnasium.make(env_id) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    returns, done = np.zeros(episodes), np.zeros(episodes, bool)
    while not done.all():
        actions, _ = model.predict(obs, deterministic=True)
        for i in np.flatnonzero(~done):
            obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
            returns[i] += reward
            done[i] = terminated or truncated
    for env in envs:
        env.close()
    return returns


def train(algo: str, env_id: str, *, seed: int = 0, env_steps: int | None = None, seconds: float | None = None,
          eval_every: int = 5000, eval_episodes: int = 10, eval_seed: int = 10_000, threads: int = 1,
          **options) -> dict:
    """Train stable-baselines3's ``algo`` (``"sac"`` or ``"ppo"``) on ``env_id`` until ``env_steps`` environment
    steps or ``seconds`` of training time (whichever comes first; at least one must be given), evaluating every
    ``eval_every`` steps and at the end (:func:`evaluate`, ``eval_episodes`` episodes from reset seed ``eval_seed``,
    not timed). ``options``
    replace :data:`SAC_OPTIONS` / :data:`PPO_OPTIONS` (``n_envs`` for PPO's vectorized environments).

    Returns ``dict(algo, env_id, seed, points=[(env_steps, train_seconds, mean_return, std_return), ...],
    env_steps, train_seconds, model)``."""
    if env_steps is None and seconds is None:
        raise ValueError("train: give env_steps or seconds (the training budget)")
    import torch
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(threads)
    defaults = (SAC_OPTIONS if algo == "sac" else PPO_OPTIONS).get(env_id, {})
    settings = {**defaults, **options}
    n_envs = settings.pop("n_envs", 1)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    cls = {"sac": SAC, "ppo": PPO}[algo]
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    points = []
    limit_steps = env_steps if env_steps is not None else 10 ** 12
    limit_seconds = seconds if seconds is not None else float("inf")

    class Clock(BaseCallback):
        """Training time without evaluations; evaluates every ``eval_every`` steps; stops at the budget."""

        def __init__(self):
            super().__init__()
            self.spent, self.tick, self.next = 0.0, time.perf_counter(), eval_every

        def _score(self):
            self.spent += time.perf_counter() - self.tick
            R = evaluate(self.model, env_id, eval_episodes, seed=eval_seed)
            points.append((int(self.num_timesteps), self.spent, float(R.mean()), float(R.std())))
            self.tick = time.perf_counter()

        def _on_step(self):
            if self.num_timesteps >= self.next:
                self._score()
                self.next += eval_every
            spent = self.spent + time.perf_counter() - self.tick
            return self.num_timesteps < limit_steps and spent < limit_seconds

        def _on_training_end(self):
            if not points or points[-1][0] != self.num_timesteps:
                self._score()

    model.learn(total_timesteps=limit_steps, callback=Clock())
    env.close()
    return dict(algo=algo, env_id=env_id, seed=seed, points=points, env_steps=points[-1][0],
                train_seconds=points[-1][1], model=model)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sb3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--algo", default="sac", choices=("sac", "ppo"))
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=5000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=10_000, help="first reset seed of the evaluations")
    parser.add_argument("--final-episodes", type=int, default=100, help="evaluation episodes at the end (seeds 0..)")
    a = parser.parse_args(argv)
    r = train(a.algo, a.env, seed=a.seed, env_steps=a.steps, seconds=a.seconds, eval_every=a.eval_every,
              eval_episodes=a.eval_episodes, eval_seed=a.eval_seed)
    for steps, spent, mean, std in r["points"]:
        print(f"{a.algo} {a.env} seed {a.seed}: {steps} steps, {spent:.0f} s: {mean:.1f} +- {std:.1f}")
    R = evaluate(r["model"], a.env, a.final_episodes, seed=0)
    print(f"final: {a.final_episodes} episodes (seeds 0..{a.final_episodes - 1}): {R.mean():.1f} +- {R.std():.1f} "
          f"(worst {R.min():.1f}) after {r['env_steps']} steps, {r['train_seconds']:.0f} s of training")


if __name__ == "__main__":
    main()
