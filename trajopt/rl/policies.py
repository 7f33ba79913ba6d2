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
from .._core.checks import check_callable, check_int, check_positive
from .._solvers.mpc import MPC
from ._checks import as_bound, check_features, check_float_dtype, check_hidden

__all__ = ["GaussianPolicy", "MPCPolicy", "LearnedCost", "ValueNetwork", "ObservationNormalizer"]


def _check_network(where, dims, hidden, activation, dtype):
    """The options every network here shares: positive ``dims``, layer widths, an activation class, a float dtype."""
    check_int(where, **dims)
    check_hidden(where, hidden)
    check_callable(where, activation=activation)
    check_float_dtype(where, dtype)


def _bounds(where, control_dim, u_lower, u_upper, like):
    """The bounds as tensors of the policy's dtype (a float tensor of another dtype is converted: the env's
    bounds follow its states' dtype, the policy's parameters may differ)."""
    u_lower, u_upper = (as_bound(where, name, b) for name, b in (("u_lower", u_lower), ("u_upper", u_upper)))
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
        init_std: initial standard deviation of the pre-squash noise (learned, in log space), finite and > 0.
        dtype: of the parameters, torch.float32 or torch.float64.

    Called as ``policy(obs (..., o), noise (..., m) or None) -> u (..., m)``: ``obs`` and ``noise`` (of the
    actions' shape) of the parameters' dtype (their shapes and dtypes are checked; its values are not: a NaN observation gives a NaN action, which
    :class:`~trajopt.rl.DiffEnv` reports when it steps).
    """

    raw_observations = False

    def __init__(self, obs_dim: int, control_dim: int, u_lower, u_upper, *, hidden=(64, 64), activation=nn.ELU,
                 init_std: float = 0.4, dtype: torch.dtype = torch.float32):
        super().__init__()
        where = "GaussianPolicy"
        _check_network(where, dict(obs_dim=obs_dim, control_dim=control_dim), hidden, activation, dtype)
        check_positive(where, init_std=init_std)
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
        dtype = self.log_std.dtype
        check_features("GaussianPolicy", "obs", obs, self.net[0].in_features, dtype)
        z = self.net(obs)
        if noise is not None:
            check_features("GaussianPolicy", "noise", noise, z.shape[-1], dtype, dims="m")
            if noise.shape != z.shape:
                raise ValueError(f"GaussianPolicy: noise has shape {tuple(noise.shape)}; expected the actions' "
                                 f"shape {tuple(z.shape)} (one standard normal draw per action)")
            z = z + self.log_std.exp() * noise
        return torch.addcmul(self.centre, self.half_width, torch.tanh(z))


class ValueNetwork(nn.Module):
    """``V(obs (..., o)) -> (...)``: an MLP of the (normalized) observation, ``obs_dim`` ``o`` (an int >= 1),
    ``hidden`` its layer widths, ``dtype`` its parameters' (float). The shape and dtype of ``obs`` are checked,
    not its values (NaN propagates to the value)."""

    def __init__(self, obs_dim: int, *, hidden=(64, 64), activation=nn.ELU, dtype: torch.dtype = torch.float32):
        super().__init__()
        _check_network("ValueNetwork", dict(obs_dim=obs_dim), hidden, activation, dtype)
        self.net = mlp(obs_dim, 1, hidden, activation).to(dtype)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        first = self.net[0]
        check_features("ValueNetwork", "obs", obs, first.in_features, first.weight.dtype)
        return self.net(obs).squeeze(-1)


class ObservationNormalizer(nn.Module):
    """``(obs - mean) / sqrt(var + eps)`` with running statistics (Chan et al.'s parallel update), kept as
    buffers so they are saved with a checkpoint; starts at mean 0, variance 1. ``clip``, if given, clamps the
    result into ``[-clip, clip]`` (which stops gradients beyond it: off by default, as first-order
    training differentiates through the observations).

    ``obs_dim`` an int >= 1, ``clip`` None or a number > 0, ``eps`` a finite number > 0, ``dtype`` a float dtype.
    :meth:`update` refuses observations with NaN or Inf (they would poison the running statistics); the forward
    pass checks shapes only (a NaN observation gives a NaN output)."""

    def __init__(self, obs_dim: int, *, clip: float | None = None, eps: float = 1e-5,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        where = "ObservationNormalizer"
        check_int(where, obs_dim=obs_dim)
        if clip is not None:
            check_positive(where, allow_inf=True, clip=clip)
        check_positive(where, eps=eps)
        check_float_dtype(where, dtype)
        self.clip, self.eps = clip, float(eps)
        self.register_buffer("mean", torch.zeros(obs_dim, dtype=dtype))
        self.register_buffer("var", torch.ones(obs_dim, dtype=dtype))
        self.register_buffer("count", torch.tensor(1e-4, dtype=dtype))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge the statistics of ``obs (..., o)`` (summed over all processes under ``torch.distributed``).
        Raises a ValueError, the statistics unchanged, when ``obs`` (of any process) holds NaN or Inf."""
        o = self.mean.shape[0]
        check_features("ObservationNormalizer.update", "obs", obs, o)
        obs = obs.reshape(-1, o).to(self.mean)
        sums = torch.cat([obs.sum(0), (obs * obs).sum(0), obs.new_tensor([obs.shape[0]])])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)
        if not bool(torch.isfinite(sums).all()):        # after the reduction: every process raises alike
            raise ValueError("ObservationNormalizer.update: obs contains NaN or Inf (here or on another process), "
                             "or values whose squares overflow; the running statistics were left unchanged")
        if not bool(sums[-1] > 0):                      # no observation anywhere: nothing to merge
            return
        count = sums[-1]
        mean = sums[:o] / count
        var = (sums[o:2 * o] / count - mean * mean).clamp_min(0)
        delta, total = mean - self.mean, self.count + count
        self.var.copy_((self.var * self.count + var * count + delta * delta * self.count * count / total) / total)
        self.mean.add_(delta * count / total)
        self.count.copy_(total)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        check_features("ObservationNormalizer", "obs", obs, self.mean.shape[0])
        z = (obs - self.mean) * torch.rsqrt(self.var + self.eps)
        return z if self.clip is None else z.clamp(-self.clip, self.clip)


class LearnedCost(Cost):
    """``sum_i q_i (x_i - goal_i)^2 + sum_j r_j u_j^2`` per stage and ``terminal(x)`` at the end, with
    ``q = exp(log_q)``, ``r = exp(log_r)`` learned (positive by construction).

    Args:
        q: ``(n,)`` initial state weights (positive, finite): a float tensor (its dtype is the cost's), or a
            sequence of numbers (converted to the default float dtype).
        r: ``(m,)`` initial control weights (positive, finite), converted to ``q``'s dtype.
        goal: ``(n,)`` finite target state (fixed), zero by default; converted to ``q``'s dtype.
        terminal: a module ``x (B, n) -> (B,)`` or ``(B, 1)`` (e.g. a small smooth MLP with one output, learned)
            in ``x``'s dtype, or None for none; what it returns is checked at each call (shape and dtype: a
            ValueError or TypeError naming ``terminal``).
            iLQR quadratizes it by autograd, so it should be twice differentiable (SiLU or tanh, not ReLU/ELU).

    With ``q, r`` doubled from a ``problems.py`` cost it starts equal to it (no 1/2 here). It declares
    ``n = len(q)`` and ``m = len(r)`` (:meth:`declared_dims`), so ``X`` and ``U`` of other sizes raise a ValueError
    naming them; :meth:`stage` and :meth:`terminal` check the sizes of ``x`` and ``u`` (shapes only, not values).
    """

    def __init__(self, q, r, *, goal=None, terminal: nn.Module | None = None):
        super().__init__()
        where = "LearnedCost"
        q = _weights(where, "q", q, None)
        r = _weights(where, "r", r, q.dtype)
        for name, w in (("q", q), ("r", r)):
            if w.ndim != 1 or w.numel() == 0 or not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
                raise ValueError(f"{where}: {name} must be a 1-D tensor of positive finite weights, got "
                                 f"shape {tuple(w.shape)}" + (f" with values {w.tolist()}" if w.ndim == 1 else ""))
        if goal is not None:
            goal = _weights(where, "goal", goal, q.dtype)
            if goal.shape != q.shape:
                raise ValueError(f"{where}: goal has shape {tuple(goal.shape)}; expected (n,) = {tuple(q.shape)}, "
                                 "the shape of q")
            if not bool(torch.isfinite(goal).all()):
                raise ValueError(f"{where}: goal must be finite, got {goal.tolist()}")
        check_callable(where, allow_none=True, terminal=terminal)
        if isinstance(terminal, nn.Module):
            for name, tensor in [*terminal.named_parameters(), *terminal.named_buffers()]:
                if tensor.is_floating_point() and tensor.dtype != q.dtype:
                    raise TypeError(f"{where}: terminal's tensor {name!r} is {tensor.dtype} but q is {q.dtype}; "
                                    f"convert one: terminal.to({q.dtype}) or q.to({tensor.dtype})")
        self.log_q, self.log_r = nn.Parameter(q.log()), nn.Parameter(r.log())
        self.register_buffer("goal", q.new_zeros(q.shape) if goal is None else goal.clone())
        self.value = terminal

    def declared_dims(self) -> dict:
        return {"n": self.log_q.shape[0], "m": self.log_r.shape[0]}

    def stage(self, x, u, t=None):
        check_features("LearnedCost.stage", "x", x, self.log_q.shape[0], dims="n")
        check_features("LearnedCost.stage", "u", u, self.log_r.shape[0], dims="m")
        e = x - self.goal
        return (e * e) @ self.log_q.exp() + (u * u) @ self.log_r.exp()

    def terminal(self, x):
        check_features("LearnedCost.terminal", "x", x, self.log_q.shape[0], dims="n")
        if self.value is None:
            return x.new_zeros(x.shape[:-1])
        v = self.value(x)
        batch = x.shape[:-1]
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"LearnedCost: terminal must return a tensor (B,) or (B, 1), got {type(v).__name__}")
        if v.shape not in (batch, (*batch, 1)):
            raise ValueError(f"LearnedCost: terminal returned shape {tuple(v.shape)} for x {tuple(x.shape)}; it must "
                             f"return one value per state: {tuple(batch)} or {(*batch, 1)}")
        if v.dtype != x.dtype:
            raise TypeError(f"LearnedCost: terminal returned {v.dtype} for {x.dtype} states; it must compute in "
                            "x's dtype")
        return v.reshape(batch)


