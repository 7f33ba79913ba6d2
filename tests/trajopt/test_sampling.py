import shutil

import pytest
import torch

import dynamics
import trajopt
from trajopt import Status, cem, mppi, random_shooting
from trajopt._solvers import sampling
from trajopt.problems import bicycle, pendulum, reference

D64 = dict(dtype=torch.float64)


def double_integrator(**fields):
    model = dynamics.DoubleIntegrator().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64),
                                              x_goal=torch.tensor([1.0, 0.0], **D64))
    x0 = torch.tensor([[0.0, 0.0], [0.5, -0.5], [-1.0, 0.3]], **D64)
    return trajopt.Problem(model, cost, x0, **{"horizon": 20, **fields})


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class Poisoned(dynamics.Dynamics):
    """A model that gives NaN from states whose first component exceeds 50 (a marked start), at every step or, with
    ``only_at``, at that step only (then a cost without a terminal term stays finite)."""

    def __init__(self, inner, only_at=None):
        super().__init__(inner.state_dim, inner.control_dim)
        self.inner, self.only_at = inner, only_at

    def forward(self, x, u, t=None):
        bad = x[..., :1] > 50
        if self.only_at is not None:
            bad = bad & (t == self.only_at)
        return torch.where(bad, float("nan"), self.inner(x, u, t))


SOLVERS = [(mppi, dict(samples=60, max_iter=3, temperature=0.5)), (cem, dict(samples=60, max_iter=3, elites=10)),
           (random_shooting, dict(samples=60, noise_std=1.0))]


def test_mppi_and_cem_approach_the_optimum_of_a_linear_quadratic_problem():
    p = double_integrator()
    model, cost, x0 = p.dynamics, p.cost, p.x0
    optimum = trajopt.ilqr(p, grad=None).cost                    # = LQR on this problem
    g = seeded(0)
    s = mppi(p, samples=1000, max_iter=30, temperature=0.1, noise_std=0.5, generator=g)
    assert ((s.cost / optimum - 1).abs() < 2e-3).all()
    c = cem(p, samples=1000, max_iter=20, elites=50, noise_std=1.0, generator=g)
    assert ((c.cost / optimum - 1).abs() < 2e-4).all()
    shooting = random_shooting(p, samples=200, noise_std=0.5, generator=g)
    assert (shooting.cost >= optimum).all() and (s.cost < shooting.cost).all()
    for sol in (s, c, shooting):                                  # the reported cost is the plan's
        torch.testing.assert_close(sol.cost, cost(trajopt.rollout(model, x0, sol.U), sol.U))
        assert (sol.status == Status.NO_CERTIFICATE).all() and not sol.converged.any()


def test_solution_fields_are_batch_first_and_every_problem_ends_without_a_certificate():
    p = double_integrator()
    B, T = p.B, p.T
    s = mppi(p, samples=50, max_iter=4, generator=seeded(0))
    c = cem(p, samples=50, max_iter=5, elites=10, generator=seeded(0))
    r = random_shooting(p, samples=50, noise_std=0.5, generator=seeded(0))
    for sol, I in ((s, 4), (c, 5), (r, 1)):
        assert sol.status.dtype == torch.int64 and (sol.status == Status.NO_CERTIFICATE).all()
        assert sol.iterations.tolist() == [I] * B and sol.residual is None
        assert sol.cost_history.shape == (B, I + 1) and sol.X.shape == (B, T + 1, 2)
        torch.testing.assert_close(sol.cost_history[:, -1], sol.cost, rtol=0, atol=0)     # after the last
        assert sol.summary() == f"{B} problems: {B} no_certificate"
    assert s.extras["best_sample"].shape == (B, 4) and s.extras["weights"].shape == (B, 50)
    torch.testing.assert_close(s.extras["weights"].sum(1), torch.ones(B, **D64))
    assert c.extras["best_sample"].shape == (B, 5) and c.extras["std"].shape == (B, T, 1)
    assert r.extras["costs"].shape == (B, 50)
    torch.testing.assert_close(r.cost_history[:, 0], r.extras["costs"][:, 0], rtol=0, atol=0)  # U_init's cost
    torch.testing.assert_close(s.cost_history[:, 0], p.cost(trajopt.rollout(p.dynamics, p.x0, p.U_init), p.U_init))


