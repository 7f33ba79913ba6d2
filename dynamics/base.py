"""Dynamics interfaces: discrete steps, continuous vector fields, and their derivatives.

A discrete model maps ``(x (B, n), u (B, m), t) -> x_next (B, n)``; a continuous
model gives ``dx/dt`` and becomes a discrete one through an integrator
(:mod:`dynamics.integrators`). First derivatives (``A = df/dx``, ``B = df/du``)
and vector-Hessian products (``lam . f_xx`` and friends, for DDP) default to
``torch.func`` transforms vmapped over the batch; analytic models override them.

Differentiable with respect to: states, controls and every parameter or buffer
of the module (the models are ordinary ``nn.Module``s).
"""
from __future__ import annotations

import abc
import functools
import itertools
import math
import numbers
import operator
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import jacfwd, jacrev, vmap

from . import integrators
from .validation import check_consistent, check_int, check_outputs, check_tensor

__all__ = ["Dynamics", "ContinuousDynamics", "Discretized", "stack_columns", "accepts_unbatched"]


def stack_columns(columns: Sequence[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """``torch.stack(columns, -1)`` in the memory layout of ``like (R, k)``.

    A batch of states kept column by column (``like`` a transposed ``(k, R)`` buffer, as the sampling solvers
    keep their ``B N`` samples) stays so: each column is then one contiguous vector and every elementwise
    operation of the next step runs at full speed (on 32,000 rows, ``stack`` along the last dimension takes
    about ten times as long as along the first). Any other ``like`` gives ``torch.stack(columns, -1)``.
    Differentiable like ``torch.stack``.

    ``columns`` is a non-empty list or tuple of tensors of ``like``'s dtype and device, each of ``like``'s batch
    shape ``like.shape[:-1]`` (``(R,)``, or ``()`` for an unbatched ``like (k,)``); ``like`` is a tensor of at
    least one dimension. A TypeError (types, dtypes) or ValueError (shapes, devices) names the column that is
    not. The check reads shapes, dtypes and devices only (this runs in models' inner loops).
    """
    error = None
    try:
        if like.ndim == 2 and like.shape[0] > 1 and like.shape[1] > 1 and like.stride(0) == 1:
            out = torch.stack(columns, 0).mT
        else:
            out = torch.stack(columns, -1)
        dtype = like.dtype                          # (stack would promote a column of another dtype silently)
        ok = (out.shape[:-1] == like.shape[:-1] and out.device == like.device
              and all(c.dtype is dtype for c in columns))
    except (AttributeError, TypeError, RuntimeError, IndexError) as e:
        error, ok = e, False
    if not ok:
        _check_columns(columns, like)               # names what is wrong, or
        if error is not None:                       # torch's own error if the columns fit and something else failed
            raise error
    return out


def _check_columns(columns, like) -> None:
    """Raise naming what in :func:`stack_columns`'s arguments is wrong (reads shapes, dtypes and devices)."""
    where = "stack_columns"
    if not isinstance(like, torch.Tensor):
        raise TypeError(f"{where}: like must be a torch.Tensor, got {type(like).__name__}")
    if like.ndim < 1:
        raise ValueError(f"{where}: like must have at least one dimension (its last is the columns'), got a 0-dim "
                         "tensor")
    if not isinstance(columns, (list, tuple)):
        raise TypeError(f"{where}: columns must be a list or tuple of tensors, got {type(columns).__name__}")
    if not columns:
        raise ValueError(f"{where}: columns must hold at least one tensor, got an empty {type(columns).__name__}")
    shape, dtype, device = like.shape[:-1], like.dtype, like.device
    for i, c in enumerate(columns):
        if not isinstance(c, torch.Tensor):
            raise TypeError(f"{where}: columns[{i}] must be a torch.Tensor, got {type(c).__name__}")
        if c.dtype != dtype:
            raise TypeError(f"{where}: columns[{i}] has dtype {c.dtype} but like has {dtype}")
        if c.shape != shape:
            raise ValueError(f"{where}: columns[{i}] has shape {tuple(c.shape)}; expected like's batch shape "
                             f"{tuple(shape)} (like has shape {tuple(like.shape)})")
        if c.device != device:
            raise ValueError(f"{where}: columns[{i}] is on {c.device} but like is on {device}")


def accepts_unbatched(fn):
    """Let a method written for ``(B, ...)`` inputs also take unbatched ones (one output or a tuple).

    Running unbatched input as a batch of one also keeps its dtype: a model's 0-dim
    float64 parameters would otherwise promote 0-dim float32 intermediates.
    """
    def wrapper(self, x, u, *args, **kwargs):
        if x.ndim == 1:
            out = fn(self, x.unsqueeze(0), u.unsqueeze(0), *(a.unsqueeze(0) if isinstance(a, torch.Tensor) else a
                                                              for a in args), **kwargs)
            return out[0] if isinstance(out, torch.Tensor) else tuple(o[0] for o in out)
        return fn(self, x, u, *args, **kwargs)
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


_F32, _F64 = torch.float32, torch.float64
_CHECKED = ("forward", "jacobians", "vector_hessians")      # the model calls every subclass's version goes through
_OUTPUT_CHECKED = ("derivative", "derivative_jacobians")    # the vector field's calls: their outputs are checked


def _fits(x, u, n, m) -> bool:
    """The common case, in a few attribute reads (no scan of the values): ``x (B, n)``, ``u (B, m)`` (or ``(n,)``,
    ``(m,)``), float tensors of one dtype and device."""
    if not (isinstance(x, torch.Tensor) and isinstance(u, torch.Tensor)):
        return False
    sx, su, dt = x.shape, u.shape, x.dtype
    k = len(sx)
    return (len(su) == k and (k == 2 and sx[0] == su[0] or k == 1) and sx[-1] == n and su[-1] == m
            and (dt is _F64 or dt is _F32) and u.dtype is dt and x.device == u.device)


def _check_inputs(model, name, x, u, lam=None, with_lam=False):
    """The full check behind :func:`_fits`: raise naming the argument, or return the inputs, an unbatched one
    broadcast against the batched ones (as :func:`trajopt.rollout` broadcasts ``x0`` and ``U``)."""
    where = f"{type(model).__name__}.{name}"
    dims = {"n": model.state_dim, "m": model.control_dim}
    tensors = {"x": x, "u": u}
    check_tensor(where, "x", x, ("n",), dims, finite=False)
    check_tensor(where, "u", u, ("m",), dims, finite=False)
    if with_lam:
        check_tensor(where, "lam", lam, ("n",), dims, finite=False)
        tensors["lam"] = lam
    batch = check_consistent(where, tensors, dict.fromkeys(tensors, 1))
    if batch is not None:
        tensors = {k: v.expand(batch, v.shape[-1]) if v.ndim == 1 else v for k, v in tensors.items()}
    return tuple(tensors.values())


_STATE = (lambda n, m: [(n,)], ("its output",))
_JACOBIANS = (lambda n, m: [(n, n), (n, m)], ("A = df/dx", "B = df/du"))
_OUTPUTS = {"forward": _STATE, "derivative": _STATE, "jacobians": _JACOBIANS, "derivative_jacobians": _JACOBIANS,
            "vector_hessians": (lambda n, m: [(n, n), (m, n), (m, m)], ("f_xx", "f_ux", "f_uu"))}


def _check_output(model, name, out, x, u):
    """Raise naming the model's method unless it returned what ``name`` returns (:data:`_OUTPUTS`: ``(B, n)``; the
    Jacobians ``(B, n, n)``, ``(B, n, m)``; the vector-Hessians ``(B, n, n)``, ``(B, m, n)``, ``(B, m, m)``) for the
    batch shape of ``x`` and ``u``, in ``x``'s dtype and device (:func:`~dynamics.validation.check_outputs`)."""
    n, m = model.state_dim, model.control_dim
    batch = x.shape[:-1] if x.shape[:-1] == u.shape[:-1] else torch.broadcast_shapes(x.shape[:-1], u.shape[:-1])
    trailing, labels = _OUTPUTS[name]
    check_outputs(f"{type(model).__name__}.{name}", out, [(*batch, *s) for s in trailing(n, m)], x, labels,
                  f" for x {tuple(x.shape)} and u {tuple(u.shape)} (n={n}, m={m})")


def _checks_inputs(fn, name):
    """``fn(self, x, u, ...)`` (``fn(self, x, u, lam, ...)`` for ``vector_hessians``) behind the input check, and
    its output checked (:func:`_check_output`). The vector field's calls (``derivative``, ``derivative_jacobians``:
    their inputs are those of the discretization's checked call) get the output check only."""
    if name == "vector_hessians":
        @functools.wraps(fn)
        def wrapper(self, x, u, lam, *args, **kwargs):
            if not (_fits(x, u, self.state_dim, self.control_dim) and isinstance(lam, torch.Tensor)
                    and lam.shape == x.shape and lam.dtype == x.dtype and lam.device == x.device):
                x, u, lam = _check_inputs(self, name, x, u, lam, with_lam=True)
            out = fn(self, x, u, lam, *args, **kwargs)
            _check_output(self, name, out, x, u)
            return out
    elif name in _OUTPUT_CHECKED:
        @functools.wraps(fn)
        def wrapper(self, x, u, *args, **kwargs):
            out = fn(self, x, u, *args, **kwargs)
            if not (type(out) is torch.Tensor and out.shape == x.shape and out.dtype is x.dtype) and isinstance(
                    x, torch.Tensor) and isinstance(u, torch.Tensor):
                _check_output(self, name, out, x, u)
            return out
    elif name == "forward":
        @functools.wraps(fn)
        def wrapper(self, x, u, *args, **kwargs):
            if not _fits(x, u, self.state_dim, self.control_dim):
                x, u = _check_inputs(self, name, x, u)
            out = fn(self, x, u, *args, **kwargs)
            if not (type(out) is torch.Tensor and out.shape == x.shape and out.dtype is x.dtype):   # the usual case
                _check_output(self, name, out, x, u)
            return out
    else:
        @functools.wraps(fn)
        def wrapper(self, x, u, *args, **kwargs):
            if not _fits(x, u, self.state_dim, self.control_dim):
                x, u = _check_inputs(self, name, x, u)
            out = fn(self, x, u, *args, **kwargs)
            _check_output(self, name, out, x, u)
            return out
    wrapper._checks_inputs = True
    return wrapper


def _autodiff_jacobians(fn, x, u, t, mode, rowwise=False):
    """Per-sample Jacobians of ``fn(x, u, t)`` in ``x (B, n)`` and ``u (B, m)`` by vmapped jacrev/jacfwd; with
    ``rowwise`` (a model with per-problem tensors, whose rows cannot be called one at a time) by one batched
    backward pass per output coordinate of the whole batch (the rows are independent)."""
    if x.ndim == 2 and x.shape[0] == 0:     # an empty batch: vmap cannot map over no rows
        n = x.shape[-1]                     # a step or a vector field maps n states to n
        return x.new_zeros(0, n, n), x.new_zeros(0, n, u.shape[-1])
    if rowwise:
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            ug = u if u.requires_grad else u.detach().requires_grad_(True)
            y = fn(xg, ug, t)
            n = y.shape[-1]
            basis = torch.eye(n, dtype=y.dtype, device=y.device).view(n, *[1] * (y.ndim - 1), n).expand(n, *y.shape)
            gx, gu = torch.autograd.grad(y, (xg, ug), basis, is_grads_batched=True, materialize_grads=True,
                                         create_graph=torch.is_grad_enabled())
        return gx.movedim(0, -2), gu.movedim(0, -2)
    jac = jacrev if mode == "rev" else jacfwd

    def single(xi, ui):
        return fn(xi.unsqueeze(0), ui.unsqueeze(0), t).squeeze(0)

    return vmap(jac(single, argnums=(0, 1)))(x, u)


def rowwise_hessians(gx, gu, x, u, create_graph: bool = False):
    """Derivatives of a gradient ``(gx, gu)`` (shaped like ``x``, ``u``, with a graph to them) along each basis
    direction ``e_i`` of ``[x; u]``, set on every row at once: ``hx (n+m, *x.shape)``, ``hu (n+m, *u.shape)``.

    When every row of ``x`` and ``u`` enters a separate term of the differentiated function (rows
    independent), these are the rows ``i`` of every row's Hessian block: one batched double backward instead
    of a Hessian per sample. ``x`` and ``u`` may differ in their leading shapes (a trajectory's ``T+1``
    states and ``T`` controls). The graph is kept; ``create_graph`` makes the blocks differentiable.
    """
    n, m = x.shape[-1], u.shape[-1]
    N = n + m
    eye = torch.eye(N, dtype=x.dtype, device=x.device)
    dx = eye[:, :n].view(N, *[1] * (x.ndim - 1), n).expand(N, *x.shape)
    du = eye[:, n:].view(N, *[1] * (u.ndim - 1), m).expand(N, *u.shape)
    outs = [(o, d) for o, d in ((gx, dx), (gu, du)) if o.requires_grad]
    if not outs:                                            # a constant gradient: no curvature
        return x.new_zeros(N, *x.shape), u.new_zeros(N, *u.shape)
    hx, hu = torch.autograd.grad([o for o, _ in outs], (x, u), [d for _, d in outs], retain_graph=True,
                                 create_graph=torch.is_grad_enabled() and create_graph, is_grads_batched=True,
                                 materialize_grads=True)
    # an input the gradient does not depend on comes back as zeros without the batch of directions
    return tuple(h if h.shape[0] == N and h.ndim == z.ndim + 1 else h.new_zeros(N, *z.shape)
                 for h, z in ((hx, x), (hu, u)))


def register_tensors(module: nn.Module, learnable: bool, **tensors) -> None:
    """Attach tensors to ``module``: as parameters of its own (``learnable``: detached copies, leaves that an
    optimizer updates), or as buffers holding the caller's tensors themselves, so that gradients reach the
    caller's tensors (one that carries a graph keeps it: build such a module anew for each backward pass)."""
    for name, value in tensors.items():
        if learnable:
            setattr(module, name, nn.Parameter(value.detach().clone()))
        else:
            module.register_buffer(name, value)


class _Model(nn.Module, abc.ABC):
    """What discrete and continuous models share: their dimensions, and the input check of every call.

    Every subclass's own ``forward``, ``jacobians`` and ``vector_hessians`` are wrapped, when the class is
    created, by one check (a few attribute reads; no scan of the values): see :class:`Dynamics`.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _CHECKED + _OUTPUT_CHECKED:
            fn = cls.__dict__.get(name)
            if callable(fn) and not getattr(fn, "_checks_inputs", False) and not getattr(fn, "__isabstractmethod__",
                                                                                           False):
                setattr(cls, name, _checks_inputs(fn, name))

    def __init__(self, state_dim: int, control_dim: int):
        super().__init__()
        dims = {"state_dim": state_dim, "control_dim": control_dim}
        dims = {k: operator.index(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
                for k, v in dims.items()}                   # numpy integers too
        check_int(type(self).__name__, **dims)
        self.state_dim = dims["state_dim"]
        self.control_dim = dims["control_dim"]


class Dynamics(_Model):
    """A discrete-time model ``x_{t+1} = forward(x_t, u_t, t)``.

    Subclasses implement :meth:`forward` for batched ``x (B, n)``, ``u (B, m)``
    (and, by broadcasting, unbatched ``(n,)``, ``(m,)``) and may override
    :meth:`jacobians` with closed forms. ``t`` is the integer stage index; only
    models with ``time_varying = True`` look at it.

    Input checks: every model's ``forward`` (``model(x, u, t)``), ``jacobians`` and ``vector_hessians``, the
    subclass's own included, pass one shared check first (subclasses get it automatically): ``x`` and ``u`` (and
    ``lam``) must be float32 or float64 tensors of one dtype and device, ``x (B, n)`` or ``(n,)`` with
    ``n = state_dim``, ``u (B, m)`` or ``(m,)`` with ``m = control_dim``, ``lam (B, n)`` or ``(n,)``, with one
    batch size ``B``; an unbatched input next to batched ones is broadcast to ``B`` rows. Anything else raises
    a TypeError or ValueError naming the argument and the shape or dtype expected. The check reads shapes and
    dtypes only (these calls sit in the solvers' inner loops): values are not scanned. A row of ``x`` or ``u``
    holding NaN or Inf gives a non-finite output row (and Jacobian rows) and, in this package's models (whose rows
    are independent), leaves the other rows alone; the
    solvers report such rows per problem (``Status.NOT_FINITE``), and :func:`trajopt.rollout` raises naming them.

    Attributes:
        state_dim: ``n``.
        control_dim: ``m``.
        time_varying: whether ``forward`` depends on ``t``.
        jacobian_mode: ``"rev"`` (``jacrev``: ``n`` backward passes) or ``"fwd"``
            (``jacfwd``: ``n + m`` forward passes) for the default :meth:`jacobians`.
    """

    time_varying: bool = False
    jacobian_mode: str = "rev"

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """Next state ``(B, n)`` from ``x (B, n)``, ``u (B, m)`` at stage ``t``."""

    @accepts_unbatched
    def jacobians(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None):
        """``(A, B)``: ``A = d f / d x (B, n, n)``, ``B = d f / d u (B, n, m)`` at each ``(x, u)``.

        Differentiable with respect to ``x``, ``u`` and the model's parameters.
        """
        return _autodiff_jacobians(self.forward, x, u, t, self.jacobian_mode, bool(getattr(self, "per_problem", ())))

    @accepts_unbatched
    def vector_hessians(self, x: torch.Tensor, u: torch.Tensor, lam: torch.Tensor, t: int | None = None):
        """Second-order terms of ``lam' f(x, u)``: ``(f_xx (B,n,n), f_ux (B,m,n), f_uu (B,m,m))`` contracted with ``lam (B, n)``.

        These are what DDP adds to ``Q_xx``, ``Q_ux``, ``Q_uu``; each is the Hessian
        of one scalar per sample, so the ``(n, n+m, n+m)`` tensor of second
        derivatives of ``f`` is never formed.

        The rows of the batch are independent, so the Hessian of ``sum_b lam_b' f(x_b, u_b)`` is block
        diagonal: one batched double backward (``n + m`` vector-Hessian products, vmapped over the basis
        directions) gives every sample's block. Differentiable (when grad mode is on) with respect to
        ``x``, ``u``, ``lam`` and the model's parameters.
        """
        n = x.shape[-1]
        graph = torch.is_grad_enabled() and any(z.requires_grad for z in itertools.chain(
            (x, u, lam), self.parameters(), self.buffers()))
        with torch.enable_grad():
            xg = x if graph and x.requires_grad else x.detach().requires_grad_(True)
            ug = u if graph and u.requires_grad else u.detach().requires_grad_(True)
            gx, gu = torch.autograd.grad((self(xg, ug, t) * lam).sum(), (xg, ug), create_graph=True,
                                         materialize_grads=True)
            hx, hu = rowwise_hessians(gx, gu, xg, ug, create_graph=graph)
        H = torch.cat([hx, hu], -1).transpose(0, 1)         # (B, n+m, n+m), row i from direction i
        return H[:, :n, :n], H[:, n:, :n], H[:, n:, n:]


class ContinuousDynamics(_Model):
    """A continuous-time model ``dx/dt = derivative(x, u, t)``; :meth:`discretize` makes it a :class:`Dynamics`.

    ``model(x, u, t)`` (its ``forward``: the vector field) and its discretizations' calls check their inputs as
    :class:`Dynamics` describes; ``derivative`` and ``derivative_jacobians``, the hooks a model implements, are
    called by the integrators at every stage: their inputs are not checked again, their outputs are (shapes and
    dtype: a vector field returning ``(B, 1)`` for ``n = 2`` raises naming ``derivative``).

    Attributes:
        state_dim, control_dim: ``n`` and ``m``.
        default_dt, default_method: the discretization :meth:`discretize` uses when not told.
        positions: indices of the state's position coordinates, for semi-implicit
            Euler (their derivative is evaluated after the other coordinates,
            the velocities, are updated); None if the model has no such split.
        time_varying: whether ``derivative`` depends on ``t`` (the stage index,
            held constant over a step).
        fused_methods: integrators for which the model's :meth:`fused_step` computes the whole step in
            closed form (fewer tensor operations than the generic integrator, whose stages each call
            ``derivative``: a rollout's time goes to per-operation overhead, not arithmetic).
    """

    positions: Sequence[int] | None = None
    fused_methods: tuple[str, ...] = ()
    time_varying: bool = False
    jacobian_mode: str = "rev"
    default_dt: float | None = None
    default_method: str = "rk4"

    @abc.abstractmethod
    def derivative(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None) -> torch.Tensor:
        """``dx/dt (B, n)`` at ``x (B, n)``, ``u (B, m)``."""

    @accepts_unbatched
    def derivative_jacobians(self, x: torch.Tensor, u: torch.Tensor, t: int | None = None):
        """``(d g / d x (B, n, n), d g / d u (B, n, m))`` of the vector field ``g``; by ``torch.func``
        unless a model overrides it with closed forms (then its discretizations' Jacobians are closed-form too).
        """
        return _autodiff_jacobians(self.derivative, x, u, t, self.jacobian_mode,
                                   bool(getattr(self, "per_problem", ())))

    @accepts_unbatched
    def forward(self, x, u, t=None):
        return self.derivative(x, u, t)

    def fused_step(self, x: torch.Tensor, u: torch.Tensor, dt: float, t: int | None = None) -> torch.Tensor:
        """One step of the integrator in :attr:`fused_methods`, equal to the generic one up to rounding."""
        raise NotImplementedError(f"{type(self).__name__} has no fused step")

    def domain(self, x: torch.Tensor) -> torch.Tensor | None:
        """Where the model is defined: a bool ``(...)`` for states ``x (..., n)``, or None (everywhere: the
        default). A step of :meth:`discretize`'s model that ends outside returns NaN, which every solver treats as
        non-finite: a trial step into it is rejected by the line search, and an initial guess whose rollout leaves
        it is reported ``NOT_FINITE`` for its problem alone. Override it where the equations break down (e.g. the
        kinematic bicycle's ``tan`` of the steering angle at ``+-pi/2``)."""
        return None

    def discretize(self, dt: float | None = None, method: str | None = None) -> Discretized:
        """A :class:`Dynamics` stepping this model by ``dt`` with ``method`` in
        ``"euler"``, ``"semi_implicit_euler"``, ``"rk4"``; by default the model's
        ``default_dt`` and ``default_method`` (those of its canonical problem)."""
        dt = self.default_dt if dt is None else dt
        if dt is None:
            raise ValueError(f"{type(self).__name__} has no default_dt; pass dt")
        return Discretized(self, dt, self.default_method if method is None else method)


class Discretized(Dynamics):
    """A :class:`ContinuousDynamics` stepped by a fixed-step integrator.

    The continuous model is a submodule, so its parameters are this model's.
    """

    def __init__(self, model: ContinuousDynamics, dt: float, method: str = "rk4"):
        if not isinstance(model, ContinuousDynamics):
            hint = " (it is already discrete)" if isinstance(model, Dynamics) else ""
            raise TypeError(f"Discretized: model must be a dynamics.ContinuousDynamics{hint}, "
                            f"got {type(model).__name__}")
        super().__init__(model.state_dim, model.control_dim)
        if method not in integrators.METHODS:
            raise ValueError(f"method must be one of {sorted(integrators.METHODS)}, got {method!r}")
        if not (isinstance(dt, numbers.Real) and not isinstance(dt, bool) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"{type(model).__name__}.discretize: dt must be a finite number > 0, got {dt!r}")
        if method == "semi_implicit_euler":
            if model.positions is None:
                raise ValueError(f"method='semi_implicit_euler' needs {type(model).__name__}.positions "
                                 "(the indices of the position coordinates)")
            mask = torch.zeros(model.state_dim, dtype=torch.bool)
            mask[list(model.positions)] = True
            self.register_buffer("_positions", mask, persistent=False)
        self.model = model
        self.dt = float(dt)
        self.method = method
        self.time_varying = model.time_varying

    @accepts_unbatched
    def forward(self, x, u, t=None):
        if self.method in self.model.fused_methods:
            y = self.model.fused_step(x, u, self.dt, t)
        else:
            step, _ = integrators.METHODS[self.method]
            y = step(self.model.derivative, x, u, self.dt, t, positions=getattr(self, "_positions", None))
        inside = self.model.domain(y)
        return y if inside is None else torch.where(inside.unsqueeze(-1), y, float("nan"))

    @accepts_unbatched
    def jacobians(self, x, u, t=None):
        """Jacobians of the step by the chain rule through the integrator's stages, from the
        continuous model's :meth:`~ContinuousDynamics.derivative_jacobians` (closed-form where it is)."""
        _, jac = integrators.METHODS[self.method]
        return jac(self.model.derivative, self.model.derivative_jacobians, x, u, self.dt, t,
                   positions=getattr(self, "_positions", None))