def _weights(where, name, value, dtype):
    """``value`` as a float tensor: of ``dtype`` when given; else a float tensor keeps its dtype and numbers (a
    sequence of them) take the default float dtype. Anything else raises a TypeError naming ``name``."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{where}: {name} must be a float tensor or a sequence of numbers, got a {value.dtype} "
                            "tensor")
        tensor = value
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            tensor = None
        if tensor is None or tensor.dtype == torch.bool or tensor.is_complex():
            raise TypeError(f"{where}: {name} must be a float tensor or a sequence of numbers, got {value!r}")
        if not tensor.is_floating_point():
            tensor = tensor.to(torch.get_default_dtype())
    return tensor if dtype is None else tensor.to(dtype)


def _tensor_dtype(*modules):
    """The dtype of the first floating tensor of ``modules`` (their parameters, then buffers, then plain tensor
    attributes: a non-learnable cost may keep its weights as any of these), or None when they hold none."""
    for module in modules:
        tensors = [*module.parameters(), *module.buffers()]
        tensors += [v for m in module.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
        for tensor in tensors:
            if tensor.is_floating_point():
                return tensor.dtype
    return None


class MPCPolicy(nn.Module):
    """The first control of a differentiable MPC solve of ``cost`` over ``horizon`` steps of ``dynamics``,
    plus ``std * noise`` (clamped into the bounds) when exploring.

    Args:
        dynamics: the discrete model the solver plans with (a submodule: learnable tensors train too).
        cost: the :class:`trajopt.Cost` it minimizes, typically a :class:`LearnedCost`.
        horizon: planning horizon; u_lower, u_upper: finite control bounds, numbers or float tensors
            broadcastable to ``(m,)``.
        to_state: a callable ``obs (B, o) -> x (B, n)``; the identity when None (observations are states).
        noise_std: exploration standard deviation, in control units (fixed), finite and ``>= 0``: a number, or
            ``(m,)`` as a float tensor or a sequence of numbers (converted to the cost's dtype; its length is
            checked against ``m``).
        **options: options of :class:`trajopt.MPC`: ``solver`` (:func:`trajopt.ilqr` by default), ``max_iter``,
            ``first_max_iter`` and the solver's own (``grad``, ... for iLQR; ``samples``, ... for MPPI), checked
            against the solver's signature.

    Its gradient reaches the state, the cost's and the model's tensors by the solver's route: iLQR's implicit
    (or unrolled) one by default, or, with ``solver=trajopt.mppi`` (e.g. ``max_iter=1, samples=64``), MPPI's weights
    (under common random numbers; it does not vanish where the action is at a bound, as a box-constrained
    solve's does). The warm start follows the batch from call to call. Observations are not normalized
    (``raw_observations``).

    The policy's dtype (of its bounds and ``noise_std``) is that of the cost's tensors (parameters, buffers or
    tensor attributes), else of float tensor bounds, else of the model's tensors, else the default float dtype;
    at each call the bounds and ``noise_std`` are taken in the observations' dtype, so a float64 model and cost
    with number or float64 bounds plan in float64.
    """

    raw_observations = True

    def __init__(self, dynamics: Dynamics, cost: Cost, horizon: int, u_lower, u_upper, *, to_state=None,
                 noise_std=0.1, **options):
        super().__init__()
        where = "MPCPolicy"
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"{where}: dynamics must be a dynamics.Dynamics (discrete: call .discretize() on a "
                            f"ContinuousDynamics), got {type(dynamics).__name__}")
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost (e.g. a trajopt.rl.LearnedCost), got "
                            f"{type(cost).__name__}")
        check_callable(where, allow_none=True, to_state=to_state)
        bound_dtype = next((b.dtype for b in (u_lower, u_upper)
                            if isinstance(b, torch.Tensor) and b.is_floating_point()), None)
        dtype = _tensor_dtype(cost) or bound_dtype or _tensor_dtype(dynamics) or torch.get_default_dtype()
        like = torch.empty(0, dtype=dtype)
        lower, upper = _bounds(where, dynamics.control_dim, u_lower, u_upper, like)
        if isinstance(noise_std, bool):
            raise TypeError(f"{where}: noise_std must be a number or a float tensor broadcastable to (m,), got "
                            f"{noise_std!r}")
        std = _weights(where, "noise_std", noise_std, like.dtype)
        try:
            std = std.expand(lower.shape).clone()
        except RuntimeError:
            raise ValueError(f"{where}: noise_std has shape {tuple(std.shape)}; expected a number or a shape "
                             f"broadcastable to (m,) = {tuple(lower.shape)}") from None
        if not bool((torch.isfinite(std) & (std >= 0)).all()):
            raise ValueError(f"{where}: noise_std must be finite and >= 0, got {std.tolist()}")
        self.mpc = MPC(dynamics, cost, horizon, u_lower=lower, u_upper=upper, **options)
        self.to_state = to_state
        self.register_buffer("lower", lower)
        self.register_buffer("upper", upper)
        self.register_buffer("noise_std", std)

    def reset(self) -> None:
        """Forget the warm start."""
        self.mpc.reset()

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        x = obs if self.to_state is None else self.to_state(obs)
        lower, upper, std = self.lower, self.upper, self.noise_std
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != lower.dtype:
            lower, upper, std = (b.to(x.dtype) for b in (lower, upper, std))
        self.mpc.u_lower, self.mpc.u_upper = lower, upper
        u, _ = self.mpc(x)
        if noise is not None:
            if not isinstance(noise, torch.Tensor) or noise.shape != u.shape:
                raise ValueError(f"MPCPolicy: noise must be a tensor of the actions' shape {tuple(u.shape)}, got "
                                 f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
            u = clamp(u + std * noise, lower, upper)
        return u
