"""``python -m benchmarks [suite ...] [--repeat N] [--quick]``: run benchmark suites and print their reports."""
import argparse
import inspect
import sys

import benchmarks  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch

from benchmarks import box_lqr, collocation, gym_pendulum, ilqr, learned, lqr, ppo, rl, sampling, shooting
from benchmarks.timing import environment

SUITES = {"lqr": lqr.run, "box-lqr": box_lqr.run, "ilqr": ilqr.run, "ilqr-optimality": lambda repeat: ilqr.optimality(), "learned": learned.run,
          "mpc-pendulum-v1": gym_pendulum.run, "mppi-pendulum-v1": gym_pendulum.run_mppi,
          "sampling": sampling.run, "shooting": shooting.run, "collocation": collocation.run,
          "shac": rl.run, "shac-tasks": rl.run_tasks, "shac-mpc": rl.run_mpc, "shac-learned": rl.run_learned,
          "ppo": ppo.run}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("suites", nargs="*", default=["lqr"], help=f"suites to run, from {sorted(SUITES)}")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes where a suite has them (ilqr: B = 1, 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    torch.set_num_threads(args.threads)
    print(environment())
    for name in args.suites:
        print()
        quick = args.quick and "quick" in inspect.signature(SUITES[name]).parameters
        print(SUITES[name](repeat=args.repeat, **({"quick": True} if quick else {})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
