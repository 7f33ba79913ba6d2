"""MuJoCo models as :class:`~dynamics.Dynamics`: one ``forward`` is one control step of ``frame_skip`` substeps.

The state is ``x = [qpos; qvel; act]`` (``act`` only where the model has actuator activations), the control is
``ctrl``. Rows are stepped together by ``mujoco.rollout`` on its thread pool (no Python loop over the batch); the
Jacobians are finite differences of the whole control step, every perturbed point one more row of the same
batched rollout. ``forward`` is differentiable with respect to ``x`` and ``u`` through those Jacobians (a
``torch.autograd.Function``), so single shooting, implicit gradients and the MPC layers work unchanged; the model
has no torch parameters (MuJoCo's own parameters are not differentiable here).

MuJoCo computes in float64: float32 input is accepted and the output cast back to it; inputs on another device
are moved to the CPU and the results back. Needs ``pip install torch-trajopt[mujoco]``.
"""
from __future__ import annotations

import copy
import os
import threading

import numpy as np
import torch
from torch.autograd.function import once_differentiable

try:
    import mujoco
    from mujoco import rollout as _mj_rollout
except ImportError as exc:             # pragma: no cover - exercised only without mujoco
    raise ImportError("dynamics.MuJoCoDynamics needs MuJoCo: pip install torch-trajopt[mujoco]") from exc

from .base import Dynamics
from .validation import check_bool, check_consistent, check_positive, check_tensor

__all__ = ["MuJoCoDynamics"]

_FULL = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
_CTRL = int(mujoco.mjtState.mjSTATE_CTRL)
_EXTRA_STATE = {what: int(getattr(mujoco.mjtState, spec)) for what, spec in (
    ("actuator/sensor history (delays)", "mjSTATE_HISTORY"), ("plugin state", "mjSTATE_PLUGIN"))
    if hasattr(mujoco.mjtState, spec)}             # history is newer than some supported MuJoCo versions
_MAXVAL = 1e10                 # MuJoCo's mjMAXVAL: larger values count as diverged (mju_isBad)
_ON_UNSTABLE = ("nan", "last", "raise")
_RUNTIME = ("_rollout", "_datas", "_models", "_lock", "_nthread_built")
_CHUNK = 1 << 24           # doubles of rollout output per call (128 MiB)


def _load(model):
    """``(MjModel, frame_skip or None)`` from a path, an XML string, an ``MjModel``, a Gymnasium id or env."""
    if isinstance(model, mujoco.MjModel):
        return model, None
    if isinstance(model, os.PathLike) or (isinstance(model, str) and not model.lstrip().startswith("<")
                                          and (os.path.exists(model) or model.endswith((".xml", ".mjb")))):
        path = os.fspath(model)
        try:
            loaded = (mujoco.MjModel.from_binary_path(path) if path.endswith(".mjb")
                      else mujoco.MjModel.from_xml_path(path))
        except Exception as exc:
            raise ValueError(f"MuJoCoDynamics: model file {path!r} does not load: {exc}") from exc
        return loaded, None
    if isinstance(model, str) and model.lstrip().startswith("<"):
        try:
            return mujoco.MjModel.from_xml_string(model), None
        except Exception as exc:
            raise ValueError(f"MuJoCoDynamics: model (an MJCF XML string) does not compile: {exc}") from exc
    if isinstance(model, str):
        try:
            import gymnasium
        except ImportError as exc:
            raise ValueError(f"MuJoCoDynamics: model {model!r} is not a file, an XML string, or (gymnasium is not "
                             "installed) a Gymnasium environment id; pip install torch-trajopt[mujoco]") from exc
        try:
            env = gymnasium.make(model)
        except Exception as exc:
            raise ValueError(f"MuJoCoDynamics: model {model!r} is neither an existing file, an MJCF XML string, "
                             f"nor a Gymnasium environment id that makes: {exc}") from exc
        try:
            return _from_env(env, model)
        finally:
            env.close()
    inner = getattr(model, "unwrapped", None)
    if inner is not None and isinstance(getattr(inner, "model", None), mujoco.MjModel):
        return _from_env(model, type(inner).__name__)
    raise TypeError("MuJoCoDynamics: model must be an MJCF path or XML string, a mujoco.MjModel, a Gymnasium "
                    f"MuJoCo environment or its id, got {type(model).__name__}")


