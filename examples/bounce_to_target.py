"""Throw a ball so that, after one bounce off the ground, it passes through a target: by gradient.

The smoothed-contact ball (dynamics.contact.BouncingMass) is differentiable through the
bounce, so the initial velocity can be found by Newton's method on the miss at a fixed
time, from several initial guesses at once (a batch). Run ``python examples/bounce_to_target.py
[--out FOLDER] [--quick]`` to print the result and save ``FOLDER/bounce_to_target.png`` (default ./figures;
the docs' figure is ``--out docs/images``).
"""
from __future__ import annotations

import torch
from _plot import arguments, output, save, subplots

import trajopt
from dynamics.contact import BouncingMass

D64 = dict(dtype=torch.float64)


def throw(model, v0: torch.Tensor, start, T: int):
    """States ``(B, T+1, 4)`` of throws from ``start (2,)`` with initial velocities ``v0 (B, 2)``."""
    x0 = torch.cat([torch.as_tensor(start, **D64).expand(v0.shape[0], 2), v0], -1)
    return trajopt.rollout(model, x0, torch.zeros(v0.shape[0], T, 2, **D64))


TARGET = (1.6, 0.39)      # reached after one bounce, 1 s after a throw from (0, 1) at about (2.0, -1.0) m/s


def optimize(target=TARGET, start=(0.0, 1.0), duration=1.0, dt=2e-3, k=50.0, mu=0.1, guesses=None,
             iterations=8):
    """Newton's method on the miss, per throw: ``v0 <- v0 - J^-1 (p_T - target)`` with ``J = d p_T / d v0``.

    Returns the initial velocities ``(B, 2)``, the misses ``(B,)`` in metres and the trajectories.
    Each throw has its own 2x2 Jacobian (two backward passes through the rollout give all of them).
    """
    model = BouncingMass(k=k, stiffness=1e4, restitution=0.8, mu=mu, friction_k=5.0).discretize(dt)
    T = round(duration / dt)
    v0 = torch.tensor([[1.5, -0.5], [2.5, -1.5], [1.8, 0.0], [2.2, -2.0]] if guesses is None else guesses, **D64)
    goal = torch.tensor(target, **D64)
    for _ in range(iterations):
        v0.requires_grad_(True)
        residual = throw(model, v0, start, T)[:, -1, :2] - goal
        J = torch.stack([torch.autograd.grad(residual[:, i].sum(), v0, retain_graph=i == 0)[0] for i in range(2)], 1)
        step = torch.linalg.solve(J, residual.detach().unsqueeze(-1)).squeeze(-1)
        v0 = (v0.detach() - step.clamp(-1.0, 1.0))          # a trust region of 1 m/s per step
    with torch.no_grad():
        X = throw(model, v0, start, T)
        return v0, (X[:, -1, :2] - goal).norm(dim=-1), X


def main(argv=None, target=TARGET):
    args = arguments(__doc__, argv)
    # --quick: a coarser time step and three Newton steps (the misses are then not yet small)
    v0, miss, X = optimize(target, **(dict(dt=1e-2, iterations=3) if args.quick else {}))
    for v, d in zip(v0.tolist(), miss.tolist()):
        print(f"initial velocity ({v[0]:+.4f}, {v[1]:+.4f}) m/s: miss {d:.2e} m")
    best = int(miss.argmin())
    print(f"best of {len(miss)} guesses: ({v0[best, 0]:+.4f}, {v0[best, 1]:+.4f}) m/s, miss {miss[best]:.1e} m")
    fig, ax = subplots(figsize=(6, 3))
    for b in range(X.shape[0]):
        ax.plot(X[b, :, 0], X[b, :, 1], label=f"v0 = ({v0[b, 0]:.2f}, {v0[b, 1]:.2f})")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.plot(*target, "r*", ms=12, label="target")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.legend(fontsize=7)
    save(fig, output(args.out, "bounce_to_target.png"))


if __name__ == "__main__":
    main()
