import pytest
import torch

from benchmarks import problems


def p1_tensors(B, T, n, m, seed=0, dtype=torch.float64):
    """P1 (random time-varying LQR) as tensors, and its numpy dict for the dense reference."""
    p = problems.lqr_problem(B=B, T=T, n=n, m=m, seed=seed)
    return {k: torch.tensor(v, dtype=dtype) for k, v in p.items()}, p


@pytest.fixture
def p1():
    return p1_tensors
