"""The scipy back end: one ``scipy.optimize.minimize`` (SLSQP or trust-constr) per problem, with the defects as
exact equality constraints, box bounds, and gradients, constraint Jacobians and (trust-constr) Hessian-vector
products of the Lagrangian by torch autograd."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..._core.checks import check_bool, check_choice, check_int, check_positive, tolerance
from ..._core.problem import Status
from .kkt import lagrangian_residual
from .transcription import Outcome, defect_jacobian

__all__ = ["Scipy", "SCIPY_METHODS"]

SCIPY_METHODS = ("SLSQP", "trust-constr")
_HUGE = 1e100       # what the callbacks report for a non-finite cost or defect (scipy's steps then back off)


# the options of scipy.optimize.minimize each method takes (see scipy.optimize.show_options), by kind
_SCIPY_OPTIONS = {
    "SLSQP": {"maxiter": "int", "ftol": "tol", "eps": "tol", "disp": "bool", "iprint": "any",
              "finite_diff_rel_step": "any", "workers": "any"},
    "trust-constr": {"maxiter": "int", "gtol": "tol", "xtol": "tol", "barrier_tol": "tol", "disp": "bool",
                     "verbose": "any", "sparse_jacobian": "any", "finite_diff_rel_step": "any",
                     "initial_constr_penalty": "tol", "initial_tr_radius": "tol", "initial_barrier_parameter": "tol",
                     "initial_barrier_tolerance": "tol", "factorization_method": "any"},
}


def _check_scipy_options(where, method, options):
    known = _SCIPY_OPTIONS.get(method, {})
    for key, value in options.items():
        kind = known.get(key)
        if kind is None:
            raise ValueError(f"{where}: options has {key!r}, which scipy's {method} does not take; it takes "
                             f"{sorted(known)}")
        name = f"options[{key!r}]"
        if kind == "int":
            check_int(where, **{name: value})
        elif kind == "tol":
            check_positive(where, **{name: value})
        elif kind == "bool":
            check_bool(where, **{name: value})


@dataclass(frozen=True)
class Scipy:
    """The exact reference back end of :func:`trajopt.collocation` and :func:`trajopt.multiple_shooting`:
    ``scipy.optimize.minimize`` once per problem (scipy is not batched), over the knots and the controls, with the
    defects as equality constraints and the bounds as box bounds.

    Args:
        method: ``"SLSQP"`` (default; it stops on ``ftol = 1e-10``, ``maxiter = 10 max_iter``) or
            ``"trust-constr"`` (exact Hessian-vector products of the Lagrangian; ``gtol = 1e-9``,
            ``xtol = 1e-14``, ``maxiter = 20 max_iter``). Its barrier stops bounded variables about ``1e-5`` short of
            their bounds, so they count as free for the implicit gradient: prefer SLSQP for gradients with active
            bounds. The tolerances are float64's, scaled to the problem's dtype otherwise (as
            :func:`trajopt.ilqr`'s ``grad_tol``: ``ftol = 8.1e-8`` in float32, whose costs carry rounding of about
            ``1e-7``).
        options: extra ``options`` of ``scipy.optimize.minimize`` for the method (they override the defaults
            above); an option the method does not take, a ``maxiter`` that is not an int >= 1 or a tolerance that is
            not a positive number raises.

    A problem converges when scipy reports success (trust-constr: its ``gtol`` or ``xtol`` test with a constraint
    violation at most the solver's ``constraint_tol``) and the solver's own test of the defects and bounds holds.
    ``MAX_ITER``: scipy's iteration limit (SLSQP exit mode 9, trust-constr status 0); ``STALLED``: any other stop
    short of convergence (a failed line search, a singular subproblem, or success by scipy's test without the
    defects within ``constraint_tol``); ``NOT_FINITE``: the cost or the defects are non-finite where scipy stopped
    (the problem keeps its last finite iterate). The callbacks report ``1e100`` (and zero derivatives) where the
    cost or the defects are non-finite, so scipy's line searches back off such points and a problem that meets
    one on its way is still solved.
    """

    method: str = "SLSQP"
    options: Mapping | None = None

    def __post_init__(self):
        check_choice("Scipy", "method", self.method, SCIPY_METHODS)
        if self.options is not None and not isinstance(self.options, Mapping):
            raise TypeError(f"Scipy: options must be a dict of scipy.optimize.minimize options or None, "
                            f"got {type(self.options).__name__}")
        object.__setattr__(self, "options", None if self.options is None else dict(self.options))
        _check_scipy_options("Scipy", self.method, self.options or {})

    def check(self, where, grad, grad_tol):
        """Reject the solver options that do not apply to this back end."""
        if grad == "unroll":
            raise ValueError(f"{where}: grad='unroll' needs backend=trajopt.Theseus() (scipy's iterations are not "
                             "recorded); use grad='implicit' or None with backend=trajopt.Scipy()")
        if grad_tol is not None:
            raise ValueError(f"{where}: grad_tol is the Theseus back end's stopping test; scipy stops by its own "
                             "(pass e.g. Scipy(options={'ftol': ...}) or Scipy('trust-constr', options={'gtol': ...}))")

    def solve(self, where, tr, cost, x0, knots, U, lower, upper, xl, xu, *, at, route, max_iter, grad_tol,
              constraint_tol) -> Outcome:
        """Solve from the knots ``knots (B, K n)`` and controls ``U (B, T, m)`` (bounds: the controls'
        ``(B, T, m)``, the knots' ``(B, K, n)``, or None); ``at(index)``: the context in which the model and the cost
        evaluate the problems ``index`` (:meth:`trajopt.Problem.at`). Not differentiable (detached)."""
        import scipy.optimize as so
        from scipy.sparse.linalg import LinearOperator

        x0 = x0.detach()
        B, K, n, T, m = x0.shape[0], tr.K, tr.n, tr.T, tr.m
        opts = dict(dtype=x0.dtype, device=x0.device)
        N = K * n
        options = self.options or {}

        def split(z, b):
            z = torch.as_tensor(z, **opts)
            return tr.knots(x0[b:b + 1], z[:N].view(1, N)), z[N:].view(1, T, m)

        def objective(z, b):
            with torch.enable_grad():
                zt = torch.as_tensor(z, **opts).requires_grad_(True)
                S, Ub = split(zt, b)
                J = cost(tr.states(S, Ub), Ub).sum()
                (g,) = torch.autograd.grad(J, zt)
            return J.item(), g.cpu().double().numpy()

        def constraint(z, b):
            S, Ub = split(z, b)
            r, jac = defect_jacobian(tr, S, Ub)
            return r.flatten().cpu().double().numpy(), jac[0].cpu().double().numpy()

        def lagrangian_hvp(z, b, v=None):
            """Hessian-vector products of the cost (``v`` None) or of ``v' defects`` at ``z``, for trust-constr."""
            zt = torch.as_tensor(z, **opts).requires_grad_(True)
            with torch.enable_grad():
                S, Ub = split(zt, b)
                val = cost(tr.states(S, Ub), Ub).sum() if v is None else \
                    (tr.defects(S, Ub).flatten() * torch.as_tensor(v, **opts)).sum()
                (g,) = torch.autograd.grad(val, zt, create_graph=True)

            def matvec(p):
                if not g.requires_grad:     # a linear function (e.g. the defects of a linear model): no curvature
                    return np.zeros(len(z))
                with torch.enable_grad():
                    (hp,) = torch.autograd.grad(g, zt, torch.as_tensor(np.ravel(p), **opts), retain_graph=True,
                                                allow_unused=True, materialize_grads=True)
                return _finite(hp.cpu().double().numpy(), 0.0)
            return LinearOperator((len(z), len(z)), matvec=matvec, dtype=np.float64)

        inf = np.inf
        S_out, U_out = knots.detach().clone().reshape(B, N), U.detach().clone()
        status, nit, ok, fallback, multipliers, histories = [], [], [], [], [], []
        for b in range(B):
            lb = np.concatenate([_np_bound(xl, b, N, -inf), _np_bound(lower, b, T * m, -inf)])
            ub = np.concatenate([_np_bound(xu, b, N, inf), _np_bound(upper, b, T * m, inf)])
            z0 = np.clip(torch.cat([knots[b].reshape(-1), U[b].reshape(-1)]).detach().cpu().double().numpy(), lb, ub)
            with at(torch.tensor([b], device=x0.device)):     # problem b's per-problem tensors
                row = _Row(b, objective, constraint)
                history, last = [row.value(z0)], [z0]

                def callback(zk, *_, row=row, history=history, last=last):
                    J = row.value(zk)
                    history.append(J)
                    if np.isfinite(J) and row.feasible(zk):
                        last[0] = np.array(zk)
                bounds = so.Bounds(lb, ub)
                if self.method == "SLSQP":
                    res = so.minimize(row.fun, z0, jac=True, method="SLSQP", bounds=bounds, callback=callback,
                                      constraints=[{"type": "eq", "fun": row.defects, "jac": row.jacobian}],
                                      options={"maxiter": max_iter * 10, "ftol": tolerance(None, 1e-10, x0.dtype),
                                               **options})
                    good = bool(res.success)
                    lam = None
                    limit = res.status == 9
                else:
                    con = so.NonlinearConstraint(row.defects, 0.0, 0.0, jac=row.jacobian,
                                                 hess=lambda z, v, b=b: lagrangian_hvp(z, b, v))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)   # "delta_grad == 0.0": quasi-Newton not used here
                        res = so.minimize(row.fun, z0, jac=True, hess=lambda z, *a, b=b: lagrangian_hvp(z, b),
                                          method="trust-constr", bounds=bounds, constraints=[con], callback=callback,
                                          options={"maxiter": max_iter * 20, "gtol": tolerance(None, 1e-9, x0.dtype),
                                                   "xtol": tolerance(None, 1e-14, x0.dtype), **options})
                    good = res.status in (1, 2) and res.constr_violation <= constraint_tol
                    lam = torch.as_tensor(-np.asarray(res.v[0]), **opts)
                    limit = res.status == 0
                z = np.clip(res.x, lb, ub)
                ended = np.isfinite(row.value(z)) and row.feasible(z)
                if not ended:       # scipy stopped where the cost or the defects are not finite: the last finite one
                    z, good = last[0], False
                final = row.value(z)
                if len(history) > 1:
                    history[-1] = final
                elif final != history[0]:
                    history.append(final)
            S_out[b], U_out[b] = torch.as_tensor(z[:N], **opts), torch.as_tensor(z[N:], **opts).view(T, m)
            status.append(int(res.status))
            nit.append(int(getattr(res, "nit", 0) or 0))
            ok.append(good)
            fallback.append(Status.NOT_FINITE if not ended else Status.MAX_ITER if limit else Status.STALLED)
            multipliers.append(lam)
            histories.append(history)
        device = x0.device
        residual, lam_ls = lagrangian_residual(tr, cost, x0, S_out, U_out, lower, upper, xl, xu)
        lam = torch.stack([lam_ls[b].flatten() if v is None else v for b, v in enumerate(multipliers)]).view(B, K, n)
        width = max(len(h) for h in histories)
        history = torch.tensor([h + h[-1:] * (width - len(h)) for h in histories], **opts)
        history = torch.where(torch.isnan(history), float("inf"), history)
        return Outcome(knots=S_out, U=U_out, ok=torch.tensor(ok, device=device),
                       fallback=torch.tensor([int(s) for s in fallback], device=device),
                       iterations=torch.tensor(nit, device=device), cost_history=history, residual=residual,
                       multipliers=lam, extras={"scipy_status": torch.tensor(status, device=device)})


class _Row:
    """The callbacks of one problem's ``scipy.optimize.minimize``: the cost and its gradient, the defects and
    their Jacobian (cached by point), with non-finite values reported as :data:`_HUGE` (and zero derivatives)."""

    def __init__(self, b, objective, constraint):
        self.b, self._objective, self._constraint = b, objective, constraint
        self.values, self.cache = {}, {}

    def fun(self, z):
        J, g = self._objective(z, self.b)
        if len(self.values) > 64:
            self.values.clear()
        self.values[z.tobytes()] = J
        if not (np.isfinite(J) and np.isfinite(g).all()):
            return _HUGE, np.zeros_like(g)
        return J, g

    def value(self, z):
        """The cost at ``z`` (NaN/Inf as they are), from the cache when scipy evaluated it there."""
        key = z.tobytes()
        if key not in self.values:
            self.fun(np.array(z))
        return self.values[key]

    def _cons(self, z):
        key = z.tobytes()
        if key not in self.cache:
            if len(self.cache) >= 4:
                self.cache.clear()
            self.cache[key] = self._constraint(z, self.b)
        return self.cache[key]

    def feasible(self, z):
        """Whether the defects and their Jacobian at ``z`` are finite."""
        r, jac = self._cons(z)
        return bool(np.isfinite(r).all() and np.isfinite(jac).all())

    def defects(self, z):
        return _finite(self._cons(z)[0], _HUGE)

    def jacobian(self, z):
        return _finite(self._cons(z)[1], 0.0)


def _finite(a, fill):
    """``a`` with its non-finite entries replaced by ``fill`` (``a`` itself when all are finite: no copy)."""
    return a if np.isfinite(a).all() else np.where(np.isfinite(a), a, fill)


def _np_bound(bound, b, size, fill):
    return np.full(size, fill) if bound is None else bound[b].reshape(-1).detach().cpu().double().numpy()
