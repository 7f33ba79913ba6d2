"""Bad input to a model call or a dynamics helper raises naming the argument and what was expected.

The model-call check is shared (every Dynamics subclass's forward, jacobians and vector_hessians pass through it),
so the tests loop over every model class.
"""
import math

import numpy as np
import pytest
import torch

import dynamics
from dynamics.contact import BouncingMass, PlanarPusher
from dynamics.learned import (MLPDynamics, ProbabilisticEnsemble, ResidualDynamics, collect_from_model,
                              identify_theseus, open_loop_error, residuals)
from tests.dynamics.models import Coupled

D64 = dict(dtype=torch.float64)
CONTINUOUS = [dynamics.Pendulum, dynamics.CartPole, dynamics.Acrobot, dynamics.KinematicBicycle,
              lambda: dynamics.DoubleIntegrator(2), dynamics.Quadrotor2D, BouncingMass, PlanarPusher]
ARM = """
<mujoco>
  <option timestep="0.01"/>
  <worldbody><body><joint name="hinge" type="hinge" axis="0 1 0"/>
    <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.05" mass="1"/></body></worldbody>
  <actuator><motor joint="hinge" ctrlrange="-2 2"/></actuator>
</mujoco>
"""


def _mujoco():
    pytest.importorskip("mujoco", reason="MuJoCoDynamics needs the optional mujoco package")
    from dynamics.mujoco import MuJoCoDynamics
    return MuJoCoDynamics(ARM)


def _linear():
    g = torch.Generator().manual_seed(0)
    return dynamics.LinearDynamics(torch.randn(3, 3, generator=g, **D64), torch.randn(3, 2, generator=g, **D64))


def _subclass_of_discretized():
    class Damped(dynamics.Discretized):          # overrides forward: still checked
        def forward(self, x, u, t=None):
            return 0.9 * super().forward(x, u, t)
    return Damped(dynamics.Pendulum(), 0.05, "rk4")


DISCRETE = {  # name: a model in float64
    **{f"{type(make()).__name__}.discretize()": (lambda make=make: make().discretize()) for make in CONTINUOUS},
    "LinearDynamics": _linear,
    "LinearDynamics(batched)": lambda: dynamics.LinearDynamics(torch.eye(2, **D64).expand(3, 2, 2),
                                                               torch.ones(3, 2, 1, **D64), batched=True),
    "Coupled (a Dynamics subclass)": Coupled,
    "Discretized subclass": _subclass_of_discretized,
    "MLPDynamics": lambda: MLPDynamics(3, 2, hidden=(8,)).double(),
    "ProbabilisticEnsemble": lambda: ProbabilisticEnsemble(3, 2, members=2, hidden=(8,)).double(),
    "ProbabilisticEnsemble(random)": lambda: ProbabilisticEnsemble(3, 2, members=2, hidden=(8,),
                                                                   propagation="random").double(),
    "ResidualDynamics": lambda: ResidualDynamics(dynamics.Pendulum().discretize(), hidden=(8,)).double(),
    "MuJoCoDynamics": _mujoco,
}


def _bad_calls(model, method):
    """``(arguments, exception, message pattern)`` of calls that must raise, for a model of batch 3."""
    n, m = model.state_dim, model.control_dim
    x, u, lam = torch.zeros(3, n, **D64), torch.zeros(3, m, **D64), torch.ones(3, n, **D64)
    extra = (lam,) if method == "vector_hessians" else ()
    where = rf"{type(model).__name__}\.{method}: "
    cases = [
        ((x.tolist(), u, *extra), TypeError, where + "x must be a torch.Tensor, got list"),
        ((x, 0.5, *extra), TypeError, where + "u must be a torch.Tensor, got float"),
        ((x.long(), u.long(), *extra), TypeError, where + "x must be float32 or float64, got torch.int64"),
        ((x.float(), u, *extra), TypeError, where + "u has dtype torch.float64 but x has torch.float32"),
        ((torch.zeros(3, n + 1, **D64), u, *extra), ValueError, where + rf"x has shape \(3, {n + 1}\); expected "
                                                                         rf"\(B, n\) = \(B, {n}\)"),
        ((torch.zeros(3, 1, **D64), u, *extra), ValueError, where + r"x has shape \(3, 1\); expected"),
        ((x, torch.zeros(3, m + 1, **D64), *extra), ValueError, where + rf"u has shape \(3, {m + 1}\); expected "
                                                                         rf"\(B, m\) = \(B, {m}\)"),
        ((x.unsqueeze(0), u.unsqueeze(0), *(e.unsqueeze(0) for e in extra)), ValueError, where + "x has shape"),
        ((x[:2], u, *extra), ValueError, where + "batch sizes differ: x has B=2, u has B=3"),
    ]
    if method == "vector_hessians":
        cases += [((x, u, lam.tolist()), TypeError, where + "lam must be a torch.Tensor, got list"),
                  ((x, u, torch.ones(3, n + 1, **D64)), ValueError, where + rf"lam has shape \(3, {n + 1}\)"),
                  ((x, u, lam[:2]), ValueError, where + "batch sizes differ: x has B=3, lam has B=2"),
                  ((x, u, lam.float()), TypeError, where + "lam has dtype torch.float32 but x has torch.float64")]
    return cases


