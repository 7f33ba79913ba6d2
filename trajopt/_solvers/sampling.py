"""Sampling-based trajectory optimization: MPPI, the cross-entropy method and random shooting.

All three perturb or draw whole control sequences, roll every one out with the shared
:func:`~trajopt.rollout` (problems x samples in one batch) and keep a statistic of the cheap ones:

- :func:`mppi` (Williams et al. 2017, information-theoretic MPPI): Gaussian perturbations of the
  current plan, optionally correlated in time, averaged with weights ``softmax(-cost / temperature)``;
  optionally smoothed; several iterations refine the plan.
- :func:`cem` (the planner of PlaNet, Hafner et al. 2019): a Gaussian over control sequences refitted
  to the elite samples at every iteration.
- :func:`random_shooting`: the best of independent samples.

Each takes a :class:`~trajopt.Problem` (its ``x0``, ``U_init`` and control bounds; state bounds and a
constraint are not used). Control bounds are kept by clamping each sample. Randomness comes from
``generator`` (a ``torch.Generator``), so a fixed seed gives common random numbers across calls.

Sampling gives no optimality certificate: every problem ends ``Status.NO_CERTIFICATE``, except one whose
model or cost is not finite (``Status.NOT_FINITE``). A sample counts as non-finite when its cost or its
final state is (cost ``inf``, weight zero); a problem none of whose samples is finite keeps its plan for
that iteration, and a problem whose final plan rolls out to a non-finite trajectory returns ``x0`` held over
the horizon and ``cost = inf``. The other problems of the batch are unaffected.

Differentiable: :func:`mppi`'s plan with respect to ``x0`` and every tensor of the model and the cost
that requires grad, through the samples' costs and weights with the random draws held fixed (common
random numbers); the other two methods return detached plans.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from .._core.bounds import clamp as clamp_to_bounds
from .._core.checks import check_bool, check_fraction, check_int, check_positive
from .._core.compiled import compiled
from .._core.problem import Problem, Solution, Status, solver
from .._core.rollout import unchecked_rollout
from .._core.stages import check_rows

__all__ = ["mppi", "cem", "random_shooting"]

STORED_ROWS = 2 ** 17    # sample-stages up to which sample_costs stores the trajectories


@solver(takes=())
def mppi(problem: Problem, *, samples: int = 1000, max_iter: int = 1, temperature: float = 1.0, noise_std=1.0,
         correlation: float = 0.0, smoothing: int = 1, proposals: torch.Tensor | None = None,
         generator: torch.Generator | None = None, rollout_plan: bool = True, compile: bool = False) -> Solution:
    """Model-predictive path integral control on a batch of problems.

    Starts from ``problem.U_init`` (clamped into the bounds); every sample is clamped into ``problem.u_lower``,
    ``problem.u_upper``.

    Args:
        problem: the batch of problems (state bounds and a constraint are not used).
        samples: ``N`` perturbed sequences per problem and iteration.
        max_iter: refinements of the plan (each draws fresh samples); every problem runs all of them.
        temperature: ``lambda`` of the weights ``softmax(-(J_i - min J) / lambda)``; small values approach the
            best sample, large ones the plain mean.
        noise_std: standard deviation of the perturbations, a finite positive number, or one per control (a
            tensor ``(m,)``, or a NumPy array, list or tuple of ``m`` numbers, converted to the problem's dtype).
        correlation: ``rho`` in ``[0, 1)`` of the time-correlated noise ``e_t = rho e_{t-1} + sqrt(1 - rho^2)
            w_t`` (same marginal spread; 0 gives white noise).
        smoothing: width of a moving average applied to each update along time (1: none).
        proposals: None, or ``K`` candidate sequences of each problem's own, ``(B, K, T, m)`` (``(K, T, m)`` for an
            unbatched problem; the problem's dtype and device, finite): a policy's rollouts, say. Clamped into the
            bounds like every sample, they join the ``N`` perturbed samples of every iteration as samples with zero
            noise: costed with them and weighted in the same softmax (``N + K`` weights). None (the default) changes
            nothing.
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
        :class:`~trajopt.Solution` with the plan ``U (B, T, m)``, its rollout ``X (B, T+1, n)`` and ``cost (B,)``,
        ``status`` (``NO_CERTIFICATE``; ``NOT_FINITE`` where the final plan's rollout or cost is not finite:
        ``X`` is then ``x0`` held over the horizon and ``cost = inf``), ``iterations (B,)`` (``max_iter``),
        ``cost_history (B, max_iter+1)``: the plan's cost before each iteration and after the last (without
        the last, ``(B, max_iter)``, when ``rollout_plan`` is False), ``residual`` None, and ``extras``:
        ``best_sample (B, max_iter)``, the cheapest sample's cost per iteration, and ``weights (B, N)`` of the
        last update (detached; ``(B, N + K)`` with proposals, theirs last; both count the proposals as samples). A sample whose cost or final state is not finite gets cost ``inf`` and weight
        zero; a problem with no finite sample keeps its plan for that iteration. With ``rollout_plan`` False a
        problem is ``NOT_FINITE`` when nothing of its last iteration was finite, the plan it kept included.

    Differentiable with respect to ``x0`` and the model's and the cost's tensors (and ``U_init`` and
    ``proposals``) through every iteration's samples and weights, with the random draws held fixed: the exact derivative of the
    returned plan under common random numbers. The graph holds ``max_iter`` rollouts of ``B N`` samples.
    """
    where = "mppi"
    _check_switches(where, generator, rollout_plan=rollout_plan, compile=compile)
    check_int(where, samples=samples, max_iter=max_iter, smoothing=smoothing)
    check_positive(where, temperature=temperature)
    check_fraction(where, correlation=correlation)
    B, x0, U, lower, upper = problem.B, problem.x0, problem.U_init, problem.u_lower, problem.u_upper
    std = _noise_std(where, noise_std, U)
    extra = _proposals(where, proposals, problem)                                   # (T, m, B, K) or None
    count = samples + (0 if extra is None else extra.shape[-1])
    costs, best = [], []
    for _ in range(max_iter):
        # the plan rides along as an unweighted extra sample, for its cost in the history
        trial = perturbed(U, samples, lower, upper, generator, std, correlation)    # (B, 1 + N, T, m)
        if extra is not None:         # the proposals after the samples, still time-major: (B, 1 + N + K, T, m)
            trial = torch.cat([trial.permute(2, 3, 0, 1), extra], -1).permute(2, 3, 0, 1)
        J = sample_costs(problem, x0, trial, compile)
        costs.append(J[:, 0].detach())
        J = J[:, 1:]                                                                 # (B, N [+ K])
        logits = -(J - J.detach().amin(1, keepdim=True)) / temperature
        # weights that would fall below the smallest normal float are zero: denormal arithmetic in the update
        # below runs ~10x slower on CPUs, and such a weight changes nothing
        logits = logits.masked_fill(logits < math.log(torch.finfo(J.dtype).tiny), -math.inf)
        # a non-finite sample (cost inf) has weight 0; a problem with no finite sample gets NaN logits, all its
        # weights 0 and so a zero step: it keeps its plan
        weights = torch.nan_to_num(torch.softmax(logits, 1))
        # sum_i w_i (trial_i - U); the reshape is a view of the time-major samples, the product one bmm
        drawn = trial[:, 1:].permute(0, 2, 3, 1).reshape(B, -1, count)                  # (B, T m, N [+ K])
        step = torch.bmm(drawn, weights.unsqueeze(-1)).view_as(U) - weights.sum(1).view(B, 1, 1) * U
        U = U + smooth(step, smoothing)
        best.append(J.detach().amin(1))
    U = clamp_to_bounds(U, lower, upper)
    extras = {"best_sample": torch.stack(best, 1), "weights": weights.detach()}
    return _solution(problem, U, rollout_plan, costs, best, max_iter, extras)


@solver(takes=())
def cem(problem: Problem, *, samples: int = 1000, max_iter: int = 10, elites: int = 100, noise_std=1.0,
        min_std: float = 1e-3, momentum: float = 0.0, generator: torch.Generator | None = None,
        rollout_plan: bool = True, compile: bool = False) -> Solution:
    """The cross-entropy method on a batch of problems (PlaNet's planner).

    A diagonal Gaussian over control sequences, mean ``problem.U_init`` and spread ``noise_std`` (as for
    :func:`mppi`: a finite positive number or ``m`` of them), is refitted at every one of ``max_iter`` iterations to the ``elites``
    cheapest of ``samples`` draws (clamped into the problem's control bounds); ``momentum`` (in ``[0, 1)``)
    keeps that fraction of the previous mean and spread, and the spread never falls below ``min_std``. A
    problem none of whose samples is finite (cost or final state) keeps its mean and spread for that iteration.

    Returns:
        :class:`~trajopt.Solution` with the final mean as the plan ``U (B, T, m)``, its rollout ``X`` and
        ``cost``, ``status`` (``NO_CERTIFICATE``, or ``NOT_FINITE`` as for :func:`mppi`), ``iterations (B,)``,
        ``cost_history (B, max_iter+1)`` (the mean's cost before each iteration and after the last; without
        the last when ``rollout_plan`` is False), and ``extras``: ``best_sample (B, max_iter)`` and the final
        ``std (B, T, m)``.

    ``rollout_plan=False`` skips the final mean's rollout (``X`` and ``cost`` None), and ``compile`` compiles the
    samples' rollout, as for :func:`mppi`.
    Not differentiable (the elites are chosen by sorting): the plan is detached.
    """
    where = "cem"
    _check_switches(where, generator, rollout_plan=rollout_plan, compile=compile)
    check_int(where, samples=samples, max_iter=max_iter, elites=elites)
    check_positive(where, min_std=min_std)
    if elites > samples:
        raise ValueError(f"{where}: elites ({elites}) must not exceed samples ({samples})")
    check_fraction(where, momentum=momentum)
    B, T, m, lower, upper = problem.B, problem.T, problem.m, problem.u_lower, problem.u_upper
    x0, mean = problem.x0.detach(), problem.U_init.detach()
    std = _noise_std(where, noise_std, mean).expand_as(mean).clone()
    costs, best = [], []
    with torch.no_grad():
        for _ in range(max_iter):
            trial = perturbed(mean, samples, lower, upper, generator, std)
            J = sample_costs(problem, x0, trial, compile)
            costs.append(J[:, 0])                                                    # the mean rides along
            J, trial = J[:, 1:], trial[:, 1:]
            idx = J.topk(elites, 1, largest=False).indices                          # (B, E)
            elite = trial.gather(1, idx.view(B, elites, 1, 1).expand(B, elites, T, m))
            some = torch.isfinite(J).any(1).view(B, 1, 1)                            # else: keep the Gaussian
            mean = torch.where(some, momentum * mean + (1 - momentum) * elite.mean(1), mean)
            std = torch.where(some, (momentum * std + (1 - momentum) * elite.std(1, unbiased=False))
                              .clamp_min(min_std), std)
            best.append(J.amin(1))
        return _solution(problem, mean, rollout_plan, costs, best, max_iter, {"best_sample": torch.stack(best, 1),
                                                                               "std": std})


@solver(takes=())
def random_shooting(problem: Problem, *, samples: int = 1000, noise_std=None,
                    generator: torch.Generator | None = None, compile: bool = False) -> Solution:
    """The cheapest of ``samples`` random control sequences per problem (``problem.U_init`` is one of them).

    With ``noise_std`` None the samples are uniform between the problem's control bounds (both must be
    finite); otherwise Gaussian around ``U_init`` with that spread (as for :func:`mppi`),
    clamped into the bounds. ``compile`` as for :func:`mppi`.

    Returns:
        :class:`~trajopt.Solution` with the best sequence ``U (B, T, m)``, its rollout ``X`` and ``cost``,
        ``status`` (``NO_CERTIFICATE``; ``NOT_FINITE`` where the chosen sequence's rollout is not finite, as
        when no sample is: ``U`` is then ``U_init``, ``X`` is ``x0`` held over the horizon and ``cost = inf``),
        ``iterations (B,)`` (1),
        ``cost_history (B, 2)`` (``U_init``'s cost and the best one), and ``extras``: ``costs (B, samples)`` of
        every sample (``inf`` where its cost or final state is not finite), ``U_init``'s first.

    Not differentiable: the plan is detached.
    """
    where = "random_shooting"
    _check_switches(where, generator, compile=compile)
    check_int(where, samples=samples)
    B, lower, upper = problem.B, problem.u_lower, problem.u_upper
    x0, U = problem.x0.detach(), problem.U_init.detach()
    if noise_std is None and (lower is None or upper is None
                              or not bool(torch.isfinite(lower).all() & torch.isfinite(upper).all())):
        raise ValueError(f"{where}: uniform samples need finite u_lower and u_upper; or give noise_std")
    std = None if noise_std is None else _noise_std(where, noise_std, U)
    with torch.no_grad():
        trial = perturbed(U, samples - 1, lower, upper, generator, std)
        J = sample_costs(problem, x0, trial, compile)
        pick = torch.where(torch.isfinite(J).any(1), J.argmin(1), 0)               # none finite: U_init
        U = trial[torch.arange(B, device=U.device), pick]
        return _solution(problem, U, True, [J[:, 0]], [J.amin(1)], 1, {"costs": J})


def _solution(problem, U, rollout_plan, costs, best, iterations, extras):
    """The :class:`Solution` of the final plan ``U``: its rollout and cost unless ``rollout_plan`` is False (then
    None), appended to the plan costs ``costs``, and the status of each problem. ``best`` holds the cheapest
    sample's cost per iteration (``inf`` when no sample was finite)."""
    B, T, n = problem.B, problem.T, problem.n
    if rollout_plan:
        X = unchecked_rollout(problem.dynamics, problem.x0, U)
        J = problem.cost(X, U)
        finite = torch.isfinite(J) & torch.isfinite(X).flatten(1).all(-1)
        held = problem.x0.unsqueeze(1).expand(B, T + 1, n)
        if J.requires_grad and not bool(finite.all()):   # a graph without the NaN rows (see sample_costs)
            rows = finite.nonzero().flatten()
            with problem.at(rows):
                X = held.index_put((rows,), unchecked_rollout(problem.dynamics, problem.x0[rows], U[rows]))
                J = J.new_full((B,), math.inf).index_put((rows,), problem.cost(X[rows], U[rows]))
        # a problem whose plan rolls out to NaN/Inf: x0 held over the horizon, cost inf (no NaN returned)
        X = torch.where(finite.view(B, 1, 1), X, held)
        J = torch.where(finite, J, math.inf)
        costs.append(J.detach())
    else:
        X = J = None
        # the plan is known to be non-finite only where nothing of the last iteration was finite: it was kept
        finite = torch.isfinite(costs[-1]) | torch.isfinite(best[-1])
    status = torch.where(finite, int(Status.NO_CERTIFICATE), int(Status.NOT_FINITE))
    return Solution(X=X, U=U, cost=J, status=status,
                    iterations=torch.full((B,), iterations, dtype=torch.long, device=problem.device),
                    cost_history=torch.stack(costs, 1), extras=extras)


def _check_switches(where, generator, **switches):
    """``generator`` None or a ``torch.Generator``, and each switch a bool."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__} "
                        "(seed one with torch.Generator().manual_seed(seed))")
    check_bool(where, **switches)


def _noise_std(where, noise_std, like):
    """``noise_std`` as a tensor of ``like``'s dtype: a number, or ``m`` of them (a tensor ``(m,)``, a NumPy array,
    a list or tuple), every entry finite and positive."""
    if not isinstance(noise_std, (numbers.Real, list, tuple, np.ndarray, torch.Tensor)) or isinstance(noise_std, bool):
        raise TypeError(f"{where}: noise_std must be a number or a tensor of shape ({like.shape[-1]},), got "
                        f"{type(noise_std).__name__}")
    std = torch.as_tensor(noise_std, dtype=like.dtype, device=like.device)
    m = like.shape[-1]
    if std.ndim > 1 or (std.ndim == 1 and std.shape[0] != m):
        raise ValueError(f"{where}: noise_std must be a scalar or ({m},), got shape {tuple(std.shape)}")
    for value in std.detach().reshape(-1).tolist():
        check_positive(where, noise_std=value)
    return std


def _proposals(where, proposals, problem):
    """``proposals`` (None, or ``(B, K, T, m)`` of the problem's dtype and device, finite; ``(K, T, m)`` for an
    unbatched problem) clamped into the problem's bounds and laid out time-major as :func:`perturbed`'s samples:
    ``(T, m, B, K)``. Differentiable (the clamp). A TypeError or ValueError names ``proposals`` otherwise."""
    if proposals is None:
        return None
    B, T, m = problem.B, problem.T, problem.m
    want = f"(B, K, T, m) = ({B}, K, {T}, {m})" + ("" if problem.batched else f" or (K, T, m) = (K, {T}, {m})")
    if not isinstance(proposals, torch.Tensor):
        raise TypeError(f"{where}: proposals must be None or a tensor {want}, got {type(proposals).__name__}")
    if not problem.batched and proposals.ndim == 3:
        proposals = proposals.unsqueeze(0)
    if proposals.ndim != 4 or proposals.shape[0] != B or tuple(proposals.shape[2:]) != (T, m):
        raise ValueError(f"{where}: proposals has shape {tuple(proposals.shape)}; expected {want}")
    if proposals.dtype != problem.dtype:
        raise TypeError(f"{where}: proposals is {proposals.dtype} but the problem is {problem.dtype}; convert it "
                        f"(proposals.to({problem.dtype}))")
    if proposals.device != problem.device:
        raise ValueError(f"{where}: proposals is on {proposals.device} but the problem on {problem.device}")
    if not bool(torch.isfinite(proposals).all()):
        raise ValueError(f"{where}: proposals contains NaN or Inf")
    lower, upper = (None if b is None else b.unsqueeze(1) for b in (problem.u_lower, problem.u_upper))
    return clamp_to_bounds(proposals, lower, upper).permute(2, 3, 0, 1)


def perturbed(U, N, lower, upper, generator, std=None, rho=0.0):
    """``U (B, T, m)`` and ``N`` samples around it, clamped into the bounds: ``(B, 1 + N, T, m)``, ``U`` first.

    The samples are ``U + std e`` with ``e`` standard Gaussian, AR(1)-correlated in time by ``rho``
    (``std`` broadcastable to ``(B, T, m)``); with ``std`` None, uniform between the (finite) bounds. They are
    drawn and laid out time-major (``permute(2, 3, 0, 1)`` of the result is contiguous): :func:`sample_costs`
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


def smooth(update, width):
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


def sample_costs(problem, x0, trial, compile=False):
    """Costs ``(B, N)`` of control sequences ``trial (B, N, T, m)`` from ``x0 (B, n)``, as one batch; ``inf``
    where the cost or the final state is not finite (a cost without a terminal term misses a final NaN state).

    With a graph, the finite samples are costed ``again`` without the others when some are not: a NaN in the
    graph would turn the zero gradient of a non-finite sample into NaN gradients (``0 * NaN``) of every tensor
    the samples share (the model's and the cost's).

    Small batches are rolled out with the shared rollout loop (:func:`~trajopt.rollout.unchecked_rollout`: the
    samples need no NaN scan) and costed over all stages at once
    (fewest operations). Large ones, and every batch with ``compile``, sum the stage costs along the rollout
    instead (:func:`_summed_costs`): storing and re-reading ``B N`` trajectories then costs more than the
    arithmetic (one MPPI call on P2, 1000 samples, horizon 30, one thread: 74 ms stored against 23 ms summed
    at B=32; 4.6 against 5.4 ms the other way round at B=1)."""
    B, N = trial.shape[:2]
    with problem.at_repeated(N):                                    # rows b N .. b N + N - 1 are problem b's
        J = _costs(problem.dynamics, problem.cost, x0, trial, compile)
    finite = torch.isfinite(J)
    if J.requires_grad and not bool(finite.all()):
        rows = finite.flatten().nonzero().flatten()
        with problem.at(torch.arange(B, device=x0.device).repeat_interleave(N)[rows] if problem.per_problem else None):
            redone = _costs(problem.dynamics, problem.cost, x0.repeat_interleave(N, 0)[rows],
                            trial.flatten(0, 1)[rows, None], compile)
        return J.new_full((B * N,), math.inf).index_put((rows,), redone.flatten()).view(B, N)
    return torch.where(finite, J, torch.full_like(J, float("inf")))


def _costs(dynamics, cost, x0, trial, compile):
    """:func:`sample_costs` of one batch, without the second pass (non-finite costs as they come)."""
    B, N, T, m = trial.shape
    if (B * N * T <= STORED_ROWS and not compile) or not cost.separable:      # stages coupled: whole trajectories
        flat = trial.flatten(0, 1)
        X = unchecked_rollout(dynamics, x0.repeat_interleave(N, 0), flat)
        return torch.where(torch.isfinite(X[:, -1]).all(-1), cost(X, flat), math.inf).view(B, N)
    U = trial.permute(2, 3, 0, 1).reshape(T, m, B * N)       # time-major: a view of perturbed's samples
    x = x0.mT.repeat_interleave(N, 1).mT                        # (B N, n), kept column by column
    return (compiled(_summed_costs, x.device.type) if compile else _summed_costs)(dynamics, cost, x, U).view(B, N)


def _summed_costs(dynamics, cost, x, U):
    """``sum_t stage(x_t, u_t, t) + terminal(x_T)`` (the cost's definition) along the rollout from ``x (R, n)``
    under ``U (T, m, R)``, ``(R,)``, and ``inf`` where the final state ``x_T`` is not finite; ``u_t = U[t].mT`` is a
    column-major view, and so are the states when the model builds them with :func:`dynamics.stack_columns`."""
    J, R = 0.0, x.shape[0]
    for t in range(U.shape[0]):
        u = U[t].mT
        J = J + check_rows(cost, cost.stage, cost.stage(x, u, t), R, x, True)
        x = dynamics(x, u, t)
    return torch.where(torch.isfinite(x).all(-1), J + check_rows(cost, cost.terminal, cost.terminal(x), R, x, True),
                       math.inf)
