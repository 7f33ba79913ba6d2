"""Batched finite-horizon time-varying LQR with an analytic adjoint backward pass.

For every problem in a batch, solves

    min  sum_{t<T} 1/2 tau_t' C_t tau_t + c_t' tau_t  +  1/2 x_T' C_final x_T + c_final' x_T
    s.t. x_{t+1} = F_t tau_t + f_t,   x_0 = x0,   tau_t = [x_t; u_t]

(the convention of mpc.pytorch, Amos et al. 2018, "Differentiable MPC for End-to-end
Planning and Control", with an optional terminal term) by a backward Riccati
recursion and a forward rollout with ``u_t = K_t x_t + k_t``.

The recursion runs in homogeneous coordinates ``[1; x; u]`` so that one pair of
products per stage updates the quadratic and linear parts of the value function
together, and the optimal cost is read off the value function at ``x0``. The
gradient of a loss on the solution is the solution of a second LQR with the same
``F``, ``C`` and the incoming gradients as its linear terms (Amos et al. 2018,
section 4); it reuses the gains of the forward solve, so a backward pass costs
two matrix-vector sweeps, less than a forward solve.

Differentiable with respect to: ``F, f, C, c, x0, C_final, c_final`` (``X``, ``U``
and ``cost``; the gains ``K``, ``k`` are differentiable only with ``grad="unroll"``).
"""
from __future__ import annotations

import torch

from dynamics.validation import check_consistent, check_finite, check_tensor, set_dim
from .._core.bounds import check_bounds
from .._core.checks import check_bool, check_int, tolerance
from .._core.compiled import compiled
from .._core.interior_point import fix_active, interior_point, unbounded
from .._core.problem import Solution, Status
from .._core.riccati import Stages, raise_if_not_pd, solve, spd_solve
from .._core.scan import affine_scan

__all__ = ["lqr", "lqr_cost"]


