"""Gymnasium MuJoCo task costs (trajopt.rl.mujoco_tasks) against the environments' own rewards, the
Gauss-Newton quadratization against central differences, and a short MPC closed loop on the real environment."""
import numpy as np
import pytest
import torch

pytest.importorskip("mujoco", reason="the MuJoCo tasks need mujoco: pip install torch-trajopt[mujoco]")
pytest.importorskip("gymnasium", reason="the MuJoCo tasks need gymnasium: pip install torch-trajopt[mujoco]")

import mujoco  # noqa: E402

import trajopt  # noqa: E402
from trajopt.rl.mujoco_tasks import mujoco_task  # noqa: E402


def _env_steps(task, count, seed=0, pos_noise=0.05, vel_noise=0.1):
    """``count`` random (state, control, reward, final [qpos; qvel]) from the environment's own step: states near its
    resets, controls uniform in the bounds, the constraint solver's warm start zeroed as the model zeroes it."""
    rng = np.random.default_rng(seed)
    env = task.make_env()
    inner = env.unwrapped
    X, U, R, Q = [], [], [], []
    for k in range(count):
        env.reset(seed=seed + k)
        qpos = inner.data.qpos + pos_noise * rng.standard_normal(inner.model.nq)
        qvel = inner.data.qvel + vel_noise * rng.standard_normal(inner.model.nv)
        inner.set_state(qpos, qvel)
        inner.data.qacc_warmstart[:] = 0
        u = rng.uniform(task.u_lower.numpy(), task.u_upper.numpy())
        _, reward, terminated, _, _ = env.step(u)
        assert not terminated
        X.append(np.concatenate([qpos, qvel]))
        U.append(u)
        R.append(reward)
        Q.append(np.concatenate([inner.data.qpos, inner.data.qvel]))
    env.close()
    X, U, R = (torch.tensor(np.array(a), dtype=torch.float64) for a in (X, U, R))
    return X, U, R, np.array(Q), inner.model


@pytest.mark.parametrize("env_id,pos_noise", [("InvertedPendulum-v5", 0.0), ("HalfCheetah-v5", 0.05),
                                              ("Hopper-v5", 0.02), ("Pusher-v5", 0.05)])
def test_cost_is_the_negative_reward(env_id, pos_noise):
    task = mujoco_task(env_id)
    X, U, R, _, _ = _env_steps(task, 8, pos_noise=pos_noise)
    assert torch.allclose(-task.cost.stage(X, U), R, rtol=0, atol=1e-10)


def _kinematics(model, qpos):
    """``MjData`` rows after ``mj_kinematics`` at each ``qpos`` (the reference positions of the final states)."""
    out = []
    for q in qpos:
        d = mujoco.MjData(model)
        d.qpos[:] = q[:model.nq]
        mujoco.mj_kinematics(model, d)
        out.append(d)
    return out


def test_inverted_double_pendulum_cost():
    """RK4: Gymnasium reads the tip at the last RK4 stage, the cost at the state after the step: equal to the
    reward formula at the final state's kinematics to 1e-10, to the env's reward within 1e-4."""
    task = mujoco_task("InvertedDoublePendulum-v5")
    X, U, R, Q, model = _env_steps(task, 8, pos_noise=0.02)
    ref = torch.tensor(np.array([d.site_xpos[0, [0, 2]] for d in _kinematics(model, Q)]))
    v = torch.tensor(Q[:, 4:6])
    formula = 10 - 0.01 * ref[:, 0] ** 2 - (ref[:, 1] - 2) ** 2 - 1e-3 * v[:, 0] ** 2 - 5e-3 * v[:, 1] ** 2
    cost = task.cost.stage(X, U)
    assert torch.allclose(-cost, formula, rtol=0, atol=1e-10)
    assert torch.allclose(-cost, R, rtol=0, atol=1e-4)


def test_reacher_cost():
    task = mujoco_task("Reacher-v5")
    X, U, R, Q, model = _env_steps(task, 8, pos_noise=0.0)
    ds = _kinematics(model, Q)
    dist = torch.tensor([np.linalg.norm(d.body("fingertip").xpos - d.body("target").xpos) for d in ds])
    formula = -dist - (U ** 2).sum(-1)
    cost = task.cost.stage(X, U)
    assert torch.allclose(-cost, formula, rtol=0, atol=1e-10)
    assert torch.allclose(-cost, R, rtol=0, atol=1e-4)


