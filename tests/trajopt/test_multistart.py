import math

import pytest
import torch

import dynamics
import trajopt
from trajopt import Status

D64 = dict(dtype=torch.float64)


def pendulum(x0, T=40, u_max=2.0):
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), torch.tensor([[0.002]], **D64))
    t = torch.arange(T, **D64) * 0.05
    guesses = torch.stack([torch.zeros(T, **D64), u_max * torch.sin(2 * math.pi * t / 1.6),
                           -u_max * torch.sin(2 * math.pi * t / 1.2)]).unsqueeze(-1)
    return trajopt.Problem(model, cost, x0, horizon=T, u_lower=-u_max, u_upper=u_max), guesses


def test_multistart_keeps_the_cheapest_of_the_separately_screened_guesses():
    problem, guesses = pendulum(torch.tensor([[math.pi, 0.0], [1.0, -0.5]], **D64))
    sol = trajopt.multistart(problem, U_inits=guesses, screen_iter=1, grad=None, max_iter=200)
    alone = torch.tensor([[float(trajopt.ilqr(problem.select([b]).replace(U_init=guesses[k:k + 1]), grad=None,
                                              max_iter=1).cost)
                           for k in range(len(guesses))] for b in range(problem.B)], **D64)
    torch.testing.assert_close(sol.extras["candidates"], alone, rtol=1e-9, atol=0)   # the batch changes nothing
    assert (alone.max(1).values > 1.001 * alone.min(1).values).all()      # after one iteration the guesses differ
    torch.testing.assert_close(alone.gather(1, sol.extras["choice"].unsqueeze(1))[:, 0], alone.min(1).values)
    assert sol.converged.all() and (sol.cost <= alone.min(1).values).all()
    assert sol.extras["candidates"].shape == (2, 3) and sol.extras["choice"].shape == (2,)


def test_multistart_with_a_short_screening_still_converges_and_is_differentiable():
    x0 = torch.tensor([[math.pi, 0.0], [1.0, -0.5]], **D64, requires_grad=True)
    problem, guesses = pendulum(x0)
    sol = trajopt.multistart(problem, U_inits=guesses, screen_iter=5, max_iter=200)
    assert sol.converged.all()
    (g,) = torch.autograd.grad(sol.cost.sum(), x0)
    assert torch.isfinite(g).all() and (g != 0).any()


def test_multistart_on_an_unbatched_problem_and_with_guesses_per_problem():
    problem, guesses = pendulum(torch.tensor([math.pi, 0.0], **D64))
    sol = trajopt.multistart(problem, U_inits=guesses, screen_iter=5, grad=None, max_iter=200)
    assert sol.U.shape == (40, 1) and sol.cost.ndim == 0 and sol.extras["candidates"].shape == (3,)
    assert bool(sol.converged)
    batched, _ = pendulum(torch.tensor([[math.pi, 0.0], [math.pi, 0.0]], **D64))
    per = trajopt.multistart(batched, U_inits=torch.stack([guesses, guesses.flip(0)]), screen_iter=5, grad=None,
                             max_iter=200)
    torch.testing.assert_close(per.extras["candidates"][0], sol.extras["candidates"])
    torch.testing.assert_close(per.extras["candidates"][1], sol.extras["candidates"].flip(0))
    assert int(per.extras["choice"][1]) == 2 - int(sol.extras["choice"])
    torch.testing.assert_close(per.cost, sol.cost.expand(2))


def test_multistart_keeps_the_good_problems_when_all_guesses_of_one_diverge():
    """A guess whose screening is not finite loses; a problem none of whose guesses is finite is NOT_FINITE and
    the others are solved as they would be alone."""
    x0 = torch.tensor([[math.pi, 0.0], [0.0, 1.7e308], [1.0, -0.5]], **D64)
    problem, guesses = pendulum(x0)
    problem = problem.replace(u_lower=None, u_upper=None)                 # unbounded: 1e308 stays 1e308
    guesses = guesses.expand(3, *guesses.shape).clone()
    guesses[2, 1] = 1e308                                   # one bad guess of a good problem: it loses
    sol = trajopt.multistart(problem, U_inits=guesses, screen_iter=5, grad=None, max_iter=200)
    assert sol.status.tolist() == [Status.CONVERGED, Status.NOT_FINITE, Status.CONVERGED]
    assert torch.isinf(sol.extras["candidates"][1]).all() and float(sol.extras["candidates"][2, 1]) == float("inf")
    assert int(sol.extras["choice"][2]) != 1
    assert float(sol.cost[1]) == float("inf") and torch.equal(sol.X[1], x0[1].expand(41, 2))
    assert not torch.isnan(sol.X).any() and not torch.isnan(sol.cost_history).any()
    alone = trajopt.multistart(problem.select([0, 2]), U_inits=guesses[[0, 2]], screen_iter=5, grad=None,
                               max_iter=200)
    torch.testing.assert_close(sol.U[[0, 2]], alone.U, rtol=0, atol=0)
    torch.testing.assert_close(sol.cost_history[[0, 2]], alone.cost_history, rtol=0, atol=0)


