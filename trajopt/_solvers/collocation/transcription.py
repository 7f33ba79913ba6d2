"""The two transcriptions (collocation intervals of a continuous model, shooting segments of a discrete one),
the :class:`Transcription` that joins knots and controls into intervals, and the interval-wise Jacobians both
back ends and the implicit gradient use (block sparse, built from batched backward passes, stored dense)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..._core.per_problem import has_per_problem, rows
from ..._core.rollout import unchecked_rollout
from ..._core.stages import over_stages

__all__ = ["METHODS", "derivative", "collocation_interval", "shooting_interval", "Transcription",
           "interval_jacobians", "block_diagonal", "knot_jacobian", "defect_jacobian", "violation", "Outcome"]

METHODS = ("hermite_simpson", "trapezoidal")


def derivative(model, x, u):
    """``model.derivative`` on ``x (B, K, n)``, ``u (B, K, m)``: the interval index ``k`` is the stage index."""
    return over_stages(model.derivative, model, x, u)


def collocation_interval(model, dt, method):
    """Defects ``(B, K, n)`` and stage states ``(B, K, 1, n)`` of intervals ``left -> right`` under the held
    controls ``U (B, K, 1, m)``."""
    def interval(left, U, right):
        u = U[:, :, 0]
        fl, fr = derivative(model, left, u), derivative(model, right, u)
        if method == "trapezoidal":
            end = left + 0.5 * dt * (fl + fr)
        else:
            fm = derivative(model, 0.5 * (left + right) + 0.125 * dt * (fl - fr), u)
            end = left + dt / 6.0 * (fl + 4.0 * fm + fr)
        return end - right, left.unsqueeze(2)
    return interval


def shooting_interval(dynamics):
    """Defects ``(B, K, n)`` (rollout end minus next knot) and the rollout states ``(B, K, s, n)`` of segments
    of controls ``U (B, K, s, m)``; one rollout for all problems x segments (a time-varying model: one per segment,
    from its own first stage), unchecked: a knot may be non-finite (the solver judges the rows)."""
    def interval(left, U, right):
        B, K, s, m = U.shape
        n = left.shape[-1]
        if dynamics.time_varying:
            X = torch.stack([unchecked_rollout(dynamics, left[:, k], U[:, k], k * s) for k in range(K)], 1)
        else:       # rows problem-major: a model's per-problem tensors repeated for each segment
            index = torch.arange(B, device=left.device).repeat_interleave(K) if has_per_problem(dynamics) else None
            with rows(index, dynamics):
                X = unchecked_rollout(dynamics, left.reshape(B * K, n), U.reshape(B * K, s, m)).view(B, K, s + 1, n)
        return X[:, :, -1] - right, X[:, :, :s]
    return interval


class Transcription:
    """Knots ``S (B, K+1, n)`` (``S[:, 0] = x0``, the others decision variables) and controls ``U (B, T, m)``,
    ``T = K s``: interval ``k`` joins ``S[:, k]`` to ``S[:, k+1]`` under ``U[:, k s:(k+1) s]``. ``model``: the
    module whose tensors the intervals use (for the implicit gradient)."""

    def __init__(self, interval, T, segment, n, m, model):
        self.interval, self.T, self.s, self.K, self.n, self.m = interval, T, segment, T // segment, n, m
        self.model = model

    def knots(self, x0, flat):
        """``S (B, K+1, n)`` from ``x0 (B, n)`` and the flat knot variables ``(B, K n)``."""
        return torch.cat([x0.unsqueeze(1), flat.view(-1, self.K, self.n)], 1)

    def pieces(self, S, U):
        return self.interval(S[:, :-1], U.view(-1, self.K, self.s, self.m), S[:, 1:])

    def defects(self, S, U):
        return self.pieces(S, U)[0]

    def states(self, S, U):
        """The whole trajectory ``X (B, T+1, n)`` (the rollouts of the segments, then the last knot)."""
        stage = self.pieces(S, U)[1]
        return torch.cat([stage.reshape(S.shape[0], self.T, self.n), S[:, -1:]], 1)


def interval_jacobians(fn, inputs, graph):
    """``r = fn(*inputs) (B, K, d)`` and its Jacobians ``(B, K, d, *z.shape[2:])`` in each input ``z (B, K, ...)``,
    where interval ``k`` of ``r`` depends on interval ``k`` of the inputs alone: the rows of every interval's
    block come from ``d`` batched backward passes of ``r`` summed over the intervals (never a dense Jacobian).
    ``graph``: keep the graph (a differentiable ``r`` and Jacobian)."""
    with torch.enable_grad():
        leaves = [z if graph and z.requires_grad else z.detach().requires_grad_(True) for z in inputs]
        r = fn(*leaves)
        if not r.requires_grad:         # constant in every input (e.g. the gradient of a linear function)
            jac = [r.new_zeros(*r.shape, *z.shape[2:]) for z in leaves]
            return r.detach(), jac
        d = r.shape[-1]
        eye = torch.eye(d, dtype=r.dtype, device=r.device).view(d, 1, 1, d).expand(d, *r.shape)
        jac = torch.autograd.grad(r, leaves, eye, is_grads_batched=True, create_graph=graph, allow_unused=True,
                                  materialize_grads=True)
    jac = [j.movedim(0, 2) for j in jac]
    return (r, jac) if graph else (r.detach(), [j.detach() for j in jac])


def block_diagonal(J):
    """``J (B, K, d, c)`` as the block-diagonal ``(B, K d, K c)``."""
    B, K, d, c = J.shape
    out = J.new_zeros(B, K, d, K, c)
    k = torch.arange(K, device=J.device)
    out[:, k, :, k] = J.transpose(0, 1)
    return out.view(B, K * d, K * c)


def knot_jacobian(J_left, J_right):
    """Jacobian ``(B, K d, K n)`` in the knots ``1..K`` of interval residuals with blocks ``J_left``,
    ``J_right`` ``(B, K, d, n)`` in their left and right knots (knot 0, ``x0``, is not a variable)."""
    B, K, d, n = J_left.shape
    out = J_left.new_zeros(B, K, d, K + 1, n)
    k = torch.arange(K, device=J_left.device)
    out[:, k, :, k] = J_left.transpose(0, 1)
    out[:, k, :, k + 1] = J_right.transpose(0, 1)
    return out[:, :, :, 1:].reshape(B, K * d, K * n)


def defect_jacobian(tr, S, U):
    """The defects ``(B, K, n)`` of knots ``S (B, K+1, n)`` and controls ``U (B, T, m)`` and their Jacobian
    ``(B, K n, K n + T m)`` in the variables ``[knots 1..K, U]`` (block sparse, stored dense)."""
    inputs = (S[:, :-1], U.reshape(-1, tr.K, tr.s, tr.m), S[:, 1:])
    r, (JL, JU, JR) = interval_jacobians(lambda *a: tr.interval(*a)[0], inputs, False)
    return r, torch.cat([knot_jacobian(JL, JR), block_diagonal(JU.flatten(3))], -1)


def violation(V, lower, upper):
    """The largest violation ``(B,)`` of the bounds ``lower``/``upper`` (broadcastable to ``V (B, ...)``, or None)
    by ``V``; infinite bounds never count."""
    out = V.new_zeros(V.shape[0])
    for b, sign in ((lower, -1.0), (upper, 1.0)):
        if b is not None:
            g = torch.where(torch.isfinite(b), sign * (V - b), -1.0)
            out = torch.maximum(out, g.clamp_min(0).flatten(1).amax(1))
    return out


@dataclass
class Outcome:
    """What a back end returns for ``B`` problems (the driver judges the defects and bounds and sets the status)."""

    knots: torch.Tensor             # (B, K n) the knots 1..K
    U: torch.Tensor                 # (B, T, m)
    ok: torch.Tensor                # (B,) bool: the back end's own optimality test holds
    fallback: torch.Tensor          # (B,) int64: the Status of a problem that did not converge
    iterations: torch.Tensor        # (B,) int64
    cost_history: torch.Tensor      # (B, I+1)
    residual: torch.Tensor          # (B,)
    multipliers: torch.Tensor       # (B, K, n) the defects' multipliers (detached)
    extras: dict = field(default_factory=dict)
