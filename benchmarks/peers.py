"""Adapters that run peer libraries on our problems, each optional: a missing package gives None.

mpc.pytorch (package ``mpc``; it pins numpy<2, so install it with ``pip install --no-deps mpc``).
Its convention has ``T`` states ``x_0..x_{T-1}`` and ``T-1`` transitions, the same problem as
``problems.lqr_reference``: our ``F[:, :T-1]``. For the nonlinear problems (P2, P3) that is also
``problems.trajectory_cost``'s: ``T`` costed stages ``(x_t, u_t)``, the last ``u`` free, no terminal term.
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


class _MPCDynamics(torch.nn.Module):
    """One of our discrete models as mpc.pytorch calls it: ``forward(x, u)`` and ``grad_input(x, u)``
    (our closed-form Jacobians, for its default ``GradMethods.ANALYTIC``); counts its linearizations."""

    def __init__(self, model):
        super().__init__()
        self.model, self.linearizations = model, 0

    def forward(self, x, u):
        return self.model(x, u)

    def grad_input(self, x, u):
        self.linearizations += 1
        return self.model.jacobians(x, u)


def mpc_ilqr(mpc, dynamics, C, c, x0, T, u_lower, u_upper, *, lqr_iter: int, **options):
    """Box-constrained iLQR of mpc.pytorch (``mpc.MPC``) on ``x_{t+1} = dynamics(x_t, u_t)`` from zero controls.

    ``C (n+m, n+m)``, ``c (n+m,)``: the stage cost ``1/2 tau' C tau + c' tau`` of every stage; ``u_lower``,
    ``u_upper`` floats; ``options`` override mpc's other defaults (``exit_unconverged`` is False, ``verbose`` -1).
    Returns ``(X (B, T, n), U (B, T, m), iterations)``, iterations counted by its linearizations.
    """
    (B, n), m = x0.shape, C.shape[-1] - x0.shape[-1]
    dx = _MPCDynamics(dynamics)
    bound = lambda v: torch.full((T, B, m), float(v), dtype=x0.dtype)  # noqa: E731
    solver = mpc.MPC(n, m, T, u_lower=bound(u_lower), u_upper=bound(u_upper), lqr_iter=lqr_iter, n_batch=B,
                     **{"exit_unconverged": False, "verbose": -1, **options})
    X, U, _ = solver(x0, mpc.QuadCost(C, c), dx)
    return X.transpose(0, 1), U.transpose(0, 1), dx.linearizations - 1  # the last one is its final, no-op pass


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
