import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import dynamics
import trajopt
from trajopt.problems import reference as problems
from trajopt.rl import SHAC, DiffEnv, GaussianPolicy, LearnedCost, MPCPolicy
from trajopt.rl import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pendulum_env(num_envs=4, episode_length=5, shard=None, dtype=torch.float64, **options):
    """P2's pendulum and cost (problems.py convention: no 1/2) with gym-like random starts."""
    pd = problems.PENDULUM
    model = dynamics.Pendulum().discretize(pd["dt"], "semi_implicit_euler")
    Q, R = torch.tensor(pd["Q"], dtype=dtype), torch.tensor([[pd["R"]]], dtype=dtype)
    cost = trajopt.QuadraticCost.from_weights(2 * Q, 2 * R)

    def reset(count, generator):
        lo = torch.tensor([-math.pi, -1.0], dtype=dtype)
        return lo + 2 * (-lo) * torch.rand(count, 2, generator=generator, dtype=dtype)

    return DiffEnv(model, cost, reset=reset, episode_length=episode_length, num_envs=num_envs, u_lower=-pd["u_max"],
                   u_upper=pd["u_max"], shard=shard, **options)


def small_shac(env, **options):
    defaults = dict(horizon=3, epochs=6, hidden=(8,), critic_iterations=2, critic_minibatches=3, progress=False,
                    seed=3, actor_lr=1e-2, critic_lr=1e-2)
    defaults.update(options)
    return SHAC(env, **defaults)


def flat(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def test_diffenv_episode_costs_equal_problems_trajectory_cost():
    cp = problems.CARTPOLE
    model = dynamics.CartPole().discretize(cp["dt"], "euler")
    cost = trajopt.QuadraticCost.from_weights(2 * torch.tensor(cp["Q"]), 2 * torch.tensor([[cp["R"]]]))
    x0 = torch.tensor(problems.cartpole_x0(6, seed=1))
    U = 8 * torch.sin(torch.arange(cp["T"], dtype=torch.float64).view(1, -1, 1) / 3 + torch.arange(6).view(-1, 1, 1))
    env = DiffEnv(model, cost, reset=x0, episode_length=cp["T"], num_envs=6, u_lower=-cp["u_max"],
                  u_upper=cp["u_max"], finite_horizon=True)
    env.reset()
    env.state = x0.clone()
    total = torch.zeros(6, dtype=torch.float64)
    for t in range(cp["T"]):
        step = env.step(U[:, t])
        total -= step.reward
        assert bool(step.done.all()) == (t == cp["T"] - 1)
    assert bool(step.terminated.all()) and not bool(step.truncated.any())
    reference = [problems.trajectory_cost(problems.cartpole_step, x0[b].numpy(), U[b].numpy(), cp["Q"], cp["R"])
                 for b in range(6)]
    np.testing.assert_allclose(total.detach().numpy(), reference, rtol=1e-9)
    assert torch.equal(env.t, torch.zeros(6, dtype=torch.long))          # every copy was reset


def test_diffenv_gradient_stops_at_resets_and_reaches_final_observations():
    env = pendulum_env(num_envs=3, episode_length=2)
    generator = torch.Generator().manual_seed(0)
    env.reset(generator)
    u0 = torch.full((3, 1), 0.3, dtype=torch.float64, requires_grad=True)
    env.step(u0, generator)
    last = env.step(torch.zeros(3, 1, dtype=torch.float64), generator)
    assert bool(last.truncated.all()) and not bool(last.terminated.any())
    (into_final,) = torch.autograd.grad(last.final_obs.sum(), u0, retain_graph=True)
    assert float(into_final.abs().min()) > 0                     # the ended episode's state depends on u0
    (into_reset,) = torch.autograd.grad(last.obs.sum(), u0, allow_unused=True, materialize_grads=True)
    assert torch.equal(into_reset, torch.zeros_like(u0))        # the reset states do not
    assert not torch.equal(last.obs, last.final_obs)


def test_diffenv_time_feature_and_termination():
    env = pendulum_env(num_envs=2, episode_length=4, time_feature=True, terminate=lambda x: x[:, 1].abs() > 1e9)
    obs = env.reset(torch.Generator().manual_seed(0))
    assert obs.shape == (2, 3) and bool((obs[:, 2] == 0).all())
    step = env.step(torch.zeros(2, 1, dtype=torch.float64))
    assert torch.allclose(step.obs[:, 2], torch.full((2,), 0.25, dtype=torch.float64))
    env.terminate_fn = lambda x: torch.tensor([True, False])
    step = env.step(torch.zeros(2, 1, dtype=torch.float64))
    assert step.terminated.tolist() == [True, False] and env.t.tolist() == [0, 2]


def test_diffenv_rejects_bad_arguments():
    model = dynamics.Pendulum().discretize()
    cost = trajopt.QuadraticCost.from_weights(torch.eye(2), torch.eye(1))
    starts = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="exactly one of cost and reward"):
        DiffEnv(model, reset=starts, episode_length=3, num_envs=2)
    with pytest.raises(ValueError, match=r"reset as a tensor must have shape \(K, n\)"):
        DiffEnv(model, cost, reset=torch.zeros(3, 5), episode_length=3, num_envs=2)
    with pytest.raises(ValueError, match="episode_length"):
        DiffEnv(model, cost, reset=starts, episode_length=0, num_envs=2)
    with pytest.raises(ValueError, match="shard"):
        DiffEnv(model, cost, reset=starts, episode_length=3, num_envs=3, shard=(0, 2))
    bad = DiffEnv(model, reward=lambda x, u, x_next: x, reset=starts, episode_length=3, num_envs=2)
    bad.reset()
    with pytest.raises(ValueError, match=r"reward must return a tensor of shape \(B,\) = \(2,\)"):
        bad.step(torch.zeros(2, 1))
    env = DiffEnv(model, cost, reset=starts, episode_length=3, num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(2, 1))
    env.reset()
    with pytest.raises(ValueError, match=r"u has shape \(3, 1\); expected \(B, m\) = \(2, 1\)"):
        env.step(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="horizon"):
        SHAC(env, horizon=0)
    with pytest.raises(ValueError, match="u_lower and u_upper"):
        SHAC(env, progress=False)
    with pytest.raises(ValueError, match="lr_schedule"):
        small_shac(pendulum_env(), lr_schedule="step")


