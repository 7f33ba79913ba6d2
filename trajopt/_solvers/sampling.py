"""Sampling-based trajectory optimization: MPPI, the cross-entropy method and random shooting.

All three perturb or draw whole control sequences, roll every one out with the shared
:func:`~trajopt.rollout` (problems x samples in one batch) and keep a statistic of the cheap ones:

- :func:`mppi` (Williams et al. 2017, information-theoretic MPPI): Gaussian perturbations of the
  current plan, optionally correlated in time, averaged with weights ``softmax(-cost / temperature)``;
  optionally smoothed; several iterations refine the plan.
- :func:`cem` (the planner of PlaNet, Hafner et al. 2019): a Gaussian over control sequences refitted
  to the elite samples at every iteration.
- :func:`random_shooting`: the best of independent samples.

Control bounds are kept by clamping each sample. Randomness comes from ``generator`` (a
``torch.Generator``), so a fixed seed gives common random numbers across calls.

Differentiable: :func:`mppi`'s plan with respect to ``x0`` and every tensor of the model and the cost
that requires grad, through the samples' costs and weights with the random draws held fixed (common
random numbers); the other two methods return detached plans.
"""
from __future__ import annotations

import functools
import math

import torch

from dynamics import Dynamics
from dynamics.validation import check_consistent
from .._core.costs import Cost
from .._core.bounds import check_bounds, clamp as clamp_to_bounds, clamped as _clamped, project as _project
from .._core.implicit import grad_tensors
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import rollout, unchecked_rollout

__all__ = ["mppi", "cem", "random_shooting"]

_STORED_ROWS = 2 ** 17    # sample-stages up to which _sample_costs stores the trajectories


def mppi(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
         horizon: int | None = None, samples: int = 1000, iterations: int = 1, temperature: float = 1.0,
         noise_std=1.0, correlation: float = 0.0, smoothing: int = 1, u_lower=None, u_upper=None,
         generator: torch.Generator | None = None, rollout_plan: bool = True, compile: bool = False) -> Solution:
    """Model-predictive path integral control on a batch of problems.

    Args:
        dynamics, cost, x0, U_init, horizon: as for :func:`trajopt.ilqr` (``x0 (B, n)``, ``U_init (B, T, m)``
            or zeros of length ``horizon``).
        samples: ``N`` perturbed sequences per problem and iteration.
        iterations: refinements of the plan (each draws fresh samples).
        temperature: ``lambda`` of the weights ``softmax(-(J_i - min J) / lambda)``; small values approach the
            best sample, large ones the plain mean.
        noise_std: standard deviation of the perturbations, a scalar or ``(m,)``.
        correlation: ``rho`` in ``[0, 1)`` of the time-correlated noise ``e_t = rho e_{t-1} + sqrt(1 - rho^2)
            w_t`` (same marginal spread; 0 gives white noise).
        smoothing: width of a moving average applied to each update along time (1: none).
        u_lower, u_upper: bounds broadcastable to ``(B, T, m)``; every sample is clamped into them.
        generator: the random source (common random numbers when seeded alike).
        rollout_plan: roll out the final plan for ``X`` and ``cost``. A receding-horizon loop that uses only
            the plan's first control can pass False: that skips one sequential pass, as long as all the
            samples' (its cost per control step halves at ``B = 1``), and ``X`` and ``cost`` are None.
        compile: cost the samples with a ``torch.compile``d rollout: the ``T`` steps of the model and the stage
            cost fuse into a few kernels (on a CPU this needs a C++ compiler). The first call for a model, a
            cost, a set of shapes and a grad mode compiles (here 35-57 s for P2's pendulum at ``T = 30`` with an
            empty inductor cache); beyond torch's recompile limit (8) calls run eagerly. Later calls cost the
            samples about three times as fast at ``B N = 32000``. Worth it for long receding-horizon runs, not
            for one solve. Values and gradients are the eager ones up to rounding.

    Returns:
        ``Solution`` with the plan ``U (B, T, m)``, its rollout ``X`` and ``cost``, ``iterations``, and
        ``history``: ``cost`` of the plan before each iteration and after the last ``(iterations+1, B)`` (without
        the last if ``rollout_plan`` is False),
        ``best_sample`` cost per iteration ``(iterations, B)`` and the ``weights`` of the last update
        ``(B, N)``. ``converged`` is True where the last iteration changed the plan's cost by at most 1e-6
        relative (sampling gives no optimality certificate).

    Differentiable with respect to ``x0`` and the model's and the cost's tensors (and ``U_init``) through
    every iteration's samples and weights, with the random draws held fixed: the exact derivative of the
    returned plan under common random numbers. The graph holds ``iterations`` rollouts of ``B N`` samples.
    """
    where = "mppi"
    x0, U, B, lower, upper = _setup(where, dynamics, cost, x0, U_init, horizon, u_lower, u_upper)
    _check_positive(where, samples=samples, iterations=iterations, temperature=temperature, smoothing=smoothing)
    if not 0.0 <= correlation < 1.0:
        raise ValueError(f"{where}: correlation must be in [0, 1), got {correlation}")
    std = _noise_std(where, noise_std, U)
    costs, best = [], []
    weights = None
    for _ in range(iterations):
        # the plan rides along as an unweighted extra sample, for its cost in the history
        trial = _perturbed(U, samples, lower, upper, generator, std, correlation)    # (B, 1 + N, T, m)
        J = _sample_costs(dynamics, cost, x0, trial, compile)
        costs.append(J[:, 0].detach())
        J = J[:, 1:]                                                                 # (B, N)
        logits = -(J - J.detach().amin(1, keepdim=True)) / temperature
        # weights that would fall below the smallest normal float are zero: denormal arithmetic in the update
        # below runs ~10x slower on CPUs, and such a weight changes nothing
        logits = logits.masked_fill(logits < math.log(torch.finfo(J.dtype).tiny), -math.inf)
        weights = torch.nan_to_num(torch.softmax(logits, 1))
        # sum_i w_i (trial_i - U); the reshape is a view of the time-major samples, the product one bmm
        drawn = trial[:, 1:].permute(0, 2, 3, 1).reshape(B, -1, samples)                # (B, T m, N)
        step = torch.bmm(drawn, weights.unsqueeze(-1)).view_as(U) - weights.sum(1).view(B, 1, 1) * U
        U = U + _smooth(step, smoothing)
        best.append(J.detach().amin(1))
    U = clamp_to_bounds(U, lower, upper)
    X, J = _plan_rollout(dynamics, cost, x0, U, rollout_plan, costs)
    history = {"cost": torch.stack(costs), "best_sample": torch.stack(best), "weights": weights.detach()}
    return Solution(X=X, U=U, cost=J, converged=_settled(costs), iterations=iterations, history=history)


