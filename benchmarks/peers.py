"""Adapters that run peer libraries on our problems, each optional: a missing package gives None.

mpc.pytorch (package ``mpc``; it pins numpy<2, so install it with ``pip install --no-deps mpc``).
Its convention has ``T`` states ``x_0..x_{T-1}`` and ``T-1`` transitions, the same problem as
``problems.lqr_reference``: our ``F[:, :T-1]``.
"""
from __future__ import annotations

import warnings

import torch


def mpc_pytorch():
    """The ``mpc.mpc`` module, or None when mpc.pytorch is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mpc import mpc
        return mpc
    except Exception:  # noqa: BLE001 - any import failure means the column is absent
        return None


def mpc_lqr(mpc, F, f, C, c, x0, *, backprop: bool):
    """Solve P1-form LQR problems ``(B, T, ...)`` with mpc.pytorch; returns ``(X (B,T,n), U (B,T,m))``."""
    B, T, n, nm = F.shape
    tm = lambda z: z.transpose(0, 1)  # noqa: E731
    solver = mpc.MPC(n, nm - n, T, lqr_iter=1, exit_unconverged=False, verbose=-1, n_batch=B,
                     backprop=backprop, grad_method=mpc.GradMethods.ANALYTIC)
    X, U, _ = solver(x0, mpc.QuadCost(tm(C), tm(c)), mpc.LinDx(tm(F[:, :T - 1]), tm(f[:, :T - 1])))
    return tm(X), tm(U)


def pypose_module():
    """The ``pypose`` package, or None when it is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pypose
        return pypose
    except Exception:  # noqa: BLE001
        return None


def pypose_lqr(pp, F, f, C, c, x0):
    """Solve P1-form LQR problems with pypose's LQR on a linear time-varying system; returns ``(X, U)``.

    pypose's convention is ours: ``T`` stages, ``X`` with ``T+1`` states, ``x_T`` uncosted.
    """
    B, T, n, nm = F.shape

    class P1System(pp.module.LTV):
        """pypose's LTV with stacked (B, T, ...) matrices, indexed by the system's clock."""

    for name in ("A", "B", "C", "D", "c1", "c2"):
        setattr(P1System, name, property(lambda self, name=name: getattr(self, "_" + name)[:, min(int(self._t), T - 1)]))

    system = P1System(F[..., :n], F[..., n:], torch.eye(n, dtype=F.dtype).expand(B, T, n, n),
                      torch.zeros(B, T, n, nm - n, dtype=F.dtype), f, torch.zeros_like(f))
    system.set_refpoint(t=0)
    X, U, _ = pp.module.LQR(system, C, c, T)(x0)
    return X, U
