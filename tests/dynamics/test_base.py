import numpy as np
import pytest
import torch

import dynamics
from dynamics import integrators
from trajopt.problems import reference as problems
from tests.dynamics.models import Coupled, PendulumODE


def central_jacobians(step, x, u, eps=1e-6):
    """d step / d x and d step / d u by central differences, one column at a time."""
    def jac(fn, z):
        cols = []
        for i in range(z.shape[-1]):
            e = torch.zeros_like(z)
            e[..., i] = eps
            cols.append((fn(z + e) - fn(z - e)) / (2 * eps))
        return torch.stack(cols, -1)
    with torch.no_grad():
        return jac(lambda z: step(z, u), x), jac(lambda z: step(x, z), u)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("method", ["euler", "semi_implicit_euler", "rk4"])
def test_autodiff_jacobians_agree_with_finite_differences(mode, method):
    model = PendulumODE().discretize(0.05, method)
    model.jacobian_mode = mode
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 2, generator=g, dtype=torch.float64)
    u = torch.randn(7, 1, generator=g, dtype=torch.float64)
    A, B = model.jacobians(x, u)
    A_fd, B_fd = central_jacobians(model, x, u)
    torch.testing.assert_close(A, A_fd, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(B, B_fd, atol=1e-8, rtol=1e-7)


def test_jacobians_of_a_time_varying_model_use_the_stage_index():
    model = Coupled()
    g = torch.Generator().manual_seed(2)
    x, u = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    for t in (0, 3):
        A, B = model.jacobians(x, u, t)
        A_fd, B_fd = central_jacobians(lambda a, b: model(a, b, t), x, u)
        torch.testing.assert_close(A, A_fd, atol=1e-8, rtol=1e-7)
        torch.testing.assert_close(B, B_fd, atol=1e-8, rtol=1e-7)


def test_jacobians_accept_unbatched_input_and_pass_gradients_to_parameters():
    model = PendulumODE().discretize(0.05, "rk4")
    x, u = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    A, B = model.jacobians(x, u)
    Ab, Bb = model.jacobians(x[None], u[None])
    assert A.shape == (2, 2) and B.shape == (2, 1)
    torch.testing.assert_close(A, Ab[0])
    (gm,) = torch.autograd.grad(B.sum(), model.model.m)
    eps = 1e-6
    with torch.no_grad():
        model.model.m += eps
        hi = model.jacobians(x, u)[1].sum()
        model.model.m -= 2 * eps
        lo = model.jacobians(x, u)[1].sum()
        model.model.m += eps
    torch.testing.assert_close(gm, (hi - lo) / (2 * eps), atol=1e-8, rtol=1e-6)


def test_vector_hessians_agree_with_finite_differences_of_jacobians():
    model = Coupled()
    g = torch.Generator().manual_seed(3)
    x, u = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    lam = torch.randn(5, 3, generator=g, dtype=torch.float64)
    hxx, hux, huu = model.vector_hessians(x, u, lam, 1)

    def lam_jac(a, b):  # lam' [A B] as a (B, n+m) gradient
        A, B = model.jacobians(a, b, 1)
        return torch.cat([(lam.unsqueeze(-1) * A).sum(1), (lam.unsqueeze(-1) * B).sum(1)], -1)
    d_dx, d_du = central_jacobians(lam_jac, x, u)     # (B, n+m, n), (B, n+m, m)
    torch.testing.assert_close(hxx, d_dx[:, :3], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(hux, d_dx[:, 3:], atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(huu, d_du[:, 3:], atol=1e-7, rtol=1e-6)


def test_semi_implicit_euler_is_the_pendulum_v1_step_of_p2():
    model = PendulumODE().discretize(0.05, "semi_implicit_euler")
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, (50, 2))
    u = rng.uniform(-2, 2, (50, 1))
    ours = model(torch.tensor(x), torch.tensor(u)).detach().numpy()
    np.testing.assert_allclose(ours, problems.pendulum_step(x, u), atol=1e-12, rtol=0)


@pytest.mark.parametrize("method,order", [("euler", 1), ("semi_implicit_euler", 1), ("rk4", 4)])
def test_integrators_converge_at_their_order(method, order):
    """Global error at t = 1 s against a fine RK4 solution falls as dt^order."""
    ode = PendulumODE()
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    u = torch.zeros(1, 1, dtype=torch.float64)

    def final(dt, how):
        step = ode.discretize(dt, how)
        x = x0
        with torch.no_grad():
            for _ in range(round(1.0 / dt)):
                x = step(x, u)
        return x
    exact = final(1e-4, "rk4")
    errs = [float((final(dt, method) - exact).norm()) for dt in (0.02, 0.01)]
    assert np.log2(errs[0] / errs[1]) == pytest.approx(order, abs=0.25)


def test_semi_implicit_euler_needs_position_indices():
    class NoSplit(dynamics.ContinuousDynamics):
        def derivative(self, x, u, t=None):
            return -x
    with pytest.raises(ValueError, match="positions"):
        NoSplit(2, 1).discretize(0.1, "semi_implicit_euler")
    with pytest.raises(ValueError, match="method must be one of"):
        NoSplit(2, 1).discretize(0.1, "leapfrog")
    with pytest.raises(ValueError, match="dt must be a finite number > 0"):
        NoSplit(2, 1).discretize(0.0)


def test_linear_dynamics_closed_form_matches_autodiff_and_definition():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(6, 3, 3, generator=g, dtype=torch.float64)
    B = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)
    off = torch.randn(6, 3, generator=g, dtype=torch.float64)
    model = dynamics.LinearDynamics(A, B, off)
    x, u = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    for t in (0, 5):
        torch.testing.assert_close(model(x, u, t), x @ A[t].T + u @ B[t].T + off[t])
        for ours, auto in zip(model.jacobians(x, u, t), dynamics.Dynamics.jacobians(model, x, u, t)):
            torch.testing.assert_close(ours, auto)
    with pytest.raises(ValueError, match="time-varying; pass the stage index t"):
        model(x, u)


def test_linear_dynamics_validates_and_learns():
    with pytest.raises(ValueError, match=r"B has shape \(4, 2\); expected \(n, m\) = \(3, m\)"):
        dynamics.LinearDynamics(torch.eye(3), torch.zeros(4, 2))
    model = dynamics.LinearDynamics(torch.eye(2), torch.ones(2, 1), learnable=True)
    assert {n for n, _ in model.named_parameters()} == {"A", "B", "offset"}
    assert not list(dynamics.LinearDynamics(torch.eye(2), torch.ones(2, 1)).parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_models_follow_the_input_dtype(dtype):
    model = dynamics.LinearDynamics(torch.eye(2, dtype=dtype), torch.ones(2, 1, dtype=dtype))
    x, u = torch.ones(3, 2, dtype=dtype), torch.ones(3, 1, dtype=dtype)
    assert model(x, u).dtype == dtype and model.jacobians(x, u)[0].dtype == dtype


@pytest.mark.parametrize("model", [dynamics.Pendulum(), dynamics.CartPole(), dynamics.KinematicBicycle(),
                                   dynamics.Acrobot(), dynamics.Quadrotor2D()], ids=lambda m: type(m).__name__)
def test_steps_keep_a_column_major_batch_column_major(model):
    model = model.double()
    n, m, R = model.state_dim, model.control_dim, 7
    x = 0.25 * torch.randn(n, R, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).mT  # (R, n), by column
    u = torch.randn(m, R, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).mT
    for f in (model.derivative, model.discretize()):
        by_column, by_row = f(x, u), f(x.contiguous(), u.contiguous())
        torch.testing.assert_close(by_column, by_row, rtol=1e-15, atol=0)
        assert by_column.stride(0) == 1 and by_row.is_contiguous()


_like = torch.zeros(4, 3, dtype=torch.float64)
_col = torch.zeros(4, dtype=torch.float64)


@pytest.mark.parametrize("columns, like, error, match", [
    ((), _like, ValueError, "columns must hold at least one tensor, got an empty tuple"),
    (_like, _like, TypeError, "columns must be a list or tuple of tensors, got Tensor"),
    ((c for c in [_col]), _like, TypeError, "columns must be a list or tuple of tensors, got generator"),
    ([_col, 1.0], _like, TypeError, r"columns\[1\] must be a torch\.Tensor, got float"),
    ([_col, _col.float()], _like, TypeError, r"columns\[1\] has dtype torch\.float32 but like has torch\.float64"),
    ([_col.float(), _col.float()], _like, TypeError, r"columns\[0\] has dtype torch\.float32 but like has"),
    ([_col, _col[:3]], _like, ValueError, r"columns\[1\] has shape \(3,\); expected like's batch shape \(4,\)"),
    ([_col[:3], _col[:3]], _like, ValueError, r"columns\[0\] has shape \(3,\); expected like's batch shape \(4,\)"),
    ([_col, _col.to("meta")], _like, ValueError, r"columns\[1\] is on meta but like is on cpu"),
    ([_col], "x", TypeError, "like must be a torch.Tensor, got str"),
    ([_col], torch.tensor(1.0), ValueError, "like must have at least one dimension"),
])
def test_stack_columns_names_what_is_wrong(columns, like, error, match):
    with pytest.raises(error, match=f"stack_columns: {match}"):
        dynamics.stack_columns(columns, like)
    assert dynamics.stack_columns([_col, _col], _like.mT.contiguous().mT).shape == (4, 2)   # fewer columns than like's


class _RootKinematics(dynamics.ContinuousDynamics):
    """``q1' = sqrt(v1)``, ``q2' = v2``, ``v1' = u1``, ``v2' = u2 - sqrt(v2)``, with closed-form Jacobians: a
    kinematics and an acceleration whose derivatives are infinite where a velocity is 0."""

    positions = (0, 1)

    def __init__(self):
        super().__init__(4, 2)

    def derivative(self, x, u, t=None):
        return torch.stack([x[..., 2].sqrt(), x[..., 3], u[..., 0], u[..., 1] - x[..., 3].sqrt()], -1)

    def derivative_jacobians(self, x, u, t=None):
        gx, gu = x.new_zeros(*x.shape, 4), x.new_zeros(*x.shape, 2)
        gx[..., 0, 2], gx[..., 1, 3], gx[..., 3, 3] = 0.5 / x[..., 2].sqrt(), 1.0, -0.5 / x[..., 3].sqrt()
        gu[..., 2, 0], gu[..., 3, 1] = 1.0, 1.0
        return gx, gu


def test_semi_implicit_euler_jacobians_ignore_what_the_step_does_not_use():
    """The position rows' derivative at x and the velocity rows' at the intermediate state are not part of the
    step: an infinite one there (0 * inf = NaN) must leave the Jacobians finite, and exact; an infinite one that is
    part of it stays in the rows that depend on it."""
    model, dt = _RootKinematics().discretize(0.5, "semi_implicit_euler"), 0.5
    x = torch.tensor([[0.1, 0.2, 0.0, 0.25]], dtype=torch.float64)        # v1 = 0 at x; v2 = 0 after the kick
    u = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    A, B = model.jacobians(x, u)
    assert torch.isfinite(model(x, u)).all()
    s = dt * 0.5 / 0.5 ** 0.5                                               # dt d sqrt(v1)/dv1 at v1 = dt u1
    torch.testing.assert_close(A[0], torch.tensor([[1.0, 0, s, 0], [0, 1, 0, dt * 0.5], [0, 0, 1, 0],
                                                   [0, 0, 0, 0.5]], dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(B[0], torch.tensor([[s * dt, 0], [0, dt * dt], [dt, 0], [0, dt]],
                                                  dtype=torch.float64), rtol=1e-15, atol=0)
    A, B = model.jacobians(torch.tensor([[0.1, 0.2, 0.25, 0.0]], dtype=torch.float64), u)   # v2 = 0 at x: the
    assert not torch.isfinite(A[0, 3]).all()                    # kick's row is not finite, the row the second
    assert torch.isfinite(A[0, 2]).all() and torch.isfinite(B[0, 2]).all()      # stage passes through is


@pytest.mark.parametrize("call, error, pattern", [
    (lambda I, g, x, u: I.rk4("g", x, u, 0.05), TypeError, "rk4: g must be callable"),
    (lambda I, g, x, u: I.euler(g, x, u, float("nan")), ValueError, "euler: dt must be a positive finite number"),
    (lambda I, g, x, u: I.euler(g, x, u, 0.0), ValueError, "euler: dt must be a positive finite number"),
    (lambda I, g, x, u: I.euler(g, x, u[:2], 0.05), ValueError, "euler: batch sizes differ"),
    (lambda I, g, x, u: I.rk4(g, x.float(), u, 0.05), TypeError, "rk4: u has dtype torch.float64 but x"),
    (lambda I, g, x, u: I.rk4(g, x.tolist(), u, 0.05), TypeError, "rk4: x must be a torch.Tensor"),
    (lambda I, g, x, u: I.semi_implicit_euler(g, x, u, 0.05), TypeError, "semi_implicit_euler: positions must be"),
    (lambda I, g, x, u: I.rk4_jacobians(g, None, x, u, 0.05), TypeError, "rk4_jacobians: jac must be callable"),
    (lambda I, g, x, u: I.euler(g, x, u), TypeError, r"euler\(g, x, u, dt, t=None, positions=None\) takes 4"),
])
def test_the_public_integrators_name_a_bad_argument(call, error, pattern):
    pendulum = dynamics.Pendulum().double()
    x, u = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)
    with pytest.raises(error, match=pattern):
        call(integrators, pendulum.derivative, x, u)
    # the checked functions step as the models' discretizations (the unchecked dispatch table) do
    step, jac = integrators.METHODS["rk4"]
    torch.testing.assert_close(integrators.rk4(pendulum.derivative, x + 0.3, u, 0.05),
                               step(pendulum.derivative, x + 0.3, u, 0.05), rtol=0, atol=0)
