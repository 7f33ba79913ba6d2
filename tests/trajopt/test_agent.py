"""The model-based agent loop on Gymnasium Pendulum-v1 and the PETS planner, on tiny budgets."""
import math

import pytest
import torch

from dynamics.learned import ProbabilisticEnsemble, Transitions, collect_from_env
from tests.skips import GYMNASIUM
from trajopt.rl.agent import (PETS, ModelBasedAgent, ParticleCost, ParticleDynamics, PendulumV1Cost, Planner,
                              plot_learning_curves, read_log)

gymnasium = pytest.importorskip("gymnasium", reason=GYMNASIUM)

EPISODE = 40                                 # episodes cut to 40 steps: every iteration adds 40 transitions


def tiny_agent(seed=0, log=None, checkpoint=None, planner=None, **kwargs):
    torch.manual_seed(seed)
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=(16,))
    planner = planner or PETS(PendulumV1Cost(), 4, -2.0, 2.0, particles=2, samples=8, iterations=1,
                              first_iterations=2, elites=2)
    return ModelBasedAgent("Pendulum-v1", model, planner, seed=seed, max_episode_steps=EPISODE,
                           fit_options=dict(epochs=3, batch_size=32), log=log, checkpoint=checkpoint,
                           progress=False, **kwargs)


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_the_loop_counts_steps_and_logs_a_row_per_iteration(tmp_path):
    agent = tiny_agent(log=str(tmp_path / "log.csv"), elite_members=1)
    rows = agent.train(3 * EPISODE)
    assert [r["env_steps"] for r in rows] == [EPISODE, 2 * EPISODE, 3 * EPISODE]
    assert [r["transitions"] for r in rows] == [EPISODE, 2 * EPISODE, 3 * EPISODE]
    assert [r["phase"] for r in rows] == ["random", "planner", "planner"]
    assert len(agent.data) == agent.env_steps == 3 * EPISODE
    # the data chain: each transition's next observation is the following one's observation within an episode
    torch.testing.assert_close(agent.data.x[1:EPISODE], agent.data.x_next[:EPISODE - 1])
    assert all(r["return_mean"] < 0 and r["fit_epochs"] >= 1 and len(r["elite_members"].split()) == 1 for r in rows)
    assert agent.planner.dynamics.member_ids == [int(rows[-1]["elite_members"])]
    logged = read_log(str(tmp_path / "log.csv"))
    assert len(logged) == 3
    assert [row["env_steps"] for row in logged] == [EPISODE, 2 * EPISODE, 3 * EPISODE]
    assert logged[-1]["return_mean"] == pytest.approx(rows[-1]["return_mean"])
    assert all(0 <= a <= b for a, b in zip([row["time"] for row in logged], [row["time"] for row in logged][1:]))


def test_parallel_episodes_are_planned_as_one_batch():
    agent = tiny_agent(envs=3)
    rows = agent.train(2 * 3 * EPISODE)
    assert [r["env_steps"] for r in rows] == [3 * EPISODE, 6 * EPISODE]
    assert rows[-1]["episodes"] == 3 and rows[-1]["return_min"] <= rows[-1]["return_max"]
    returns = agent.evaluate(4, seed=7, progress=False)
    assert returns.shape == (4,) and (returns < 0).all()
    assert agent.env_steps == 6 * EPISODE                               # evaluation is not training


def test_the_same_seed_gives_the_same_run():
    a, b, c = tiny_agent(seed=3), tiny_agent(seed=3), tiny_agent(seed=4)
    ra, rb, rc = (without_time(x.train(3 * EPISODE)) for x in (a, b, c))
    assert ra == rb
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(a.data.x, b.data.x) and torch.equal(a.data.u, b.data.u)
    assert ra != rc


class Interrupt(Exception):
    pass


def killed(planner_class, after, *args, **kwargs):
    """A ``planner_class(*args, **kwargs)`` that raises :class:`Interrupt` at its ``after + 1``-th action: a run
    killed in the middle of an iteration (shared by the planners' kill-and-resume tests)."""
    class Killed(planner_class):
        def act(self, obs):
            self.after -= 1
            if self.after < 0:
                raise Interrupt
            return super().act(obs)

    planner = Killed(*args, **kwargs)
    planner.after = after
    return planner


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    ckpt, log = str(tmp_path / "run.pt"), str(tmp_path / "run.csv")
    planner = killed(PETS, EPISODE + 15, PendulumV1Cost(), 4, -2.0, 2.0, particles=2, samples=8, iterations=1,
                     first_iterations=2, elites=2)
    with pytest.raises(Interrupt):
        tiny_agent(log=log, checkpoint=ckpt, planner=planner).train(4 * EPISODE)   # dies 15 steps into its third iteration
    assert len(read_log(log)) == 2
    resumed = tiny_agent(log=log, checkpoint=ckpt)   # a fresh process: a new agent, the same files
    rows = resumed.train(4 * EPISODE)
    straight = tiny_agent()
    expected = straight.train(4 * EPISODE)
    assert without_time(rows) == without_time(expected)
    assert [r["env_steps"] for r in read_log(log)] == [r["env_steps"] for r in expected]
    for (k, va), vb in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert torch.equal(resumed.data.x_next, straight.data.x_next)
    assert rows[-1]["time"] >= rows[1]["time"]                          # the clock carries across the resume


