import numpy as np
import pytest
import torch

import dynamics
import trajopt
from trajopt.problems import reference as problems
from tests.dynamics.models import Coupled, PendulumODE


def test_rollout_matches_the_numpy_pendulum_of_p2():
    model = PendulumODE().discretize(0.05, "semi_implicit_euler")
    x0 = problems.pendulum_x0(4, seed=1)
    U = np.random.default_rng(0).uniform(-2, 2, (4, 50, 1))
    X = trajopt.rollout(model, torch.tensor(x0), torch.tensor(U)).detach().numpy()
    x = x0
    for t in range(50):
        np.testing.assert_allclose(X[:, t], x, atol=1e-10, rtol=0)
        x = problems.pendulum_step(x, U[:, t])
    np.testing.assert_allclose(X[:, 50], x, atol=1e-10, rtol=0)


def test_rollout_broadcasts_and_accepts_unbatched_input():
    model = Coupled()
    x0 = torch.zeros(3, dtype=torch.float64)
    U = torch.randn(2, 4, 2, dtype=torch.float64)
    X = trajopt.rollout(model, x0, U)
    assert X.shape == (2, 5, 3)
    torch.testing.assert_close(trajopt.rollout(model, x0, U[1]), X[1])


@pytest.mark.parametrize("model", [Coupled(), PendulumODE().discretize(0.1, "rk4")], ids=["time-varying", "rk4"])
def test_linearization_is_first_order_accurate(model):
    g = torch.Generator().manual_seed(0)
    n, m, T = model.state_dim, model.control_dim, 6
    X = torch.randn(2, T + 1, n, generator=g, dtype=torch.float64)
    U = torch.randn(2, T, m, generator=g, dtype=torch.float64)
    F, f = trajopt.linearize(model, X, U)
    assert F.shape == (2, T, n, n + m) and f.shape == (2, T, n)
    dX = 1e-4 * torch.randn(X[:, :-1].shape, generator=g, dtype=torch.float64)
    dU = 1e-4 * torch.randn(U.shape, generator=g, dtype=torch.float64)
    tau = torch.cat([X[:, :-1] + dX, U + dU], -1)
    affine = (F @ tau.unsqueeze(-1)).squeeze(-1) + f
    with torch.no_grad():
        true = torch.stack([model(X[:, t] + dX[:, t], U[:, t] + dU[:, t], t) for t in range(T)], 1)
    assert (affine - true).abs().max() < 1e-6       # second-order remainder of a 1e-4 step


def test_lqr_on_a_linearized_linear_model_is_the_lqr_of_its_matrices():
    g = torch.Generator().manual_seed(1)
    n, m, T = 3, 2, 10
    A = torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(n, n, generator=g, dtype=torch.float64)
    B = torch.randn(n, m, generator=g, dtype=torch.float64)
    off = torch.randn(n, generator=g, dtype=torch.float64)
    model = dynamics.LinearDynamics(A, B, off)
    cost = trajopt.QuadraticCost.from_weights(torch.eye(n, dtype=torch.float64), 0.1 * torch.eye(m, dtype=torch.float64),
                                              x_goal=torch.ones(n, dtype=torch.float64))
    x0 = torch.randn(4, n, generator=g, dtype=torch.float64)
    U0 = torch.zeros(4, T, m, dtype=torch.float64)
    X0 = trajopt.rollout(model, x0, U0)
    F, f = trajopt.linearize(model, X0, U0)
    q = cost.quadratize(X0, U0)
    tau0 = torch.cat([X0[:, :-1], U0], -1)
    c_abs = q.c - (q.C @ tau0.unsqueeze(-1)).squeeze(-1)           # gradient at tau = 0
    sol = trajopt.lqr(F, f, q.C, c_abs, x0)
    direct = trajopt.lqr(torch.cat([A, B], -1).expand(T, n, n + m), off.expand(T, n), cost.C.expand(T, n + m, n + m),
                         cost.c.expand(T, n + m), x0)
    torch.testing.assert_close(sol.U, direct.U, atol=1e-12, rtol=0)
    torch.testing.assert_close(cost(sol.X, sol.U), direct.cost + T * cost.const, atol=1e-10, rtol=0)
    torch.testing.assert_close(trajopt.rollout(model, x0, sol.U), sol.X, atol=1e-12, rtol=0)


def test_rollout_and_linearize_reject_bad_input():
    model = Coupled()
    with pytest.raises(ValueError, match=r"U has shape \(4, 3\); expected \(B, T, m\) = \(B, T, 2\) or \(T, m\) = \(T, 2\)"):
        trajopt.rollout(model, torch.zeros(3, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="dynamics must be a dynamics.Dynamics"):
        trajopt.rollout(PendulumODE(), torch.zeros(2), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="batch sizes differ"):
        trajopt.linearize(model, torch.zeros(2, 5, 3, dtype=torch.float64), torch.zeros(3, 4, 2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
class _NaNBeyond(dynamics.Dynamics):
    """The pendulum, NaN (or ``value``) for rows with ``|x| > 5``."""

    def __init__(self, value=float("nan")):
        super().__init__(2, 1)
        self.base, self.value = dynamics.Pendulum().discretize(), value

    def forward(self, x, u, t=None):
        y = self.base(x, u)
        return torch.where(x.abs().amax(-1, keepdim=True) > 5, torch.full_like(y, self.value), y)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rollout_and_linearize_raise_naming_the_rows_instead_of_returning_nan(value):
    D = dict(dtype=torch.float64)
    x0, U = torch.tensor([[1.0, 0.0], [9.0, 0.0], [0.5, 0.0]], **D), torch.zeros(3, 5, 1, **D)
    with pytest.raises(FloatingPointError, match=r"rollout: the model gave NaN or Inf states for row\(s\) \[1\], "
                                                 r"first at step t=0"):
        trajopt.rollout(_NaNBeyond(value), x0, U)
    X = trajopt.rollout(dynamics.Pendulum().discretize(), x0, U)
    with pytest.raises(FloatingPointError, match=r"linearize: .* row\(s\) \[1\]"):
        trajopt.linearize(_NaNBeyond(value), X, U)
    with pytest.raises(FloatingPointError, match="rollout: .*first at step"):      # overflow
        trajopt.rollout(dynamics.Pendulum().discretize(), x0, torch.full((3, 5, 1), 1e308, **D))


@pytest.mark.parametrize("t0", [-1, 1.7, "a", True])
def test_rollout_checks_t0(t0):
    D = dict(dtype=torch.float64)
    with pytest.raises(ValueError, match="rollout: t0 must be an int >= 0"):
        trajopt.rollout(dynamics.Pendulum().discretize(), torch.zeros(2, 2, **D), torch.zeros(2, 5, 1, **D), t0=t0)


def test_linearize_names_a_length_mismatch_of_x_and_u():
    D = dict(dtype=torch.float64)
    with pytest.raises(ValueError, match="linearize: X has shape \\(2, 5, 2\\); expected T\\+1 = 7"):
        trajopt.linearize(dynamics.Pendulum().discretize(), torch.zeros(2, 5, 2, **D), torch.zeros(2, 6, 1, **D))