def cem(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
        horizon: int | None = None, samples: int = 1000, iterations: int = 10, elites: int = 100,
        noise_std=1.0, min_std: float = 1e-3, momentum: float = 0.0, u_lower=None, u_upper=None,
        generator: torch.Generator | None = None, rollout_plan: bool = True, compile: bool = False) -> Solution:
    """The cross-entropy method on a batch of problems (PlaNet's planner).

    A diagonal Gaussian over control sequences, mean ``U_init`` (zeros of length ``horizon`` if None) and
    spread ``noise_std``, is refitted at every iteration to the ``elites`` cheapest of ``samples`` draws
    (clamped into the bounds); ``momentum`` keeps that fraction of the previous mean and spread, and the
    spread never falls below ``min_std``. Returns the final mean as the plan, with its rollout and cost;
    ``history``: ``cost`` of the mean before each iteration and after the last, ``best_sample`` per
    iteration, final ``std (B, T, m)``; ``converged`` where the spread has shrunk to ``min_std`` everywhere.
    ``rollout_plan=False`` skips the final mean's rollout (``X`` and ``cost`` None), and ``compile`` compiles the
    samples' rollout, as for :func:`mppi`.
    Not differentiable (the elites are chosen by sorting): the plan is detached.
    """
    where = "cem"
    x0, mean, B, lower, upper = _setup(where, dynamics, cost, x0, U_init, horizon, u_lower, u_upper)
    _check_positive(where, samples=samples, iterations=iterations, elites=elites, min_std=min_std)
    if elites > samples:
        raise ValueError(f"{where}: elites ({elites}) must not exceed samples ({samples})")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{where}: momentum must be in [0, 1), got {momentum}")
    x0, mean = x0.detach(), mean.detach()
    std = _noise_std(where, noise_std, mean).expand_as(mean).clone()
    T, m = mean.shape[-2:]
    costs, best = [], []
    with torch.no_grad():
        for _ in range(iterations):
            trial = _perturbed(mean, samples, lower, upper, generator, std)
            J = _sample_costs(dynamics, cost, x0, trial, compile)
            costs.append(J[:, 0])                                                    # the mean rides along
            J, trial = J[:, 1:], trial[:, 1:]
            idx = J.topk(elites, 1, largest=False).indices                          # (B, E)
            elite = trial.gather(1, idx.view(B, elites, 1, 1).expand(B, elites, T, m))
            mean = momentum * mean + (1 - momentum) * elite.mean(1)
            std = (momentum * std + (1 - momentum) * elite.std(1, unbiased=False)).clamp_min(min_std)
            best.append(J.amin(1))
        X, J = _plan_rollout(dynamics, cost, x0, mean, rollout_plan, costs)
    history = {"cost": torch.stack(costs), "best_sample": torch.stack(best), "std": std}
    converged = (std <= min_std).flatten(1).all(1)
    return Solution(X=X, U=mean, cost=J, converged=converged, iterations=iterations, history=history)


