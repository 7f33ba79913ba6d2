"""Train SHAC on a task and plot its learning curve and closed-loop trajectories.

    python examples/shac_tasks.py pusher [--seconds 300] [--seed 0] [--out .] [--resume]
    python examples/shac_tasks.py bicycle --plot-only shac_bicycle.csv

Tasks: ``pendulum`` (P2 swing-up), ``pusher`` (pushing a box through smoothed contact) and ``bicycle`` (path
tracking); the cart-pole (P3) has ``examples/shac_cartpole.py``, which takes its task from here. The log
(``shac_<task>.csv``) has one row per epoch, the scored ones with the closed-loop cost from the task's 32 fixed
starts; ``shac_<task>.pt`` is the checkpoint. The figure goes to ``docs/images/shac_<task>.png``: the cost
against training time beside the task's reference, and the trained policy's closed-loop trajectories from the
32 starts.

The tasks (the definitions ``benchmarks.rl`` and ``benchmarks.tasks`` measure with, kept here so that the
example runs on the library alone):

- ``"P2"``, ``"P3"``: :func:`trajopt.problems.pendulum` and :func:`trajopt.problems.cartpole`'s model and cost
  (``x'Qx + u'Ru`` per step, angle not wrapped, no terminal term), their horizon as the episode length
  (finite-horizon episodes, the fraction elapsed observed), training starts drawn like their starts, and the
  score of :mod:`trajopt.problems.reference`: the deterministic policy closed loop from the 32 starts, the mean
  ``trajectory_cost``.
- ``"pusher"``: :class:`dynamics.contact.PlanarPusher` (a round finger driven by its velocity, a box sliding
  with smoothed Coulomb friction) pushes the box to the origin: 150 steps of 0.01 s, finger speed at most
  1 m/s per axis, :class:`PusherCost`.
- ``"bicycle"``: :class:`dynamics.KinematicBicycle` tracks a sinusoidal road at 4 m/s: 80 steps of 0.1 s,
  speed in ``[0, 8]`` m/s, steering rate in ``[-1, 1]`` rad/s, :class:`PathTrackingCost`; :func:`stanley` is
  the classical path tracker it is compared with.
"""
import argparse
import copy
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dynamics  # noqa: E402
import trajopt  # noqa: E402
import trajopt.problems  # noqa: E402
from dynamics.contact import PlanarPusher  # noqa: E402
from examples._plot import reference_lines, save, shac_curve, subplots  # noqa: E402
from trajopt.problems import reference  # noqa: E402
from trajopt.rl import SHAC, DiffEnv  # noqa: E402

TASKS = {"pendulum": "P2", "pusher": "pusher", "bicycle": "bicycle"}

# P3's setting: the window is the whole episode (60 steps, undiscounted, as P3's sum is), small exploration
# noise, the learning rate decaying linearly over 1500 epochs (about 5 minutes here); half of the training
# starts with a uniform angle.
P3_SHAC = dict(horizon=60, gamma=1.0, actor_lr=1e-2, init_std=0.1, epochs=1500)
P3_STARTS = dict(wide_starts=0.5)
SHAC_DEFAULTS = dict(horizon=32, epochs=100_000, actor_lr=1e-2, critic_lr=1e-3, gamma=0.99, reward_scale=0.01,
                     critic_iterations=8, eval_every=25)
# the pusher's window is its whole episode; the pendulum's rate decays over 1000 epochs
TASK_SHAC = {"P2": dict(epochs=1000), "P3": P3_SHAC, "pusher": dict(horizon=150, gamma=1.0, init_std=0.1, epochs=400)}

# The open-loop costs each task is compared with, from its 32 scoring starts: ``(label, cost, line style)``.
REFERENCES = {"P2": [("multistart iLQR, open loop", 410.2, "--")],
              "P3": [("box-constrained iLQR, open loop", 890.6, "--")],
              "pusher": [("box-constrained iLQR, open loop", 60.22, "--")],
              "bicycle": [("iLQR from Stanley's controls, open loop", 10.60, "--"),
                          ("Stanley controller, closed loop", 31.05, ":")]}