def test_sampling_keeps_the_bounds_and_random_shooting_keeps_the_best_sample():
    g = seeded(1)
    p = double_integrator(horizon=None, U_init=torch.full((3, 20, 1), 0.2, **D64), u_lower=-0.3, u_upper=0.3)
    for solve in (mppi, cem):
        sol = solve(p, max_iter=3, samples=100, generator=g)
        assert (sol.U.abs() <= 0.3).all()
    shooting = random_shooting(p, samples=50, generator=g)
    assert (shooting.U.abs() <= 0.3).all()
    torch.testing.assert_close(shooting.cost, shooting.extras["costs"].amin(1))
    assert (shooting.cost <= shooting.extras["costs"][:, 0]).all()             # sample 0 is U_init


@pytest.mark.parametrize("make", [lambda: pendulum(B=3, horizon=40), lambda: bicycle(B=2)], ids=["P2", "P4"])
def test_plans_of_the_canonical_problems_cost_what_the_reference_says(make):
    p = make()
    spec = reference.PENDULUM if p.n == 2 else reference.BICYCLE
    step = reference.pendulum_step if p.n == 2 else reference.bicycle_step
    u_max = torch.as_tensor(spec["u_max"], **D64)
    for solve, options in SOLVERS:
        sol = solve(p, generator=seeded(2), **{**options, "noise_std": 0.5 * u_max})
        assert (sol.U.abs() <= u_max).all() and (sol.status == Status.NO_CERTIFICATE).all()
        if solve is random_shooting:                                # U_init is one of the samples
            assert (sol.cost <= sol.cost_history[:, 0]).all()
        for b in range(p.B):
            J = reference.trajectory_cost(step, p.x0[b].numpy(), sol.U[b].numpy(), spec["Q"], spec["R"],
                                          spec.get("target"))
            assert float(sol.cost[b]) == pytest.approx(J, rel=1e-9)


def test_an_unbatched_problem_gives_row_0_of_the_batched_solution_unbatched():
    p = double_integrator()
    one = p.replace(x0=p.x0[0])                                    # unbatched: x0 (n,), U_init of horizon
    row = p.replace(x0=p.x0[:1])
    assert not one.batched and row.batched
    for solve, options in SOLVERS:
        sol = solve(one, generator=seeded(3), **options)
        ref = solve(row, generator=seeded(3), **options)
        assert sol.U.shape == (20, 1) and sol.X.shape == (21, 2) and sol.cost.shape == ()
        assert sol.status.shape == () and sol.iterations.shape == () and sol.cost_history.ndim == 1
        for name in ("X", "U", "cost", "status", "iterations", "cost_history"):
            torch.testing.assert_close(getattr(sol, name), getattr(ref, name)[0], rtol=0, atol=0)
        for name, value in sol.extras.items():
            torch.testing.assert_close(value, ref.extras[name][0], rtol=0, atol=0)
        assert int(sol.status) == Status.NO_CERTIFICATE


