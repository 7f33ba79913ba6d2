"""Nothing silent in trajopt.rl: bad input to a public entry point raises an error that names the argument and
what was expected (no environment training here: every case fails before it, or runs a step or two)."""
import math

import numpy as np
import pytest
import torch

import dynamics
import trajopt
from dynamics.learned import MLPDynamics, ProbabilisticEnsemble
from trajopt.rl import (PETS, SHAC, DiffEnv, GaussianPolicy, LearnedCost, ModelBasedAgent, MPCPolicy,
                        ObservationNormalizer, PendulumV1Cost, Planner, RandomPlanner, ValueNetwork,
                        plot_learning_curves, tasks, train_in_learned_model)

NAN, INF = math.nan, math.inf
F64 = torch.float64


def qcost(dtype=F64):
    return trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([2.0, 0.2], dtype=dtype)),
                                              0.02 * torch.eye(1, dtype=dtype))


def env(dtype=F64, **options):
    args = dict(reset=torch.zeros(4, 2, dtype=dtype), episode_length=8, num_envs=2, u_lower=-2.0, u_upper=2.0)
    args.update(options)
    return DiffEnv(dynamics.Pendulum().discretize().to(dtype), qcost(dtype), **args)


def shac(**options):
    args = dict(horizon=4, epochs=2, critic_minibatches=2, critic_iterations=1, hidden=(8,), progress=False)
    args.update(options)
    return SHAC(env(torch.float32), **args)


def raises(error, match, fn, *args, **kwargs):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


# ------------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("args, options, error, match", [
    ((0, 1, -1.0, 1.0), {}, ValueError, r"GaussianPolicy: obs_dim must be an int >= 1, got 0"),
    ((2.5, 1, -1.0, 1.0), {}, ValueError, r"GaussianPolicy: obs_dim must be an int >= 1, got 2.5"),
    ((3, 0, -1.0, 1.0), {}, ValueError, r"GaussianPolicy: control_dim must be an int >= 1, got 0"),
    ((3, 1, -1.0, 1.0), dict(hidden=(0,)), ValueError, r"GaussianPolicy: hidden\[0\] must be an int >= 1"),
    ((3, 1, -1.0, 1.0), dict(hidden="64"), ValueError, r"GaussianPolicy: hidden must be a tuple of layer widths"),
    ((3, 1, -1.0, 1.0), dict(init_std=INF), ValueError, r"GaussianPolicy: init_std must be a positive finite"),
    ((3, 1, -1.0, 1.0), dict(init_std=NAN), ValueError, r"GaussianPolicy: init_std must be a positive finite"),
    ((3, 1, -1.0, 1.0), dict(init_std=0.0), ValueError, r"GaussianPolicy: init_std must be a positive finite"),
    ((3, 1, -1.0, 1.0), dict(activation=3), TypeError, r"GaussianPolicy: activation must be callable"),
    ((3, 1, -1.0, 1.0), dict(dtype=torch.int32), TypeError, r"GaussianPolicy: dtype must be a floating torch.dtype"),
])
def test_gaussian_policy_checks_its_options(args, options, error, match):
    raises(error, match, GaussianPolicy, *args, **options)


def test_gaussian_policy_checks_the_shapes_and_dtypes_of_its_inputs():
    policy = GaussianPolicy(3, 1, -1.0, 1.0)
    raises(ValueError, r"GaussianPolicy: obs has shape \(2, 4\); expected \(\.\.\., o\) = \(\.\.\., 3\)",
           policy, torch.zeros(2, 4))
    raises(TypeError, r"GaussianPolicy: obs is torch.float64 but the module's parameters are torch.float32",
           policy, torch.zeros(2, 3, dtype=F64))
    raises(TypeError, r"GaussianPolicy: obs must be a torch.Tensor", policy, [[0.0, 0.0, 0.0]])
    raises(ValueError, r"GaussianPolicy: noise has shape \(2, 2\)", policy, torch.zeros(2, 3), torch.zeros(2, 2))
    raises(ValueError, r"GaussianPolicy: noise has shape \(3, 1\); expected the actions' shape \(2, 1\)",
           policy, torch.zeros(2, 3), torch.zeros(3, 1))
    assert policy(torch.zeros(2, 3), torch.zeros(2, 1)).shape == (2, 1)


@pytest.mark.parametrize("args, options, match", [
    ((0,), {}, r"ValueNetwork: obs_dim must be an int >= 1, got 0"),
    ((-1,), {}, r"ValueNetwork: obs_dim must be an int >= 1, got -1"),
    ((3,), dict(hidden=(0,)), r"ValueNetwork: hidden\[0\] must be an int >= 1"),
])
def test_value_network_checks_its_options(args, options, match):
    raises(ValueError, match, ValueNetwork, *args, **options)


def test_value_network_checks_its_input_and_keeps_leading_dimensions():
    critic = ValueNetwork(3, hidden=(4,))
    raises(ValueError, r"ValueNetwork: obs has shape \(2, 5\)", critic, torch.zeros(2, 5))
    assert critic(torch.zeros(4, 2, 3)).shape == (4, 2)


@pytest.mark.parametrize("args, options, match", [
    ((0,), {}, r"ObservationNormalizer: obs_dim must be an int >= 1, got 0"),
    ((-2,), {}, r"ObservationNormalizer: obs_dim must be an int >= 1, got -2"),
    ((3,), dict(clip=-1.0), r"ObservationNormalizer: clip must be a positive number, got -1.0"),
    ((3,), dict(eps=-1.0), r"ObservationNormalizer: eps must be a positive finite number, got -1.0"),
    ((3,), dict(eps=NAN), r"ObservationNormalizer: eps must be a positive finite number, got nan"),
])
def test_observation_normalizer_checks_its_options(args, options, match):
    raises(ValueError, match, ObservationNormalizer, *args, **options)


def test_observation_normalizer_refuses_nan_observations_and_keeps_its_statistics():
    norm = ObservationNormalizer(3)
    norm.update(torch.randn(5, 3))
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    raises(ValueError, r"ObservationNormalizer.update: obs contains NaN or Inf", norm.update,
           torch.tensor([[NAN, 0.0, 0.0]]))
    raises(ValueError, r"ObservationNormalizer.update: obs has shape \(2, 4\)", norm.update, torch.ones(2, 4))
    norm.update(torch.zeros(0, 3))                                  # nothing to merge: no 0 / 0
    for k, v in norm.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    raises(ValueError, r"ObservationNormalizer: obs has shape \(2, 4\)", norm, torch.ones(2, 4))


# ------------------------------------------------------------------------------------------------ LearnedCost, MPCPolicy
@pytest.mark.parametrize("options, error, match", [
    (dict(goal=[0.0, 0.0, 0.0]), ValueError, r"LearnedCost: goal has shape \(3,\); expected \(n,\) = \(2,\)"),
    (dict(goal=[NAN, 0.0]), ValueError, r"LearnedCost: goal must be finite"),
    (dict(goal="origin"), TypeError, r"LearnedCost: goal must be a float tensor or a sequence of numbers"),
    (dict(terminal="mlp"), TypeError, r"LearnedCost: terminal must be callable or None, got str"),
    (dict(q="1"), TypeError, r"LearnedCost: q must be a float tensor or a sequence of numbers"),
    (dict(q=torch.tensor([1, 1])), TypeError, r"LearnedCost: q must be a float tensor .* got a torch.int64 tensor"),
    (dict(r=[0.0]), ValueError, r"LearnedCost: r must be a 1-D tensor of positive finite weights"),
])
def test_learned_cost_checks_its_arguments(options, error, match):
    args = dict(q=[1.0, 1.0], r=[1.0])
    args.update(options)
    raises(error, match, LearnedCost, **args)


def test_learned_cost_converts_lists_of_ints_to_float_weights():
    cost = LearnedCost([1, 1], [1])
    assert cost.log_q.dtype == cost.log_r.dtype == cost.goal.dtype == torch.get_default_dtype()


def mpc_policy(*args, **options):
    model = dynamics.Pendulum().discretize()
    cost = LearnedCost(torch.tensor([1.0, 1.0], dtype=F64), torch.tensor([1.0], dtype=F64))
    full = (model, cost, 3, -1.0, 1.0)
    full = args + full[len(args):]
    return MPCPolicy(*full, max_iter=2, **options)


