
import numpy as np
import pytest
import torch

import dynamics
import trajopt
from tests.dynamics.models import PendulumBreaks
from tests.skips import GYMNASIUM
from trajopt import Status
from trajopt.problems import pumping_guesses

D64 = dict(dtype=torch.float64)


def linear_quadratic(seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(3, **D64) + 0.1 * torch.randn(3, 3, generator=g, **D64)
    Bu = torch.randn(3, 2, generator=g, **D64)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(3, **D64), 0.1 * torch.eye(2, **D64), learnable=True)
    return dynamics.LinearDynamics(A, Bu), cost, torch.randn(4, 3, generator=g, **D64)


def test_mpc_control_and_its_state_gradient_are_those_of_lqr():
    model, cost, x = linear_quadratic()
    x.requires_grad_(True)
    T, n, m = 12, 3, 2
    mpc = trajopt.MPC(model, cost, T, max_iter=5, grad_tol=1e-10)
    u, plan = mpc(x)
    ref = trajopt.lqr(torch.cat([model.A, model.B], -1).expand(T, n, n + m), None,
                      cost.C.detach().expand(T, n + m, n + m), cost.c.detach().expand(T, n + m), x.detach())
    torch.testing.assert_close(u, ref.U[:, 0], atol=1e-10, rtol=0)
    assert plan.converged.all()
    # d u_0 / d x_0 is the first LQR gain: u_0 = K_0 x_0 + k_0
    jac = torch.stack([torch.autograd.grad(u[:, i].sum(), x, retain_graph=True)[0] for i in range(m)], 1)
    torch.testing.assert_close(jac, ref.K[:, 0], atol=1e-9, rtol=0)


def test_mpc_closed_loop_gradient_through_several_solves_matches_central_differences():
    """Three MPC steps in closed loop on the pendulum (each solve's state depends on the previous solves):
    the gradient of the final state with respect to a cost weight and to the start, by the implicit route
    through every solve, against central differences of converged solves."""
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[0.7, -0.2], [-0.5, 0.4]], **D64, requires_grad=True)

    def closed_loop(x):
        mpc = trajopt.MPC(model, cost, 8, u_lower=-2.0, u_upper=2.0, max_iter=200, grad_tol=1e-12, tol=1e-15)
        for _ in range(3):
            u, _ = mpc(x)
            x = model(x, u)
        return x.sum()

    loss = closed_loop(x0)
    gC, gx = torch.autograd.grad(loss, (cost.C, x0))
    eps = 1e-6
    with torch.no_grad():
        for i in range(2):
            cost.C[i, i] += eps
            up = closed_loop(x0)
            cost.C[i, i] -= 2 * eps
            down = closed_loop(x0)
            cost.C[i, i] += eps
            assert float(gC[i, i]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-8)
            d = torch.zeros_like(x0)
            d[0, i] = eps
            fd = (closed_loop(x0 + d) - closed_loop(x0 - d)) / (2 * eps)
            assert float(gx[0, i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_mpc_warm_starts_from_the_shifted_plan():
    P = dict(u_max=2.0)
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), torch.tensor([[0.002]], **D64))
    x = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], **D64)
    mpc = trajopt.MPC(model, cost, 30, u_lower=-P["u_max"], u_upper=P["u_max"], max_iter=100, grad=None)
    u, first = mpc(x)
    x1 = model(x, u)
    _, warm = mpc(x1)
    mpc.reset()
    _, cold = mpc(x1)
    assert warm.converged.all() and cold.converged.all()
    assert int(warm.iterations.sum()) < int(cold.iterations.sum())
    # the shifted plan is where the warm solve started: its first iteration's cost is the shifted plan's
    shifted = torch.cat([first.U[:, 1:], first.U[:, -1:]], 1)
    torch.testing.assert_close(warm.cost_history[:, 0], cost(trajopt.rollout(model, x1, shifted), shifted))
    assert not warm.extras["recovered"].any()


def test_mpc_rejects_bad_arguments():
    model, cost, x = linear_quadratic()
    with pytest.raises(TypeError, match="dynamics must be a dynamics.Dynamics"):
        trajopt.MPC(lambda x, u: x, cost, 5)
    with pytest.raises(ValueError, match="horizon must be an int >= 1"):
        trajopt.MPC(model, cost, 0)
    with pytest.raises(ValueError, match="horizon must be an int >= 1, got 1.7"):
        trajopt.MPC(model, cost, 1.7)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        trajopt.MPC(model, cost, 5, max_iter=0)
    tv = trajopt.QuadraticCost(torch.eye(5, **D64).expand(4, 5, 5))
    with pytest.raises(ValueError, match="time-invariant"):
        trajopt.MPC(model, tv, 4)
    # options are checked against the solver's signature when the MPC is built, never dropped
    with pytest.raises(TypeError, match="ilqr takes no option 'iterations'"):
        trajopt.MPC(model, cost, 5, iterations=3)
    with pytest.raises(TypeError, match="mppi takes no option 'grad'"):
        trajopt.MPC(model, cost, 5, solver=trajopt.mppi, grad=None)
    with pytest.raises(TypeError, match="mppi takes no option 'second_order'"):
        trajopt.MPC(model, cost, 5, solver=trajopt.mppi, second_order=True)
    mpc = trajopt.MPC(model, cost, 5)
    with pytest.raises(ValueError, match="U_init must be .* the horizon T=5"):
        mpc(x, U_init=torch.zeros(4, 3, 2, **D64))       # a shorter guess does not change the horizon


