"""fit and identify refuse non-finite and degenerate data, and bad options, with named errors."""
import math

import numpy as np
import pytest
import torch

import dynamics
from dynamics.learned import MLPDynamics, Transitions, collect_from_env, fit, identify


def _data(N=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    model = dynamics.Pendulum().discretize()
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    u = torch.randn(N, 1, generator=g, dtype=torch.float64)
    return Transitions(x, u, model(x, u).detach())


def _poisoned(name, value):
    d = _data()
    getattr(d, name)[3, 0] = value
    return d


@pytest.mark.parametrize("name", ["x", "u", "x_next"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_fit_and_identify_refuse_non_finite_data(name, value):
    with pytest.raises(ValueError, match=rf"fit: data.{name} is not finite in 1 of 40 transitions \(first: row 3\)"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _poisoned(name, value), epochs=2, progress=False)
    model = dynamics.Pendulum().discretize()
    with pytest.raises(ValueError, match=rf"identify: data.{name} is not finite"):
        identify(model, _poisoned(name, value), ["model.m"])
    assert float(model.model.m.detach()) == 1.0                 # left as it was


@pytest.mark.parametrize("N", [0, 1])
def test_fit_and_identify_refuse_a_dataset_too_small(N):
    with pytest.raises(ValueError, match="fit: data holds"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _data()[:N], epochs=2, progress=False)
    for method in ("lbfgs", "levenberg_marquardt"):
        with pytest.raises(ValueError, match="identify: data holds"):
            identify(dynamics.Pendulum().discretize(), _data()[:N], ["model.m"], method=method)


@pytest.mark.parametrize("options, named", [
    (dict(epochs=0), "epochs"), (dict(batch_size=2.5), "batch_size"), (dict(lr=math.inf), "lr"),
    (dict(lr=-1e-3), "lr"), (dict(val_fraction=1.0), "val_fraction"), (dict(patience=0), "patience"),
    (dict(weight_decay=math.nan), "weight_decay"),
])
def test_fit_refuses_options_out_of_range(options, named):
    with pytest.raises(ValueError, match=f"fit: {named}"):
        fit(MLPDynamics(2, 1, hidden=(8,)), _data(), progress=False, **options)


def test_fit_that_diverges_raises_and_leaves_the_weights_as_they_were():
    model = MLPDynamics(2, 1, hidden=(8,)).double()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="fit: the loss became non-finite in epoch"):
        fit(model, _data(), epochs=3, lr=1e200, progress=False)     # Adam's steps of 1e200 overflow the loss
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_identify_refuses_bad_options():
    with pytest.raises(ValueError, match="identify: steps"):
        identify(dynamics.Pendulum().discretize(), _data(), ["model.m"], steps=0)
    with pytest.raises(ValueError, match="identify: method"):
        identify(dynamics.Pendulum().discretize(), _data(), ["model.m"], method="newton")


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
def _issue21_data(N=40, n=2, m=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(N, n, generator=g, dtype=dtype), torch.randn(N, m, generator=g, dtype=dtype)
    return Transitions(x, u, dynamics.Pendulum(m=1.3, l=0.8).double().discretize()(x, u) if n == 2 else x)


@pytest.mark.parametrize("args, error, match", [
    (lambda d: ([[0.0, 0.0]], d.u[:1], d.x_next[:1]), TypeError, "Transitions: x must be a torch.Tensor"),
    (lambda d: (d.x, d.u[:, 0], d.x_next), ValueError, "Transitions: u must be \\(N, m\\)"),
    (lambda d: (d.x.float(), d.u, d.x_next), TypeError, "Transitions: u has dtype torch.float64 but x has"),
    (lambda d: (d.x.long(), d.u, d.x_next), TypeError, "Transitions: x must be a float tensor"),
    (lambda d: (d.x, d.u[:5], d.x_next), ValueError, "Transitions: batch sizes differ"),
])
def test_transitions_name_bad_tensors(args, error, match):
    with pytest.raises(error, match=match):
        Transitions(*args(_issue21_data()))


def test_fit_and_identify_name_bad_models_data_and_names():
    data = _issue21_data()
    net = MLPDynamics(2, 1, (8,)).double()
    pend = dynamics.Pendulum(m=1.0, l=1.0).double().discretize()
    cases = [
        (lambda: fit(pend, data, epochs=1), TypeError, "fit: model must be a learned model"),
        (lambda: fit(None, data, epochs=1), TypeError, "fit: model must be a learned model"),
        (lambda: fit(net, (data.x, data.u, data.x_next), epochs=1), TypeError, "fit: data must be a"),
        (lambda: fit(net, _issue21_data(n=3), epochs=1), ValueError, "fit: data has n=3 states and m=1 controls"),
        (lambda: fit(net, data, epochs=1, seed="a"), ValueError, "fit: seed must be an int >= 0"),
        (lambda: identify(pend, data, "model.m"), TypeError, "identify: names must be a list .* write \\['model.m'\\]"),
        (lambda: identify(pend, data, []), ValueError, "identify: names is empty"),
        (lambda: identify(pend, data, None), TypeError, "identify: names must be a list"),
        (lambda: identify(pend, data, ["dt"]), ValueError, "identify: names \\[.dt.\\] is not learnable"),
        (lambda: identify(None, data, ["model.m"]), TypeError, "identify: model must be a dynamics.Dynamics"),
        (lambda: identify(pend, _issue21_data(n=3), ["model.m"]), ValueError, "identify: data has n=3"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_identify_names_a_model_that_is_not_finite_on_the_data():
    data = _issue21_data()
    data.x[0, 0] = 50.0                                    # the model below is NaN there

    class Partial(dynamics.Dynamics):
        def __init__(self):
            super().__init__(2, 1)
            self.k = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x, u, t=None):
            return torch.where(x.abs() > 10, float("nan"), self.k * x)
    with pytest.raises(ValueError, match="identify: the model is not finite on data .* first: row 0"):
        identify(Partial(), data, ["k"])


class _Box:
    """The part of a Gymnasium Box action space that collect_from_env uses."""

    def __init__(self, shape=(2,)):
        self.shape, self.low, self.high = shape, -np.ones(shape), np.ones(shape)
        self.rng = np.random.default_rng(0)

    def seed(self, seed):
        self.rng = np.random.default_rng(seed)

    def sample(self):
        return np.asarray(self.rng.uniform(self.low, self.high), dtype=np.float32)


class _Discrete:
    shape = ()

    def seed(self, seed):
        pass

    def sample(self):
        return 0


class _Env:
    """A Gymnasium-style environment whose observation at step ``t`` is ``observe(t)``, episodes of 4 steps."""

    def __init__(self, observe=lambda t: np.full(3, 0.1 * t), space=None, reset=None, step=None):
        self.observe, self.t, self.action_space = observe, 0, _Box() if space is None else space
        self._reset, self._step = reset, step

    def reset(self, seed=None):
        self.t = 0
        return self._reset if self._reset is not None else (self.observe(self.t), {})

    def step(self, action):
        self.t += 1
        return self._step if self._step is not None else (self.observe(self.t), 0.0, False, self.t % 4 == 0, {})


@pytest.mark.parametrize("call, error, match", [
    # the arguments
    (lambda: collect_from_env(_Env(), 0), ValueError, "steps must be an int >= 1, got 0"),
    (lambda: collect_from_env(_Env(), 2.5), ValueError, "steps must be an int >= 1, got 2.5"),
    (lambda: collect_from_env(_Env(), 5, seed=-1), ValueError, "seed must be an int >= 0, got -1"),
    (lambda: collect_from_env(_Env(), 5, seed=None), ValueError, "seed must be an int >= 0, got None"),
    (lambda: collect_from_env(_Env(), 5, policy="random"), TypeError, "policy must be callable or None, got str"),
    (lambda: collect_from_env("Pendulum-v1", 5), TypeError, r"env must be a Gymnasium environment .* got str"),
    (lambda: collect_from_env(_Env(space=_Discrete()), 5), TypeError, "env.action_space must be a continuous \\(Box\\)"),
    (lambda: collect_from_env(_Env(space=_Box((2, 2))), 5), ValueError, "env.action_space must have shape \\(m,\\)"),
    # what the environment returns
    (lambda: collect_from_env(_Env(reset=np.zeros(3)), 5), TypeError,
     r"env.reset\(\) must return \(observation, info\) .* got ndarray"),
    (lambda: collect_from_env(_Env(step=(np.zeros(3), 0.0, False, {})), 5), TypeError,
     r"env.step\(\) must return \(observation, reward, terminated, truncated, info\) .* got a tuple of 4"),
    (lambda: collect_from_env(_Env(observe=lambda t: np.full(3, math.nan if t == 2 else 0.0)), 5), ValueError,
     r"the observation of env.step\(\) at step 1 is not finite"),
    (lambda: collect_from_env(_Env(observe=lambda t: np.zeros(4 if t == 1 else 3)), 5), ValueError,
     r"the observation of env.step\(\) at step 0 has shape \(4,\); expected \(3,\)"),
    (lambda: collect_from_env(_Env(observe=lambda t: np.zeros((2, 2))), 5), ValueError,
     r"the observation of env.reset\(seed=seed\) has shape \(2, 2\); expected \(n,\)"),
    (lambda: collect_from_env(_Env(observe=lambda t: "abc"), 5), TypeError,
     r"the observation of env.reset\(seed=seed\) must be a vector of numbers"),
    (lambda: collect_from_env(_Env(observe=lambda t: np.full(3, math.inf if t == 4 else 0.0)), 5), ValueError,
     r"the observation of env.step\(\) at step 3 is not finite"),
    # what the policy returns
    (lambda: collect_from_env(_Env(), 5, policy=lambda obs: np.zeros(3)), ValueError,
     r"policy\(observation\) at step 0 returned an action of shape \(3,\); env.action_space has m = 2"),
    (lambda: collect_from_env(_Env(), 5, policy=lambda obs: np.array([math.nan, 0.0])), ValueError,
     r"policy\(observation\) at step 0 returned a non-finite action"),
    (lambda: collect_from_env(_Env(), 5, policy=lambda obs: None), TypeError,
     r"policy\(observation\) at step 0 must return numbers, got NoneType"),
    (lambda: collect_from_env(_Env(), 5, policy=lambda obs: "left"), TypeError,
     r"policy\(observation\) at step 0 must return numbers, got str"),
])
def test_collect_from_env_names_bad_arguments_and_bad_returns(call, error, match):
    with pytest.raises(error, match=f"collect_from_env: {match}"):
        call()


def test_collect_from_env_takes_a_tensor_policy_and_resets_between_episodes():
    data = collect_from_env(_Env(), 6, policy=lambda obs: torch.tensor([0.5, -0.5], requires_grad=True))
    assert data.x.shape == (6, 3) and data.u.shape == (6, 2) and bool((data.u == torch.tensor([0.5, -0.5])).all())
    assert float(data.x_next[3, 0]) == pytest.approx(0.4) and float(data.x[4, 0]) == 0.0    # reset after step 3
    data = collect_from_env(_Env(space=_Box(())), 3)                        # a scalar Box: m = 1
    assert data.u.shape == (3, 1)
