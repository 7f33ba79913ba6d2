"""iLQR suite: P2 (pendulum swing-up) and P3 (cart-pole swing-up) of ``problems.py``, from zero controls.

For each problem and batch size (starts ``pendulum_x0`` / ``cartpole_x0`` with seed 0): the mean final
cost in ``problems.py``'s convention, iterations, how many problems converged, the time of one solve and
of one backward pass (``sol.cost.sum()`` with respect to ``x0``), and, when mpc.pytorch is importable,
its mean cost (its controls re-rolled by ``problems.trajectory_cost``), iterations, converged count and
time with the same iteration budget. "Converged" is one test for both: the largest entry of the
projected gradient of the cost with respect to the controls is at most ``GRAD_TOL``. Solves up to B=32
run ``RUNS`` times, ours and mpc.pytorch's interleaved so that both see the same (shared, noisy) machine,
and the best of each is reported; B=256 solves run once.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import dynamics
import trajopt
import trajopt.problems
from benchmarks import peers
from trajopt.problems import reference as problems

SIZES, QUICK_SIZES = (1, 32, 256), (1, 32)
MAX_ITER, GRAD_TOL = 100, 1e-6
RUNS = 3    # timed solves per cell for B <= 32, ours and mpc.pytorch's interleaved; the best of each is reported
CHECKED = 3  # starts per row whose cost is recomputed by problems.trajectory_cost
# P2-P4 as trajopt.Problem (starts pendulum_x0 / cartpole_x0 with seed 0; P4 one start, the v = 1 guess)
PROBLEMS = {"P2 pendulum": trajopt.problems.pendulum, "P3 cart-pole": trajopt.problems.cartpole,
            "P4 bicycle": trajopt.problems.bicycle}
# what problems.trajectory_cost needs of each model: its spec (Q, R, target) and NumPy step
REFERENCE = {dynamics.Pendulum: (problems.PENDULUM, problems.pendulum_step),
             dynamics.CartPole: (problems.CARTPOLE, problems.cartpole_step),
             dynamics.KinematicBicycle: (problems.BICYCLE, problems.bicycle_step)}
SUITE = ("P2 pendulum", "P3 cart-pole")
STATE_GUESS = ("P2 pendulum",)  # also solved from the zero-state guess (X_init)


def lbfgsb(problem: trajopt.Problem, b: int, U_start: torch.Tensor, **options) -> float:
    """Cost reached by scipy's L-BFGS-B (tight tolerances, the problem's bounds) on row ``b`` of ``problem``'s
    flattened controls, started from ``U_start (T, m)``: the reference the iLQR optimum is checked against."""
    import scipy.optimize

    shape = U_start.shape
    x0 = problem.x0[b:b + 1].detach()

    def f(u):
        U = torch.tensor(u.reshape(1, *shape), requires_grad=True)
        J = problem.cost(trajopt.rollout(problem.dynamics, x0, U), U).sum()
        J.backward()
        return J.item(), U.grad.numpy().ravel()

    def bound(z, sign):
        return np.full(U_start.numel(), sign * np.inf) if z is None else z[b].detach().numpy().ravel()
    options = dict(dict(ftol=1e-15, gtol=1e-12, maxiter=20000, maxfun=50000), **options)
    return float(scipy.optimize.minimize(f, U_start.detach().numpy().ravel(), jac=True, method="L-BFGS-B",
                                         bounds=np.stack([bound(problem.u_lower, -1), bound(problem.u_upper, 1)], 1),
                                         options=options).fun)


def solve(p: trajopt.Problem, max_iter: int = MAX_ITER, **options) -> trajopt.Solution:
    """``trajopt.ilqr`` with the suite's budget and ``grad_tol``."""
    return trajopt.ilqr(p, max_iter=max_iter, grad_tol=GRAD_TOL, **options)


def numpy_costs(p: trajopt.Problem, U, count=None) -> np.ndarray:
    """``problems.trajectory_cost`` of the controls ``U (B, T, m)`` from the problem's starts (the first ``count``);
    ``p`` is one of :data:`PROBLEMS`' (its model names the NumPy step and weights)."""
    spec, step = REFERENCE[type(p.dynamics.model)]
    Q, R = np.asarray(spec["Q"], float), np.atleast_2d(spec["R"]).astype(float)
    U = U.detach().numpy()
    return np.array([problems.trajectory_cost(step, x, u, Q, R, spec.get("target"))
                     for x, u in zip(p.x0.detach().numpy()[:count], U[:count])])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def zero_states(p: trajopt.Problem) -> torch.Tensor:
    """The zero-state guess ``X_init (B, T+1, n)`` (crocoddyl's default; for P2 and P3 the upright goal)."""
    return p.x0.new_zeros(p.B, p.T + 1, p.n)