@pytest.mark.parametrize("args, options, error, match", [
    ((), dict(noise_std=-0.1), ValueError, r"MPCPolicy: noise_std must be finite and >= 0"),
    ((), dict(noise_std=NAN), ValueError, r"MPCPolicy: noise_std must be finite and >= 0"),
    ((), dict(noise_std=[0.1, 0.1]), ValueError, r"MPCPolicy: noise_std has shape \(2,\); expected a number or"),
    ((), dict(noise_std="0.1"), TypeError, r"MPCPolicy: noise_std must be a float tensor or a sequence of numbers"),
    (("pend",), {}, TypeError, r"MPCPolicy: dynamics must be a dynamics.Dynamics"),
    ((dynamics.Pendulum().discretize(), "cost"), {}, TypeError, r"MPCPolicy: cost must be a trajopt.Cost"),
    ((), dict(to_state=3), TypeError, r"MPCPolicy: to_state must be callable or None, got int"),
])
def test_mpc_policy_checks_its_arguments(args, options, error, match):
    raises(error, match, mpc_policy, *args, **options)


def test_mpc_policy_checks_the_noise_shape():
    policy = mpc_policy(noise_std=0.0)
    x = torch.tensor([[0.1, 0.0], [0.0, 0.1]], dtype=F64)
    raises(ValueError, r"MPCPolicy: noise must be a tensor of the actions' shape \(2, 1\)", policy, x,
           torch.zeros(2, 2, dtype=F64))
    assert policy(x, torch.ones(2, 1, dtype=F64)).shape == (2, 1)


# ------------------------------------------------------------------------------------------------ DiffEnv
def test_diffenv_checks_what_reset_and_terminate_return():
    lists = env(reset=lambda n, g: [[0.0, 0.0]] * n)
    raises(TypeError, r"DiffEnv: reset must return a float tensor \(count, n\) = \(2, 2\), got list", lists.reset)
    f32 = env(reset=lambda n, g: torch.zeros(n, 2))
    raises(TypeError, r"DiffEnv: reset is torch.float32 but the cost's tensor .* is torch.float64", f32.reset)
    floats = env(terminate=lambda y: y[:, 0])
    floats.reset()
    raises(TypeError, r"DiffEnv.step: terminate must return a bool tensor of shape \(B,\) = \(2,\), got a "
           r"torch.float64 tensor", floats.step, torch.zeros(2, 1, dtype=F64))
    wide = env(terminate=lambda y: torch.zeros(3, dtype=torch.bool))
    wide.reset()
    raises(TypeError, r"DiffEnv.step: terminate must return a bool tensor of shape \(B,\)", wide.step,
           torch.zeros(2, 1, dtype=F64))


# ------------------------------------------------------------------------------------------------ SHAC
@pytest.mark.parametrize("options, error, match", [
    (dict(critic=torch.nn.Linear(2, 1)), ValueError,
     r"SHAC: critic must return float values of shape \(B,\) = \(2,\) .* shape \(2, 1\)"),
    (dict(critic=torch.nn.Linear(5, 1)), ValueError, r"SHAC: critic failed on the first observations \(2, 2\)"),
    (dict(gamma="0.99"), ValueError, r"SHAC: gamma must be a number in \[0, 1\], got '0.99'"),
    (dict(gamma=NAN), ValueError, r"SHAC: gamma must be a number in \[0, 1\], got nan"),
    (dict(lam=-0.1), ValueError, r"SHAC: lam must be a number in \[0, 1\]"),
    (dict(target_alpha=True), ValueError, r"SHAC: target_alpha must be a number in \[0, 1\]"),
])
def test_shac_checks_the_critic_and_the_discounts(options, error, match):
    raises(error, match, shac, **options)


def test_shac_closed_loop_and_act_check_their_inputs():
    s = shac()
    raises(ValueError, r"SHAC.closed_loop: x0 has shape \(2, 3\); expected \(B, n\) = \(B, 2\)", s.closed_loop,
           torch.zeros(2, 3))
    raises(TypeError, r"SHAC.closed_loop: x0 must be a torch.Tensor, got list", s.closed_loop, [[0.0, 0.0]])
    raises(ValueError, r"SHAC.closed_loop: x0 contains NaN or Inf", s.closed_loop, torch.full((2, 2), NAN))
    raises(TypeError, r"SHAC.closed_loop: x0 is torch.float64 but the environment's states are torch.float32",
           s.closed_loop, torch.zeros(2, 2, dtype=F64))
    raises(ValueError, r"SHAC.closed_loop: steps must be an int >= 0, got -1", s.closed_loop, torch.zeros(2, 2), -1)
    raises(ValueError, r"SHAC.closed_loop: steps must be an int >= 0, got 2.5", s.closed_loop, torch.zeros(2, 2), 2.5)
    raises(TypeError, r"SHAC.closed_loop: dynamics must be callable or None", s.closed_loop, torch.zeros(2, 2), 2, 3)
    X, U = s.closed_loop(torch.zeros(2, 2), 0)
    assert X.shape == (2, 1, 2) and U.shape == (2, 0, 1)
    X, U = s.closed_loop(torch.zeros(2, 2), 3)
    assert X.shape == (2, 4, 2) and U.shape == (2, 3, 1)
    raises(ValueError, r"SHAC.act: obs has shape \(2, 5\); expected \(\.\.\., o\) = \(\.\.\., 2\)", s.act,
           torch.zeros(2, 5))


def test_train_in_learned_model_checks_its_counts():
    imagined = DiffEnv(MLPDynamics(2, 1, hidden=(8,)), qcost(torch.float32), reset=torch.zeros(4, 2),
                       episode_length=4, num_envs=2, u_lower=-2.0, u_upper=2.0)
    s = SHAC(imagined, horizon=2, epochs=1, critic_minibatches=1, critic_iterations=1, hidden=(8,), progress=False)
    real = env(torch.float32)
    for options, error, match in [
            (dict(rounds=1.5), ValueError, r"train_in_learned_model: rounds must be an int >= 1, got 1.5"),
            (dict(rounds="2"), ValueError, r"train_in_learned_model: rounds must be an int >= 1, got '2'"),
            (dict(transitions_per_round=0), ValueError, r"transitions_per_round must be an int >= 1"),
            (dict(seed=-1), ValueError, r"train_in_learned_model: seed must be an int >= 0"),
            (dict(seconds_per_round=0), ValueError, r"train_in_learned_model: seconds_per_round must be a positive"),
            (dict(fit_options=[1]), TypeError, r"train_in_learned_model: fit_options must be a dict"),
            (dict(evaluate=3), TypeError, r"train_in_learned_model: evaluate must be callable"),
            (dict(progress="no"), TypeError, r"train_in_learned_model: progress must be a bool")]:
        raises(error, match, train_in_learned_model, s, real, **options)
    raises(TypeError, r"train_in_learned_model: shac must be a trajopt.rl.SHAC", train_in_learned_model, "shac", real)
    assert s.epoch == 0


# ------------------------------------------------------------------------------------------------ planners, agent
def pets(**options):
    args = dict(particles=4, samples=16, elites=4, iterations=1)
    args.update(options)
    cost, horizon, low, high = (args.pop(k, d) for k, d in (("cost", PendulumV1Cost()), ("horizon", 5),
                                                           ("u_lower", -2.0), ("u_upper", 2.0)))
    return PETS(cost, horizon, low, high, **args)


@pytest.mark.parametrize("options, error, match", [
    (dict(first_iterations=0), ValueError, r"PETS: first_iterations must be an int >= 1, got 0"),
    (dict(u_lower=NAN), ValueError, r"PETS: u_lower must be finite"),
    (dict(u_upper=INF), ValueError, r"PETS: u_upper must be finite"),
    (dict(u_lower="a"), TypeError, r"PETS: u_lower must be a finite number or a float tensor"),
    (dict(u_lower=2.0, u_upper=-2.0), ValueError, r"PETS: u_lower must not exceed u_upper"),
    (dict(cost="cost"), TypeError, r"PETS: cost must be a trajopt.Cost"),
    (dict(elites=0), ValueError, r"PETS: elites must be an int >= 1"),
    (dict(elites=32), ValueError, r"PETS: elites \(32\) must be at most samples \(16\)"),
    (dict(noise_std=-1.0), ValueError, r"PETS: noise_std must be a positive finite number"),
    (dict(temperature=0.0, solver="mppi"), ValueError, r"PETS: temperature must be a positive finite number"),
    (dict(sample="yes"), TypeError, r"PETS: sample must be a bool"),
])
def test_pets_checks_its_options_at_construction(options, error, match):
    raises(error, match, pets, **options)