def lqr(
    F: torch.Tensor,
    f: torch.Tensor | None,
    C: torch.Tensor,
    c: torch.Tensor | None,
    x0: torch.Tensor,
    *,
    C_final: torch.Tensor | None = None,
    c_final: torch.Tensor | None = None,
    u_lower=None,
    u_upper=None,
    grad: str | None = "implicit",
    max_iter: int = 100,
    time_parallel: bool = False,
    compile: bool = False,
) -> Solution:
    """Solve a batch of time-varying LQR problems.

    Every argument may carry a leading batch dimension ``B`` or not; those
    without one are shared by the whole batch. The output is unbatched only when
    no argument is batched.

    Args:
        F: dynamics ``(B, T, n, n+m)``: ``x_{t+1} = F_t [x_t; u_t] + f_t``.
        f: dynamics offset ``(B, T, n)``, or None for zero.
        C: stage cost Hessians ``(B, T, n+m, n+m)``; only the symmetric part counts.
        c: stage cost gradients ``(B, T, n+m)``, or None for zero.
        x0: initial states ``(B, n)``.
        C_final: terminal cost Hessian ``(B, n, n)`` on ``x_T``, or None for zero.
        c_final: terminal cost gradient ``(B, n)``, or None for zero.
        u_lower, u_upper: control bounds broadcastable to ``(B, T, m)`` (per problem, stage and control; ``-inf``/``inf``
            or None where unbounded). With bounds the problem is a box-constrained QP: a problem whose unbounded
            solution is within its bounds keeps it; the others are solved by a primal-dual interior-point method
            on the Riccati structure (Mehrotra's predictor-corrector, one batched Riccati pass per iteration with
            the barrier diagonal on ``Q_uu``; :mod:`trajopt._core.interior_point`) that ends with the LQR of the
            active set (controls at their bounds fixed), exact to rounding. Its gradient is that of the solution
            with the active set held (the KKT system at the solution, strictly active bounds as equality
            constraints): the adjoint LQR of that active-set LQR, reaching ``F, f, C, c, x0, C_final, c_final`` and
            the bounds of the controls at them.
        grad: ``"implicit"`` (analytic adjoint, the default), ``"unroll"``
            (autograd through the recursion) or None (no graph is built).
        max_iter: interior-point iteration budget (unused without bounds).
        time_parallel: solve in ``ceil(log2 (T+1))`` dependent steps instead of ``T`` (unbounded problems; the
            bounded ones are solved sequentially): the Riccati recursion as the associative scan of Saerkkae and
            Garcia-Fernandez (2023), the rollout and both sweeps of the adjoint as scans of affine maps
            (:mod:`trajopt._core.scan`). Same solution and gradients to rounding; ``T log2 T`` work against ``T``,
            so it pays where the per-operation overhead dominates (small batches, long horizons, GPUs;
            docs/latency.md gives the measured crossover). It needs every ``C_uu`` positive definite: a batch with
            one that is not is solved sequentially.
        compile: run the unbounded solve (and its adjoint) ``torch.compile``d: the recursion unrolls over ``T`` into
            one graph at fixed shapes (:mod:`trajopt._core.compiled`). The first call for a set of shapes, a dtype and
            these options compiles (docs/latency.md gives the times); later calls cost a fraction of the eager
            ones at small batches. Same results as eager to rounding. Bounded problems run eagerly.

    Returns:
        :class:`~trajopt.Solution` with ``X (B, T+1, n)``, ``U (B, T, m)``, ``cost (B,)``,
        ``K (B, T, m, n)``, ``k (B, T, m)``, ``status`` all ``CONVERGED`` (a direct solve), ``iterations`` ones,
        ``cost_history (B, 1)``, ``residual`` None. With bounds: ``status`` ``CONVERGED`` where the solution
        within the bounds has a projected gradient at most ``1e-8`` (float64; scaled to the dtype) relative to the
        scale of the gradient, ``MAX_ITER`` when the budget ran out first (the last iterate clamped into the
        bounds and its rollout; its gradient is that of the rollout of its controls), ``NOT_FINITE`` when a step
        or the cost overflowed (the last finite iterate, or where there is none ``x0`` held and zero controls
        clamped into the bounds; cost ``inf``; with a gradient, also a problem whose differentiable solve overflows;
        no gradient reaches a ``NOT_FINITE`` problem's inputs); ``iterations`` the interior-point iterations (0 for
        a problem within its bounds); ``residual`` the projected gradient's largest entry; ``K`` the feedback of
        the active-set LQR (zero rows on controls at a bound).

    Raises:
        ValueError: wrong shapes, mismatched batch sizes, NaN/Inf in an input, or a
            control Hessian ``Q_uu`` of the Riccati recursion that is not positive definite.
        TypeError: a non-tensor or non-float input, or mismatched dtypes.

    Differentiable with respect to: F, f, C, c, x0, C_final, c_final (once, on the implicit route;
    ``grad="unroll"`` supports higher-order derivatives); with bounds also u_lower, u_upper (the entries at which
    controls rest), and ``grad="unroll"`` takes the implicit route.
    """
    where = "lqr"
    check_int(where, max_iter=max_iter)
    if grad not in ("implicit", "unroll", None):
        raise ValueError(f"{where}: grad must be 'implicit', 'unroll' or None, got {grad!r}")
    dims: dict[str, int] = {}
    F = check_tensor(where, "F", F, ("T", "n", "n+m"), dims, finite=False)
    n, T = dims["n"], dims["T"]
    m = dims["n+m"] - n
    if m < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; its last dimension n+m must exceed n={n}")
    if T < 1:
        raise ValueError(f"{where}: F has shape {tuple(F.shape)}; the horizon T must be at least 1")
    inputs = {
        "F": F,
        "f": None if f is None else check_tensor(where, "f", f, ("T", "n"), dims, finite=False),
        "C": check_tensor(where, "C", C, ("T", "n+m", "n+m"), dims, finite=False),
        "c": None if c is None else check_tensor(where, "c", c, ("T", "n+m"), dims, finite=False),
        "x0": check_tensor(where, "x0", x0, ("n",), dims, finite=False),
        "C_final": None if C_final is None else check_tensor(where, "C_final", C_final, ("n", "n"), dims, finite=False),
        "c_final": None if c_final is None else check_tensor(where, "c_final", c_final, ("n",), dims, finite=False),
    }
    ndims = {"F": 3, "f": 2, "C": 3, "c": 2, "x0": 1, "C_final": 2, "c_final": 1}
    batch = check_consistent(where, inputs, ndims)
    if batch == 0:
        raise ValueError(f"{where}: the batch is empty (B=0)")
    B = 1 if batch is None else batch

    def batched(name, shape):
        v = inputs[name]
        if v is None:
            return F.new_zeros((B, *shape))
        return v if v.ndim > ndims[name] else v.expand(B, *v.shape)

    args = (
        batched("F", (T, n, n + m)), batched("f", (T, n)), batched("C", (T, n + m, n + m)),
        batched("c", (T, n + m)), batched("x0", (n,)), batched("C_final", (n, n)), batched("c_final", (n,)),
    )
    if u_lower is not None or u_upper is not None:
        sol = _box_constrained(*args, u_lower=u_lower, u_upper=u_upper, grad=grad, max_iter=max_iter,
                               inputs=inputs)
        return sol if batch is not None else sol[0]
    check_bool(where, time_parallel=time_parallel, compile=compile)
    X, U, cost, K, k, pd, ok = (compiled(_unbounded, F.device.type) if compile else _unbounded)(*args, grad,
                                                                                               time_parallel)
    ok = bool(ok)                       # the one host synchronization of an unbounded solve
    if time_parallel and not ok:        # a C_uu that is not positive definite: the sequential recursion decides
        return lqr(F, f, C, c, x0, C_final=C_final, c_final=c_final, grad=grad, max_iter=max_iter, compile=compile)
    if not ok:
        # NaN/Inf anywhere in the inputs reaches the solution; only then pay for a scan that names it.
        check_finite(where, inputs)
        if not (bool(torch.isfinite(K).all()) and bool(torch.isfinite(k).all())):
            raise ValueError(f"{where}: the recursion overflowed: the inputs F, f, C, c, x0 are finite, but the value "
                             f"function or the gains exceeded the {F.dtype} range (rescale F and C, or a Q_uu is "
                             "singular)")
        raise_if_not_pd(pd)
        raise ValueError(f"{where}: the solution overflowed: the inputs are finite, but |X| or |U| exceeded the "
                         f"{F.dtype} range (an unstable closed loop over the horizon; rescale F, f or x0)")
    ones = torch.ones(B, dtype=torch.long, device=F.device)
    sol = Solution(X=X, U=U, cost=cost, status=ones * int(Status.CONVERGED), iterations=ones,
                   cost_history=cost.detach().unsqueeze(-1), K=K, k=k)
    return sol if batch is not None else sol[0]