@pytest.mark.parametrize("only_at", [None, 39], ids=["nan-everywhere", "nan-final-state-only"])
@pytest.mark.parametrize("stored", [True, False], ids=["stored", "summed"])
def test_a_row_whose_model_gives_nan_is_not_finite_and_the_others_are_unaffected(monkeypatch, only_at, stored):
    """Row 2's start is marked so that the model gives NaN there; the others must be solved exactly as they are
    with the plain model (same batch, same random draws). With ``only_at`` the NaN appears only in the final state,
    which P2's cost (no terminal term) does not see: the sample must still count as non-finite."""
    if not stored:
        monkeypatch.setattr(sampling, "STORED_ROWS", 0)         # sum the stage costs along the rollout
    good = pendulum(B=4, horizon=40)
    x0 = good.x0.clone()
    x0[2, 0] = 100.0
    plain, bad = good.replace(x0=x0), good.replace(x0=x0, dynamics=Poisoned(good.dynamics, only_at))
    others = [0, 1, 3]
    for solve, options in SOLVERS:
        sol = solve(bad, generator=seeded(4), **options)
        ref = solve(plain, generator=seeded(4), **options)
        assert sol.status.tolist() == [Status.NO_CERTIFICATE] * 2 + [Status.NOT_FINITE, Status.NO_CERTIFICATE]
        assert not torch.isnan(sol.X).any() and torch.isfinite(sol.U).all()
        assert not torch.isnan(sol.cost).any() and not torch.isnan(sol.cost_history).any()
        torch.testing.assert_close(sol.X[2], x0[2].expand(41, 2), rtol=0, atol=0)       # x0 held
        torch.testing.assert_close(sol.U[2], bad.U_init[2], rtol=0, atol=0)           # its plan never moved
        assert sol.cost[2] == float("inf")
        for name in ("X", "U", "cost", "cost_history"):
            torch.testing.assert_close(getattr(sol, name)[others], getattr(ref, name)[others], rtol=0, atol=0)
        for name, value in sol.extras.items():
            torch.testing.assert_close(value[others], ref.extras[name][others], rtol=0, atol=0)
    # without the final rollout, the status comes from the last iteration: nothing of it was finite
    for solve, options in SOLVERS[:2]:
        sol = solve(bad, generator=seeded(4), rollout_plan=False, **options)
        assert sol.X is None and sol.cost is None and sol.cost_history.shape == (4, 3)
        assert sol.status.tolist() == [Status.NO_CERTIFICATE] * 2 + [Status.NOT_FINITE, Status.NO_CERTIFICATE]


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "summed"])
def test_a_row_whose_model_gives_nan_leaves_the_gradients_of_the_others_finite(monkeypatch, stored):
    """The NaN samples of row 1 must not reach the gradient of a tensor all rows share (``0 * NaN``): d(U[0] and
    cost[0]) / d C is the one with a model that stays finite."""
    if not stored:
        monkeypatch.setattr(sampling, "STORED_ROWS", 0)
    model = dynamics.Pendulum().discretize().double().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[0.8, 0.0], [100.0, 1.0]], **D64)
    grads = []
    for m in (Poisoned(model), model):
        p = trajopt.Problem(m, cost, x0, horizon=10, u_lower=-2.0, u_upper=2.0)
        sol = mppi(p, samples=50, max_iter=2, generator=seeded(0))
        grads.append(torch.autograd.grad(sol.U[0].sum() + sol.cost[0], cost.C)[0])
        assert sol.status.tolist() == [Status.NO_CERTIFICATE, Status.NOT_FINITE if m is not model
                                       else Status.NO_CERTIFICATE]
    assert torch.isfinite(grads[0]).all() and grads[1].abs().max() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_samples_with_a_finite_cost_but_a_non_finite_final_state_cost_inf_both_ways(monkeypatch):
    p = pendulum(B=2, horizon=10)
    x0 = p.x0.clone()
    x0[1, 0] = 100.0
    model = Poisoned(p.dynamics, only_at=9)
    trial = torch.randn(2, 30, 10, 1, generator=seeded(5), **D64)
    stored = sampling.sample_costs(trajopt.Problem(model, p.cost, x0, horizon=trial.shape[2]), x0, trial)
    monkeypatch.setattr(sampling, "STORED_ROWS", 0)
    summed = sampling.sample_costs(trajopt.Problem(model, p.cost, x0, horizon=trial.shape[2]), x0, trial)
    for J in (stored, summed):
        assert torch.isfinite(J[0]).all() and (J[1] == float("inf")).all()
    torch.testing.assert_close(stored[0], summed[0], rtol=1e-12, atol=0)


