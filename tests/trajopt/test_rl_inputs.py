"""Nothing silent in trajopt.rl: bad input to a public entry point raises an error that names the argument and
what was expected (no environment training here: every case fails before it, or runs a step or two)."""
import math

import pytest
import torch

import dynamics
import trajopt
from dynamics.learned import MLPDynamics, ProbabilisticEnsemble
from trajopt.rl import (PETS, SHAC, DiffEnv, GaussianPolicy, LearnedCost, ModelBasedAgent, MPCPolicy,
                        ObservationNormalizer, PendulumV1Cost, RandomPlanner, ValueNetwork, plot_learning_curves,
                        tasks, train_in_learned_model)

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
                planner=RandomPlanner(-2.0, 2.0), progress=False, max_episode_steps=5)
    args.update(options)
    raises(error, match, ModelBasedAgent, args.pop("make_env"), args.pop("model"), args.pop("planner"), **args)


def test_model_based_agent_train_and_evaluate_check_their_budgets():
    pytest.importorskip("gymnasium")
    agent = ModelBasedAgent("Pendulum-v1", ProbabilisticEnsemble(3, 1, members=2, hidden=(8,)),
                            RandomPlanner(-2.0, 2.0), progress=False, max_episode_steps=5)
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