def _unbounded(F, f, C, c, x0, C_final, c_final, grad, parallel):
    """The unbounded LQR of batched inputs: ``X, U, cost, K, k, pd`` with the gradient route ``grad``, and ``ok``
    (a bool tensor): every ``Q_uu`` positive definite and the solution finite."""
    with torch.set_grad_enabled(grad is not None and torch.is_grad_enabled()):
        if grad == "implicit":
            X, U, cost, K, k, pd = LQRFunction.apply(F, f, C, c, x0, C_final, c_final, parallel)
        else:
            X, U, cost, K, k, pd = solve(F, f, C, c, x0, C_final, c_final, keep=False, parallel=parallel).outputs()
    finite = torch.isfinite(cost.detach()).all() & torch.isfinite(X.detach()).all() & torch.isfinite(U.detach()).all()
    return X, U, cost, K, k, pd, pd.all() & finite


def lqr_cost(X, U, C, c, C_final=None, c_final=None):
    """``sum_t 1/2 tau_t' C_t tau_t + c_t' tau_t + 1/2 x_T' C_final x_T + c_final' x_T``, shape ``(B,)``.

    ``X (B, T+1, n)``, ``U (B, T, m)``, the rest as in :func:`lqr` (batched or shared; ``c`` None for zero). Every
    input is checked (shapes, finite values: no NaN is returned). Differentiable with respect to every argument.
    """
    where, dims = "lqr_cost", {}
    U = check_tensor(where, "U", U, ("T", "m"), dims, batchable=True)
    X = check_tensor(where, "X", X, ("T+1", "n"), {**dims, "T+1": dims["T"] + 1}, batchable=True)
    set_dim(dims, "n+m", X.shape[-1] + dims["m"], "X and U")
    C = check_tensor(where, "C", C, ("T", "n+m", "n+m"), dims)
    c = C.new_zeros(C.shape[:-1]) if c is None else check_tensor(where, "c", c, ("T", "n+m"), dims)
    if C_final is not None:
        C_final = check_tensor(where, "C_final", C_final, ("n", "n"), dims)
    if c_final is not None:
        c_final = check_tensor(where, "c_final", c_final, ("n",), dims)
    if X.ndim != 3 or U.ndim != 3 or X.shape[0] != U.shape[0]:
        raise ValueError(f"{where}: X {tuple(X.shape)} and U {tuple(U.shape)} must be batched alike: (B, T+1, n) "
                         "and (B, T, m)")
    check_consistent(where, {"X": X, "U": U, "C": C, "c": c, "C_final": C_final, "c_final": c_final},
                     {"X": 2, "U": 2, "C": 3, "c": 2, "C_final": 2, "c_final": 1})
    B = X.shape[0]
    C, c = (C if C.ndim == 4 else C.expand(B, *C.shape)), (c if c.ndim == 3 else c.expand(B, *c.shape))
    if C_final is not None and C_final.ndim == 2:
        C_final = C_final.expand(B, *C_final.shape)
    if c_final is not None and c_final.ndim == 1:
        c_final = c_final.expand(B, *c_final.shape)
    return _lqr_cost(X, U, C, c, C_final, c_final)