@pytest.mark.parametrize("method", ["forward", "jacobians", "vector_hessians"])
@pytest.mark.parametrize("name", list(DISCRETE))
def test_every_model_call_rejects_bad_inputs_naming_the_argument(name, method):
    model = DISCRETE[name]()
    call = model if method == "forward" else getattr(model, method)
    for args, error, pattern in _bad_calls(model, method):
        with pytest.raises(error, match=pattern):
            call(*args)


@pytest.mark.parametrize("make", CONTINUOUS)
def test_a_continuous_models_own_call_is_checked_too(make):
    model = make()
    for args, error, pattern in _bad_calls(model, "forward"):
        with pytest.raises(error, match=pattern):
            model(*args)


def _closed_form_jacobians(model):
    if isinstance(model, dynamics.Discretized):
        return type(model.model).derivative_jacobians is not dynamics.ContinuousDynamics.derivative_jacobians
    return type(model).jacobians is not dynamics.Dynamics.jacobians


@pytest.mark.parametrize("name", [k for k in DISCRETE if k != "MuJoCoDynamics"])
def test_valid_calls_still_work_and_an_unbatched_input_broadcasts(name):
    model = DISCRETE[name]()
    n, m = model.state_dim, model.control_dim
    g = torch.Generator().manual_seed(0)
    x, u = 0.1 * torch.randn(3, n, generator=g, **D64), 0.1 * torch.randn(3, m, generator=g, **D64)
    if name == "ProbabilisticEnsemble(random)":
        model.resample_members(3, torch.Generator().manual_seed(1))
    y = model(x, u)
    assert y.shape == (3, n) and y.dtype == torch.float64
    if "random" not in name and "batched" not in name:    # a random member per row; a model per row
        torch.testing.assert_close(model(x[0], u[0]), y[0])
        torch.testing.assert_close(model(x[0], u), model(x[0].expand(3, n), u))       # unbatched x broadcast
        torch.testing.assert_close(model(x, u[0]), model(x, u[0].expand(3, m)))
    if _closed_form_jacobians(model):       # (torch.func's first call costs seconds; test_base covers those)
        A, B = model.jacobians(x, u)
        assert A.shape == (3, n, n) and B.shape == (3, n, m)
    hxx, hux, huu = model.vector_hessians(x, u, torch.ones(n, **D64))          # unbatched lam broadcast
    assert hxx.shape == (3, n, n) and hux.shape == (3, m, n) and huu.shape == (3, m, m)


@pytest.mark.parametrize("name", ["Pendulum.discretize()", "Acrobot.discretize()", "LinearDynamics",
                                  "MLPDynamics", "ResidualDynamics"])
def test_a_non_finite_row_gives_a_non_finite_row_and_leaves_the_others_alone(name):
    """Documented: no scan of the values; a NaN input row is a NaN output row (the solvers flag it per problem)."""
    model = DISCRETE[name]()
    n, m = model.state_dim, model.control_dim
    x, u = torch.full((3, n), 0.1, **D64), torch.full((3, m), 0.2, **D64)
    good = model(x, u)
    x[1, 0], u[2, 0] = math.nan, math.inf
    y = model(x, u)
    assert not torch.isfinite(y[1:]).all(-1).any()
    torch.testing.assert_close(y[0], good[0])


