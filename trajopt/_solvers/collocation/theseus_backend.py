"""The theseus back end: an augmented-Lagrangian outer loop (Powell-Hestenes-Rockafellar; Nocedal and Wright,
*Numerical Optimization*, 2nd ed., sec. 17.3-17.4) whose inner problems are nonlinear least squares solved by
theseus-ai's Gauss-Newton or Levenberg-Marquardt, batched over problems."""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..._core.bounds import clamp
from ..._core.checks import check_bool, check_choice, check_fraction, check_int, check_positive
from ..._core.costs import QuadraticCost
from ..._core.problem import Status
from ..._core.stages import over_stages
from .transcription import Outcome, block_diagonal, interval_jacobians, knot_jacobian

__all__ = ["Theseus", "OPTIMIZERS", "AugmentedLagrangian", "cost_residuals", "square_root"]

OPTIMIZERS = ("levenberg_marquardt", "gauss_newton")
CHUNK = 5       # theseus iterations between two checks of the inner problem's stationarity


@dataclass(frozen=True)
class Theseus:
    """The batched back end of :func:`trajopt.collocation` and :func:`trajopt.multiple_shooting`: an
    augmented-Lagrangian loop on the defects whose inner problems (nonlinear least squares) theseus-ai solves.

    Args:
        optimizer: ``"levenberg_marquardt"`` (default; adaptive damping) or ``"gauss_newton"``.
        max_outer: multiplier updates of the augmented Lagrangian.
        penalty_init, penalty_growth, penalty_max: the penalty ``rho`` of each problem's constraints: it starts at
            ``penalty_init`` and grows by ``penalty_growth`` (> 1; up to ``penalty_max``) after an inner solve in
            which the constraints' violation stayed above ``constraint_tol`` and did not fall below a quarter of its
            previous value. A small ``penalty_init`` lets the first inner solves trade large defects for cost
            (defects ~1 at ``rho = 10`` on the pendulum swing-up), which carries the controls into other basins
            (and ``z`` of bounded controls onto other branches of the ``sin``) from which the later, stiff
            (``rho -> penalty_max``) inner problems do not recover; start it near the cost's scale over the
            defects' (``1e4`` for the benchmark problems).
        options: theseus optimizer keyword arguments: ``step_size`` (of each step, in ``(0, 1]``), and for
            Levenberg-Marquardt ``damping``, ``adaptive_damping``, ``ellipsoidal_damping``, ``damping_eps``,
            ``down_damping_ratio``, ``up_damping_ratio``, ``damping_accept``; an unknown key raises.

    The cost must be a sum of squares: a :class:`trajopt.QuadraticCost` with positive semidefinite ``C`` (and
    ``C_final``), factored by Cholesky (by ``eigh`` when only semidefinite), or a cost with
    ``stage_residuals(x, u, t) -> (B, k)`` (and optionally ``terminal_residuals(x) -> (B, k_T)``) such that
    ``stage = 1/2 |r|^2`` up to a constant. A control with two finite bounds is written ``u = mid + half sin(z)``
    and ``z`` optimized (zero-valued residual rows add the squashing's curvature to Gauss-Newton's ``J'J``, which
    it otherwise loses where a bound is active); other bounds are inequalities of the augmented Lagrangian (the
    residual ``sqrt(rho) max(0, g + mu / rho)`` of ``g <= 0``).

    A problem converges when the largest entry of the gradient of the augmented Lagrangian at its updated
    multipliers (the ``residual``) is at most ``grad_tol`` and its defects and bound violations at most
    ``constraint_tol``. ``STALLED``: the outer loop ended with the problem's penalty at ``penalty_max`` and its last
    multiplier update short of the quarter decrease (the schedule can no longer make progress); ``MAX_ITER``: any
    other problem out of budget; ``NOT_FINITE``: an iterate at which the model or the cost is non-finite (the
    problem keeps its last finite iterate and stops; residuals are reported to theseus as ``1e100``, so
    Levenberg-Marquardt rejects such steps and the problem goes on).
    """

    optimizer: str = "levenberg_marquardt"
    max_outer: int = 30
    penalty_init: float = 1e4
    penalty_growth: float = 10.0
    penalty_max: float = 1e8
    options: Mapping | None = None

    def __post_init__(self):
        where = "Theseus"
        check_choice(where, "optimizer", self.optimizer, OPTIMIZERS)
        check_int(where, max_outer=self.max_outer)
        check_positive(where, penalty_init=self.penalty_init, penalty_growth=self.penalty_growth,
                       penalty_max=self.penalty_max)
        if not self.penalty_growth > 1:
            raise ValueError(f"{where}: penalty_growth must be > 1, got {self.penalty_growth!r}")
        if self.penalty_max < self.penalty_init:
            raise ValueError(f"{where}: penalty_max ({self.penalty_max}) must be at least penalty_init "
                             f"({self.penalty_init})")
        if self.options is not None and not isinstance(self.options, Mapping):
            raise TypeError(f"{where}: options must be a dict of theseus optimizer keyword arguments or None, "
                            f"got {type(self.options).__name__}")
        object.__setattr__(self, "options", None if self.options is None else dict(self.options))
        _check_theseus_options(where, self.options or {})

    def check(self, where, grad, grad_tol):
        """Every solver option applies to this back end (``grad_tol``, its stopping test, a positive number)."""
        if grad_tol is not None:
            check_positive(where, grad_tol=grad_tol)

    def solve(self, where, tr, cost, x0, knots, U, lower, upper, xl, xu, *, at, route, max_iter, grad_tol,
              constraint_tol) -> Outcome:
        """Solve from the knots ``knots (B, K n)`` and controls ``U (B, T, m)`` (bounds: the controls'
        ``(B, T, m)``, the knots' ``(B, K, n)``, or None); differentiable through the iterations when ``route`` is
        ``"unroll"``."""
        residuals = cost_residuals(where, cost, tr.T)
        th = _import_theseus(where)
        B, dtype = x0.shape[0], x0.dtype
        flags = dict(dtype=torch.bool, device=x0.device)
        al = AugmentedLagrangian(tr, residuals, x0 if route == "unroll" else x0.detach(), lower, upper, xl, xu,
                                 self.penalty_init)
        layer = _theseus_layer(th, al, B, dtype, self.optimizer, max_iter)
        kwargs = {"damping": 1e-3, "adaptive_damping": True} if self.optimizer == "levenberg_marquardt" else {}
        kwargs.update(self.options or {})
        if "step_size" in kwargs:       # a parameter of the optimizer, not of its solve
            layer.optimizer.set_params(step_size=float(kwargs.pop("step_size")))
        adaptive = bool(kwargs.get("adaptive_damping"))
        knots, U = knots.reshape(B, -1).detach(), al.variables(U.reshape(B, -1).detach())
        done, nonfinite, stalled = (torch.zeros(B, **flags) for _ in range(3))
        outer = torch.zeros(B, dtype=torch.long, device=x0.device)
        iterations = torch.zeros(B, dtype=torch.long, device=x0.device)
        stationarity = torch.full((B,), float("inf"), dtype=dtype, device=x0.device)
        previous, single = None, False
        history = [al.cost(cost, knots, U)]

        def inner(knots, U, backward_mode, budget):
            """One theseus solve of at most ``budget`` iterations; theseus's Levenberg-Marquardt gives up after
            three rejected steps in a row, so each problem's next call starts from the damping this one ended
            with."""
            layer.optimizer.set_params(max_iterations=budget)
            with warnings.catch_warnings():   # theseus 0.2.3 calls np.array(tensor, copy=False), which numpy 2 flags
                warnings.simplefilter("ignore", DeprecationWarning)
                values, info = layer.forward({"knots": knots, "controls": U},
                                             optimizer_kwargs={"backward_mode": backward_mode, **kwargs})
            if adaptive:
                kwargs["damping"] = layer.optimizer._damping.detach().clone()
            its = torch.where(info.converged_iter < 0, budget, info.converged_iter)
            return values["knots"], values["controls"], max(1, int(its.max()))

        with torch.set_grad_enabled(route == "unroll"):
            for _ in range(self.max_outer):
                used = 0
                while used < max_iter:          # the inner problem, to stationarity grad_tol or max_iter iterations
                    budget = 1 if single else min(CHUNK, max_iter - used)
                    try:
                        kn, Un, its = inner(knots, U, "unroll", budget)
                    except torch.linalg.LinAlgError:
                        # a step into a non-finite region left a singular system (Gauss-Newton does not reject
                        # steps): go on one iteration at a time, so that each such problem is caught and held
                        if single:
                            raise
                        single = True
                        continue
                    used += its
                    iterations = iterations + (~done).long() * its
                    keep = done.view(-1, 1)
                    new_knots, new_U = torch.where(keep, knots, kn), torch.where(keep, U, Un)
                    with torch.no_grad():
                        now = al.stationarity(new_knots, new_U)
                    finite = torch.isfinite(now) & torch.isfinite(new_knots).all(1) & torch.isfinite(new_U).all(1)
                    bad = ~done & ~finite
                    if bool(bad.any()):         # such a problem keeps its last finite iterate and stops
                        nonfinite, done = nonfinite | bad, done | bad
                        keep = done.view(-1, 1)
                        new_knots, new_U = torch.where(keep, knots, kn), torch.where(keep, U, Un)
                    knots, U = new_knots, new_U
                    stationarity = torch.where(done, stationarity, now)
                    if bool((done | (stationarity <= grad_tol)).all()):
                        break
                violation, previous, capped = al.update(knots, U, ~done, constraint_tol, self.penalty_growth,
                                                        self.penalty_max, previous)
                stalled = torch.where(done, stalled, capped)
                outer = outer + (~done).long()
                done = done | ((violation <= constraint_tol) & (stationarity <= grad_tol))
                history.append(al.cost(cost, knots, U))
                if bool(done.all()):
                    break
        U = clamp(al.controls(U)[0].view(B, tr.T, tr.m), lower, upper)      # clamp: rounding of mid + half sin
        if route != "unroll":
            knots, U = knots.detach(), U.detach()
        fallback = torch.where(nonfinite, int(Status.NOT_FINITE),
                               torch.where(stalled, int(Status.STALLED), int(Status.MAX_ITER)))
        return Outcome(knots=knots, U=U, ok=(stationarity <= grad_tol) & ~nonfinite, fallback=fallback,
                       iterations=iterations, cost_history=torch.stack(history, 1), residual=stationarity,
                       multipliers=al.lam.detach(), extras={"outer_iterations": outer})


