import math

import pytest
import torch

import dynamics
import trajopt

D64 = dict(dtype=torch.float64)


def pendulum(T=40, u_max=2.0):
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), torch.tensor([[0.002]], **D64))
    t = torch.arange(T, **D64) * 0.05
    guesses = torch.stack([torch.zeros(T, **D64), u_max * torch.sin(2 * math.pi * t / 1.6),
                           -u_max * torch.sin(2 * math.pi * t / 1.2)]).unsqueeze(-1)
    return model, cost, guesses, dict(u_lower=-u_max, u_upper=u_max, max_iter=200)


def test_multistart_keeps_the_cheapest_of_the_separately_screened_guesses():
    model, cost, guesses, options = pendulum()
    x0 = torch.tensor([[math.pi, 0.0], [1.0, -0.5]], **D64)
    sol = trajopt.multistart(model, cost, x0, guesses, screen_iter=1, grad=None, **options)
    screened = dict(options, max_iter=1)
    alone = torch.tensor([[float(trajopt.ilqr(model, cost, x0[b], guesses[k], grad=None, **screened).cost)
                           for k in range(len(guesses))] for b in range(len(x0))], **D64)
    torch.testing.assert_close(sol.history["candidates"], alone, rtol=1e-9, atol=0)   # the batch changes nothing
    assert (alone.max(1).values > 1.001 * alone.min(1).values).all()      # after one iteration the guesses differ
    torch.testing.assert_close(alone.gather(1, sol.history["choice"].unsqueeze(1))[:, 0], alone.min(1).values)
    assert sol.converged.all() and (sol.cost <= alone.min(1).values).all()


def test_multistart_with_a_short_screening_still_converges_and_is_differentiable():
    model, cost, guesses, options = pendulum()
    x0 = torch.tensor([[math.pi, 0.0], [1.0, -0.5]], **D64, requires_grad=True)
    sol = trajopt.multistart(model, cost, x0, guesses, screen_iter=5, **options)
    assert sol.converged.all()
    (g,) = torch.autograd.grad(sol.cost.sum(), x0)
    assert torch.isfinite(g).all() and (g != 0).any()


def test_multistart_rejects_bad_guesses():
    model, cost, guesses, options = pendulum()
    x0 = torch.zeros(2, 2, **D64)
    with pytest.raises(ValueError, match=r"U_inits must be \(K, T, m\) or \(B, K, T, m\)"):
        trajopt.multistart(model, cost, x0, guesses[..., 0], **options)
    with pytest.raises(ValueError, match="U_inits has 3 problems, x0 has 2"):
        trajopt.multistart(model, cost, x0, guesses.expand(3, *guesses.shape), **options)