def test_every_subclass_gets_the_check_without_doing_anything():
    class Plain(dynamics.Dynamics):
        def __init__(self):
            super().__init__(2, 1)

        def forward(self, x, u, t=None):
            return x + u

        def jacobians(self, x, u, t=None):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match=r"Plain\.forward: u has shape \(4, 2\); expected"):
        Plain()(torch.zeros(4, 2), torch.zeros(4, 2))          # x + u would have broadcast silently
    with pytest.raises(TypeError, match=r"Plain\.jacobians: x must be a torch\.Tensor"):
        Plain().jacobians(None, torch.zeros(1))
    assert Plain.forward.__wrapped__.__name__ == "forward" and Plain.forward.__name__ == "forward"


class _Returns(dynamics.Dynamics):
    """A user model whose forward or jacobians return what ``bad`` makes of the right answer."""

    def __init__(self, forward=lambda y: y, jacobians=lambda A, B: (A, B), hessians=lambda *h: h):
        super().__init__(2, 1)
        self.wrap_forward, self.wrap_jacobians, self.wrap_hessians = forward, jacobians, hessians

    def forward(self, x, u, t=None):
        return self.wrap_forward(torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]], -1))

    def jacobians(self, x, u, t=None):
        A = torch.tensor([[1.0, 0.1], [0.0, 1.0]], dtype=x.dtype).expand(*x.shape[:-1], 2, 2)
        B = torch.tensor([[0.0], [0.1]], dtype=x.dtype).expand(*x.shape[:-1], 2, 1)
        return self.wrap_jacobians(A, B)

    def vector_hessians(self, x, u, lam, t=None):
        return self.wrap_hessians(x.new_zeros(*x.shape[:-1], 2, 2), x.new_zeros(*x.shape[:-1], 1, 2),
                                  x.new_zeros(*x.shape[:-1], 1, 1))


class _Field(dynamics.ContinuousDynamics):
    """A continuous user model whose vector field returns ``(B, 1)``: one column short."""

    def __init__(self):
        super().__init__(2, 1)

    def derivative(self, x, u, t=None):
        return x[..., 1:]


BAD_OUTPUTS = [
    ("forward (B, 1)", dict(forward=lambda y: y[..., :1]), "forward", ValueError,
     r"_Returns\.forward returned shape \(4, 1\) as its output; expected \(4, 2\)"),
    ("forward float32", dict(forward=lambda y: y.float()), "forward", TypeError,
     r"_Returns\.forward returned torch\.float32 as its output for torch\.float64 inputs"),
    ("forward a list", dict(forward=lambda y: y.tolist()), "forward", TypeError,
     r"_Returns\.forward must return a tensor \(4, 2\); its output is a list"),
    ("forward one row", dict(forward=lambda y: y[:1]), "forward", ValueError, r"returned shape \(1, 2\)"),
    ("jacobians A (B, 2, 1)", dict(jacobians=lambda A, B: (A[..., :1], B)), "jacobians", ValueError,
     r"_Returns\.jacobians returned shape \(4, 2, 1\) as A = df/dx; expected \(4, 2, 2\)"),
    ("jacobians B float32", dict(jacobians=lambda A, B: (A, B.float())), "jacobians", TypeError,
     r"_Returns\.jacobians returned torch\.float32 as B = df/du"),
    ("jacobians one tensor", dict(jacobians=lambda A, B: A), "jacobians", TypeError,
     r"_Returns\.jacobians must return 2 tensors"),
    ("vector_hessians f_uu (B, 2, 2)", dict(hessians=lambda a, b, c: (a, b, a)), "vector_hessians", ValueError,
     r"_Returns\.vector_hessians returned shape \(4, 2, 2\) as f_uu; expected \(4, 1, 1\)"),
]


