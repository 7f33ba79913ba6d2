"""The tour (``python -m benchmarks``, or ``python -m benchmarks tour [--quick] [--out FOLDER]``): what the library
does, in a minute or two on a laptop-class CPU, with no optional peer installed.

1. The canonical problems (:mod:`trajopt.problems`), each a batch solved by one call per solver family: P1 (a
   random time-varying LQR) by :func:`trajopt.lqr`; P2-P4 (nonlinear, control-bounded) by :func:`trajopt.ilqr`,
   :func:`trajopt.ddp`, :func:`trajopt.single_shooting`, :func:`trajopt.multiple_shooting` (scipy back end,
   knots every 10 steps), :func:`trajopt.mppi` and :func:`trajopt.cem`, all from the same guess; and P2 by the
   swing-up recipe (:func:`trajopt.multistart` over pumping guesses), since from rest every local solver stalls
   with the pendulum hanging (748.98). "cost" is the mean over the batch in ``problems.py``'s convention,
   "status" counts the :class:`trajopt.Status` of each problem (sampling solvers have no optimality test:
   ``no certificate``).
2. Gradients through solutions against central differences: P1's ``d sum(U) / d x0`` (LQR), and P3's ``d sum(U)
   / d pole mass`` through the converged iLQR solution from the hanging start (the case where mpc.pytorch's
   gradient is 16.41 against central differences' 12.56).
3. A short closed loop on Gymnasium's ``Pendulum-v1`` (its own step, clips and angle wrapping): :class:`trajopt.MPC`
   (iLQR, 5 iterations per step, warm started; the first solve from the swing-up recipe's guesses), all episodes
   in one batch (:mod:`benchmarks.gym_pendulum`); the row's cost is the negated mean return.

Peers' columns appear only when they are importable: mpc.pytorch's box iLQR on P2/P3 (same problems, same zero
start, the same 100-iteration budget; its controls costed by ``problems.trajectory_cost``) and pytorch_mppi on the
MPPI rows (the same samples, iterations, temperature and noise, run as an open-loop optimizer on our exact
objective, one controller per problem). Times are wall seconds of one call on this machine, not medians: the
tour shows what the solvers reach, the other suites measure speed. The figure (``--out``, default ./figures,
``tour.png``): P2's hanging start and P4's path by each solver, P3's convergence, and the closed loop.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import trajopt
import trajopt.problems
from benchmarks import gym_pendulum, peers
from benchmarks import ilqr as ilqr_suite
from benchmarks.sampling import pytorch_mppi
from benchmarks.timing import table
from trajopt.problems import pumping_guesses

PROBLEMS = {
    "P1": "random time-varying LQR: n = 8 states, m = 3 controls, T = 50, no bounds (convex; one Riccati pass)",
    "P2": "pendulum swing-up (Gymnasium Pendulum-v1 physics), |u| <= 2, T = 100: too weak to lift it directly",
    "P3": "cart-pole swing-up, |force| <= 10, T = 60",
    "P4": "kinematic bicycle parking from the origin to (10, 5), |v| <= 5, |steering rate| <= 0.5, T = 50",
}


@dataclass
class Settings:
    B_lqr: int = 16            # P1's batch
    B: int = 2                 # P2's and P3's batch (their first starts: P2's hangs at rest); P4 has one start
    samples: int = 500         # MPPI / CEM samples per iteration
    iterations: int = 20       # MPPI / CEM iterations
    episodes: int = 4          # closed-loop episodes on Pendulum-v1
    steps: int = 100           # control steps per episode (5 s)


QUICK = Settings(B_lqr=2, B=1, samples=100, iterations=5, episodes=1, steps=20)


def _status(sol) -> str:
    return sol.summary().split(": ", 1)[1].replace("_", " ")


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _solvers(s: Settings, u_max: torch.Tensor) -> dict:
    """Each family's call, ``label -> solve(problem)``; every one from the problem's own guess."""
    seed = lambda: torch.Generator().manual_seed(0)        # noqa: E731 - common random numbers per call
    return {
        "ilqr": lambda p: trajopt.ilqr(p, max_iter=100, grad=None),
        "ddp": lambda p: trajopt.ddp(p, max_iter=100, grad=None),
        "single_shooting": lambda p: trajopt.single_shooting(p, max_iter=200, grad=None),
        "multiple_shooting": lambda p: trajopt.multiple_shooting(p, segment=10, backend=trajopt.Scipy(), grad=None),
        "mppi": lambda p: trajopt.mppi(p, samples=s.samples, max_iter=s.iterations, temperature=0.1,
                                       noise_std=0.5 * u_max, correlation=0.9, generator=seed()),
        "cem": lambda p: trajopt.cem(p, samples=s.samples, max_iter=s.iterations, elites=20, noise_std=u_max,
                                     generator=seed()),
    }


def _mpc_pytorch(p: trajopt.Problem):
    """mpc.pytorch's box iLQR on ``p`` (one bound for every control), 100 iterations from zero controls:
    ``(mean cost, status text, seconds)``, or None when it is not importable."""
    mpc = peers.mpc_pytorch()
    if mpc is None:
        return None
    u_max = float(p.u_upper.max())
    (_, U, _), seconds = _timed(lambda: peers.mpc_ilqr(mpc, p.dynamics, p.cost.C, p.cost.c, p.x0, p.T,
                                                       -u_max, u_max, lqr_iter=100))
    U = U.detach()
    converged = int((trajopt.projected_gradient(p, U).abs().flatten(1).amax(-1) <= ilqr_suite.GRAD_TOL).sum())
    return float(ilqr_suite.numpy_costs(p, U).mean()), f"{converged} converged", seconds


def _pytorch_mppi(p: trajopt.Problem, s: Settings, u_max: torch.Tensor):
    """pytorch_mppi's MPPI as an open-loop optimizer on ``p``'s exact objective (its running cost sees the state
    after each step, so the state carries the one before it), ``s.iterations`` refinements of the plan without
    shifting, one controller per problem: ``(mean cost, seconds)``, or None when it is not importable."""
    pm = pytorch_mppi()
    if pm is None:
        return None
    n, m, dtype = p.n, p.m, p.x0.dtype
    model, cost = p.dynamics, p.cost

    def step(z, u):                 # z = [x_t, x_{t-1}]
        return torch.cat([model(z[:, :n], u), z[:, :n]], -1)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    plans = []
    for b in range(p.B):
        ctrl = pm.MPPI(step, lambda z, u: cost.stage(z[:, n:], u), 2 * n,
                       torch.diag((0.5 * u_max.reshape(-1).expand(m)) ** 2).to(dtype),
                       num_samples=s.samples, horizon=p.T, lambda_=0.1, u_min=p.u_lower[b, 0], u_max=p.u_upper[b, 0],
                       U_init=p.U_init[b].clone(), terminal_state_cost=lambda Z, U: cost.terminal(Z[..., -1, :n]))
        z0 = torch.cat([p.x0[b], p.x0[b]])
        for _ in range(s.iterations):
            ctrl.command(z0, shift_nominal_trajectory=False)
        plans.append(torch.max(torch.min(ctrl.U, p.u_upper[b]), p.u_lower[b]))
    seconds = time.perf_counter() - t0
    return float(ilqr_suite.numpy_costs(p, torch.stack(plans)).mean()), seconds


def gradient_lqr(s: Settings) -> dict:
    """``d sum(U) / d x0[0, 0]`` of P1 by the implicit route against central differences."""
    P1 = trajopt.problems.random_lqr(B=s.B_lqr)
    x0 = P1["x0"].clone().requires_grad_(True)
    sol = trajopt.lqr(P1["F"], P1["f"], P1["C"], P1["c"], x0)
    (grad,) = torch.autograd.grad(sol.U.sum(), x0)
    eps, values = 1e-6, []
    for sign in (1, -1):
        x = P1["x0"].clone()
        x[0, 0] += sign * eps
        values.append(float(trajopt.lqr(P1["F"], P1["f"], P1["C"], P1["c"], x, grad=None).U.sum()))
    return dict(what="P1 lqr: d sum(U) / d x0[0, 0]", ours=float(grad[0, 0]), fd=(values[0] - values[1]) / (2 * eps))


def gradient_ilqr() -> dict:
    """``d sum(U) / d m_pole`` through P3's converged iLQR solution from the hanging start (43% of the controls at
    their bounds), against central differences of solves warm-started from it."""
    p = trajopt.problems.cartpole(1)
    pole_mass = p.dynamics.model.mp.requires_grad_(True)
    options = dict(max_iter=300, grad_tol=1e-10)
    sol = trajopt.ilqr(p, **options)
    (grad,) = torch.autograd.grad(sol.U.sum(), pole_mass)
    eps, values = 1e-4, []
    for sign in (1, -1):
        with torch.no_grad():
            pole_mass += sign * eps
            values.append(float(trajopt.ilqr(p.replace(U_init=sol.U.detach()), grad=None, **options).U.sum()))
            pole_mass -= sign * eps
    pole_mass.requires_grad_(False)
    return dict(what="P3 ilqr: d sum(U) / d pole mass", ours=float(grad), fd=(values[0] - values[1]) / (2 * eps))


def closed_loop(s: Settings) -> dict:
    """``s.episodes`` seeded Pendulum-v1 episodes of ``s.steps`` steps under one batched iLQR MPC: returns, the
    angle over time ``(steps + 1, episodes)``, seconds."""
    import gymnasium

    envs = [gymnasium.make("Pendulum-v1") for _ in range(s.episodes)]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    mpc = gym_pendulum.controller()
    returns, angles = np.zeros(s.episodes), []
    t0 = time.perf_counter()
    for step in range(s.steps):
        x = gym_pendulum.states(obs)
        angles.append(x[:, 0].numpy())
        if step == 0:       # the swing-up recipe's guesses for the first plan, as benchmarks.gym_pendulum does
            first = trajopt.Problem(mpc.dynamics, mpc.cost, x, horizon=mpc.horizon, u_lower=-2.0, u_upper=2.0)
            guess = trajopt.multistart(first, U_inits=pumping_guesses(mpc.horizon), screen_iter=20, max_iter=100,
                                       grad=None)
            u, _ = mpc(x, U_init=guess.U)
        else:
            u, _ = mpc(x)
        for i, (env, a) in enumerate(zip(envs, u.detach().numpy())):
            obs[i], reward, *_ = env.step(a)
            returns[i] += reward
    x = gym_pendulum.states(obs)
    angles.append(x[:, 0].numpy())
    upright = int(((x[:, 0].abs() < 0.05) & (x[:, 1].abs() < 0.5)).sum())
    return dict(returns=returns, angles=np.stack(angles), seconds=time.perf_counter() - t0, upright=upright)


def figure(path: str, shown: dict, p3_history: dict, loop: dict | None) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (a, b), (c, d) = axes
    t = np.arange(101) * 0.05
    for label, X in shown["P2"].items():
        a.plot(t, X[:, 0], label=label)
    a.axhline(0.0, color="k", lw=0.5)
    a.set(title="P2 from hanging (angle 0 = upright)", xlabel="time (s)", ylabel="angle (rad)")
    a.legend(fontsize=7)
    for label, X in shown["P4"].items():
        b.plot(X[:, 0], X[:, 1], label=label)
    b.plot([10.0], [5.0], "k*", ms=10, label="goal")
    b.set(title="P4 bicycle parking: paths", xlabel="x (m)", ylabel="y (m)")
    b.legend(fontsize=7)
    for label, history in p3_history.items():
        c.plot(history, label=label)
    c.set(title="P3 cart-pole: mean cost per iteration", xlabel="iteration", ylabel="cost", yscale="log")
    c.legend(fontsize=7)
    if loop is not None:
        d.plot(np.arange(len(loop["angles"])) * 0.05, loop["angles"], lw=1)
        d.set(title=f"Pendulum-v1, MPC closed loop ({loop['angles'].shape[1]} episodes)", xlabel="time (s)",
              ylabel="angle (rad, 0 upright)")
    else:
        d.set_axis_off()
        d.text(0.5, 0.5, "Pendulum-v1: gymnasium not installed", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(repeat: int = 1, quick: bool = False, out: str = "figures") -> str:
    """The tour's report; ``repeat`` is ignored (one call of each), ``quick`` uses tiny settings (a smoke run)."""
    s = QUICK if quick else Settings()
    t_start = time.perf_counter()
    rows, shown, p3_history = [], {"P2": {}, "P4": {}}, {}
    have_mpc, have_mppi = peers.mpc_pytorch() is not None, pytorch_mppi() is not None

    P1 = trajopt.problems.random_lqr(B=s.B_lqr)
    sol, seconds = _timed(lambda: trajopt.lqr(P1["F"], P1["f"], P1["C"], P1["c"], P1["x0"], grad=None))
    rows.append(dict(problem="P1", solver="lqr", B=s.B_lqr, cost=float(sol.cost.mean()), status=_status(sol),
                     s=seconds))

    builders = {"P2": lambda: trajopt.problems.pendulum(s.B), "P3": lambda: trajopt.problems.cartpole(s.B),
                "P4": lambda: trajopt.problems.bicycle(1)}
    for name, build in builders.items():
        p = build()
        u_max = p.u_upper[0, 0]
        for label, solve in _solvers(s, u_max).items():
            sol, seconds = _timed(lambda: solve(p))
            row = dict(problem=name, solver=label, B=p.B, cost=float(sol.cost.mean()), status=_status(sol), s=seconds)
            if label == "ilqr" and have_mpc and name in ("P2", "P3"):
                cost, status, seconds = _mpc_pytorch(p)
                row["mpc"] = f"{cost:.2f} ({status}, {seconds:.2f} s)"
            if label == "mppi" and have_mppi:
                cost, seconds = _pytorch_mppi(p, s, u_max)
                row["mppi"] = f"{cost:.2f} ({seconds:.2f} s)"
            rows.append(row)
            if name in shown:
                shown[name][label] = sol.X[0].detach().numpy()
            if name == "P3" and sol.cost_history is not None:
                p3_history[label] = sol.cost_history.mean(0).detach().numpy()
        if name == "P2":            # the swing-up recipe: pumping guesses, all in one batch, the cheapest kept
            sol, seconds = _timed(lambda: trajopt.multistart(p, U_inits=pumping_guesses(p.T), screen_iter=20,
                                                             max_iter=100, grad=None))
            rows.append(dict(problem=name, solver="multistart (ilqr)", B=p.B, cost=float(sol.cost.mean()),
                             status=_status(sol), s=seconds))
            shown[name]["multistart (ilqr)"] = sol.X[0].detach().numpy()

    gradients = [gradient_lqr(s), gradient_ilqr()]
    for g in gradients:
        g["error"] = abs(g["ours"] - g["fd"]) / max(abs(g["fd"]), 1e-12)
    rows[0]["grad"] = gradients[0]["error"]
    next(r for r in rows if r["problem"] == "P3" and r["solver"] == "ilqr")["grad"] = gradients[1]["error"]

    try:
        loop = closed_loop(s)
    except ImportError:
        loop = None
    if loop is not None:
        rows.append(dict(problem="Pendulum-v1", solver="MPC (ilqr)", B=s.episodes, cost=-float(loop["returns"].mean()),
                         status=f"{loop['upright']}/{s.episodes} upright", s=loop["seconds"]))

    os.makedirs(out, exist_ok=True)
    path = figure(os.path.join(out, "tour.png"), shown, p3_history, loop)

    columns = [("problem", "problem", "s"), ("solver", "solver", "s"), ("B", "B", "d"), ("cost", "cost", ".2f"),
               ("status", "status", "s"), ("s", "time (s)", ".2f"), ("grad", "gradient error", ".1e")]
    if have_mpc:
        columns.append(("mpc", "mpc.pytorch cost (status, time)", "s"))
    if have_mppi:
        columns.append(("mppi", "pytorch_mppi cost (time)", "s"))
    lines = ["Tour of torch-trajopt" + (" (--quick: tiny settings, a smoke run)" if quick else ""), ""]
    lines += [f"  {k}: {v}" for k, v in PROBLEMS.items()]
    lines += ["", table(rows, columns), ""]
    lines += [f"gradient, {g['what']}: implicit {g['ours']:.6g}, central differences {g['fd']:.6g} "
              f"(relative error {g['error']:.1e})" for g in gradients]
    if loop is not None:
        lines.append(f"Pendulum-v1: {s.episodes} seeded episodes of {s.steps} steps in one batch, mean return "
                     f"{loop['returns'].mean():.1f} (cost = -return; 200-step episodes score about -137, "
                     "python -m benchmarks mpc-pendulum-v1)")
    else:
        lines.append("Pendulum-v1 closed loop skipped: gymnasium is not installed (pip install gymnasium)")
    missing = [name for name, have in (("mpc.pytorch", have_mpc), ("pytorch_mppi", have_mppi)) if not have]
    if missing:
        lines.append(f"peers not importable, columns left out: {', '.join(missing)} (pip install --no-deps mpc "
                     "pytorch-mppi arm-pytorch-utilities pytorch-seed)")
    lines.append(f"MPPI/CEM: {s.samples} samples, {s.iterations} iterations; multiple shooting: scipy SLSQP, knots "
                 "every 10 steps; iLQR/DDP 100 iterations at most; single shooting L-BFGS, 200 at most; "
                 "multistart: 13 guesses, 20 screening iterations")
    lines.append(f"figure: {path}; whole tour {time.perf_counter() - t_start:.0f} s")
    return "\n".join(lines)


