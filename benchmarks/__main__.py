"""``python -m benchmarks [suite ...] [--repeat N] [--quick] [--out FOLDER]``: run benchmark suites and print their
reports. With no suite named it runs the tour: what the library does, in a minute or two."""
import argparse
import inspect
import sys

import benchmarks  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
import torch

from benchmarks import (box_lqr, collocation, gym_pendulum, ilqr, latency, learned, lqr, ppo, rl, sampling, shooting,
                        tour)
from benchmarks.timing import environment



def _mujoco(repeat: int = 20) -> str:
    from benchmarks import mujoco          # needs the mujoco extra: imported only when the suite runs
    return mujoco.run(repeat)


def _mujoco_mpc(repeat: int = 1, quick: bool = False) -> str:
    from benchmarks import mujoco_mpc
    return mujoco_mpc.run(repeat, quick=quick)


def _shac_mujoco(repeat: int = 1, quick: bool = False) -> str:
    from benchmarks import shac_mujoco
    return shac_mujoco.run(repeat, quick=quick)


def _value_mppi(repeat: int = 1, quick: bool = False) -> str:
    from benchmarks import value_mppi
    return value_mppi.run(repeat, quick=quick)


def _mbrl(repeat: int = 1, quick: bool = False) -> str:
    from benchmarks import mbrl
    return mbrl.run(repeat, quick=quick)


SUITES = {"tour": tour.run, "figures": tour.figures, "lqr": lqr.run, "box-lqr": box_lqr.run, "latency": latency.run, "ilqr": ilqr.run,
          "ilqr-optimality": lambda repeat: ilqr.optimality(), "learned": learned.run,
          "mpc-pendulum-v1": gym_pendulum.run, "mppi-pendulum-v1": gym_pendulum.run_mppi,
          "sampling": sampling.run, "shooting": shooting.run, "collocation": collocation.run,
          "shac": rl.run, "shac-tasks": rl.run_tasks, "shac-mpc": rl.run_mpc, "shac-learned": rl.run_learned,
          "ppo": ppo.run, "mujoco": _mujoco, "mujoco-mpc": _mujoco_mpc, "shac-mujoco": _shac_mujoco,
          "mbrl": _mbrl, "value-mppi": _value_mppi}

