"""Imitation learning through a differentiable MPC layer (after Amos et al. 2018, "Differentiable MPC").

An expert controls the P2 pendulum (mass 1, length 1) with box-constrained iLQR. A learner has the
same MPC on a pendulum of the wrong mass and length; the two physical parameters are learned by
L-BFGS on the squared difference between the learner's and the expert's planned controls,
the gradient flowing through the converged solution by the implicit route of ``trajopt.ilqr``.
Run ``python examples/imitation.py [--out FOLDER] [--quick]`` to print the fit and save
``FOLDER/imitation.png`` (default ./figures; the docs' figure is ``--out docs/images``).
"""
import torch
from _plot import arguments, output, save, subplots

import dynamics
import trajopt
from trajopt.problems import reference

D64 = dict(dtype=torch.float64)
TRUE = dict(m=1.0, l=1.0)


def pendulum_mpc(m, l, horizon=20):
    P = reference.PENDULUM
    model = dynamics.Pendulum(m=m, l=l).discretize()
    model.model.g.requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(2 * torch.tensor(P["Q"]), 2 * torch.tensor([[P["R"]]]))
    return trajopt.MPC(model, cost, horizon, u_lower=-P["u_max"], u_upper=P["u_max"], max_iter=200, grad_tol=1e-9)


def starts(B=16, seed=0):
    """States around upright, where the expert's controls are mostly inside their bounds (informative)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([0.6 * (2 * torch.rand(B, generator=g, **D64) - 1),
                        1.0 * (2 * torch.rand(B, generator=g, **D64) - 1)], -1)


def learn(evaluations=30, m=1.6, l=0.7, B=16, progress=True):
    """Fit mass and length by L-BFGS; returns the learner's MPC and the history of (loss, m, l) per evaluation."""
    x0 = starts(B)
    with torch.no_grad():
        _, expert = pendulum_mpc(**TRUE)(x0)
    learner = pendulum_mpc(m, l)
    params = [learner.dynamics.model.m, learner.dynamics.model.l]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=evaluations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-15)
    history = []

    def closure():
        learner.reset()
        _, plan = learner(x0)
        loss = ((plan.U - expert.U) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        history.append((loss.item(), params[0].item(), params[1].item()))
        if progress:
            print(f"evaluation {len(history):3d}  loss {history[-1][0]:.3e}  m {history[-1][1]:.6f}  "
                  f"l {history[-1][2]:.6f}")
        return loss

    optimizer.step(closure)
    return learner, history


def main(argv=None):
    args = arguments(__doc__, argv)
    _, history = learn(**(dict(evaluations=3, B=4) if args.quick else {}))   # --quick: 3 L-BFGS evaluations
    loss, m, l = zip(*history)
    print(f"final: m {m[-1]:.4f} (true 1), l {l[-1]:.4f} (true 1), loss {loss[-1]:.2e}")
    fig, (a, b) = subplots(1, 2, figsize=(8, 3))
    a.semilogy(loss)
    a.set(xlabel="evaluation (L-BFGS)", ylabel="imitation loss")
    b.plot(m, label="mass")
    b.plot(l, label="length")
    b.axhline(1.0, color="k", lw=0.5)
    b.set(xlabel="evaluation (L-BFGS)", ylabel="parameter")
    b.legend()
    save(fig, output(args.out, "imitation.png"))


if __name__ == "__main__":
    main()
