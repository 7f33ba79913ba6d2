"""Train SHAC on P3 (cart-pole swing-up) with a CSV log and a checkpoint, then plot the learning curve.

    python examples/shac_cartpole.py [--seconds 300] [--epochs 1500] [--seed 0] [--out FOLDER] [--resume] [--quick]
    python examples/shac_cartpole.py --plot-only run1.csv run2.csv [--out FOLDER]

The task and its settings are :mod:`trajopt.rl.tasks`'s ``"P3"``. The log (``FOLDER/shac_cartpole.csv``, default
./figures) has one row per epoch; every 25th is scored as the problems are (the deterministic policy closed loop
from ``cartpole_x0(32, seed=0)``, mean ``trajectory_cost``). ``--resume`` continues from
``FOLDER/shac_cartpole.pt``. The plot goes to ``FOLDER/shac_cartpole.png``: cost against training time and
against environment steps, beside box-constrained iLQR's open-loop optimum (the docs' figure is
``--plot-only`` of three 300 s runs' logs with ``--out docs/images``). ``--quick`` trains 3 epochs on 64
environments, scoring every epoch: a check that the script runs.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch loads: spin-waiting threads slow a busy machine

from _plot import arguments, output, reference_lines, save, shac_curve, subplots  # noqa: E402
from trajopt.rl import SHAC  # noqa: E402
from trajopt.rl.tasks import P3_SHAC, P3_STARTS, evaluator, references, task  # noqa: E402

OPTIONS = dict(P3_SHAC, critic_lr=1e-3, reward_scale=0.01, critic_iterations=8, eval_every=25)


def plot(logs, path):
    """Cost against training time and against environment steps, one line per CSV log."""
    fig, axes = subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for log in logs:
        time, steps, cost = shac_curve(log)
        for ax, x in ((axes[0], time), (axes[1], steps)):
            ax.plot(x, cost, lw=1, label=f"SHAC, {os.path.basename(log)}")
    for ax, label in ((axes[0], "training time (s)"), (axes[1], "environment steps")):
        reference_lines(ax, references("P3"))
        ax.set_xlabel(label)
        ax.set_yscale("log")
    axes[0].set_ylabel("mean closed-loop cost, 32 starts")
    axes[0].legend(fontsize=8)
    save(fig, path)


def main(argv=None):
    def extra(parser):
        parser.add_argument("--seconds", type=float, default=300.0, help="training time (default 300)")
        parser.add_argument("--epochs", type=int, default=OPTIONS["epochs"], help="length of the LR schedule")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue from FOLDER/shac_cartpole.pt")
        parser.add_argument("--plot-only", nargs="+", metavar="LOG", help="only plot these CSV logs")
    args = arguments(__doc__, argv, extra)
    figure = output(args.out, "shac_cartpole.png")
    if args.plot_only:
        return plot(args.plot_only, figure)
    log, ckpt = os.path.join(args.out, "shac_cartpole.csv"), os.path.join(args.out, "shac_cartpole.pt")
    t = task("P3", 64, **P3_STARTS)
    options = {**OPTIONS, "epochs": args.epochs, **(dict(eval_every=1) if args.quick else {})}
    shac = SHAC(t["env"], seed=args.seed, evaluate=evaluator(t), log=log, checkpoint=ckpt, checkpoint_every=25,
                **options)
    if args.resume:
        shac.load(ckpt)
    shac.train(**(dict(epochs=3) if args.quick else dict(time_limit=args.seconds)))
    shac.save(ckpt)
    plot([log], figure)


if __name__ == "__main__":
    main()