# what `--help` lists for each suite: purpose, typical time on the shared 2-core machine (rough; the training suites
# run for a fixed budget), and the optional packages it needs beyond `pip install -e ".[bench]"` (peers add columns
# when importable and are never required)
ABOUT = {
    "tour": ("P1-P4 by every solver family, gradients against central differences, a Pendulum-v1 closed loop; "
             "writes OUT/tour.png (the default suite)", "1-2 min", "gymnasium (for the closed loop)"),
    "figures": ("regenerate the docs' figures: runs every example into OUT (default docs/images)", "~2 min", "-"),
    "lqr": ("P1 LQR: accuracy against a dense KKT solve; forward, backward times against peers", "~2 min",
            "optional peers: mpc, pypose"),
    "box-lqr": ("bounded LQR (interior point) against box-DDP and Clarabel, Frey et al. 2025's setup", "~2 min",
                "cvxpy, clarabel"),
    "latency": ("batch-one latency: LQR against B and T (sequential, time-parallel), compile=True against eager with "
                "compile times, MPC steps at B=1 (--quick: fewer sizes, no compiling); writes OUT/latency.png",
                "~15 min", "optional peer: mpc"),
    "ilqr": ("P2/P3 box iLQR at B = 1, 32, 256 (--quick: 1, 32) against mpc.pytorch", "~10 min", "optional peer: mpc"),
    "ilqr-optimality": ("iLQR's optima against scipy's L-BFGS-B on P2/P3", "~5 min", "-"),
    "learned": ("learned models of P2 from 10k transitions; system identification", "~5 min", "theseus-ai (optional)"),
    "mpc-pendulum-v1": ("iLQR MPC closed loop on Gymnasium Pendulum-v1, 100 episodes (--quick: 10)", "~5 min",
                        "gymnasium"),
    "mppi-pendulum-v1": ("MPPI MPC closed loop on Gymnasium Pendulum-v1, 100 episodes (--quick: 10)", "~5 min",
                         "gymnasium"),
    "sampling": ("MPPI/CEM against iLQR on P2, P4; MPPI against pytorch_mppi in closed loop", "~10 min",
                 "optional peer: pytorch-mppi"),
    "shooting": ("single shooting (L-BFGS, Adam) against iLQR on P2, P4", "~3 min", "-"),
    "collocation": ("transcription order; collocation and multiple shooting on P2-P4", "~5 min",
                    "theseus-ai (optional back end)"),
    "shac": ("SHAC on P3, 3 seeds x 300 s (--quick: 1 x 60 s)", "15 min", "-"),
    "shac-tasks": ("SHAC on the pendulum, pusher and bicycle tasks, 300 s each (--quick: 60 s)", "15 min", "-"),
    "shac-mpc": ("MPC policies (MPPI, iLQR inside) trained by SHAC on P2, 300 s per run", "25 min", "-"),
    "shac-learned": ("SHAC inside a learned ensemble of P2, 4 rounds of 60 s (--quick: 2 x 30 s)", "~6 min", "-"),
    "ppo": ("PPO (stable-baselines3) on P3, 3 seeds x 900 s", "45 min", "rl extra"),
    "mujoco": ("MuJoCoDynamics: batched steps and Jacobians against mujoco.rollout and loops over rows", "~3 min",
               "mujoco extra"),
    "mujoco-mpc": ("iLQR and MPPI MPC on the Gymnasium MuJoCo tasks (InvertedDoublePendulum 10 x 1000 steps, "
                   "HalfCheetah, Hopper); --quick: fewer seeds and steps", "25+ min", "mujoco extra"),
    "shac-mujoco": ("SHAC through MuJoCo (HalfCheetah-v5) against stable-baselines3's PPO and SAC at the same wall "
                    "time, 3 seeds x 300 s each (--quick: 1 x 60 s)", "50 min", "mujoco and rl extras"),
    "value-mppi": ("value-guided MPPI (TD-MPC's idea: learned critic and policy prior, known cost, the PETS "
                   "ensemble) on Pendulum-v1: 5,000 env steps, then 100 evaluation episodes (--quick: 1,000 steps, "
                   "10 episodes)", "~15 min", "gymnasium"),
    "mbrl": ("PETS (ensemble, TS-1, CEM) on Pendulum-v1: 5,000 env steps, then 100 evaluation episodes "
             "(--quick: 1,000 steps, 10 episodes); MBPO and SAC (Pendulum-v1, InvertedPendulum-v5) by "
             "`python -m benchmarks.mbrl --method mbpo|sac`", "~25 min", "gymnasium (MBPO, SAC: rl extra)"),
}


def suites_table() -> str:
    """The suites with their purpose, typical time and extra packages, for ``--help``."""
    width = max(len(name) for name in SUITES)
    lines = ["suites (typical time on a shared 2-core machine, rough; extra packages beyond the bench extra):"]
    for name in SUITES:
        what, seconds, needs = ABOUT.get(name, ("", "?", "-"))
        lines.append(f"  {name.ljust(width)}  {seconds:8}  needs: {needs}")
        lines.append(f"  {' ' * width}  {what}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__, epilog=suites_table(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", default=["tour"], help="suites to run (listed below; default: tour)")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes where a suite has them (ilqr: B = 1, 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", help="folder for a suite's figures (tour: ./figures, figures: docs/images)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.suites if s not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {unknown}; choose from {sorted(SUITES)}")
    torch.set_num_threads(args.threads)
    print(environment())
    for name in args.suites:
        print()
        accepts = inspect.signature(SUITES[name]).parameters
        options = {"quick": True} if args.quick and "quick" in accepts else {}
        if args.out is not None and "out" in accepts:
            options["out"] = args.out
        print(SUITES[name](repeat=args.repeat, **options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
