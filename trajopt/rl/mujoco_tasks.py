"""Gymnasium's MuJoCo tasks (v5) as trajectory-optimization problems: the model, a cost equal to the negative
reward, the control bounds and a horizon, for :class:`trajopt.MPC` on the real environments.

:class:`RewardResidualCost` is the MuJoCo MPC convention: a stage cost ``penalty(r(x, u))`` of residuals ``r``
(a torch function of the state, the control, the state after the step and positions MuJoCo computes), with the
MuJoCo part evaluated for the whole batch by one ``mujoco.rollout`` call, its Jacobians by finite differences
(every perturbed point one more row of that call) and the cost quadratized by Gauss-Newton, ``J' penalty'' J``.
Every solver takes it: :func:`trajopt.ilqr` through :meth:`RewardResidualCost.quadratize`, the sampling solvers
through :meth:`RewardResidualCost.stage`.

Two forms (``exact``):

- ``exact=True``: the stage cost of ``(x_t, u_t)`` is evaluated after the environment's step from it, as
  Gymnasium computes the reward: forward velocity from the position change over the step, the state after the
  step, and site or body positions as Gymnasium reads them after ``mj_step``: with the Euler integrator the
  kinematics of the last substep's start (its ``mj_forward`` precedes the integration; the rollout's last
  ``sensordata``), so ``-cost.stage(x, u)`` equals the reward of ``env.step(u)`` from ``x`` to rounding; with
  RK4, ``MjData`` keeps the kinematics of RK4's last internal stage, which no rollout output holds, and the
  positions are taken at the state after the step instead (the reward differs by about 1e-5 on
  InvertedDoublePendulum and Reacher; elsewhere, without positions, to rounding). Except where the episode
  terminates (below). Each evaluation
  simulates the step once more (``frame_skip`` substeps per row, one batched call), so planning on it costs
  about twice the model's own simulation.
- ``exact=False`` (cheaper, for planning): the same terms evaluated at the current state ``x_t``: the forward
  velocity is ``qvel`` rather than the position change, the positions are those of ``x_t`` (one kinematics
  pass per row, no step); costs without positions (HalfCheetah, Hopper, Walker2d, Swimmer) are then plain
  torch functions. Summed over a horizon it differs from the negative return by one step's shift.

Termination (InvertedPendulum, InvertedDoublePendulum, Hopper, Walker2d): the reward pays a constant bonus
while the state is healthy and the episode ends when it is not. The cost keeps the bonus constant and adds a
smooth penalty ``barrier * relu(violation + margin)^2`` (continuously differentiable and convex in the
residual) that starts ``margin`` inside the healthy set: the cost equals the negative reward wherever the
state is at least ``margin`` inside, and there only.

Shapes: ``x (B, n)``, ``u (B, m)``, costs ``(B,)``. :meth:`RewardResidualCost.stage` is differentiable with
respect to ``x`` and ``u`` (the MuJoCo part by its finite-difference Jacobians, first order);
:meth:`RewardResidualCost.quadratize` (Gauss-Newton) is not: use the solvers with ``grad=None``.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .._core.checks import check_bool, check_callable, check_int, check_nonnegative, check_positive
from .._core.costs import Cost, Quadratization
from ._checks import check_features

__all__ = ["RewardResidualCost", "Residuals", "MuJoCoTask", "mujoco_task", "inverted_pendulum",
           "inverted_double_pendulum", "reacher", "half_cheetah", "hopper", "walker2d", "swimmer", "pusher",
           "TASKS"]

_MAXVAL = 1e10


@dataclass
class Residuals:
    """What a residual function sees, rows first: the state ``x (B, n)``, the control ``u (B, m)``, the state
    after the step ``x_next (B, n)`` (``x`` itself when the cost is not ``exact``), ``points`` (name -> ``(B, 3)``
    positions computed by MuJoCo), ``dt`` the control step and ``exact``."""
    x: torch.Tensor
    u: torch.Tensor
    x_next: torch.Tensor
    points: dict
    dt: float
    exact: bool
    nq: int

    def qpos(self, after: bool = True) -> torch.Tensor:
        return (self.x_next if after else self.x)[..., :self.nq]

    def qvel(self, after: bool = True) -> torch.Tensor:
        return (self.x_next if after else self.x)[..., self.nq:]

    def velocity(self, i: int) -> torch.Tensor:
        """Velocity of coordinate ``i`` ``(B,)``: the position change over the step divided by ``dt`` (exact, as
        Gymnasium's forward reward), or ``qvel[i]`` of ``x`` (not exact)."""
        if self.exact:
            return (self.x_next[..., i] - self.x[..., i]) / self.dt
        return self.x[..., self.nq + i]


class _MuJoCoOutputs:
    """Batched MuJoCo evaluation of ``y(x, u) = [x_next; positions]`` (exact) or ``[positions]`` at ``x`` (not
    exact) by ``mujoco.rollout``, and its finite-difference Jacobian ``(B, q, n + m)``."""

    def __init__(self, mjmodel, frame_skip, nq, nv, with_next, eps, nthread):
        self.m, self.frame_skip, self.nq, self.nv = mjmodel, frame_skip, nq, nv
        self.n = nq + nv
        self.with_next = with_next
        self.nsensor = mjmodel.nsensordata
        # RK4 leaves the kinematics of its last stage in MjData (what Gymnasium reads), which no rollout output
        # holds: the positions are then taken at x_next, from one more substep's mj_forward
        import mujoco
        self.rk4 = with_next and self.nsensor > 0 and int(mjmodel.opt.integrator) == int(mujoco.mjtIntegrator.mjINT_RK4)
        self.nstep = (frame_skip + self.rk4) if with_next else 1
        self.q = (self.n if with_next else 0) + self.nsensor
        self.eps, self.nthread = eps, nthread
        self._rollout = self._datas = None
        self._built = None
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_rollout=None, _datas=None, _built=None, _lock=None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _ensure(self):
        import mujoco
        from mujoco import rollout
        nt = max(1, int(self.nthread or torch.get_num_threads()))
        if self._built != nt:
            if self._rollout is not None:
                self._rollout.close()
            self._rollout = rollout.Rollout(nthread=nt if nt > 1 else 0)
            self._datas = [mujoco.MjData(self.m) for _ in range(nt)]
            self._built = nt
        return nt

    def values(self, xd: np.ndarray, ud: np.ndarray) -> np.ndarray:
        """``y (M, q)`` of float64 rows ``xd (M, n)``, ``ud (M, m)``; NaN where the simulation diverged."""
        import mujoco
        M, k = xd.shape[0], self.nstep
        full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
        nstate = mujoco.mj_stateSize(self.m, full)
        bad = ~(np.isfinite(xd) & (np.abs(xd) < _MAXVAL)).all(1) | ~(np.isfinite(ud) & (np.abs(ud) < _MAXVAL)).all(1)
        if bad.any():
            xd, ud = xd.copy(), ud.copy()
            xd[bad] = np.concatenate([self.m.qpos0, np.zeros(self.nv)])
            ud[bad] = 0.0
        state0 = np.zeros((M, nstate))
        state0[:, 1:1 + self.n] = xd
        control = np.ascontiguousarray(np.broadcast_to(ud[:, None, :], (M, k, ud.shape[1])))
        out = np.empty((M, k, nstate))
        sens = np.empty((M, k, self.nsensor)) if self.nsensor else None
        with self._lock:
            nt = self._ensure()
            self._rollout.rollout([self.m] * M, self._datas, state0, control,
                                  control_spec=int(mujoco.mjtState.mjSTATE_CTRL), skip_checks=True, nstep=k,
                                  initial_warmstart=None, state=out, sensordata=sens,
                                  chunk_size=max(1, M // (4 * nt)))
        last = self.frame_skip - 1
        parts = [out[:, last, 1:1 + self.n]] if self.with_next else []
        if self.nsensor:
            parts.append(sens[:, -1])      # sensors of the last substep's mj_forward (Gymnasium's positions)
        y = np.concatenate(parts, 1)
        k = last + 1 if self.with_next else k
        s = out[:, :k, 1:1 + self.n]
        stepped = np.abs(out[:, :k, 0] - self.m.opt.timestep * np.arange(1, k + 1)) < 0.5 * self.m.opt.timestep
        ok = ~bad & stepped.all(1) & (np.isfinite(s) & (np.abs(s) < _MAXVAL)).all((1, 2))
        y[~ok] = np.nan
        return y

    def jacobian(self, xd, ud):
        """``(y (B, q), dy/d[x; u] (B, q, n + m))`` by central differences (one-sided at a control limit, as
        :class:`dynamics.MuJoCoDynamics`), all points one batched rollout."""
        B, n, mu = xd.shape[0], self.n, ud.shape[1]
        N, e = n + mu, self.eps
        plus, minus = np.full((B, N), e), np.full((B, N), -e)
        m = self.m
        limited = m.actuator_ctrllimited.astype(bool)
        if limited.any():
            lo, hi = m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1]
            inside = (ud >= lo) & (ud <= hi)
            plus[:, n:] = np.where(~limited | (inside & (ud + e <= hi)), e, 0.0)
            minus[:, n:] = np.where(~limited | (inside & (ud - e >= lo)), -e, 0.0)
        tau = np.concatenate([xd, ud], 1)
        eye = np.eye(N)
        pts = np.concatenate([tau[:, None], tau[:, None] + plus[:, :, None] * eye,
                              tau[:, None] + minus[:, :, None] * eye], 1)                  # (B, 1 + 2N, N)
        R = pts.shape[1]
        y = self.values(np.ascontiguousarray(pts[..., :n]).reshape(B * R, n),
                        np.ascontiguousarray(pts[..., n:]).reshape(B * R, mu)).reshape(B, R, self.q)
        width = plus - minus
        with np.errstate(divide="ignore", invalid="ignore"):
            J = np.where(width[:, :, None] != 0, (y[:, 1:1 + N] - y[:, 1 + N:]) / width[:, :, None], 0.0)
        return y[:, 0], np.ascontiguousarray(J.transpose(0, 2, 1))


class _Outputs(torch.autograd.Function):
    """``y(x, u)`` of :class:`_MuJoCoOutputs`, its backward applying the finite-difference Jacobian."""

    @staticmethod
    def forward(ctx, ev, x, u):
        ctx.ev = ev
        ctx.save_for_backward(x, u)
        xd = x.detach().to("cpu", torch.float64).numpy()
        ud = u.detach().to("cpu", torch.float64).numpy()
        return torch.from_numpy(ev.values(xd, ud)).to(dtype=x.dtype, device=x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, u = ctx.saved_tensors
        _, J = ctx.ev.jacobian(x.detach().to("cpu", torch.float64).numpy(),
                               u.detach().to("cpu", torch.float64).numpy())
        gtau = (g.unsqueeze(-2) @ torch.from_numpy(J).to(g)).squeeze(-2)
        n = x.shape[-1]
        return None, gtau[..., :n], gtau[..., n:]


class RewardResidualCost(Cost):
    """A stage cost ``penalty(residual(x, u))`` whose residuals may use MuJoCo's step and kinematics.

    Args:
        model: the :class:`dynamics.MuJoCoDynamics` planned on (its ``frame_skip``, ``nq``, ``nv`` and timestep).
        residual: ``residual(Residuals) -> r (B, p)``, a torch function of :class:`Residuals`' fields.
        penalty: ``penalty(r (B, p)) -> (B,)``, a torch function (twice differentiable where it matters; its
            Hessian in ``r`` is the Gauss-Newton weight, so a convex penalty gives a positive semidefinite
            quadratization).
        points: ``{name: (kind, object)}`` positions MuJoCo computes, with ``kind`` ``"site"`` (``site_xpos``)
            or ``"body"`` (the body frame, ``xpos``: Gymnasium's ``get_body_com``); added to a copy of the model
            as ``framepos`` sensors (``spec``, an ``mujoco.MjSpec`` of the same model, is then needed: the
            environment's XML).
        spec: the ``mujoco.MjSpec`` the sensors are added to (``points`` only).
        exact: evaluate after the step (``x_next``, positions as Gymnasium reads them) or at ``x``.
        eps: finite-difference step of the MuJoCo part (finite, > 0).
        nthread: threads of the batched rollouts, an int >= 1 (default ``torch.get_num_threads()``).

    The MuJoCo part ``y = [x_next; positions]`` of all rows is one ``mujoco.rollout`` call (no Python loop over
    rows); its Jacobian in ``[x; u]`` central differences of that map, every perturbed point one more row of one
    call. The torch part's partial derivatives come from autograd, one backward pass per residual component.
    A cost with neither ``points`` nor ``exact`` is a plain torch function.

    The shapes of ``x`` and ``u`` are checked; their values are not: a row with NaN or Inf (or whose simulation
    diverges) gives NaN in that row's cost only, which the solvers flag per row.
    """

    def __init__(self, model, residual: Callable, penalty: Callable, *, points: dict | None = None, spec=None,
                 exact: bool = True, eps: float = 1e-6, nthread: int | None = None):
        super().__init__()
        import mujoco
        import dynamics
        where = "RewardResidualCost"
        if not isinstance(model, dynamics.MuJoCoDynamics):
            raise TypeError(f"{where}: model must be a dynamics.MuJoCoDynamics, got {type(model).__name__}")
        check_callable(where, residual=residual, penalty=penalty)
        check_bool(where, exact=exact)
        check_positive(where, eps=eps)
        if nthread is not None:
            check_int(where, nthread=nthread)
        if points is not None and not isinstance(points, dict):
            raise TypeError(f"{where}: points must be a dict name -> (kind, object) or None, got "
                            f"{type(points).__name__}")
        self.nu = model.control_dim
        self.residual_fn, self.penalty_fn = residual, penalty
        self.exact = bool(exact)
        self.nq, self.nv, self.frame_skip = model.nq, model.nv, model.frame_skip
        if model.na:
            raise ValueError("RewardResidualCost: model has actuator activations; x = [qpos; qvel] only here")
        self.dt = float(model.mjmodel.opt.timestep * model.frame_skip)
        self.point_names = list(points or {})
        mjmodel = model.mjmodel
        if points:
            if spec is None:
                raise ValueError("RewardResidualCost: points need spec (the mujoco.MjSpec of the model)")
            kinds = {"site": mujoco.mjtObj.mjOBJ_SITE, "body": mujoco.mjtObj.mjOBJ_XBODY}
            spec = spec.copy() if hasattr(spec, "copy") else spec
            for name, (kind, obj) in points.items():
                if kind not in kinds:
                    raise ValueError(f"RewardResidualCost: points[{name!r}] kind must be 'site' or 'body', "
                                     f"got {kind!r}")
                spec.add_sensor(name=f"residual_{name}", type=mujoco.mjtSensor.mjSENS_FRAMEPOS, objtype=kinds[kind],
                                objname=obj)
            mjmodel = spec.compile()
            if (mjmodel.nq, mjmodel.nv, mjmodel.nu) != (model.nq, model.nv, model.control_dim):
                raise ValueError("RewardResidualCost: spec does not describe the model")
            mjmodel.opt.disableflags |= int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
            mjmodel.opt.timestep = model.mjmodel.opt.timestep
        self.uses_mujoco = self.exact or bool(points)
        self._ev = (_MuJoCoOutputs(mjmodel, self.frame_skip, self.nq, self.nv, self.exact, eps, nthread)
                    if self.uses_mujoco else None)

    # ------------------------------------------------------------------ pieces
    def _split(self, x, u, y):
        n = self.nq + self.nv
        x_next = y[..., :n] if self.exact else x
        s = y[..., n:] if self.exact else y
        points = {name: s[..., 3 * i:3 * i + 3] for i, name in enumerate(self.point_names)}
        return Residuals(x, u, x_next, points, self.dt, self.exact, self.nq)

    def _check_rows(self, where, x, u):
        """Shapes only (every solver iteration comes here): ``x (B, nq + nv)``, ``u (B, m)`` (any leading
        dimensions for a cost without MuJoCo evaluations)."""
        check_features(where, "x", x, self.nq + self.nv, dims="n")
        check_features(where, "u", u, self.nu, dims="m")
        if self.uses_mujoco and not (x.ndim == 2 and u.shape == (x.shape[0], self.nu)):
            raise ValueError(f"{where}: x must be (B, n) and u (B, m), one row each, got x {tuple(x.shape)} and "
                             f"u {tuple(u.shape)}")

    def residuals(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Residuals ``(B, p)`` at ``x (B, n)``, ``u (B, m)``; differentiable like :meth:`stage`."""
        self._check_rows("RewardResidualCost", x, u)
        y = _Outputs.apply(self._ev, x, u) if self.uses_mujoco else None
        return self.residual_fn(self._split(x, u, y))

    def stage(self, x, u, t=None):
        """Stage cost ``(B,)`` (the negative reward of the step from ``x (B, n)`` under ``u (B, m)`` when
        ``exact``); differentiable with respect to ``x`` and ``u``."""
        return self.penalty_fn(self.residuals(x, u))

    def transition_cost(self, x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """Stage cost ``(B,)`` of a step already taken, ``x (B, n) -> x_next (B, n)`` under ``u (B, m)``. An exact
        cost without ``points`` reads ``x_next`` as given (no MuJoCo call: a torch function, differentiable with
        respect to all three); otherwise this is :meth:`stage` (which simulates the step again when exact, and
        ignores ``x_next``)."""
        if not (self.exact and not self.point_names):
            return self.stage(x, u)
        self._check_rows("RewardResidualCost.transition_cost", x, u)
        check_features("RewardResidualCost.transition_cost", "x_next", x_next, self.nq + self.nv, dims="n")
        return self.penalty_fn(self.residual_fn(Residuals(x, u, x_next, {}, self.dt, True, self.nq)))

    def gauss_newton(self, x: torch.Tensor, u: torch.Tensor):
        """``(value (B,), c (B, n+m), C (B, n+m, n+m), J (B, p, n+m))`` at rows ``x (B, n)``, ``u (B, m)``:
        ``c = J' penalty'(r)``, ``C = J' penalty''(r) J`` with the residual Jacobian ``J`` (finite differences of
        the MuJoCo part, autograd of the rest). Not differentiable."""
        self._check_rows("RewardResidualCost.gauss_newton", x, u)
        xd, ud = x.detach(), u.detach()
        with torch.enable_grad():
            xg, ug = xd.clone().requires_grad_(True), ud.clone().requires_grad_(True)
            inputs = [xg, ug]
            if self.uses_mujoco:
                y, Jy = self._ev.jacobian(xd.to("cpu", torch.float64).numpy(), ud.to("cpu", torch.float64).numpy())
                yg = torch.from_numpy(y).to(xd).requires_grad_(True)
                inputs.append(yg)
                r = self.residual_fn(self._split(xg, ug, yg))
            else:
                r = self.residual_fn(self._split(xg, ug, None))
            p = r.shape[-1]
            rows = []
            for i in range(p):
                g = torch.autograd.grad(r[:, i].sum(), inputs, retain_graph=i < p - 1, allow_unused=True,
                                        materialize_grads=True)
                Ji = torch.cat(g[:2], -1)
                if self.uses_mujoco:
                    Ji = Ji + (g[2].unsqueeze(-2) @ torch.from_numpy(Jy).to(Ji)).squeeze(-2)
                rows.append(Ji)
            J = torch.stack(rows, 1)                                                   # (B, p, n+m)
            rd = r.detach().requires_grad_(True)
            value = self.penalty_fn(rd)
            grad_r, = torch.autograd.grad(value.sum(), rd, create_graph=True)
            H = torch.stack([torch.autograd.grad(grad_r[:, i].sum(), rd, retain_graph=i < p - 1,
                                                 materialize_grads=True, allow_unused=True)[0]
                             for i in range(p)], 1) if grad_r.requires_grad else rd.new_zeros(rd.shape[0], p, p)
        c = (grad_r.detach().unsqueeze(-2) @ J).squeeze(-2)
        C = J.mT @ H.detach() @ J
        return value.detach(), c, 0.5 * (C + C.mT), J

    def quadratize(self, X, U):
        """Gauss-Newton quadratization ``(C (B, T, n+m, n+m), c (B, T, n+m), C_final, c_final)`` along
        ``X (B, T+1, n)``, ``U (B, T, m)``: all stages' MuJoCo evaluations in one batched call. The terminal
        term is zero. Not differentiable (constants to autograd)."""
        if X.ndim == 2:
            return Quadratization(*(z[0] for z in self.quadratize(X.unsqueeze(0), U.unsqueeze(0))))
        B, T, m = U.shape
        n = X.shape[-1]
        _, c, C, _ = self.gauss_newton(X[:, :T].reshape(B * T, n), U.reshape(B * T, m))
        return Quadratization(C.view(B, T, n + m, n + m), c.view(B, T, n + m), X.new_zeros(B, n, n),
                              X.new_zeros(B, n))


class _Kinematics:
    """The first of a cost's ``points`` at states ``x (B, n)``, ``(B, 3)``: one ``mj_forward`` per row (the
    sensors of a one-substep rollout, read before its integration); NaN where ``x`` is not finite. Not
    differentiable (for termination tests)."""

    def __init__(self, cost: RewardResidualCost):
        ev = cost._ev
        self.nu = cost.nu
        self.ev = _MuJoCoOutputs(ev.m, 1, ev.nq, ev.nv, False, ev.eps, ev.nthread)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xd = x.detach().to("cpu", torch.float64).reshape(-1, x.shape[-1]).numpy()
        y = self.ev.values(xd, np.zeros((xd.shape[0], self.nu)))[:, :3]
        return torch.from_numpy(y).to(dtype=x.dtype, device=x.device).reshape(*x.shape[:-1], 3)


# ---------------------------------------------------------------------------------------------- penalties
def _hinge(v, margin):
    """``relu(v + margin)^2``: zero while ``v <= -margin`` (at least ``margin`` inside ``v <= 0``), C1 and convex."""
    return torch.relu(v + margin) ** 2


@dataclass
class MuJoCoTask:
    """A Gymnasium MuJoCo task: ``env_id``, the ``model`` (:class:`dynamics.MuJoCoDynamics`), the ``cost``
    (:class:`RewardResidualCost`, the negative reward), the control bounds ``u_lower``, ``u_upper`` ``(m,)``
    (float64), a suggested MPC ``horizon`` (steps), the episode length ``max_steps`` and ``max_return``, the best
    return an episode can have where it is bounded (else None); ``unhealthy(x_next (B, n)) -> (B,)`` bool, the
    environment's termination test (None for tasks that never terminate), ``bonus``, the healthy reward the
    terminating step does not get, and ``exclude``, the leading ``qpos`` coordinates Gymnasium leaves out of the
    observation (the root's position on the locomotion tasks)."""
    env_id: str
    model: object
    cost: RewardResidualCost
    u_lower: torch.Tensor
    u_upper: torch.Tensor
    horizon: int
    max_steps: int
    max_return: float | None = None
    unhealthy: Callable | None = None
    bonus: float = 0.0
    exclude: int = 0

    def make_env(self, **kwargs):
        """``gymnasium.make(env_id, **kwargs)``."""
        import gymnasium
        return gymnasium.make(self.env_id, **kwargs)

    def state(self, env) -> torch.Tensor:
        """The model's state ``[qpos; qvel]`` ``(n,)`` (float64) of a Gymnasium environment."""
        d = env.unwrapped.data
        return torch.from_numpy(np.concatenate([d.qpos, d.qvel]))

    def observe(self, x: torch.Tensor) -> torch.Tensor:
        """The state without the first :attr:`exclude` coordinates, ``(..., n - exclude)``: what a policy of
        :meth:`diff_env` sees (translation-invariant on the locomotion tasks, as Gymnasium's observations;
        Gymnasium's own observation functions also clip velocities or add contact forces, not done here)."""
        return x[..., self.exclude:]

    def starts(self, count: int, seed: int = 0) -> torch.Tensor:
        """``(count, n)`` float64 states of Gymnasium's own resets with seeds ``seed .. seed + count - 1``: draws
        from the environment's reset distribution."""
        check_int("MuJoCoTask.starts", count=count)
        check_int("MuJoCoTask.starts", minimum=0, seed=seed)
        env = self.make_env()
        rows = []
        try:
            for i in range(count):
                env.reset(seed=seed + i)
                rows.append(self.state(env))
        finally:
            env.close()
        return torch.stack(rows)

    def reward(self, x: torch.Tensor, u: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """The reward ``(B,)`` of the step ``x (B, n) -> x_next (B, n)`` under ``u (B, m)``: the negative of an
        exact cost (:meth:`RewardResidualCost.transition_cost`; Gymnasium's reward where the state stays at least
        the task's ``margin`` inside the healthy set, and everywhere with ``barrier=0``; the terminating step
        without the healthy :attr:`bonus`). Differentiable with
        respect to ``x``, ``u`` and ``x_next`` (tasks with MuJoCo positions: ``x`` and ``u``, by finite
        differences)."""
        if not self.cost.exact:
            raise ValueError(f"MuJoCoTask.reward: the task's cost is not exact (built with exact=False); build "
                             f"{self.env_id} with exact=True for its reward")
        reward = -self.cost.transition_cost(x, u, x_next)
        if self.unhealthy is not None and self.bonus:
            reward = torch.where(self.unhealthy(x_next), reward - self.bonus, reward)
        return reward

    def diff_env(self, num_envs: int, *, starts: int = 1000, seed: int = 0, episode_length: int | None = None,
                 centered: bool = False, eps: float | None = None, dtype: torch.dtype = torch.float64, **options):
        """A :class:`trajopt.rl.DiffEnv` of this task for first-order policy learning (SHAC) through MuJoCo.

        The dynamics are a copy of :attr:`model` whose Jacobians (the backward of each step) take ``centered``
        or forward differences (forward: half the simulations, accurate to ``O(eps)``) with step ``eps`` (default
        the model's; a larger step smooths the gradient across contacts, as a difference quotient over that
        width, no longer the derivative); the reward is
        :meth:`reward`; copies reset to one of ``starts`` states of Gymnasium's own resets (:meth:`starts` from
        ``seed``); episodes end after ``episode_length`` steps (default :attr:`max_steps`, truncation) or
        where :attr:`unhealthy` (termination); observations are :meth:`observe`; actions are clamped into the
        control bounds. ``dtype``: of the states and rewards (MuJoCo computes in float64 either way).
        ``options`` go to :class:`~trajopt.rl.DiffEnv` (``shard``, ``time_feature``)."""
        import dynamics
        from .env import DiffEnv
        check_bool("MuJoCoTask.diff_env", centered=centered)
        model = dynamics.MuJoCoDynamics(self.model.mjmodel, self.model.frame_skip, nthread=self.model.nthread,
                                        eps=self.model.eps if eps is None else eps, centered=centered)
        return DiffEnv(model, reward=lambda x, u, x_next: self.reward(x, u, x_next).to(x.dtype),
                       reset=self.starts(starts, seed).to(dtype), num_envs=num_envs,
                       episode_length=self.max_steps if episode_length is None else episode_length,
                       u_lower=self.u_lower.to(dtype), u_upper=self.u_upper.to(dtype), observe=self.observe,
                       terminate=self.unhealthy, **options)


def _check_task(where, exact, horizon, **weights):
    """A task function's options: ``exact`` a bool, ``horizon`` an int >= 1, weights and margins finite and >= 0."""
    check_bool(where, exact=exact)
    check_int(where, horizon=horizon)
    check_nonnegative(where, **weights)


def _setup(env_id):
    import gymnasium
    import mujoco
    import dynamics
    env = gymnasium.make(env_id)
    try:
        inner = env.unwrapped
        model = dynamics.MuJoCoDynamics(env)
        spec = mujoco.MjSpec.from_file(inner.fullpath)
        max_steps = env.spec.max_episode_steps
        lo, hi = (torch.from_numpy(inner.model.actuator_ctrlrange[:, i].copy()) for i in (0, 1))
    finally:
        env.close()
    return model, spec, lo, hi, max_steps


def inverted_pendulum(exact: bool = True, horizon: int = 25, barrier: float = 1e3, margin: float = 0.02,
                      ctrl_weight: float = 0.0, cart_weight: float = 0.0) -> MuJoCoTask:
    """InvertedPendulum-v5: reward 1 while ``|qpos[1]| <= 0.2`` after the step, the episode ends otherwise.
    Cost: ``-1 + barrier (relu(|angle| - 0.2 + margin)^2)``, plus two planning terms that are not in the
    reward and zero by default: ``ctrl_weight |u|^2`` and ``cart_weight qpos[0]^2`` (the reward ignores the
    cart, whose rail ends at +-1: without it a short horizon lets the cart drift to the end of the rail)."""
    _check_task("inverted_pendulum", exact, horizon, barrier=barrier, margin=margin, ctrl_weight=ctrl_weight,
                cart_weight=cart_weight)
    model, spec, lo, hi, steps = _setup("InvertedPendulum-v5")

    def residual(s):
        return torch.cat([s.qpos()[..., 1:2], s.qpos()[..., 0:1], s.u], -1)

    def penalty(r):
        a = r[..., 0]
        return (-1.0 + barrier * (_hinge(a - 0.2, margin) + _hinge(-a - 0.2, margin))
                + cart_weight * r[..., 1] ** 2 + ctrl_weight * (r[..., 2:] ** 2).sum(-1))
    cost = RewardResidualCost(model, residual, penalty, exact=exact)

    def unhealthy(x):          # Gymnasium: not all finite, or |angle| > 0.2
        return ~torch.isfinite(x).all(-1) | (x[..., 1].abs() > 0.2)
    return MuJoCoTask("InvertedPendulum-v5", model, cost, lo, hi, horizon, steps, float(steps), unhealthy, 1.0)


def inverted_double_pendulum(exact: bool = True, horizon: int = 20, barrier: float = 1e3,
                             margin: float = 0.05, ctrl_weight: float = 0.0, cart_weight: float = 0.0,
                             angle_weight: float = 0.0) -> MuJoCoTask:
    """InvertedDoublePendulum-v5: reward ``10 [tip z > 1] - 0.01 tip_x^2 - (tip_z - 2)^2 - 1e-3 v1^2 - 5e-3 v2^2``
    (the tip site's position as Gymnasium reads it after the step, ``v = qvel[1:3]`` after it); the episode ends
    once ``tip z <= 1``. Cost: the negative reward with the bonus constant and ``barrier relu(1 + margin -
    tip_z)^2``, plus the planning terms ``ctrl_weight |u|^2``, ``cart_weight (qpos[0]^2 + qvel[0]^2)`` and
    ``angle_weight (qpos[1]^2 + (qpos[1] + qpos[2])^2)`` (not in the reward, zero by default: the cart's rail
    ends at +-1, which the reward's ``0.01 tip_x^2`` hardly keeps it from; and the reward's ``(tip_z - 2)^2``
    has no Gauss-Newton curvature at the upright pose, where ``tip_z`` is at its maximum, which the angle term gives).
    The tip position comes from MuJoCo."""
    _check_task("inverted_double_pendulum", exact, horizon, barrier=barrier, margin=margin, ctrl_weight=ctrl_weight,
                cart_weight=cart_weight, angle_weight=angle_weight)
    model, spec, lo, hi, steps = _setup("InvertedDoublePendulum-v5")

    def residual(s):
        tip = s.points["tip"]
        v = s.qvel()[..., 1:3]
        q = s.qpos()
        return torch.cat([tip[..., 0:1], tip[..., 2:3] - 2.0, v, q[..., 0:1], q[..., 1:2], q[..., 1:2] + q[..., 2:3],
                          s.qvel()[..., 0:1], s.u], -1)

    def penalty(r):
        return (0.01 * r[..., 0] ** 2 + r[..., 1] ** 2 + 1e-3 * r[..., 2] ** 2 + 5e-3 * r[..., 3] ** 2 - 10.0
                + barrier * _hinge(-1.0 - r[..., 1], margin) + cart_weight * (r[..., 4] ** 2 + r[..., 7] ** 2)
                + angle_weight * (r[..., 5] ** 2 + r[..., 6] ** 2) + ctrl_weight * (r[..., 8:] ** 2).sum(-1))
    cost = RewardResidualCost(model, residual, penalty, points={"tip": ("site", "tip")}, spec=spec, exact=exact)
    tip = _Kinematics(cost)

    def unhealthy(x):          # Gymnasium: the tip at or below z = 1 (read at x_next here; RK4: see the module)
        return ~(tip(x)[..., 2] > 1.0)
    return MuJoCoTask("InvertedDoublePendulum-v5", model, cost, lo, hi, horizon, steps, None, unhealthy, 10.0)


def reacher(exact: bool = True, horizon: int = 25, smooth: float = 0.0) -> MuJoCoTask:
    """Reacher-v5: reward ``-|fingertip - target| - |u|^2`` (body frames from MuJoCo, after the step).
    ``smooth > 0`` replaces the distance by ``sqrt(d^2 + smooth^2) - smooth`` (finite curvature at the target;
    not the reward)."""
    _check_task("reacher", exact, horizon, smooth=smooth)
    model, spec, lo, hi, steps = _setup("Reacher-v5")

    def residual(s):
        return torch.cat([s.points["fingertip"] - s.points["target"], s.u], -1)

    def penalty(r):
        d = r[..., :3]
        if smooth == 0:
            dist = torch.linalg.vector_norm(d, dim=-1)
        else:
            dist = torch.sqrt((d ** 2).sum(-1) + smooth ** 2) - smooth
        return dist + (r[..., 3:] ** 2).sum(-1)
    points = {"fingertip": ("body", "fingertip"), "target": ("body", "target")}
    cost = RewardResidualCost(model, residual, penalty, points=points, spec=spec, exact=exact)
    return MuJoCoTask("Reacher-v5", model, cost, lo, hi, horizon, steps, None)


def _locomotion(env_id, ctrl_weight, exact, horizon, healthy=None, barrier=1e3, exclude=1):
    """Forward velocity ``(x_after - x_before) / dt`` minus ``ctrl_weight |u|^2``, plus the healthy bonus and
    its smooth termination penalty: ``healthy = (bonus, [(index in qpos, low, high, margin)], state_range)``;
    ``exclude``: the root coordinates left out of the observation."""
    model, spec, lo, hi, steps = _setup(env_id)

    def residual(s):
        parts = [s.velocity(0).unsqueeze(-1), s.u]
        if healthy is not None:
            parts.append(s.qpos()[..., [i for i, *_ in healthy[1]]])
            if healthy[2] is not None:
                parts.append(s.x_next[..., 2:])
        return torch.cat(parts, -1)

    def penalty(r):
        m = model.control_dim
        out = -r[..., 0] + ctrl_weight * (r[..., 1:1 + m] ** 2).sum(-1)
        if healthy is not None:
            bonus, ranges, state_range = healthy
            out = out - bonus
            k = 1 + m
            for j, (_, low, high, margin) in enumerate(ranges):
                v = r[..., k + j]
                if math.isfinite(low):
                    out = out + barrier * _hinge(low - v, margin)
                if math.isfinite(high):
                    out = out + barrier * _hinge(v - high, margin)
            if state_range is not None:
                v = r[..., k + len(ranges):]
                bound, margin = state_range
                out = out + barrier * (_hinge(v - bound, margin) + _hinge(-v - bound, margin)).sum(-1)
        return out
    cost = RewardResidualCost(model, residual, penalty, exact=exact)
    def unhealthy(x):          # Gymnasium's is_healthy negated: strict ranges of qpos entries and of x[2:]
        ok = torch.isfinite(x).all(-1)
        for i, low, high, _ in healthy[1]:
            ok = ok & (x[..., i] > low) & (x[..., i] < high)
        if healthy[2] is not None:
            ok = ok & (x[..., 2:].abs() < healthy[2][0]).all(-1)
        return ~ok
    return MuJoCoTask(env_id, model, cost, lo, hi, horizon, steps, None, None if healthy is None else unhealthy,
                      0.0 if healthy is None else healthy[0], exclude)


def half_cheetah(exact: bool = True, horizon: int = 30) -> MuJoCoTask:
    """HalfCheetah-v5: reward ``(x_after - x_before) / dt - 0.1 |u|^2``."""
    _check_task("half_cheetah", exact, horizon)
    return _locomotion("HalfCheetah-v5", 0.1, exact, horizon)


def hopper(exact: bool = True, horizon: int = 50, barrier: float = 1e3, margin: float = 0.02) -> MuJoCoTask:
    """Hopper-v5: reward ``(x_after - x_before) / dt + 1 - 1e-3 |u|^2`` while healthy (``z > 0.7``, ``|angle| <
    0.2``, ``|qpos[2:], qvel| < 100``, after the step); the episode ends otherwise. Cost: the negative reward,
    the bonus constant, with ``barrier relu(...)^2`` penalties from ``margin`` inside each limit."""
    _check_task("hopper", exact, horizon, barrier=barrier, margin=margin)
    return _locomotion("Hopper-v5", 1e-3, exact, horizon,
                       (1.0, [(1, 0.7, math.inf, margin), (2, -0.2, 0.2, margin)], (100.0, 1.0)), barrier)


def walker2d(exact: bool = True, horizon: int = 50, barrier: float = 1e3, margin: float = 0.05) -> MuJoCoTask:
    """Walker2d-v5: reward ``(x_after - x_before) / dt + 1 - 1e-3 |u|^2`` while healthy (``0.8 < z < 2``,
    ``|angle| < 1``, after the step); the episode ends otherwise. Cost as :func:`hopper`'s."""
    _check_task("walker2d", exact, horizon, barrier=barrier, margin=margin)
    return _locomotion("Walker2d-v5", 1e-3, exact, horizon,
                       (1.0, [(1, 0.8, 2.0, margin), (2, -1.0, 1.0, margin)], None), barrier)


def swimmer(exact: bool = True, horizon: int = 30) -> MuJoCoTask:
    """Swimmer-v5: reward ``(x_after - x_before) / dt - 1e-4 |u|^2``."""
    _check_task("swimmer", exact, horizon)
    return _locomotion("Swimmer-v5", 1e-4, exact, horizon, exclude=2)


def pusher(exact: bool = True, horizon: int = 30) -> MuJoCoTask:
    """Pusher-v5: reward ``-|object - goal| - 0.5 |object - tips_arm| - 0.1 |u|^2`` (body frames from MuJoCo,
    after the step)."""
    _check_task("pusher", exact, horizon)
    model, spec, lo, hi, steps = _setup("Pusher-v5")

    def residual(s):
        p = s.points
        return torch.cat([p["object"] - p["goal"], p["object"] - p["tips_arm"], s.u], -1)

    def penalty(r):
        return (torch.linalg.vector_norm(r[..., :3], dim=-1) + 0.5 * torch.linalg.vector_norm(r[..., 3:6], dim=-1)
                + 0.1 * (r[..., 6:] ** 2).sum(-1))
    points = {"object": ("body", "object"), "goal": ("body", "goal"), "tips_arm": ("body", "tips_arm")}
    cost = RewardResidualCost(model, residual, penalty, points=points, spec=spec, exact=exact)
    return MuJoCoTask("Pusher-v5", model, cost, lo, hi, horizon, steps, None)


TASKS = {"InvertedPendulum-v5": inverted_pendulum, "InvertedDoublePendulum-v5": inverted_double_pendulum,
         "Reacher-v5": reacher, "HalfCheetah-v5": half_cheetah, "Hopper-v5": hopper, "Walker2d-v5": walker2d,
         "Swimmer-v5": swimmer, "Pusher-v5": pusher}


def mujoco_task(env_id: str, **options) -> MuJoCoTask:
    """The :class:`MuJoCoTask` of a Gymnasium id in :data:`TASKS` (options go to its function, which checks them:
    ``exact`` a bool, ``horizon`` an int >= 1, weights, ``barrier``, ``margin`` and ``smooth`` finite and >= 0)."""
    if env_id not in TASKS:
        raise ValueError(f"mujoco_task: env_id must be one of {sorted(TASKS)}, got {env_id!r}")
    return TASKS[env_id](**options)
