"""Value-guided MPPI (trajopt.rl.value_mppi) as a planner of the model-based agent, on tiny budgets."""
import copy

import pytest
import torch

from dynamics.learned import ProbabilisticEnsemble, Transitions
from tests.skips import GYMNASIUM
from tests.trajopt.test_agent import Interrupt, killed
from trajopt import Cost
from trajopt.rl.agent import ModelBasedAgent, PendulumV1Cost
from trajopt.rl.value_mppi import ValueGuidedMPPI, td_lambda

EPISODE = 20                                 # episodes cut to 20 steps: every iteration adds 20 transitions
TINY = dict(samples=16, policy_samples=4, iterations=1, first_iterations=2, gradient_steps=5, batch_size=16,
            hidden=(16,), rollout_horizon=3)


def tiny_planner(**options):
    return ValueGuidedMPPI(PendulumV1Cost(), 4, -2.0, 2.0, **{**TINY, **options})


def tiny_agent(seed=0, log=None, checkpoint=None, planner=None, **kwargs):
    pytest.importorskip("gymnasium", reason=GYMNASIUM)
    torch.manual_seed(seed)
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=(16,))
    return ModelBasedAgent("Pendulum-v1", model, planner or tiny_planner(), seed=seed, max_episode_steps=EPISODE,
                           fit_options=dict(epochs=3, batch_size=32), log=log, checkpoint=checkpoint, progress=False,
                           **kwargs)


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def pushed_model():
    """A two-member ensemble that moves ``x_0`` by ``u / 2`` and nothing else (one linear layer, no spread)."""
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=())
    with torch.no_grad():
        for net in model.nets:
            net[0].weight.zero_()
            net[0].bias.zero_()
            net[0].weight[0, 3] = 0.5
    return model


def random_data(N=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 3, generator=g)
    u = torch.rand(N, 1, generator=g) * 4 - 2
    return Transitions(x, u, x + 0.1 * torch.randn(N, 3, generator=g))


class ControlCost(Cost):
    """``0.01 u^2``: only the terminal value can prefer a direction."""

    def stage(self, x, u, t=None):
        return 0.01 * u[..., 0] ** 2


def linear_critic(planner, slope):
    """Make the planner's critic ``V(z) = slope (z_0 + 5)`` of the normalized observation ``z`` (the identity
    normalization): ELU is linear above 0, and ``z_0 + 5 > 0`` here."""
    with torch.no_grad():
        for module in (planner.critic, planner.target_critic):
            first, second, last = (layer for layer in module.net if isinstance(layer, torch.nn.Linear))
            for layer in (first, second, last):
                layer.weight.zero_()
                layer.bias.zero_()
            first.weight[0, 0], first.bias[0] = 1.0, 5.0
            second.weight[0, 0] = 1.0
            last.weight[0, 0] = slope
        planner.normalizer.mean.zero_()
        planner.normalizer.var.fill_(1.0 - planner.normalizer.eps)


def test_td_lambda_targets_equal_a_hand_computation():
    gamma, lam = 0.9, 0.5
    r = torch.tensor([[1.0, -2.0], [0.5, 1.0], [2.0, 0.0]])          # (L = 3, B = 2)
    v = torch.tensor([[10.0, 4.0], [20.0, -6.0], [30.0, 8.0]])       # the critic at each step's next state
    cuts = torch.tensor([[False, True], [False, False]])              # sequence 1: step 1 starts a new episode
    G = td_lambda(r, v, gamma, lam, cuts)
    g2 = [2.0 + 0.9 * 30.0, 0.0 + 0.9 * 8.0]
    g1 = [0.5 + 0.9 * (0.5 * 20.0 + 0.5 * g2[0]), 1.0 + 0.9 * (0.5 * -6.0 + 0.5 * g2[1])]
    g0 = [1.0 + 0.9 * (0.5 * 10.0 + 0.5 * g1[0]), -2.0 + 0.9 * 4.0]     # cut: one-step bootstrap
    torch.testing.assert_close(G, torch.tensor([g0, g1, g2]))
    # lambda = 1 without cuts is the discounted L-step return bootstrapped at the end; lambda = 0 is TD(0)
    torch.testing.assert_close(td_lambda(r, v, gamma, 1.0)[0], r[0] + 0.9 * r[1] + 0.81 * r[2] + 0.729 * v[2])
    torch.testing.assert_close(td_lambda(r, v, gamma, 0.0), r + 0.9 * v)


