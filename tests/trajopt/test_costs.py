import math

import pytest
import torch

import trajopt
from trajopt import Cost, QuadraticCost

D = dict(dtype=torch.float64)


def random_spd(k, g, lead=()):
    L = torch.randn(*lead, k, k, generator=g, **D)
    return L @ L.mT + 0.1 * torch.eye(k, **D)


def trajectory(B=3, T=5, n=3, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T + 1, n, generator=g, **D), torch.randn(B, T, m, generator=g, **D), g


@pytest.mark.parametrize("time_varying", [False, True])
def test_quadratic_cost_quadratization_is_exact(time_varying):
    X, U, g = trajectory()
    lead = (5,) if time_varying else ()
    cost = QuadraticCost(torch.randn(*lead, 5, 5, generator=g, **D), torch.randn(*lead, 5, generator=g, **D),
                         random_spd(3, g), torch.randn(3, generator=g, **D), const=0.7, const_final=-0.2)
    q = cost.quadratize(X, U)
    dX, dU = torch.randn_like(X), torch.randn_like(U)
    dtau = torch.cat([dX[:, :-1], dU], -1)
    predicted = (cost(X, U) + (q.c * dtau).sum((1, 2)) + 0.5 * torch.einsum("bti,btij,btj->b", dtau, q.C, dtau)
                 + (q.c_final * dX[:, -1]).sum(-1) + 0.5 * torch.einsum("bi,bij,bj->b", dX[:, -1], q.C_final, dX[:, -1]))
    torch.testing.assert_close(cost(X + dX, U + dU), predicted, atol=1e-10, rtol=1e-12)
    for exact, auto in zip(q, Cost.quadratize(cost, X, U)):   # the torch.func route agrees
        torch.testing.assert_close(exact, auto, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(cost(X, U), Cost.forward(cost, X, U), atol=1e-12, rtol=1e-12)


def test_from_weights_is_the_goal_regulation_cost():
    X, U, g = trajectory(T=4)
    Q, R, Qf = random_spd(3, g), random_spd(2, g), random_spd(3, g)
    xg, ug = torch.randn(3, generator=g, **D), torch.randn(2, generator=g, **D)
    cost = QuadraticCost.from_weights(Q, R, xg, ug, Qf)
    ex, eu = X - xg, U - ug
    expected = (0.5 * torch.einsum("bti,ij,btj->b", ex[:, :-1], Q, ex[:, :-1])
                + 0.5 * torch.einsum("bti,ij,btj->b", eu, R, eu)
                + 0.5 * torch.einsum("bi,ij,bj->b", ex[:, -1], Qf, ex[:, -1]))
    torch.testing.assert_close(cost(X, U), expected, atol=1e-12, rtol=1e-12)
    tv = QuadraticCost.from_weights(Q, R, xg.expand(4, 3), ug, Qf)
    assert tv.time_varying and tv.C.shape == (4, 5, 5)
    torch.testing.assert_close(tv(X, U), expected, atol=1e-12, rtol=1e-12)


def test_scalar_control_weight_and_learnable_weights_get_gradients():
    X, U, g = trajectory(m=1)
    cost = QuadraticCost.from_weights(torch.eye(3, **D), 0.5, learnable=True)
    assert cost.C.shape == (4, 4)
    cost(X, U).sum().backward()
    assert cost.C.grad is not None and torch.isfinite(cost.C.grad).all()


class SoftCost(Cost):
    """A non-quadratic cost: 1 - cos of the first state, log-cosh of the controls, and a quartic terminal term."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0, **D))

    def stage(self, x, u, t=None):
        return self.w * (1 - torch.cos(x[..., 0])) + torch.log(torch.cosh(u)).sum(-1) + 0.1 * (x[..., 1] * u[..., 0])

    def terminal(self, x):
        return (x ** 4).sum(-1)


def test_autodiff_quadratization_agrees_with_finite_differences():
    X, U, _ = trajectory(B=2, T=3)
    cost = SoftCost()
    q = cost.quadratize(X, U)
    eps = 1e-5
    n = 3
    for b, t, i in [(0, 0, 0), (1, 2, 1), (0, 1, 3), (1, 0, 4)]:
        def tau_grad(delta):
            Xp, Up = X.clone(), U.clone()
            if i < n:
                Xp[b, t, i] += delta
            else:
                Up[b, t, i - n] += delta
            return cost.quadratize(Xp, Up).c[b, t]
        with torch.no_grad():
            Xp, Up = X.clone(), U.clone()
            if i < n:
                Xp[b, t, i] += eps
                hi = cost(Xp, Up)[b]
                Xp[b, t, i] -= 2 * eps
            else:
                Up[b, t, i - n] += eps
                hi = cost(Xp, Up)[b]
                Up[b, t, i - n] -= 2 * eps
            lo = cost(Xp, Up)[b]
        assert float(q.c[b, t, i].detach()) == pytest.approx(float((hi - lo) / (2 * eps)), rel=1e-6, abs=1e-8)
        hess_col = (tau_grad(eps) - tau_grad(-eps)) / (2 * eps)
        torch.testing.assert_close(q.C[b, t, :, i], hess_col, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(q.c_final, 4 * X[:, -1] ** 3)
    torch.testing.assert_close(q.C_final, torch.diag_embed(12 * X[:, -1] ** 2))


def test_quadratic_cost_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"c has shape \(4,\); expected \(n\+m\) = \(5\)"):
        QuadraticCost(torch.eye(5, **D), torch.zeros(4, **D))
    with pytest.raises(ValueError, match="need n < n\\+m"):
        QuadraticCost(torch.eye(3, **D), C_final=torch.eye(3, **D))
    cost = QuadraticCost(torch.eye(5, **D).expand(4, 5, 5))
    X, U, _ = trajectory(T=3)
    with pytest.raises(ValueError, match="T=4 stages but the trajectory has 3"):
        cost(X, U)


def test_tracking_cost_is_its_formula_per_problem_and_its_targets_get_gradients():
    g = torch.Generator().manual_seed(2)
    B, T, n, m = 3, 6, 2, 1
    Q, R, Qf = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64)), torch.tensor([[0.1]], dtype=torch.float64), \
        3 * torch.eye(2, dtype=torch.float64)
    x_ref = torch.randn(B, T + 1, n, generator=g, dtype=torch.float64, requires_grad=True)
    u_ref = torch.randn(B, T, m, generator=g, dtype=torch.float64)
    cost = QuadraticCost.tracking(Q, R, x_ref, u_ref, Q_final=Qf)
    X = torch.randn(B, T + 1, n, generator=g, dtype=torch.float64)
    U = torch.randn(B, T, m, generator=g, dtype=torch.float64)
    e, v = X - x_ref, U - u_ref
    expected = (0.5 * ((e[:, :T] @ Q) * e[:, :T]).sum((-1, -2)) + 0.5 * ((v @ R) * v).sum((-1, -2))
                + 0.5 * ((e[:, T] @ Qf) * e[:, T]).sum(-1))
    torch.testing.assert_close(cost(X, U), expected)
    (g_ref,) = torch.autograd.grad(cost(X, U).sum(), x_ref)
    (g_exp,) = torch.autograd.grad(expected.sum(), x_ref)
    torch.testing.assert_close(g_ref, g_exp)
    one = QuadraticCost.tracking(Q, R, x_ref[1].detach(), u_ref[1], Q_final=Qf)       # unbatched: (T+1, n)
    torch.testing.assert_close(one(X[1:2], U[1:2]), expected[1:2].detach())


def test_slew_rate_cost_is_its_formula_and_its_quadratization_has_the_exact_gradient():
    import trajopt
    g = torch.Generator().manual_seed(4)
    B, T, n, m = 2, 5, 2, 2
    base = QuadraticCost.from_weights(torch.eye(n, dtype=torch.float64), 0.1 * torch.eye(m, dtype=torch.float64))
    S = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    u_prev = torch.randn(B, m, generator=g, dtype=torch.float64)
    X = torch.randn(B, T + 1, n, generator=g, dtype=torch.float64)
    U = torch.randn(B, T, m, generator=g, dtype=torch.float64, requires_grad=True)
    for prev in (None, u_prev):
        cost = trajopt.SlewRateCost(base, S, prev)
        full = U if prev is None else torch.cat([prev.unsqueeze(1), U], 1)
        d = full[:, 1:] - full[:, :-1]
        expected = base(X, U) + 0.5 * ((d @ S) * d).sum((-1, -2))
        torch.testing.assert_close(cost(X, U), expected)
        q = cost.quadratize(X, U.detach())
        (gU,) = torch.autograd.grad(expected.sum(), U)
        torch.testing.assert_close(q.c[..., n:], gU)                  # the exact gradient in the controls
        H = torch.autograd.functional.hessian(lambda u: cost(X, u).sum(), U.detach())[0, :, :, 0]
        for t in range(T):                                           # the stagewise blocks of the exact Hessian
            torch.testing.assert_close(q.C[0, t, n:, n:] - base.quadratize(X, U.detach()).C[0, t, n:, n:],
                                       H[t, :, t, :] - 0.1 * torch.eye(m, dtype=torch.float64))


@pytest.mark.parametrize("build, named", [
    (lambda: trajopt.QuadraticCost(torch.randn(3, 4, dtype=torch.float64)), "QuadraticCost: C has shape"),
    (lambda: trajopt.QuadraticCost.from_weights(torch.randn(2, 3), torch.eye(1)), "from_weights: Q has shape"),
    (lambda: trajopt.QuadraticCost.from_weights(torch.eye(2), torch.randn(1, 2)), "from_weights: R has shape"),
    (lambda: trajopt.QuadraticCost.from_weights(torch.eye(2), torch.eye(1), x_goal=torch.zeros(3)), "x_goal"),
    (lambda: trajopt.QuadraticCost.from_weights(torch.eye(2), torch.eye(1), Q_final=torch.eye(3)), "Q_final"),
])
def test_a_weight_of_the_wrong_shape_is_refused_by_name(build, named):
    with pytest.raises(ValueError, match=named):
        build()


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
_C3, _Q, _R = torch.eye(3, **D), torch.diag(torch.tensor([2.0, 0.2], **D)), torch.tensor([[0.002]], **D)
_XR = torch.zeros(6, 2, **D)


@pytest.mark.parametrize("build, error, match", [
    (lambda: QuadraticCost(_C3, torch.zeros(3)), TypeError, "QuadraticCost: c has dtype torch.float32"),
    (lambda: QuadraticCost(_C3, const=float("nan")), ValueError, "QuadraticCost: const contains NaN"),
    (lambda: QuadraticCost(_C3, const="a"), TypeError, "QuadraticCost: const must be a torch.Tensor or a number"),
    (lambda: QuadraticCost(torch.zeros(0, 0, **D)), ValueError, "QuadraticCost: C has shape \\(0, 0\\)"),
    (lambda: QuadraticCost.from_weights(_Q, _R, T=0), ValueError, "from_weights: T must be an int >= 1"),
    (lambda: QuadraticCost.from_weights(_Q, _R, T=-1), ValueError, "from_weights: T must be an int >= 1"),
    (lambda: QuadraticCost.from_weights(_Q, _R, T=1.7), ValueError, "from_weights: T must be an int >= 1"),
    (lambda: QuadraticCost.from_weights(None, _R), TypeError, "from_weights: Q must be a torch.Tensor"),
    (lambda: QuadraticCost.from_weights([[2.0, 0.0], [0.0, 0.2]], _R), TypeError, "from_weights: Q must be"),
    (lambda: QuadraticCost.from_weights(_Q, _R, x_goal="origin"), TypeError, "from_weights: x_goal must be"),
    (lambda: QuadraticCost.tracking(_Q, _R, None), TypeError, "tracking: x_ref must be a torch.Tensor"),
    (lambda: QuadraticCost.tracking(_Q, _R, _XR.tolist()), TypeError, "tracking: x_ref must be a torch.Tensor"),
    (lambda: QuadraticCost.tracking(_Q, _R, _XR.float()), TypeError, "tracking: Q has dtype torch.float64 but x_ref"),
    (lambda: QuadraticCost.tracking(_Q, _R, torch.full((6, 2), float("nan"), **D)), ValueError,
     "tracking: x_ref contains NaN"),
    (lambda: QuadraticCost.tracking(_Q, _R, _XR, u_ref=torch.full((5, 1), math.inf, **D)), ValueError,
     "tracking: u_ref contains NaN"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.eye(2, **D)), ValueError, "SlewRateCost: S has shape \\(2, 2\\) but"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.tensor([[float("nan")]], **D)), ValueError,
     "SlewRateCost: S contains"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.tensor([[math.inf]], **D)), ValueError, "SlewRateCost: S contains"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.ones(1, 1, dtype=torch.int64)), TypeError, "SlewRateCost: S must be"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.ones(1, 1)), TypeError, "SlewRateCost: S has dtype torch.float32"),
    (lambda: trajopt.SlewRateCost(_cost(), "S"), TypeError, "SlewRateCost: S must be a torch.Tensor"),
    (lambda: trajopt.SlewRateCost(_cost(), torch.ones(1, 1, **D), u_prev=torch.tensor([float("nan")], **D)),
     ValueError, "SlewRateCost: u_prev contains NaN"),
])
def test_cost_constructors_name_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def _cost():
    return QuadraticCost.from_weights(_Q, _R)


def test_from_weights_converts_the_other_weights_to_q_dtype():
    """The documented conversion: float tensors of another dtype than Q's take Q's (R a number too)."""
    cost = QuadraticCost.from_weights(_Q, torch.tensor([[0.002]]), x_goal=torch.zeros(2))
    assert cost.C.dtype == torch.float64 and cost.declared_dims() == {"n+m": 3, "n": 2, "m": 1}
    assert QuadraticCost.from_weights(_Q, 0.5).C[2, 2] == 0.5