def _from_env(env, name):
    inner = env.unwrapped
    if not isinstance(getattr(inner, "model", None), mujoco.MjModel):
        raise ValueError(f"MuJoCoDynamics: Gymnasium environment {name!r} is not a MuJoCo environment")
    return inner.model, int(getattr(inner, "frame_skip", 1))


class MuJoCoDynamics(Dynamics):
    """A MuJoCo model stepped ``frame_skip`` substeps per ``forward``, as a Gymnasium MuJoCo environment's step.

    Args:
        model: an MJCF file path (or ``.mjb``), an MJCF XML string, a ``mujoco.MjModel``, a Gymnasium MuJoCo
            environment (its ``unwrapped.model`` and ``frame_skip``) or its id (``"HalfCheetah-v5"``). The model
            is copied: later edits to the original do not reach this one (edit :attr:`mjmodel` instead).
        frame_skip: substeps per control step (the control is held over them); by default the environment's,
            else 1.
        nthread: threads for the batched steps and Jacobians; ``None`` follows ``torch.get_num_threads()`` at
            each call.
        eps: finite-difference step of the Jacobians (absolute, as ``mjd_transitionFD``'s ``eps``).
        centered: centred differences (accurate to ``O(eps^2)``, twice the steps) or forward ones.
        hessian_eps: step of the central differences of the Jacobians that :meth:`vector_hessians` takes.
        on_unstable: what a row whose simulation diverges gives (see below): ``"nan"`` (default), ``"last"``
            or ``"raise"``.

    State and control: ``x = [qpos (nq); qvel (nv); act (na)]``, ``u = ctrl (nu)``; batched ``(B, n)``,
    ``(B, m)``, or unbatched ``(n,)``, ``(m,)``. Every ``forward`` starts from MuJoCo time 0 with a zero
    constraint-solver warm start (neither is part of ``x``); within the ``frame_skip`` substeps the warm start
    carries over as in ``mj_step``. Controls outside ``ctrlrange`` are clamped by MuJoCo itself (as in
    Gymnasium's step; the Jacobian in that control is then zero). Applied forces and mocap poses are the model's
    defaults.

    Instability: MuJoCo's automatic reset is disabled in the copy (a diverged step would otherwise come back as
    the model's initial pose, silently). A row counts as unstable when any substep's state is NaN, Inf or beyond
    ``1e10``, or MuJoCo stopped stepping it on a warning, or its ``x``/``u`` is not finite. Such rows are
    flagged in :attr:`last_unstable` ``(B,)`` (bool, set by every ``forward``) and come back, by
    ``on_unstable``: ``"nan"`` as NaN, so that solvers mark those problems ``NOT_FINITE`` and the other rows
    go on; ``"last"`` as the last finite substep state (NaN where ``x`` or ``u`` itself is not finite);
    ``"raise"`` raise (``ValueError`` naming ``x`` or ``u`` for non-finite input, ``RuntimeError`` naming
    the rows for a diverged simulation).

    Derivatives: :meth:`jacobians` are finite differences of the whole step (all ``frame_skip`` substeps, every
    integrator; with the Euler integrator they equal ``mjd_transitionFD`` chained over the substeps to
    ``O(eps^2)``); ``forward`` is differentiable in ``x`` and ``u`` (first order: its backward applies the
    Jacobians and is not itself differentiable); :meth:`vector_hessians` are central differences of the
    Jacobians. Free and ball joints (quaternions, ``nq != nv``) step, but have no Jacobians here:
    :meth:`jacobians` raises naming the joints.

    Threads: ``mujoco.rollout`` runs ``nthread`` threads (by default ``torch.get_num_threads()``); a model is
    meant for one Python thread at a time (a lock serializes concurrent calls).
    """

    time_varying = False

    def __init__(self, model, frame_skip: int | None = None, *, nthread: int | None = None, eps: float = 1e-6,
                 centered: bool = True, hessian_eps: float = 1e-4, on_unstable: str = "nan"):
        m, env_skip = _load(model)
        frame_skip = (env_skip or 1) if frame_skip is None else frame_skip
        if isinstance(frame_skip, bool) or not isinstance(frame_skip, (int, np.integer)) or frame_skip < 1:
            raise ValueError(f"MuJoCoDynamics: frame_skip must be a positive integer, got {frame_skip!r}")
        if nthread is not None and (not isinstance(nthread, (int, np.integer)) or nthread < 1):
            raise ValueError(f"MuJoCoDynamics: nthread must be a positive integer or None, got {nthread!r}")
        check_positive("MuJoCoDynamics", eps=eps, hessian_eps=hessian_eps)
        check_bool("MuJoCoDynamics", centered=centered)
        if on_unstable not in _ON_UNSTABLE:
            raise ValueError(f"MuJoCoDynamics: on_unstable must be one of {_ON_UNSTABLE}, got {on_unstable!r}")
        if m.nu < 1:
            raise ValueError("MuJoCoDynamics: model has no actuators (nu = 0): there is no control")
        for what, spec in _EXTRA_STATE.items():
            if mujoco.mj_stateSize(m, spec):
                raise ValueError(f"MuJoCoDynamics: model has {what}, which x = [qpos; qvel; act] cannot carry")
        super().__init__(m.nq + m.nv + m.na, m.nu)
        self.mjmodel = copy.copy(m)
        self.mjmodel.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
        self.frame_skip = int(frame_skip)
        self.nthread = nthread
        self.eps, self.centered, self.hessian_eps = float(eps), bool(centered), float(hessian_eps)
        self.on_unstable = on_unstable
        self.nq, self.nv, self.na = m.nq, m.nv, m.na
        self.quaternion_joints = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint {j}"
                                  for j in range(m.njnt) if int(m.jnt_type[j]) in (int(mujoco.mjtJoint.mjJNT_FREE),
                                                                                   int(mujoco.mjtJoint.mjJNT_BALL))]
        self.last_unstable = torch.zeros(0, dtype=torch.bool)
        self._reset_runtime()

    # ------------------------------------------------------------------ runtime resources (not copied or pickled)
    def _reset_runtime(self):
        for k in _RUNTIME:
            self.__dict__[k] = None
        self.__dict__["_lock"] = threading.Lock()

    def __getstate__(self):
        state = dict(super().__getstate__())
        for k in _RUNTIME:
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._reset_runtime()

    def _threads(self) -> int:
        return max(1, int(self.nthread if self.nthread is not None else torch.get_num_threads()))

    def _ensure(self, nt: int):
        """The rollout thread pool and its MjData (one per thread), for ``nt`` threads."""
        if self._nthread_built == nt:
            return
        if self._rollout is not None:
            self._rollout.close()
        self._rollout = _mj_rollout.Rollout(nthread=nt if nt > 1 else 0)
        self._datas = [mujoco.MjData(self.mjmodel) for _ in range(nt)]
        self._models = []
        self._nthread_built = nt

    def __del__(self):
        try:
            if self._rollout is not None:
                self._rollout.close()
        except Exception:           # at interpreter shutdown mujoco may be gone already; nothing left to release
            return

    def extra_repr(self) -> str:
        return (f"nq={self.nq}, nv={self.nv}, na={self.na}, nu={self.control_dim}, frame_skip={self.frame_skip}, "
                f"timestep={self.mjmodel.opt.timestep}")

    # ------------------------------------------------------------------ inputs
    def _inputs(self, where, x, u, finite_inputs=True):
        dims = {"n": self.state_dim, "m": self.control_dim}
        check_tensor(where, "x", x, ("n",), dims, finite=False)
        check_tensor(where, "u", u, ("m",), dims, finite=False)
        batch = check_consistent(where, {"x": x, "u": u}, {"x": 1, "u": 1})
        if batch is None:
            return None, x.unsqueeze(0), u.unsqueeze(0)
        return batch, x.expand(batch, self.state_dim), u.expand(batch, self.control_dim)

    def _numpy(self, where, x, u):
        """Float64 CPU arrays of ``x``, ``u`` and the rows that cannot be simulated (non-finite or huge input)."""
        xd = x.detach().to("cpu", torch.float64).numpy()
        ud = u.detach().to("cpu", torch.float64).numpy()
        bad_x = ~(np.isfinite(xd) & (np.abs(xd) < _MAXVAL)).all(1)
        bad_u = ~(np.isfinite(ud) & (np.abs(ud) < _MAXVAL)).all(1)
        if self.on_unstable == "raise" and (bad_x.any() or bad_u.any()):
            name, rows = ("x", bad_x) if bad_x.any() else ("u", bad_u)
            raise ValueError(f"{where}: {name} contains NaN, Inf or values beyond 1e10 in rows "
                             f"{np.flatnonzero(rows)[:10].tolist()}")
        bad = bad_x | bad_u
        if bad.any():       # simulate a harmless stand-in; those rows come back non-finite
            xd, ud = xd.copy(), ud.copy()
            xd[bad] = np.concatenate([self.mjmodel.qpos0, np.zeros(self.nv + self.na)])
            ud[bad] = 0.0
        return xd, ud, bad

    # ------------------------------------------------------------------ stepping
    def forward(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Next state ``(B, n)`` (or ``(n,)``) after ``frame_skip`` substeps from ``x (B, n)`` under ``u (B, m)``,
        in the dtype and on the device of ``x``; differentiable with respect to ``x`` and ``u``. Sets
        :attr:`last_unstable` ``(B,)`` (``(1,)`` for unbatched input)."""
        batch, xb, ub = self._inputs(f"{type(self).__name__}.forward", x, u)
        if torch.is_grad_enabled() and (xb.requires_grad or ub.requires_grad):
            out = _Step.apply(self, xb, ub)
        else:
            out = self._step(xb, ub)
        return out if batch is not None else out[0]

    def _simulate(self, xd, ud):
        """Roll rows ``xd (M, n)``, ``ud (M, m)`` (float64) ``frame_skip`` substeps on the thread pool: the
        substep states ``(M, k, n)`` and which of them are sound ``(M, k)`` (finite, below 1e10, and stepped:
        MuJoCo stops a rollout on a warning, and its time then lags)."""
        M, n, k = xd.shape[0], self.state_dim, self.frame_skip
        m = self.mjmodel
        nstate = mujoco.mj_stateSize(m, _FULL)
        states = np.empty((M, k, n))
        good = np.empty((M, k), dtype=bool)
        expected = m.opt.timestep * np.arange(1, k + 1)
        chunk = max(1, _CHUNK // (k * nstate))
        with self._lock:
            nt = self._threads()
            self._ensure(nt)
            for lo in range(0, M, chunk):           # bounded memory for large batches (Hessians)
                hi = min(M, lo + chunk)
                R = hi - lo
                state0 = np.zeros((R, nstate))
                state0[:, 1:1 + n] = xd[lo:hi]
                control = np.ascontiguousarray(np.broadcast_to(ud[lo:hi, None, :], (R, k, self.control_dim)))
                out = np.empty((R, k, nstate))
                if len(self._models) != R:
                    self._models = [m] * R
                self._rollout.rollout(self._models, self._datas, state0, control, control_spec=_CTRL,
                                      skip_checks=True, nstep=k, initial_warmstart=None, state=out, sensordata=None,
                                      chunk_size=max(1, R // (4 * nt)))
                s = out[:, :, 1:1 + n]
                states[lo:hi] = s
                good[lo:hi] = ((np.abs(out[:, :, 0] - expected) < 0.5 * m.opt.timestep)
                               & (np.isfinite(s) & (np.abs(s) < _MAXVAL)).all(-1))
        return states, good

    def _step(self, x, u):
        where = f"{type(self).__name__}.forward"
        xd, ud, bad_in = self._numpy(where, x, u)
        states, good = self._simulate(xd, ud)
        good &= ~bad_in[:, None]
        ok = good.all(1)
        nxt = states[:, -1]
        if not ok.all():
            rows = np.flatnonzero(~ok)
            if self.on_unstable == "raise":
                raise RuntimeError(f"{where}: the simulation diverged (or MuJoCo stopped it on a warning) in rows "
                                   f"{rows[:10].tolist()}")
            nxt = nxt.copy()
            if self.on_unstable == "last":
                lead = np.cumprod(good, 1).sum(1)          # substeps before the first unsound one
                nxt[rows] = np.where((lead[rows] > 0)[:, None], states[rows, np.maximum(lead[rows] - 1, 0)],
                                     xd[rows])
                nxt[bad_in] = np.nan
            else:
                nxt[rows] = np.nan
        self.last_unstable = torch.from_numpy(~ok).to(x.device)
        return torch.from_numpy(np.ascontiguousarray(nxt)).to(dtype=x.dtype, device=x.device)

    # ------------------------------------------------------------------ derivatives
    def jacobians(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None):
        """``(A (B, n, n), B (B, n, m))``: finite differences of the whole control step at ``x (B, n)``,
        ``u (B, m)`` (or unbatched), in the dtype and on the device of ``x``.

        Every perturbed step is one more row of the same batched ``mujoco.rollout`` call (``2 (n + m) + 1``
        rollouts per row centred, ``n + m + 1`` forward), from the same zero warm start as :meth:`forward`,
        so these are the differences of :meth:`forward` itself, for every integrator (``mjd_transitionFD``
        rejects RK4, which most Gymnasium tasks use). Controls follow ``mjd_transitionFD``: a perturbation
        that would leave a limited ``ctrlrange`` is dropped for a one-sided difference (zero if neither side
        fits). Not differentiable (constants to autograd). Rows that cannot be simulated or diverge under a
        perturbation give NaN (``on_unstable="raise"``: an error).
        """
        batch, xb, ub = self._inputs(f"{type(self).__name__}.jacobians", x, u)
        A, Bm = self._jacobians(xb, ub)
        return (A, Bm) if batch is not None else (A[0], Bm[0])

    def _check_tangent(self, where):
        if self.nq != self.nv:
            raise NotImplementedError(
                f"{where}: the model has quaternion joints ({', '.join(self.quaternion_joints)}: free or ball), "
                "whose qpos has more coordinates than its tangent space; MuJoCoDynamics gives Jacobians (and "
                "gradients) only for models with hinge and slide joints (nq == nv). forward still works.")

    def _steps(self, xd, ud):
        """Perturbation steps ``(S_plus, S_minus)`` ``(B, n+m)`` of every coordinate (0: the nominal point)."""
        B, n = xd.shape[0], self.state_dim
        e = self.eps
        plus = np.full((B, n + self.control_dim), e)
        minus = np.full_like(plus, -e if self.centered else 0.0)
        m = self.mjmodel
        clamps = not m.opt.disableflags & int(mujoco.mjtDisableBit.mjDSBL_CLAMPCTRL)
        limited = m.actuator_ctrllimited.astype(bool) & clamps
        if limited.any():
            lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
            inside = (ud >= lo) & (ud <= hi)
            fwd = ~limited | (inside & (ud + e <= hi))
            back = ~limited | (inside & (ud - e >= lo))
            if self.centered:
                plus[:, n:] = np.where(fwd, e, 0.0)
                minus[:, n:] = np.where(back, -e, 0.0)
            else:
                plus[:, n:] = np.where(fwd, e, np.where(back, -e, 0.0))
        return plus, minus

    def _jacobians(self, x, u):
        where = f"{type(self).__name__}.jacobians"
        self._check_tangent(where)
        xd, ud, bad_in = self._numpy(where, x, u)
        B, n, mu = xd.shape[0], self.state_dim, self.control_dim
        N = n + mu
        plus, minus = self._steps(xd, ud)
        tau = np.concatenate([xd, ud], 1)
        eye = np.eye(N)
        pts = [tau[:, None, :], tau[:, None, :] + plus[:, :, None] * eye]       # nominal, then e_i steps
        if self.centered:
            pts.append(tau[:, None, :] + minus[:, :, None] * eye)
        pts = np.concatenate(pts, 1)                                             # (B, R, N)
        R = pts.shape[1]
        states, good = self._simulate(np.ascontiguousarray(pts[..., :n]).reshape(B * R, n),
                                      np.ascontiguousarray(pts[..., n:]).reshape(B * R, mu))
        nxt = states[:, -1].reshape(B, R, n)
        f_plus = nxt[:, 1:1 + N]
        f_minus = nxt[:, 1 + N:] if self.centered else nxt[:, :1]
        width = plus - minus
        with np.errstate(divide="ignore", invalid="ignore"):
            J = np.where(width[:, :, None] != 0, (f_plus - f_minus) / width[:, :, None], 0.0)   # (B, N, n)
        J = torch.from_numpy(np.ascontiguousarray(J.transpose(0, 2, 1)))
        bad = torch.from_numpy(bad_in | ~good.reshape(B, R * self.frame_skip).all(1))
        if bool(bad.any()):
            if self.on_unstable == "raise":
                raise RuntimeError(f"{where}: the simulation diverged (or MuJoCo stopped it on a warning) under a "
                                   f"perturbation in rows {bad.nonzero().flatten()[:10].tolist()}")
            J = J.masked_fill(bad.view(B, 1, 1), float("nan"))
        J = J.to(dtype=x.dtype, device=x.device)
        return J[..., :n], J[..., n:]

    def vector_hessians(self, x: torch.Tensor, u: torch.Tensor, lam: torch.Tensor, t: int | None = None):
        """Second-order terms ``(f_xx (B,n,n), f_ux (B,m,n), f_uu (B,m,m))`` of ``lam' f`` for DDP and for the
        Newton steps and implicit gradients of :func:`trajopt.ilqr`, by central differences (step
        ``hessian_eps``) of :meth:`jacobians` along every coordinate of ``[x; u]``, symmetrized: ``2 (n + m)``
        Jacobian evaluations per row. Inputs as for :meth:`jacobians`, ``lam (B, n)``; not differentiable.
        """
        where = f"{type(self).__name__}.vector_hessians"
        batch, xb, ub = self._inputs(where, x, u)
        self._check_tangent(where)
        n, mu = self.state_dim, self.control_dim
        N = n + mu
        lam = lam.expand(xb.shape[0], n) if lam.ndim == 1 else lam
        tau = torch.cat([xb, ub], -1).detach()
        h = self.hessian_eps * torch.eye(N, dtype=tau.dtype, device=tau.device)
        pts = torch.cat([tau.unsqueeze(1) + h, tau.unsqueeze(1) - h], 1).reshape(-1, N)   # (B*2N, N)
        A, Bm = self._jacobians(pts[:, :n], pts[:, n:])
        J = torch.cat([A, Bm], -1).view(-1, 2, N, n, N)
        g = (lam.detach().view(-1, 1, 1, 1, n).to(J.dtype) @ J).squeeze(-2)             # (B, 2, N, N)
        H = (g[:, 0] - g[:, 1]) / (2 * self.hessian_eps)
        H = 0.5 * (H + H.mT)
        out = (H[:, :n, :n], H[:, n:, :n], H[:, n:, n:])
        return out if batch is not None else tuple(o[0] for o in out)


class _Step(torch.autograd.Function):
    """One batched step whose backward applies the finite-differenced Jacobians."""

    @staticmethod
    def forward(ctx, model, x, u):
        ctx.model = model
        ctx.save_for_backward(x, u)
        return model._step(x, u)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, u = ctx.saved_tensors
        A, Bm = ctx.model._jacobians(x, u)
        gx = (g.unsqueeze(-2) @ A).squeeze(-2) if ctx.needs_input_grad[1] else None
        gu = (g.unsqueeze(-2) @ Bm).squeeze(-2) if ctx.needs_input_grad[2] else None
        return None, gx, gu