def test_the_critic_targets_of_real_windows_are_td_lambda_cut_at_episode_ends():
    planner = tiny_planner(gamma=0.9, lam=0.5, reward_scale=0.5)
    data = random_data(12)
    chained = data.x.clone()
    chained[1:6] = data.x_next[0:5]                       # transitions 0..5 form one episode, the rest do not chain
    data = Transitions(chained, data.u, data.x_next)
    planner.update(pushed_model(), data, {"generator": torch.Generator().manual_seed(0)})
    idx = torch.tensor([[0, 4, 7], [1, 5, 8], [2, 6, 9]])   # windows starting at 0, 4 and 7
    states, G = planner.window_targets(data, idx)
    torch.testing.assert_close(states, data.x[idx])
    with torch.no_grad():
        v = planner.target_critic(planner.normalizer(data.x_next[idx]))
    r = -0.5 * PendulumV1Cost().stage(data.x[idx], data.u[idx])
    # window at 0: chained throughout; at 4: transition 5 ends the episode (x[6] != x_next[5]); at 7: no chain
    expected = torch.empty(3, 3)
    for j, chain in enumerate(([True, True], [True, False], [False, False])):
        g2 = r[2, j] + 0.9 * v[2, j]
        g1 = r[1, j] + 0.9 * ((0.5 * v[1, j] + 0.5 * g2) if chain[1] else v[1, j])
        g0 = r[0, j] + 0.9 * ((0.5 * v[0, j] + 0.5 * g1) if chain[0] else v[0, j])
        expected[:, j] = torch.stack([g0, g1, g2])
    torch.testing.assert_close(G, expected)


def test_the_terminal_value_reaches_the_plan():
    """A critic that favours a larger first observation turns the first action that way, and the other way round."""
    first = {}
    for slope in (10.0, -10.0):
        planner = ValueGuidedMPPI(ControlCost(), 3, -2.0, 2.0, samples=64, policy_samples=0, iterations=3,
                                  first_iterations=3, gradient_steps=1, batch_size=4, hidden=(8, 8), gamma=0.9)
        planner.update(pushed_model(), random_data(), {"generator": torch.Generator().manual_seed(0)})
        linear_critic(planner, slope)
        planner.reset(2, torch.Generator().manual_seed(1))
        first[slope] = planner.act(torch.zeros(2, 3))
    assert (first[10.0] > 1.0).all() and (first[-10.0] < -1.0).all()


def test_the_policy_proposals_are_its_rollouts_and_start_an_episodes_plan():
    planner = tiny_planner(policy_samples=3)
    planner.update(pushed_model(), random_data(), {"generator": torch.Generator().manual_seed(0)})
    obs = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    P = planner.proposals(obs, torch.Generator().manual_seed(3))
    assert P.shape == (2, 3, 4, 1) and (P.abs() <= 2).all()
    with torch.no_grad():                                  # the first: the policy's mean, rolled through the model
        x, mean = obs, []
        for _ in range(4):
            mean.append(planner.policy(planner.normalizer(x)))
            x = x + torch.cat([0.5 * mean[-1], torch.zeros(2, 2)], -1)
    torch.testing.assert_close(P[:, 0], torch.stack(mean, 1))
    assert not torch.allclose(P[:, 1], P[:, 0])            # the others are draws of its Gaussian
    # an episode's first plan starts from the policy's mean rollout: with the spread of MPPI's samples tiny and a
    # high temperature, the plan stays there
    planner = tiny_planner(policy_samples=1, noise_std=1e-6, temperature=1e6, first_iterations=1)
    planner.update(pushed_model(), random_data(), {"generator": torch.Generator().manual_seed(0)})
    planner.reset(2, torch.Generator().manual_seed(4))
    planner.act(obs)
    torch.testing.assert_close(planner.plan, planner.proposals(obs)[:, 0], atol=1e-5, rtol=0)