# ---------------------------------------------------------------------------------------- the cost as residuals
def cost_residuals(where, cost, T):
    """``(stage, terminal)``: residual functions of a cost ``1/2 |r|^2 + const``: ``stage(X (B, T, n),
    U (B, T, m)) -> (B, T, k)`` and ``terminal(x (B, n)) -> (B, k_T)`` or None (a per-problem
    :class:`~trajopt.QuadraticCost` is factored for the problems it is evaluated on now: call it within their
    selection)."""
    if isinstance(cost, QuadraticCost):
        C, c, _ = cost.stage_tensors(T)         # (T, ...), or (B, T, ...) per problem
        R, o = square_root(where, "C", C, c)
        if cost.batched:
            stage = lambda X, U: torch.einsum("btkj,btj->btk", R, torch.cat([X, U], -1)) + o   # noqa: E731
        else:
            stage = lambda X, U: torch.einsum("tkj,btj->btk", R, torch.cat([X, U], -1)) + o   # noqa: E731
        if cost.C_final is None:
            if cost.c_final is not None:
                raise TypeError(f"{where}: backend=Theseus() needs the cost as a sum of squares; cost has a linear "
                                "terminal term c_final without C_final. Use backend=trajopt.Scipy()")
            return stage, None
        Cf = 0.5 * (cost.C_final + cost.C_final.mT)
        cf = Cf.new_zeros(Cf.shape[:-1]) if cost.c_final is None else cost.c_final
        if cost.batched:
            Rf, of = square_root(where, "C_final", Cf, cf)
            return stage, lambda x: torch.einsum("bkj,bj->bk", Rf, x) + of
        Rf, of = square_root(where, "C_final", Cf.unsqueeze(0), cf.unsqueeze(0))
        return stage, lambda x: x @ Rf[0].mT + of[0]
    if callable(getattr(cost, "stage_residuals", None)):
        def stage(X, U):
            return over_stages(cost.stage_residuals, cost, X, U)
        return stage, getattr(cost, "terminal_residuals", None)
    raise TypeError(f"{where}: backend=Theseus() needs cost as a sum of squares: a trajopt.QuadraticCost or a Cost "
                    f"with stage_residuals(x, u, t) (and terminal_residuals(x)); got {type(cost).__name__}. "
                    "Use backend=trajopt.Scipy() for any other cost")