def test_pets_and_pendulum_cost_check_observation_shapes():
    planner = pets()
    planner.update(ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)), None, {})
    planner.reset(1, torch.Generator().manual_seed(0))
    raises(ValueError, r"PETS.act: obs has shape \(2, 2\); expected \(\.\.\., n\) = \(\.\.\., 3\)", planner.act,
           torch.zeros(2, 2))
    raises(ValueError, r"PendulumV1Cost.stage: x has shape \(3, 2\); expected \(\.\.\., 3\)",
           PendulumV1Cost().stage, torch.zeros(3, 2), torch.zeros(3, 1))
    raises(ValueError, r"PendulumV1Cost.stage: u has shape \(3, 2\)", PendulumV1Cost().stage, torch.zeros(3, 3),
           torch.zeros(3, 2))


@pytest.mark.parametrize("low, high, error, match", [
    (2.0, -2.0, ValueError, r"RandomPlanner: low must not exceed high"),
    (NAN, 2.0, ValueError, r"RandomPlanner: low must be finite"),
    (-2.0, INF, ValueError, r"RandomPlanner: high must be finite"),
    ("a", 2.0, TypeError, r"RandomPlanner: low must be a finite number or a float tensor"),
    (-torch.ones(3), torch.ones(2), ValueError, r"RandomPlanner: low has shape \(3,\) and high \(2,\); they must be "
                                                r"broadcastable"),
])
def test_random_planner_checks_its_bounds(low, high, error, match):
    raises(error, match, RandomPlanner, low, high)


def test_random_planner_draws_within_integer_bounds():
    planner = RandomPlanner(-2, 2)
    planner.reset(4, torch.Generator().manual_seed(0))
    u = planner.act(torch.zeros(4, 3))
    assert u.shape == (4,) and bool((u.abs() <= 2).all())
    raises(ValueError, r"RandomPlanner.act: obs must be a float tensor \(B, n\)", planner.act, torch.zeros(3))


@pytest.mark.parametrize("options, error, match", [
    (dict(max_episode_steps=0), ValueError, r"ModelBasedAgent: max_episode_steps must be an int >= 1, got 0"),
    (dict(seed=-1), ValueError, r"ModelBasedAgent: seed must be an int >= 0, got -1"),
    (dict(model="mlp"), TypeError, r"ModelBasedAgent: model must be a learned model"),
    (dict(dtype=torch.int32), TypeError, r"ModelBasedAgent: dtype must be a floating torch.dtype"),
    (dict(fit_options=[("epochs", 1)]), TypeError, r"ModelBasedAgent: fit_options must be a dict"),
    (dict(progress="no"), TypeError, r"ModelBasedAgent: progress must be a bool"),
    (dict(make_env="NotAnEnv-v0"), ValueError, r"ModelBasedAgent: make_env 'NotAnEnv-v0' is not an environment id"),
    (dict(model=MLPDynamics(2, 1, hidden=(8,))), ValueError,
     r"ModelBasedAgent: model has state_dim = 2 but the environment's observations have 3"),
])
def test_model_based_agent_checks_its_options(options, error, match):
    pytest.importorskip("gymnasium")
    args = dict(make_env="Pendulum-v1", model=ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)),
                planner=RandomPlanner(torch.tensor([-2.0]), 2.0), progress=False, max_episode_steps=5)
    args.update(options)
    raises(error, match, ModelBasedAgent, args.pop("make_env"), args.pop("model"), args.pop("planner"), **args)


def test_model_based_agent_train_and_evaluate_check_their_budgets():
    pytest.importorskip("gymnasium")
    agent = ModelBasedAgent("Pendulum-v1", ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)),
                            RandomPlanner(torch.tensor([-2.0]), 2.0), progress=False, max_episode_steps=5)
    raises(ValueError, r"ModelBasedAgent.train: env_steps must be an int >= 0, got -1", agent.train, -1)
    raises(TypeError, r"ModelBasedAgent.train: resume must be a bool", agent.train, 10, resume="yes")
    raises(ValueError, r"ModelBasedAgent.evaluate: episodes must be an int >= 1, got 0", agent.evaluate, 0)
    raises(ValueError, r"ModelBasedAgent.evaluate: seed must be an int >= 0, got -3", agent.evaluate, 2, seed=-3)
    assert agent.iteration == 0


def test_plot_learning_curves_checks_the_logs_before_drawing():
    raises(TypeError, r"plot_learning_curves: logs must be a dict label -> log", plot_learning_curves, [1, 2])
    raises(ValueError, r"plot_learning_curves: logs\['a'\] rows must be dicts with the keys \('env_steps', "
           r"'return_mean', 'return_min', 'return_max'\)", plot_learning_curves, {"a": [{"x": 1}]})
    raises(TypeError, r"plot_learning_curves: logs\['a'\] must be a CSV path, a list of rows or a ModelBasedAgent",
           plot_learning_curves, {"a": 3})
    raises(ValueError, r"plot_learning_curves: x must be 'env_steps' or 'time'", plot_learning_curves, {}, x="steps")


# ------------------------------------------------------------------------------------------------ tasks
@pytest.mark.parametrize("args, options, error, match", [
    (("P2",), dict(wide_starts=1.5), ValueError, r"task: wide_starts must be a number in \[0, 1\], got 1.5"),
    (("P3",), dict(wide_starts=-0.5), ValueError, r"task: wide_starts must be a number in \[0, 1\], got -0.5"),
    (("P2",), dict(dtype=torch.int32), TypeError, r"task: dtype must be a floating torch.dtype"),
    (("P5",), {}, ValueError, r"task: name must be 'P2', 'P3', 'pusher' or 'bicycle'"),
])
def test_task_checks_its_options(args, options, error, match):
    raises(error, match, tasks.task, *args, **options)


def test_score_checks_the_controls():
    t = tasks.task("P2", num_envs=2)
    for U, match in [(torch.zeros(32, 100), r"score: U has shape \(32, 100\); expected \(B, T, m\) = \(32, 100, 1\)"),
                     (torch.zeros(2, 100, 1), r"score: U has shape \(2, 100, 1\)"),
                     (torch.zeros(32, 10, 1), r"score: U has shape \(32, 10, 1\)"),
                     (torch.full((32, 100, 1), NAN), r"score: U contains NaN or Inf")]:
        raises(ValueError, match, tasks.score, t, U)
    raises(TypeError, r"score: t must be a task dict", tasks.score, "P2", torch.zeros(32, 100, 1))


# ------------------------------------------------------------------------------------------------ MuJoCo tasks
@pytest.mark.parametrize("options, match", [
    (dict(horizon=0), r"inverted_pendulum: horizon must be an int >= 1, got 0"),
    (dict(horizon=2.5), r"inverted_pendulum: horizon must be an int >= 1, got 2.5"),
    (dict(barrier=-1.0), r"inverted_pendulum: barrier must be a finite number >= 0, got -1.0"),
    (dict(margin=NAN), r"inverted_pendulum: margin must be a finite number >= 0, got nan"),
    (dict(ctrl_weight=-1.0), r"inverted_pendulum: ctrl_weight must be a finite number >= 0, got -1.0"),
])
def test_mujoco_task_checks_its_options_before_loading(options, match):
    from trajopt.rl.mujoco_tasks import mujoco_task
    raises(ValueError, match, mujoco_task, "InvertedPendulum-v5", **options)


XML = """<mujoco><option timestep="0.01"/><worldbody><body name="pole"><joint name="hinge" type="hinge" axis="0 1 0"/>
<geom type="capsule" fromto="0 0 0 0 0 0.5" size="0.02" mass="1"/></body></worldbody>
<actuator><motor joint="hinge" ctrlrange="-2 2" ctrllimited="true"/></actuator></mujoco>"""