def test_mppi_gradient_of_a_cost_weight_matches_central_differences_with_common_random_numbers():
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[0.8, 0.0], [-0.4, 1.0]], **D64)
    options = dict(samples=300, max_iter=3, temperature=0.5, noise_std=0.7, correlation=0.5, smoothing=3)

    def plan():
        p = trajopt.Problem(model, cost, x0, horizon=15, u_lower=-2.0, u_upper=2.0)
        return mppi(p, generator=seeded(3), **options).U
    (grad,) = torch.autograd.grad(plan()[:, :5].sum(), cost.C)
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            cost.C[0, 0] += sign * 1e-6
            values.append(float(plan()[:, :5].sum()))
            cost.C[0, 0] -= sign * 1e-6
    assert abs(grad[0, 0].item()) > 1e-3
    assert grad[0, 0].item() == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5)


def test_correlated_noise_has_its_spread_and_lag_one_correlation_and_smoothing_averages():
    g = seeded(0)
    U = torch.linspace(-1, 1, 30, **D64).view(1, 30, 1).repeat(4, 1, 1)
    trial = sampling.perturbed(U, 5000, None, None, g, torch.tensor(0.7, **D64), 0.8)
    assert trial.shape == (4, 5001, 30, 1)
    torch.testing.assert_close(trial[:, 0], U, rtol=0, atol=0)                  # sample 0 is the plan itself
    e = trial[:, 1:] - U.unsqueeze(1)
    assert e.std().item() == pytest.approx(0.7, rel=0.02)
    lag = (e[:, :, 1:] * e[:, :, :-1]).mean() / e.var()
    assert lag.item() == pytest.approx(0.8, abs=0.02)
    smooth = sampling.smooth
    ramp = torch.arange(10, **D64).view(1, 10, 1).repeat(2, 1, 3)
    torch.testing.assert_close(smooth(ramp, 3)[:, 1:-1], ramp[:, 1:-1])        # linear: unchanged inside
    torch.testing.assert_close(smooth(torch.ones(2, 10, 3, **D64), 4), torch.ones(2, 10, 3, **D64))
    torch.testing.assert_close(smooth(ramp, 3)[:, 0], torch.full((2, 3), 0.5, **D64))   # edges: fewer terms


def test_sampling_solvers_reject_bad_input():
    p = double_integrator()
    with pytest.raises(ValueError, match="noise_std must be a positive finite number"):
        mppi(p, noise_std=-1.0)
    with pytest.raises(ValueError, match="mppi: noise_std must be a positive finite number, got inf"):
        mppi(p, noise_std=float("inf"))
    with pytest.raises(ValueError, match="cem: noise_std must be a positive finite number"):
        cem(p, noise_std=torch.tensor([float("inf")], **D64))
    with pytest.raises(ValueError, match="random_shooting: noise_std must be a positive finite number"):
        random_shooting(p, noise_std=0.0)
    with pytest.raises(ValueError, match=r"noise_std must be a scalar or \(1,\)"):
        mppi(p, noise_std=torch.ones(2, **D64))
    with pytest.raises(ValueError, match=r"mppi: correlation must be in \[0, 1\), got 1.0"):
        mppi(p, correlation=1.0)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        mppi(p, temperature=0.0)
    for solve in (mppi, cem, random_shooting):
        with pytest.raises(ValueError, match=f"{solve.__name__}: samples must be an int >= 1, got 0"):
            solve(p, samples=0)
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        mppi(p, max_iter=0)
    with pytest.raises(ValueError, match="smoothing must be an int >= 1"):
        mppi(p, smoothing=1.5)
    with pytest.raises(ValueError, match="elites must be an int >= 1"):
        cem(p, elites=0)
    with pytest.raises(ValueError, match=r"cem: momentum must be in \[0, 1\)"):
        cem(p, momentum=1.0)
    with pytest.raises(ValueError, match="min_std must be a positive finite number"):
        cem(p, min_std=0.0)
    with pytest.raises(ValueError, match="elites .* must not exceed samples"):
        cem(p, samples=10, elites=20)
    with pytest.raises(ValueError, match="uniform samples need finite u_lower and u_upper"):
        random_shooting(p)
    with pytest.raises(TypeError, match="unexpected keyword argument 'iterations'"):
        mppi(p, iterations=3)
    with pytest.raises(TypeError, match="the first argument must be a trajopt.Problem"):
        mppi(p.dynamics, p.cost, p.x0)
    with pytest.raises(ValueError, match="u_lower has shape"):
        double_integrator(u_lower=torch.zeros(7, **D64))