def random_shooting(dynamics: Dynamics, cost: Cost, x0: torch.Tensor, U_init: torch.Tensor | None = None, *,
                    horizon: int | None = None, samples: int = 1000, noise_std=None, u_lower=None,
                    u_upper=None, generator: torch.Generator | None = None, compile: bool = False) -> Solution:
    """The cheapest of ``samples`` random control sequences per problem (``U_init`` is one of them).

    With ``noise_std`` None the samples are uniform between the bounds (both must be finite); otherwise
    Gaussian around ``U_init`` with that spread, clamped into the bounds. Returns the best sequence, its
    rollout and cost; ``history``: ``costs`` of every sample ``(B, samples)``. ``converged`` is all True
    (one pass, nothing to converge). ``compile`` as for :func:`mppi`. Not differentiable: the plan is detached.
    """
    where = "random_shooting"
    x0, U, B, lower, upper = _setup(where, dynamics, cost, x0, U_init, horizon, u_lower, u_upper)
    _check_positive(where, samples=samples)
    x0, U = x0.detach(), U.detach()
    if noise_std is None and (lower is None or upper is None
                              or not bool(torch.isfinite(lower).all() & torch.isfinite(upper).all())):
        raise ValueError(f"{where}: uniform samples need finite u_lower and u_upper; or give noise_std")
    std = None if noise_std is None else _noise_std(where, noise_std, U)
    with torch.no_grad():
        trial = _perturbed(U, samples - 1, lower, upper, generator, std)
        J = _sample_costs(dynamics, cost, x0, trial, compile)
        pick = J.argmin(1)
        U = trial[torch.arange(B, device=U.device), pick]
        X = rollout(dynamics, x0, U)
    return Solution(X=X, U=U, cost=cost(X, U), converged=torch.ones(B, dtype=torch.bool, device=U.device),
                    iterations=1, history={"costs": J})


def _setup(where, dynamics, cost, x0, U_init, horizon, u_lower, u_upper):
    """Shared checks: batched ``x0 (B, n)``, ``U (B, T, m)`` clamped into the bounds, and the bounds
    ``(B, T, m)`` (or None)."""
    x0, U, dims = check_problem(where, dynamics, cost, x0, U_init, horizon)
    batch = check_consistent(where, {"x0": x0, "U_init": U}, {"x0": 1, "U_init": 2})
    if batch is None:
        raise ValueError(f"{where}: give a batch: x0 (B, n) (or U_init (B, T, m)); got x0 {tuple(x0.shape)}")
    shape = (batch, *U.shape[-2:])
    x0 = x0.expand(batch, dims["n"])
    lower, upper = check_bounds(where, u_lower, u_upper, shape, x0)
    return x0, clamp_to_bounds(U.expand(shape), lower, upper), batch, lower, upper


def _plan_rollout(dynamics, cost, x0, U, wanted, costs):
    """The final plan's rollout and cost (its cost appended to the history ``costs``), or None and None."""
    if not wanted:
        return None, None
    X = rollout(dynamics, x0, U)
    J = cost(X, U)
    costs.append(J.detach())
    return X, J


def _settled(costs):
    """Whether the plan's cost changed by at most 1e-6 relative over the last iteration, ``(B,)``."""
    if len(costs) < 2:
        return torch.zeros_like(costs[-1], dtype=torch.bool)
    return (costs[-1] - costs[-2]).abs() <= 1e-6 * costs[-2].abs().clamp_min(1.0)


def _check_positive(where, **values):
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{where}: {name} must be positive, got {value}")


def _noise_std(where, noise_std, like):
    std = torch.as_tensor(noise_std, dtype=like.dtype, device=like.device)
    m = like.shape[-1]
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != m) or not bool((std > 0).all()):
        raise ValueError(f"{where}: noise_std must be a positive scalar or ({m},), got {tuple(std.shape)}")
    return std


