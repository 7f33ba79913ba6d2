"""Sampling suite: MPPI and CEM against iLQR's optimum on P2 and P4, and MPPI against pytorch_mppi in closed loop.

Open loop (``optimum``): every start of P2 (``pendulum_x0(32)``) and P4 (one start, the origin) from zero
controls (P4: ``trajopt.problems.bicycle``'s forward-velocity guess), 1000 samples per iteration, 30
iterations, one setting for both problems (MPPI: temperature 0.1, noise half the bound, time correlation
0.9; CEM: 20 elites, initial spread the bound); cost in ``problems.py``'s convention, against
box-constrained iLQR (500 iterations at most) from the same guess.

Closed loop (``speed``): P2 from the hanging start, 100 control steps, 1000 samples, horizon 30, one MPPI
iteration per step warm-started from the shifted plan, noise 1, temperature 1, float32 (pytorch_mppi's
usual setting). Ours is :class:`trajopt.MPC` with ``solver=trajopt.mppi`` and ``rollout_plan=False`` (the
plan's first control is all a controller needs), eager and with ``compile=True`` (its first step, which
compiles, is reported apart; one step of 100 does not move the median). pytorch_mppi (``pip install --no-deps pytorch-mppi
arm-pytorch-utilities pytorch-seed``) runs twice: with our model (the same ``dynamics.Pendulum`` step) and
with a hand-written pendulum step, its users' usual way. The closed-loop cost is ``problems.trajectory_cost``
of the 100 applied controls. Batched: the 32 starts ``pendulum_x0(32)`` in one call of ours per step, against
a loop over 32 pytorch_mppi controllers; time per problem and step. The contenders' episodes run in lockstep,
one control step of each in turn, so that all see the same state of a shared machine (``RUNS`` times; the best
median of each is reported).
"""
from __future__ import annotations

import functools
import math
import statistics
import time

import numpy as np
import torch

import dynamics
import trajopt
from benchmarks import ilqr as ilqr_suite
from benchmarks.timing import table
from trajopt.problems import reference as problems

SAMPLES, HORIZON, STEPS = 1000, 30, 100
NOISE, TEMPERATURE = 1.0, 1.0
RUNS = 3
DTYPE = torch.float32


def pytorch_mppi():
    """The ``pytorch_mppi`` module, or None when it is not importable."""
    try:
        import pytorch_mppi
        return pytorch_mppi
    except Exception:  # noqa: BLE001 - any import failure means the column is absent
        return None


def pendulum_model_and_cost(dtype=DTYPE):
    spec = problems.PENDULUM
    model = dynamics.Pendulum().discretize().to(dtype).requires_grad_(False)
    Q, R = torch.tensor(np.diag(np.diag(spec["Q"])), dtype=dtype), torch.tensor([[spec["R"]]], dtype=dtype)
    return model, trajopt.QuadraticCost.from_weights(2 * Q, 2 * R)     # problems.py's cost (no 1/2)


def _hand_step(x, u):
    """Pendulum-v1's step written out by hand (g 10, m 1, l 1, dt 0.05), as a pytorch_mppi user would."""
    th, thd = x[..., 0], x[..., 1]
    thd = thd + (15.0 * torch.sin(th) + 3.0 * u[..., 0]) * 0.05
    return torch.stack([th + thd * 0.05, thd], -1)


def _episode_cost(x0, U):
    spec = problems.PENDULUM
    return problems.trajectory_cost(problems.pendulum_step, x0, U, spec["Q"], spec["R"])


def ours_episode(x0: np.ndarray, seed: int = 0, dtype=DTYPE, compile: bool = False):
    """Closed loop of our MPPI MPC from the starts ``x0 (B, 2)``, one control step per ``next`` (which gives
    that step's time in s); returns the episode costs ``(B,)``. With ``compile``, the first step's time
    includes compiling the samples' rollout. Run it under ``torch.no_grad()``."""
    model, cost = pendulum_model_and_cost(dtype)
    mpc = trajopt.MPC(model, cost, HORIZON, u_lower=-2.0, u_upper=2.0, solver=trajopt.mppi, max_iter=1,
                      samples=SAMPLES, noise_std=NOISE, temperature=TEMPERATURE, rollout_plan=False,
                      generator=torch.Generator().manual_seed(seed), compile=compile)
    x = torch.tensor(x0, dtype=dtype)
    controls = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        u, _ = mpc(x)
        yield time.perf_counter() - t0
        controls.append(u)
        x = model(x, u)
    return _episode_costs(x0, controls)


def theirs_episode(x0: np.ndarray, seed: int = 0, hand: bool = False, dtype=DTYPE):
    """The same closed loop with one pytorch_mppi controller per start, looped over the starts; steps as for
    :func:`ours_episode`. It draws its noise from torch's global generator, seeded here."""
    pm = pytorch_mppi()
    model, cost = pendulum_model_and_cost(dtype)
    step = _hand_step if hand else model
    running = lambda x, u: cost.stage(x, u)      # noqa: E731  (P2's stage cost; no terminal term)
    torch.manual_seed(seed)
    bound = torch.tensor([2.0], dtype=dtype)
    ctrls = [pm.MPPI(step, running, 2, torch.tensor([[NOISE ** 2]], dtype=dtype), num_samples=SAMPLES,
                     horizon=HORIZON, lambda_=TEMPERATURE, u_min=-bound, u_max=bound) for _ in x0]
    x = torch.tensor(x0, dtype=dtype)
    controls = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        u = torch.stack([c.command(xi).reshape(1) for c, xi in zip(ctrls, x)])
        yield time.perf_counter() - t0
        controls.append(u)
        x = model(x, u)
    return _episode_costs(x0, controls)


