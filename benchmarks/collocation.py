"""Collocation suite: the transcriptions' accuracy order, and collocation / multiple shooting on P2-P4.

- Order: a damped oscillator (linear, exact flow by ``expm``) with a held smooth force, the controls fixed by
  equal bounds, so the knots solve the defects alone; the final knot's error as the intervals double and the
  fitted slope (Hermite-Simpson: 4, trapezoidal: 2).
- P2 (hanging start), P3 (hanging start), P4: each problem's first start (``trajopt.problems``), from iLQR's
  solution (collocation) or from it shifted by 0.05 of the bound (multiple shooting, whose optimum it is), so that
  all land in the same basin. The same :class:`trajopt.Problem` goes to every solver: collocation reaches the
  continuous model (``dynamics.Pendulum``, ``CartPole``, ``KinematicBicycle``) through ``problem.continuous``, and
  its initial knots are the rollout of iLQR's controls by the problem's own integrator; multiple shooting
  transcribes the discrete problem. Both run on ``trajopt.Scipy()`` (SLSQP) and ``trajopt.Theseus()``
  (Levenberg-Marquardt in an augmented-Lagrangian loop): cost in ``problems.py``'s convention of the knots'
  trajectory, largest defect, status, time, and the relative gap to iLQR's optimum of the discrete problem (for
  collocation that gap is the discretization's difference, not an error).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import scipy.linalg
import torch

import dynamics
import trajopt
from benchmarks import ilqr as ilqr_suite
from benchmarks.timing import table


class Oscillator(dynamics.ContinuousDynamics):
    """A damped oscillator driven by a force: linear, so its exact flow is a matrix exponential."""

    A = np.array([[0.0, 1.0], [-4.0, -0.3]])
    B = np.array([[0.0], [1.0]])

    def __init__(self):
        super().__init__(2, 1)

    def derivative(self, x, u, t=None):
        return x @ torch.tensor(self.A.T, dtype=x.dtype) + u @ torch.tensor(self.B.T, dtype=x.dtype)


def exact_end(x0, u, dt):
    """The oscillator's exact state after the held controls ``u (T,)``: each interval's flow by ``expm``."""
    M = scipy.linalg.expm(np.block([[Oscillator.A, Oscillator.B], [np.zeros((1, 3))]]) * dt)
    x = np.array(x0, float)
    for ut in u:
        x = M[:2, :2] @ x + M[:2, 2] * ut
    return x


def order_errors(method: str, steps=(10, 20, 40, 80), horizon: float = 2.0, x0=(1.0, 0.0)):
    """Final-knot errors of ``method`` against the exact flow, and the fitted slope of log error on log steps."""
    D64 = dict(dtype=torch.float64)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64))
    errors = []
    for T in steps:
        dt = horizon / T
        u = torch.sin(3.0 * torch.arange(T, **D64) * dt).view(1, T, 1)
        problem = trajopt.Problem(Oscillator().discretize(dt, "rk4"), cost, torch.tensor([x0], **D64), U_init=u,
                                  u_lower=u, u_upper=u)
        sol = trajopt.collocation(problem, method=method, backend=trajopt.Scipy())
        errors.append(float(np.abs(sol.X[0, -1].numpy() - exact_end(x0, u.flatten().numpy(), dt)).max()))
    return errors, float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


def run(repeat: int = 20, quick: bool = False) -> str:
    rows = []
    for method in ("hermite_simpson", "trapezoidal"):
        errors, slope = order_errors(method)
        rows.append(dict(method=method, e=" ".join(f"{e:.2e}" for e in errors), slope=slope))
    report = ["Order: final-knot error of the held-force oscillator at T = 10, 20, 40, 80 intervals\n"
              + table(rows, [("method", "method", "s"), ("e", "errors", "s"), ("slope", "fitted slope", ".2f")])]
    rows = []
    names = ("P2 pendulum", "P4 bicycle") if quick else ("P2 pendulum", "P3 cart-pole", "P4 bicycle")
    backends = {"scipy": trajopt.Scipy(), "theseus": trajopt.Theseus()}
    for name in names:
        p = ilqr_suite.PROBLEMS[name](1)
        t0 = time.perf_counter()
        ref = ilqr_suite.solve(p, 500, grad=None)
        ref_cost = float(ilqr_suite.numpy_costs(p, ref.U)[0])
        rows.append(dict(problem=name, how="ilqr (discrete)", cost=ref_cost, s=time.perf_counter() - t0,
                         status=trajopt.Status(int(ref.status[0])).name.lower()))
        # multiple shooting from iLQR's optimum itself would start converged: perturb it (same basin)
        start = torch.minimum(torch.maximum(ref.U + 0.05 * p.u_upper, p.u_lower), p.u_upper)
        runs = [(f"collocation {m}, {s}", lambda m=m, s=s: trajopt.collocation(
                    p.replace(U_init=ref.U), method=m, backend=backends[s], grad=None))
                for m in ("hermite_simpson", "trapezoidal") for s in backends]
        runs += [(f"multiple shooting, segment {k}, {s}", lambda k=k, s=s: trajopt.multiple_shooting(
                    p.replace(U_init=start), segment=k, backend=backends[s], grad=None))
                 for k in (1, 10) for s in backends]
        for label, solve in runs:
            t0 = time.perf_counter()
            sol = solve()
            seconds = time.perf_counter() - t0
            cost = float(ilqr_suite.numpy_costs(p, sol.U)[0]) if label.startswith("multiple") else float(sol.cost[0])
            rows.append(dict(problem=name, how=label, cost=cost, gap=cost / ref_cost - 1,
                             defect=float(sol.extras["defect"].max()),
                             status=trajopt.Status(int(sol.status[0])).name.lower(), s=seconds))
            print(f"  {name}: {label}: cost {cost:.6f}, defect {rows[-1]['defect']:.1e}, {rows[-1]['status']}, "
                  f"{seconds:.1f} s", file=sys.stderr)
    report.append("P2-P4 from iLQR's solution; gap: relative to iLQR's optimum of the discrete problem\n"
                  + table(rows, [("problem", "problem", "s"), ("how", "transcription, back end", "s"),
                                 ("cost", "cost", ".6f"), ("gap", "vs iLQR", "+.2e"),
                                 ("defect", "largest defect", ".1e"), ("status", "status", "s"),
                                 ("s", "time (s)", ".1f")]))
    return "\n\n".join(report)