def _lqr_cost(X, U, C, c, C_final, c_final):
    """:func:`lqr_cost` of batched inputs, unchecked (a non-finite row gives a non-finite cost)."""
    tau = torch.cat([X[:, :-1], U], dim=-1)
    cost = 0.5 * torch.einsum("bti,btij,btj->b", tau, C, tau) + torch.einsum("bti,bti->b", c, tau)
    xT = X[:, -1]
    if C_final is not None:
        cost = cost + 0.5 * torch.einsum("bi,bij,bj->b", xT, C_final, xT)
    if c_final is not None:
        cost = cost + (c_final * xT).sum(-1)
    return cost



class LQRFunction(torch.autograd.Function):
    """LQR solve whose backward is the adjoint LQR of Amos et al. (2018), reusing the forward's gains."""

    @staticmethod
    def forward(ctx, F, f, C, c, x0, C_final, c_final, parallel=False):
        s = solve(F, f, C, c, x0, C_final, c_final, keep=any(ctx.needs_input_grad), parallel=parallel)
        ctx.parallel = parallel
        ctx.save_for_backward(s.Fh, s.Kh, s.Vh, s.Quu, s.Xh, s.Uh)
        X, U, cost, K, k, pd = s.outputs()
        ctx.mark_non_differentiable(K, k, pd)
        return X, U, cost, K, k, pd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dX, dU, dcost, dK, dk, dpd):
        Fh, Kh, Vh, Quu, Xh, Uh = ctx.saved_tensors
        T, B, n1, N = Fh.shape
        n = n1 - 1
        gX = dX.transpose(0, 1).unsqueeze(-1)            # (T+1,B,n,1)
        gU = dU.transpose(0, 1).unsqueeze(-1)            # (T,B,m,1)
        Kx = Kh[..., 1:]                                 # (T,B,m,n)
        Ft = Fh[:, :, 1:, 1:]                            # (T,B,n,n+m)
        A, Bu = Ft[..., :n], Ft[..., n:]
        Acl = A + Bu @ Kx                                # closed loop A + B K, one batched product

        # The adjoint LQR has the same F, C (so the same gains K) and linear terms g = dL/dtau, f = 0,
        # x0 = 0. Its value gradient obeys v_t = (A + B K)_t' v_{t+1} + g_x,t + K_t' g_u,t, v_T = g_T.
        offset = gX[:-1] + Kx.mT @ gU
        if ctx.parallel:
            vs = affine_scan(Acl.mT, offset, gX[T], reverse=True)
        else:
            v = gX[T]
            vs = Stages(T + 1)
            vs.put(T, v)
            for t in range(T - 1, -1, -1):
                v = torch.baddbmm(offset[t], Acl[t].mT, v)
                vs.put(t, v)
            vs = vs.get()                                # (T+1,B,n,1)
        kt = -spd_solve(Quu, gU + Bu.mT @ vs[1:])       # (T,B,m,1)

        # adjoint rollout from x~_0 = 0 under u~_t = K_t x~_t + k~_t
        Bk = Bu @ kt
        if ctx.parallel:
            xs = affine_scan(Acl, Bk, torch.zeros_like(vs[0]))
        else:
            xt = torch.zeros_like(vs[0])
            xs = Stages(T + 1)
            xs.put(0, xt)
            for t in range(T):
                xt = torch.baddbmm(Bk[t], Acl[t], xt)
                xs.put(t + 1, xt)
            xs = xs.get()                                # (T+1,B,n,1)
        ut = Kx @ xs[:-1] + kt

        # costates lambda_t = V_{t+1} x_{t+1} + v_{t+1}, t = -1..T-1, of the adjoint and the primal,
        # from one product with the homogeneous [0; x~] and [1; x]
        both = Vh @ torch.cat([torch.cat([torch.zeros_like(xs[..., :1, :]), xs], 2), Xh], -1)
        lam_t = both[1:, :, 1:, :1] + vs[1:]
        lam = both[:, :, 1:, 1:]                         # (T+1,B,n,1), lam[0] is lambda_{-1}
        tau = torch.cat([Xh[:-1, :, 1:], Uh], 2)         # (T,B,n+m,1)
        tau_t = torch.cat([xs[:-1], ut], 2)
        # the optimal cost's own gradient (envelope theorem): dJ/dC_t = tau tau'/2, dJ/dc_t = tau,
        # dJ/dF_t = lambda_t tau_t', dJ/df_t = lambda_t, dJ/dx0 = lambda_{-1}; folded in with weight dcost.
        w = dcost.view(1, B, 1, 1)
        lin_t = tau_t + w * tau                          # gradient of the linear terms
        lam_all = lam_t + w * lam[1:]

        def bf(x):  # time-major -> batch-first, contiguous (small vectors only)
            return x.transpose(0, 1).contiguous()

        # every matrix gradient is a sum of two outer products, written once, batch-first
        need = ctx.needs_input_grad
        dF = (bf(lam_all) * bf(tau).mT).addcmul_(bf(lam[1:]), bf(tau_t).mT) if need[0] else None
        df = bf(lam_all[..., 0]) if need[1] else None
        dC = None
        if need[2]:
            half, tau_b = bf(0.5 * tau_t + 0.25 * w * tau), bf(tau)      # dC = half tau' + tau half'
            dC = (half * tau_b.mT).addcmul_(tau_b, half.mT)
        dc = bf(lin_t[..., 0]) if need[3] else None
        dx0 = (vs[0] + w[0] * lam[0])[..., 0] if need[4] else None
        xT, xtT, wT = Xh[T, :, 1:], xs[T], w[0]
        halfT = 0.5 * xtT + 0.25 * wT * xT
        dCf = (halfT * xT.mT).addcmul_(xT, halfT.mT) if need[5] else None
        dcf = (xtT + wT * xT)[..., 0] if need[6] else None
        return dF, df, dC, dc, dx0, dCf, dcf, None


