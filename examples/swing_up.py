"""The swing-up recipe on P2: many initial guesses per start, solved in one batch, the cheapest kept.

From rest, box-constrained iLQR (like every local solver) stalls at the bottom holding full torque
(cost 748.98 from the hanging start). Pumping guesses (torque sinusoids of a few periods, either
sign, for one or two periods, then zero) lead it to swing-ups instead; ``trajopt.multistart`` solves
all of them for all 32 starts as one batch and keeps each start's cheapest solution. Run
``python examples/swing_up.py [--out FOLDER] [--quick]`` to print the costs and save ``FOLDER/swing_up.png``
(default ./figures; the docs' figure is ``--out docs/images``).
"""
import time

import torch
from _plot import arguments, output, save, subplots

import trajopt
import trajopt.problems
from trajopt.problems import pumping_guesses, reference

D64 = dict(dtype=torch.float64)
P = reference.PENDULUM


def swing_up(B=32, screen_iter=40, max_iter=300):
    problem = trajopt.problems.pendulum(B)
    guesses = pumping_guesses(P["T"], P["dt"], P["u_max"])
    sol = trajopt.multistart(problem, U_inits=guesses, screen_iter=screen_iter, max_iter=max_iter, grad=None)
    return problem, sol


def main(argv=None):
    args = arguments(__doc__, argv)
    # --quick: 2 starts, 5 screening and 20 final iterations (not converged: a check that the script runs)
    settings = dict(B=2, screen_iter=5, max_iter=20) if args.quick else {}
    t0 = time.perf_counter()
    problem, sol = swing_up(**settings)
    seconds = time.perf_counter() - t0
    B = problem.B
    plain = trajopt.ilqr(problem, max_iter=settings.get("max_iter", 300), grad=None)
    print(f"swing-up recipe: mean {sol.cost.mean():.2f} over {B} starts, hanging start {sol.cost[0]:.2f}, "
          f"{int(sol.converged.sum())}/{B} converged, {seconds:.1f} s")
    print(f"plain iLQR from zero controls: mean {plain.cost.mean():.2f}, hanging start {plain.cost[0]:.2f}")
    t = torch.arange(P["T"] + 1) * P["dt"]
    fig, (a, b) = subplots(1, 2, figsize=(9, 3.2))
    a.plot(t, sol.X[0, :, 0], label=f"recipe ({sol.cost[0]:.1f})")
    a.plot(t, plain.X[0, :, 0], label=f"from zero controls ({plain.cost[0]:.1f})")
    a.set(xlabel="time [s]", ylabel="angle (0 = upright)", title="hanging start")
    a.legend()
    b.plot(sol.cost_history[0], label="recipe, final solve")
    b.plot(plain.cost_history[0], label="from zero controls")
    b.set(xlabel="iteration", ylabel="cost", yscale="log", title="convergence, hanging start")
    b.legend()
    save(fig, output(args.out, "swing_up.png"))


if __name__ == "__main__":
    main()