def _episode_costs(x0, controls):
    U = torch.stack(controls, 1).double().numpy()
    return np.array([_episode_cost(s, u) for s, u in zip(x0, U)])


def lockstep(episodes: dict) -> dict:
    """Run episodes (generators as :func:`ours_episode`) one control step of each in turn, so that every
    contender's step sees the same state of a shared machine; ``{name: (step times, episode costs)}``."""
    times, costs = {name: [] for name in episodes}, {}
    with torch.no_grad():
        while len(costs) < len(episodes):
            for name, episode in episodes.items():
                if name in costs:
                    continue
                try:
                    times[name].append(next(episode))
                except StopIteration as end:
                    costs[name] = end.value
    return {name: (times[name], costs[name]) for name in episodes}


def speed(runs: int = RUNS, batch: int = 32) -> str:
    hanging = np.array([[math.pi, 0.0]])
    starts = problems.pendulum_x0(batch, seed=0)
    contenders = {"ours": ours_episode, "ours, compile=True": functools.partial(ours_episode, compile=True)}
    if pytorch_mppi() is not None:
        contenders["pytorch_mppi (our model)"] = theirs_episode
        contenders["pytorch_mppi (hand-written step)"] = functools.partial(theirs_episode, hand=True)
    lockstep({"warm-up": ours_episode(hanging)})                  # lazy imports, allocator
    rows = []
    for label, x0 in (("B=1, hanging", hanging), (f"B={batch}, pendulum_x0", starts)):
        best = {}
        for _ in range(runs):                                     # steps in lockstep, best median of each
            for name, (times, costs) in lockstep({name: run(x0) for name, run in contenders.items()}).items():
                ms = 1e3 * statistics.median(times)
                first = best[name][2] if name in best else times[0]     # the first run's: compiling, if any
                if name not in best or ms < best[name][0]:
                    best[name] = (ms, costs, first)
        for name, (ms, costs, first) in best.items():
            rows.append(dict(case=label, who=name, ms=ms, per=ms / len(x0), cost=float(costs.mean()),
                             ratio=best[name][0] / best["ours"][0], first=first))
    return ("MPPI closed loop on P2 (1000 samples, horizon 30, 100 steps, float32); time per control step "
            "(median, best of the runs; the contenders' steps in turn), cost of the applied controls (mean over "
            "starts)\n"
            + table(rows, [("case", "case", "s"), ("who", "solver", "s"), ("ms", "ms/step", ".2f"),
                           ("per", "ms/step/problem", ".3f"), ("ratio", "time / ours", ".2f"),
                           ("cost", "closed-loop cost", ".1f"), ("first", "first step (s)", ".2f")]))


def optimum(iterations: int = 30) -> str:
    rows = []
    for name, B, spec in (("P2 pendulum", 32, problems.PENDULUM), ("P4 bicycle", 1, problems.BICYCLE)):
        p = ilqr_suite.PROBLEMS[name](B)
        u_max = torch.as_tensor(spec["u_max"], dtype=torch.float64)
        t0 = time.perf_counter()
        ref = ilqr_suite.solve(p, max_iter=500, grad=None)
        rows.append(dict(problem=name, solver="ilqr", cost=float(ilqr_suite.numpy_costs(p, ref.U).mean()),
                         s=time.perf_counter() - t0))
        ref_cost = rows[-1]["cost"]
        runs = {"mppi": functools.partial(trajopt.mppi, max_iter=iterations, temperature=0.1, correlation=0.9,
                                          noise_std=0.5 * u_max),
                "cem": functools.partial(trajopt.cem, max_iter=iterations, elites=20, noise_std=u_max)}
        for label, solver in runs.items():
            t0 = time.perf_counter()
            sol = solver(p, samples=SAMPLES, generator=torch.Generator().manual_seed(0))
            cost = float(ilqr_suite.numpy_costs(p, sol.U).mean())
            rows.append(dict(problem=name, solver=f"{label} ({iterations} it)", cost=cost,
                             s=time.perf_counter() - t0, gap=cost / ref_cost - 1))
    return ("MPPI and CEM (1000 samples) against box-constrained iLQR from the same guess; mean cost in "
            "problems.py's convention\n"
            + table(rows, [("problem", "problem", "s"), ("solver", "solver", "s"), ("cost", "mean cost", ".2f"),
                           ("gap", "vs iLQR", "+.2%"), ("s", "time (s)", ".2f")]))


def run(repeat: int = 20, quick: bool = False) -> str:
    return optimum() + "\n\n" + speed(runs=1 if quick else RUNS)