def _box_constrained(F, f, C, c, x0, C_final, c_final, *, u_lower, u_upper, grad, max_iter, tol=None, inputs=None):
    """The bounded LQR of batched tensors by the interior-point method of :mod:`trajopt._core.interior_point`.

    The unbounded solution comes first (one Riccati pass): a problem whose solution is within its bounds is solved.
    The others go to the interior-point method, which ends with the LQR of their active set (the controls at
    their bounds fixed). With grad, that LQR of every problem, fixed as :func:`fix_active` states it, is solved
    once more through :class:`LQRFunction`: the gradient is that of the solution with its active set held (the
    KKT system at the solution, strictly active bounds as equality constraints), by the same adjoint LQR as
    without bounds, and reaches ``F, f, C, c, x0, C_final, c_final`` and the bounds of the fixed controls.
    Problems that did not converge have every control fixed: their gradient is that of the rollout of their
    controls. NaN/Inf in the ``inputs`` (a dict of the named tensors) reaches the unbounded solution: only then are
    they scanned, to raise naming the input."""
    B, T, n, nm = F.shape
    m = nm - n
    lower, upper = check_bounds("lqr", u_lower, u_upper, (B, T, m), F)
    lower = torch.full((B, T, m), -torch.inf, dtype=F.dtype, device=F.device) if lower is None else lower
    upper = torch.full((B, T, m), torch.inf, dtype=F.dtype, device=F.device) if upper is None else upper
    tol = tolerance(tol, 1e-8, F.dtype)
    args = (F, f, C, c, x0, C_final, c_final)
    record = grad is not None and torch.is_grad_enabled()
    blocks = None
    with torch.set_grad_enabled(record):       # the unbounded solution, the answer of every problem within bounds
        if record:
            X, U, cost, K, k, pd = LQRFunction.apply(*args)
            pd = pd.all(0)
        else:
            X, U, cost, K, k, pd, blocks = unbounded(*args)
    if inputs is not None and not (bool(torch.isfinite(cost).all()) and bool(torch.isfinite(U).all())):
        check_finite("lqr", inputs)
    inside = pd & ((U.detach() >= lower) & (U.detach() <= upper)).flatten(1).all(1)
    status = torch.full((B,), int(Status.CONVERGED), dtype=torch.long, device=F.device)
    iterations = torch.zeros(B, dtype=torch.long, device=F.device)
    residual = torch.zeros(B, dtype=F.dtype, device=F.device)
    if not bool(inside.all()):
        with torch.no_grad():
            X, U, cost, K, k = (z.detach().clone() for z in (X, U, cost, K, k))
            fixed = torch.zeros_like(U, dtype=torch.bool)
            rows = (~inside).nonzero()[:, 0]
            usable = pd & torch.isfinite(U).flatten(1).all(1) & torch.isfinite(X).flatten(1).all(1)
            start = torch.where(usable.view(-1, 1, 1), U, 0.0)[rows]
            Xs = X[rows] if bool(usable[rows].all()) else rollout_of(*(z[rows] for z in args), start)
            ip = interior_point(*(z[rows] for z in (*args, lower, upper)), start, Xs, tol=tol, max_iter=max_iter,
                                blocks=None if blocks is None else blocks if len(rows) == B else blocks.rows(rows))
            X[rows], U[rows], K[rows], k[rows], fixed[rows] = ip.X, ip.U, ip.K, ip.k, ip.fixed
            status[rows] = torch.where(ip.converged, int(Status.CONVERGED),
                                       torch.where(ip.finite, int(Status.MAX_ITER), int(Status.NOT_FINITE)))
            iterations[rows], residual[rows] = ip.iterations, ip.residual
            cost = _lqr_cost(X, U, C, c, C_final, c_final)
            # NOT_FINITE problems (a step or the cost overflowed) keep their last finite iterate, with no gradient
            detached = (status == int(Status.NOT_FINITE)) | ~(torch.isfinite(X).flatten(1).all(1)
                                                                & torch.isfinite(U).flatten(1).all(1)
                                                                & torch.isfinite(cost))
            kept = X.clone(), U.clone(), cost.clone()
        if record:      # the LQR of the active set, differentiable (see the docstring)
            values = torch.where(U == lower, lower, torch.where(U == upper, upper, U))
            X, U, cost, overflowed = _active_set_solve(F, f, C, c, x0, C_final, c_final, fixed, values, detached)
            if bool(overflowed.any()):      # its adjoint would overflow too: NOT_FINITE, and no gradient through it
                detached = detached | overflowed
                status = torch.where(overflowed, int(Status.NOT_FINITE), status)
                X, U, cost, _ = _active_set_solve(F, f, C, c, x0, C_final, c_final, fixed, values, detached)
                cost = torch.where(overflowed, torch.inf, cost)
            if bool(detached.any()):
                X, U, cost = (torch.where(detached.view(-1, *[1] * (z.ndim - 1)), old, z)
                              for z, old in zip((X, U, cost), kept))
                cost = torch.where(detached & (status == int(Status.NOT_FINITE)), torch.inf, cost)
    # a problem with no finite iterate (its recursion or rollout overflows from any controls): x0 held over the
    # horizon, zero controls clamped into the bounds, no feedback, cost inf (no NaN is returned)
    lost = ~(torch.isfinite(X.detach()).flatten(1).all(1) & torch.isfinite(U.detach()).flatten(1).all(1))
    if bool(lost.any()):
        held = lost.view(B, 1, 1)
        X = torch.where(held, x0.detach().unsqueeze(1).expand(B, T + 1, n), X)
        U = torch.where(held, torch.zeros_like(U).clamp(lower, upper), U)
        K, k = torch.where(held.unsqueeze(-1), 0.0, K), torch.where(held, 0.0, k)
        cost, residual = torch.where(lost, torch.inf, cost), torch.where(lost, torch.inf, residual)
        status = torch.where(lost, int(Status.NOT_FINITE), status)
    return Solution(X=X, U=U, cost=cost, status=status, iterations=iterations,
                    cost_history=cost.detach().unsqueeze(-1), residual=residual, K=K, k=k)


