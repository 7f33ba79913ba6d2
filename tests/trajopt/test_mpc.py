import pytest
import torch

import dynamics
import trajopt

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
    assert int(warm.history["iterations"].sum()) < int(cold.history["iterations"].sum())
    # the shifted plan is where the warm solve started: its first iteration's cost is the shifted plan's
    shifted = torch.cat([first.U[:, 1:], first.U[:, -1:]], 1)
    torch.testing.assert_close(warm.history["cost"][0], cost(trajopt.rollout(model, x1, shifted), shifted))


def test_mpc_rejects_bad_arguments():
    model, cost, _ = linear_quadratic()
    with pytest.raises(TypeError, match="dynamics must be a dynamics.Dynamics"):
        trajopt.MPC(lambda x, u: x, cost, 5)
    with pytest.raises(ValueError, match="horizon and max_iter must be positive"):
        trajopt.MPC(model, cost, 0)
    tv = trajopt.QuadraticCost(torch.eye(5, **D64).expand(4, 5, 5))
    with pytest.raises(ValueError, match="time-invariant"):
        trajopt.MPC(model, tv, 4)


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
    pytest.importorskip("gymnasium")
    from benchmarks.gym_pendulum import episodes

    result = episodes(count=4, steps=120, progress=False)
    assert result["final"][:, 0].abs().max() < 0.01 and result["final"][:, 1].abs().max() < 0.05
    assert result["returns"].mean() > -151.9


def test_mpc_runs_a_sampling_solver_with_the_shifted_plan_as_its_warm_start():
    """MPC with MPPI as its solver warm-starts from the shifted plan and, in closed loop, costs within 5% of
    the same MPC with iLQR."""
    model = dynamics.DoubleIntegrator().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, dtype=torch.float64), 0.1 * torch.eye(1, dtype=torch.float64),
                                              x_goal=torch.tensor([1.0, 0.0], dtype=torch.float64))
    seen = []

    def solver(*args, **kwargs):
        seen.append(args[3])                                   # U_init
        return trajopt.mppi(*args, **kwargs)
    sampled = trajopt.MPC(model, cost, 15, u_lower=-1.0, u_upper=1.0, solver=solver, samples=300, iterations=3,
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
    assert seen[0] is None
    torch.testing.assert_close(totals[0], totals[1], rtol=5e-2, atol=0)     # measured: 2.6% apart