def test_reward_residual_cost_checks_its_arguments_and_rows():
    pytest.importorskip("mujoco")
    from trajopt.rl.mujoco_tasks import RewardResidualCost

    def make(**options):
        args = dict(model=dynamics.MuJoCoDynamics(XML), residual=lambda s: s.x_next,
                    penalty=lambda r: (r ** 2).sum(-1))
        args.update(options)
        return RewardResidualCost(args.pop("model"), args.pop("residual"), args.pop("penalty"), **args)
    for options, error, match in [
            (dict(model=dynamics.Pendulum().discretize()), TypeError,
             r"RewardResidualCost: model must be a dynamics.MuJoCoDynamics, got Discretized"),
            (dict(residual=3), TypeError, r"RewardResidualCost: residual must be callable, got int"),
            (dict(penalty=None), TypeError, r"RewardResidualCost: penalty must be callable, got NoneType"),
            (dict(eps=0.0), ValueError, r"RewardResidualCost: eps must be a positive finite number, got 0.0"),
            (dict(eps=NAN), ValueError, r"RewardResidualCost: eps must be a positive finite number, got nan"),
            (dict(nthread=0), ValueError, r"RewardResidualCost: nthread must be an int >= 1, got 0"),
            (dict(exact="yes"), TypeError, r"RewardResidualCost: exact must be a bool")]:
        raises(error, match, make, **options)
    cost = make(nthread=1)
    u = torch.zeros(2, 1, dtype=F64)
    raises(ValueError, r"RewardResidualCost: x has shape \(2, 3\); expected \(\.\.\., n\) = \(\.\.\., 2\)",
           cost.stage, torch.zeros(2, 3, dtype=F64), u)
    raises(ValueError, r"RewardResidualCost: u has shape \(2, 2\)", cost.stage, torch.zeros(2, 2, dtype=F64),
           torch.zeros(2, 2, dtype=F64))
    raises(ValueError, r"RewardResidualCost: x must be \(B, n\) and u \(B, m\), one row each", cost.stage,
           torch.zeros(2, 2, dtype=F64), torch.zeros(3, 1, dtype=F64))
    # documented: a NaN row gives NaN in that row only (the solvers flag it), the others are untouched
    c = cost.stage(torch.tensor([[0.1, 0.0], [NAN, 0.0]], dtype=F64), u)
    assert math.isfinite(float(c[0])) and math.isnan(float(c[1]))
    torch.testing.assert_close(c[0], cost.stage(torch.tensor([[0.1, 0.0]], dtype=F64), u[:1])[0])



# ------------------------------------------------------------------------------------------------ held-out sweep:
# errors that blamed the wrong thing, lists taken as bounds, NumPy integers, sizes that disagree
def test_diffenv_step_names_u_and_its_rows_for_non_finite_actions_and_keeps_its_state():
    e = env()
    e.reset()
    e.step(torch.zeros(2, 1, dtype=F64))
    state, t = e.state.clone(), e.t.clone()
    for u in (torch.tensor([[0.0], [NAN]], dtype=F64), torch.tensor([[0.0], [INF]], dtype=F64)):  # inf: not clamped
        raises(ValueError, r"DiffEnv.step: u contains NaN or Inf in row\(s\) \[1\]", e.step, u)
    torch.testing.assert_close(e.state, state, rtol=0, atol=0)
    assert torch.equal(e.t, t)
    unbounded = DiffEnv(dynamics.Pendulum().discretize().to(F64), reward=lambda x, u, y: -(y * y).sum(-1),
                        reset=torch.zeros(4, 2, dtype=F64), episode_length=8, num_envs=2)
    unbounded.reset()
    raises(ValueError, r"DiffEnv.step: u contains NaN or Inf in row\(s\) \[0\]", unbounded.step,
           torch.tensor([[NAN], [0.0]], dtype=F64))


def test_diffenv_step_names_the_rows_where_the_dynamics_or_the_reward_give_nan():
    nan_reward = DiffEnv(dynamics.Pendulum().discretize().to(F64), reward=lambda x, u, y: torch.where(
        u[:, 0] > 0, NAN, 0.0).to(x), reset=torch.zeros(4, 2, dtype=F64), episode_length=8, num_envs=2)
    nan_reward.reset()
    raises(FloatingPointError, r"DiffEnv.step: the reward \(or cost\) gave NaN or Inf for row\(s\) \[1\]",
           nan_reward.step, torch.tensor([[0.0], [1.0]], dtype=F64))

    class Blows(dynamics.Dynamics):
        def forward(self, x, u, t=None):
            return x + torch.where(u > 1, INF, 0.0)
    blows = DiffEnv(Blows(2, 1), qcost(), reset=torch.zeros(4, 2, dtype=F64), episode_length=8, num_envs=2)
    blows.reset()
    raises(FloatingPointError, r"DiffEnv.step: the dynamics gave NaN or Inf states for row\(s\) \[0\]", blows.step,
           torch.tensor([[2.0], [0.0]], dtype=F64))


def test_diffenv_refuses_list_bounds_at_construction_and_takes_numpy_scalars():
    raises(TypeError, r"DiffEnv: u_lower must be a number or a float tensor broadcastable to \(m,\), got list",
           env, u_lower=[-2.0])
    raises(TypeError, r"DiffEnv: u_upper must be a number .* got ndarray", env,
           reset=lambda n, g: torch.zeros(n, 2, dtype=F64), u_upper=np.array([2.0]))
    e = env(u_lower=np.float32(-1.0), u_upper=np.int64(1), episode_length=np.int64(8), num_envs=np.int64(2),
            shard=(np.int64(0), np.int64(1)))
    assert e.lower.dtype == F64 and float(e.upper) == 1.0 and e.num_envs == 2
    e.reset()
    raises(TypeError, r"DiffEnv.step: generator must be a torch.Generator or None, got int", e.step,
           torch.zeros(2, 1, dtype=F64), 3)
    raises(TypeError, r"DiffEnv: generator must be a torch.Generator or None, got int", e.reset, 3)


class Linear(torch.nn.Module):
    """An actor of the right interface and the given widths."""

    def __init__(self, inputs, outputs, dtype=torch.float32):
        super().__init__()
        self.layer = torch.nn.Linear(inputs, outputs, dtype=dtype)

    def forward(self, obs, noise=None):
        return self.layer(obs)


@pytest.mark.parametrize("actor, error, match", [
    (lambda: GaussianPolicy(3, 1, -2.0, 2.0), ValueError,
     r"SHAC: actor does not take the env's observations \(B, o\) = \(2, 2\) .*GaussianPolicy: obs has shape"),
    (lambda: GaussianPolicy(2, 2, -2.0, 2.0), ValueError,
     r"SHAC: actor must return actions \(B, m\) = \(2, 1\) .* got a torch.float32 tensor of shape \(2, 2\)"),
    (lambda: Linear(3, 1), ValueError, r"SHAC: actor does not take the env's observations \(B, o\) = \(2, 2\)"),
    (lambda: Linear(2, 2), ValueError, r"SHAC: actor must return actions \(B, m\) = \(2, 1\)"),
    (lambda: GaussianPolicy(2, 1, -2.0, 2.0, dtype=F64), TypeError,
     r"SHAC: actor does not take the env's observations .*: GaussianPolicy: obs is torch.float32"),
    (lambda: Linear(2, 1, F64), TypeError, r"SHAC: actor does not take the env's observations \(B, o\) = \(2, 2\) "
     r"\(normalized, torch.float32\); the actor's parameters are torch.float64"),
])
def test_shac_names_the_actor_when_its_widths_or_dtype_do_not_fit_the_env(actor, error, match):
    raises(error, match, shac, actor=actor())


def test_shac_names_an_mpc_actor_that_does_not_take_the_observations():
    raises(ValueError, r"SHAC: actor does not take the env's observations \(B, o\) = \(2, 3\) \(raw.*MPC: x has shape",
           SHAC, env(time_feature=True), mpc_policy(), horizon=2, critic_minibatches=1, hidden=(8,), progress=False)
    policy = mpc_policy()
    s = SHAC(env(), policy, horizon=2, critic_minibatches=1, hidden=(8,), progress=False)
    assert s.actor is policy and policy.mpc._plan is None              # the probe's warm start was forgotten