def _active_set_solve(F, f, C, c, x0, C_final, c_final, fixed, values, detached):
    """The differentiable LQR of the active set (``fixed`` controls at ``values``), with the problems ``detached``
    replaced by a benign one (no gradient reaches their inputs, and no overflow of theirs enters the adjoint):
    ``X, U, cost`` and the problems not ``detached`` whose solution or cost is not finite ``(B,)``."""
    B, _, n, nm = F.shape
    parts = (F, f, C, c, x0, C_final, c_final)
    if bool(detached.any()):
        benign = (0.0, 0.0, torch.eye(nm, dtype=F.dtype, device=F.device), 0.0, 0.0, 0.0, 0.0)
        parts = tuple(torch.where(detached.view(-1, *[1] * (z.ndim - 1)), b, z) for z, b in zip(parts, benign))
        values = torch.where(detached.view(B, 1, 1), 0.0, values)
    Fk, fk, Ck, ck, constant = fix_active(*parts[:4], fixed, values)
    X, Uk, cost, _, _, _ = LQRFunction.apply(Fk, fk, Ck, ck, *parts[4:])
    U, cost = torch.where(fixed, values, Uk), cost + constant
    overflowed = ~detached & ~(torch.isfinite(cost.detach()) & torch.isfinite(X.detach()).flatten(1).all(1))
    return X, U, cost, overflowed


def rollout_of(F, f, C, c, x0, C_final, c_final, U):
    """The states of ``U`` under the dynamics ``F``, ``f`` from ``x0`` (every control fixed)."""
    fixed = torch.ones_like(U, dtype=torch.bool)
    Fk, fk, Ck, ck, _ = fix_active(F, f, C, c, fixed, U)
    return solve(Fk, fk, Ck, ck, x0, C_final, c_final, keep=False).outputs()[0]
