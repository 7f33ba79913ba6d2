"""MBPO (trajopt.rl.MBPO): branched rollouts, the rollout-length schedule, mixed minibatches, termination, seeding,
resuming and its errors, on tiny budgets."""
import importlib.util
import sys

import pytest
import torch
from torch.nn import functional as F

from dynamics.learned import ProbabilisticEnsemble, Transitions
from tests.skips import GYMNASIUM
from tests.trajopt.test_agent import Interrupt, killed
from trajopt.rl import MBPO, ModelBasedAgent, PendulumV1Cost
from trajopt.rl.agent import read_log

gymnasium = pytest.importorskip("gymnasium", reason=GYMNASIUM)
SB3 = "needs stable-baselines3: pip install stable-baselines3 (the rl extra: pip install -e '.[rl]')"
needs_sb3 = pytest.mark.skipif(importlib.util.find_spec("stable_baselines3") is None, reason=SB3)

EPISODE = 30                                   # agent episodes cut to 30 steps


@pytest.fixture(autouse=True)
def one_thread():
    """SAC's small networks run fastest on one thread (and a shared machine's other jobs keep theirs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_mbpo(**options):
    settings = dict(rollout_batch=64, updates_per_step=1, batch_size=32, net_arch=(16, 16))
    return MBPO(PendulumV1Cost(), -2.0, 2.0, **{**settings, **options})


def tiny_agent(seed=0, planner=None, log=None, checkpoint=None):
    torch.manual_seed(seed)
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=(16,))
    planner = planner or tiny_mbpo(rollout_schedule=(0, 2, 1, 3), retain_epochs=2)
    return ModelBasedAgent("Pendulum-v1", model, planner, seed=seed, max_episode_steps=EPISODE,
                           fit_options=dict(epochs=3, batch_size=32), log=log, checkpoint=checkpoint, progress=False)


def ensemble_and_data(members=3, rows=200):
    """An untrained ensemble with fitted (non-trivial) normalization, and transitions of Pendulum-like scale."""
    torch.manual_seed(0)
    model = ProbabilisticEnsemble(3, 1, members=members, hidden=(16,))
    x = torch.randn(rows, 3)
    data = Transitions(x, torch.rand(rows, 1) * 4 - 2, x + 0.1 * torch.randn(rows, 3))
    model.fit_normalization(data)
    return model, data


def info(seed=0, **extra):
    return {"generator": torch.Generator().manual_seed(seed), **extra}


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def without_seconds(stats):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in stats]


def sac_state(mbpo):
    return mbpo.state_dict()["sac"]


def assert_same_state(sa, sb):
    """Two MBPO state dicts hold the same SAC weights, optimizer states, model buffer and stats."""
    for k, v in sa["sac"]["policy"].items():
        assert torch.equal(v, sb["sac"]["policy"][k]), k
    for name in ("actor_optimizer", "critic_optimizer", "ent_coef_optimizer"):
        for p, state in sa["sac"][name]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, sb["sac"][name]["state"][p][k]), (name, p, k)
    assert torch.equal(sa["sac"]["log_ent_coef"], sb["sac"]["log_ent_coef"])
    assert sa["sac"]["n_updates"] == sb["sac"]["n_updates"]
    for k, v in sa["model_buffer"].items():
        assert torch.equal(v, sb["model_buffer"][k]), k
    assert without_seconds(sa["stats"]) == without_seconds(sb["stats"])


@needs_sb3
@torch.no_grad()
def test_rollouts_start_at_real_states_and_follow_the_members_and_the_known_reward():
    model, data = ensemble_and_data(members=3)
    mbpo = tiny_mbpo(rollout_batch=50, rollout_schedule=1)
    mbpo.update(model, data, info(1, elites=[0, 2]))
    buffer = mbpo.model_buffer
    assert len(buffer["obs"]) == 50 and mbpo.members == [0, 2]
    # k = 1: every model transition starts at a real observation
    assert (buffer["obs"][:, None, :] == data.x[None]).all(-1).any(1).all()
    # a hand loop over the rows, one at a time, through the members' own networks, with the same draws
    B, T = 6, 3
    roll = mbpo.rollout(data.x[:B], T, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x = data.x[:B].clone()
    actor, cost = mbpo.sac.actor, PendulumV1Cost()
    for t in range(T):
        policy_noise = torch.randn(B, 1, generator=g)
        member = torch.randint(2, (B,), generator=g)
        noise = torch.randn(B, 3, generator=g)
        nxt = torch.empty_like(x)
        for b in range(B):
            mean, log_std, _ = actor.get_action_dist_params(x[b:b + 1])
            u = -2.0 + (torch.tanh(mean + log_std.exp() * policy_noise[b]) + 1) * 2.0       # [-1, 1] -> [-2, 2]
            out = model.nets[[0, 2][member[b]]]((torch.cat([x[b], u[0]]) - model.in_mean) / model.in_std)
            mu, logvar = out[:3], out[3:]
            logvar = model.max_logvar - F.softplus(model.max_logvar - logvar)
            logvar = model.min_logvar + F.softplus(logvar - model.min_logvar)
            nxt[b] = x[b] + (mu + noise[b] * (0.5 * logvar).exp()) * model.out_std + model.out_mean
            torch.testing.assert_close(roll["obs"][t, b], x[b])
            torch.testing.assert_close(roll["u"][t, b], u[0])
            torch.testing.assert_close(roll["reward"][t, b], -cost.stage(x[b], u[0]))
        torch.testing.assert_close(roll["next_obs"][t], nxt)
        x = nxt
    assert roll["kept"].all() and not roll["done"].any()
    assert (roll["u"].abs() <= 2.0).all() and torch.equal(roll["obs"][1:], roll["next_obs"][:-1])


@needs_sb3
def test_the_rollout_length_follows_the_linear_schedule_and_old_rollouts_age_out():
    mbpo = tiny_mbpo(rollout_schedule=(2, 6, 1, 5))
    assert [mbpo.rollout_length(e) for e in range(9)] == [1, 1, 1, 2, 3, 4, 5, 5, 5]
    assert [tiny_mbpo(rollout_schedule=3).rollout_length(e) for e in (0, 50)] == [3, 3]
    assert [tiny_mbpo(rollout_schedule=(4, 4, 1, 9)).rollout_length(e) for e in (4, 5)] == [1, 9]
    model, data = ensemble_and_data()
    mbpo = tiny_mbpo(rollout_batch=20, rollout_schedule=(0, 2, 1, 3), retain_epochs=2, updates_per_step=2)
    born, n_updates = [], [0]
    for i in range(5):
        mbpo.update(model, data[:100 + 10 * i], info(i))
        born.append(torch.bincount(mbpo.model_buffer["born"]).tolist())
        n_updates.append(mbpo.sac._n_updates)
    assert [s["k"] for s in mbpo.stats] == [1, 2, 3, 3, 3]
    # capacity retain_epochs x rollout_batch x k, first in first out: 20 k rows per update
    assert born == [[20], [20, 40], [20, 40, 60], [0, 0, 60, 60], [0, 0, 0, 60, 60]]
    # updates_per_step x the new real transitions: 2 x 100, then 2 x 10 per update
    assert [b - a for a, b in zip(n_updates, n_updates[1:])] == [200, 20, 20, 20, 20]
    # no new transitions (the agent rebuilding from a checkpoint): nothing rolled out, nothing learned
    before = mbpo.state_dict()
    mbpo.update(model, data[:140], {"elites": None, "history": None})
    assert_same_state(mbpo.state_dict(), before)


@needs_sb3
@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
def test_minibatches_hold_the_real_ratio_of_real_transitions(ratio):
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.type_aliases import ReplayBufferSamples
    model, data = ensemble_and_data()
    mbpo = tiny_mbpo(real_ratio=ratio, rollout_batch=50)
    mbpo.update(model, data, info(2))
    assert isinstance(mbpo.sac.replay_buffer, ReplayBuffer)
    batch = mbpo.sac.replay_buffer.sample(64)
    assert isinstance(batch, ReplayBufferSamples) and batch.rewards.shape == batch.dones.shape == (64, 1)
    rows = torch.cat([batch.observations, batch.next_observations], -1)
    real = (rows[:, None] == torch.cat([data.x, data.x_next], -1)[None]).all(-1).any(1)
    buffer = mbpo.model_buffer
    model_rows = (rows[:, None] == torch.cat([buffer["obs"], buffer["next_obs"]], -1)[None]).all(-1).any(1)
    n_real = int(64 * ratio)
    assert real[:n_real].all() and not real[n_real:].any() and model_rows[n_real:].all()
    # real transitions carry the known reward and SAC's squashed actions
    cost = PendulumV1Cost()
    first = (batch.observations[:n_real, None] == data.x[None]).all(-1).float().argmax(1)
    torch.testing.assert_close(batch.rewards[:n_real, 0], -cost.stage(data.x[first], data.u[first]))
    torch.testing.assert_close(batch.actions[:n_real], data.u[first] / 2)


@needs_sb3
def test_termination_stops_rows_and_marks_model_and_real_transitions_done():
    model, data = ensemble_and_data()

    def terminate(x_next):
        return x_next[:, 0] > 0.5

    mbpo = tiny_mbpo(terminate=terminate, rollout_batch=40, rollout_schedule=4)
    mbpo.update(model, data, info(3))
    roll = mbpo.rollout(data.x[:40], 4, torch.Generator().manual_seed(3))
    done, kept = roll["done"], roll["kept"]
    assert done.any() and (~kept).any()                      # the test exercises termination
    assert kept[0].all() and torch.equal(kept[1:], kept[:-1] & ~done[:-1])
    assert torch.equal(done, roll["next_obs"][..., 0] > 0.5)
    buffer = mbpo.model_buffer
    assert len(buffer["obs"]) < 4 * 40                       # terminated rows stopped adding transitions
    assert torch.equal(buffer["done"].bool(), terminate(buffer["next_obs"]))
    assert torch.equal(mbpo.mixture.real["done"].bool(), terminate(data.x_next))
    bad = tiny_mbpo(terminate=lambda x: x[:, 0])             # not a bool (B,)
    with pytest.raises(ValueError, match="terminate"):
        bad.update(model, data, info())


@needs_sb3
def test_the_same_seed_gives_the_same_run_and_evaluation_uses_the_mean_action():
    a, b, c = tiny_agent(seed=3), tiny_agent(seed=3), tiny_agent(seed=4)
    ra, rb, rc = (without_time(agent.train(3 * EPISODE)) for agent in (a, b, c))
    assert ra == rb and ra != rc
    assert_same_state(a.planner.state_dict(), b.planner.state_dict())
    assert not torch.equal(sac_state(a.planner)["policy"]["actor.mu.weight"],
                           sac_state(c.planner)["policy"]["actor.mu.weight"])
    assert [s["k"] for s in a.planner.stats] == [1, 2, 3]
    # evaluation: the policy's mean action, the same whatever the draws; the training flag is restored
    ea, eb = a.evaluate(2, seed=5, progress=False), a.evaluate(2, seed=5, progress=False)
    assert (ea == eb).all() and not a.planner.evaluating
    obs = a.data.x[:4]
    mbpo = a.planner
    mbpo.reset(4, torch.Generator().manual_seed(0))
    mbpo.evaluating = True
    mean = mbpo.act(obs)
    mbpo.reset(4, torch.Generator().manual_seed(1))
    assert torch.equal(mbpo.act(obs), mean)
    with torch.no_grad():
        mu, _, _ = mbpo.sac.actor.get_action_dist_params(obs)
    torch.testing.assert_close(mean, 2.0 * torch.tanh(mu))
    mbpo.evaluating = False
    draws = [mbpo.act(obs) for _ in range(2)]
    assert not torch.equal(draws[0], draws[1]) and all((d.abs() <= 2.0).all() for d in draws)
    # an update's draws come from the agent's generator (info["generator"]): another one, other rollouts and weights
    model, data = ensemble_and_data()
    x, y, z = tiny_mbpo(), tiny_mbpo(), tiny_mbpo()
    for mbpo, seed in ((x, 1), (y, 1), (z, 2)):
        mbpo.update(model, data, info(seed))
    assert torch.equal(x.model_buffer["next_obs"], y.model_buffer["next_obs"])
    assert not torch.equal(x.model_buffer["next_obs"], z.model_buffer["next_obs"])
    assert not torch.equal(sac_state(x)["policy"]["actor.mu.weight"], sac_state(z)["policy"]["actor.mu.weight"])
    # an update leaves torch's global generator as it found it (SAC's own draws run under fork_rng)
    fresh = tiny_mbpo()
    torch.manual_seed(123)
    fresh.update(a.model, a.data, info(9))
    drawn = torch.rand(3)
    torch.manual_seed(123)
    assert fresh.stats and torch.equal(drawn, torch.rand(3))


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    ckpt, log = str(tmp_path / "run.pt"), str(tmp_path / "run.csv")
    planner = killed(MBPO, 2 * EPISODE + 10, PendulumV1Cost(), -2.0, 2.0, rollout_batch=64, updates_per_step=1,
                     batch_size=32, net_arch=(16, 16), rollout_schedule=(0, 2, 1, 3), retain_epochs=2)
    with pytest.raises(Interrupt):
        tiny_agent(log=log, checkpoint=ckpt, planner=planner).train(5 * EPISODE)   # dies 10 steps into its fourth iteration
    assert len(read_log(log)) == 3
    resumed = tiny_agent(log=log, checkpoint=ckpt)  # a fresh process: a new agent and planner, the same files
    rows = resumed.train(5 * EPISODE)
    straight = tiny_agent()
    expected = straight.train(5 * EPISODE)
    assert without_time(rows) == without_time(expected)
    assert_same_state(resumed.planner.state_dict(), straight.planner.state_dict())
    for (k, va), vb in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(va, vb), k
    obs = straight.data.x[:5]
    for agent in (resumed, straight):
        agent.planner.evaluating = True
    assert torch.equal(resumed.planner.act(obs), straight.planner.act(obs))


@needs_sb3
def test_bad_arguments_raise_errors_naming_them():
    cost = PendulumV1Cost()
    with pytest.raises(TypeError, match="cost"):
        MBPO(object(), -2.0, 2.0)
    with pytest.raises(TypeError, match="u_lower"):
        MBPO(cost, [-2.0], 2.0)
    with pytest.raises(ValueError, match="u_upper"):
        MBPO(cost, 2.0, -2.0)
    with pytest.raises(TypeError, match="terminate"):
        MBPO(cost, -2.0, 2.0, terminate=3)
    bad = dict(rollout_schedule=(3, 1, 1, 2), real_ratio=1.5, net_arch=(), ent_coef="sometimes",
               target_entropy="low", updates_per_step=0, rollout_batch=0, retain_epochs=-1, gamma=0.0,
               learning_rate=-1.0, batch_size=2.5, use_elites=1, seed=-1)
    for name, value in bad.items():
        with pytest.raises((TypeError, ValueError), match=name):
            MBPO(cost, -2.0, 2.0, **{name: value})
    with pytest.raises(ValueError, match="rollout_schedule"):
        MBPO(cost, -2.0, 2.0, rollout_schedule=(0, 1, 1))
    with pytest.raises(ValueError, match="sac_options"):
        MBPO(cost, -2.0, 2.0, sac_options={"gamma": 0.9})
    with pytest.raises(RuntimeError, match="update"):
        MBPO(cost, -2.0, 2.0).act(torch.zeros(1, 3))
    model, data = ensemble_and_data()
    mbpo = tiny_mbpo()
    with pytest.raises(TypeError, match="data"):
        mbpo.update(model, (data.x, data.u, data.x_next))
    with pytest.raises(TypeError, match="model"):
        mbpo.update(object(), data)
    with pytest.raises(ValueError, match="u_lower"):
        MBPO(cost, -torch.ones(2), torch.ones(2)).update(model, data)
    with pytest.raises(ValueError, match="elites"):
        mbpo.update(model, data, {"elites": [7]})
    mbpo.update(model, data, info())
    with pytest.raises(ValueError, match="data"):
        mbpo.update(model, data[:50], info())               # data only grows
    with pytest.raises(ValueError, match="obs"):
        mbpo.act(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="x0"):
        mbpo.rollout(torch.zeros(2, 4), 1)
    other = tiny_mbpo(net_arch=(8,))
    with pytest.raises(ValueError, match="sac policy"):
        other.load_state_dict(mbpo.state_dict())
    with pytest.raises(ValueError, match="lacks"):
        other.load_state_dict({"sac": None})


def test_a_missing_stable_baselines3_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)       # import stable_baselines3 -> ImportError
    with pytest.raises(ImportError, match="pip install stable-baselines3"):
        MBPO(PendulumV1Cost(), -2.0, 2.0)