def square_root(where, name, C, c):
    """``R (T, k, N)``, ``o (T, k)`` with ``1/2 tau' C tau + c' tau = 1/2 |R tau + o|^2 - 1/2 |o|^2``: ``R = L'``
    and ``o = L^{-1} c`` by Cholesky ``C = L L'``; for a semidefinite ``C`` by ``eigh`` (``c`` must then lie
    in its range)."""
    L, info = torch.linalg.cholesky_ex(C)
    if not bool((info != 0).any()):
        return L.mT, torch.linalg.solve_triangular(L, c.unsqueeze(-1), upper=False).squeeze(-1)
    w, V = torch.linalg.eigh(C)
    scale = w.abs().amax(-1, keepdim=True).clamp_min(1e-300)
    tiny = w <= 1e-10 * scale
    if bool((w < -1e-10 * scale).any()):
        raise ValueError(f"{where}: backend=Theseus() needs a positive semidefinite cost.{name}; it has eigenvalue "
                         f"{float(w.min()):.3g} (an indefinite quadratic is not a sum of squares). "
                         "Use backend=trajopt.Scipy()")
    proj = (V.mT @ c.unsqueeze(-1)).squeeze(-1)
    if bool((tiny & (proj.abs() > 1e-8 * (1 + c.abs().amax(-1, keepdim=True)))).any()):
        raise ValueError(f"{where}: backend=Theseus(): the linear term of cost.{name} has a component in the null "
                         f"space of the semidefinite {name} (unbounded below, not a sum of squares). "
                         "Use backend=trajopt.Scipy()")
    root = torch.where(tiny, 0.0, w.clamp_min(0).sqrt())
    return root.unsqueeze(-1) * V.mT, torch.where(tiny, 0.0, proj / torch.where(tiny, 1.0, root))


