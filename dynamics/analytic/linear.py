"""Linear (affine) dynamics ``x_{t+1} = A_t x_t + B_t u_t + offset_t``, time-invariant or time-varying.

Differentiable with respect to ``x``, ``u``, and ``A``, ``B``, ``offset`` when they
are learnable (``learnable=True``).
"""
from __future__ import annotations

import numbers

import torch

from ..validation import check_bool, check_consistent, check_tensor
from ..base import Dynamics, register_tensors

__all__ = ["LinearDynamics"]


class LinearDynamics(Dynamics):
    """``x_{t+1} = A_t x_t + B_t u_t + offset_t``.

    Args:
        A: ``(n, n)``, or ``(T, n, n)`` for a time-varying model.
        B: ``(n, m)`` or ``(T, n, m)``, time-varying exactly when ``A`` is.
        offset: ``(n,)``, ``(T, n)`` or None (zero).
        learnable: register ``A``, ``B``, ``offset`` as parameters (else buffers holding the caller's tensors).
        batched: the tensors have a leading problem dimension ``B`` (``A (B, [T,] n, n)``, ...): per-problem
            models, as mpc.pytorch's ``LinDx``; a :class:`trajopt.Problem` matches its batch to them.

    A time-varying model needs the stage index ``t`` in :meth:`forward` and
    :meth:`jacobians`; its ``stages`` (``T``) bound the horizon of a :class:`trajopt.Problem`. Note that an unbatched
    ``A`` of rank 3 is time-varying (``(T, n, n)``); per-problem models need ``batched=True``.
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor, offset: torch.Tensor | None = None, *,
                 learnable: bool = False, batched: bool = False):
        where = "LinearDynamics"
        check_bool(where, learnable=learnable, batched=batched)
        dims: dict[str, int] = {}
        tv = isinstance(A, torch.Tensor) and A.ndim == 3 + bool(batched)
        lead = (("B",) if batched else ()) + (("T",) if tv else ())
        if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor) and A.ndim != B.ndim:
            raise ValueError(f"{where}: A has shape {tuple(A.shape)} and B {tuple(B.shape)}; both must be "
                             f"{'(B, ' if batched else '('}[T,] n, ...) alike (time-varying both or neither)")
        A = check_tensor(where, "A", A, (*lead, "n", "n"), dims, batchable=False)
        B = check_tensor(where, "B", B, (*lead, "n", "m"), dims, batchable=False)
        if offset is None:
            offset = A.new_zeros((*A.shape[:-1],))
        offset = check_tensor(where, "offset", offset, (*lead, "n"), dims, batchable=False)
        check_consistent(where, {"A": A, "B": B, "offset": offset}, {"A": A.ndim, "B": B.ndim, "offset": offset.ndim})
        super().__init__(dims["n"], dims["m"])
        self.time_varying, self.batched = tv, bool(batched)
        self.stages = A.shape[-3] if tv else None        # the stages a time-varying model covers (t < stages)
        register_tensors(self, learnable, A=A, B=B, offset=offset)
        self.per_problem = ("A", "B", "offset") if batched else ()

    def _at(self, t):
        if not self.time_varying:
            return self.A, self.B, self.offset
        if t is None:
            raise ValueError("LinearDynamics: this model is time-varying; pass the stage index t")
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"LinearDynamics: the stage index t must be an int, got {t!r}")
        if not 0 <= t < self.stages:
            raise IndexError(f"LinearDynamics: this time-varying model has {self.stages} stages (A is "
                             f"{tuple(self.A.shape)}); stage t={t} is beyond them")
        return self.A[..., t, :, :], self.B[..., t, :, :], self.offset[..., t, :]

    def _rows(self, x, A):
        if self.batched and x.shape[:-1] != A.shape[:1]:      # one row per problem (a solver selects them)
            raise ValueError(f"LinearDynamics: x has shape {tuple(x.shape)}; this per-problem model (batched=True) "
                             f"holds {A.shape[0]} problems, one row each: expected ({A.shape[0]}, {self.state_dim})")

    def forward(self, x, u, t=None):
        A, B, offset = self._at(t)
        self._rows(x, A)
        if self.batched:        # rows are problems
            return (A @ x.unsqueeze(-1) + B @ u.unsqueeze(-1)).squeeze(-1) + offset
        return x @ A.mT + u @ B.mT + offset

    def jacobians(self, x, u, t=None):
        A, B, _ = self._at(t)
        self._rows(x, A)
        return A.expand(*x.shape[:-1], *A.shape[-2:]), B.expand(*x.shape[:-1], *B.shape[-2:])