def test_both_ways_of_costing_samples_agree_and_the_plan_rollout_can_be_skipped(monkeypatch):
    p = double_integrator()
    model, cost, x0, T = p.dynamics, p.cost, p.x0, p.T
    trial = torch.randn(3, 40, T, 1, generator=seeded(4), **D64)
    stored = sampling.sample_costs(trajopt.Problem(model, cost, x0, horizon=trial.shape[2]), x0, trial)
    monkeypatch.setattr(sampling, "STORED_ROWS", 0)                 # sum the stage costs along the rollout
    summed = sampling.sample_costs(trajopt.Problem(model, cost, x0, horizon=trial.shape[2]), x0, trial)
    reference = torch.stack([cost(trajopt.rollout(model, x0, trial[:, i]), trial[:, i]) for i in range(40)], 1)
    torch.testing.assert_close(stored, reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(summed, reference, rtol=1e-12, atol=0)
    # the samples as the solvers draw them (time-major), on models whose steps keep that layout
    pendulum_model = dynamics.Pendulum().discretize().double()
    for model, cost, x0 in ((model, cost, x0),
                            (pendulum_model, cost, x0 @ torch.tensor([[3.0, 0.0], [0.0, 2.0]], **D64))):
        plans = torch.randn(3, T, 1, generator=seeded(6), **D64)
        bound = torch.full((3, T, 1), 1.5, **D64)
        trial = sampling.perturbed(plans, 39, -bound, bound, seeded(7), torch.tensor(0.8, **D64), 0.5)
        reference = torch.stack([cost(trajopt.rollout(model, x0, trial[:, i]), trial[:, i]) for i in range(40)], 1)
        costs = sampling.sample_costs(trajopt.Problem(model, cost, x0, horizon=trial.shape[2]), x0, trial)
        torch.testing.assert_close(costs, reference, rtol=1e-12, atol=0)
    for solve in (mppi, cem):
        options = dict(samples=50, max_iter=2, **({"elites": 10} if solve is cem else {}))
        full = solve(p, generator=seeded(5), **options)
        bare = solve(p, rollout_plan=False, generator=seeded(5), **options)
        assert bare.X is None and bare.cost is None
        torch.testing.assert_close(bare.U, full.U, rtol=0, atol=0)
        # without the final rollout, the history holds the costs before each iteration only
        assert bare.cost_history.shape == (3, 2)
        torch.testing.assert_close(bare.cost_history, full.cost_history[:, :-1], rtol=0, atol=0)
        assert (bare.status == Status.NO_CERTIFICATE).all()


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_sample_costs_give_the_eager_plans_and_gradients():
    model = dynamics.Pendulum().discretize().double()
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64), learnable=True)
    x0 = torch.tensor([[3.0, 0.0], [-0.4, 1.0]], **D64)
    options = dict(samples=40, max_iter=2, temperature=0.5)
    plans, grads = [], []
    for compile in (False, True):
        p = trajopt.Problem(model, cost, x0, horizon=5, u_lower=-2.0, u_upper=2.0)
        U = mppi(p, generator=seeded(8), compile=compile, **options).U
        plans.append(U)
        grads.append(torch.autograd.grad(U.sum(), (cost.C, model.model.g)))
    assert plans[0].abs().max() > 0.1
    torch.testing.assert_close(plans[1], plans[0], rtol=1e-10, atol=1e-12)
    for compiled, eager in zip(grads[1], grads[0]):
        assert eager.abs().max() > 1e-4
        torch.testing.assert_close(compiled, eager, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("stored", [True, False])
def test_samples_see_their_own_problems_per_problem_tensors(monkeypatch, stored):
    """A cost whose targets differ by problem: each sample is costed with its own problem's target, both ways."""
    if not stored:
        monkeypatch.setattr(sampling, "STORED_ROWS", 0)
    model = dynamics.Pendulum().discretize().double()
    goals = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-2.0, 0.5]], **D64)
    C = torch.diag(torch.tensor([2.0, 0.2, 0.01], **D64)).expand(3, 3, 3)
    c = -torch.cat([goals @ C[0, :2, :2], torch.zeros(3, 1, **D64)], -1)
    cost = trajopt.QuadraticCost(C, c, batched=True)
    x0 = torch.tensor([[0.5, 0.0], [1.0, 0.2], [-1.0, 0.0]], **D64)
    trial = torch.randn(3, 20, 8, 1, generator=seeded(3), **D64)
    costs = sampling.sample_costs(trajopt.Problem(model, cost, x0, horizon=8), x0, trial)
    for b in range(3):
        alone = trajopt.QuadraticCost(C[b], c[b])
        X = trajopt.rollout(model, x0[b].expand(20, 2), trial[b])
        torch.testing.assert_close(costs[b], alone(X, trial[b]), rtol=1e-12, atol=0)


