"""pytest-benchmark cases for LQR on P1: ``pytest benchmarks`` (needs the ``bench`` extra).

``python -m benchmarks lqr`` prints the same sizes side by side with the peers; these cases keep
a history (``--benchmark-autosave``) and let ``--benchmark-compare`` catch regressions.
"""
import pytest
import torch

import trajopt
from benchmarks.lqr import ARGS, SIZES, loss_of, p1_inputs


@pytest.mark.parametrize("B,T,n,m", SIZES, ids=[f"B{b}-T{t}-n{n}-m{m}" for b, t, n, m in SIZES])
def test_lqr_forward(benchmark, B, T, n, m):
    t = p1_inputs(B, T, n, m)
    sol = benchmark(lambda: trajopt.lqr(*(t[k] for k in ARGS), grad=None))
    assert torch.isfinite(sol.U).all()


@pytest.mark.parametrize("B,T,n,m", SIZES, ids=[f"B{b}-T{t}-n{n}-m{m}" for b, t, n, m in SIZES])
def test_lqr_forward_backward(benchmark, B, T, n, m):
    t = p1_inputs(B, T, n, m, requires_grad=True)

    def step():
        for v in t.values():
            v.grad = None
        sol = trajopt.lqr(*(t[k] for k in ARGS))
        loss_of(sol.X, sol.U, sol.cost.sum()).backward()
    benchmark(step)
    assert all(torch.isfinite(v.grad).all() for v in t.values())