# ------------------------------------------------------------------------------------- the augmented Lagrangian
class AugmentedLagrangian:
    """The residuals of the inner least-squares problem of the augmented Lagrangian, and their Jacobians.

    Variables: the knots ``1..K`` ``(B, K n)`` and ``z (B, T m)``: a control with two finite bounds is
    ``u = mid + half sin(z)`` (``mid``, ``half``: the middle and half-width of its box), any other ``u = z``.
    Residual, ``1/2 |r|^2 = cost + sum (rho/2) |h + lam/rho|^2 + sum (rho/2) max(0, g + mu/rho)^2`` up to
    constants: per interval ``k`` the defects' ``sqrt(rho) h_k + lam_k / sqrt(rho)`` and the cost residuals of
    its stages, then the terminal cost residual, then one PHR residual per remaining bound ``g <= 0`` (one-sided
    control bounds, knot bounds).
    """

    def __init__(self, tr, residuals, x0, lower, upper, xl, xu, penalty_init):
        self.tr, (self.stage, self.terminal), self.x0 = tr, residuals, x0
        B, K, n = x0.shape[0], tr.K, tr.n
        self.lam, self.rho = x0.new_zeros(B, K, n), x0.new_full((B, K, n), penalty_init)
        flat = [None if z is None else z.reshape(B, -1) for z in (lower, upper)]
        self.squash = torch.zeros(B, tr.T * tr.m, dtype=torch.bool, device=x0.device)
        if flat[0] is not None and flat[1] is not None:
            self.squash = torch.isfinite(flat[0]) & torch.isfinite(flat[1])
            lo, hi = (torch.where(self.squash, z, 0.0) for z in flat)
            self.mid, self.half = (lo + hi) / 2, (hi - lo) / 2
        self.bounds = []            # (variable: 0 knots / 1 controls, sign, bound (B, N) finite-filled, mask (B, N))
        for var, pair in ((0, (xl, xu)), (1, flat)):
            for z, sign in zip(pair, (-1.0, 1.0)):
                if z is not None:
                    z = z.reshape(B, -1)
                    mask = torch.isfinite(z) & (~self.squash if var == 1 else True)
                    if bool(mask.any()):
                        self.bounds.append((var, sign, torch.where(mask, z, 0.0), mask))
        self.mu = [x0.new_zeros(z[2].shape) for z in self.bounds]
        self.rho_g = [x0.new_full(z[2].shape, penalty_init) for z in self.bounds]

    def controls(self, z):
        """``U (B, T m)`` of the variables ``z`` and ``dU/dz``."""
        if not bool(self.squash.any()):
            return z, torch.ones_like(z)
        U = torch.where(self.squash, self.mid + self.half * torch.sin(z), z)
        return U, torch.where(self.squash, self.half * torch.cos(z), 1.0)

    def variables(self, U):
        """``z`` of controls ``U (B, T m)`` inside their bounds (kept off the bounds, where ``dU/dz = 0``)."""
        if not bool(self.squash.any()):
            return U
        ratio = ((U - self.mid) / torch.where(self.squash, self.half, 1.0)).clamp(-0.999, 0.999)
        return torch.where(self.squash, torch.asin(ratio), U)

    def cost(self, cost, knots, z):
        """``cost(X, U) (B,)`` at the variables (detached)."""
        with torch.no_grad():
            U = self.controls(z)[0].view(-1, self.tr.T, self.tr.m)
            return cost(self.tr.states(self.tr.knots(self.x0, knots), U), U)

    def _interval(self, left, U, right):
        B, K = left.shape[:2]
        h, Xs = self.tr.interval(left, U, right)
        root = self.rho.sqrt()
        stage = self.stage(Xs.reshape(B, self.tr.T, -1), U.reshape(B, self.tr.T, -1)).reshape(B, K, -1)
        return torch.cat([root * h + self.lam / root, stage], -1)

    def _inequalities(self, knots, U):
        """Values ``g`` (``<= 0`` when satisfied, 0 where there is no bound) of every bound set."""
        V = (knots, U)
        return [torch.where(mask, sign * (V[var] - b), 0.0) for var, sign, b, mask in self.bounds]

    def residual(self, knots, z, jacobians=False, graph=False):
        """``r (B, R)`` and, with ``jacobians``, ``(J_knots (B, R, K n), J_z (B, R, T m))``."""
        tr = self.tr
        B, K, s, m = z.shape[0], tr.K, tr.s, tr.m
        S = tr.knots(self.x0, knots)
        U, dU = self.controls(z)
        Useg = U.view(B, K, s, m)
        if jacobians:
            r, (JL, JU, JR) = interval_jacobians(self._interval, (S[:, :-1], Useg, S[:, 1:]), graph)
            Jk, Ju = [knot_jacobian(JL, JR)], [block_diagonal(JU.flatten(3))]
        else:
            r = self._interval(S[:, :-1], Useg, S[:, 1:])
        parts = [r.flatten(1)]
        if self.terminal is not None:
            if jacobians:
                rT, (JT,) = interval_jacobians(lambda x: self.terminal(x[:, 0]).unsqueeze(1), (S[:, -1:],), graph)
                rT, JT = rT[:, 0], JT[:, 0]
                Jk.append(torch.cat([JT.new_zeros(B, JT.shape[1], (K - 1) * tr.n), JT], -1))
                Ju.append(JT.new_zeros(B, JT.shape[1], tr.T * m))
            else:
                rT = self.terminal(S[:, -1])
            parts.append(rT)
        for (var, sign, _, mask), g, mu, rho in zip(self.bounds, self._inequalities(knots, U), self.mu, self.rho_g):
            active = mask & (g + mu / rho > 0)
            parts.append(torch.where(active, rho.sqrt() * g + mu / rho.sqrt(), 0.0))
            if jacobians:
                D = torch.diag_embed(torch.where(active, sign * rho.sqrt(), 0.0))
                Jk.append(D if var == 0 else D.new_zeros(B, D.shape[1], K * tr.n))
                Ju.append(D if var == 1 else D.new_zeros(B, D.shape[1], tr.T * m))
        if not jacobians:
            return torch.cat(parts + ([z.new_zeros(B, tr.T * m)] if bool(self.squash.any()) else []), 1)
        Jk, Ju = torch.cat(Jk, 1), torch.cat(Ju, 1)
        if bool(self.squash.any()):
            # rows of value zero whose Jacobian adds diag(max(0, dE/du d2u/dz2)) to Gauss-Newton's J'J: the
            # squashing's own curvature, the exact Newton term where a bound is active (there du/dz = 0, so that
            # Gauss-Newton alone sees no curvature and converges only linearly)
            gu = (Ju.mT @ torch.cat(parts, 1).unsqueeze(-1)).squeeze(-1)
            curvature = torch.where(self.squash, -gu * self.half * torch.sin(z), 0.0).clamp_min(0).detach()
            parts.append(z.new_zeros(B, tr.T * m))
            Jk = torch.cat([Jk, Jk.new_zeros(B, tr.T * m, K * tr.n)], 1)
            Ju = torch.cat([Ju * dU.unsqueeze(1), torch.diag_embed(curvature.sqrt())], 1)
        return torch.cat(parts, 1), Jk, Ju

    def stationarity(self, knots, z):
        """Largest entry of the gradient of ``1/2 |r|^2`` (the Lagrangian's at the updated multipliers), ``(B,)``."""
        r, Jk, Ju = self.residual(knots, z, jacobians=True)
        g = torch.cat([Jk, Ju], -1).mT @ r.unsqueeze(-1)
        return g.abs().flatten(1).amax(1)

    def update(self, knots, z, active, tol, growth, cap, previous):
        """Multiplier and penalty updates of the problems ``active (B,)``; returns the violations ``(B,)``, the
        progress measures ``(B,)`` to compare with at the next update (largest ``|lambda_new - lambda| / rho``) and
        which problems ``(B,)`` fell short of the quarter decrease with their penalty already at ``cap``."""
        U = self.controls(z)[0]
        h = self.tr.defects(self.tr.knots(self.x0, knots), U)
        gs = self._inequalities(knots, U)
        # one penalty per problem (per-constraint penalties that drift orders of magnitude apart leave the inner
        # least-squares problems too ill-conditioned for Gauss-Newton)
        measure = torch.stack([h.abs().flatten(1).amax(1)] + [torch.maximum(g, -mu / rho).abs().amax(1)
                                                               for g, mu, rho in zip(gs, self.mu, self.rho_g)],
                              1).amax(1)
        previous = torch.full_like(measure, float("inf")) if previous is None else previous
        grow = active & (measure > tol) & (measure > 0.25 * previous)
        capped = grow & (self.rho.flatten(1).amin(1) >= cap)
        a3, a2 = active.view(-1, 1, 1), active.view(-1, 1)
        self.lam = torch.where(a3, self.lam + self.rho * h, self.lam)
        self.rho = torch.where(grow.view(-1, 1, 1), (self.rho * growth).clamp(max=cap), self.rho)
        for i, g in enumerate(gs):
            self.mu[i] = torch.where(a2, (self.mu[i] + self.rho_g[i] * g).clamp_min(0), self.mu[i])
            self.rho_g[i] = torch.where(grow.view(-1, 1), (self.rho_g[i] * growth).clamp(max=cap), self.rho_g[i])
        violation = torch.stack([h.abs().flatten(1).amax(1)] + [g.clamp_min(0).amax(1) for g in gs], 1).amax(1)
        return violation, torch.where(active, measure, previous), capped


