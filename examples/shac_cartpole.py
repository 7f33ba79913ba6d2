"""Train SHAC on P3 (cart-pole swing-up) with a CSV log and a checkpoint, then plot the learning curve.

    python examples/shac_cartpole.py [--seconds 300] [--seed 0] [--resume]

The log (``shac_cartpole.csv``) has one row per epoch; every 25th is scored as the problems are (the
deterministic policy closed loop from ``cartpole_x0(32, seed=0)``, mean ``trajectory_cost``). ``--resume``
continues from ``shac_cartpole.pt``. The plot goes to ``docs/images/shac_cartpole.png``: cost against
training time and against environment steps, beside box-constrained iLQR's open-loop optimum.
"""
import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks import rl  # noqa: E402
from examples._plot import save, subplots  # noqa: E402
from trajopt.rl import SHAC  # noqa: E402

OPTIONS = dict(rl.P3_SHAC, critic_lr=1e-3, reward_scale=0.01, critic_iterations=8, eval_every=25)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", default=".")
    args = parser.parse_args()
    log, ckpt = os.path.join(args.out, "shac_cartpole.csv"), os.path.join(args.out, "shac_cartpole.pt")
    t = rl.task("P3", 64, **rl.P3_STARTS)
    shac = SHAC(t["env"], seed=args.seed, evaluate=rl.evaluator(t), log=log, checkpoint=ckpt, checkpoint_every=25,
                **OPTIONS)
    if args.resume:
        shac.load(ckpt)
    shac.train(time_limit=args.seconds)
    shac.save(ckpt)
    rows = [r for r in csv.DictReader(open(log)) if r["eval_cost"] != "nan"]
    time, steps, cost = ([float(r[k]) for r in rows] for k in ("time", "env_steps", "eval_cost"))
    fig, axes = subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, x, label in ((axes[0], time, "training time (s)"), (axes[1], steps, "environment steps")):
        ax.plot(x, cost, label="SHAC, closed loop")
        ax.axhline(rl.ILQR_OPEN_LOOP["P3"], color="k", ls="--", lw=1, label="iLQR open loop (890.6)")
        ax.set_xlabel(label)
        ax.set_yscale("log")
    axes[0].set_ylabel("mean cost, 32 starts")
    axes[0].legend()
    save(fig, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images",
                           "shac_cartpole.png"))
    print(f"best {min(cost):.1f}, last {cost[-1]:.1f} after {time[-1]:.0f} s and {steps[-1]:,.0f} steps")


if __name__ == "__main__":
    main()