def test_shac_actor_gradient_matches_central_differences():
    """The actor loss of one window (with resets inside it and the target critic's value at its end)
    against central differences along random directions in parameter space, float64."""
    shac = small_shac(pendulum_env(num_envs=4, episode_length=4), horizon=6)
    shac.train(2)                      # a trained critic and normalizer, not the initial ones
    assert_actor_gradient_matches_central_differences(shac, seed=5)


def assert_actor_gradient_matches_central_differences(shac, seed, directions=3, eps=1e-6, rel=1e-6):
    """The actor loss's gradient along random directions in parameter space against central differences of
    the loss (each evaluated from the same saved state: same window, same noise), to ``rel``."""
    start = shac.state_dict()
    params = list(shac.actor.parameters())

    def loss_at(vector=None):
        shac.load_state_dict(start)
        if vector is not None:
            torch.nn.utils.vector_to_parameters(vector, params)
        return shac.actor_loss()[0]

    base = torch.nn.utils.parameters_to_vector(params).detach().clone()
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_at(), params)])
    generator = torch.Generator().manual_seed(seed)
    for _ in range(directions):
        d = torch.randn(base.shape, generator=generator, dtype=base.dtype)
        with torch.no_grad():
            fd = (loss_at(base + eps * d) - loss_at(base - eps * d)) / (2 * eps)
        assert float(grad @ d) == pytest.approx(float(fd), rel=rel, abs=1e-9)


