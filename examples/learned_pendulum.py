"""Learn the pendulum of P2 from random-control transitions; compare open-loop predictions.

A pure network (MLPDynamics) and a residual model on physics with a 20% wrong mass
(ResidualDynamics) are fitted to 2,000 transitions; their 40-step open-loop predictions
from one start are plotted against the truth and the wrong physics. Run
``python examples/learned_pendulum.py [--out FOLDER] [--quick]`` to save ``FOLDER/learned.png`` (default
./figures; the docs' figure is ``--out docs/images``).
"""
import math

import torch
from _plot import arguments, output, save, subplots

import dynamics
import trajopt
from dynamics.learned import MLPDynamics, ResidualDynamics, collect_from_model, fit

D64 = dict(dtype=torch.float64)


def train(transitions=2000, epochs=60, progress=True):
    g = torch.Generator().manual_seed(0)
    true = dynamics.Pendulum().discretize()
    x0 = torch.stack([(torch.rand(transitions // 50, generator=g, **D64) * 2 - 1) * math.pi,
                      torch.rand(transitions // 50, generator=g, **D64) * 2 - 1], -1)
    data = collect_from_model(true, x0, 50, -2.0, 2.0, generator=g)
    network = MLPDynamics(2, 1, hidden=(64, 64))
    fit(network, data, epochs=epochs, lr=3e-3, batch_size=32, patience=epochs, progress=progress)
    residual = ResidualDynamics(dynamics.Pendulum(m=1.2).discretize())
    fit(residual, data, epochs=epochs, lr=3e-3, batch_size=32, patience=epochs, progress=progress)
    return {"truth": true, "wrong physics (mass +20%)": dynamics.Pendulum(m=1.2).discretize(),
            "MLPDynamics": network, "ResidualDynamics": residual}


def main(argv=None):
    args = arguments(__doc__, argv)
    models = train(**(dict(transitions=500, epochs=2, progress=False) if args.quick else {}))   # --quick: 2 epochs
    x0 = torch.tensor([[0.5, 0.0]], **D64)
    U = 1.5 * torch.sin(torch.arange(40, **D64) / 4).reshape(1, 40, 1)
    fig, ax = subplots(figsize=(6, 3))
    for name, model in models.items():
        with torch.no_grad():
            X = trajopt.rollout(model, x0, U)
        ax.plot(X[0, :, 0], label=name, lw=2.5 if name == "truth" else 1.2)
    ax.set_xlabel("step (0.05 s)")
    ax.set_ylabel("theta (rad)")
    ax.legend(fontsize=7)
    save(fig, output(args.out, "learned.png"))


if __name__ == "__main__":
    main()
