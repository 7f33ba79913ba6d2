"""Actors, critics and observation normalization for first-order policy learning.

An actor is an ``nn.Module`` called as ``actor(obs (B, o), noise (B, m) or None) -> u (B, m)``: ``noise`` is
standard normal exploration noise drawn by the trainer (None: act deterministically), so every random
draw comes from the trainer's generator and a run is reproducible. An actor whose attribute
``raw_observations`` is True gets the environment's observations as they are (a solver-based policy
wants states), otherwise normalized ones.

- :class:`GaussianPolicy`: an MLP mean, a learned state-independent standard deviation, squashed into the
  control bounds by ``tanh`` (SHAC's stochastic actor).
- :class:`MPCPolicy`: the first control of a differentiable receding-horizon solve
  (:class:`trajopt.MPC`, box-constrained iLQR with implicit gradients) of a learnable cost.
- :class:`LearnedCost`: diagonal quadratic stage weights (learned in log space) and an optional learned
  terminal value, the cost an :class:`MPCPolicy` learns.
- :class:`ValueNetwork`: the critic, ``V(obs) (B,)``.
- :class:`ObservationNormalizer`: running mean and variance (merged over processes when
  ``torch.distributed`` is initialized), clipped standardization.

Differentiable with respect to: the observations and every parameter.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dynamics import Dynamics
from dynamics.learned.models import mlp
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp
from .._solvers.mpc import MPC

__all__ = ["GaussianPolicy", "MPCPolicy", "LearnedCost", "ValueNetwork", "ObservationNormalizer"]


def _bounds(where, control_dim, u_lower, u_upper, like):
    """The bounds as tensors of the policy's dtype (a float tensor of another dtype is converted: the env's
    bounds follow its states' dtype, the policy's parameters may differ)."""
    u_lower, u_upper = (b.to(like.dtype) if isinstance(b, torch.Tensor) and b.is_floating_point() else b
                        for b in (u_lower, u_upper))
    lower, upper = check_bounds(where, u_lower, u_upper, (control_dim,), like, dims="(m,)")
    if lower is None or upper is None or not bool(torch.isfinite(lower).all() & torch.isfinite(upper).all()):
        raise ValueError(f"{where}: u_lower and u_upper must both be finite (the actions are squashed into them)")
    return lower, upper


class GaussianPolicy(nn.Module):
    """``u = centre + half_width tanh(mu(obs) + std * noise)``, with ``centre`` and ``half_width`` those of the
    bounds.

    Args:
        obs_dim: ``o``; control_dim: ``m``.
        u_lower, u_upper: finite control bounds broadcastable to ``(m,)``.
        hidden: widths of the MLP's hidden layers; activation: their activation (SHAC's ELU by default).
        init_std: initial standard deviation of the pre-squash noise (learned, in log space).
        dtype: of the parameters.
    """

    raw_observations = False

    def __init__(self, obs_dim: int, control_dim: int, u_lower, u_upper, *, hidden=(64, 64), activation=nn.ELU,
                 init_std: float = 0.4, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"GaussianPolicy: init_std must be positive, got {init_std}")
        like = torch.empty(0, dtype=dtype)
        lower, upper = _bounds("GaussianPolicy", control_dim, u_lower, u_upper, like)
        self.net = mlp(obs_dim, control_dim, hidden, activation).to(dtype)
        with torch.no_grad():           # start near the centre of the bounds (a common choice for actors)
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()
        self.log_std = nn.Parameter(torch.full((control_dim,), math.log(init_std), dtype=dtype))
        self.register_buffer("centre", (upper + lower) / 2)
        self.register_buffer("half_width", (upper - lower) / 2)

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        z = self.net(obs)
        if noise is not None:
            z = z + self.log_std.exp() * noise
        return torch.addcmul(self.centre, self.half_width, torch.tanh(z))


class ValueNetwork(nn.Module):
    """``V(obs) (B,)``: an MLP of the (normalized) observation."""

    def __init__(self, obs_dim: int, *, hidden=(64, 64), activation=nn.ELU, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation).to(dtype)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class ObservationNormalizer(nn.Module):
    """``(obs - mean) / sqrt(var + eps)`` with running statistics (Chan et al.'s parallel update), kept as
    buffers so they are saved with a checkpoint; starts at mean 0, variance 1. ``clip``, if given, clamps the
    result into ``[-clip, clip]`` (which stops gradients beyond it: off by default, as first-order
    training differentiates through the observations)."""

    def __init__(self, obs_dim: int, *, clip: float | None = None, eps: float = 1e-5,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.clip, self.eps = clip, float(eps)
        self.register_buffer("mean", torch.zeros(obs_dim, dtype=dtype))
        self.register_buffer("var", torch.ones(obs_dim, dtype=dtype))
        self.register_buffer("count", torch.tensor(1e-4, dtype=dtype))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge the statistics of ``obs (..., o)`` (summed over all processes under ``torch.distributed``)."""
        obs = obs.reshape(-1, obs.shape[-1]).to(self.mean)
        sums = torch.cat([obs.sum(0), (obs * obs).sum(0), obs.new_tensor([obs.shape[0]])])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        o = self.mean.shape[0]
        count = sums[-1]
        mean = sums[:o] / count
        var = (sums[o:2 * o] / count - mean * mean).clamp_min(0)
        delta, total = mean - self.mean, self.count + count
        self.var.copy_((self.var * self.count + var * count + delta * delta * self.count * count / total) / total)
        self.mean.add_(delta * count / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        z = (obs - self.mean) * torch.rsqrt(self.var + self.eps)
        return z if self.clip is None else z.clamp(-self.clip, self.clip)


class LearnedCost(Cost):
    """``sum_i q_i (x_i - goal_i)^2 + sum_j r_j u_j^2`` per stage and ``terminal(x)`` at the end, with
    ``q = exp(log_q)``, ``r = exp(log_r)`` learned (positive by construction).

    Args:
        q: ``(n,)`` initial state weights (positive); r: ``(m,)`` initial control weights (positive).
        goal: ``(n,)`` target state (fixed), zero by default.
        terminal: a module ``x (B, n) -> (B,)`` (e.g. a small smooth MLP, learned), or None for none.
            iLQR quadratizes it by autograd, so it should be twice differentiable (SiLU or tanh, not ReLU/ELU).

    With ``q, r`` doubled from a ``problems.py`` cost it starts equal to it (no 1/2 here).
    """

    def __init__(self, q, r, *, goal=None, terminal: nn.Module | None = None):
        super().__init__()
        q, r = torch.as_tensor(q), torch.as_tensor(r)
        r = r.to(q.dtype)
        for name, w in (("q", q), ("r", r)):
            if w.ndim != 1 or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
                raise ValueError(f"LearnedCost: {name} must be a 1-D tensor of positive finite weights, got "
                                 f"shape {tuple(w.shape)}")
        self.log_q, self.log_r = nn.Parameter(q.log()), nn.Parameter(r.log())
        self.register_buffer("goal", q.new_zeros(q.shape) if goal is None else torch.as_tensor(goal, dtype=q.dtype))
        self.value = terminal

    def stage(self, x, u, t=None):
        e = x - self.goal
        return (e * e) @ self.log_q.exp() + (u * u) @ self.log_r.exp()

    def terminal(self, x):
        return x.new_zeros(x.shape[:-1]) if self.value is None else self.value(x).reshape(x.shape[:-1])


class MPCPolicy(nn.Module):
    """The first control of a differentiable MPC solve of ``cost`` over ``horizon`` steps of ``dynamics``,
    plus ``std * noise`` (clamped into the bounds) when exploring.

    Args:
        dynamics: the discrete model the solver plans with (a submodule: learnable tensors train too).
        cost: the :class:`trajopt.Cost` it minimizes, typically a :class:`LearnedCost`.
        horizon: planning horizon; u_lower, u_upper: finite control bounds.
        to_state: ``obs (B, o) -> x (B, n)``; the identity when None (observations are states).
        noise_std: exploration standard deviation, in control units, ``(m,)`` or a float (fixed).
        **options: options of :class:`trajopt.MPC`: ``solver`` (:func:`trajopt.ilqr` by default), ``max_iter``,
            ``first_max_iter`` and the solver's own (``grad``, ... for iLQR; ``samples``, ... for MPPI), checked
            against the solver's signature.

    Its gradient reaches the state, the cost's and the model's tensors by the solver's route: iLQR's implicit
    (or unrolled) one by default, or, with ``solver=trajopt.mppi`` (e.g. ``max_iter=1, samples=64``), MPPI's weights
    (under common random numbers; it does not vanish where the action is at a bound, as a box-constrained
    solve's does). The warm start follows the batch from call to call. Observations are not normalized
    (``raw_observations``).
    """

    raw_observations = True

    def __init__(self, dynamics: Dynamics, cost: Cost, horizon: int, u_lower, u_upper, *, to_state=None,
                 noise_std=0.1, **options):
        super().__init__()
        like = torch.empty(0, dtype=next(iter(cost.parameters()), torch.empty(0)).dtype)
        lower, upper = _bounds("MPCPolicy", dynamics.control_dim, u_lower, u_upper, like)
        self.mpc = MPC(dynamics, cost, horizon, u_lower=lower, u_upper=upper, **options)
        self.to_state = to_state
        self.register_buffer("lower", lower)
        self.register_buffer("upper", upper)
        self.register_buffer("noise_std", torch.as_tensor(noise_std, dtype=like.dtype).expand(lower.shape).clone())

    def reset(self) -> None:
        """Forget the warm start."""
        self.mpc.reset()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = obs if self.to_state is None else self.to_state(obs)
        u, _ = self.mpc(x)
        if noise is not None:
            u = clamp(u + self.noise_std * noise, self.lower, self.upper)
        return u
