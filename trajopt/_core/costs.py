"""Trajectory costs and their quadratization.

A cost is ``sum_{t<T} stage(x_t, u_t, t) + terminal(x_T)``. :class:`QuadraticCost`
is the LQR cost in the ``tau = [x; u]`` form and quadratizes exactly; any other
:class:`Cost` is quadratized (gradient and Hessian in ``tau``) by ``torch.func``.

Differentiable with respect to: states, controls and the module's parameters.
"""
from __future__ import annotations

import abc
import numbers
from typing import NamedTuple

import torch
from torch import nn

from dynamics.base import Dynamics, register_tensors, rowwise_hessians
from dynamics.validation import check_bool, check_finite, check_int, check_tensor
from .stages import check_rows, over_stages

__all__ = ["Cost", "QuadraticCost", "Quadratization", "SlewRateCost"]


class Quadratization(NamedTuple):
    """Second-order expansion of a cost around a trajectory, in ``tau = [x; u]``.

    ``cost(X + dX, U + dU) ~ cost(X, U) + sum_t c_t' dtau_t + 1/2 dtau_t' C_t dtau_t
    + c_final' dx_T + 1/2 dx_T' C_final dx_T``.

    Attributes:
        C: ``(B, T, n+m, n+m)`` stage Hessians.
        c: ``(B, T, n+m)`` stage gradients.
        C_final: ``(B, n, n)`` terminal Hessian.
        c_final: ``(B, n)`` terminal gradient.
    """

    C: torch.Tensor
    c: torch.Tensor
    C_final: torch.Tensor
    c_final: torch.Tensor


