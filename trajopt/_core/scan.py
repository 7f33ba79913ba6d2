"""Associative scans over time: the parallel-in-time form of the recursions of LQR (its affine rollouts and sweeps).

A recursion ``x_{t+1} = M_t x_t + b_t`` is the composition of affine maps, an associative operation, so all its
states follow from a scan of ``T`` elements in ``ceil(log2 T)`` levels (Hillis and Steele 1986), each level one
batched operation over all stages at once, instead of ``T`` dependent steps. A level works on every element of
the batch and every stage together: ``T log2 T`` element operations in total against ``T``, paid in throughput at
large batches and recovered in latency where the per-operation overhead dominates (small batches, GPUs).
"""
from __future__ import annotations

import torch

__all__ = ["scan", "affine_scan"]


def scan(combine, elems: tuple, reverse: bool = False) -> tuple:
    """Inclusive associative scan over the leading (time) dimension of every tensor of ``elems``.

    ``combine(earlier, later)`` takes two tuples of equally long slices (earlier in time first) and returns their
    composition. Forward, element ``t`` of the result is ``e_0 . e_1 . ... . e_t``; with ``reverse`` it is
    ``e_t . e_{t+1} . ... . e_{L-1}`` (``.`` the composition, earlier on the left in both). Differentiable like
    ``combine``.
    """
    L = elems[0].shape[0]
    d = 1
    while d < L:
        new = combine(tuple(z[:-d] for z in elems), tuple(z[d:] for z in elems))
        if reverse:     # element t takes in t + d
            elems = tuple(torch.cat([a, z[-d:]]) for a, z in zip(new, elems))
        else:           # element t + d takes in t
            elems = tuple(torch.cat([z[:d], a]) for a, z in zip(new, elems))
        d *= 2
    return elems


def _compose(earlier, later):
    """Affine maps ``x -> M x + b``: ``later . earlier``."""
    (M1, b1), (M2, b2) = earlier, later
    return M2 @ M1, torch.baddbmm(b2.flatten(0, 1), M2.flatten(0, 1), b1.flatten(0, 1)).view_as(b2)


def affine_scan(M: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Every state of ``x_{t+1} = M_t x_t + b_t`` from ``x_0 = x0`` in ``ceil(log2 (T+1))`` levels.

    ``M (T, B, n, n)``, ``b (T, B, n, 1)``, ``x0 (B, n, 1)``, time major; returns ``X (T+1, B, n, 1)`` with
    ``X[0] = x0``. With ``reverse`` the recursion runs backward, ``x_t = M_t x_{t+1} + b_t`` from ``x_T = x0``,
    and ``X[T] = x0``. Differentiable with respect to every input.
    """
    T, B, n, _ = M.shape
    first = (M.new_zeros(1, B, n, n), x0.unsqueeze(0))     # the constant map to x0 starts the chain
    if reverse:
        _, bs = scan(_reverse_compose, (torch.cat([M, first[0]]), torch.cat([b, first[1]])), reverse=True)
        return bs
    _, bs = scan(_compose, (torch.cat([first[0], M]), torch.cat([first[1], b])))
    return bs


def _reverse_compose(earlier, later):
    """For a backward recursion the later element acts first: ``earlier . later``."""
    return _compose(later, earlier)