@pytest.mark.parametrize("solver", [trajopt.mppi, trajopt.cem, trajopt.random_shooting])
@pytest.mark.parametrize("option, value, named", [("generator", 0, "generator must be a torch.Generator"),
                                                  ("compile", "yes", "compile must be a bool"),
                                                  ("noise_std", "x", "noise_std must be a number")])
def test_sampling_options_of_the_wrong_type_are_refused_by_name(solver, option, value, named):
    p = trajopt.problems.pendulum(1).replace(U_init=torch.zeros(1, 10, 1, dtype=torch.float64))
    with pytest.raises(TypeError, match=f"{solver.__name__}: {named}"):
        solver(p, samples=8, **({"elites": 4} if solver is trajopt.cem else {}), **{option: value})


# ---------------------------------------------------------------------------------------------- mppi's proposals
def test_mppi_without_proposals_is_the_plain_update_bit_for_bit():
    """``proposals=None`` (the default) is MPPI's update over the perturbed samples alone, unchanged: one iteration
    recomputed from the same draws by the documented formula matches to the last bit."""
    p = double_integrator(u_lower=-1.0, u_upper=1.0)
    options = dict(samples=64, max_iter=1, temperature=0.3, noise_std=0.7)
    sol = mppi(p, generator=seeded(4), **options)
    again = mppi(p, proposals=None, generator=seeded(4), **options)
    trial = sampling.perturbed(p.U_init, 64, p.u_lower, p.u_upper, seeded(4), torch.tensor(0.7, **D64))
    J = sampling.sample_costs(p, p.x0, trial)[:, 1:]
    w = torch.softmax(-(J - J.amin(1, keepdim=True)) / 0.3, 1)
    drawn = trial[:, 1:].permute(0, 2, 3, 1).reshape(3, -1, 64)
    U = p.U_init + (torch.bmm(drawn, w.unsqueeze(-1)).view_as(p.U_init) - w.sum(1).view(3, 1, 1) * p.U_init)
    for s in (sol, again):
        torch.testing.assert_close(s.U, U.clamp(-1, 1), rtol=0, atol=0)
        torch.testing.assert_close(s.extras["weights"], w, rtol=0, atol=0)
        assert s.extras["weights"].shape == (3, 64)


def test_a_proposal_at_the_optimum_pulls_the_plan_onto_it():
    p = double_integrator(u_lower=-1.0, u_upper=1.0)
    optimum = trajopt.ilqr(p, grad=None)
    options = dict(samples=50, max_iter=2, temperature=0.01, noise_std=1.0)
    alone = mppi(p, generator=seeded(1), **options)
    K = 3                                    # the optimum among two poor proposals (zero and a constant push)
    proposals = torch.stack([torch.zeros_like(optimum.U), optimum.U, torch.full_like(optimum.U, 0.9)], 1)
    guided = mppi(p, proposals=proposals, generator=seeded(1), **options)
    assert guided.extras["weights"].shape == (3, 50 + K)
    assert (guided.extras["weights"][:, 50 + 1] > 0.99).all()            # the proposals are weighted last
    assert (guided.cost / optimum.cost - 1).abs().max() < 1e-3
    assert (alone.cost / optimum.cost - 1).abs().min() > 1e-2            # the samples alone do not get there
    assert (guided.extras["best_sample"][:, -1] <= optimum.cost * (1 + 1e-9)).all()
    # an unbatched problem takes (K, T, m)
    single = trajopt.Problem(p.dynamics, p.cost, p.x0[0], horizon=20, u_lower=-1.0, u_upper=1.0)
    one = mppi(single, proposals=proposals[0], generator=seeded(1), **options)
    assert one.U.shape == (20, 1) and float((one.cost / optimum.cost[0] - 1).detach()) < 1e-3