class Cost(nn.Module, abc.ABC):
    """A trajectory cost with a stage term and a terminal term.

    Subclasses implement :meth:`stage` (and :meth:`terminal` if there is one)
    for batched inputs. ``time_varying = True`` means :meth:`stage` looks at the
    stage index ``t``; otherwise all stages are evaluated in one batched call.
    ``separable = False`` marks a cost that couples stages (:class:`SlewRateCost`): solvers then evaluate it
    through :meth:`forward` only, and routes that need the exact stagewise Hessian (implicit gradients) refuse it.
    """

    time_varying: bool = False
    separable: bool = True

    @abc.abstractmethod
    def stage(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Stage cost ``(B,)`` of ``x (B, n)``, ``u (B, m)`` at stage ``t``."""

    def terminal(self, x: torch.Tensor) -> torch.Tensor:
        """Terminal cost ``(B,)`` of ``x_T (B, n)``; zero unless overridden."""
        return x.new_zeros(x.shape[:-1])

    def declared_dims(self) -> dict:
        """The problem dimensions the cost is built for, some of ``{"n", "m", "n+m", "T"}`` (``T``: the stages of a
        time-varying cost); ``{}`` when it does not say. A :class:`~trajopt.Problem` checks them against its dynamics
        and horizon (and, for a cost that declares none, calls :meth:`stage` once on zeros)."""
        return {}

    def check_trajectory(self, X, U, where: str | None = None, like: torch.Tensor | None = None) -> None:
        """Check the arguments of :meth:`forward` and :meth:`quadratize`: raise a TypeError or ValueError naming
        ``X`` or ``U`` unless they are float tensors of one dtype and device, ``X (..., T+1, n)`` and
        ``U (..., T, m)`` with the same leading dimensions, that fit the dimensions the cost declares
        (:meth:`declared_dims`: ``n``, ``m``, ``n+m``, and ``T`` when time-varying) and, given ``like`` (a tensor of
        the cost), its dtype and device. Shapes and dtypes only, no pass over the values (solvers call this in their
        loops): NaN or Inf in ``X`` or ``U`` gives a non-finite cost, which every solver reports per problem
        (``Status.NOT_FINITE``). The one place a subclass that overrides :meth:`forward` calls to check its input."""
        where = where or f"{type(self).__name__}.forward"
        for name, z in (("X", X), ("U", U)):
            if not isinstance(z, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(z).__name__}")
            if not z.is_floating_point():
                raise TypeError(f"{where}: {name} must be a float tensor, got {z.dtype}")
            if z.ndim < 2:
                raise ValueError(f"{where}: {name} has shape {tuple(z.shape)}; expected "
                                 f"{'(B, T+1, n)' if name == 'X' else '(B, T, m)'}")
        if like is not None and X.dtype != like.dtype:
            raise TypeError(f"{where}: X has dtype {X.dtype} but the cost's tensors have {like.dtype}; convert one "
                            f"side (X.to({like.dtype}) and U, or cost.to({X.dtype}))")
        if U.dtype != X.dtype:
            raise TypeError(f"{where}: U has dtype {U.dtype} but X has {X.dtype}; X and U must share one dtype")
        if U.device != X.device or (like is not None and X.device != like.device):
            raise ValueError(f"{where}: X is on {X.device} and U on {U.device}"
                             f"{'' if like is None else f', the cost on {like.device}'}; all must share one device")
        if U.ndim != X.ndim or U.shape[:-2] != X.shape[:-2] or X.shape[-2] != U.shape[-2] + 1:
            raise ValueError(f"{where}: U has shape {tuple(U.shape)} but X has {tuple(X.shape)}; expected "
                             "X (B, T+1, n) and U (B, T, m) with the same B and T")
        dims = self.declared_dims()
        n, m = X.shape[-1], U.shape[-1]
        if dims.get("n", n) != n:
            raise ValueError(f"{where}: X has shape {tuple(X.shape)}: n={n} states; the cost is for n={dims['n']}")
        if dims.get("m", m) != m:
            raise ValueError(f"{where}: U has shape {tuple(U.shape)}: m={m} controls; the cost is for m={dims['m']}")
        if dims.get("n+m", n + m) != n + m:
            raise ValueError(f"{where}: X {tuple(X.shape)} and U {tuple(U.shape)} have n+m={n + m}; the cost is for "
                             f"n+m={dims['n+m']}")
        if self.time_varying and dims.get("T", U.shape[-2]) != U.shape[-2]:
            raise ValueError(f"{where}: U has shape {tuple(U.shape)}; the cost is time-varying with T={dims['T']} "
                             f"stages but the trajectory has {U.shape[-2]}")

    def forward(self, X: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
        """Total cost ``(B,)`` of states ``X (B, T+1, n)`` and controls ``U (B, T, m)`` (checked by
        :meth:`check_trajectory`: shapes and dtypes; NaN or Inf in them gives a non-finite cost), or of unbatched
        ``X (T+1, n)``, ``U (T, m)``: a scalar."""
        self.check_trajectory(X, U)
        _at_most_one_batch(f"{type(self).__name__}.forward", X)
        if X.ndim == 2:
            return self(X.unsqueeze(0), U.unsqueeze(0))[0]
        stage = over_stages(self.stage, self, X[..., :-1, :], U, scalar=True)
        xT = X[..., -1, :]
        return stage.sum(1) + check_rows(self, self.terminal, self.terminal(xT), xT.shape[0], xT, scalar=True)

    def quadratize(self, X: torch.Tensor, U: torch.Tensor) -> Quadratization:
        """Gradients and Hessians of the cost at every stage of ``X (B, T+1, n)``, ``U (B, T, m)`` (or unbatched
        ``(T+1, n)``, ``(T, m)``; checked by :meth:`check_trajectory`: non-finite inputs give non-finite outputs).

        By autograd: the gradient of the total cost, then one batched double backward for all stages' Hessian
        blocks at once (:func:`dynamics.base.rowwise_hessians`); :class:`QuadraticCost` overrides it with the exact closed
        form. Differentiable with respect to ``X``, ``U`` and the cost's parameters.
        """
        self.check_trajectory(X, U, f"{type(self).__name__}.quadratize")
        _at_most_one_batch(f"{type(self).__name__}.quadratize", X)
        if X.ndim == 2:
            return Quadratization(*(z[0] for z in self.quadratize(X.unsqueeze(0), U.unsqueeze(0))))
        T = U.shape[-2]
        graph = torch.is_grad_enabled() and any(z.requires_grad for z in (X, U, *self.parameters(), *self.buffers()))
        with torch.enable_grad():
            Xg = X if graph and X.requires_grad else X.detach().requires_grad_(True)
            Ug = U if graph and U.requires_grad else U.detach().requires_grad_(True)
            gx, gu = torch.autograd.grad(self(Xg, Ug).sum(), (Xg, Ug), create_graph=True, materialize_grads=True)
            C, C_final = _stage_hessians(gx, gu, Xg, Ug, create_graph=graph)
        c = torch.cat([gx[..., :T, :], gu], -1)
        if not graph:
            c, gx = c.detach(), gx.detach()
        return Quadratization(C, c, C_final, gx[..., T, :])


def _at_most_one_batch(where, X):
    if X.ndim > 3:
        raise ValueError(f"{where}: X has shape {tuple(X.shape)}; expected (B, T+1, n) or (T+1, n)")


def _stage_hessians(gx, gu, X, U, create_graph: bool = False):
    """Hessian blocks ``(B, T, n+m, n+m)`` and terminal ``(B, n, n)`` of a stagewise-separable function whose
    gradient ``gx (B, T+1, n)``, ``gu (B, T, m)`` carries a graph to ``X``, ``U`` (by
    :func:`dynamics.base.rowwise_hessians`: the stages are independent, so the Hessian is block diagonal)."""
    T, n = U.shape[1], X.shape[-1]
    hx, hu = rowwise_hessians(gx, gu, X, U, create_graph)
    H = torch.cat([hx[:, :, :T], hu], -1).permute(1, 2, 0, 3)            # row i: the derivative along e_i
    return H, hx[:n, :, T].transpose(0, 1)


def _same_dtype(where, name, value, like, like_name, *, number=False, convert=False):
    """``value``: a tensor of ``like``'s dtype (moved to its device; a float tensor of another dtype is converted
    where ``convert``) or, where ``number``, a Python number (converted to a 0-dim tensor of that dtype). Anything
    else raises a TypeError naming ``name``."""
    if number and isinstance(value, numbers.Real) and not isinstance(value, bool):       # NumPy numbers too
        return torch.tensor(float(value), dtype=like.dtype, device=like.device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor{' or a number' if number else ''}, "
                        f"got {type(value).__name__}")
    if value.is_floating_point() and value.dtype != like.dtype and convert:
        value = value.to(like.dtype)
    if value.is_floating_point() and value.dtype != like.dtype:
        raise TypeError(f"{where}: {name} has dtype {value.dtype} but {like_name} has {like.dtype}; all tensors "
                        f"must share one dtype (convert with .to({like.dtype}))")
    return value.to(like.device)


def _constant(where, name, value, like, shape):
    """A stage or terminal constant: a finite number or a float tensor broadcastable to ``shape``."""
    value = _same_dtype(where, name, value, like, "C", number=True)
    if not value.is_floating_point():
        raise TypeError(f"{where}: {name} must be a float number or tensor, got {value.dtype}")
    check_finite(where, {name: value})
    try:
        return value.expand(shape).clone()
    except RuntimeError:
        raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}; expected a number or a shape "
                         f"broadcastable to {tuple(shape)}") from None


class QuadraticCost(Cost):
    """``stage = 1/2 tau' C_t tau + c_t' tau + const_t``, ``terminal = 1/2 x' C_final x + c_final' x + const_final``.

    Args:
        C: ``(n+m, n+m)`` or time-varying ``(T, n+m, n+m)``; only its symmetric part counts.
        c: ``(n+m,)`` or ``(T, n+m)``, or None for zero.
        C_final: ``(n, n)`` or None; c_final: ``(n,)`` or None.
        const, const_final: constants added to each stage and to the terminal term
            (they change the cost's value, never its minimizer).
        learnable: register the tensors as parameters (else buffers holding the caller's tensors).
        batched: every tensor has a leading problem dimension ``B`` (``C (B, n+m, n+m)`` or ``(B, T, n+m, n+m)``,
            ``c (B, [T,] n+m)``, ``C_final (B, n, n)``, ``c_final (B, n)``): per-problem weights and targets, as
            mpc.pytorch's ``QuadCost``; a :class:`~trajopt.Problem` matches its batch to them.

    Use :meth:`from_weights` for the common ``1/2 (x - x_goal)' Q (x - x_goal) + 1/2 (u - u_goal)' R (u - u_goal)``.
    """

    def __init__(self, C, c=None, C_final=None, c_final=None, *, const=0.0, const_final=0.0, learnable=False,
                 batched=False):
        super().__init__()
        where = "QuadraticCost"
        check_bool(where, learnable=learnable, batched=batched)
        tv = isinstance(C, torch.Tensor) and C.ndim == 3 + bool(batched)
        lead = (("B",) if batched else ()) + (("T",) if tv else ())
        dims: dict[str, int] = {}
        C = check_tensor(where, "C", C, (*lead, "n+m", "n+m"), dims, batchable=False)
        if dims["n+m"] < 2:
            raise ValueError(f"{where}: C has shape {tuple(C.shape)}; n+m must be at least 2 (n >= 1 states and "
                             f"m >= 1 controls)")
        c = C.new_zeros(C.shape[:-1]) if c is None else check_tensor(
            where, "c", _same_dtype(where, "c", c, C, "C"), (*lead, "n+m"), dims, batchable=False)
        self.time_varying, self.batched = tv, bool(batched)
        tensors = {"C": C, "c": c}
        final = ("B",) if batched else ()
        if C_final is not None:
            tensors["C_final"] = check_tensor(where, "C_final", _same_dtype(where, "C_final", C_final, C, "C"),
                                              (*final, "n", "n"), dims, batchable=False)
        if c_final is not None:
            tensors["c_final"] = check_tensor(where, "c_final", _same_dtype(where, "c_final", c_final, C, "C"),
                                              (*final, "n"), dims, batchable=False)
        if "n" in dims and dims["n"] >= dims["n+m"]:
            raise ValueError(f"{where}: C_final/c_final have n={dims['n']} but C has n+m={dims['n+m']}; "
                             "need n < n+m")
        tensors["const"] = _constant(where, "const", const, C, C.shape[:-2])
        tensors["const_final"] = _constant(where, "const_final", const_final, C, C.shape[:1] if batched else ())
        self._dims = {key: dims[key] for key in ("n+m", "n") if key in dims}
        if tv:
            self._dims["T"] = C.shape[-3]
            if C.shape[-3] == 0:
                raise ValueError(f"{where}: C has shape {tuple(C.shape)}: a time-varying cost of T=0 stages; give at "
                                 "least one")
        if batched and C.shape[0] == 0:
            raise ValueError(f"{where}: C has shape {tuple(C.shape)}: a per-problem cost of B=0 problems")
        register_tensors(self, learnable, **tensors)
        for name in ("C_final", "c_final"):
            if name not in tensors:
                setattr(self, name, None)
        self.per_problem = tuple(tensors) if batched else ()

    @classmethod
    def from_weights(cls, Q, R, x_goal=None, u_goal=None, Q_final=None, *, T=None, learnable=False):
        """``1/2 (x - x_goal)' Q (x - x_goal) + 1/2 (u - u_goal)' R (u - u_goal)`` per stage,
        plus ``1/2 (x_T - x_goal)' Q_final (x_T - x_goal)`` at the end.

        Args:
            Q: ``(n, n)`` (or ``(T, n, n)``); R: ``(m, m)`` (or ``(T, m, m)``).
            x_goal: ``(n,)`` or ``(T, n)``, default zero; u_goal: ``(m,)`` or ``(T, m)``, default zero.
            Q_final: ``(n, n)`` or None (no terminal term).
            T: horizon (an int >= 1); when given, the cost is made time-varying with ``T`` stages.

        ``Q`` is a float tensor; ``R`` a tensor or a number (``m = 1``); the goals and ``Q_final`` tensors. Float
        tensors of another dtype than ``Q``'s are converted to it (the one conversion); lists are refused.

        Note the 1/2: the figures of ``problems.py`` (``x'Qx + u'Ru``) need ``Q, R`` doubled.
        """
        where, dims = "QuadraticCost.from_weights", {}
        check_bool(where, learnable=learnable)
        Q = check_tensor(where, "Q", Q, ("n", "n"), dims)
        R = _same_dtype(where, "R", R, Q, "Q", convert=True, number=True)
        R = check_tensor(where, "R", R.reshape(*R.shape, 1, 1) if R.ndim == 0 else R, ("m", "m"), dims)
        n, m = Q.shape[-1], R.shape[-1]
        xg = Q.new_zeros(n) if x_goal is None else check_tensor(
            where, "x_goal", _same_dtype(where, "x_goal", x_goal, Q, "Q", convert=True), ("n",), dims)
        ug = Q.new_zeros(m) if u_goal is None else check_tensor(
            where, "u_goal", _same_dtype(where, "u_goal", u_goal, Q, "Q", convert=True), ("m",), dims)
        if Q_final is not None:
            Q_final = check_tensor(where, "Q_final", _same_dtype(where, "Q_final", Q_final, Q, "Q", convert=True),
                                   ("n", "n"), dims, batchable=False)
        if T is not None:
            check_int(where, T=T)
        lengths = [a.shape[0] for a, k in ((Q, 2), (R, 2), (xg, 1), (ug, 1)) if a.ndim == k + 1]
        if len(set(lengths)) > 1 or (T is not None and lengths and lengths[0] != T):
            raise ValueError(f"{where}: the time-varying weights and goals disagree on the horizon: lengths "
                             f"{lengths}{'' if T is None else f' and T={T}'}")
        if T is None and lengths:
            T = lengths[0]
        if T is not None:
            Q, R = Q.expand(T, n, n), R.expand(T, m, m)
            xg, ug = xg.expand(T, n), ug.expand(T, m)
        C = torch.cat([torch.cat([Q, Q.new_zeros(*Q.shape[:-1], m)], -1),
                       torch.cat([R.new_zeros(*R.shape[:-1], n), R], -1)], -2)
        Qxg, Rug = (Q @ xg.unsqueeze(-1)).squeeze(-1), (R @ ug.unsqueeze(-1)).squeeze(-1)
        c = -torch.cat([Qxg, Rug], -1)
        const = 0.5 * ((xg * Qxg).sum(-1) + (ug * Rug).sum(-1))
        if Q_final is None:
            return cls(C, c, const=const, learnable=learnable)._declare(n=n, m=m)
        Qf = Q_final
        xgT = xg[-1] if xg.ndim == 2 else xg
        Qfx = Qf @ xgT
        return cls(C, c, Qf, -Qfx, const=const, const_final=0.5 * (xgT * Qfx).sum(),
                   learnable=learnable)._declare(n=n, m=m)

    @classmethod
    def tracking(cls, Q, R, x_ref, u_ref=None, Q_final=None, *, learnable=False):
        """Tracking of time-varying targets: ``1/2 (x_t - x_ref_t)' Q (x_t - x_ref_t) + 1/2 (u_t - u_ref_t)' R
        (u_t - u_ref_t)`` at each stage ``t < T``, plus ``1/2 (x_T - x_ref_T)' Q_final (x_T - x_ref_T)``.

        Args:
            Q: ``(n, n)``; R: ``(m, m)``; Q_final: ``(n, n)`` or None (no terminal term).
            x_ref: the reference states ``(T+1, n)``, or ``(B, T+1, n)`` per problem (a batched cost, see
                ``batched``); u_ref: the reference controls ``(T, m)`` or ``(B, T, m)``, default zero.

        Every tensor has ``x_ref``'s dtype (``R`` may be a number, ``m = 1``); a mismatch raises a TypeError.

        Differentiable with respect to ``Q``, ``R``, ``Q_final``, ``x_ref`` and ``u_ref`` (they enter the cost's
        tensors, which keep their graph: build the cost anew for each backward pass).
        """
        where = "QuadraticCost.tracking"
        check_bool(where, learnable=learnable)
        if not isinstance(x_ref, torch.Tensor):
            raise TypeError(f"{where}: x_ref must be a torch.Tensor (T+1, n) or (B, T+1, n), "
                            f"got {type(x_ref).__name__}")
        if x_ref.ndim not in (2, 3):
            raise ValueError(f"{where}: x_ref must be (T+1, n) or (B, T+1, n), got shape {tuple(x_ref.shape)}")
        if not x_ref.is_floating_point():
            raise TypeError(f"{where}: x_ref must be float32 or float64, got {x_ref.dtype}")
        check_finite(where, {"x_ref": x_ref})
        batched = x_ref.ndim == 3
        Q = _same_dtype(where, "Q", Q, x_ref, "x_ref")
        R = _same_dtype(where, "R", R, x_ref, "x_ref", number=True)
        R = R.reshape(1, 1) if R.ndim == 0 else R
        check_finite(where, {"Q": Q, "R": R})
        n, m, T = x_ref.shape[-1], R.shape[-1], x_ref.shape[-2] - 1
        if Q.shape != (n, n) or R.ndim != 2 or R.shape[0] != m or T < 1:
            raise ValueError(f"{where}: need Q (n, n) = ({n}, {n}), R (m, m) and x_ref with T+1 >= 2 states; got Q "
                             f"{tuple(Q.shape)}, R {tuple(R.shape)}, x_ref {tuple(x_ref.shape)}")
        lead = x_ref.shape[:-2]
        u_ref = x_ref.new_zeros(*lead, T, m) if u_ref is None else _same_dtype(where, "u_ref", u_ref, x_ref, "x_ref")
        if u_ref.shape[-2:] != (T, m) or u_ref.ndim != x_ref.ndim:
            raise ValueError(f"{where}: u_ref must be {(*lead, T, m)}, got shape {tuple(u_ref.shape)}")
        check_finite(where, {"u_ref": u_ref})
        if Q_final is not None:
            Q_final = _same_dtype(where, "Q_final", Q_final, x_ref, "x_ref")
            if Q_final.shape != (n, n):
                raise ValueError(f"{where}: Q_final must be (n, n) = ({n}, {n}), got shape {tuple(Q_final.shape)}")
            check_finite(where, {"Q_final": Q_final})
        C = torch.block_diag(Q, R).expand(*lead, T, n + m, n + m)
        ref = torch.cat([x_ref[..., :T, :], u_ref], -1)
        c = -(ref.unsqueeze(-2) @ C).squeeze(-2)
        const = 0.5 * (ref * (ref.unsqueeze(-2) @ C).squeeze(-2)).sum(-1)
        if Q_final is None:
            return cls(C, c, const=const, learnable=learnable, batched=batched)._declare(n=n, m=m)
        Qf = Q_final
        xT = x_ref[..., T, :]
        Qfx = (xT.unsqueeze(-2) @ Qf).squeeze(-2)
        return cls(C, c, Qf.expand(*lead, n, n), -Qfx, const=const, const_final=0.5 * (xT * Qfx).sum(-1),
                   learnable=learnable, batched=batched)._declare(n=n, m=m)

    def _declare(self, **dims):
        self._dims.update(dims)
        return self

    def declared_dims(self) -> dict:
        """``n+m`` (and ``T`` when time-varying) from ``C``; ``n`` when there is a terminal term; ``n`` and ``m``
        when built by :meth:`from_weights` or :meth:`tracking`."""
        return dict(self._dims)

    def _at(self, t):
        if not self.time_varying:
            return self.C, self.c, self.const
        if t is None:
            raise ValueError("QuadraticCost: this cost is time-varying; pass the stage index t")
        return self.C[..., t, :, :], self.c[..., t, :], self.const[..., t]

    def stage(self, x, u, t=None):
        C, c, const = self._at(t)
        if x.ndim == 2 and not self.batched:
            # sampling solvers call this on B N rows per step, kept column by column: work on (n+m, rows)
            tau = torch.cat([x.mT, u.mT], 0)
            y = torch.addmm(c.unsqueeze(-1), C.mT, tau, alpha=0.5)
            return tau.new_ones(tau.shape[0]) @ (y * tau) + const
        tau = torch.cat([x, u], -1)
        return 0.5 * ((tau.unsqueeze(-2) @ C).squeeze(-2) * tau).sum(-1) + (tau * c).sum(-1) + const

    def terminal(self, x):
        out = x.new_zeros(x.shape[:-1]) + self.const_final
        if self.C_final is not None:
            out = out + 0.5 * ((x.unsqueeze(-2) @ self.C_final).squeeze(-2) * x).sum(-1)
        if self.c_final is not None:
            out = out + (x * self.c_final).sum(-1)
        return out

    def stage_tensors(self, T):
        """``C (..., T, n+m, n+m)`` symmetrized, ``c (..., T, n+m)``, ``const (..., T)`` for a horizon ``T`` (a
        leading ``B`` when batched)."""
        C = 0.5 * (self.C + self.C.mT)
        if self.time_varying:
            if self.C.shape[-3] != T:
                raise ValueError(f"QuadraticCost: the cost has T={self.C.shape[-3]} stages but the trajectory has {T}")
            return C, self.c, self.const
        lead = C.shape[:-2]
        return (C.unsqueeze(-3).expand(*lead, T, *C.shape[-2:]), self.c.unsqueeze(-2).expand(*lead, T, C.shape[-1]),
                self.const.unsqueeze(-1).expand(*lead, T))

    def _check(self, where, X, U):
        self.check_trajectory(X, U, where, like=self.C)
        if self.batched and (X.ndim != 3 or X.shape[0] != self.C.shape[0]):
            raise ValueError(f"{where}: X has shape {tuple(X.shape)}; this batched cost holds B={self.C.shape[0]} "
                             f"problems: expected X (B, T+1, n) = ({self.C.shape[0]}, T+1, n)")

    def forward(self, X, U):
        """Total cost ``(...)`` of ``X (..., T+1, n)``, ``U (..., T, m)`` (``(B, T+1, n)`` for a batched cost):
        checked by :meth:`~Cost.check_trajectory` (shapes and the cost's dtype; no pass over the values: NaN or Inf
        in them gives a non-finite cost, which the solvers report per problem)."""
        self._check("QuadraticCost.forward", X, U)
        if self.batched:        # rows are problems: (B, T+1, n) with the per-problem tensors (B, ...)
            tau = torch.cat([X[..., :-1, :], U], -1)
            C, c, const = self.stage_tensors(U.shape[-2])
            stage = 0.5 * torch.einsum("bti,btij,btj->b", tau, C, tau) + (tau * c).sum((-1, -2)) + const.sum(-1)
        elif self.time_varying:
            tau = torch.cat([X[..., :-1, :], U], -1)
            C, c, const = self.stage_tensors(U.shape[-2])
            stage = 0.5 * torch.einsum("...ti,tij,...tj->...", tau, C, tau) + (tau * c).sum((-1, -2)) + const.sum()
        else:   # all stages as rows of one batch (sampling solvers evaluate B N trajectories at once)
            stage = self.stage(X[..., :-1, :].reshape(-1, X.shape[-1]), U.reshape(-1, U.shape[-1]))
            stage = stage.view(U.shape[:-1]).sum(-1)
        return stage + self.terminal(X[..., -1, :])

    def quadratize(self, X, U):
        """Exact: ``C_t``, ``C_t tau_t + c_t`` and the terminal ones, at ``X (B, T+1, n)``, ``U (B, T, m)`` (or
        unbatched ``(T+1, n)``, ``(T, m)``), checked as :meth:`forward`'s."""
        where = "QuadraticCost.quadratize"
        self._check(where, X, U)
        _at_most_one_batch(where, X)
        if X.ndim == 2:
            return Quadratization(*(z[0] for z in self.quadratize(X.unsqueeze(0), U.unsqueeze(0))))
        B, T, n = X.shape[0], U.shape[-2], X.shape[-1]
        C, c, _ = self.stage_tensors(T)
        tau = torch.cat([X[..., :-1, :], U], -1)
        xT = X[..., -1, :]
        Cf = X.new_zeros(n, n) if self.C_final is None else 0.5 * (self.C_final + self.C_final.mT)
        cf = (xT.unsqueeze(-2) @ Cf).squeeze(-2) + (0.0 if self.c_final is None else self.c_final)
        return Quadratization(C.expand(B, *C.shape[-3:]), (tau.unsqueeze(-2) @ C).squeeze(-2) + c,
                              Cf.expand(B, n, n), cf)


class SlewRateCost(Cost):
    """``cost`` plus a control-rate (slew) penalty ``1/2 sum_t (u_t - u_{t-1})' S (u_t - u_{t-1})``.

    Args:
        cost: the :class:`Cost` to add the penalty to.
        S: ``(m, m)`` positive semidefinite weight of the control change (or ``(m,)``, its diagonal).
        u_prev: the control applied before the horizon, ``(m,)`` shared or ``(B, m)`` per problem (a per-problem
            tensor); with it the first control's change ``u_0 - u_prev`` is penalized too, else the sum starts at
            ``t = 1``.

    The penalty couples consecutive stages (``separable = False``). Sampling and shooting solvers and the scipy
    transcription back end evaluate :meth:`forward`, which is exact. Stagewise solvers (iLQR, DDP, and what is
    built on them) solve :meth:`separated` instead: the same problem on the state ``[x_t; u_{t-1}]``, where the
    penalty is a stage cost and the Riccati recursion holds its coupling exactly (so do their implicit gradients).
    :meth:`quadratize` has the exact gradient and the stagewise blocks of the Hessian (without the blocks ``-S``
    between ``u_{t-1}`` and ``u_t``).

    Differentiable with respect to states, controls, ``S``, ``u_prev`` and the tensors of ``cost``.
    """

    separable = False

    def __init__(self, cost: Cost, S, u_prev=None):
        super().__init__()
        where = "SlewRateCost"
        if not isinstance(cost, Cost):
            raise TypeError(f"{where}: cost must be a trajopt.Cost, got {type(cost).__name__}")
        if not isinstance(S, torch.Tensor):
            raise TypeError(f"{where}: S must be a torch.Tensor (m, m) or (m,), got {type(S).__name__}")
        if not S.is_floating_point():
            raise TypeError(f"{where}: S must be float32 or float64, got {S.dtype}")
        S = torch.diag_embed(S) if S.ndim == 1 else S
        if S.ndim != 2 or S.shape[0] != S.shape[1]:
            raise ValueError(f"{where}: S must be (m, m) or (m,), got shape {tuple(S.shape)}")
        check_finite(where, {"S": S})
        # only the symmetric part counts; it must be positive semidefinite (else the penalty rewards control changes)
        lowest = float(torch.linalg.eigvalsh(0.5 * (S + S.mT).detach()).min()) if S.numel() else 0.0
        if lowest < -(torch.finfo(S.dtype).eps ** 0.5) * max(1.0, float(S.abs().max())):
            raise ValueError(f"{where}: S must be positive semidefinite (its symmetric part's eigenvalues >= 0), got "
                             f"smallest eigenvalue {lowest:.3g}")
        like = next((z for z in (*cost.parameters(), *cost.buffers()) if z.is_floating_point() and z.ndim), None)
        if like is not None and like.dtype != S.dtype:
            raise TypeError(f"{where}: S has dtype {S.dtype} but the cost's tensors have {like.dtype}; convert one "
                            f"side (S.to({like.dtype}))")
        m = cost.declared_dims().get("m")
        if m is not None and S.shape[0] != m:
            raise ValueError(f"{where}: S has shape {tuple(S.shape)} but the cost is for m={m} controls; S must be "
                             f"(m, m) = ({m}, {m}) or (m,)")
        self.cost, self.time_varying = cost, cost.time_varying
        self.register_buffer("S", S)
        if u_prev is not None:
            u_prev = _same_dtype(where, "u_prev", u_prev, S, "S")
            if u_prev.ndim not in (1, 2) or u_prev.shape[-1] != S.shape[0]:
                raise ValueError(f"{where}: u_prev must be (m,) or (B, m) with m={S.shape[0]}, got shape "
                                 f"{tuple(u_prev.shape)}")
            check_finite(where, {"u_prev": u_prev})
            self.per_problem = ("u_prev",) if u_prev.ndim == 2 else ()
        self.register_buffer("u_prev", u_prev)

    def declared_dims(self) -> dict:
        """The wrapped cost's, with ``m`` from ``S``."""
        return {**self.cost.declared_dims(), "m": self.S.shape[0]}

    def _changes(self, U):
        """``u_t - u_{t-1}`` ``(..., T or T-1, m)``."""
        if self.u_prev is None:
            return U[..., 1:, :] - U[..., :-1, :]
        first = self.u_prev.unsqueeze(-2) if self.u_prev.ndim == 2 else self.u_prev.expand(*U.shape[:-2], 1, -1)
        return torch.cat([first, U], -2).diff(dim=-2)

    def stage(self, x, u, t=None):
        raise TypeError("SlewRateCost couples consecutive controls: it has no stage term of (x_t, u_t) alone; "
                        "evaluate it on whole trajectories (forward)")

    def terminal(self, x):
        return self.cost.terminal(x)

    def forward(self, X, U):
        self.check_trajectory(X, U, "SlewRateCost.forward", like=self.S)
        d = self._changes(U)
        return self.cost(X, U) + 0.5 * ((d @ self.S) * d).sum((-1, -2))

    def quadratize(self, X, U):
        """The cost's quadratization plus the penalty's exact gradient and the stagewise blocks of its Hessian
        (``S`` for each change a control enters: ``2 S`` inside the horizon)."""
        self.check_trajectory(X, U, "SlewRateCost.quadratize", like=self.S)
        q = self.cost.quadratize(X, U)
        n, T = X.shape[-1], U.shape[-2]
        S = 0.5 * (self.S + self.S.mT)
        d = self._changes(U) @ S                                   # S (u_t - u_{t-1}) for each change
        pad = U.new_zeros(*U.shape[:-2], 1, U.shape[-1])
        t = torch.arange(T, device=U.device)
        # how many changes each control enters: the one from its predecessor, and the one to its successor
        count = ((t >= 1) | (self.u_prev is not None)).to(U.dtype) + (t < T - 1).to(U.dtype)
        if self.u_prev is None:
            g = torch.cat([pad, d], -2) - torch.cat([d, pad], -2)
        else:
            g = d - torch.cat([d[..., 1:, :], pad], -2)
        C, c = q.C.clone(), q.c.clone()
        C[..., n:, n:] += count.view(T, 1, 1) * S
        c[..., n:] += g
        return Quadratization(C, c, q.C_final, q.c_final)

    def separated(self, problem):
        """The exact stagewise form of ``problem`` (whose cost is this one): a :class:`~trajopt.Problem` on the state
        ``[x_t; u_{t-1}]`` (``n + m``), with dynamics ``[f(x_t, u_t, t); u_t]`` and stage cost ``cost.stage(x_t, u_t,
        t) + 1/2 (u_t - u_{t-1})' S (u_t - u_{t-1})`` (none at ``t = 0`` without ``u_prev``), and a function that
        maps its solution back to ``problem``'s (states, gains and costates of ``x`` alone; the gains on the
        previous control in ``extras["K_previous"]``). Differentiable like the problem."""
        n, m = problem.n, problem.m
        prev = problem.x0.new_zeros(problem.B, m) if self.u_prev is None else self.u_prev.expand(problem.B, m)
        x0 = torch.cat([problem.x0, prev], -1)
        X_init = None
        if problem.X_init is not None:
            X_init = torch.cat([problem.X_init, torch.cat([prev.unsqueeze(1), problem.U_init], 1)], -1)
        lifted = problem.replace(dynamics=_WithPreviousControl(problem.dynamics),
                                 cost=_SlewStages(self.cost, self.S, self.u_prev is not None), x0=x0, X_init=X_init,
                                 x_lower=None, x_upper=None)

        def back(sol):
            extras = dict(sol.extras)
            if "costates" in extras:
                extras["costates"] = extras["costates"][..., :n]
            K = None if sol.K is None else sol.K[..., :n]
            if sol.K is not None:
                extras["K_previous"] = sol.K[..., n:]
            return type(sol)(X=None if sol.X is None else sol.X[..., :n], U=sol.U, cost=sol.cost, status=sol.status,
                             iterations=sol.iterations, cost_history=sol.cost_history, residual=sol.residual, K=K,
                             k=sol.k, extras=extras)
        return lifted, back


class _WithPreviousControl(Dynamics):
    """``[x; p] -> [f(x, u, t); u]``: a model whose state also holds the previous control."""

    def __init__(self, dynamics):
        super().__init__(dynamics.state_dim + dynamics.control_dim, dynamics.control_dim)
        self.dynamics, self.time_varying = dynamics, dynamics.time_varying

    def forward(self, x, u, t=None):
        return torch.cat([self.dynamics(x[..., :self.dynamics.state_dim], u, t), u], -1)

    def jacobians(self, x, u, t=None):
        n, m = self.dynamics.state_dim, self.control_dim
        A, Bu = self.dynamics.jacobians(x[..., :n], u, t)
        eye = torch.eye(m, dtype=x.dtype, device=x.device).expand(*x.shape[:-1], m, m)
        return (torch.nn.functional.pad(A, (0, m, 0, m)), torch.cat([Bu, eye], -2))

    def vector_hessians(self, x, u, lam, t=None):
        n, m = self.dynamics.state_dim, self.control_dim
        hxx, hux, huu = self.dynamics.vector_hessians(x[..., :n], u, lam[..., :n], t)
        return torch.nn.functional.pad(hxx, (0, m, 0, m)), torch.nn.functional.pad(hux, (0, m)), huu


class _SlewStages(Cost):
    """The slew-rate penalty as a stage cost on ``[x; u_prev]`` (see :meth:`SlewRateCost.separated`)."""

    def __init__(self, cost, S, first):
        super().__init__()
        self.cost, self.S, self.first = cost, S, first
        self.time_varying = cost.time_varying or not first      # without u_prev, stage 0 has no penalty

    def stage(self, x, u, t=None):
        m = u.shape[-1]
        d = u - x[..., -m:]
        penalty = 0.5 * ((d @ self.S) * d).sum(-1)
        if not self.first and t == 0:
            penalty = penalty * 0.0
        return self.cost.stage(x[..., :-m], u, t if self.cost.time_varying else None) + penalty

    def terminal(self, x):
        return self.cost.terminal(x[..., :x.shape[-1] - self.S.shape[-1]])