def test_policy_training_decreases_its_loss():
    planner = tiny_planner(gradient_steps=1, batch_size=64, actor_lr=1e-2, hidden=(32,))
    model, data = pushed_model(), random_data(200)
    planner.update(model, Transitions(data.x[:1], data.u[:1], data.x_next[:1]),
                   {"generator": torch.Generator().manual_seed(0)})
    before = copy.deepcopy(planner.policy)
    planner.gradient_steps = 40
    planner.update(model, data, {"generator": torch.Generator().manual_seed(1)})
    g = torch.Generator().manual_seed(5)
    x0 = data.x[torch.randint(200, (256,), generator=g)]
    noise = torch.randn(3, 256, 1, generator=g)

    def loss(policy):                                     # the actor loss, with the critic after training
        planner.policy, keep = policy, planner.policy
        try:
            with torch.no_grad():
                xs, us = planner._rollout(planner.mean_dynamics, x0, noise)
                r = -PendulumV1Cost().stage(xs[:-1], us)
                ret = sum(planner.gamma ** t * r[t] for t in range(3))
                ret = ret + planner.gamma ** 3 * planner.target_critic(planner.normalizer(xs[-1]))
        finally:
            planner.policy = keep
        return float(-ret.mean())
    assert loss(planner.policy) < loss(before) - 0.05
    assert len(planner.stats) == 2 and planner.stats[-1]["gradient_steps"] == 40 and planner.stats[-1]["skipped"] == 0


def test_the_same_seed_gives_the_same_actions_and_weights():
    a, b, c = tiny_agent(seed=3), tiny_agent(seed=3), tiny_agent(seed=4)
    ra, rb = (without_time(x.train(2 * EPISODE)) for x in (a, b))
    assert ra == rb and [r["phase"] for r in ra] == ["random", "planner"]
    assert without_time(c.train(EPISODE)) != ra[:1]
    assert torch.equal(a.data.u, b.data.u)                 # the actions taken
    for name in ("policy", "critic", "target_critic", "normalizer"):
        for (k, va), vb in zip(getattr(a.planner, name).state_dict().items(),
                               getattr(b.planner, name).state_dict().values()):
            assert torch.equal(va, vb), (name, k)
    assert torch.equal(a.planner.plan, b.planner.plan)
    assert (a.evaluate(2, seed=1, progress=False) == b.evaluate(2, seed=1, progress=False)).all()


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    ckpt, log = str(tmp_path / "run.pt"), str(tmp_path / "run.csv")
    planner = killed(ValueGuidedMPPI, EPISODE + 10, PendulumV1Cost(), 4, -2.0, 2.0, **TINY)
    with pytest.raises(Interrupt):
        tiny_agent(log=log, checkpoint=ckpt, planner=planner).train(3 * EPISODE)   # dies 10 steps into its third iteration
    resumed = tiny_agent(log=log, checkpoint=ckpt)        # a fresh process: a new agent, the same files
    rows = resumed.train(3 * EPISODE)
    straight = tiny_agent()
    expected = straight.train(3 * EPISODE)
    assert without_time(rows) == without_time(expected)
    assert torch.equal(resumed.data.u, straight.data.u)
    one, two = resumed.planner.state_dict(), straight.planner.state_dict()
    assert one["updates"] == two["updates"] == 3 and one["seen"] == two["seen"] == 3 * EPISODE
    for name, state in one["networks"].items():
        if name.endswith("optimizer"):
            for key, slot in state["state"].items():
                for k, v in slot.items():
                    assert torch.equal(v, two["networks"][name]["state"][key][k]), (name, key, k)
        else:
            for k, v in state.items():
                assert torch.equal(v, two["networks"][name][k]), (name, k)
    torch.testing.assert_close(one["plan"], two["plan"], rtol=0, atol=0)


def test_a_state_dict_restores_a_planner_that_acts_alike():
    planner = tiny_planner()
    planner.update(pushed_model(), random_data(), {"generator": torch.Generator().manual_seed(0)})
    planner.reset(2, torch.Generator().manual_seed(1))
    obs = torch.randn(2, 3, generator=torch.Generator().manual_seed(2))
    planner.act(obs)
    state = planner.state_dict()
    other = tiny_planner()
    other.load_state_dict(state)
    other.update(pushed_model(), random_data(), {"history": None})   # the agent's rebuild: nothing new to learn
    assert other.stats == planner.stats and other.updates == 1
    for p in (planner, other):
        p.reset(2, torch.Generator().manual_seed(7))
    torch.testing.assert_close(other.act(obs), planner.act(obs), rtol=0, atol=0)
    with pytest.raises(ValueError, match="ValueGuidedMPPI.load_state_dict: the state dict is not a checkpoint"):
        other.load_state_dict({"dims": (3, 1)})
    wide = ValueGuidedMPPI(PendulumV1Cost(), 4, -2.0, 2.0, **{**TINY, "hidden": (8,)})
    with pytest.raises(ValueError, match="another configuration: its policy does not fit"):
        wide.load_state_dict(state)


