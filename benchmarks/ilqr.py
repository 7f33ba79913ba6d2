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

import math
import time

import numpy as np
import torch

import dynamics
import trajopt
from benchmarks import peers, problems

SIZES, QUICK_SIZES = (1, 32, 256), (1, 32)
MAX_ITER, GRAD_TOL = 100, 1e-6
RUNS = 3    # timed solves per cell for B <= 32, ours and mpc.pytorch's interleaved; the best of each is reported
CHECKED = 3  # starts per row whose cost is recomputed by problems.trajectory_cost
PROBLEMS = {"P2 pendulum": (problems.PENDULUM, problems.pendulum_step, problems.pendulum_x0, dynamics.Pendulum),
            "P3 cart-pole": (problems.CARTPOLE, problems.cartpole_step, problems.cartpole_x0, dynamics.CartPole),
            "P4 bicycle": (problems.BICYCLE, problems.bicycle_step, None, dynamics.KinematicBicycle)}
SUITE = ("P2 pendulum", "P3 cart-pole")
STATE_GUESS = ("P2 pendulum",)  # also solved from the zero-state guess (X_init)


def problem(name: str, B: int) -> dict:
    """One of P2-P4 as our solvers take it: model (parameters frozen), cost (``problems.py``'s, no 1/2:
    ``from_weights(2 Q, 2 R)``), starts ``x0 (B, n)`` (P4: all at the origin), bound ``u_max`` (a tensor),
    horizon ``T``, ``U_init`` (P4: a forward-velocity guess, ``v = 1``; None otherwise: zero controls) and
    what ``problems.trajectory_cost`` needs."""
    spec, step, starts, model = PROBLEMS[name]
    Q, R = np.asarray(spec["Q"], float), np.atleast_2d(spec["R"]).astype(float)
    target = spec.get("target")
    goal = None if target is None else torch.tensor(target)
    x0 = torch.zeros(B, len(Q), dtype=torch.float64) if starts is None else torch.tensor(starts(B, seed=0))
    U_init = None
    if name == "P4 bicycle":       # from zero controls the steering angle is carried past pi/2, where tan jumps
        U_init = torch.zeros(B, spec["T"], 2, dtype=torch.float64)
        U_init[..., 0] = 1.0
    return dict(dynamics=model().discretize().requires_grad_(False), step=step, Q=Q, R=R, target=target,
                T=spec["T"], x0=x0, U_init=U_init, u_max=torch.as_tensor(spec["u_max"], dtype=torch.float64),
                cost=trajopt.QuadraticCost.from_weights(torch.tensor(2 * Q), torch.tensor(2 * R), x_goal=goal))


def pumping_guesses(T: int, dt: float = 0.05, u_max: float = 2.0, periods=(1.2, 1.6, 2.0), cycles=(1, 2)):
    """Swing-up guesses for a pendulum (the recipe of ``examples/swing_up.py``): zero, and
    ``u_max sin(2 pi t / period)`` of either sign, cut after ``cycles`` periods: ``(K, T, 1)``."""
    t = torch.arange(T, dtype=torch.float64) * dt
    guesses = [torch.zeros(T, dtype=torch.float64)]
    for period in periods:
        for sign in (1.0, -1.0):
            for c in cycles:
                guesses.append(torch.where(t < c * period, sign * u_max * torch.sin(2 * math.pi * t / period), 0.0))
    return torch.stack(guesses).unsqueeze(-1)


def lbfgsb(p: dict, b: int, U_start: torch.Tensor, **options) -> float:
    """Cost reached by scipy's L-BFGS-B (tight tolerances, the same bounds) on problem ``b``'s flattened
    controls, started from ``U_start (T, m)``: the reference the iLQR optimum is checked against."""
    import scipy.optimize

    shape = U_start.shape

    def f(u):
        U = torch.tensor(u.reshape(1, *shape), requires_grad=True)
        J = p["cost"](trajopt.rollout(p["dynamics"], p["x0"][b:b + 1], U), U).sum()
        J.backward()
        return J.item(), U.grad.numpy().ravel()
    ub = p["u_max"].expand(shape).numpy().ravel()
    options = dict(dict(ftol=1e-15, gtol=1e-12, maxiter=20000, maxfun=50000), **options)
    return float(scipy.optimize.minimize(f, U_start.detach().numpy().ravel(), jac=True, method="L-BFGS-B",
                                         bounds=np.stack([-ub, ub], 1), options=options).fun)