@pytest.mark.parametrize("label, wrap, method, error, pattern", BAD_OUTPUTS, ids=[c[0] for c in BAD_OUTPUTS])
def test_a_model_returning_the_wrong_shape_dtype_or_type_is_named(label, wrap, method, error, pattern):
    x, u = torch.zeros(4, 2, **D64), torch.zeros(4, 1, **D64)
    args = (x, u, torch.zeros(4, 2, **D64)) if method == "vector_hessians" else (x, u)
    with pytest.raises(error, match=pattern):
        getattr(_Returns(**wrap), method)(*args)
    good = getattr(_Returns(), method)(*args)
    assert all(torch.isfinite(z).all() for z in ((good,) if method == "forward" else good))


def test_a_continuous_models_vector_field_returning_the_wrong_shape_is_named_by_every_consumer():
    import trajopt
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), torch.eye(1, **D64))
    problem = trajopt.Problem(_Field().discretize(0.1), cost, torch.ones(3, 2, **D64), horizon=4)
    for call in (lambda: trajopt.ilqr(problem), lambda: trajopt.collocation(problem, backend=trajopt.Scipy()),
                 lambda: _Field().discretize(0.1).jacobians(torch.ones(3, 2, **D64), torch.ones(3, 1, **D64))):
        with pytest.raises(ValueError, match=r"_Field\.derivative returned shape \((\d+), 1\) as its output; "
                                             r"expected \(\1, 2\)"):
            call()


@pytest.mark.parametrize("dims, pattern", [((2.5, 1), "state_dim must be an int >= 1, got 2.5"),
                                           (("2", 1), "state_dim must be an int >= 1, got '2'"),
                                           ((0, 1), "state_dim must be an int >= 1, got 0"),
                                           ((2, -1), "control_dim must be an int >= 1, got -1"),
                                           ((True, 1), "state_dim must be an int >= 1, got True")])
def test_model_dimensions_must_be_positive_ints(dims, pattern):
    class Small(dynamics.Dynamics):
        def forward(self, x, u, t=None):
            return x

    with pytest.raises(ValueError, match=f"Small: {pattern}"):
        Small(*dims)
    model = Small(np.int64(2), 1)                                   # numpy integers are ints
    assert model.state_dim == 2 and type(model.state_dim) is int


def test_discretized_takes_a_continuous_model_only():
    with pytest.raises(TypeError, match=r"Discretized: model must be a dynamics\.ContinuousDynamics \(it is already "
                                        r"discrete\), got Discretized"):
        dynamics.Discretized(dynamics.Pendulum().discretize(), 0.1)
    with pytest.raises(TypeError, match="Discretized: model must be a dynamics.ContinuousDynamics, got str"):
        dynamics.Discretized("pendulum", 0.1)


def test_linear_dynamics_flags_must_be_bools():
    for flag in ("learnable", "batched"):
        with pytest.raises(TypeError, match=f"LinearDynamics: {flag} must be a bool"):
            dynamics.LinearDynamics(torch.eye(2), torch.ones(2, 1), **{flag: "yes"})


def test_learned_models_name_a_dtype_other_than_their_weights():
    for model in (MLPDynamics(2, 1, hidden=(4,)), ProbabilisticEnsemble(2, 1, members=2, hidden=(4,))):
        with pytest.raises(TypeError, match=rf"{type(model).__name__}: x and u have dtype torch.float64 but the "
                                            "model's weights are torch.float32"):
            model(torch.zeros(3, 2, **D64), torch.zeros(3, 1, **D64))


def test_ensemble_member_indices_and_resampling_are_checked():
    ens = ProbabilisticEnsemble(2, 1, members=2, hidden=(4,))
    x, u = torch.zeros(3, 2), torch.zeros(3, 1)
    for members in ([5], [-1], [True], [], [0.5], 3, "0"):
        with pytest.raises(ValueError, match=r"ProbabilisticEnsemble\.member_outputs: members must be a non-empty "
                                             r"sequence of member indices, ints in \[0, 2\)"):
            ens.member_outputs(x, u, members=members)
    mean, _ = ens.member_outputs(x, u, members=torch.tensor([1, 0]))
    assert mean.shape == (2, 3, 2)
    for batch in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match=r"ProbabilisticEnsemble\.resample_members: batch must be an int >= 1"):
            ens.resample_members(batch)
    with pytest.raises(TypeError, match="resample_members: generator must be a torch.Generator or None, got int"):
        ens.resample_members(3, generator=0)