class PusherCost(trajopt.Cost):
    """The pushing task's cost on :class:`dynamics.contact.PlanarPusher`'s state ``(finger, box, box velocity)``:

    ``stage = w_box |box - goal|^2 + w_reach (|finger - box| - reach)^2 + w_u |u|^2`` (the reach term keeps
    the finger at the box, where the contact gradients are), ``terminal = w_final (|box - goal|^2 + 0.1 |box
    velocity|^2)``."""

    def __init__(self, goal=(0.0, 0.0), reach=0.12, w_box=10.0, w_reach=1.0, w_u=0.01, w_final=100.0):
        super().__init__()
        self.register_buffer("goal", torch.as_tensor(goal, dtype=torch.get_default_dtype()))
        self.reach, self.w_box, self.w_reach, self.w_u, self.w_final = reach, w_box, w_reach, w_u, w_final

    def stage(self, x, u, t=None):
        finger, box = x[..., 0:2], x[..., 2:4]
        reach = torch.sqrt(((finger - box) ** 2).sum(-1) + 1e-6)
        return (self.w_box * ((box - self.goal) ** 2).sum(-1) + self.w_reach * (reach - self.reach) ** 2
                + self.w_u * (u ** 2).sum(-1))

    def terminal(self, x):
        return self.w_final * (((x[..., 2:4] - self.goal) ** 2).sum(-1) + 0.1 * (x[..., 4:6] ** 2).sum(-1))


class PathTrackingCost(trajopt.Cost):
    """Tracking the road ``y = amplitude sin(2 pi x / wavelength)`` with :class:`dynamics.KinematicBicycle`
    (state ``(x, y, psi, delta)``, control ``(v, delta_rate)``) at speed ``speed``:

    ``stage = e^2 + 2 (1 - cos(psi - heading)) + w_v (v - speed)^2 + w_delta delta^2 + w_rate rate^2
    + w_limit max(0, |delta| - max_steer)^2``, with ``e`` the lateral offset from the road (to first order,
    ``(y - road(x)) cos(heading)``) and ``heading`` the road's direction at ``x``. The last term is the steering
    lock (the model has none, and ``tan(delta)`` is singular at 90 degrees)."""

    def __init__(self, amplitude=2.0, wavelength=20.0, speed=4.0, w_v=0.1, w_delta=0.5, w_rate=0.1,
                 max_steer=0.6, w_limit=100.0):
        super().__init__()
        self.amplitude, self.wavenumber, self.speed = amplitude, 2 * math.pi / wavelength, speed
        self.w_v, self.w_delta, self.w_rate, self.max_steer, self.w_limit = w_v, w_delta, w_rate, max_steer, w_limit

    def errors(self, x):
        """Lateral offset ``(...)`` and heading error ``(...)`` of states ``x (..., 4)``."""
        heading = torch.atan(self.amplitude * self.wavenumber * torch.cos(self.wavenumber * x[..., 0]))
        offset = (x[..., 1] - self.amplitude * torch.sin(self.wavenumber * x[..., 0])) * torch.cos(heading)
        return offset, x[..., 2] - heading

    def stage(self, x, u, t=None):
        offset, heading_error = self.errors(x)
        return (offset ** 2 + 2 * (1 - torch.cos(heading_error)) + self.w_v * (u[..., 0] - self.speed) ** 2
                + self.w_delta * x[..., 3] ** 2 + self.w_rate * u[..., 1] ** 2
                + self.w_limit * torch.relu(x[..., 3].abs() - self.max_steer) ** 2)