@pytest.mark.parametrize("option, value, message", [
    ("horizon", 0, "horizon must be an int >= 1"),
    ("samples", 1.5, "samples must be an int >= 1"),
    ("policy_samples", -1, "policy_samples must be an int >= 0"),
    ("iterations", 0, "iterations must be an int >= 1"),
    ("first_iterations", 0, "first_iterations must be an int >= 1"),
    ("noise_std", -1.0, "noise_std must be a positive finite number"),
    ("noise_std", "x", "noise_std must be a positive finite number, a float tensor"),
    ("temperature", 0.0, "temperature must be a positive finite number"),
    ("gamma", 0.0, r"gamma must be a number in \(0, 1\]"),
    ("lam", 1.5, r"lam must be a number in \[0, 1\]"),
    ("tau", 2.0, r"tau must be a number in \(0, 1\]"),
    ("reward_scale", -1.0, "reward_scale must be a positive finite number"),
    ("rollout_horizon", 0, "rollout_horizon must be an int >= 1"),
    ("gradient_steps", 0, "gradient_steps must be an int >= 1"),
    ("batch_size", 0, "batch_size must be an int >= 1"),
    ("actor_lr", 0.0, "actor_lr must be a positive finite number"),
    ("grad_norm", 0.0, "grad_norm must be a positive finite number"),
    ("hidden", (), "hidden must be a non-empty tuple"),
    ("init_std", 0.0, "init_std must be a positive finite number"),
    ("planning_model", "random", "planning_model must be 'members' or 'mean'"),
    ("use_elites", 1, "use_elites must be a bool"),
    ("seed", -1, "seed must be an int >= 0"),
    ("u_lower", [0.0], "u_lower must be a finite number or a float tensor"),
    ("u_upper", -3.0, "u_lower must not exceed u_upper"),
    ("cost", "pendulum", "cost must be a trajopt.Cost"),
])
def test_bad_options_are_refused_by_name(option, value, message):
    args = dict(cost=PendulumV1Cost(), horizon=4, u_lower=-2.0, u_upper=2.0)
    options = {**TINY}
    (args if option in args else options)[option] = value
    with pytest.raises((TypeError, ValueError), match=f"ValueGuidedMPPI: {message}"):
        ValueGuidedMPPI(args.pop("cost"), args.pop("horizon"), args.pop("u_lower"), args.pop("u_upper"), **options)


def test_bad_calls_are_refused_by_name():
    planner = tiny_planner()
    with pytest.raises(RuntimeError, match="ValueGuidedMPPI.act: no model yet"):
        planner.act(torch.zeros(1, 3))
    model, data = pushed_model(), random_data()
    with pytest.raises(TypeError, match="ValueGuidedMPPI.update: model must be an ensemble"):
        planner.update(torch.nn.Linear(3, 3), data)
    with pytest.raises(TypeError, match="ValueGuidedMPPI.update: data must be a dynamics.learned.Transitions"):
        planner.update(model, (data.x, data.u, data.x_next))
    with pytest.raises(TypeError, match=r"ValueGuidedMPPI.update: info\['generator'\] must be a torch.Generator"):
        planner.update(model, data, {"generator": 0})
    with pytest.raises(ValueError, match=r"ValueGuidedMPPI.update: info\['elites'\] must be None or a non-empty"):
        planner.update(model, data, {"elites": [5]})
    with pytest.raises(ValueError, match="ValueGuidedMPPI.update: u_lower has shape"):
        ValueGuidedMPPI(PendulumV1Cost(), 4, torch.zeros(2), torch.ones(2), **TINY).update(model, data)
    planner.update(model, data, {"generator": torch.Generator().manual_seed(0)})
    with pytest.raises(ValueError, match="ValueGuidedMPPI.update: data holds 10 transitions, fewer than the 60"):
        planner.update(model, data[:10])
    with pytest.raises(ValueError, match=r"ValueGuidedMPPI.act: obs has shape \(2, 4\); expected \(..., n\)"):
        planner.act(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="ValueGuidedMPPI.act: obs is torch.float64"):
        planner.act(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="ValueGuidedMPPI.act: obs contains NaN or Inf"):
        planner.act(torch.full((2, 3), float("nan")))
