import pytest
import torch

import dynamics
import trajopt
from benchmarks import ilqr as ilqr_suite
from benchmarks.collocation import order_errors
from trajopt.collocation import collocation, collocation_defects, multiple_shooting

D64 = dict(dtype=torch.float64)


@pytest.mark.parametrize("method, order", [("hermite_simpson", 4), ("trapezoidal", 2)])
def test_collocation_error_falls_at_the_methods_order(method, order):
    """A damped oscillator with its force fixed by equal bounds (a held smooth signal): the knots solve the
    defects alone, and the final knot's error against the exact flow (expm) falls at the method's order as
    the intervals double (fitted slope over T = 10, 20, 40, 80)."""
    errors, slope = order_errors(method)
    assert order - 0.3 <= slope <= order + 0.4, (errors, slope)


def test_collocation_defects_match_their_formula():
    model = dynamics.Pendulum()
    X, U = torch.randn(3, 6, 2, **D64), torch.randn(3, 5, 1, **D64)
    f = lambda x, u: model.derivative(x, u)                     # noqa: E731
    left, right, u = X[:, :-1], X[:, 1:], U
    trap = left + 0.025 * (f(left, u) + f(right, u)) - right
    mid = 0.5 * (left + right) + 0.05 / 8 * (f(left, u) - f(right, u))
    hs = left + 0.05 / 6 * (f(left, u) + 4 * f(mid, u) + f(right, u)) - right
    torch.testing.assert_close(collocation_defects(model, X, U, 0.05, "trapezoidal"), trap)
    torch.testing.assert_close(collocation_defects(model, X, U, 0.05), hs)


def _truncated(name, T):
    """P2 or P4 over its first ``T`` steps (the tests' budget; the full problems run in the benchmark)."""
    p = ilqr_suite.problem(name, 1)
    p["T"] = T
    if p["U_init"] is not None:
        p["U_init"] = p["U_init"][:, :T]
    return p


def test_scipy_collocation_of_p2_and_p4_meets_the_defects_and_bounds():
    for name, model in (("P2 pendulum", dynamics.Pendulum()), ("P4 bicycle", dynamics.KinematicBicycle())):
        p = _truncated(name, 40)
        model.requires_grad_(False)
        ref = ilqr_suite.solve(p, p["x0"], grad=None, U_init=p["U_init"])          # a good guess
        sol = collocation(model, p["cost"], p["x0"], ref.U, horizon=p["T"], u_lower=-p["u_max"], u_upper=p["u_max"],
                          solver="scipy")
        assert sol.converged.all()
        assert float(sol.history["defect"].max()) <= 1e-6
        assert bool((sol.U.abs() <= p["u_max"]).all())
        torch.testing.assert_close(collocation_defects(model, sol.X, sol.U), torch.zeros_like(sol.X[:, 1:]),
                                   atol=1e-6, rtol=0)
        # the continuous-time transcription of the same problem lands near iLQR's discrete optimum
        assert abs(float(sol.cost) / float(ref.cost) - 1) < 0.05


def test_multiple_shooting_reaches_ilqrs_optimum_on_p2_and_p4():
    for name, segments in (("P2 pendulum", (1, 10)), ("P4 bicycle", (10,))):   # SLSQP is dense: O(vars^3)
        p = _truncated(name, 40)
        ref = ilqr_suite.solve(p, p["x0"], grad=None, U_init=p["U_init"])
        start = (ref.U + 0.05 * p["u_max"]).clamp(-p["u_max"], p["u_max"])      # in the same basin
        for segment in segments:
            sol = multiple_shooting(p["dynamics"], p["cost"], p["x0"], start, horizon=p["T"], segment=segment,
                                    u_lower=-p["u_max"], u_upper=p["u_max"], solver="scipy")
            assert sol.converged.all() and float(sol.history["defect"].max()) <= 1e-8
            assert abs(float(sol.cost) / float(ref.cost) - 1) <= 1e-4, (name, segment)


def test_theseus_and_scipy_agree_without_bounds():
    pytest.importorskip("theseus")
    model = dynamics.Pendulum().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)), 0.02 * torch.eye(1, **D64))
    x0 = torch.tensor([[0.8, 0.0], [-0.5, 1.0]], **D64)
    options = dict(horizon=20, method="hermite_simpson")
    exact = collocation(model, cost, x0, solver="scipy", **options)
    th = collocation(model, cost, x0, solver="theseus", grad=None, **options)
    assert th.converged.all() and float(th.history["defect"].max()) <= 1e-6
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)


def test_theseus_meets_scipy_on_p2_with_active_bounds():
    pytest.importorskip("theseus")
    p = _truncated("P2 pendulum", 40)
    model = dynamics.Pendulum().requires_grad_(False)
    ref = ilqr_suite.solve(p, p["x0"], grad=None)
    options = dict(horizon=p["T"], u_lower=-p["u_max"], u_upper=p["u_max"])
    exact = collocation(model, p["cost"], p["x0"], ref.U, solver="scipy", **options)
    th = collocation(model, p["cost"], p["x0"], ref.U, solver="theseus", grad=None, **options)
    assert (th.U.abs() == p["u_max"]).any(), "the test should have controls at the bound"
    assert th.converged.all() and float(th.history["defect"].max()) <= 1e-6
    assert bool((th.U.abs() <= p["u_max"]).all())
    torch.testing.assert_close(th.cost, exact.cost, rtol=1e-6, atol=0)



def test_multiple_shooting_of_a_time_varying_model_matches_lqr(p1):
    t, _ = p1(B=2, T=12, n=4, m=2)
    F, f, C, c = (t[k][0] for k in ("F", "f", "C", "c"))      # one time-varying problem, two starts
    model = dynamics.LinearDynamics(F[..., :4], F[..., 4:], f)
    cost = trajopt.QuadraticCost(C, c)
    ref = trajopt.lqr(*(z.expand(2, *z.shape) for z in (F, f, C, c)), t["x0"])
    for segment in (1, 4):
        sol = multiple_shooting(model, cost, t["x0"], horizon=12, segment=segment, solver="scipy")
        assert sol.converged.all()         # SLSQP stops at ftol 1e-10 on the cost: U to about 1e-5
        torch.testing.assert_close(sol.cost, cost(ref.X, ref.U), rtol=1e-9, atol=0)
        torch.testing.assert_close(sol.U, ref.U, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="segment=1"):
        multiple_shooting(model, cost, t["x0"], horizon=12, segment=4, x_upper=10.0, solver="scipy")
