"""The two tasks beyond ``problems.py`` that :mod:`benchmarks.rl` trains SHAC on, with their references.

- ``"pusher"``: :class:`dynamics.contact.PlanarPusher` (a round finger driven by its velocity, a box sliding
  with smoothed Coulomb friction) pushes the box to the origin: 150 steps of 0.01 s, finger speed at most
  1 m/s per axis, :class:`PusherCost`.
- ``"bicycle"``: :class:`dynamics.KinematicBicycle` tracks a sinusoidal road at 4 m/s: 80 steps of 0.1 s,
  speed in ``[0, 8]`` m/s, steering rate in ``[-1, 1]`` rad/s, :class:`PathTrackingCost`.

Each is scored like P2 and P3: the deterministic policy closed loop from 32 fixed starts (drawn by a
generator seeded 0), the mean of the task's cost (in float64). :func:`reference` gives the open-loop
optimum box-constrained iLQR reaches from the same starts (for the bicycle, warm-started from the Stanley
controller, :func:`stanley`, a classical path tracker).
"""
from __future__ import annotations

import copy
import math

import torch

import dynamics
import trajopt
from dynamics.contact import PlanarPusher
from trajopt.rl import DiffEnv


class PusherCost(trajopt.Cost):
    """The pushing task's cost on :class:`dynamics.contact.PlanarPusher`'s state ``(finger, box, box velocity)``:

    ``stage = w_box |box - goal|^2 + w_reach (|finger - box| - reach)^2 + w_u |u|^2`` (the reach term keeps
    the finger at the box, where the contact gradients are; ``reach`` is about the box's half-width plus the
    finger's radius), ``terminal = w_final (|box - goal|^2 + 0.1 |box velocity|^2)``."""

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
    ``(y - road(x)) cos(heading)``) and ``heading`` the road's direction at ``x``; the heading term is
    ``e_psi^2`` near zero and periodic, so the heading needs no wrapping. The last term is the steering lock
    (the model has none, and ``tan(delta)`` is singular at 90 degrees)."""

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


def _pusher_starts(count, generator=None, dtype=torch.float32):
    """Box 0.3-0.5 m behind the goal (the origin) along x, up to 0.2 m aside; finger 0.2-0.3 m behind the
    box, up to 0.15 m aside of it; at rest."""
    r = torch.rand(count, 4, generator=generator, dtype=dtype)
    box = torch.stack([-0.3 - 0.2 * r[:, 0], 0.4 * r[:, 1] - 0.2], -1)
    finger = box + torch.stack([-0.2 - 0.1 * r[:, 2], 0.3 * r[:, 3] - 0.15], -1)
    return torch.cat([finger, box, torch.zeros(count, 2, dtype=dtype)], -1)


def _bicycle_starts(cost, count, generator=None, dtype=torch.float32):
    """Anywhere along one wavelength of the road, up to 1.5 m off it and 0.5 rad off its heading, wheels
    straight."""
    r = torch.rand(count, 3, generator=generator, dtype=dtype)
    x = r[:, 0] * 2 * math.pi / cost.wavenumber
    on_road = torch.stack([x, cost.amplitude * torch.sin(cost.wavenumber * x), torch.zeros_like(x),
                           torch.zeros_like(x)], -1)
    _, heading_error = cost.errors(on_road)
    return torch.stack([x, on_road[:, 1] + 3 * r[:, 1] - 1.5, -heading_error + r[:, 2] - 0.5, torch.zeros_like(x)], -1)


def make(name, num_envs, dtype, env_options):
    """The task dict of :func:`benchmarks.rl.task` for ``"pusher"`` or ``"bicycle"``."""
    generator = torch.Generator().manual_seed(0)
    if name == "pusher":
        model = PlanarPusher().discretize(0.01)
        cost, T, lower, upper = PusherCost(), 150, -torch.ones(2), torch.ones(2)
        reset = lambda count, gen: _pusher_starts(count, gen, dtype)                      # noqa: E731
        x0 = _pusher_starts(32, generator, torch.float64)

        def observe(x):
            finger, box = x[..., 0:2], x[..., 2:4]
            return torch.cat([(finger - box) / 0.2, (box - cost.goal.to(x)) / 0.3, x[..., 4:6]], -1)
    else:
        model = dynamics.KinematicBicycle().discretize(0.1)
        cost, T, lower, upper = PathTrackingCost(), 80, torch.tensor([0.0, -1.0]), torch.tensor([8.0, 1.0])
        reset = lambda count, gen: _bicycle_starts(cost, count, gen, dtype)               # noqa: E731
        x0 = _bicycle_starts(cost, 32, generator, torch.float64)

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


def stanley(cost: PathTrackingCost, x: torch.Tensor, gain: float = 1.0, dt: float = 0.1) -> torch.Tensor:
    """The Stanley controller (Thrun et al. 2006) for the bicycle task: controls ``(B, 2)`` at states ``x (B, 4)``
    that drive at the task's speed and steer toward ``-(heading error) - atan(gain e / v)`` (within the
    steering lock), at the steering rate the bounds allow."""
    offset, heading_error = cost.errors(x)
    heading_error = torch.atan2(torch.sin(heading_error), torch.cos(heading_error))
    target = (-heading_error - torch.atan(gain * offset / cost.speed)).clamp(-cost.max_steer, cost.max_steer)
    rate = ((target - x[..., 3]) / dt).clamp(-1.0, 1.0)
    return torch.stack([torch.full_like(rate, cost.speed), rate], -1)


def reference(t: dict, max_iter: int = 500) -> dict:
    """Box-constrained iLQR's open-loop solutions from the task's 32 starts, in float64: from zero controls
    (pusher) or from the Stanley controller's closed loop (bicycle). Returns ``{"cost", "converged", "U"}``
    and, for the bicycle, ``"stanley"`` (the Stanley controller's mean closed-loop cost)."""
    model, cost = copy.deepcopy(t["model"]).double(), copy.deepcopy(t["cost"]).double()
    x0, T = t["x0"].double(), t["T"]
    out = {}
    if isinstance(cost, PathTrackingCost):
        X, U = [x0], []
        for _ in range(T):
            U.append(stanley(cost, X[-1]))
            X.append(model(X[-1], U[-1]))
        U_init = torch.stack(U, 1)
        out["stanley"] = float(cost(torch.stack(X, 1), U_init).mean())
    else:
        U_init = x0.new_zeros(len(x0), T, model.control_dim)
    with torch.no_grad():
        problem = trajopt.Problem(model, cost, x0, U_init=U_init, u_lower=t["u_lower"].double(),
                                  u_upper=t["u_upper"].double())
        sol = trajopt.ilqr(problem, max_iter=max_iter, grad=None)
    return dict(out, cost=float(sol.cost.mean()), converged=int(sol.converged.sum()), U=sol.U)