def test_shac_names_its_default_networks_dtype_when_it_is_not_the_envs():
    raises(TypeError, r"SHAC: actor returns torch.float64 actions but the env's states are torch.float32", shac,
           dtype=F64)


@pytest.mark.parametrize("options, error, match", [
    (dict(actor_lr=NAN), ValueError, r"SHAC: actor_lr must be a positive finite number, got nan"),
    (dict(critic_lr=INF), ValueError, r"SHAC: critic_lr must be a positive finite number, got inf"),
    (dict(actor_lr=-1e-3), ValueError, r"SHAC: actor_lr must be a positive finite number"),
    (dict(reward_scale=0.0), ValueError, r"SHAC: reward_scale must be a positive finite number"),
    (dict(grad_norm=NAN), ValueError, r"SHAC: grad_norm must be a positive finite number"),
    (dict(horizon=0), ValueError, r"SHAC: horizon must be an int >= 1, got 0"),
    (dict(epochs=np.float64(2.0)), ValueError, r"SHAC: epochs must be an int >= 1"),
    (dict(gamma=1.5), ValueError, r"SHAC: gamma must be a number in \[0, 1\], got 1.5"),
    (dict(lam=INF), ValueError, r"SHAC: lam must be a number in \[0, 1\], got inf"),
    (dict(critic_minibatches=8), ValueError, r"SHAC: critic_minibatches \(8\) must be at most horizon \(4\)"),
    (dict(device="no-such-device"), ValueError, r"SHAC: device 'no-such-device' is not a device torch knows"),
    (dict(device=1.5), TypeError, r"SHAC: device must be a torch.device, a str or None, got float"),
    (dict(critic=ValueNetwork(2, hidden=(4,), dtype=F64)), TypeError,
     r"SHAC: critic failed on the first observations \(2, 2\) .*ValueNetwork: obs is torch.float32"),
])
def test_shac_checks_its_hyperparameters(options, error, match):
    raises(error, match, shac, **options)


def test_shac_takes_numpy_integers_and_scalars():
    s = shac(horizon=np.int64(4), epochs=np.int32(2), critic_minibatches=np.int64(2), critic_iterations=np.int64(1),
             seed=np.int64(3), gamma=np.float32(0.9), actor_lr=np.float64(1e-3), hidden=(np.int64(8),))
    assert (s.horizon, s.epochs, s.generator.initial_seed()) == (4, 2, 3)
    assert len(s.train()) == 2


def test_shac_checks_what_evaluate_returns():
    raises(ValueError, r"SHAC: evaluate returned NaN", shac(evaluate=lambda s: NAN, eval_every=1, epochs=1).train)
    raises(TypeError, r"SHAC: evaluate must return a number, got str",
           shac(evaluate=lambda s: "good", eval_every=1, epochs=1).train)
    assert shac(evaluate=lambda s: INF, eval_every=1, epochs=1).train()[-1]["eval_cost"] == INF   # a diverged policy


def test_shac_load_names_the_file_and_what_does_not_fit(tmp_path):
    s = shac()
    before = [p.detach().clone() for p in s.actor.parameters()]
    raises(FileNotFoundError, r"SHAC.load: no checkpoint file at '.*missing.pt'", s.load, str(tmp_path / "missing.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x04half a pickle")
    raises(ValueError, r"SHAC.load: '.*corrupt.pt' is not a checkpoint torch.load can read .*UnpicklingError",
           s.load, str(tmp_path / "corrupt.pt"))
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    raises(ValueError, r"SHAC.load: the checkpoint '.*other.pt' is not a checkpoint of this kind: it lacks the "
           r"entries \['env_steps'", s.load, str(tmp_path / "other.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    raises(ValueError, r"SHAC.load: the checkpoint '.*list.pt' is not a checkpoint of this kind .* holds a list",
           s.load, tmp_path / "list.pt")
    shac(hidden=(16,)).save(str(tmp_path / "wide.pt"))
    raises(ValueError, r"SHAC.load: the checkpoint '.*wide.pt' was written by another configuration: its actor does "
           r"not fit this run's GaussianPolicy: net.0.weight has shape \(16, 2\), this run's \(8, 2\)",
           s.load, str(tmp_path / "wide.pt"))
    shac(horizon=8).save(str(tmp_path / "long.pt"))
    raises(ValueError, r"SHAC.load: the checkpoint '.*long.pt' was written by another configuration: it has "
           r"horizon = 8, this run 4", s.load, str(tmp_path / "long.pt"))
    SHAC(env(F64, num_envs=4), horizon=4, epochs=2, critic_minibatches=2, hidden=(8,),
         progress=False).save(str(tmp_path / "wider_batch.pt"))
    raises(ValueError, r"num_envs = 4, this run 2", s.load, str(tmp_path / "wider_batch.pt"))
    raises(TypeError, r"SHAC.load: path must be a path \(str or os.PathLike\), got int", s.load, 3)
    for p, q in zip(before, s.actor.parameters()):          # nothing of a failed load was applied
        torch.testing.assert_close(p, q.detach(), rtol=0, atol=0)
    state = s.state_dict()
    state["obs"] = state["obs"].double()
    raises(ValueError, r"SHAC.load_state_dict: the state dict was written by another configuration: its obs is "
           r"torch.float64, this run's torch.float32", s.load_state_dict, state)
    raises(ValueError, r"SHAC.load_state_dict: the state dict is not a checkpoint of this kind", s.load_state_dict,
           "state")
    s.save(str(tmp_path / "good.pt"))
    shac().load(str(tmp_path / "good.pt"))


def test_pets_and_random_planner_refuse_sequences_as_bounds_and_take_numpy_scalars():
    raises(TypeError, r"PETS: u_lower must be a finite number or a float tensor broadcastable to \(m,\), got list "
           r"\(convert it: torch.tensor", pets, u_lower=[-2.0])
    raises(TypeError, r"PETS: u_upper must be a finite number .* got ndarray", pets, u_upper=np.array([2.0]))
    raises(TypeError, r"RandomPlanner: low must be a finite number .* got list", RandomPlanner, [-2.0, -1.0], 2.0)
    raises(TypeError, r"RandomPlanner: high must be a finite number .* got tuple", RandomPlanner, -2.0, (2.0,))
    raises(TypeError, r"RandomPlanner: low must be a finite number .* got ndarray", RandomPlanner,
           np.array([-2.0]), 2.0)
    raises(TypeError, r"RandomPlanner: low must be a float tensor or a number, got a torch.int64 tensor",
           RandomPlanner, torch.tensor([-2]), 2.0)
    planner = RandomPlanner(np.float32(-1.5), np.int64(2))
    assert planner.low.dtype == planner.high.dtype == torch.get_default_dtype() and float(planner.low) == -1.5
    p = pets(u_lower=np.float64(-2.0), u_upper=torch.tensor([2.0]))
    assert p.u_lower.shape == () and p.u_upper.shape == (1,)


@pytest.mark.parametrize("options, error, match", [
    (dict(horizon=np.int64(0)), ValueError, r"PETS: horizon must be an int >= 1, got np.int64\(0\)"),
    (dict(particles=2.5), ValueError, r"PETS: particles must be an int >= 1, got 2.5"),
    (dict(samples=-1), ValueError, r"PETS: samples must be an int >= 1"),
    (dict(iterations=True), ValueError, r"PETS: iterations must be an int >= 1, got True"),
    (dict(temperature=NAN), ValueError, r"PETS: temperature must be a positive finite number, got nan"),
    (dict(noise_std=INF), ValueError, r"PETS: noise_std must be a positive finite number"),
    (dict(noise_std=[0.5]), TypeError, r"PETS: noise_std must be a positive finite number, a float tensor \(m,\) or "
                                       r"None, got list"),
])
def test_pets_checks_its_counts_and_scales(options, error, match):
    raises(error, match, pets, **options)


def test_pets_takes_numpy_integers():
    p = pets(horizon=np.int64(3), particles=np.int32(4), samples=np.int64(16), elites=np.int64(4),
             iterations=np.int64(1), first_iterations=np.int64(2), temperature=np.float32(2.0))
    assert (p.horizon, p.particles, p.first_iterations) == (3, 4, 2) and type(p.horizon) is int
    p.update(ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)), None, {})
    p.reset(2, torch.Generator().manual_seed(0))
    u = p.act(torch.zeros(2, 3))
    assert u.shape == (2, 1) and bool(torch.isfinite(u).all())


