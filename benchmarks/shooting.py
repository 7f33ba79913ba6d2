"""Shooting suite: single shooting by gradient against box-constrained iLQR on P2 and P4.

Each problem from iLQR's own guess (P2: zero controls, the first ``STARTS`` of ``pendulum_x0``; P4: the
forward-velocity guess from the origin), as :mod:`trajopt.problems` builds them, solved by iLQR (500 iterations
at most) and by :func:`trajopt.single_shooting` with L-BFGS and projected bounds, L-BFGS with squashed bounds,
and Adam. A nonconvex problem has several local optima and the two methods may reach different ones from the
same guess, so the relative gap to iLQR's cost is reported per problem (how many within 1e-5, how many
cheaper, how many dearer), and again from iLQR's solution perturbed by ``PERTURB`` (the same basin), where
the gap measures how exactly single shooting reaches a given optimum. Costs in
:mod:`trajopt.problems.reference`'s convention (``trajectory_cost``).
"""
from __future__ import annotations

import time

import numpy as np
import torch

import trajopt
from benchmarks.timing import table
from trajopt import problems as canonical
from trajopt.problems import reference

STARTS = 8
PERTURB = 0.1
TOL = 1e-5
# each problem: its builder (batch size B) and what reference.trajectory_cost needs (spec, NumPy step)
PROBLEMS = {"P2 pendulum": (canonical.pendulum, reference.PENDULUM, reference.pendulum_step),
            "P4 bicycle": (canonical.bicycle, reference.BICYCLE, reference.bicycle_step)}


def numpy_costs(name: str, p: trajopt.Problem, U: torch.Tensor) -> np.ndarray:
    """``reference.trajectory_cost`` of the controls ``U (B, T, m)`` from the starts of ``p`` (problem ``name``)."""
    _, spec, step = PROBLEMS[name]
    Q, R = np.asarray(spec["Q"], float), np.atleast_2d(spec["R"]).astype(float)
    return np.array([reference.trajectory_cost(step, x, u, Q, R, spec.get("target"))
                     for x, u in zip(p.x0.detach().numpy(), U.detach().numpy())])


def _row(name, label, p, sol, ref_costs, seconds):
    costs = numpy_costs(name, p, sol.U)
    gap = costs / ref_costs - 1
    return dict(problem=name, solver=label, cost=float(costs.mean()), within=int((np.abs(gap) <= TOL).sum()),
                lower=int((gap < -TOL).sum()), higher=int((gap > TOL).sum()), gap=float(np.abs(gap).max()),
                conv=f"{int(sol.converged.sum())}/{len(costs)}", iters=int(sol.iterations.max()), s=seconds)


def run(repeat: int = 20, quick: bool = False) -> str:
    rows = []
    for name, B in (("P2 pendulum", 4 if quick else STARTS), ("P4 bicycle", 1)):
        p = PROBLEMS[name][0](B)
        t0 = time.perf_counter()
        ref = trajopt.ilqr(p, max_iter=500, grad=None)
        seconds = time.perf_counter() - t0
        ref_costs = numpy_costs(name, p, ref.U)
        rows.append(dict(problem=name, solver="ilqr", cost=float(ref_costs.mean()), s=seconds,
                         conv=f"{int(ref.converged.sum())}/{B}", iters=int(ref.iterations.max())))
        noise = torch.randn(ref.U.shape, generator=torch.Generator().manual_seed(0), dtype=ref.U.dtype)
        perturbed = p.replace(U_init=ref.U + PERTURB * p.u_upper * noise)       # clipped into the bounds
        runs = [("L-BFGS, projected", p, dict(max_iter=5000)),
                ("L-BFGS, squashed", p, dict(max_iter=5000, bounds="squash")),
                ("Adam, projected", p, dict(optimizer="adam", max_iter=5000, lr=0.05, lr_final=1e-4)),
                (f"L-BFGS from iLQR's optimum + {PERTURB:g} u_max noise", perturbed, dict(max_iter=5000))]
        for label, problem, options in runs:
            t0 = time.perf_counter()
            sol = trajopt.single_shooting(problem, grad=None, **options)
            rows.append(_row(name, label, p, sol, ref_costs, time.perf_counter() - t0))
    return (f"Single shooting against box-constrained iLQR from the same guess; per problem, the relative cost "
            f"gap to iLQR's: within {TOL:g}, lower, higher, largest absolute gap\n"
            + table(rows, [("problem", "problem", "s"), ("solver", "solver", "s"), ("cost", "mean cost", ".4f"),
                           ("within", "within", "d"), ("lower", "lower", "d"), ("higher", "higher", "d"),
                           ("gap", "largest gap", ".1e"), ("conv", "converged", "s"), ("iters", "iterations", "d"),
                           ("s", "time (s)", ".1f")]))
