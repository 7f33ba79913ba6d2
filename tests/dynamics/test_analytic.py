import gymnasium
import numpy as np
import pytest
import torch

import dynamics
import trajopt
from trajopt.problems import reference as problems

pytestmark = pytest.mark.filterwarnings("ignore:.*already returned terminated:UserWarning")  # states set by hand
D64 = dict(dtype=torch.float64)
MODELS = {
    "pendulum": dynamics.Pendulum,
    "cartpole": dynamics.CartPole,
    "bicycle": dynamics.KinematicBicycle,
    "double_integrator": lambda: dynamics.DoubleIntegrator(dim=3),
    "quadrotor": dynamics.Quadrotor2D,
    "acrobot": dynamics.Acrobot,
}


def random_point(model, B=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, model.state_dim, generator=g, dtype=dtype)
    u = torch.randn(B, model.control_dim, generator=g, dtype=dtype)
    continuous = model.model if isinstance(model, dynamics.Discretized) else model
    if isinstance(continuous, dynamics.ContinuousDynamics) and continuous.domain(x) is not None:
        x, u = 0.25 * x, 0.25 * u       # well inside the model's domain, and so is the step from there
        assert continuous.domain(x).all()
    return x, u


# ------------------------------------------------------------------ against Gymnasium's own step functions
def gym_env(name):
    env = gymnasium.make(name).unwrapped
    env.reset(seed=0)
    return env


def test_pendulum_steps_like_gymnasium_pendulum_v1():
    env, model = gym_env("Pendulum-v1"), dynamics.Pendulum().discretize()
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-4, 4)])
        u = rng.uniform(-2, 2, 1)
        env.state = x.copy()
        env.step(u)
        ours = model(torch.tensor(x), torch.tensor(u)).detach().numpy()
        np.testing.assert_allclose(ours, env.state, atol=1e-10, rtol=0)