def stanley(cost: PathTrackingCost, x: torch.Tensor, gain: float = 1.0, dt: float = 0.1) -> torch.Tensor:
    """The Stanley controller (Thrun et al. 2006) for the bicycle task: controls ``(B, 2)`` at states ``x (B, 4)``
    that drive at the task's speed and steer toward ``-(heading error) - atan(gain e / v)`` (within the
    steering lock), at the steering rate the bounds allow."""
    offset, heading_error = cost.errors(x)
    heading_error = torch.atan2(torch.sin(heading_error), torch.cos(heading_error))
    target = (-heading_error - torch.atan(gain * offset / cost.speed)).clamp(-cost.max_steer, cost.max_steer)
    rate = ((target - x[..., 3]) / dt).clamp(-1.0, 1.0)
    return torch.stack([torch.full_like(rate, cost.speed), rate], -1)


def pusher_starts(count, generator=None, dtype=torch.float32):
    """Box 0.3-0.5 m behind the goal (the origin) along x, up to 0.2 m aside; finger 0.2-0.3 m behind the
    box, up to 0.15 m aside of it; at rest."""
    r = torch.rand(count, 4, generator=generator, dtype=dtype)
    box = torch.stack([-0.3 - 0.2 * r[:, 0], 0.4 * r[:, 1] - 0.2], -1)
    finger = box + torch.stack([-0.2 - 0.1 * r[:, 2], 0.3 * r[:, 3] - 0.15], -1)
    return torch.cat([finger, box, torch.zeros(count, 2, dtype=dtype)], -1)


def bicycle_starts(cost, count, generator=None, dtype=torch.float32):
    """Anywhere along one wavelength of the road, up to 1.5 m off it and 0.5 rad off its heading, wheels
    straight."""
    r = torch.rand(count, 3, generator=generator, dtype=dtype)
    x = r[:, 0] * 2 * math.pi / cost.wavenumber
    on_road = torch.stack([x, cost.amplitude * torch.sin(cost.wavenumber * x), torch.zeros_like(x),
                           torch.zeros_like(x)], -1)
    _, heading_error = cost.errors(on_road)
    return torch.stack([x, on_road[:, 1] + 3 * r[:, 1] - 1.5, -heading_error + r[:, 2] - 0.5, torch.zeros_like(x)], -1)


def _angle_features(x, angle, scale):
    s, c = torch.sin(x[..., angle:angle + 1]), torch.cos(x[..., angle:angle + 1])
    return torch.cat([x / scale, s, c], -1)


def _contact_task(name, num_envs, dtype, env_options):
    generator = torch.Generator().manual_seed(0)
    if name == "pusher":
        model = PlanarPusher().discretize(0.01)
        cost, T, lower, upper = PusherCost(), 150, -torch.ones(2), torch.ones(2)
        reset = lambda count, gen: pusher_starts(count, gen, dtype)                        # noqa: E731
        x0 = pusher_starts(32, generator, torch.float64)

        def observe(x):
            finger, box = x[..., 0:2], x[..., 2:4]
            return torch.cat([(finger - box) / 0.2, (box - cost.goal.to(x)) / 0.3, x[..., 4:6]], -1)
    else:
        model = dynamics.KinematicBicycle().discretize(0.1)
        cost, T, lower, upper = PathTrackingCost(), 80, torch.tensor([0.0, -1.0]), torch.tensor([8.0, 1.0])
        reset = lambda count, gen: bicycle_starts(cost, count, gen, dtype)                 # noqa: E731
        x0 = bicycle_starts(cost, 32, generator, torch.float64)

        def observe(x):
            offset, heading_error = cost.errors(x)
            phase = cost.wavenumber * x[..., 0]
            return torch.stack([offset, torch.sin(heading_error), torch.cos(heading_error), x[..., 3],
                                torch.sin(phase), torch.cos(phase)], -1)
    for param in model.parameters():
        param.requires_grad_(False)
    cost = cost.to(dtype)
    options = dict(finite_horizon=True, time_feature=True)
    options.update(env_options)
    env = DiffEnv(model, cost, reset=reset, episode_length=T, num_envs=num_envs, u_lower=lower.to(dtype),
                  u_upper=upper.to(dtype), observe=observe, **options)
    return dict(env=env, x0=x0.to(dtype), T=T, model=model, cost=cost, u_lower=lower, u_upper=upper)


