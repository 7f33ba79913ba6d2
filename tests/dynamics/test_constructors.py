"""Every model constructor refuses physically impossible constants with an error naming the constant."""
import math

import pytest
import torch

import dynamics
from dynamics.contact import BouncingMass, PlanarPusher
from dynamics.learned import MLPDynamics, ProbabilisticEnsemble, ResidualDynamics

# (model, constants that must be > 0, constants that must be >= 0, constants in [0, 1], constants only finite)
MODELS = [
    (dynamics.Pendulum, ("m", "l"), (), (), ("g",)),
    (dynamics.CartPole, ("mc", "mp", "l"), (), (), ("g",)),
    (dynamics.KinematicBicycle, ("L",), ("lr",), (), ()),
    (dynamics.DoubleIntegrator, ("mass",), (), (), ()),
    (dynamics.Quadrotor2D, ("m", "arm", "inertia"), (), (), ("g",)),
    (dynamics.Acrobot, ("m1", "m2", "l1", "lc1", "lc2", "I1", "I2"), (), (), ("g",)),
    (BouncingMass, ("k", "stiffness", "mass", "friction_k"), ("mu",), ("restitution",), ("g",)),
    (PlanarPusher, ("k", "stiffness", "mass", "friction_k", "half_width", "radius"), ("damping_ratio", "mu"), (),
     ("g",)),
]


def _cases():
    for model, positive, nonnegative, fraction, finite in MODELS:
        for name in positive:
            yield from ((model, name, v) for v in (0.0, -1.0, math.nan, math.inf))
        for name in nonnegative:
            yield from ((model, name, v) for v in (-1e-3, math.nan, -math.inf))
        for name in fraction:
            yield from ((model, name, v) for v in (-0.1, 1.5, math.nan))
        for name in finite:
            yield from ((model, name, v) for v in (math.nan, math.inf))


@pytest.mark.parametrize("model, name, value", list(_cases()), ids=lambda v: getattr(v, "__name__", repr(v)))
def test_an_impossible_constant_is_refused_by_name(model, name, value):
    with pytest.raises(ValueError, match=rf"{model.__name__}: {name} must be a finite number"):
        model(**{name: value})


@pytest.mark.parametrize("model", [m[0] for m in MODELS], ids=lambda m: m.__name__)
def test_the_default_constants_are_accepted_and_step_finitely(model):
    m = model()
    x = torch.zeros(3, m.state_dim, dtype=torch.float64)
    step = m.discretize() if isinstance(m, dynamics.ContinuousDynamics) else m
    assert torch.isfinite(step(x, torch.zeros(3, m.control_dim, dtype=torch.float64))).all()


def test_a_rear_axle_beyond_the_wheelbase_is_refused():
    with pytest.raises(ValueError, match="lr"):
        dynamics.KinematicBicycle(L=2.0, lr=2.5)


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf])
def test_discretize_refuses_a_step_that_is_not_finite_and_positive(dt):
    with pytest.raises(ValueError, match="Pendulum.discretize: dt must be a finite number > 0"):
        dynamics.Pendulum().discretize(dt)


def test_matrices_that_must_be_square_are_refused():
    with pytest.raises(ValueError, match="LinearDynamics: A has shape"):
        dynamics.LinearDynamics(torch.randn(2, 3), torch.randn(2, 1))


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
@pytest.mark.parametrize("build, error, match", [
    (lambda: dynamics.DoubleIntegrator(dim=0), ValueError, "DoubleIntegrator: dim must be an int >= 1"),
    (lambda: dynamics.DoubleIntegrator(dim=1.5), ValueError, "DoubleIntegrator: dim must be an int >= 1"),
    (lambda: dynamics.DoubleIntegrator(dim="2"), ValueError, "DoubleIntegrator: dim must be an int >= 1"),
    (lambda: dynamics.DoubleIntegrator(dim=None), ValueError, "DoubleIntegrator: dim must be an int >= 1"),
    (lambda: dynamics.Acrobot(lc1=2.0), ValueError, "Acrobot: lc1 .* must be at most l1"),
    (lambda: dynamics.LinearDynamics(torch.eye(2), torch.ones(2, 1, dtype=torch.float64)), TypeError,
     "LinearDynamics: B has dtype torch.float64 but A has torch.float32"),
    (lambda: dynamics.LinearDynamics(torch.eye(2).expand(3, 2, 2), torch.ones(2, 1)), ValueError,
     "LinearDynamics: A has shape \\(3, 2, 2\\) and B \\(2, 1\\)"),
])
def test_constructors_name_issue21_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_time_varying_linear_dynamics_names_a_stage_beyond_its_own():
    model = dynamics.LinearDynamics(torch.eye(2).expand(3, 2, 2), torch.ones(3, 2, 1))
    assert model.stages == 3
    with pytest.raises(IndexError, match="LinearDynamics: this time-varying model has 3 stages"):
        model(torch.zeros(1, 2), torch.zeros(1, 1), 3)


@pytest.mark.parametrize("build, named", [
    (lambda: MLPDynamics(1.5, 1), "MLPDynamics: state_dim must be an int"),
    (lambda: MLPDynamics("2", 1), "MLPDynamics: state_dim must be an int"),
    (lambda: MLPDynamics(2, 1, hidden=(-5,)), "MLPDynamics: hidden must be a tuple of layer widths"),
    (lambda: MLPDynamics(2, 1, hidden="a"), "MLPDynamics: hidden must be a tuple of layer widths"),
    (lambda: MLPDynamics(2, 1, hidden=(0,)), "MLPDynamics: hidden must be a tuple of layer widths"),
    (lambda: ProbabilisticEnsemble(2, 1, members=0), "ProbabilisticEnsemble: members must be an int"),
    (lambda: ProbabilisticEnsemble(2, 1, members=1.5), "ProbabilisticEnsemble: members must be an int"),
    (lambda: ResidualDynamics(dynamics.Pendulum().discretize(), hidden=8), "ResidualDynamics: hidden must be a"),
])
def test_learned_models_refuse_impossible_sizes_by_name(build, named):
    with pytest.raises(ValueError, match=named):
        build()