def measure(name: str, B: int, max_iter: int = MAX_ITER, state_guess: bool = False, mpc_row: dict | None = None) -> dict:
    """One row: our solve (from zero controls, and from the zero-state guess if ``state_guess``) and, unless
    ``mpc_row`` gives its columns already (mpc.pytorch has no state guess), mpc.pytorch's."""
    p = PROBLEMS[name](B)
    x0 = p.x0.clone().requires_grad_(True)
    ours_p = p.replace(x0=x0, X_init=zero_states(p) if state_guess else None)
    u_max = float(p.u_upper.max())           # P2, P3: one bound, |u| <= u_max
    runs = RUNS if B <= 32 else 1
    ours = lambda: solve(ours_p, max_iter, grad="implicit")      # noqa: E731
    theirs = None if mpc_row is not None or peers.mpc_pytorch() is None else lambda: peers.mpc_ilqr(  # noqa: E731
        peers.mpc_pytorch(), p.dynamics, p.cost.C, p.cost.c, p.x0, p.T, -u_max, u_max, lqr_iter=max_iter)
    timings, mpc_timings = [], []
    for _ in range(runs):                    # interleaved, so that both see the same machine
        sol, seconds = _timed(ours)
        timings.append(seconds)
        if theirs is not None:
            mpc_out, seconds = _timed(theirs)
            mpc_timings.append(seconds)
    seconds = min(timings)
    iters = sol.iterations
    row = {"problem": name, "start": "zero states" if state_guess else "rollout", "B": B, "J": float(sol.cost.detach().mean()), "conv": f"{int(sol.converged.sum())}/{B}",
           "iters": f"{float(iters.float().mean()):.0f}/{int(iters.max())}",
           "s": seconds, "bwd_s": "n/a"}
    J_np = numpy_costs(p, sol.U, CHECKED)
    row["check"] = float(np.max(np.abs(sol.cost.detach().numpy()[:CHECKED] - J_np) / J_np))
    if sol.cost.requires_grad:
        try:
            backward = min(_timed(lambda: torch.autograd.grad(sol.cost.sum(), x0, retain_graph=True))[1]
                           for _ in range(5))
            row["bwd_s"] = f"{backward:.3f}"
            X, U = sol.X.detach(), sol.U.detach()      # one LQR solve of the same size, for scale
            F, f = trajopt.linearize(p.dynamics, X, U)
            q = p.cost.quadratize(X, U)
            lqr = min(_timed(lambda: trajopt.lqr(F, f, q.C, q.c, x0.detach(), C_final=q.C_final,
                                                 c_final=q.c_final, grad=None))[1] for _ in range(5))
            row["bwd_lqr"] = backward / lqr
        except Exception as e:  # noqa: BLE001 - e.g. a reduced Hessian that is not positive definite
            row["bwd_s"], row["bwd_error"] = "error", f"{type(e).__name__}: {e}"
    mpc = peers.mpc_pytorch()
    if mpc_row is not None:
        row.update({k: v for k, v in mpc_row.items() if k.startswith("mpc")})
        if "mpc_s" in row:
            row["x_mpc"] = row["mpc_s"] / seconds
    elif mpc is not None:
        (_, U, its), row["mpc_s"] = mpc_out, min(mpc_timings)
        U = U.detach()
        pg = trajopt.projected_gradient(p, U)
        row.update(mpc_J=float(numpy_costs(p, U).mean()), mpc_iters=str(its), x_mpc=row["mpc_s"] / seconds,
                   mpc_conv=f"{int((pg.abs().flatten(1).amax(-1) <= GRAD_TOL).sum())}/{B}")
    return row


COLUMNS = [("problem", "problem", "s"), ("start", "start", "s"), ("B", "B", "d"), ("J", "mean J", ".2f"), ("iters", "iters mean/max", "s"),
           ("conv", "converged", "s"), ("s", "solve s", ".2f"), ("bwd_s", "backward s", "s"),
           ("bwd_lqr", "backward / LQR solve", ".2f"),
           ("mpc_J", "mpc mean J", ".2f"), ("mpc_iters", "mpc iters", "s"), ("mpc_conv", "mpc converged", "s"),
           ("mpc_s", "mpc solve s", ".2f"), ("x_mpc", "mpc s / ours", ".1f")]