def _central(fn, x, u, h=1e-5):
    """Central differences ``(B, p, n+m)`` of ``fn(x, u) (B, p)`` along every coordinate of ``[x; u]``."""
    tau = torch.cat([x, u], -1)
    n = x.shape[-1]
    cols = []
    for i in range(tau.shape[-1]):
        e = torch.zeros_like(tau)
        e[:, i] = h
        plus, minus = tau + e, tau - e
        cols.append((fn(plus[:, :n], plus[:, n:]) - fn(minus[:, :n], minus[:, n:])) / (2 * h))
    return torch.stack(cols, -1)


@pytest.mark.parametrize("env_id,exact", [("InvertedDoublePendulum-v5", True), ("InvertedDoublePendulum-v5", False),
                                          ("Reacher-v5", True), ("Hopper-v5", True)])
def test_gauss_newton_against_central_differences(env_id, exact):
    task = mujoco_task(env_id, exact=exact)
    X, U, _, _, _ = _env_steps(task, 4, pos_noise=0.02)
    U = 0.8 * U                                           # away from the control limits
    cost = task.cost
    value, c, C, J = cost.gauss_newton(X, U)
    with torch.no_grad():
        J_ref = _central(cost.residuals, X, U)
        g_ref = _central(lambda x, u: cost.stage(x, u).unsqueeze(-1), X, U)[:, 0]
    scale = J_ref.abs().amax((-1, -2), keepdim=True).clamp_min(1.0)
    assert ((J - J_ref).abs() / scale).max() < 1e-6
    assert torch.allclose(value, cost.stage(X, U), rtol=0, atol=1e-12)
    assert ((c - g_ref).abs() / g_ref.abs().amax(-1, keepdim=True).clamp_min(1.0)).max() < 1e-6
    # C = J' penalty''(r) J: the penalty's Hessian by autograd, J the central differences
    r = cost.residuals(X, U).detach()
    H = torch.stack([torch.autograd.functional.hessian(lambda z: cost.penalty_fn(z.unsqueeze(0))[0], ri)
                     for ri in r])
    C_ref = J_ref.mT @ H @ J_ref
    assert ((C - C_ref).abs() / C_ref.abs().amax((-1, -2), keepdim=True).clamp_min(1.0)).max() < 1e-5
    # quadratize: the same blocks stage by stage, and the autograd gradient of stage agrees with c
    q = cost.quadratize(torch.stack([X, X], 1), U.unsqueeze(1))
    assert torch.allclose(q.c[:, 0], c) and torch.allclose(q.C[:, 0], C)
    x, u = X.clone().requires_grad_(True), U.clone().requires_grad_(True)
    gx, gu = torch.autograd.grad(cost.stage(x, u).sum(), (x, u))
    assert torch.allclose(torch.cat([gx, gu], -1), c, rtol=0, atol=1e-8)


def test_mpc_keeps_the_inverted_pendulum_up():
    """iLQR MPC on the model, the environment's own step for 50 steps: the pole never falls."""
    task = mujoco_task("InvertedPendulum-v5", horizon=20, margin=0.15, cart_weight=0.1)
    mpc = trajopt.MPC(task.model, task.cost, task.horizon, u_lower=task.u_lower, u_upper=task.u_upper, max_iter=3,
                      first_max_iter=20, grad=None)
    envs = [task.make_env() for _ in range(2)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    total = np.zeros(2)
    for _ in range(50):
        x = torch.stack([task.state(env) for env in envs])
        u, plan = mpc(x)
        for i, env in enumerate(envs):
            _, reward, terminated, _, _ = env.step(u[i].numpy())
            assert not terminated
            total[i] += reward
    assert (total == 50).all()
    assert max(abs(task.state(env)[1].item()) for env in envs) < 0.2


def test_mppi_takes_the_cost():
    task = mujoco_task("InvertedDoublePendulum-v5", exact=False)
    env = task.make_env()
    env.reset(seed=0)
    x = task.state(env).unsqueeze(0)
    problem = trajopt.Problem(task.model, task.cost, x, horizon=5, u_lower=task.u_lower, u_upper=task.u_upper)
    sol = trajopt.mppi(problem, samples=16, noise_std=0.3, generator=torch.Generator().manual_seed(0))
    assert sol.U.shape == (1, 5, 1) and torch.isfinite(sol.cost).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="env_id"):
        mujoco_task("Ant-v5")