def test_proposals_are_clamped_into_the_bounds_and_count_as_samples_with_zero_noise():
    p = double_integrator(u_lower=-0.5, u_upper=0.5)
    far = torch.full((3, 1, 20, 1), 7.0, **D64)                  # beyond the bound: evaluated as 0.5 everywhere
    clamped = torch.full((3, 1, 20, 1), 0.5, **D64)
    options = dict(samples=30, max_iter=2, temperature=0.5)
    a = mppi(p, proposals=far, generator=seeded(2), **options)
    b = mppi(p, proposals=clamped, generator=seeded(2), **options)
    torch.testing.assert_close(a.U, b.U, rtol=0, atol=0)
    assert (a.U.abs() <= 0.5).all()
    # a proposal equal to the plan is the plan's own sample with zero noise: weighted by the plan's cost among the
    # perturbed samples' costs (the same draws)
    one = mppi(p, proposals=p.U_init.unsqueeze(1), samples=30, max_iter=1, temperature=0.5, generator=seeded(2))
    trial = sampling.perturbed(p.U_init, 30, p.u_lower, p.u_upper, seeded(2), torch.tensor(1.0, **D64))
    J = torch.cat([sampling.sample_costs(p, p.x0, trial)[:, 1:], one.cost_history[:, :1]], 1)     # (B, N + 1)
    torch.testing.assert_close(one.extras["weights"], torch.softmax(-J / 0.5, 1))


def test_the_plan_is_differentiable_with_respect_to_the_proposals():
    model = dynamics.Pendulum().discretize().requires_grad_(False)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], **D64)),
                                              torch.tensor([[0.02]], **D64))
    x0 = torch.tensor([[0.8, 0.0], [-0.4, 1.0]], **D64)
    options = dict(samples=100, max_iter=2, temperature=2.0, noise_std=0.7)
    base = torch.randn(2, 4, 10, 1, generator=seeded(7), **D64).clamp(-1.5, 1.5)

    def plan(proposals):
        p = trajopt.Problem(model, cost, x0, horizon=10, u_lower=-2.0, u_upper=2.0)
        return mppi(p, proposals=proposals, generator=seeded(3), **options).U[:, :3].sum()
    proposals = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(plan(proposals), proposals)
    i = (1, 2, 4, 0)
    values = []
    for sign in (1, -1):
        moved = base.clone()
        moved[i] += sign * 1e-6
        values.append(float(plan(moved)))
    assert abs(grad[i].item()) > 1e-3
    assert grad[i].item() == pytest.approx((values[0] - values[1]) / 2e-6, rel=1e-5)


def test_bad_proposals_are_refused_by_name():
    p = double_integrator()
    good = torch.zeros(3, 2, 20, 1, **D64)
    with pytest.raises(TypeError, match=r"mppi: proposals must be None or a tensor \(B, K, T, m\) = \(3, K, 20, 1\)"):
        mppi(p, proposals=good.numpy())
    for shape in ((2, 2, 20, 1), (3, 2, 19, 1), (3, 2, 20, 2), (2, 20, 1)):
        with pytest.raises(ValueError, match=rf"mppi: proposals has shape \({shape[0]}, .*expected \(B, K, T, m\)"):
            mppi(p, proposals=torch.zeros(shape, **D64))
    with pytest.raises(TypeError, match="mppi: proposals is torch.float32 but the problem is torch.float64"):
        mppi(p, proposals=good.float())
    bad = good.clone()
    bad[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="mppi: proposals contains NaN or Inf"):
        mppi(p, proposals=bad)