def test_fused_steps_equal_the_generic_integrator():
    from dynamics import integrators
    for model in (dynamics.Pendulum(g=9.0, m=1.3, l=0.8), dynamics.CartPole(mc=1.2, mp=0.2, l=0.6, g=9.5)):
        for method in model.fused_methods:
            x = torch.randn(64, model.state_dim, dtype=torch.float64)
            u = torch.randn(64, model.control_dim, dtype=torch.float64)
            step, _ = integrators.METHODS[method]
            positions = torch.zeros(model.state_dim, dtype=torch.bool)
            positions[list(model.positions or [])] = True
            generic = step(model.derivative, x, u, 0.05, None, positions=positions)
            torch.testing.assert_close(model.discretize(0.05, method)(x, u), generic, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("integrator", ["euler", "semi-implicit"])
def test_cartpole_steps_like_gymnasium_cartpole_v1(integrator):
    env = gym_env("CartPole-v1")
    env.kinematics_integrator = integrator
    model = dynamics.CartPole().discretize(env.tau, "euler" if integrator == "euler" else "semi_implicit_euler")
    rng = np.random.default_rng(1)
    for _ in range(200):
        x = rng.uniform(-1, 1, 4) * np.array([2.0, 2.0, 3.0, 3.0])
        action = int(rng.integers(2))
        env.state = x.copy()
        env.step(action)
        u = torch.tensor([env.force_mag if action == 1 else -env.force_mag], **D64)
        ours = model(torch.tensor(x), u).detach().numpy()
        np.testing.assert_allclose(ours, env.state, atol=1e-10, rtol=0)


def test_acrobot_steps_like_gymnasium_acrobot_v1():
    env, model = gym_env("Acrobot-v1"), dynamics.Acrobot().discretize()
    rng = np.random.default_rng(2)
    for _ in range(200):
        x = np.concatenate([rng.uniform(-np.pi, np.pi, 2), rng.uniform(-2, 2, 2)])
        action = int(rng.integers(3))
        env.state = x.copy()
        env.step(action)
        ours = model(torch.tensor(x), torch.tensor([env.AVAIL_TORQUE[action]], **D64)).detach().numpy()
        ours[:2] = (ours[:2] + np.pi) % (2 * np.pi) - np.pi          # Gymnasium wraps the angles after the step
        assert abs(ours[2]) < env.MAX_VEL_1 and abs(ours[3]) < env.MAX_VEL_2   # inside the unclipped range
        np.testing.assert_allclose(ours, env.state, atol=1e-10, rtol=0)


# ------------------------------------------------------------------ against the canonical NumPy problems
@pytest.mark.parametrize("model,step,m,scale", [
    (dynamics.Pendulum, problems.pendulum_step, 1, 2.0),
    (dynamics.CartPole, problems.cartpole_step, 1, 10.0),
    (dynamics.KinematicBicycle, problems.bicycle_step, 2, 1.0),
], ids=["P2", "P3", "P4"])
def test_canonical_models_roll_out_like_problems_py(model, step, m, scale):
    disc = model().discretize()
    rng = np.random.default_rng(3)
    n = disc.state_dim
    x0 = rng.standard_normal((8, n)) * 0.5
    U = rng.uniform(-scale, scale, (8, 50, m))
    X = trajopt.rollout(disc, torch.tensor(x0), torch.tensor(U)).detach().numpy()
    x = x0
    for t in range(50):
        x = step(x, U[:, t])
    np.testing.assert_allclose(X[:, -1], x, atol=1e-10, rtol=0)


def test_double_integrator_and_quadrotor_follow_their_equations():
    di = dynamics.DoubleIntegrator(dim=2, mass=2.0)
    x, u = torch.tensor([[1.0, 2.0, 0.5, -0.5]], **D64), torch.tensor([[1.0, -2.0]], **D64)
    torch.testing.assert_close(di.derivative(x, u), torch.tensor([[0.5, -0.5, 0.5, -1.0]], **D64))
    quad = dynamics.Quadrotor2D()
    hover = torch.full((1, 2), float(quad.m.detach() * quad.g.detach() / 2), **D64)
    still = torch.tensor([[0.3, 1.0, 0.0, 0.0, 0.0, 0.0]], **D64)
    torch.testing.assert_close(quad.discretize()(still, hover), still)     # thrust m g balances gravity


# ------------------------------------------------------------------ closed-form Jacobians
@pytest.mark.parametrize("name", MODELS)
def test_closed_form_jacobians_equal_autodiff(name):
    model = MODELS[name]()
    x, u = random_point(model)
    for ours, auto in zip(model.derivative_jacobians(x, u), dynamics.ContinuousDynamics.derivative_jacobians(model, x, u)):
        torch.testing.assert_close(ours, auto, atol=1e-10, rtol=0)
    for method in ("euler", "semi_implicit_euler", "rk4"):
        if method == "semi_implicit_euler" and model.positions is None:
            continue
        disc = model.discretize(0.05, method)
        for ours, auto in zip(disc.jacobians(x, u), dynamics.Dynamics.jacobians(disc, x, u)):
            torch.testing.assert_close(ours, auto, atol=1e-10, rtol=0)


def _all_discrete_models():
    from dynamics.contact import BouncingMass, PlanarPusher
    from dynamics.learned import MLPDynamics, ProbabilisticEnsemble, ResidualDynamics
    models = {name: (lambda make=make: make().discretize()) for name, make in MODELS.items()}
    models.update({
        "bouncing": lambda: BouncingMass(k=100.0, stiffness=1e4).discretize(),
        "pusher": lambda: PlanarPusher().discretize(),
        "mlp": lambda: MLPDynamics(3, 2, hidden=(16,)),
        "ensemble": lambda: ProbabilisticEnsemble(3, 2, members=2, hidden=(16,)),
        "residual": lambda: ResidualDynamics(dynamics.Pendulum().discretize(), hidden=(16,)),
    })
    return models


ALL_MODELS = _all_discrete_models()


@pytest.mark.parametrize("name", ALL_MODELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_models_run_in_both_dtypes_batched_and_unbatched(name, dtype):
    model = ALL_MODELS[name]()
    if name in ("mlp", "ensemble", "residual"):
        model = model.to(dtype)                  # a network's weights have a dtype of their own
    x, u = random_point(model, dtype=dtype)
    nxt = model(x, u)
    A, B = model.jacobians(x, u)
    assert nxt.dtype == A.dtype == B.dtype == dtype and torch.isfinite(nxt).all() and torch.isfinite(A).all()
    A1, B1 = model.jacobians(x[3], u[3])
    torch.testing.assert_close(model(x[3], u[3]), nxt[3])
    torch.testing.assert_close(A1, A[3])
    torch.testing.assert_close(B1, B[3])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_linearizes_for_lqr(name):
    """Linearize along a rollout and solve the LQR of the deviations: a regulator around the trajectory."""
    model = ALL_MODELS[name]().to(torch.float64)
    n, m, T = model.state_dim, model.control_dim, 20
    g = torch.Generator().manual_seed(4)
    x0 = 0.1 * torch.randn(3, n, generator=g, **D64)
    U = 0.1 * torch.randn(3, T, m, generator=g, **D64)
    with torch.no_grad():
        X = trajopt.rollout(model, x0, U)
    F, f = trajopt.linearize(model, X, U)
    C = torch.eye(n + m, **D64).expand(T, n + m, n + m)
    sol = trajopt.lqr(F, torch.zeros_like(f), C, None, torch.zeros_like(x0) + 1e-3)
    assert torch.isfinite(sol.U).all() and sol.X.shape == (3, T + 1, n)
    # the affine model reproduces the true step at the linearization points
    torch.testing.assert_close((F @ torch.cat([X[:, :-1], U], -1).unsqueeze(-1)).squeeze(-1) + f, X[:, 1:],
                               atol=1e-10, rtol=0)


def test_gradients_reach_physical_parameters():
    model = dynamics.Pendulum().discretize()
    x0 = torch.tensor([[0.5, 0.0]], **D64)
    U = torch.full((1, 30, 1), 0.3, **D64)
    final = trajopt.rollout(model, x0, U)[0, -1, 0]
    (dm,) = torch.autograd.grad(final, model.model.m)
    eps = 1e-6
    with torch.no_grad():
        hi = trajopt.rollout(dynamics.Pendulum(m=1 + eps).discretize(), x0, U)[0, -1, 0]
        lo = trajopt.rollout(dynamics.Pendulum(m=1 - eps).discretize(), x0, U)[0, -1, 0]
    assert float(dm) == pytest.approx(float((hi - lo) / (2 * eps)), rel=1e-6)


def test_a_bicycle_step_that_ends_past_a_right_angle_of_steering_is_not_finite():
    model = dynamics.KinematicBicycle().discretize()
    x = torch.tensor([[0.0, 0.0, 0.0, 1.5], [0.0, 0.0, 0.0, 1.5]], dtype=torch.float64)
    u = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)       # delta 1.55 (inside), 1.6 (outside)
    y = model(x, u)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()
    assert model.model.domain(y[:1]).all()