def test_an_unbatched_call_of_a_random_ensemble_follows_one_member():
    ens = ProbabilisticEnsemble(3, 1, members=2, hidden=(4,), propagation="random")
    x, u = torch.randn(3), torch.randn(1)
    y = ens(x, u)
    means = ens.member_outputs(x[None], u[None])[0][:, 0] * ens.out_std + ens.out_mean + x
    assert any(torch.allclose(y, mean) for mean in means)          # not coordinates of different members


# ---------------------------------------------------------------- dynamics.learned helpers (not hot: full checks)
@pytest.fixture(scope="module")
def pendulum_data():
    model = dynamics.Pendulum().discretize()
    data = collect_from_model(model, torch.randn(4, 2, generator=torch.Generator().manual_seed(0), **D64), 5,
                              -1.0, 1.0, generator=torch.Generator().manual_seed(1))
    return model, data


X0 = torch.zeros(2, 2, **D64)
COLLECT = [
    (dict(model=None), TypeError, "model must be a dynamics.Dynamics"),
    (dict(x0=[[0.0, 0.0]]), TypeError, "x0 must be a torch.Tensor, got list"),
    (dict(x0=torch.zeros(2, 3, **D64)), ValueError, r"x0 has shape \(2, 3\); expected \(B, n\) = \(B, 2\)"),
    (dict(x0=torch.zeros(2, **D64)), ValueError, r"x0 has shape \(2,\); expected \(B, n\)"),
    (dict(x0=torch.zeros(0, 2, **D64)), ValueError, r"x0 must hold at least one initial state \(B >= 1\)"),
    (dict(x0=torch.full((2, 2), math.nan, **D64)), ValueError, "x0 contains NaN or Inf"),
    (dict(x0=X0.long()), TypeError, "x0 must be float32 or float64"),
    (dict(steps=0), ValueError, "steps must be an int >= 1, got 0"),
    (dict(steps=-3), ValueError, "steps must be an int >= 1, got -3"),
    (dict(steps=2.5), ValueError, "steps must be an int >= 1, got 2.5"),
    (dict(u_low=1.0, u_high=-1.0), ValueError, "u_low must be <= u_high in every coordinate"),
    (dict(u_low=math.nan), ValueError, "u_low contains NaN or Inf"),
    (dict(u_high=math.inf), ValueError, "u_high contains NaN or Inf"),
    (dict(u_low="low"), TypeError, r"u_low must be a number or a float tensor broadcastable to \(m,\) = \(1,\)"),
    (dict(u_low=torch.zeros(2)), ValueError, r"u_low has shape \(2,\); expected a number or \(m,\) = \(1,\)"),
    (dict(noise_std=-1.0), ValueError, "noise_std must be a finite number >= 0, got -1.0"),
    (dict(noise_std=math.nan), ValueError, "noise_std must be a finite number >= 0"),
    (dict(relative_noise=math.nan), ValueError, "relative_noise must be a finite number >= 0"),
    (dict(generator=1), TypeError, "generator must be a torch.Generator or None, got int"),
]


@pytest.mark.parametrize("change, error, pattern", COLLECT)
def test_collect_from_model_checks_its_arguments(change, error, pattern):
    args = dict(model=dynamics.Pendulum().discretize(), x0=X0, steps=3, u_low=-1.0, u_high=1.0) | change
    with pytest.raises(error, match="collect_from_model: " + pattern):
        collect_from_model(**args)


