"""Collocation knots against the trajectory integrated finely under the same controls (P2's pendulum).

A coarse Hermite-Simpson and trapezoidal transcription (20 intervals of 0.25 s) of a pendulum problem is
solved with the scipy back end; the figure draws their knots over the RK4 integration of the continuous
model with 50 substeps per interval, under each solution's held controls. Hermite-Simpson's knots lie on
the integrated curve; the trapezoidal ones drift off it. Run ``python examples/plot_collocation.py [--out FOLDER]
[--quick]`` to save ``FOLDER/collocation_knots.png`` (default ./figures; the docs' figure is ``--out docs/images``).
"""
import torch
from _plot import arguments, output, save, subplots

import dynamics
import trajopt

D64 = dict(dtype=torch.float64)


def integrate(model, x0, U, dt, substeps=50):
    """RK4 with ``substeps`` per held control: times ``(T substeps + 1,)`` and states ``(T substeps + 1, n)``."""
    fine = model.discretize(dt / substeps, "rk4")
    U_fine = U.repeat_interleave(substeps, 0)
    X = trajopt.rollout(fine, x0, U_fine)
    return torch.arange(len(X)) * dt / substeps, X


def main(argv=None):
    args = arguments(__doc__, argv)
    T, dt = (8, 0.5) if args.quick else (20, 0.25)          # --quick: 8 intervals of 0.5 s
    model = dynamics.Pendulum().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), 0.02 * torch.eye(1, **D64))
    x0 = torch.tensor([2.0, 0.0], **D64)
    # the continuous model discretized at the intervals' length: collocation reaches (model, dt) through the
    # problem; the RK4 rollout of the zero controls is its initial guess for the knots
    problem = trajopt.Problem(model.discretize(dt, "rk4"), cost, x0, horizon=T, u_lower=-2.0, u_upper=2.0)
    fig, axes = subplots(1, 2, figsize=(10, 3.6), sharey=True)
    errors = {}
    for ax, method in zip(axes, ("hermite_simpson", "trapezoidal")):
        sol = trajopt.collocation(problem, method=method, backend=trajopt.Scipy())
        t, X = integrate(model, x0, sol.U, dt)
        ax.plot(t, X[:, 0], color="tab:blue", lw=1.5, label="RK4, 50 substeps, same controls")
        ax.plot(torch.arange(T + 1) * dt, sol.X[:, 0], "o", color="tab:red", ms=4, label="collocation knots")
        errors[method] = float((sol.X - X[::50]).abs().max())
        ax.set_title(f"{method.replace('_', '-')}: largest knot error {errors[method]:.1e}")
        ax.set_xlabel("time (s)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("angle (rad, 0 upright)")
    save(fig, output(args.out, "collocation_knots.png"))
    print("largest knot error:", errors)


if __name__ == "__main__":
    main()
