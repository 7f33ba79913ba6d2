"""pytest-benchmark cases for iLQR on P2 (pendulum swing-up), B=32, a short budget: ``pytest benchmarks``.

``python -m benchmarks ilqr`` prints the full comparison with mpc.pytorch; these cases keep a history
(``--benchmark-autosave``) for ``--benchmark-compare``. A solve takes seconds, so a few rounds only.
The backward case is the implicit route (problems not converged after 20 iterations get no gradient
through the solve, only through the final rollout).
"""
import torch

import trajopt.problems
from benchmarks.ilqr import solve

B, MAX_ITER, ROUNDS = 32, 20, 3


def test_ilqr_p2_forward(benchmark):
    p = trajopt.problems.pendulum(B)
    sol = benchmark.pedantic(lambda: solve(p, MAX_ITER, grad=None), rounds=ROUNDS)
    assert torch.isfinite(sol.cost).all()


def test_ilqr_p2_forward_backward(benchmark):
    x0 = trajopt.problems.pendulum(B).x0.clone().requires_grad_(True)
    p = trajopt.problems.pendulum(B, x0=x0)

    def step():
        x0.grad = None
        solve(p, MAX_ITER, grad="implicit").cost.sum().backward()
    benchmark.pedantic(step, rounds=ROUNDS)
    assert torch.isfinite(x0.grad).all()