def test_open_loop_error_checks_its_arguments():
    pend, U = dynamics.Pendulum().discretize(), torch.zeros(2, 4, 1, **D64)
    cases = [((None, pend, X0, U), TypeError, "model must be a dynamics.Dynamics, got NoneType"),
             ((pend, None, X0, U), TypeError, "reference must be a dynamics.Dynamics, got NoneType"),
             ((pend, dynamics.CartPole().discretize(), X0, U), ValueError, "reference must have the model's n=2"),
             ((pend, pend, [0.0, 0.0], U), TypeError, "x0 must be a torch.Tensor, got list"),
             ((pend, pend, X0, torch.zeros(2, 5, **D64)), ValueError, r"U has shape \(2, 5\); expected \(B, T, m\)"),
             ((pend, pend, X0, torch.zeros(2, 0, 1, **D64)), ValueError, r"U must hold at least one control \(T >= 1"),
             ((pend, pend, X0, torch.full((2, 4, 1), math.nan, **D64)), ValueError, "U contains NaN or Inf"),
             ((pend, pend, X0.float(), U), TypeError, "U has dtype torch.float64 but x0 has torch.float32"),
             ((pend, pend, X0, U[:1].expand(3, 4, 1)), ValueError, "batch sizes differ: x0 has B=2, U has B=3")]
    for args, error, pattern in cases:
        with pytest.raises(error, match="open_loop_error: " + pattern):
            open_loop_error(*args)
    torch.testing.assert_close(open_loop_error(pend, pend, X0[0], U[0]), torch.zeros(4, **D64))


def test_residuals_check_the_substituted_values(pendulum_data):
    model, data = pendulum_data
    cases = [(None, TypeError, r"values must be a dict \{parameter name: tensor\}, got NoneType"),
             ({"nope": torch.tensor(1.0)}, ValueError, r"values has unknown name\(s\) \['nope'\]; the model's "
                                                       r"parameters are \['model.g', 'model.l', 'model.m'\]"),
             ({"model.m": "x"}, TypeError, r"values\['model.m'\] must be a torch.Tensor, got str"),
             ({"model.m": torch.ones(2, **D64)}, ValueError, r"values\['model.m'\] has shape \(2,\); expected \(\)")]
    for values, error, pattern in cases:
        with pytest.raises(error, match="residuals: " + pattern):
            residuals(model, data, values)
    with pytest.raises(TypeError, match="residuals: model must be a dynamics.Dynamics"):
        residuals(None, data, {})
    with pytest.raises(TypeError, match="residuals: data must be a dynamics.learned.Transitions"):
        residuals(model, None, {})
    assert residuals(model, data, {"model.m": torch.tensor(1.0, **D64)}).shape == data.x.shape


@pytest.mark.parametrize("change, error, pattern", [
    (dict(max_iterations=0), ValueError, "max_iterations must be an int >= 1, got 0"),
    (dict(max_iterations=2.5), ValueError, "max_iterations must be an int >= 1, got 2.5"),
    (dict(damping=-1.0), ValueError, "damping must be a positive finite number, got -1.0"),
    (dict(damping=math.nan), ValueError, "damping must be a positive finite number, got nan"),
    (dict(names="model.m"), TypeError, "names must be a list of parameter names"),
    (dict(names=["model.nope"]), ValueError, "unknown parameter"),
    (dict(model=None), TypeError, "model must be a dynamics.Dynamics"),
    (dict(data=None), TypeError, "data must be a dynamics.learned.Transitions")])
def test_identify_theseus_checks_its_options_before_running(pendulum_data, change, error, pattern):
    model, data = pendulum_data
    args = dict(model=model, data=data, names=["model.m"]) | change
    with pytest.raises(error, match="identify_theseus: " + pattern):
        identify_theseus(**args)


# ---------------------------------------------------------------- MuJoCoDynamics options
@pytest.mark.parametrize("option, error, pattern", [
    (dict(eps=math.inf), ValueError, "eps must be a positive finite number, got inf"),
    (dict(eps=0.0), ValueError, "eps must be a positive finite number, got 0.0"),
    (dict(eps="1e-6"), ValueError, "eps must be a positive finite number, got '1e-6'"),
    (dict(hessian_eps=math.nan), ValueError, "hessian_eps must be a positive finite number, got nan"),
    (dict(centered="yes"), TypeError, "centered must be a bool"),
    (dict(centered=1), TypeError, "centered must be a bool")])
def test_mujoco_options_are_checked(option, error, pattern):
    pytest.importorskip("mujoco", reason="MuJoCoDynamics needs the optional mujoco package")
    from dynamics.mujoco import MuJoCoDynamics
    with pytest.raises(error, match="MuJoCoDynamics: " + pattern):
        MuJoCoDynamics(ARM, **option)