def test_pets_update_checks_the_model_against_its_bounds_and_particles():
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=(8,))
    raises(ValueError, r"PETS.update: u_lower has shape \(2,\) but the model's actions have m = 1", pets(
        u_lower=-torch.ones(2)).update, model, None, {})
    raises(ValueError, r"PETS.update: particles \(3\) must be a multiple of the ensemble members used \(2\)",
           pets(particles=3).update, model, None, {})
    raises(TypeError, r"PETS.update: model must be an ensemble .* got MLPDynamics", pets().update,
           MLPDynamics(3, 1, hidden=(8,)), None, {})


def test_train_in_learned_model_checks_real_against_the_learned_env():
    imagined = DiffEnv(MLPDynamics(2, 1, hidden=(8,)), qcost(torch.float32), reset=torch.zeros(4, 2),
                       episode_length=4, num_envs=2, u_lower=-2.0, u_upper=2.0)
    s = SHAC(imagined, horizon=2, epochs=1, critic_minibatches=1, critic_iterations=1, hidden=(8,), progress=False)
    raises(ValueError, r"train_in_learned_model: real's observations have size 3 but shac's actor and critic take 2",
           train_in_learned_model, s, env(torch.float32, time_feature=True), progress=False)
    raises(TypeError, r"train_in_learned_model: real's states are torch.float64 but shac.env's are torch.float32",
           train_in_learned_model, s, env(F64), progress=False)
    cart = DiffEnv(dynamics.Pendulum().discretize(), reward=lambda x, u, y: -(y * y).sum(-1),
                   reset=torch.zeros(4, 2), episode_length=4, num_envs=2, u_lower=-2.0, u_upper=2.0)
    cart.dynamics = dynamics.LinearDynamics(torch.eye(3), torch.ones(3, 2))
    raises(ValueError, r"train_in_learned_model: real has state_dim = 3 but shac.env \(the learned model\) has 2",
           train_in_learned_model, s, cart, progress=False)
    raises(ValueError, r"train_in_learned_model: evaluate returned NaN", train_in_learned_model, s, env(torch.float32),
           rounds=np.int64(1), transitions_per_round=np.int64(8), epochs_per_round=np.int64(1), seed=np.int64(1),
           fit_options=dict(epochs=1), evaluate=lambda shac: NAN, progress=False)


def tiny_agent(**options):
    gym = pytest.importorskip("gymnasium")
    del gym
    args = dict(make_env="Pendulum-v1", model=ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)),
                planner=RandomPlanner(-torch.full((1,), 2.0), torch.full((1,), 2.0)), progress=False,
                max_episode_steps=5, fit_options=dict(epochs=1))
    args.update(options)
    return ModelBasedAgent(args.pop("make_env"), args.pop("model"), args.pop("planner"), **args)


def test_model_based_agent_takes_numpy_integers():
    agent = tiny_agent(seed=np.int64(2), envs=np.int64(2), random_iterations=np.int32(1),
                       max_episode_steps=np.int64(5), elite_members=np.int64(1))
    assert (agent.seed, agent.envs, agent.elite_members) == (2, 2, 1) and type(agent.envs) is int
    raises(ValueError, r"ModelBasedAgent: envs must be an int >= 1, got 0", tiny_agent, envs=0)
    raises(ValueError, r"ModelBasedAgent: random_iterations must be an int >= 1, got 1.5", tiny_agent,
           random_iterations=1.5)
    raises(ValueError, r"ModelBasedAgent: elite_members must be None or an int in \[1, members\]", tiny_agent,
           elite_members=np.int64(3))


class Wrong(Planner):
    def __init__(self, make):
        self.make = make

    def act(self, obs):
        return self.make(obs.shape[0])


@pytest.mark.parametrize("make, match", [
    (lambda B: torch.zeros(B), r"ModelBasedAgent: planner \(Wrong\).act must return actions \(B, m\) = \(1, 1\) "
                               r"\(the environment's action size m = 1\), got \(1,\)"),
    (lambda B: [[0.0]] * B, r"ModelBasedAgent: planner \(Wrong\).act must return actions \(B, m\) .* got list"),
    (lambda B: torch.full((B, 1), NAN), r"ModelBasedAgent: planner \(Wrong\).act returned NaN or Inf actions in "
                                        r"row\(s\) \[0\]"),
])
def test_model_based_agent_names_a_planner_whose_actions_do_not_fit_the_env(make, match):
    agent = tiny_agent(planner=Wrong(make))
    raises(ValueError, match, agent.train, 10)
    assert agent.iteration == 1                          # the random phase ran; the planner's failed before stepping


def test_model_based_agent_checks_its_planners_bounds_against_the_action_space():
    raises(ValueError, r"ModelBasedAgent: planner \(RandomPlanner\)'s low and high broadcast to \(2,\), not to the "
           r"actions' \(m,\) = \(1,\)", tiny_agent, planner=RandomPlanner(-torch.ones(2), 2.0))
    raises(ValueError, r"ModelBasedAgent: planner \(RandomPlanner\) has action_dim = 2 but the environment's "
           r"actions have m = 1", tiny_agent, planner=RandomPlanner(-2.0, 2.0, action_dim=2))
    raises(ValueError, r"ModelBasedAgent: planner \(PETS\) has u_upper of shape \(2,\) but the environment's "
           r"actions have m = 1", tiny_agent, planner=pets(u_upper=torch.ones(2)))
    assert tiny_agent(planner=pets(u_lower=torch.tensor([-2.0]))).action_dim == 1