def task(name: str, num_envs: int = 64, dtype=torch.float32, wide_starts: float = 0.0, **env_options) -> dict:
    """``{"env", "x0", "T", "model", "cost", ...}`` of a task: ``"P2"``, ``"P3"``, ``"pusher"`` or ``"bicycle"``.
    P2 and P3 also give ``"step", "Q", "R", "u_max"`` (the reference NumPy model and weights).

    ``wide_starts``: P3's training starts are ``cartpole_x0``'s (hanging, 0.05 noise), except this fraction,
    whose angle is uniform in ``[-pi, pi]``. P2's are ``pendulum_x0``'s (uniform angle, speed in ``[-1, 1]``),
    except this fraction, whose speed is uniform in ``[-8, 8]``."""
    if name in ("pusher", "bicycle"):
        return _contact_task(name, num_envs, dtype, env_options)
    if name == "P2":
        spec, step, problem = reference.PENDULUM, reference.pendulum_step, trajopt.problems.pendulum(32, dtype=dtype)
        scale, angle = torch.tensor([math.pi, 4.0], dtype=dtype), 0

        def reset(count, generator):
            u = torch.rand(count, 3 if wide_starts else 2, generator=generator, dtype=dtype)
            speed = torch.where(u[:, 2] < wide_starts, 8.0, 1.0) if wide_starts else 1.0
            return torch.stack([math.pi * (2 * u[:, 0] - 1), speed * (2 * u[:, 1] - 1)], -1)
    elif name == "P3":
        spec, step, problem = reference.CARTPOLE, reference.cartpole_step, trajopt.problems.cartpole(32, dtype=dtype)
        scale, angle = torch.tensor([1.0, 3.0, 3.0, 5.0], dtype=dtype), 2

        def reset(count, generator):
            x = torch.zeros(count, 4, dtype=dtype)
            draw = torch.rand(count, 2, generator=generator, dtype=dtype)
            x[:, 2] = torch.where(draw[:, 0] < wide_starts, math.pi * (2 * draw[:, 1] - 1), math.pi)
            return x + 0.05 * torch.randn(count, 4, generator=generator, dtype=dtype)
    else:
        raise ValueError(f"task: name must be 'P2', 'P3', 'pusher' or 'bicycle', got {name!r}")
    options = dict(finite_horizon=True, time_feature=True)
    options.update(env_options)
    env = DiffEnv(problem.dynamics, problem.cost, reset=reset, episode_length=problem.T, num_envs=num_envs,
                  u_lower=-spec["u_max"], u_upper=spec["u_max"], observe=lambda x: _angle_features(x, angle, scale),
                  **options)
    return dict(env=env, x0=problem.x0, step=step, Q=spec["Q"], R=spec["R"], T=problem.T, u_max=spec["u_max"],
                model=problem.dynamics, cost=problem.cost)


def score(t: dict, U: torch.Tensor) -> float:
    """Mean cost of controls ``U (32, T, m)`` from the task's 32 starts: ``reference.trajectory_cost`` for P2
    and P3, the task's cost on a float64 rollout otherwise."""
    if "step" not in t:
        model, cost = copy.deepcopy(t["model"]).double(), copy.deepcopy(t["cost"]).double()
        U = U.detach().double()
        with torch.no_grad():
            return float(cost(trajopt.rollout(model, t["x0"].double(), U), U).mean())
    x0, U = t["x0"].double().numpy(), U.detach().double().numpy()
    return float(np.mean([reference.trajectory_cost(t["step"], x0[b], U[b], t["Q"], t["R"])
                          for b in range(len(x0))]))