def solve(p: dict, x0: torch.Tensor, max_iter: int = MAX_ITER, **options) -> trajopt.Solution:
    return trajopt.ilqr(p["dynamics"], p["cost"], x0, horizon=p["T"], u_lower=-p["u_max"], u_upper=p["u_max"],
                        max_iter=max_iter, grad_tol=GRAD_TOL, **options)


def numpy_costs(p: dict, U, count=None) -> np.ndarray:
    """``problems.trajectory_cost`` of the controls ``U (B, T, m)`` from the problem's starts (the first ``count``)."""
    U = U.detach().numpy()
    return np.array([problems.trajectory_cost(p["step"], x, u, p["Q"], p["R"], p["target"])
                     for x, u in zip(p["x0"].numpy()[:count], U[:count])])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def zero_states(p: dict) -> torch.Tensor:
    """The zero-state guess ``X_init (B, T+1, n)`` (crocoddyl's default; for P2 and P3 the upright goal)."""
    return torch.zeros(len(p["x0"]), p["T"] + 1, p["x0"].shape[-1], dtype=p["x0"].dtype)


def measure(name: str, B: int, max_iter: int = MAX_ITER, state_guess: bool = False, mpc_row: dict | None = None) -> dict:
    """One row: our solve (from zero controls, and from the zero-state guess if ``state_guess``) and, unless
    ``mpc_row`` gives its columns already (mpc.pytorch has no state guess), mpc.pytorch's."""
    p = problem(name, B)
    x0 = p["x0"].clone().requires_grad_(True)
    X_init = zero_states(p) if state_guess else None
    runs = RUNS if B <= 32 else 1
    ours = lambda: solve(p, x0, max_iter, grad="implicit", X_init=X_init)      # noqa: E731
    theirs = None if mpc_row is not None or peers.mpc_pytorch() is None else lambda: peers.mpc_ilqr(  # noqa: E731
        peers.mpc_pytorch(), p["dynamics"], p["cost"].C, p["cost"].c, p["x0"], p["T"], -p["u_max"], p["u_max"],
        lqr_iter=max_iter)
    timings, mpc_timings = [], []
    for _ in range(runs):                    # interleaved, so that both see the same machine
        sol, seconds = _timed(ours)
        timings.append(seconds)
        if theirs is not None:
            mpc_out, seconds = _timed(theirs)
            mpc_timings.append(seconds)
    seconds = min(timings)
    iters = sol.history["iterations"]
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
            F, f = trajopt.linearize(p["dynamics"], X, U)
            q = p["cost"].quadratize(X, U)
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
        U, bound = U.detach(), p["u_max"].expand_as(U)
        pg = trajopt.projected_gradient(p["dynamics"], p["cost"], p["x0"], U, -bound, bound)
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
        p = problem(name, 1 if name == "P4 bicycle" else B)
        ub = p["u_max"]
        X_init = zero_states(p) if state_guess else None
        sol = trajopt.ilqr(p["dynamics"], p["cost"], p["x0"], p["U_init"], X_init=X_init, horizon=p["T"],
                           u_lower=-ub, u_upper=ub, max_iter=max_iter, grad=None)
        rel = [(float(sol.cost[b]) - lbfgsb(p, b, sol.U[b])) / float(sol.cost[b]) for b in range(len(p["x0"]))]
        ok = bool(((sol.U >= -ub) & (sol.U <= ub)).all())
        start = "zero states" if state_guess else ("v = 1" if p["U_init"] is not None else "rollout")
        lines.append(f"| {name} | {start} | {len(p['x0'])} | {int(sol.converged.sum())}/{len(p['x0'])} | "
                     f"{sol.iterations} | {float(sol.history['projected_gradient'].max()):.1e} | {max(rel):.1e} | "
                     f"{min(rel):.1e} | {ok} |")
    return "\n".join(["iLQR against L-BFGS-B started from its solution (positive: L-BFGS-B found lower)", *lines])