def test_model_based_agent_load_names_the_file_and_what_does_not_fit(tmp_path):
    ckpt = str(tmp_path / "agent.pt")
    tiny_agent().save(ckpt)
    raises(ValueError, r"ModelBasedAgent.load: the checkpoint '.*agent.pt' was written by another configuration: its "
           r"model does not fit this run's ProbabilisticEnsemble: nets.0.0.weight has shape \(8, 4\), this run's "
           r"\(16, 4\)", tiny_agent(model=ProbabilisticEnsemble(3, 1, members=2, hidden=(16,))).load, ckpt)
    raises(ValueError, r"ModelBasedAgent.load: the checkpoint '.*agent.pt' was written by another configuration: it "
           r"has seed = 0, this run 1", tiny_agent(seed=1).load, ckpt)
    raises(FileNotFoundError, r"ModelBasedAgent.load: no checkpoint file at '.*nothing.pt'", tiny_agent().load,
           str(tmp_path / "nothing.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    raises(ValueError, r"ModelBasedAgent.load: '.*corrupt.pt' is not a checkpoint torch.load can read",
           tiny_agent().load, str(tmp_path / "corrupt.pt"))
    state = tiny_agent().state_dict()
    state["data"] = {k: torch.zeros(4, 2) for k in ("x", "u", "x_next")}
    raises(ValueError, r"ModelBasedAgent.load_state_dict: the state dict was written by another configuration: its "
           r"data\['x'\] has shape \(4, 2\), this run's \(4, 3\)", tiny_agent().load_state_dict, state)
    resumed = tiny_agent(checkpoint=str(tmp_path / "corrupt.pt"))
    raises(ValueError, r"ModelBasedAgent.load: '.*corrupt.pt' is not a checkpoint", resumed.train, 5)
    tiny_agent().load(ckpt)


def test_plot_learning_curves_checks_its_target():
    raises(ValueError, r"plot_learning_curves: target must be a finite number .* got nan", plot_learning_curves, {},
           target=NAN)
    raises(TypeError, r"plot_learning_curves: target must be a number or None, got '0'", plot_learning_curves, {},
           target="0")


def test_gaussian_policy_takes_numpy_scalar_bounds_and_refuses_lists():
    policy = GaussianPolicy(np.int64(3), np.int64(1), np.float32(-1.0), np.float64(1.0), hidden=(np.int64(4),))
    assert policy(torch.zeros(2, 3)).shape == (2, 1)
    raises(TypeError, r"GaussianPolicy: u_lower must be a number or a float tensor broadcastable to \(m,\), got list",
           GaussianPolicy, 3, 1, [-1.0], 1.0)


# ---------------------------------------------------------------------------------------------- trajopt.rl.tasks
PATH = tasks.PathTrackingCost


@pytest.mark.parametrize("fn, error, match", [
    (lambda: tasks.pusher_starts(-1), ValueError, r"pusher_starts: count must be an int >= 1, got -1"),
    (lambda: tasks.pusher_starts(2.5), ValueError, r"pusher_starts: count must be an int >= 1, got 2.5"),
    (lambda: tasks.pusher_starts(4, dtype=torch.int64), TypeError, r"pusher_starts: dtype must be a floating"),
    (lambda: tasks.pusher_starts(4, generator=0), TypeError, r"pusher_starts: generator must be a torch.Generator"),
    (lambda: tasks.bicycle_starts("road", 4), TypeError, r"bicycle_starts: cost must be a .*PathTrackingCost"),
    (lambda: tasks.bicycle_starts(PATH(), 0), ValueError, r"bicycle_starts: count must be an int >= 1, got 0"),
    (lambda: tasks.bicycle_starts(PATH(), 4, dtype=torch.int32), TypeError, r"bicycle_starts: dtype must be"),
    (lambda: PATH(wavelength=0.0), ValueError, r"PathTrackingCost: wavelength must be a positive finite number"),
    (lambda: PATH(speed=NAN), ValueError, r"PathTrackingCost: speed must be a positive finite number, got nan"),
    (lambda: PATH(max_steer=-0.6), ValueError, r"PathTrackingCost: max_steer must be a number in \(0, 1.57"),
    (lambda: PATH(max_steer=2.0), ValueError, r"PathTrackingCost: max_steer must be a number in \(0, 1.57"),
    (lambda: PATH(amplitude=INF), ValueError, r"PathTrackingCost: amplitude must be a finite number >= 0, got inf"),
    (lambda: PATH(w_limit=-1.0), ValueError, r"PathTrackingCost: w_limit must be a finite number >= 0"),
    (lambda: tasks.stanley(PATH(), torch.zeros(3, 2)), ValueError, r"stanley: x has shape \(3, 2\); expected "
                                                                   r"\(B, 4\)"),
    (lambda: tasks.stanley(PATH(), torch.full((3, 4), NAN)), ValueError, r"stanley: x contains NaN"),
    (lambda: tasks.stanley(PATH(), torch.zeros(3, 4), dt=0.0), ValueError, r"stanley: dt must be a positive finite"),
    (lambda: tasks.stanley(PATH(), torch.zeros(3, 4), gain=NAN), ValueError, r"stanley: gain must be a finite "
                                                                             r"number >= 0, got nan"),
    (lambda: tasks.stanley(tasks.PusherCost(), torch.zeros(3, 4)), TypeError, r"stanley: cost must be a "
                                                                              r".*PathTrackingCost"),
    (lambda: tasks.angle_features(torch.zeros(3, 2), 5, torch.ones(2)), ValueError,
     r"angle_features: angle must be an int in \[0, n\) = \[0, 2\)"),
    (lambda: tasks.angle_features(torch.zeros(3, 2), 0, torch.ones(3)), ValueError,
     r"angle_features: scale has shape \(3,\); expected a number or \(n,\) = \(2,\)"),
    (lambda: tasks.angle_features(torch.zeros(3, 2), 0, 2.0), TypeError, r"angle_features: scale must be a float "
                                                                         r"tensor"),
    (lambda: tasks.angle_features([[0.0, 1.0]], 0, torch.ones(2)), TypeError, r"angle_features: x must be a float "
                                                                              r"tensor"),
    (lambda: tasks.references("foo"), ValueError, r"references: name must be one of .*got 'foo'"),
    (lambda: tasks.PusherCost(reach=-1.0), ValueError, r"PusherCost: reach must be a finite number >= 0, got -1"),
    (lambda: tasks.PusherCost(w_box=NAN), ValueError, r"PusherCost: w_box must be a finite number >= 0, got nan"),
    (lambda: tasks.PusherCost(goal=(0.0,)), ValueError, r"PusherCost: goal has shape \(1,\)"),
    (lambda: tasks.PusherCost(goal="origin"), TypeError, r"PusherCost: goal must be a pair of numbers"),
    (lambda: tasks.PusherCost(goal=torch.tensor([0.0, NAN])), ValueError, r"PusherCost: goal contains NaN"),
    (lambda: tasks.PusherCost(w_u=-1.0), ValueError, r"PusherCost: w_u must be a finite number >= 0, got -1"),
    (lambda: tasks.evaluator(None), TypeError, r"evaluator: t must be a task dict"),
])
def test_task_helpers_check_their_arguments_by_name(fn, error, match):
    raises(error, match, fn)


def test_task_helpers_take_valid_arguments():
    cost = PATH(amplitude=0.0, max_steer=1.5)
    u = tasks.stanley(cost, tasks.bicycle_starts(cost, np.int64(3), torch.Generator().manual_seed(0)), gain=0.0)
    assert u.shape == (3, 2) and bool(torch.isfinite(u).all())
    assert tasks.pusher_starts(np.int64(2), dtype=F64).dtype == F64
    assert tasks.PusherCost(goal=torch.zeros(2, dtype=F64)).goal.dtype == F64
    assert tasks.angle_features(torch.zeros(3, 2), np.int64(1), torch.tensor(2.0)).shape == (3, 4)
    assert tasks.references("P2")[0][1] == 410.2


# ---------------------------------------------------------------------------------------------- PETS.act's obs
def fitted_pets(**options):
    planner = pets(**options)
    planner.update(ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)), None)
    planner.reset(2, torch.Generator().manual_seed(0))
    return planner


def test_pets_act_names_obs():
    planner = fitted_pets()
    raises(ValueError, r"PETS.act: obs contains NaN or Inf", planner.act, torch.full((2, 3), NAN))
    raises(TypeError, r"PETS.act: obs is torch.float64 but the module's parameters are torch.float32",
           planner.act, torch.zeros(2, 3, dtype=F64))
    u = planner.act(torch.zeros(2, 3))
    assert u.shape == (2, 1) and bool(torch.isfinite(u).all())


# ---------------------------------------------------------------------------------------------- MPCPolicy in float64
@pytest.mark.parametrize("bounds", [(-2.0, 2.0), (-2 * torch.ones(1, dtype=F64), 2 * torch.ones(1, dtype=F64))])
def test_mpc_policy_plans_in_float64_with_a_fixed_cost(bounds):
    policy = MPCPolicy(dynamics.Pendulum().discretize().to(F64), qcost(), 5, *bounds, max_iter=3)
    assert policy.lower.dtype == F64
    x = torch.tensor([[1.0, 0.0], [3.0, 0.5]], dtype=F64)
    for noise in (None, torch.randn(2, 1, dtype=F64)):
        u = policy(x, noise)
        assert u.dtype == F64 and u.shape == (2, 1) and bool(torch.isfinite(u).all()) and bool((u.abs() <= 2).all())


# ---------------------------------------------------------------------------------------------- RandomPlanner numbers
def test_random_planner_with_number_bounds_serves_an_env_of_m_actions():
    planner = RandomPlanner(-2.0, 2.0, action_dim=np.int64(3))
    planner.reset(4, torch.Generator().manual_seed(0))
    u = planner.act(torch.zeros(4, 5))
    assert u.shape == (4, 3) and bool((u.abs() <= 2).all())
    raises(ValueError, r"RandomPlanner: action_dim must be an int >= 1, got 0", RandomPlanner, -1.0, 1.0,
           action_dim=0)
    raises(ValueError, r"RandomPlanner: low and high broadcast to \(2,\), not to the actions' \(m,\) = \(3,\)",
           RandomPlanner, -torch.ones(2), 1.0, action_dim=3)
    agent = tiny_agent(planner=RandomPlanner(-2.0, 2.0), random_iterations=1)
    assert agent.planner.action_dim == 1
    rows = agent.train(10)                               # the second iteration acts with the number-bound planner
    assert rows[-1]["phase"] == "planner" and all(math.isfinite(r["return_mean"]) for r in rows)


