"""Roll out every analytic model from a start of its own under simple controls and plot the trajectories.

Run ``python examples/models_gallery.py [--out FOLDER]`` to save ``FOLDER/models.png`` (default ./figures; the
docs' figure is ``--out docs/images``). It takes a second, so ``--quick`` changes nothing.
"""
import math

import torch
from _plot import arguments, output, save, subplots

import dynamics
import trajopt

D64 = dict(dtype=torch.float64)


def trajectories(T=100):
    """``name -> (X (T+1, n), labels)`` for each model under a fixed open-loop control."""
    t = torch.arange(T, **D64).unsqueeze(-1)
    cases = {
        "Pendulum (P2): pumping torque": (dynamics.Pendulum(), [math.pi - 0.1, 0.0], 2.0 * torch.sign(torch.sin(t / 6))),
        "CartPole (P3): push left and right": (dynamics.CartPole(), [0.0, 0.0, math.pi, 0.0], 5.0 * torch.sin(t / 8)),
        "KinematicBicycle (P4): constant steering": (dynamics.KinematicBicycle(), [0.0, 0.0, 0.0, 0.0],
                                                     torch.cat([torch.full_like(t, 3.0), 0.1 * torch.ones_like(t)], -1)),
        "Quadrotor2D: tilted thrust": (dynamics.Quadrotor2D(), [0.0] * 6,
                                       torch.cat([torch.full_like(t, 4.93), torch.full_like(t, 4.92)], -1)),
        "Acrobot: resonant torque": (dynamics.Acrobot(), [0.0] * 4, torch.sign(torch.sin(t / 3))),
    }
    out = {}
    for name, (model, x0, U) in cases.items():
        with torch.no_grad():
            out[name] = trajopt.rollout(model.discretize(), torch.tensor(x0, **D64), U)
    return out


def main(argv=None):
    args = arguments(__doc__, argv)
    trajs = trajectories()
    fig, axes = subplots(1, len(trajs), figsize=(3.2 * len(trajs), 3))
    for ax, (name, X) in zip(axes, trajs.items()):
        if "Bicycle" in name or "Quadrotor" in name:
            ax.plot(X[:, 0], X[:, 1])
            ax.set_xlabel("x")
            ax.set_ylabel("y" if "Bicycle" in name else "z")
        else:
            angle = 2 if "CartPole" in name else 0
            ax.plot(X[:, angle], label="angle")
            ax.plot(X[:, angle + 1 if "CartPole" in name else (1 if "Pendulum" in name else 2)], label="rate")
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=8)
    save(fig, output(args.out, "models.png"))


if __name__ == "__main__":
    main()