def _import_theseus(where):
    try:
        with warnings.catch_warnings():   # without scikit-sparse theseus warns that CHOLMOD is unavailable
            warnings.simplefilter("ignore", UserWarning)
            import theseus as th
    except ImportError as err:  # pragma: no cover - exercised where theseus-ai is absent
        raise ImportError(f"{where}(backend=Theseus()) needs theseus-ai; see the README for its install "
                          "(pip install --no-build-isolation --no-deps theseus-ai ...), or use "
                          "backend=trajopt.Scipy()") from err
    return th


_HUGE = 1e100       # what theseus sees of a non-finite residual (Levenberg-Marquardt then rejects the step)


def _sanitized(r, fill):
    return r if bool(torch.isfinite(r).all()) else torch.nan_to_num(r, nan=fill, posinf=fill, neginf=-fill)


_THESEUS_FLAGS = ("adaptive_damping", "ellipsoidal_damping")
_THESEUS_POSITIVE = ("damping", "damping_eps", "down_damping_ratio", "up_damping_ratio")


def _check_theseus_options(where, options):
    """The keys of ``Theseus(options=...)`` that this back end passes on, each of the right kind."""
    known = ("step_size", "damping_accept", *_THESEUS_FLAGS, *_THESEUS_POSITIVE)
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"{where}: options has an unknown key {key!r}; the theseus optimizer takes "
                             f"{sorted(known)}")
        if key in _THESEUS_FLAGS:
            check_bool(where, **{f"options[{key!r}]": value})
        elif key == "step_size" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                         and 0 < value <= 1):
            raise ValueError(f"{where}: options['step_size'] must be in (0, 1], got {value!r}")
        elif key == "damping_accept":
            check_fraction(where, **{"options['damping_accept']": value})
        elif key in _THESEUS_POSITIVE:
            check_positive(where, **{f"options[{key!r}]": value})


