"""Learned-model suite: P2 (Pendulum-v1 physics) from 10k random-control transitions, and system identification.

Reports one-step and 20-step open-loop RMS errors (rad, rad/s together) of the MLP, the residual
model on a pendulum whose mass is 20% wrong, the ensemble and the wrong physics alone; the
ensemble's predicted variance on and off the training distribution; and the parameters that
system identification recovers from rollouts with 1% noise, by each route.
"""
from __future__ import annotations

import math
import time
import warnings

import torch

import dynamics
from benchmarks.timing import table
from dynamics.learned import (MLPDynamics, ProbabilisticEnsemble, ResidualDynamics, collect_from_model,
                              fit, identify, open_loop_error)

D64 = dict(dtype=torch.float64)


def pendulum_starts(B, g):
    return torch.stack([(torch.rand(B, generator=g, **D64) * 2 - 1) * math.pi,
                        (torch.rand(B, generator=g, **D64) * 2 - 1)], -1)


def learned_models(transitions=10_000, progress=True):
    g = torch.Generator().manual_seed(0)
    true = dynamics.Pendulum().discretize()
    data = collect_from_model(true, pendulum_starts(transitions // 100, g), 100, -2.0, 2.0, generator=g)
    gt = torch.Generator().manual_seed(1)
    x0, U = pendulum_starts(200, gt), torch.rand(200, 20, 1, generator=gt, **D64) * 4 - 2
    rows, ensemble = [], None
    candidates = [("wrong physics (mass +20%)", dynamics.Pendulum(m=1.2).discretize()),
                  ("MLPDynamics", MLPDynamics(2, 1)),
                  ("ResidualDynamics (mass +20% base)", ResidualDynamics(dynamics.Pendulum(m=1.2).discretize())),
                  ("ProbabilisticEnsemble (5)", ProbabilisticEnsemble(2, 1, members=5))]
    for name, model in candidates:
        start = time.perf_counter()
        history = None
        if name != "wrong physics (mass +20%)":
            history = fit(model, data, epochs=200, lr=3e-3, patience=20, progress=progress)
        err = open_loop_error(model, true, x0, U)
        rows.append({"model": name, "one_step": float(err[0]), "twenty_step": float(err[19]),
                     "epochs": None if history is None else history["epochs"], "seconds": time.perf_counter() - start})
        if isinstance(model, ProbabilisticEnsemble):
            ensemble = model
    far = torch.stack([torch.rand(200, generator=gt, **D64) * 2 + 6, torch.rand(200, generator=gt, **D64) * 10 + 20], -1)
    with torch.no_grad():
        var_in = ensemble.predict(x0, U[:, 0])[1].mean()
        var_out = ensemble.predict(far, U[:, 0])[1].mean()
    return rows, float(var_in), float(var_out)


def system_identification():
    g = torch.Generator().manual_seed(0)
    pend_x0 = torch.stack([(torch.rand(100, generator=g, **D64) * 2 - 1) * math.pi,
                           torch.rand(100, generator=g, **D64) * 2 - 1], -1)
    bike_x0 = torch.cat([torch.randn(100, 3, generator=g, **D64),
                         (torch.rand(100, 1, generator=g, **D64) * 2 - 1) * 0.5], -1)
    cases = [
        ("pendulum m, l", collect_from_model(dynamics.Pendulum().discretize(), pend_x0, 100, -2.0, 2.0,
                                             relative_noise=0.01, generator=torch.Generator().manual_seed(1)),
         lambda: dynamics.Pendulum(m=1.3, l=0.8).discretize(), ["model.m", "model.l"], [1.0, 1.0]),
        ("bicycle L, lr", collect_from_model(dynamics.KinematicBicycle().discretize(), bike_x0, 50,
                                             torch.tensor([-5.0, -0.5], **D64), torch.tensor([5.0, 0.5], **D64),
                                             relative_noise=0.01, generator=torch.Generator().manual_seed(2)),
         lambda: dynamics.KinematicBicycle(L=3.0, lr=1.0).discretize(), ["model.L", "model.lr"], [2.5, 1.25]),
    ]
    rows = []
    for label, data, make, names, truth in cases:
        for method in ("lbfgs", "adam", "levenberg_marquardt"):
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = identify(make(), data, names, method=method, steps=500 if method == "adam" else 50)
            except ImportError:
                rows.append({"case": label, "method": method, "estimate": "theseus-ai not installed"})
                continue
            rows.append({"case": label, "method": method,
                         "estimate": ", ".join(f"{float(est[n]):.4f}" for n in names),
                         "max_rel_err": max(abs(float(est[n]) / t - 1) for n, t in zip(names, truth)),
                         "seconds": time.perf_counter() - start})
    return rows


def run(repeat: int = 1, progress: bool = True) -> str:
    rows, var_in, var_out = learned_models(progress=progress)
    sysid = system_identification()
    return "\n".join([
        "Learned models on P2, 10k random-control transitions (100 rollouts of 100 steps), float64",
        table(rows, [("model", "model", "s"), ("one_step", "1-step RMS", ".2e"), ("twenty_step", "20-step RMS", ".2e"),
                     ("epochs", "epochs", "d"), ("seconds", "s", ".1f")]),
        f"ensemble predicted variance: {var_in:.2e} on the training distribution, {var_out:.2e} off it "
        f"({var_out / var_in:.0f}x)",
        "",
        "System identification from rollouts with 1% noise (true: pendulum m = l = 1; bicycle L = 2.5, lr = 1.25)",
        table(sysid, [("case", "case", "s"), ("method", "method", "s"), ("estimate", "estimate", "s"),
                      ("max_rel_err", "max rel. error", ".2%"), ("seconds", "s", ".1f")]),
    ])