# ---------------------------------------------------------------------------------------------- SHAC through MuJoCo
def _random_episode_steps(task, steps, seed):
    """``steps`` transitions (x, u, x_next, reward, terminated) of the environment's own step under uniform random
    controls, across episodes (a new one, reset with the next seed, after each termination)."""
    rng = np.random.default_rng(seed)
    env = task.make_env()
    env.reset(seed=seed)
    out = []
    while len(out) < steps:
        x = task.state(env)
        u = rng.uniform(task.u_lower.numpy(), task.u_upper.numpy())
        _, reward, terminated, truncated, _ = env.step(u)
        out.append((x, torch.from_numpy(u), task.state(env), reward, terminated))
        if terminated or truncated:
            env.reset(seed=seed + len(out))
    env.close()
    X, U, Xn = (torch.stack([o[i] for o in out]) for i in range(3))
    return X, U, Xn, torch.tensor([o[3] for o in out], dtype=torch.float64), torch.tensor([o[4] for o in out])


@pytest.mark.parametrize("env_id", ["HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "InvertedPendulum-v5",
                                    "InvertedDoublePendulum-v5", "Swimmer-v5"])
def test_reward_and_termination_equal_the_environments(env_id):
    """The reward of a transition (barrier=0: Gymnasium's reward everywhere, the terminating step without the healthy
    bonus) and the termination test against the environment's own step, along random-control episodes that
    terminate (the tasks with a healthy set) or run on."""
    options = {"barrier": 0.0} if env_id not in ("HalfCheetah-v5", "Swimmer-v5") else {}
    task = mujoco_task(env_id, **options)
    X, U, Xn, R, terminated = _random_episode_steps(task, 150, seed=3)
    tol = 2e-4 if env_id == "InvertedDoublePendulum-v5" else 1e-12    # RK4's last-stage tip (the module says so)
    assert torch.allclose(task.reward(X, U, Xn), R, rtol=0, atol=tol)
    if task.unhealthy is None:
        assert not terminated.any()
    else:
        assert terminated.any()                              # the test reaches terminations
        assert torch.equal(task.unhealthy(Xn), terminated)


def test_diff_env_resets_observes_and_steps_as_the_environment():
    task = mujoco_task("Hopper-v5", barrier=0.0)
    env = task.diff_env(3, starts=5, seed=7, centered=True)
    ref = task.make_env()
    starts = []
    for i in range(5):
        ref.reset(seed=7 + i)
        starts.append(task.state(ref))
    assert torch.equal(env._reset, torch.stack(starts))      # Gymnasium's own reset states
    obs = env.reset(torch.Generator().manual_seed(0))
    assert obs.shape == (3, 11) and env.observe(env.state).shape == (3, 11)
    assert torch.equal(obs, env.state[:, 1:])               # the root's x left out, as Gymnasium's observation
    x = env.state.clone()
    u = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64).expand(3, 3)
    step = env.step(u)
    expected = task.model(x, u)
    assert torch.equal(step.final_state, expected)
    assert torch.allclose(step.reward, task.reward(x, u, expected), rtol=0, atol=0)
    with pytest.raises(ValueError, match="exact=True"):
        mujoco_task("Hopper-v5", exact=False).reward(x, u, expected)


def test_shac_actor_gradient_through_mujoco_matches_central_differences():
    """SHAC's actor loss on HalfCheetah-v5 through MuJoCo (each step's backward: the finite-differenced transition
    Jacobians, centred) against central differences of the loss in parameter space, float64, a short window."""
    from tests.trajopt.test_rl import assert_actor_gradient_matches_central_differences, small_shac
    task = mujoco_task("HalfCheetah-v5")
    env = task.diff_env(3, starts=6, centered=True, episode_length=5)
    shac = small_shac(env, horizon=4, reward_scale=0.1)
    shac.train(1)
    assert_actor_gradient_matches_central_differences(shac, seed=2)