# the examples behind the docs' figures, with their arguments; the SHAC figures come from 300 s training runs
EXAMPLES = [("models_gallery.py",), ("swing_up.py",), ("imitation.py",), ("learned_pendulum.py",),
            ("bounce_to_target.py",), ("plot_collocation.py",), ("plot_mppi.py",)]
SHAC_FIGURES = ["examples/shac_cartpole.py --seconds 300 --seed S --out runS  (S = 0, 1, 2), then\n    python "
                "examples/shac_cartpole.py --plot-only run0/shac_cartpole.csv run1/shac_cartpole.csv "
                "run2/shac_cartpole.csv --out docs/images",
                "examples/shac_tasks.py TASK --seconds 300 --out docs/images  (TASK: pendulum, pusher, bicycle)"]


def figures(repeat: int = 1, quick: bool = False, out: str | None = None) -> str:
    """Regenerate the docs' figures: run every example (``python examples/NAME.py --out OUT``, OUT default the
    checkout's ``docs/images``) one after the other, each in its own process; ``quick`` passes ``--quick`` (a check
    that they run, not the docs' figures). The SHAC figures need training runs of 300 s and are listed, not run."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = str(root / "docs" / "images") if out is None else out
    lines = [f"docs' figures into {out}" + (" (--quick: short settings, not the docs' figures)" if quick else "")]
    failed = 0
    for script, *args in EXAMPLES:
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, str(root / "examples" / script), *args, "--out", out,
                              *(["--quick"] if quick else [])], capture_output=True, text=True)
        failed += run.returncode != 0
        tail = (run.stdout.strip().splitlines() or [""])[-1] if run.returncode == 0 else run.stderr.strip()[-500:]
        lines.append(f"  {script}: {'ok' if run.returncode == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s: "
                     f"{tail}")
    lines.append("the SHAC figures (docs/rl.md, docs/tasks.md) come from training runs:")
    lines += [f"  python {command}" for command in SHAC_FIGURES]
    if failed:
        raise SystemExit("\n".join(lines) + f"\n{failed} example(s) failed")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    print(run(quick="--quick" in sys.argv))
