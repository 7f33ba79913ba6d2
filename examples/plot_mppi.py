"""MPPI's samples around its plan on P2 (pendulum swing-up from the hanging start).

Thirty MPPI iterations (1000 samples, time-correlated noise) move the plan from zero controls; the
figure shows, for three of those iterations, a subset of that iteration's sampled angle trajectories
(shaded by their weight) around the plan they perturb, and the plan after the update. Run
``python examples/plot_mppi.py [--out FOLDER] [--quick]`` to save ``FOLDER/mppi_samples.png`` (default
./figures; the docs' figure is ``--out docs/images``).
"""
import math

import torch
from _plot import arguments, output, save, subplots

import trajopt
from trajopt.problems import pendulum

OPTIONS = dict(samples=1000, temperature=0.1, noise_std=2.0, correlation=0.9)


def samples(U, generator, u_max):
    """The ``N`` control sequences one :func:`trajopt.mppi` iteration draws around the plan ``U (1, T, 1)`` with
    this generator state, ``(N, T, 1)``: the same call of the generator (one ``randn`` of ``(T, m, 1, 1 + N)``,
    the plan itself in column 0), time-correlated, scaled, clamped into the bounds."""
    T, m, N, rho = U.shape[1], U.shape[2], OPTIONS["samples"], OPTIONS["correlation"]
    w = torch.randn(T, m, 1, 1 + N, dtype=U.dtype, generator=generator)[:, :, 0, 1:]      # (T, m, N)
    for t in range(1, T):
        w[t] = rho * w[t - 1] + (1 - rho ** 2) ** 0.5 * w[t]
    return (U[0].unsqueeze(-1) + OPTIONS["noise_std"] * w).clamp(-u_max, u_max).permute(2, 0, 1)


def figure(path, shown=(0, 5, 29), lines=60):
    """Run ``max(shown) + 1`` MPPI iterations, draw the iterations ``shown``, save to ``path``; the final cost."""
    problem = pendulum(B=1)                   # P2 from the hanging start: T = 100, |u| <= 2, zero controls
    model, cost, x0, T = problem.dynamics, problem.cost, problem.x0, problem.T
    u_max = float(problem.u_upper.max())
    generator = torch.Generator().manual_seed(0)
    U = problem.U_init
    t = torch.arange(T + 1) * 0.05
    fig, axes = subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), sharey=True)
    panel = 0
    for it in range(max(shown) + 1):
        if it in shown:      # redraw this iteration's samples with the same generator state, for the figure
            state = generator.get_state()
            trial = samples(U, generator, u_max)
            X = trajopt.rollout(model, x0.expand(len(trial), 2), trial)
            J = cost(X, trial)
            w = torch.softmax(-(J - J.min()) / OPTIONS["temperature"], 0)
            generator.set_state(state)
        new = trajopt.mppi(problem.replace(U_init=U), max_iter=1, generator=generator, **OPTIONS)
        if it in shown:
            ax = axes[panel]
            shade = (w / w.max()).clamp_min(0.05)
            for i in torch.linspace(0, len(trial) - 1, lines).long().tolist():
                ax.plot(t, X[i, :, 0], color="tab:blue", alpha=0.1 + 0.6 * float(shade[i]), lw=0.7)
            plan = trajopt.rollout(model, x0, U)[0]
            ax.plot(t, plan[:, 0], color="k", lw=1.5, ls="--", label="plan sampled around")
            ax.plot(t, new.X[0, :, 0], color="tab:red", lw=2, label=f"plan after the update (J={float(new.cost):.0f})")
            ax.axhline(0.0, color="gray", lw=0.5)
            ax.set_ylim(-2 * math.pi, 3 * math.pi)
            ax.set_title(f"MPPI iteration {it + 1}")
            ax.set_xlabel("time (s)")
            ax.legend(loc="upper right", fontsize=7)
            panel += 1
        U = new.U
    axes[0].set_ylabel("angle (rad, 0 upright)")
    axes[0].set_yticks([-math.pi, 0, math.pi, 2 * math.pi], ["-pi", "0", "pi", "2pi"])
    save(fig, path)
    return float(new.cost)


def main(argv=None):
    args = arguments(__doc__, argv)
    shown = (0, 1, 2) if args.quick else (0, 5, 29)          # --quick: three iterations
    cost = figure(output(args.out, "mppi_samples.png"), shown)
    print(f"cost after {max(shown) + 1} iterations: {cost:.2f}")


if __name__ == "__main__":
    main()
