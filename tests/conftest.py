import pytest
import torch

from trajopt.problems import reference as problems


def p1_tensors(B, T, n, m, seed=0, dtype=torch.float64):
    """P1 (random time-varying LQR) as tensors, and its numpy dict for the dense reference."""
    p = problems.lqr_problem(B=B, T=T, n=n, m=m, seed=seed)
    return {k: torch.tensor(v, dtype=dtype) for k, v in p.items()}, p


@pytest.fixture
def p1():
    return p1_tensors


def p1_linear_quadratic(B, T=12, n=4, m=2):
    """The first problem of P1 as a time-varying ``LinearDynamics`` and ``QuadraticCost`` with ``B`` starts,
    and its LQR solution: ``(model, cost, x0 (B, n), lqr solution)``."""
    import dynamics
    import trajopt
    t, _ = p1_tensors(B=B, T=T, n=n, m=m)
    F, f, C, c = (t[k][0] for k in ("F", "f", "C", "c"))
    model = dynamics.LinearDynamics(F[..., :n], F[..., n:], f)
    ref = trajopt.lqr(*(z.expand(B, *z.shape) for z in (F, f, C, c)), t["x0"])
    return model, trajopt.QuadraticCost(C, c), t["x0"], ref


@pytest.fixture
def p1_lq():
    return p1_linear_quadratic