# ---------------------------------------------------------------------------------------------- SHAC device, plot path
def test_shac_names_an_unavailable_device():
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    raises(ValueError, r"SHAC: device 'cuda:7' is not available on this machine", shac, device="cuda:7")


def test_plot_learning_curves_names_a_path_in_a_missing_folder(tmp_path):
    rows = [dict(env_steps=1, time=1.0, return_mean=1.0, return_min=0.0, return_max=2.0)]
    raises(FileNotFoundError, r"plot_learning_curves: path '/nonexistent_dir/x.png' is in a folder that does not "
           r"exist", plot_learning_curves, {"a": rows}, path="/nonexistent_dir/x.png")
    raises(TypeError, r"plot_learning_curves: path must be a file path", plot_learning_curves, {"a": rows}, path=3)


# ------------------------------------------------------------------------ sweep 6: names for what passed silently
def test_diffenv_step_names_a_reward_or_cost_of_another_dtype_or_shape():
    e = DiffEnv(dynamics.Pendulum().discretize(), reward=lambda x, u, y: -(x * x).sum(-1).double(),
                reset=torch.zeros(4, 2), episode_length=8, num_envs=2)
    e.reset()
    raises(TypeError, r"DiffEnv.step: reward returned torch.float64 for torch.float32 states", e.step,
           torch.zeros(2, 1))
    e = DiffEnv(dynamics.Pendulum().discretize(), reward=lambda x, u, y: x[:, :1], reset=torch.zeros(4, 2),
                episode_length=8, num_envs=2)
    e.reset()
    raises(ValueError, r"DiffEnv.step: reward must return a tensor of shape \(B,\) = \(2,\), got \(2, 1\)", e.step,
           torch.zeros(2, 1))

    class WideCost(trajopt.Cost):
        def stage(self, x, u, t=None):
            return (x * x).sum(-1).unsqueeze(-1).expand(-1, 2) if x.shape[0] == 2 else (x * x).sum(-1)
    e = DiffEnv(dynamics.Pendulum().discretize().to(F64), WideCost(), reset=torch.zeros(4, 2, dtype=F64),
                episode_length=8, num_envs=2)
    e.reset()
    raises(ValueError, r"DiffEnv.step: the cost's stage must return a tensor of shape \(B,\)", e.step,
           torch.zeros(2, 1, dtype=F64))


def test_diffenv_observe_names_x():
    e = env()
    raises(ValueError, r"DiffEnv.observe: x has shape \(2, 3\); expected \(B, n\) = \(B, 2\)", e.observe,
           torch.zeros(2, 3, dtype=F64))
    raises(TypeError, r"DiffEnv.observe: x must be a torch.Tensor \(B, n\), got list", e.observe, [[0.0, 0.0]])
    e.reset()
    raises(TypeError, r"DiffEnv.observe: x must be a float tensor of the states dtype torch.float64, got "
           r"torch.float32", e.observe, torch.zeros(2, 2))
    assert e.observe(torch.zeros(3, 2, dtype=F64)).shape == (3, 2)


def test_gaussian_policy_names_noise_of_another_dtype():
    p = GaussianPolicy(2, 1, -1.0, 1.0, hidden=(4,))
    raises(TypeError, r"GaussianPolicy: noise is torch.float64 but the module's parameters are torch.float32",
           p, torch.zeros(3, 2), torch.zeros(3, 1, dtype=F64))
    raises(ValueError, r"GaussianPolicy: noise has shape \(3, 2\)", p, torch.zeros(3, 2), torch.zeros(3, 2))


@pytest.mark.parametrize("fn, match", [
    (lambda: tasks.task("pusher", 2, dtype=torch.float16), r"task: dtype must be .*torch.float32 or torch.float64"),
    (lambda: tasks.bicycle_starts(tasks.PathTrackingCost(), 3, dtype=torch.float16),
     r"bicycle_starts: dtype must be .*torch.float32 or torch.float64, got torch.float16"),
    (lambda: tasks.pusher_starts(3, dtype=torch.bfloat16), r"pusher_starts: dtype must be .*torch.float64"),
    (lambda: GaussianPolicy(2, 1, -1.0, 1.0, dtype=torch.float16), r"GaussianPolicy: dtype must be"),
    (lambda: shac(dtype=torch.float16), r"SHAC: dtype must be .*torch.float32 or torch.float64"),
])
def test_half_precision_dtypes_are_refused_by_name(fn, match):
    raises(TypeError, match, fn)


def test_shac_closed_loop_names_the_rows_where_the_dynamics_give_nan():
    class NanRow(dynamics.Dynamics):
        def forward(self, x, u, t=None):
            y = x + 0.1 * u
            return torch.where((torch.arange(x.shape[0]) == 1).unsqueeze(-1) & (x[:, :1] > -1), NAN, y)
    s = shac()
    raises(FloatingPointError, r"SHAC.closed_loop: the dynamics gave NaN or Inf states for row\(s\) \[1\], first at "
           r"step t=0", s.closed_loop, torch.zeros(3, 2), 4, NanRow(2, 1))
    X, U = s.closed_loop(torch.zeros(3, 2), 4)
    assert X.shape == (3, 5, 2) and bool(torch.isfinite(X).all() & torch.isfinite(U).all())


def test_checkpoint_and_log_in_a_missing_folder_are_named_at_construction(tmp_path):
    missing = str(tmp_path / "no_such_dir" / "run.pt")
    raises(FileNotFoundError, r"SHAC: checkpoint '.*run.pt' is in a folder that does not exist", shac,
           checkpoint=missing)
    raises(FileNotFoundError, r"SHAC: log '.*run.pt' is in a folder that does not exist", shac, log=missing)
    raises(TypeError, r"SHAC: checkpoint must be a path \(str or os.PathLike\) or None, got int", shac, checkpoint=3)
    shac(checkpoint=str(tmp_path / "run.pt"), log=tmp_path / "log.csv")
    raises(FileNotFoundError, r"ModelBasedAgent: checkpoint '.*run.pt' is in a folder that does not exist",
           tiny_agent, checkpoint=missing)


def test_learned_cost_names_terminal_and_x():
    X, U = torch.zeros(3, 6, 2) + 0.3, torch.zeros(3, 5, 1) + 0.1
    raises(ValueError, r"LearnedCost: terminal returned shape \(3, 2\) for x \(3, 2\); it must return one value "
           r"per state: \(3,\) or \(3, 1\)", LearnedCost(torch.tensor([1.0, 0.1]), torch.tensor([0.01]),
                                                         terminal=torch.nn.Linear(2, 2)), X, U)
    raises(TypeError, r"LearnedCost: terminal's tensor 'weight' is torch.float64 but q is torch.float32",
           LearnedCost, torch.tensor([1.0, 0.1]), torch.tensor([0.01]), terminal=torch.nn.Linear(2, 1).double())

    class Double(torch.nn.Module):
        def forward(self, x):
            return (x * x).sum(-1).double()
    raises(TypeError, r"LearnedCost: terminal returned torch.float64 for torch.float32 states",
           LearnedCost(torch.tensor([1.0, 0.1]), torch.tensor([0.01]), terminal=Double()), X, U)
    c = LearnedCost(torch.tensor([1.0, 0.1]), torch.tensor([0.01]), terminal=torch.nn.Linear(2, 1))
    assert c(X, U).shape == (3,)
    raises(ValueError, r"LearnedCost.forward: X has shape \(3, 6, 3\): n=3 states; the cost is for n=2", c,
           torch.zeros(3, 6, 3), U)
    raises(ValueError, r"LearnedCost.forward: U has shape \(3, 5, 2\): m=2 controls; the cost is for m=1", c,
           X, torch.zeros(3, 5, 2))
    raises(ValueError, r"LearnedCost.stage: x has shape \(3, 3\); expected \(\.\.\., n\) = \(\.\.\., 2\)", c.stage,
           torch.zeros(3, 3), torch.zeros(3, 1))
    raises(ValueError, r"LearnedCost.terminal: x has shape \(3, 3\)", c.terminal, torch.zeros(3, 3))