def test_multistart_rejects_bad_guesses_and_options():
    problem, guesses = pendulum(torch.zeros(2, 2, **D64))
    with pytest.raises(ValueError, match=r"U_inits must be \(K, T, m\) or \(B, K, T, m\)"):
        trajopt.multistart(problem, U_inits=guesses[..., 0])
    with pytest.raises(ValueError, match="U_inits has 3 problems, the problem has B=2"):
        trajopt.multistart(problem, U_inits=guesses.expand(3, *guesses.shape))
    with pytest.raises(ValueError, match="U_inits has T=39 steps, the problem has T=40"):
        trajopt.multistart(problem, U_inits=guesses[:, 1:])
    with pytest.raises(TypeError, match="ilqr takes no option 'iterations'"):
        trajopt.multistart(problem, U_inits=guesses, iterations=3)
    with pytest.raises(ValueError, match="screen_iter must be an int"):
        trajopt.multistart(problem, U_inits=guesses, screen_iter=0)
    with pytest.raises(TypeError, match="U_inits"):
        trajopt.multistart(problem)


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
def test_multistart_names_bad_solvers_and_guesses():
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.002]], **D64))
    problem = trajopt.Problem(dynamics.Pendulum().discretize(), cost, torch.zeros(2, 2, **D64), horizon=5,
                              u_lower=-2.0, u_upper=2.0)
    guesses = torch.zeros(2, 5, 1, **D64)
    with pytest.raises(TypeError, match="multistart: solver must be a solver\\(problem"):
        trajopt.multistart(problem, U_inits=guesses, solver=trajopt.lqr)
    with pytest.raises(TypeError, match="multistart: solver must return a trajopt.Solution; .* returned NoneType"):
        trajopt.multistart(problem, U_inits=guesses, solver=lambda problem, **k: None)
    assert trajopt.multistart(problem, U_inits=guesses.float(), max_iter=2).U.dtype == torch.float64   # converted
    bounded = problem.replace(x_upper=torch.tensor([math.inf, 0.3], **D64))
    with pytest.raises(ValueError, match="multistart: the problem has x_upper, which ilqr does not take"):
        trajopt.multistart(bounded, U_inits=guesses)


@pytest.mark.parametrize("solver", [trajopt.ilqr, trajopt.constrained_ilqr])
def test_multistart_on_a_selection_of_a_problem_with_per_problem_tensors(solver):
    """Per-problem cost tensors follow ``problem.select`` into the screening and final solves: each selected problem
    is solved with its own cost, as when the whole batch is solved."""
    D = dict(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    model = dynamics.DoubleIntegrator().discretize().to(torch.float64)
    C = torch.eye(3, **D) + 0.1 * torch.rand(4, 1, 3, 3, generator=g, **D).mT @ torch.rand(4, 1, 3, 3, generator=g, **D)
    cost = trajopt.QuadraticCost(C.expand(4, 8, 3, 3), torch.randn(4, 8, 3, generator=g, **D), batched=True)
    kw = dict(constraint=lambda x, u: u.abs() - 5.0) if solver is trajopt.constrained_ilqr else {}
    whole = trajopt.Problem(model, cost, torch.randn(4, 2, generator=g, **D), horizon=8, **kw)
    rows = [3, 0, 2]
    sol = trajopt.multistart(whole.select(rows), U_inits=torch.randn(2, 8, 1, generator=g, **D), solver=solver)
    ref = solver(whole)
    assert (sol.status == Status.CONVERGED).all()
    torch.testing.assert_close(sol.cost, ref.cost[rows], rtol=1e-9, atol=0)
    torch.testing.assert_close(sol.U, ref.U[rows], rtol=0, atol=1e-6)
