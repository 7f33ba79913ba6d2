"""Train SHAC on a task and plot its learning curve and closed-loop trajectories.

    python examples/shac_tasks.py pusher [--seconds 300] [--seed 0] [--out FOLDER] [--resume] [--quick]
    python examples/shac_tasks.py bicycle --plot-only figures/shac_bicycle.csv

Tasks: ``pendulum`` (P2 swing-up), ``pusher`` (pushing a box through smoothed contact) and ``bicycle`` (path
tracking); the cart-pole (P3) has ``examples/shac_cartpole.py``. The log
(``FOLDER/shac_<task>.csv``, default ./figures) has one row per epoch, the scored ones with the closed-loop cost
from the task's 32 fixed starts; ``FOLDER/shac_<task>.pt`` is the checkpoint. The figure goes to
``FOLDER/shac_<task>.png``: the cost against training time beside the task's reference, and the trained policy's
closed-loop trajectories from the 32 starts (the docs' figures: 300 s runs with ``--out docs/images``).
``--quick`` trains 3 epochs on 64 environments, scoring every epoch: a check that the script runs.

The tasks, their scores, SHAC's setting for each and the references are :mod:`trajopt.rl.tasks` (the
definitions the benchmarks measure with): ``pendulum`` is its ``"P2"``.
"""
import math
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: spin-waiting threads slow a busy machine

import torch  # noqa: E402
from _plot import arguments, output, reference_lines, save, shac_curve, subplots  # noqa: E402

from trajopt.rl import SHAC  # noqa: E402
from trajopt.rl.tasks import SHAC_DEFAULTS, TASK_SHAC, evaluator, references, score, task  # noqa: E402

TASKS = {"pendulum": "P2", "pusher": "pusher", "bicycle": "bicycle"}


def plot_trajectories(ax, name, t, X):
    X = X.detach().double()
    if name == "pusher":
        for b in range(len(X)):
            ax.plot(X[b, :, 0], X[b, :, 1], color="0.7", lw=0.6)
            ax.plot(X[b, :, 2], X[b, :, 3], color="C0", lw=0.9)
        ax.plot(X[:, 0, 2], X[:, 0, 3], "s", color="C0", ms=3, label="box start")
        ax.plot(X[:, -1, 2], X[:, -1, 3], "o", color="C3", ms=2, label="box at the end")
        ax.plot([0], [0], "k+", ms=12, mew=2, label="goal")
        ax.plot([], [], color="0.7", lw=0.6, label="finger")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    elif name == "bicycle":
        cost = t["cost"]
        road = torch.linspace(float(X[..., 0].min()) - 2, float(X[..., 0].max()) + 2, 400, dtype=torch.float64)
        ax.plot(road, cost.amplitude * torch.sin(cost.wavenumber * road), "k--", lw=1.5, label="road")
        for b in range(len(X)):
            ax.plot(X[b, :, 0], X[b, :, 1], color="C0", lw=0.7)
        ax.plot(X[:, 0, 0], X[:, 0, 1], "o", color="C0", ms=2, label="starts")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    else:
        time = torch.arange(X.shape[1]) * 0.05
        for b in range(len(X)):
            ax.plot(time, X[b, :, 0], color="C0", lw=0.7)
        ax.axhline(0.0, color="k", lw=0.8, label="upright")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("angle (rad, 0 upright)")
    ax.legend(fontsize=7, loc="best")


def plot(name, t, logs, X, path):
    """The learning curves of the CSV ``logs`` and the closed-loop states ``X (32, T+1, n)``."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for log in logs:
        time, steps, cost = shac_curve(log)
        axes[0].plot(time, cost, lw=1, label=f"SHAC, {os.path.basename(log)}")
    reference_lines(axes[0], references(TASKS[name]))
    axes[0].set_xlabel("training time (s)")
    axes[0].set_ylabel("mean closed-loop cost, 32 starts")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    plot_trajectories(axes[1], name, t, X)
    save(fig, path)


def main(argv=None):
    def extra(parser):
        parser.add_argument("task", choices=sorted(TASKS))
        parser.add_argument("--seconds", type=float, default=300.0, help="training time (default 300)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue from FOLDER/shac_<task>.pt")
        parser.add_argument("--plot-only", nargs="+", metavar="LOG", help="plot these CSV logs and the checkpoint")
    args = arguments(__doc__, argv, extra)
    name = TASKS[args.task]
    figure = output(args.out, f"shac_{args.task}.png")
    log, ckpt = (os.path.join(args.out, f"shac_{args.task}.{ext}") for ext in ("csv", "pt"))
    t = task(name, 64)
    options = dict(SHAC_DEFAULTS, **TASK_SHAC.get(name, {}), **(dict(eval_every=1) if args.quick else {}))
    shac = SHAC(t["env"], seed=args.seed, evaluate=evaluator(t), log=None if args.plot_only else log,
                checkpoint=ckpt, checkpoint_every=25, **options)
    if args.resume or args.plot_only:
        shac.load(ckpt)
    if not args.plot_only:
        shac.train(**(dict(epochs=3) if args.quick else dict(time_limit=args.seconds)))
        shac.save(ckpt)
    X, U = shac.closed_loop(t["x0"], t["T"])
    print(f"closed-loop cost of the final policy from the 32 starts: {score(t, U):.2f}")
    plot(args.task, t, args.plot_only or [log], X, figure)
    return 0 if math.isfinite(score(t, U)) else 1


if __name__ == "__main__":
    sys.exit(main())