def _theseus_layer(th, al, B, dtype, optimizer, max_iter):
    """A TheseusLayer over one cost function: the residuals of ``al`` in the variables ``knots (B, K n)`` and
    ``controls (B, T m)`` (Jacobians by :meth:`AugmentedLagrangian.residual`, not by theseus's autograd).
    Non-finite residuals reach theseus as :data:`_HUGE` and non-finite Jacobian entries as zeros."""
    tr = al.tr
    dim = al.residual(al.x0.new_zeros(B, tr.K * tr.n), al.x0.new_zeros(B, tr.T * tr.m)).shape[1]
    huge = min(_HUGE, torch.finfo(dtype).max ** 0.5 / 1e3)

    class Residual(th.CostFunction):
        def __init__(self, knots, controls, name=None):
            super().__init__(th.ScaleCostWeight(torch.ones(1, 1, dtype=dtype)), name=name)
            self.knots, self.controls = knots, controls
            self.register_optim_vars(["knots", "controls"])

        def error(self):
            return _sanitized(al.residual(self.knots.tensor, self.controls.tensor), huge)

        def jacobians(self):
            r, Jk, Ju = al.residual(self.knots.tensor, self.controls.tensor, jacobians=True,
                                    graph=torch.is_grad_enabled())
            return [_sanitized(Jk, 0.0), _sanitized(Ju, 0.0)], _sanitized(r, huge)

        def dim(self):
            return dim

        def _copy_impl(self, new_name=None):
            return Residual(self.knots.copy(), self.controls.copy(), name=new_name)

    objective = th.Objective(dtype=dtype)
    objective.add(Residual(th.Vector(tr.K * tr.n, name="knots", dtype=dtype),
                           th.Vector(tr.T * tr.m, name="controls", dtype=dtype), name="augmented_lagrangian"))
    cls = th.LevenbergMarquardt if optimizer == "levenberg_marquardt" else th.GaussNewton
    # no tolerance: theseus would count a problem whose step was rejected (no change) as converged; the caller
    # runs short solves and judges convergence itself
    opt = cls(objective, max_iterations=max_iter, abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    return th.TheseusLayer(opt, vectorize=False)