class Fragile(dynamics.Dynamics):
    """``x' = x + u`` while ``|u| <= limit``, infinite beyond it: a plan made before ``limit`` shrank diverges."""

    def __init__(self):
        super().__init__(1, 1)
        self.limit = float("inf")

    def forward(self, x, u, t=None):
        return torch.where(u.abs() <= self.limit, x + u, float("inf"))


def test_mpc_recovers_from_a_diverged_warm_start_by_a_cold_solve():
    model = Fragile()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(1, **D64), 0.1 * torch.eye(1, **D64),
                                              x_goal=torch.ones(1, **D64))
    mpc = trajopt.MPC(model, cost, 6, u_lower=-1.0, u_upper=1.0, max_iter=50, grad=None)
    x = torch.tensor([[0.0], [1.0]], **D64)                  # the second is at the goal: its plan is zero
    u, plan = mpc(x)
    assert plan.converged.all() and float(plan.U[0].abs().max()) > 0.01 and float(plan.U[1].abs().max()) < 1e-9
    model.limit = 1e-3                                      # the first problem's shifted plan now diverges
    x = model(x, torch.zeros_like(u))
    with torch.no_grad():
        shifted = torch.cat([plan.U[:, 1:], plan.U[:, -1:]], 1)
        diverged = trajopt.ilqr(trajopt.Problem(model, cost, x, U_init=shifted, u_lower=-1.0, u_upper=1.0),
                                grad=None, max_iter=50)
    assert diverged.status.tolist() == [Status.NOT_FINITE, Status.CONVERGED]
    u, plan = mpc(x)
    assert plan.extras["recovered"].tolist() == [True, False]
    assert plan.status[0] != Status.NOT_FINITE and torch.isfinite(plan.cost).all() and torch.isfinite(u).all()
    assert float(plan.U[0].abs().max()) <= 1e-3                  # the cold solve stayed where the model is finite
    cold = trajopt.ilqr(trajopt.Problem(model, cost, x[:1], horizon=6, u_lower=-1.0, u_upper=1.0), grad=None,
                        max_iter=50)
    torch.testing.assert_close(plan.U[0], cold.U[0], rtol=0, atol=0)
    torch.testing.assert_close(plan[1].U, diverged[1].U, rtol=0, atol=0)


def test_imitation_example_recovers_the_pendulum_mass_and_length():
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "examples"))
    import imitation

    learner, history = imitation.learn(evaluations=30, B=6, progress=False)
    assert history[-1][0] < 1e-10 < history[0][0]
    assert learner.dynamics.model.m.item() == pytest.approx(1.0, abs=1e-4)
    assert learner.dynamics.model.l.item() == pytest.approx(1.0, abs=1e-4)


def test_mpc_swings_up_and_balances_gymnasium_pendulum_v1():
    """Closed loop on the real environment (its own step, torque and speed clips, angle wrapping): from seeds 0-3
    the pendulum ends upright and still, and the mean return beats rl-baselines3-zoo's TD3 (-151.9 over 100)."""
    pytest.importorskip("gymnasium", reason=GYMNASIUM)
    result = gym_pendulum_episodes(count=4, steps=120)
    assert result["final"][:, 0].abs().max() < 0.01 and result["final"][:, 1].abs().max() < 0.05
    assert result["returns"].mean() > -151.9


def test_mpc_runs_a_sampling_solver_with_the_shifted_plan_as_its_warm_start():
    """MPC with MPPI as its solver warm-starts from the shifted plan and, in closed loop, costs within 5% of
    the same MPC with iLQR."""
    model = dynamics.DoubleIntegrator().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, dtype=torch.float64), 0.1 * torch.eye(1, dtype=torch.float64),
                                              x_goal=torch.tensor([1.0, 0.0], dtype=torch.float64))
    seen = []

    def solver(problem, **options):
        seen.append(problem.U_init)
        return trajopt.mppi(problem, **options)
    sampled = trajopt.MPC(model, cost, 15, u_lower=-1.0, u_upper=1.0, solver=solver, samples=300, max_iter=3,
                          temperature=0.1, noise_std=0.5, generator=torch.Generator().manual_seed(0))
    exact = trajopt.MPC(model, cost, 15, u_lower=-1.0, u_upper=1.0, max_iter=20, grad=None)
    totals = []
    for mpc in (sampled, exact):
        x, total = torch.tensor([[0.0, 0.0], [2.0, 0.5]], dtype=torch.float64), 0.0
        for step in range(40):
            u, plan = mpc(x)
            if mpc is sampled and step == 1:
                torch.testing.assert_close(seen[1], torch.cat([first[:, 1:], first[:, -1:]], 1))
            first = plan.U
            total = total + cost.stage(x, u)
            x = model(x, u)
        totals.append(total)
    assert torch.equal(seen[0], torch.zeros(2, 15, 1, dtype=torch.float64))    # the first solve starts cold
    torch.testing.assert_close(totals[0], totals[1], rtol=5e-2, atol=0)     # measured: 2.6% apart


