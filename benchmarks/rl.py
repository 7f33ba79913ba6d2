"""Policy learning on the tasks of :mod:`trajopt.rl.tasks`: SHAC (``trajopt.rl``) on P2 (pendulum), P3
(cart-pole), the pusher and the bicycle; an MPC policy trained by SHAC; SHAC inside a learned model.

The tasks, their scores (the deterministic policy run closed loop from 32 fixed starts, the mean cost), SHAC's
setting per task and the reference costs are :mod:`trajopt.rl.tasks`'s; this module measures with them.

``python -m benchmarks shac`` trains SHAC on P3 for 5 minutes per seed (3 seeds) and reports the cost
reached against wall time and environment steps, beside box-constrained iLQR's open-loop optimum.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

import trajopt
from trajopt.rl import SHAC, DiffEnv
from trajopt.rl.tasks import (P3_STARTS, REFERENCES, SHAC_DEFAULTS, TASK_SHAC, angle_features, evaluator, references,
                              score, task)


def train_shac(name: str = "P3", seconds: float = 300.0, seed: int = 0, num_envs: int = 64, progress: bool = False,
               log: str | None = None, env_options: dict | None = None, **options) -> SHAC:
    """SHAC on a task for ``seconds`` of training time (evaluation excluded); options go to :class:`SHAC`,
    ``env_options`` to :func:`task`."""
    t = task(name, num_envs, **{**(P3_STARTS if name == "P3" else {}), **(env_options or {})})
    defaults = dict(SHAC_DEFAULTS, **TASK_SHAC.get(name, {}))
    defaults.update(options)
    shac = SHAC(t["env"], seed=seed, evaluate=evaluator(t), progress=progress, log=log, **defaults)
    shac.train(time_limit=seconds)
    return shac


def curve(shac: SHAC) -> list[tuple[float, int, float]]:
    """``(time, env_steps, eval_cost)`` of the evaluated epochs."""
    return [(r["time"], r["env_steps"], r["eval_cost"]) for r in shac.rows if not math.isnan(r["eval_cost"])]


def run(repeat: int = 1, quick: bool = False, seconds: float = 300.0, seeds=(0, 1, 2)) -> str:
    """SHAC on P3, ``seconds`` per seed (the run's 1500 epochs take about 5 minutes here): the best cost by 1,
    2.5 and 5 minutes, the final one, and the steps and time to reach 980."""
    if quick:
        seconds, seeds = 60.0, (0,)
    marks = [s for s in (60.0, 150.0, 300.0, 900.0) if s <= seconds]
    lines = [f"SHAC on P3 (cart-pole swing-up), {seconds:.0f} s of training per seed, 2 threads; "
             f"box-constrained iLQR's open-loop optimum {REFERENCES['P3'][0][1]}", "",
             "| " + " | ".join(["seed"] + [f"best by {m:.0f} s" for m in marks]
                               + ["final", "epochs", "steps to 980", "time to 980"]) + " |",
             "| --- " * (len(marks) + 5) + "|"]
    for seed in seeds:
        shac = train_shac("P3", seconds, seed)
        points = curve(shac)
        at = [min([c for tt, _, c in points if tt <= m] or [math.nan]) for m in marks]
        reach = next(((s, tt) for tt, s, c in points if c <= 980), None)
        lines.append(f"| {seed} | " + "".join(f"{c:.1f} | " for c in at) + f"{points[-1][2]:.1f} | {shac.epoch} | "
                     + (f"{reach[0]:,} | {reach[1]:.0f} s |" if reach else "not reached | - |"))
    return "\n".join(lines)


def run_tasks(repeat: int = 1, quick: bool = False, seconds: float = 300.0, seed: int = 0) -> str:
    """SHAC on the pendulum, pusher and bicycle tasks (docs/tasks.md), ``seconds`` each, beside the references."""
    if quick:
        seconds = 60.0
    lines = [f"SHAC on the tasks of docs/tasks.md, {seconds:.0f} s of training each, seed {seed}", "",
             "| task | epochs | env steps | best | final | references |", "| --- | --- | --- | --- | --- | --- |"]
    for name in ("P2", "pusher", "bicycle"):
        shac = train_shac(name, seconds, seed)
        points = curve(shac)
        refs = "; ".join(f"{label} {value}" for label, value, _ in references(name)) or "-"
        lines.append(f"| {name} | {shac.epoch} | {points[-1][1]:,} | {min(c for *_, c in points):.2f} | "
                     f"{points[-1][2]:.2f} | {refs} |")
    return "\n".join(lines)


class _TerminalValue(torch.nn.Module):
    """A smooth (SiLU) MLP of the pendulum's angle features, ``x (B, 2) -> (B,)``, starting at exactly zero;
    its output is multiplied by ``gain`` (the cost's units: tens to hundreds over a swing-up)."""

    def __init__(self, scale, hidden=32, gain=100.0, dtype=torch.float32):
        super().__init__()
        self.gain = gain
        from dynamics.learned.models import mlp
        self.net = mlp(4, 1, (hidden, hidden), torch.nn.SiLU).to(dtype)
        self.register_buffer("scale", scale)
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()

    def forward(self, x):
        return self.gain * self.net(angle_features(x, 0, self.scale)).squeeze(-1)


# The sampling MPC inside a policy: one MPPI iteration of 64 samples per control step, warm-started.
MPPI_POLICY = dict(samples=64, temperature=1.0, noise_std=1.0)


def mpc_policy(horizon: int = 10, seconds: float = 300.0, seed: int = 0, num_envs: int = 32, max_iter: int = 3,
               grad: str = "unroll", window: int = 16, noise_std: float = 0.2, env_options: dict | None = None,
               progress: bool = False, solver: str = "ilqr", **options):
    """SHAC training of an :class:`~trajopt.rl.MPCPolicy` on P2: a ``horizon``-step MPC on the pendulum model,
    with P2's stage weights (learned in log space) and a learned terminal value (zero at first), so the policy
    starts as the hand-set short-horizon MPC. ``solver`` is ``"ilqr"`` (box-constrained iLQR, ``max_iter``
    iterations per step, gradient route ``grad``) or ``"mppi"`` (:func:`trajopt.mppi` with
    :data:`MPPI_POLICY`; its gradient goes through the samples' weights). ``window`` is SHAC's ``horizon``,
    ``noise_std`` the exploration noise in torque units. Returns ``(shac, cost before, cost after)``, each cost
    the mean of :func:`mean_score`'s three evaluations (MPPI's are random)."""
    from trajopt.rl import LearnedCost, MPCPolicy
    if solver == "ilqr":
        solve = dict(max_iter=max_iter, first_max_iter=20, grad=grad)
    elif solver == "mppi":
        # a partial: MPPI's noise_std is not the policy's (exploration) noise_std
        solve = dict(solver=functools.partial(trajopt.mppi, rollout_plan=False, **MPPI_POLICY), max_iter=1)
    else:
        raise ValueError(f"mpc_policy: solver must be 'ilqr' or 'mppi', got {solver!r}")
    t = task("P2", num_envs, **(env_options or {}))
    dtype = t["x0"].dtype
    scale = torch.tensor([math.pi, 4.0], dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cost = LearnedCost(2 * torch.tensor(np.diag(t["Q"]), dtype=dtype), torch.tensor([2 * t["R"]], dtype=dtype),
                           terminal=_TerminalValue(scale, dtype=dtype))
    policy = MPCPolicy(t["model"], cost, horizon, -t["u_max"], t["u_max"], to_state=lambda obs: obs[..., :2] * scale,
                       noise_std=noise_std, **solve)
    defaults = dict(SHAC_DEFAULTS, horizon=window, eval_every=10)
    defaults.update(options)
    shac = SHAC(t["env"], policy, seed=seed, evaluate=evaluator(t), progress=progress, **defaults)
    before = mean_score(t, shac)
    shac.train(time_limit=seconds)
    return shac, before, mean_score(t, shac)


def mean_score(t: dict, shac: SHAC, evaluations: int = 3) -> float:
    """The mean closed-loop score of ``evaluations`` runs of the deterministic policy (equal runs unless the
    policy samples, as an MPPI MPC does)."""
    return float(np.mean([evaluator(t)(shac) for _ in range(evaluations)]))


def learned_model(rounds: int = 4, transitions_per_round: int = 5000, seconds_per_round: float = 60.0, seed: int = 0,
                  num_envs: int = 64, progress: bool = False, **options):
    """SHAC on P2 inside a learned model (a probabilistic ensemble, mean prediction), with
    ``rounds * transitions_per_round`` real transitions; returns ``(shac, history)`` with the real closed-loop
    cost after each round."""
    from dynamics.learned import ProbabilisticEnsemble
    from trajopt.rl import train_in_learned_model
    real = task("P2", num_envs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ProbabilisticEnsemble(2, 1, members=5, hidden=(64, 64)).to(real["x0"].dtype)
    imagined = task("P2", num_envs)
    env = real["env"]
    imagined_env = DiffEnv(model, imagined["cost"], reset=env._reset, episode_length=env.episode_length,
                           num_envs=num_envs, u_lower=-real["u_max"], u_upper=real["u_max"], observe=env.observe_fn,
                           finite_horizon=True, time_feature=True)
    defaults = dict(SHAC_DEFAULTS, eval_every=10 ** 9, lr_schedule="constant")
    defaults.update(options)
    shac = SHAC(imagined_env, seed=seed, progress=progress, **defaults)

    def on_real(s):
        _, U = s.closed_loop(real["x0"], real["T"], dynamics=real["model"])
        return score(real, U)

    history = train_in_learned_model(shac, env, rounds=rounds, transitions_per_round=transitions_per_round,
                                     epochs_per_round=10 ** 9, seconds_per_round=seconds_per_round,
                                     fit_options=dict(epochs=60), evaluate=on_real, seed=seed, progress=progress)
    return shac, history


def run_mpc(repeat: int = 1, quick: bool = False, seconds: float = 300.0, horizon: int = 5,
            seeds: tuple[int, ...] = (0, 1, 2)) -> str:
    """MPC policies on P2 before and after SHAC training (the MPPI one on ``seeds``, the iLQR one on the first),
    beside the plain MLP policy after the same time."""
    if quick:
        seconds, seeds = 60.0, seeds[:1]
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)      # noqa: E731
    rows = []
    for solver, runs in (("mppi", seeds), ("ilqr", seeds[:1])):
        for seed in runs:
            # the MPPI policy's learning rate decays over about its 300 s (1500 epochs of ~0.2 s)
            shac, before, after = mpc_policy(horizon=horizon, seconds=seconds, seed=seed, solver=solver,
                                             **({"epochs": 1500} if solver == "mppi" else {}))
            rows.append(f"| {horizon}-step {solver.upper()} MPC, learned weights and terminal value | {seed} | "
                        f"{count(shac.actor)} | {before:.1f} | {after:.1f} | {100 * (after / before - 1):+.1f}% |")
    mlp = train_shac("P2", seconds)
    best_mlp = min(c for *_, c in curve(mlp))
    rows.append(f"| MLP (64, 64) | 0 | {count(mlp.actor)} | - | {curve(mlp)[-1][2]:.1f} (best {best_mlp:.1f}) | - |")
    return "\n".join([
        f"SHAC on P2 (32 starts pendulum_x0(32, seed=0)), {seconds:.0f} s of training each; MPC costs are means "
        "of 3 closed-loop evaluations", "",
        "| policy | seed | parameters | cost before | cost after | change |", "| --- | --- | --- | --- | --- | --- |",
        *rows])


def run_learned(repeat: int = 1, quick: bool = False, rounds: int = 4, transitions_per_round: int = 5000,
                seconds_per_round: float = 60.0) -> str:
    """SHAC in a learned ensemble against SHAC on the true pendulum, on the true pendulum's cost."""
    if quick:
        rounds, seconds_per_round = 2, 30.0
    shac, history = learned_model(rounds, transitions_per_round, seconds_per_round)
    true = train_shac("P2", rounds * seconds_per_round)
    reference = curve(true)[-1][2]
    lines = [f"SHAC on P2 inside a learned ensemble, {seconds_per_round:.0f} s of training per round; SHAC on the "
             f"true model for the same total time ends at {reference:.1f}", "",
             "| round | real transitions | model val loss | true cost | vs true-model SHAC |",
             "| --- | --- | --- | --- | --- |"]
    for h in history:
        lines.append(f"| {h['round']} | {h['real_transitions']:,} | {h['model_val_loss']:.2f} | {h['eval_cost']:.1f} | "
                     f"{100 * (h['eval_cost'] / reference - 1):+.1f}% |")
    return "\n".join(lines)