def markdown(rows: list[dict], columns=COLUMNS) -> str:
    """Markdown table; ``columns`` are ``(key, header, format)`` as for ``timing.table``; missing values are '-'."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + " --- |" * len(columns)]
    cell = lambda r, k, f: "-" if r.get(k) is None else format(r[k], f)  # noqa: E731
    lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join(lines)


def run(repeat: int = 1, quick: bool = False, progress: bool = True, max_iter: int = MAX_ITER) -> str:
    """``repeat`` is ignored: each solve is timed once."""
    for name in SUITE:  # warm-up: first calls pay for lazy initialization
        measure(name, 2, max_iter=2)
    rows = []
    for name in SUITE:
        for B in QUICK_SIZES if quick else SIZES:
            rows.append(measure(name, B, max_iter))
            if name in STATE_GUESS:
                rows.append(measure(name, B, max_iter, state_guess=True, mpc_row=rows[-1]))
            if progress:
                print(f"  measured {name} B={B}", flush=True)
    mpc_line = ("mpc.pytorch: mpc.MPC with lqr_iter = max_iter, exit_unconverged=False, verbose=-1, its defaults "
                "otherwise (grad_method=ANALYTIC, given our closed-form Jacobians; eps=1e-7 on the control step; "
                "linesearch_decay=0.2, max_linesearch_iter=10; not_improved_lim=5, best_cost_eps=1e-4); "
                "iterations counted by its linearizations"
                if peers.mpc_pytorch() is not None else
                "mpc.pytorch not importable: its columns are empty (pip install --no-deps mpc)")
    errors = sorted({r["bwd_error"] for r in rows if "bwd_error" in r})
    return "\n".join([
        f"iLQR on P2 (T={problems.PENDULUM['T']}) and P3 (T={problems.CARTPOLE['T']}), float64, zero initial controls "
        "(start 'rollout'; 'zero states': also X_init = 0, mpc.pytorch's columns repeated from the row above), "
        f"|u| <= u_max; max_iter={max_iter}, converged: largest projected-gradient entry <= {GRAD_TOL:g} "
        "(the same test on mpc's solution); mean J in problems.py's convention (no 1/2, no terminal term)",
        "ours: trajopt.ilqr, its defaults otherwise; backward: d sol.cost.sum() / d x0 (grad='implicit'; "
        "unconverged problems get no gradient through the solve), best of 5, and over the best of 5 trajopt.lqr "
        f"solves of the solution's linearization (same size); solves: best of {RUNS} runs, ours and mpc.pytorch's "
        "interleaved (one run at B=256)",
        mpc_line, "",
        markdown(rows), "",
        f"ours' cost against problems.trajectory_cost on the first {CHECKED} starts of each row: max rel. difference "
        f"{max(r['check'] for r in rows):.1e}",
        *(f"backward 'error': {e}" for e in errors),
    ])


def optimality(B: int = 32, max_iter: int = 1000) -> str:
    """Final costs against scipy's L-BFGS-B (tight tolerances, same bounds) started from our solutions.

    P2 and P3 from zero controls (``B`` starts), P2 also from the zero-state guess (``X_init``, the goal),
    P4 (one start) from a forward-velocity guess (from zero controls our steps carry the steering angle past
    pi/2, where the model's tan is discontinuous).
    """
    lines = ["| problem | start | B | converged | iterations (max) | max projected gradient | "
             "max rel. (ours - L-BFGS-B) / ours | min rel. | bounds hold |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    runs = [(name, False) for name in PROBLEMS] + [("P2 pendulum", True)]
    for name, state_guess in runs:
        p = PROBLEMS[name](1 if name == "P4 bicycle" else B)
        if state_guess:
            p = p.replace(X_init=zero_states(p))
        sol = trajopt.ilqr(p, max_iter=max_iter, grad=None)
        rel = [(float(sol.cost[b]) - lbfgsb(p, b, sol.U[b])) / float(sol.cost[b]) for b in range(p.B)]
        ok = bool(((sol.U >= p.u_lower) & (sol.U <= p.u_upper)).all())
        start = "zero states" if state_guess else ("v = 1" if bool(p.U_init.any()) else "rollout")
        lines.append(f"| {name} | {start} | {p.B} | {int(sol.converged.sum())}/{p.B} | "
                     f"{int(sol.iterations.max())} | {float(sol.residual.max()):.1e} | {max(rel):.1e} | "
                     f"{min(rel):.1e} | {ok} |")
    return "\n".join(["iLQR against L-BFGS-B started from its solution (positive: L-BFGS-B found lower)", *lines])