class PendulumCost(trajopt.Cost):
    """Pendulum-v1's reward with the angle term made smooth and periodic: ``2 (1 - cos theta) + 0.1 theta_dot^2 +
    0.001 u^2`` (its wrapped ``theta^2`` has a kink at the bottom that misleads a local solver)."""

    def stage(self, x, u, t=None):
        return 2 * (1 - torch.cos(x[..., 0])) + 0.1 * x[..., 1] ** 2 + 0.001 * u[..., 0] ** 2


def gym_pendulum_episodes(count, steps, horizon=60, max_iter=5, first_iter=100):
    """``count`` seeded ``Pendulum-v1`` episodes under one batched MPC (3 s plans, ``max_iter`` warm-started
    iterations per step), the first solve from the pumping guesses by multistart; returns the episode returns
    and the final ``(theta, theta_dot)``."""
    import gymnasium

    def states(obs):
        return torch.tensor(np.stack([np.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], -1), dtype=torch.float64)

    envs = [gymnasium.make("Pendulum-v1") for _ in range(count)]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    mpc = trajopt.MPC(model, PendulumCost(), horizon, u_lower=-2.0, u_upper=2.0, max_iter=max_iter, grad=None)
    returns = np.zeros(count)
    for step in range(steps):
        x = states(obs)
        if step == 0:
            first = trajopt.Problem(model, mpc.cost, x, horizon=horizon, u_lower=-2.0, u_upper=2.0)
            guess = trajopt.multistart(first, U_inits=pumping_guesses(horizon), screen_iter=20, max_iter=first_iter,
                                       grad=None)
            u, _ = mpc(x, U_init=guess.U)
        else:
            u, _ = mpc(x)
        actions = u.detach().numpy()
        for i, env in enumerate(envs):
            obs[i], reward, *_ = env.step(actions[i])
            returns[i] += reward
    return dict(returns=returns, final=states(obs))


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
@pytest.mark.parametrize("x, error, match", [
    (torch.zeros(2, 3, **D64), ValueError, "MPC: x has shape \\(2, 3\\)"),
    (torch.tensor([[float("nan"), 0.0]], **D64), ValueError, "MPC: x contains NaN"),
    (torch.zeros(2, 2, dtype=torch.int64), TypeError, "MPC: x must be float32 or float64"),
    ([[0.0, 0.0]], TypeError, "MPC: x must be a torch.Tensor"),
    (None, TypeError, "MPC: x must be a torch.Tensor"),
    (torch.zeros(2, 1, 2, **D64), ValueError, "MPC: x has shape \\(2, 1, 2\\)"),
    (torch.zeros(2, 2), TypeError, "MPC: x is torch.float32 but the cost's tensor"),
])
def test_mpc_names_its_argument_x(x, error, match):
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.002]], **D64))
    mpc = trajopt.MPC(dynamics.Pendulum().discretize(), cost, 5, u_lower=-2.0, u_upper=2.0, grad=None)
    with pytest.raises(error, match=match):
        mpc(x)


def test_mpc_refuses_a_solver_that_does_not_take_a_problem():
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), torch.eye(1, **D64))
    with pytest.raises(TypeError, match="MPC: solver must be a solver\\(problem, \\*\\*options\\).*lqr takes \\(F, f"):
        trajopt.MPC(dynamics.Pendulum().discretize(), cost, 5, solver=trajopt.lqr)


@pytest.mark.parametrize("solver, options", [(trajopt.ilqr, dict(max_iter=20)),
                                             (trajopt.mppi, dict(samples=64, generator=None))])
def test_mpc_flags_a_row_that_stays_non_finite_and_controls_the_others(solver, options):
    model = PendulumBreaks().discretize().to(torch.float64)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 0.1], **D64)), 0.01 * torch.eye(1, **D64))
    x = torch.tensor([[0.3, 0.0], [5.0, 0.0], [-0.2, 0.1]], **D64)     # row 1 starts where the model is undefined

    def run(states):
        if solver is trajopt.mppi:
            options["generator"] = torch.Generator().manual_seed(0)
        mpc = trajopt.MPC(model, cost, 10, u_lower=-2.0, u_upper=2.0, solver=solver, **options)
        return [mpc(states) for _ in range(2)]                            # a cold solve, then a warm one

    for (u, plan), (u_ok, plan_ok) in zip(run(x), run(x[[0, 2]])):
        assert plan.status[1] == Status.NOT_FINITE and plan.cost[1] == float("inf")
        assert torch.isfinite(u).all() and torch.isfinite(plan.U).all() and torch.isfinite(plan.X).all()
        assert (plan.status[[0, 2]] != Status.NOT_FINITE).all()
        if solver is trajopt.ilqr:                                        # per row exact: as if solved alone
            torch.testing.assert_close(u[[0, 2]], u_ok, rtol=0, atol=1e-10)