def evaluator(t: dict):
    """``evaluate(shac)`` for :class:`SHAC`: the closed-loop score of its deterministic policy."""
    def evaluate(shac):
        _, U = shac.closed_loop(t["x0"], t["T"])
        return score(t, U)
    return evaluate


def references(name: str) -> list:
    """The reference costs of a task, ``[(label, cost, line style), ...]``."""
    return REFERENCES[name]


def plot_trajectories(ax, name, t, X):
    X = X.detach().double()
    if name == "pusher":
        for b in range(len(X)):
            ax.plot(X[b, :, 0], X[b, :, 1], color="0.7", lw=0.6)
            ax.plot(X[b, :, 2], X[b, :, 3], color="C0", lw=0.9)
        ax.plot(X[:, 0, 2], X[:, 0, 3], "s", color="C0", ms=3, label="box start")
        ax.plot(X[:, -1, 2], X[:, -1, 3], "o", color="C3", ms=2, label="box at the end")
        ax.plot([0], [0], "k+", ms=12, mew=2, label="goal")
        ax.plot([], [], color="0.7", lw=0.6, label="finger")
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    elif name == "bicycle":
        cost = t["cost"]
        road = torch.linspace(float(X[..., 0].min()) - 2, float(X[..., 0].max()) + 2, 400, dtype=torch.float64)
        ax.plot(road, cost.amplitude * torch.sin(cost.wavenumber * road), "k--", lw=1.5, label="road")
        for b in range(len(X)):
            ax.plot(X[b, :, 0], X[b, :, 1], color="C0", lw=0.7)
        ax.plot(X[:, 0, 0], X[:, 0, 1], "o", color="C0", ms=2, label="starts")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
    else:
        time = torch.arange(X.shape[1]) * 0.05
        for b in range(len(X)):
            ax.plot(time, X[b, :, 0], color="C0", lw=0.7)
        ax.axhline(0.0, color="k", lw=0.8, label="upright")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("angle (rad, 0 upright)")
    ax.legend(fontsize=7, loc="best")


def plot(name, t, logs, X, path):
    """The learning curves of the CSV ``logs`` and the closed-loop states ``X (32, T+1, n)``."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for log in logs:
        time, steps, cost = shac_curve(log)
        axes[0].plot(time, cost, lw=1, label=f"SHAC, {os.path.basename(log)}")
    reference_lines(axes[0], references(TASKS[name]))
    axes[0].set_xlabel("training time (s)")
    axes[0].set_ylabel("mean closed-loop cost, 32 starts")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    plot_trajectories(axes[1], name, t, X)
    save(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", default=".")
    parser.add_argument("--plot-only", nargs="+", metavar="LOG", help="plot these CSV logs and the checkpoint")
    args = parser.parse_args()
    name = TASKS[args.task]
    figure = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images",
                          f"shac_{args.task}.png")
    log, ckpt = (os.path.join(args.out, f"shac_{args.task}.{ext}") for ext in ("csv", "pt"))
    t = task(name, 64)
    options = dict(SHAC_DEFAULTS, **TASK_SHAC.get(name, {}))
    shac = SHAC(t["env"], seed=args.seed, evaluate=evaluator(t), log=None if args.plot_only else log,
                checkpoint=ckpt, checkpoint_every=25, **options)
    if args.resume or args.plot_only:
        shac.load(ckpt)
    if not args.plot_only:
        shac.train(time_limit=args.seconds)
        shac.save(ckpt)
    X, U = shac.closed_loop(t["x0"], t["T"])
    print(f"closed-loop cost of the final policy from the 32 starts: {score(t, U):.2f}")
    plot(args.task, t, args.plot_only or [log], X, figure)
    return 0 if math.isfinite(score(t, U)) else 1


if __name__ == "__main__":
    sys.exit(main())