def _perturbed(U, N, lower, upper, generator, std=None, rho=0.0):
    """``U (B, T, m)`` and ``N`` samples around it, clamped into the bounds: ``(B, 1 + N, T, m)``, ``U`` first.

    The samples are ``U + std e`` with ``e`` standard Gaussian, AR(1)-correlated in time by ``rho``
    (``std`` broadcastable to ``(B, T, m)``); with ``std`` None, uniform between the (finite) bounds. They are
    drawn and laid out time-major (``permute(2, 3, 0, 1)`` of the result is contiguous): :func:`_sample_costs`
    steps through them one time step at a time, and the weighted sums over samples read contiguous memory.
    """
    B, T, m = U.shape
    opts = dict(dtype=U.dtype, device=U.device, generator=generator)
    time_major = lambda a: a.permute(1, 2, 0).unsqueeze(-1).contiguous()  # noqa: E731  (B, T, m) -> (T, m, B, 1)
    lower, upper = (None if b is None else time_major(b) for b in (lower, upper))
    if std is None:
        trial = lower + torch.rand(T, m, B, 1 + N, **opts).mul_(upper - lower)
        trial[..., 0] = U.permute(1, 2, 0)
        return trial.permute(2, 3, 0, 1)
    w = torch.randn(T, m, B, 1 + N, **opts)
    w[..., 0] = 0.0                                                       # sample 0: U itself
    for t in range(1, T if rho > 0 else 0):
        w[t] = rho * w[t - 1] + (1 - rho ** 2) ** 0.5 * w[t]
    w.mul_(time_major(std) if std.ndim == 3 else std.view(-1, 1, 1))     # std (B, T, m), (m,) or a scalar
    if torch.is_grad_enabled() and any(a is not None and a.requires_grad for a in (U, std, lower, upper)):
        return clamp_to_bounds(time_major(U) + w, lower, upper).permute(2, 3, 0, 1)
    # in place: each temporary as large as the samples costs a fresh allocation (page faults) as well
    w.add_(time_major(U))
    for bound, clamp in ((lower, torch.maximum), (upper, torch.minimum)):
        if bound is not None:
            clamp(w, bound, out=w)
    return w.permute(2, 3, 0, 1)


def _smooth(update, width):
    """Moving average of ``update (B, T, m)`` along time over ``width`` steps (edges averaged over fewer)."""
    if width == 1:
        return update
    B, T, m = update.shape
    kernel = update.new_ones(m, 1, width)
    x = update.transpose(1, 2)                                              # (B, m, T)
    pad = (width // 2, width - 1 - width // 2)
    total = torch.nn.functional.conv1d(torch.nn.functional.pad(x, pad), kernel, groups=m)
    count = torch.nn.functional.conv1d(torch.nn.functional.pad(torch.ones_like(x[:1, :1]), pad),
                                       update.new_ones(1, 1, width))
    return (total / count).transpose(1, 2)


def _sample_costs(dynamics, cost, x0, trial, compile=False):
    """Costs ``(B, N)`` of control sequences ``trial (B, N, T, m)`` from ``x0 (B, n)``, as one batch.

    Small batches are rolled out with the shared rollout loop (:func:`~trajopt.rollout.unchecked_rollout`: the
    samples need no NaN scan) and costed over all stages at once
    (fewest operations). Large ones, and every batch with ``compile``, sum the stage costs along the rollout
    instead (:func:`_summed_costs`): storing and re-reading ``B N`` trajectories then costs more than the
    arithmetic (one MPPI call on P2, 1000 samples, horizon 30, one thread: 74 ms stored against 23 ms summed
    at B=32; 4.6 against 5.4 ms the other way round at B=1)."""
    B, N, T, m = trial.shape
    if B * N * T <= _STORED_ROWS and not compile:
        flat = trial.flatten(0, 1)
        J = cost(unchecked_rollout(dynamics, x0.repeat_interleave(N, 0), flat), flat).view(B, N)
    else:
        U = trial.permute(2, 3, 0, 1).reshape(T, m, B * N)       # time-major: a view of _perturbed's samples
        x = x0.mT.repeat_interleave(N, 1).mT                        # (B N, n), kept column by column
        J = (_compiled_summed_costs() if compile else _summed_costs)(dynamics, cost, x, U).view(B, N)
    return torch.where(torch.isfinite(J), J, torch.full_like(J, float("inf")))


def _summed_costs(dynamics, cost, x, U):
    """``sum_t stage(x_t, u_t, t) + terminal(x_T)`` (the cost's definition) along the rollout from ``x (R, n)``
    under ``U (T, m, R)``, ``(R,)``; ``u_t = U[t].mT`` is a column-major view, and so are the states when the
    model builds them with :func:`dynamics.stack_columns`."""
    J = 0.0
    for t in range(U.shape[0]):
        u = U[t].mT
        J = J + cost.stage(x, u, t)
        x = dynamics(x, u, t)
    return J + cost.terminal(x)


@functools.cache
def _compiled_summed_costs():
    """:func:`_summed_costs` compiled once per process (shapes static: ``T`` unrolls into one kernel)."""
    return torch.compile(_summed_costs, dynamic=False)
