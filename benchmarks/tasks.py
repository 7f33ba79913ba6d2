"""The open-loop references of the pusher and bicycle tasks of :mod:`trajopt.rl.tasks` (the costs in its
``REFERENCES``).

:func:`reference` gives the open-loop optimum box-constrained iLQR reaches from a task's 32 scoring starts (for
the bicycle, warm-started from the Stanley controller, :func:`trajopt.rl.tasks.stanley`, a classical path
tracker).
"""
from __future__ import annotations

import copy

import torch

import trajopt
from trajopt.rl.tasks import PathTrackingCost, stanley


def reference(t: dict, max_iter: int = 500) -> dict:
    """Box-constrained iLQR's open-loop solutions from the task's 32 starts, in float64: from zero controls
    (pusher) or from the Stanley controller's closed loop (bicycle). Returns ``{"cost", "converged", "U"}``
    and, for the bicycle, ``"stanley"`` (the Stanley controller's mean closed-loop cost)."""
    model, cost = copy.deepcopy(t["model"]).double(), copy.deepcopy(t["cost"]).double()
    x0, T = t["x0"].double(), t["T"]
    out = {}
    if isinstance(cost, PathTrackingCost):
        X, U = [x0], []
        for _ in range(T):
            U.append(stanley(cost, X[-1]))
            X.append(model(X[-1], U[-1]))
        U_init = torch.stack(U, 1)
        out["stanley"] = float(cost(torch.stack(X, 1), U_init).mean())
    else:
        U_init = x0.new_zeros(len(x0), T, model.control_dim)
    with torch.no_grad():
        problem = trajopt.Problem(model, cost, x0, U_init=U_init, u_lower=t["u_lower"].double(),
                                  u_upper=t["u_upper"].double())
        sol = trajopt.ilqr(problem, max_iter=max_iter, grad=None)
    return dict(out, cost=float(sol.cost.mean()), converged=int(sol.converged.sum()), U=sol.U)