def test_shac_is_deterministic_under_a_seed_and_depends_on_it():
    runs = [small_shac(pendulum_env(), seed=s) for s in (1, 1, 2)]
    for run in runs:
        run.train()
    assert torch.equal(flat(runs[0].actor), flat(runs[1].actor))
    assert torch.equal(flat(runs[0].critic), flat(runs[1].critic))
    assert not torch.equal(flat(runs[0].actor), flat(runs[2].actor))
    rows = runs[0].rows
    assert [r["epoch"] for r in rows] == list(range(1, 7)) and rows[-1]["env_steps"] == 6 * 3 * 4
    assert all(math.isfinite(r["actor_loss"]) and math.isfinite(r["critic_loss"]) for r in rows)


def test_shac_options_change_the_run():
    base = small_shac(pendulum_env())
    base.train()
    for option in (dict(obs_norm=False), dict(grad_norm=None), dict(lr_schedule="constant"), dict(gamma=0.9),
                   dict(lam=0.5), dict(target_alpha=0.9), dict(reward_scale=0.1)):
        other = small_shac(pendulum_env(), **option)
        other.train()
        assert not torch.equal(flat(other.actor), flat(base.actor)), option
    linear = [r["actor_lr"] for r in base.rows]
    assert linear[0] == pytest.approx(1e-2) and linear[-1] == pytest.approx(1e-2 / 6)


def test_shac_td_lambda_targets_match_the_definition():
    """TD(lambda) as the lambda-weighted mix of n-step returns (written out), one copy ending inside."""
    shac = small_shac(pendulum_env(num_envs=2), gamma=0.9, lam=0.7)
    r = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]], dtype=torch.float64)
    v = torch.tensor([[10.0, 20.0], [30.0, 5.0], [40.0, 60.0]], dtype=torch.float64)
    done = torch.tensor([[False, False], [False, True], [False, False]])
    targets = shac._targets(r, done, v)
    g, lam = 0.9, 0.7
    n1 = r[0, 0] + g * v[0, 0]
    n2 = r[0, 0] + g * r[1, 0] + g ** 2 * v[1, 0]
    n3 = r[0, 0] + g * r[1, 0] + g ** 2 * r[2, 0] + g ** 3 * v[2, 0]
    assert float(targets[0, 0]) == pytest.approx(float((1 - lam) * n1 + (1 - lam) * lam * n2 + lam ** 2 * n3))
    m1, m2 = r[0, 1] + g * v[0, 1], r[0, 1] + g * r[1, 1] + g ** 2 * v[1, 1]     # the episode ends at step 1
    assert float(targets[0, 1]) == pytest.approx(float((1 - lam) * m1 + lam * m2))
    assert float(targets[2, 1]) == pytest.approx(float(r[2, 1] + g * v[2, 1]))


def test_shac_resumed_from_a_checkpoint_continues_the_same_run(tmp_path):
    whole = small_shac(pendulum_env(), log=str(tmp_path / "whole.csv"))
    whole.train()
    first = small_shac(pendulum_env(), checkpoint=str(tmp_path / "ckpt.pt"), checkpoint_every=2,
                       log=str(tmp_path / "resumed.csv"))
    first.train(3)                                  # checkpoint at epoch 2, then one epoch that is lost
    resumed = small_shac(pendulum_env(), log=str(tmp_path / "resumed.csv"))
    resumed.load(str(tmp_path / "ckpt.pt"))
    assert resumed.epoch == 2
    resumed.train()
    for name in ("actor", "critic", "target_critic", "normalizer"):
        a, b = getattr(whole, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    read = lambda p: [line.split(",")[:2] + line.split(",")[3:] for line in open(p).read().splitlines()]  # no time
    assert read(tmp_path / "whole.csv") == read(tmp_path / "resumed.csv")


_KILLED_RUN = """
import sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
from test_rl import pendulum_env, small_shac
shac = small_shac(pendulum_env(), epochs=400, checkpoint={ckpt!r}, checkpoint_every=1)
print("started", flush=True)
shac.train()
"""


def test_checkpoint_writes_leave_no_temporary_file_behind(tmp_path):
    import subprocess
    import sys
    from trajopt.rl.logs import atomic_write
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = str(tmp_path / "run.pt")
    stale = tmp_path / f"run.pt.tmp{int(gone.stdout)}"            # what a writer killed mid-write leaves
    stale.write_bytes(b"half a checkpoint")
    shac = small_shac(pendulum_env(), epochs=1)
    shac.save(path)
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]

    def fails(tmp):
        open(tmp, "w").write("partial")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]      # the old checkpoint kept, no debris