def test_the_held_out_error_falls_as_data_grows():
    held_out = collect_from_env(gymnasium.make("Pendulum-v1"), 400, seed=123)
    held_out = Transitions(*(t.float() for t in (held_out.x, held_out.u, held_out.x_next)))

    def error(agent):
        with torch.no_grad():
            mean, _ = agent.model.predict(held_out.x, held_out.u)
        return float((mean - held_out.x_next).square().sum(-1).mean())

    torch.manual_seed(0)
    model = ProbabilisticEnsemble(3, 1, members=2, hidden=(32, 32))
    class Collects(Planner):               # the random collection phase covers the whole run: never asked to act
        def act(self, obs):
            raise AssertionError("the planner acted during the random phase")

    agent = ModelBasedAgent("Pendulum-v1", model, Collects(), seed=1, random_iterations=100, max_episode_steps=EPISODE,
                            fit_options=dict(epochs=25, batch_size=32, lr=3e-3, patience=25), progress=False)
    agent.train(EPISODE)
    small = error(agent)
    agent.train(8 * EPISODE)
    large = error(agent)
    assert large < 0.5 * small


def test_particles_follow_their_members_for_ts1_and_are_shuffled_for_ts_infinity():
    torch.manual_seed(0)
    ens = ProbabilisticEnsemble(3, 1, members=3, hidden=(8,))
    x, u = torch.randn(4, 3), torch.randn(4, 1)
    with torch.no_grad():
        means, _ = ens.member_outputs(x, u)
        members = x + means * ens.out_std + ens.out_mean                  # (3, 4, 3)
        stacked = x.repeat(1, 6)                                            # 6 particles per row, all at x
        ts1 = ParticleDynamics(ens, 6, "random", sample=False)(stacked, u).view(4, 6, 3)
        for p in range(6):
            torch.testing.assert_close(ts1[:, p], members[p % 3])
        # TS-infinity: particles (distinct here) are shuffled, then position q moves by member q % 3, so a
        # particle's member changes from step to step while every member still moves two particles of each row
        distinct = torch.randn(4, 6, 3)
        pred, _ = ens.member_outputs(distinct.reshape(24, 3), u.repeat_interleave(6, 0))
        pred = (distinct.reshape(24, 3) + pred * ens.out_std + ens.out_mean).view(3, 4, 6, 3)  # member, row, particle
        tsinf = ParticleDynamics(ens, 6, "random_every_step", sample=False)
        tsinf.generator = torch.Generator().manual_seed(0)
        out = tsinf(distinct.reshape(4, 18), u).view(4, 6, 3)
        sources = [[int((pred[q % 3, r] - out[r, q]).abs().sum(-1).argmin()) for q in range(6)] for r in range(4)]
        for r in range(4):
            assert sorted(sources[r]) == list(range(6))                    # a permutation of the particles
            for q in range(6):
                torch.testing.assert_close(out[r, q], pred[q % 3, r, sources[r][q]])
        assert any(sources[r] != list(range(6)) for r in range(4))        # not TS-1's fixed pairing
        elite = ParticleDynamics(ens, 2, "random", sample=False, members=[2])(x.repeat(1, 2), u).view(4, 2, 3)
        torch.testing.assert_close(elite[:, 1], members[2])
    with pytest.raises(ValueError, match="particles"):
        ParticleDynamics(ens, 4, "random")


def test_a_candidate_costs_the_mean_over_its_particles():
    cost = PendulumV1Cost()
    x, u = torch.randn(5, 2, 3), torch.randn(5, 1)
    averaged = ParticleCost(cost, 2, 3).stage(x.reshape(5, 6), u)
    torch.testing.assert_close(averaged, (cost.stage(x[:, 0], u) + cost.stage(x[:, 1], u)) / 2)
    # the cost is Pendulum-v1's reward negated: upright at rest with no torque costs nothing, hanging pi^2
    top, bottom = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0]])
    assert float(cost.stage(top, torch.zeros(1, 1))) == 0.0
    assert float(cost.stage(bottom, torch.zeros(1, 1))) == pytest.approx(math.pi ** 2)


def test_ensemble_ts_infinity_draws_fresh_members_at_every_call():
    ens = ProbabilisticEnsemble(2, 1, members=4, hidden=(8,), propagation="random_every_step")
    x, u = torch.randn(64, 2), torch.randn(64, 1)
    ens.resample_members(64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        means, _ = ens.member_outputs(x, u)
        members = x + means * ens.out_std + ens.out_mean
        first = ens(x, u)
        torch.testing.assert_close(first, members[ens._assignment, torch.arange(64)])
        second = ens(x, u)
        torch.testing.assert_close(second, members[ens._assignment, torch.arange(64)])
    assert not torch.equal(first, second)


def test_pets_rejects_bad_options_naming_them():
    with pytest.raises(ValueError, match="solver"):
        PETS(PendulumV1Cost(), 5, -2.0, 2.0, solver="ilqr")
    with pytest.raises(ValueError, match="horizon"):
        PETS(PendulumV1Cost(), 0, -2.0, 2.0)
    with pytest.raises(RuntimeError, match="update"):
        PETS(PendulumV1Cost(), 5, -2.0, 2.0).act(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="planner"):
        ModelBasedAgent("Pendulum-v1", ProbabilisticEnsemble(3, 1), object())


def test_learning_curves_are_plotted(tmp_path):
    pytest.importorskip("matplotlib")
    agent = tiny_agent(log=str(tmp_path / "log.csv"))
    agent.train(2 * EPISODE)
    ax = plot_learning_curves({"csv": str(tmp_path / "log.csv"), "agent": agent}, str(tmp_path / "curve.png"),
                              target=-160)
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert len(ax.lines) == 3
