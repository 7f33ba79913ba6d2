"""Independent references the tests hold the solvers against (scipy), owned by the tests."""
from __future__ import annotations

import scipy.optimize
import torch

import trajopt


def lbfgsb(problem: trajopt.Problem, b: int, U_start: torch.Tensor, **options) -> float:
    """Cost reached by scipy's L-BFGS-B (tight tolerances, the problem's control bounds) on problem ``b``'s
    flattened controls, started from ``U_start (T, m)``."""
    shape = U_start.shape
    x0 = problem.x0[b:b + 1].detach()

    def f(u):
        U = torch.tensor(u.reshape(1, *shape), dtype=problem.dtype, requires_grad=True)
        with problem.evaluating(), problem.at(torch.tensor([b])):      # row b's own per-problem tensors
            J = problem.cost(trajopt.rollout(problem.dynamics, x0, U), U).sum()
        J.backward()
        return J.item(), U.grad.double().numpy().ravel()
    bounds = None
    if problem.u_lower is not None or problem.u_upper is not None:
        inf = torch.full(shape, float("inf"), dtype=torch.float64)
        lo = -inf if problem.u_lower is None else problem.u_lower[b].double()
        hi = inf if problem.u_upper is None else problem.u_upper[b].double()
        bounds = list(zip(lo.numpy().ravel(), hi.numpy().ravel()))
    options = dict(dict(ftol=1e-15, gtol=1e-12, maxiter=20000, maxfun=50000), **options)
    return float(scipy.optimize.minimize(f, U_start.detach().double().numpy().ravel(), jac=True, method="L-BFGS-B",
                                         bounds=bounds, options=options).fun)