def test_shac_killed_mid_training_resumes_to_the_uninterrupted_parameters(tmp_path):
    ckpt = str(tmp_path / "run.pt")
    script = _KILLED_RUN.format(root=ROOT, tests=os.path.dirname(os.path.abspath(__file__)), ckpt=ckpt)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if os.path.exists(ckpt) and torch.load(ckpt, weights_only=False)["epoch"] >= 5:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    resumed = small_shac(pendulum_env(), epochs=400)
    resumed.load(ckpt)
    stop = resumed.epoch + 3
    assert 5 <= resumed.epoch < 400
    resumed.train(stop)
    whole = small_shac(pendulum_env(), epochs=400)
    whole.train(stop)
    assert torch.equal(flat(whole.actor), flat(resumed.actor))
    assert torch.equal(flat(whole.critic), flat(resumed.critic))


def _distributed_worker(rank, world, init_file, out, epochs):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shac = small_shac(pendulum_env(num_envs=4, shard=(rank, world)), epochs=epochs)
        shac.train()
        if rank == 0:
            torch.save({"actor": flat(shac.actor), "critic": flat(shac.critic), "mean": shac.normalizer.mean}, out)
        torch.distributed.barrier()     # neither rank tears gloo down while the other still uses it (a SIGABRT)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_processes_with_half_the_envs_give_the_update_of_one(tmp_path):
    out = str(tmp_path / "rank0.pt")
    torch.multiprocessing.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), out, 3), nprocs=2)
    two = torch.load(out)
    one = small_shac(pendulum_env(num_envs=4), epochs=3)
    one.train()
    torch.testing.assert_close(two["actor"], flat(one.actor), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(two["critic"], flat(one.critic), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(two["mean"], one.normalizer.mean, rtol=1e-6, atol=1e-9)


def test_shac_float32_stays_finite_and_closed_loop_respects_bounds():
    shac = small_shac(pendulum_env(dtype=torch.float32))
    shac.train()
    assert all(math.isfinite(r["actor_loss"]) for r in shac.rows)
    X, U = shac.closed_loop(torch.tensor(problems.pendulum_x0(5), dtype=torch.float32), 7)
    assert X.shape == (5, 8, 2) and U.shape == (5, 7, 1) and X.dtype == torch.float32
    assert float(U.abs().max()) <= problems.PENDULUM["u_max"]


def test_gaussian_policy_squashes_into_the_bounds():
    policy = GaussianPolicy(3, 2, torch.tensor([-1.0, 0.0]), torch.tensor([1.0, 4.0]), dtype=torch.float64)
    obs = torch.randn(50, 3, dtype=torch.float64)
    u = policy(obs, 100 * torch.randn(50, 2, dtype=torch.float64))
    assert bool((u[:, 0] >= -1).all() & (u[:, 0] <= 1).all() & (u[:, 1] >= 0).all() & (u[:, 1] <= 4).all())
    with pytest.raises(ValueError, match="finite"):
        GaussianPolicy(3, 1, None, 1.0)


def test_mpc_policy_gradient_matches_central_differences_of_its_cost_weights():
    """A differentiable MPC layer (iLQR, implicit gradient) with learned weights inside a policy: d u / d log q
    against central differences of converged solves."""
    model = dynamics.Pendulum().discretize()
    cost = LearnedCost(torch.tensor([2.0, 0.2], dtype=torch.float64), torch.tensor([0.02], dtype=torch.float64))
    policy = MPCPolicy(model, cost, 10, -2.0, 2.0, max_iter=200, grad_tol=1e-12, tol=1e-14)
    x = torch.tensor([[0.6, -0.3], [-0.4, 0.8]], dtype=torch.float64)
    assert_policy_gradient_matches_central_differences(policy, cost.log_q, x)


def assert_policy_gradient_matches_central_differences(policy, weights, x, eps=1e-6):
    """d sum(u) / d weights of an MPC policy's first solve from ``x`` against central differences of fresh
    solves (the warm start reset before each); returns the gradient."""
    (grad,) = torch.autograd.grad(policy(x).sum(), weights)
    for i in range(len(weights)):
        with torch.no_grad():
            weights[i] += eps
            policy.reset()
            up = policy(x).sum()
            weights[i] -= 2 * eps
            policy.reset()
            down = policy(x).sum()
            weights[i] += eps
        assert float(grad[i]) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-8)
    return grad


def test_mpc_policy_with_mppi_has_the_gradient_of_its_weights_under_common_random_numbers():
    """A sampling MPC layer inside a policy: d u / d log q through MPPI's weights, against central differences
    with the same draws (a generator seeded alike at every solve). Nonzero at a start whose action is at the
    bound, where a box-constrained solve's derivative vanishes."""
    model = dynamics.Pendulum().discretize()
    cost = LearnedCost(torch.tensor([2.0, 0.2], dtype=torch.float64), torch.tensor([0.02], dtype=torch.float64))

    def solver(problem, **options):
        return trajopt.mppi(problem, samples=300, temperature=2.0, noise_std=1.0,
                            generator=torch.Generator().manual_seed(0), **options)
    policy = MPCPolicy(model, cost, 5, -2.0, 2.0, solver=solver, max_iter=1)
    x = torch.tensor([[0.6, -0.3], [2.8, 0.5]], dtype=torch.float64)
    grad = assert_policy_gradient_matches_central_differences(policy, cost.log_q, x)
    assert float(grad.abs().min()) > 1e-4
    ilqr_policy = MPCPolicy(model, cost, 5, -2.0, 2.0, max_iter=100)
    saturated = ilqr_policy(x[1:])
    assert float(saturated.detach().abs()) == pytest.approx(2.0)
    assert float(torch.autograd.grad(saturated.sum(), cost.log_q, allow_unused=True)[0].abs().max()) < 1e-10
    (mppi_grad,) = torch.autograd.grad(policy(x[1:]).sum(), cost.log_q)
    assert float(mppi_grad.abs().max()) > 1e-4


def test_train_in_learned_model_collects_real_transitions_and_trains_through_the_model():
    from dynamics.learned import MLPDynamics
    from trajopt.rl import train_in_learned_model
    from trajopt.rl.model_based import collect
    real = pendulum_env(num_envs=4, episode_length=5)
    generator = torch.Generator().manual_seed(0)
    data = collect(real, 7, generator)
    assert len(data) == 28
    torch.testing.assert_close(data.x_next, real.dynamics(data.x, data.u), rtol=0, atol=0)   # the real physics
    assert float(data.u.abs().max()) <= problems.PENDULUM["u_max"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLPDynamics(2, 1, hidden=(16,)).double()
    imagined = DiffEnv(model, real.cost, reset=real._reset, episode_length=5, num_envs=4, u_lower=-2.0, u_upper=2.0)
    shac = small_shac(imagined)
    before = flat(shac.actor)
    history = train_in_learned_model(shac, real, rounds=2, transitions_per_round=40, epochs_per_round=2,
                                     fit_options=dict(epochs=3), evaluate=lambda s: 1.0, progress=False)
    assert [h["real_transitions"] for h in history] == [40, 80] and [h["shac_epochs"] for h in history] == [2, 4]
    assert all(math.isfinite(h["model_val_loss"]) for h in history)
    assert not torch.equal(before, flat(shac.actor))
    assert all(p.requires_grad for p in model.parameters())      # handed back trainable
    with pytest.raises(TypeError, match="real must be"):
        train_in_learned_model(shac, model)


def test_shac_actor_gradient_through_the_pusher_contact_matches_central_differences():
    """The pusher task (trajopt.rl.tasks): the actor loss of a window in which the finger is pushing the
    box, so the gradient runs through the smoothed contact force and friction, against central differences."""
    t = tasks.task("pusher", 4, dtype=torch.float64)
    touching = torch.tensor([[-0.42, 0.0, -0.3, 0.0, 0.0, 0.0], [-0.3, -0.125, -0.3, 0.0, 0.0, 0.0],
                             [-0.415, 0.09, -0.3, 0.0, 0.2, 0.0]], dtype=torch.float64)
    env = DiffEnv(t["model"], t["cost"], reset=touching, episode_length=5, num_envs=4, u_lower=-1.0, u_upper=1.0,
                  observe=t["env"].observe_fn, finite_horizon=True, time_feature=True)
    x = touching[:1]
    for _ in range(5):                            # these starts push the box at once: the contact is in the window
        x = t["model"](x, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert float(x[0, 2] - touching[0, 2]) > 1e-3
    shac = small_shac(env, horizon=5, reward_scale=1.0)
    shac.train(1)
    assert_actor_gradient_matches_central_differences(shac, seed=6)


def test_path_tracking_cost_errors_against_the_road_geometry():
    """The bicycle task's lateral offset and heading error: zero on the road along its tangent, the distance
    along the road's normal off it (to first order), and the heading difference; the Stanley controller (the
    task's classical reference) brings every start from up to 1.5 m off to within 0.75 m (it lags on the
    curves)."""
    cost = tasks.PathTrackingCost().double()
    x = torch.linspace(0.0, 20.0, 41, dtype=torch.float64)
    slope = cost.amplitude * cost.wavenumber * torch.cos(cost.wavenumber * x)
    heading = torch.atan(slope)
    on_road = torch.stack([x, cost.amplitude * torch.sin(cost.wavenumber * x), heading, 0 * x], -1)
    offset, heading_error = cost.errors(on_road)
    assert offset.abs().max() < 1e-12 and heading_error.abs().max() < 1e-12
    normal = torch.stack([-torch.sin(heading), torch.cos(heading)], -1)
    aside = on_road.clone()
    aside[:, :2] += 1e-4 * normal
    aside[:, 2] += 0.1
    offset, heading_error = cost.errors(aside)
    assert torch.allclose(offset, torch.full_like(offset, 1e-4), rtol=1e-3)
    assert torch.allclose(heading_error, torch.full_like(x, 0.1), atol=1e-3)
    t = tasks.task("bicycle", 4, dtype=torch.float64)
    X = [t["x0"]]
    for _ in range(t["T"]):
        X.append(t["model"](X[-1], tasks.stanley(t["cost"], X[-1])))
    offset, _ = t["cost"].errors(torch.stack(X, 1))
    assert offset[:, -20:].abs().max() < 0.75


def test_diffenv_refuses_resets_and_observations_that_are_not_finite_states():
    env = pendulum_env()
    nan_reset = DiffEnv(env.dynamics, env.cost, reset=lambda n, g: torch.full((n, 2), math.nan, dtype=torch.float64),
                        episode_length=5, num_envs=4)
    with pytest.raises(ValueError, match="reset must return finite float states"):
        nan_reset.reset()
    wrong = DiffEnv(env.dynamics, env.cost, reset=env._reset, episode_length=5, num_envs=4,
                    observe=lambda x: x[0])                                  # drops the batch dimension
    with pytest.raises(ValueError, match=r"observe must return a float tensor \(B, o\) with B = 4"):
        wrong.reset()
    blows_up = DiffEnv(env.dynamics, env.cost, reset=env._reset, episode_length=5, num_envs=4,
                       observe=lambda x: torch.log(x - 10))                 # NaN on every finite state
    with pytest.raises(FloatingPointError, match="observe returned NaN or Inf"):
        blows_up.reset()


@pytest.mark.parametrize("option", ["actor_lr", "critic_lr", "reward_scale", "grad_norm"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0])
def test_shac_refuses_step_sizes_that_are_not_finite_and_positive(option, value):
    with pytest.raises(ValueError, match=f"SHAC: {option} must be a positive finite number"):
        small_shac(pendulum_env(), **{option: value})


# ---------------------------------------------------------------------------------------- issue 21: nothing silent
@pytest.mark.parametrize("options, error, match", [
    (dict(episode_length=1.7), ValueError, "DiffEnv: episode_length must be an int >= 1"),
    (dict(episode_length="5"), ValueError, "DiffEnv: episode_length must be an int >= 1"),
    (dict(episode_length=float("nan")), ValueError, "DiffEnv: episode_length must be an int >= 1"),
    (dict(num_envs=2.5), ValueError, "DiffEnv: num_envs must be an int >= 1"),
    (dict(num_envs=math.inf), ValueError, "DiffEnv: num_envs must be an int >= 1"),
    (dict(shard=(0.5, 2)), ValueError, "DiffEnv: shard\\[0\\] \\(rank\\) must be an int >= 0"),
    (dict(shard="x"), ValueError, "DiffEnv: shard must be a pair"),
    (dict(observe="x"), TypeError, "DiffEnv: observe must be callable"),
    (dict(terminate=5), TypeError, "DiffEnv: terminate must be callable"),
])
def test_diffenv_checks_its_options(options, error, match):
    with pytest.raises(error, match=match):
        pendulum_env(**options)


def test_diffenv_checks_the_cost_against_the_model_and_the_actions():
    model = dynamics.Pendulum().discretize()
    starts = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="DiffEnv: the cost is for n=3"):
        DiffEnv(model, trajopt.QuadraticCost.from_weights(torch.eye(3).double(), torch.eye(1).double()), reset=starts,
                episode_length=5, num_envs=4)
    with pytest.raises(TypeError, match="DiffEnv: reset is torch.float64 but the cost's tensor"):
        DiffEnv(model, trajopt.QuadraticCost.from_weights(torch.eye(2), torch.eye(1)), reset=starts,
                episode_length=5, num_envs=4)
    env = pendulum_env()
    env.reset(torch.Generator().manual_seed(0))
    for u, error, match in [([[0.0]] * 4, TypeError, "DiffEnv.step: u must be a torch.Tensor"),
                            (torch.zeros(4, 1), TypeError, "DiffEnv.step: u is torch.float32"),
                            (torch.zeros(4, 1, dtype=torch.int64), TypeError, "DiffEnv.step: u is torch.int64")]:
        with pytest.raises(error, match=match):
            env.step(u)


@pytest.mark.parametrize("options, error, match", [
    (dict(betas=(1.5, 0.9)), ValueError, "SHAC: betas\\[0\\] must be in \\[0, 1\\)"),
    (dict(seed="a"), ValueError, "SHAC: seed must be an int >= 0"),
    (dict(dtype="float"), TypeError, "SHAC: dtype must be a floating torch.dtype"),
    (dict(critic=5), TypeError, "SHAC: critic must be a torch.nn.Module"),
    (dict(hidden=(0,)), ValueError, "SHAC: hidden\\[0\\] must be an int >= 1"),
    (dict(evaluate=5), TypeError, "SHAC: evaluate must be callable"),
    (dict(log=5), TypeError, "SHAC: log must be a path"),
])
def test_shac_checks_its_options(options, error, match):
    with pytest.raises(error, match=match):
        small_shac(pendulum_env(), **options)


@pytest.mark.parametrize("kw, match", [(dict(epochs=-1), "epochs must be an int >= 0"),
                                       (dict(epochs=1.5), "epochs must be an int >= 0"),
                                       (dict(time_limit=-1), "time_limit must be a positive"),
                                       (dict(time_limit=float("nan")), "time_limit must be a positive")])
def test_shac_train_checks_its_budget(kw, match):
    with pytest.raises(ValueError, match=f"SHAC.train: {match}"):
        small_shac(pendulum_env()).train(**kw)


def test_shac_checks_the_actor_interface():
    with pytest.raises(TypeError, match="SHAC: actor must be called as actor\\(obs, noise\\)"):
        small_shac(pendulum_env(), actor=torch.nn.Linear(2, 1).double())