def test_a_time_varying_linear_models_stage_index_is_an_int():
    model = dynamics.LinearDynamics(torch.eye(2, **D64).expand(4, 2, 2), torch.ones(4, 2, 1, **D64))
    x, u = torch.zeros(1, 2, **D64), torch.zeros(1, 1, **D64)
    with pytest.raises(TypeError, match=r"LinearDynamics: the stage index t must be an int, got 1\.5"):
        model(x, u, 1.5)
    torch.testing.assert_close(model(x, u, np.int64(1)), model(x, u, 1))


def test_residual_dynamics_train_base_is_a_bool():
    with pytest.raises(TypeError, match="ResidualDynamics: train_base must be a bool"):
        ResidualDynamics(dynamics.Pendulum().discretize(), hidden=(8,), train_base="yes")


def test_fit_takes_data_that_carries_a_graph_as_values():
    from dynamics.learned import Transitions, fit
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(64, 2, generator=g), torch.randn(64, 1, generator=g)
    scale = torch.ones(1, requires_grad=True)                  # x_next computed through a differentiable step
    data = Transitions(x, u, (x + 0.1 * u) * scale)
    torch.manual_seed(0)
    fitted = MLPDynamics(2, 1, hidden=(8,))
    fit(fitted, data, epochs=3, progress=False)
    torch.manual_seed(0)
    reference = MLPDynamics(2, 1, hidden=(8,))
    fit(reference, Transitions(x, u, (x + 0.1 * u).detach()), epochs=3, progress=False)
    for a, b in zip(fitted.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert scale.grad is None


class _NaNRow(dynamics.Dynamics):
    """A step that is NaN on rows whose first state exceeds 5."""

    def __init__(self):
        super().__init__(2, 1)

    def forward(self, x, u, t=None):
        y = torch.stack([x[..., 0] + 0.1 * x[..., 1], x[..., 1] + 0.1 * u[..., 0]], -1)
        return torch.where(x[..., :1] > 5, float("nan"), y)


def test_one_off_learning_helpers_name_a_model_that_turns_non_finite():
    x0 = torch.tensor([[0.0, 0.0], [6.0, 0.0]], **D64)
    with pytest.raises(FloatingPointError, match=r"collect_from_model: the model's rollout is not finite from x0 "
                                                 r"row\(s\) \[1\]"):
        collect_from_model(_NaNRow(), x0, 5, -1.0, 1.0)
    with pytest.raises(FloatingPointError, match=r"open_loop_error: the model's rollout is not finite at step 0 for "
                                                 r"row\(s\) \[1\]"):
        open_loop_error(_NaNRow(), _linear_2(), x0, torch.zeros(2, 4, 1, **D64))


def _linear_2():
    return dynamics.LinearDynamics(torch.eye(2, **D64), torch.ones(2, 1, **D64))


def test_residuals_name_non_finite_values_and_an_undefined_model(pendulum_data):
    model, data = pendulum_data
    name = next(n for n, _ in model.named_parameters())
    value = dict(model.named_parameters())[name]
    with pytest.raises(ValueError, match=rf"residuals: values\['{name}'\] contains NaN or Inf"):
        residuals(model, data, {name: torch.full_like(value, float("nan"))})


def test_fit_names_data_whose_statistics_overflow_and_split_names_its_fraction():
    from dynamics.learned import Transitions, fit
    g = torch.Generator().manual_seed(0)
    x, u = 1e200 * torch.randn(64, 2, generator=g, **D64), torch.randn(64, 1, generator=g, **D64)
    with pytest.raises(ValueError, match="fit: data's normalization statistics .* overflow"):
        fit(MLPDynamics(2, 1, hidden=(8,)).double(), Transitions(x, u, x), epochs=1, progress=False)
    data = Transitions(x / 1e200, u, x / 1e200)
    for bad in (1.5, -0.1, float("nan"), 0.0):
        with pytest.raises(ValueError, match="Transitions.split: fraction must be a number in"):
            data.split(bad)
    assert [len(part) for part in data.split(0.25)] == [48, 16]


def test_a_per_problem_linear_model_names_a_batch_of_another_size():
    model = dynamics.LinearDynamics(torch.eye(2, **D64).expand(4, 2, 2), torch.ones(4, 2, 1, **D64), batched=True)
    with pytest.raises(ValueError, match=r"LinearDynamics: x has shape \(3, 2\); this per-problem model .* holds 4"):
        model(torch.zeros(3, 2, **D64), torch.zeros(3, 1, **D64))
    assert model(torch.zeros(4, 2, **D64), torch.ones(4, 1, **D64)).shape == (4, 2)


def test_the_public_integrators_name_a_jac_returning_the_wrong_shape():
    from dynamics import integrators
    pendulum = dynamics.Pendulum().double()
    x, u = torch.zeros(3, 2, **D64), torch.zeros(3, 1, **D64)

    def short(x, u, t):
        gx, gu = pendulum.derivative_jacobians(x, u)
        return gx[..., :1], gu
    for name in ("euler_jacobians", "rk4_jacobians"):
        with pytest.raises(ValueError, match=rf"{name}: jac returned shape \(3, 2, 1\) as g_x; expected \(3, 2, 2\)"):
            getattr(integrators, name)(pendulum.derivative, short, x, u, 0.05)


class _Gained(dynamics.ContinuousDynamics):
    """A pendulum whose gain differs per problem (a per-problem tensor), Jacobians by autodiff."""

    per_problem = ("gain",)
    positions, default_dt, default_method = (0,), 0.05, "rk4"

    def __init__(self, gain):
        super().__init__(2, 1)
        self.gain = gain

    def derivative(self, x, u, t=None):
        return torch.stack([x[:, 1], -self.gain * torch.sin(x[:, 0]) + u[:, 0]], -1)


class _GainedClosed(_Gained):
    def derivative_jacobians(self, x, u, t=None):
        z, o = torch.zeros_like(x[:, 0]), torch.ones_like(x[:, 0])
        A = torch.stack([torch.stack([z, o], -1), torch.stack([-self.gain * torch.cos(x[:, 0]), z], -1)], -2)
        return A, torch.stack([z, o], -1).unsqueeze(-1)


def test_autodiff_jacobians_of_a_model_with_per_problem_tensors_are_its_rows_own():
    import trajopt
    gain = torch.tensor([1.0, 9.8, 3.0], **D64, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(3, 2, generator=g, **D64), torch.randn(3, 1, generator=g, **D64)
    for got, want in zip(_Gained(gain).discretize().jacobians(x, u), _GainedClosed(gain).discretize().jacobians(x, u)):
        torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)
    (dA,) = torch.autograd.grad(_Gained(gain).derivative_jacobians(x, u)[0][:, 1, 0].sum(), gain)
    torch.testing.assert_close(dA, -torch.cos(x[:, 0]))            # differentiable in the model's tensors
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2, **D64), 0.1 * torch.eye(1, **D64))
    x0 = torch.tensor([[1.0, 0.0], [0.5, 0.1], [-0.3, 0.2]], **D64)
    auto, closed = (trajopt.ilqr(trajopt.Problem(M(gain.detach()).discretize(), cost, x0, horizon=8), grad=None)
                    for M in (_Gained, _GainedClosed))
    assert (auto.status == trajopt.Status.CONVERGED).all()
    torch.testing.assert_close(auto.U, closed.U, rtol=0, atol=1e-12)


def test_ensemble_member_outputs_name_x_and_u_of_another_size():
    ensemble = ProbabilisticEnsemble(2, 1, members=3, hidden=(8,))
    with pytest.raises(ValueError, match=r"member_outputs: x must end in its size 2 \(n\), got shape \(4, 3\)"):
        ensemble.member_outputs(torch.zeros(4, 3), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"member_outputs: u must end in its size 1 \(m\)"):
        ensemble.member_outputs(torch.zeros(4, 2), torch.zeros(4, 2))
    assert ensemble.member_outputs(torch.zeros(4, 2), torch.zeros(4, 1))[0].shape == (3, 4, 2)


def test_autodiff_jacobians_of_an_empty_batch_are_empty():
    for model in (ProbabilisticEnsemble(2, 1, members=3, hidden=(8,)), MLPDynamics(2, 1, hidden=(8,))):
        A, B = model.jacobians(torch.zeros(0, 2), torch.zeros(0, 1))
        assert A.shape == (0, 2, 2) and B.shape == (0, 2, 1)
