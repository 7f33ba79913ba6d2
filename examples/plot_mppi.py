"""MPPI's samples around its plan on P2 (pendulum swing-up from the hanging start).

Thirty MPPI iterations (1000 samples, time-correlated noise) move the plan from zero controls; the
figure shows, for three of those iterations, a subset of that iteration's sampled angle trajectories
(shaded by their weight) around the plan they perturb, and the plan after the update. Run
``python examples/plot_mppi.py`` to save ``docs/images/mppi_samples.png``.
"""
import math

import torch
from _plot import save, subplots

import trajopt
from benchmarks.ilqr import problem
from trajopt.sampling import _perturbed

OPTIONS = dict(samples=1000, temperature=0.1, noise_std=2.0, correlation=0.9)


def main(path="docs/images/mppi_samples.png", shown=(0, 5, 29), lines=60):
    p = problem("P2 pendulum", 1)
    model, cost, x0, T, u_max = p["dynamics"], p["cost"], p["x0"][:1], p["T"], p["u_max"]
    generator = torch.Generator().manual_seed(0)
    U = torch.zeros(1, T, 1, dtype=torch.float64)
    t = torch.arange(T + 1) * 0.05
    fig, axes = subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), sharey=True)
    panel = 0
    for it in range(max(shown) + 1):
        if it in shown:      # redraw this iteration's samples with the same generator state, for the figure
            state = generator.get_state()
            bound = torch.full_like(U, u_max)
            trial = _perturbed(U, OPTIONS["samples"], -bound, bound, generator,
                               torch.tensor(OPTIONS["noise_std"], dtype=U.dtype), OPTIONS["correlation"])[0, 1:]
            X = trajopt.rollout(model, x0.expand(len(trial), 2), trial)
            J = cost(X, trial)
            w = torch.softmax(-(J - J.min()) / OPTIONS["temperature"], 0)
            generator.set_state(state)
        new = trajopt.mppi(model, cost, x0, U, iterations=1, u_lower=-u_max, u_upper=u_max, generator=generator,
                           **OPTIONS)
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


if __name__ == "__main__":
    print(f"cost after {max((0, 5, 29)) + 1} iterations: {main():.2f}")
