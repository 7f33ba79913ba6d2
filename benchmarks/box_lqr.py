"""Bounded-LQR suite (``python -m benchmarks box-lqr``): the setup of Frey et al. (2025).

128 problems, N = 20 (T = 20 stage costs and a terminal cost), nx = 8, nu = 4, per problem and stage
``A = I + 0.2 randn``, ``B``, ``b`` randn, ``Q = R = I`` (stage and terminal), ``|u| <= umax``, ``x0`` randn,
``torch.manual_seed(42)``, float64. The loss is the sum of the first controls; its gradients are taken with respect
to ``A, B`` (``F``), ``b`` (``f``) and the cost matrix ``C``.

At ``umax = 1e4`` (bounds inactive) and ``umax = 1`` (binding): median solve and solve+gradient times of the
interior-point :func:`trajopt.lqr` and of the box-DDP it replaced (:func:`trajopt.ilqr` on the per-problem
``LinearDynamics`` and ``QuadraticCost``, measured in turn with it), status counts and iterations, the largest
error of the controls against Clarabel (through cvxpy, tight tolerance) on 8 problems, and the largest relative
error of the gradients against central differences on a few entries of 2 problems. mpc.pytorch is a column only
when ``import mpc`` works.
"""
from __future__ import annotations

import warnings

import torch

import trajopt
from benchmarks import peers
from benchmarks.timing import interleaved_ms, table
from dynamics.analytic.linear import LinearDynamics

B, N, NX, NU = 128, 20, 8, 4
UMAX = (1e4, 1.0)


def problems(umax: float, seed: int = 42) -> dict:
    """The batch as ``lqr``'s tensors (float64) and its bounds."""
    torch.manual_seed(seed)
    dt = torch.float64
    A = torch.eye(NX, dtype=dt) + 0.2 * torch.randn(B, N, NX, NX, dtype=dt)
    Bu = torch.randn(B, N, NX, NU, dtype=dt)
    b = torch.randn(B, N, NX, dtype=dt)
    x0 = torch.randn(B, NX, dtype=dt)
    return dict(F=torch.cat([A, Bu], -1), f=b, C=torch.eye(NX + NU, dtype=dt).expand(B, N, NX + NU, NX + NU).clone(),
                c=torch.zeros(B, N, NX + NU, dtype=dt), x0=x0, C_final=torch.eye(NX, dtype=dt).expand(B, NX, NX).clone(),
                lower=torch.full((B, N, NU), -umax, dtype=dt), upper=torch.full((B, N, NU), umax, dtype=dt))


def solve_new(p, grad="implicit"):
    return trajopt.lqr(p["F"], p["f"], p["C"], p["c"], p["x0"], C_final=p["C_final"], u_lower=p["lower"],
                       u_upper=p["upper"], grad=grad)


def solve_old(p, grad="implicit"):
    """Yesterday's bounded LQR: box-DDP (iLQR) on the per-problem linear model and quadratic cost."""
    model = LinearDynamics(p["F"][..., :NX], p["F"][..., NX:], p["f"], batched=True)
    cost = trajopt.QuadraticCost(p["C"], p["c"], p["C_final"], None, batched=True)
    problem = trajopt.Problem(model, cost, p["x0"], horizon=N, u_lower=p["lower"], u_upper=p["upper"])
    return trajopt.ilqr(problem, max_iter=100, grad=grad)


MPC_LQR_ITER = 100     # mpc.pytorch's iteration budget (its default, 10, stops it short at umax 1)


def solve_mpc(mpc, p, backprop=True):
    """The same problems by mpc.pytorch's box-constrained iLQR (``mpc.MPC`` on ``LinDx``/``QuadCost``): ``N + 1``
    cost stages (the last holds the terminal ``C_final`` on ``x_N`` and ``R`` on a control that moves nothing, so
    it is zero at the optimum) and ``N`` dynamics steps. Returns the controls ``U (B, N, NU)``."""
    tm = lambda z: z.transpose(0, 1)                             # noqa: E731 - mpc.pytorch is time-major
    pad = lambda z: torch.cat([z, z[:, -1:]], 1)                 # noqa: E731
    C = pad(p["C"]).clone()
    C[:, -1, :NX, :NX] = p["C_final"]
    C[:, -1, :NX, NX:], C[:, -1, NX:, :NX] = 0.0, 0.0
    solver = mpc.MPC(NX, NU, N + 1, u_lower=tm(pad(p["lower"])), u_upper=tm(pad(p["upper"])), lqr_iter=MPC_LQR_ITER,
                     exit_unconverged=False, verbose=-1, n_batch=p["F"].shape[0], backprop=backprop,
                     grad_method=mpc.GradMethods.ANALYTIC)
    with warnings.catch_warnings():          # torch.lu and torch.lu_solve, deprecated, inside mpc.pytorch
        warnings.simplefilter("ignore", UserWarning)
        _, U, _ = solver(p["x0"], mpc.QuadCost(tm(C), tm(pad(p["c"]))), mpc.LinDx(tm(p["F"]), tm(p["f"])))
    return tm(U)[:, :N]


def _loss(sol):
    return (sol if isinstance(sol, torch.Tensor) else sol.U)[:, 0].sum()


def _leaves(p):
    return {k: (v.clone().requires_grad_(True) if k in ("F", "f", "C") else v) for k, v in p.items()}


def clarabel_error(p, rows=range(8)) -> float:
    """Largest ``|U - U_clarabel|`` over ``rows``, or None without cvxpy."""
    try:
        import cvxpy as cp
    except ImportError:
        return None
    sol = solve_new(p, grad=None)
    err = 0.0
    for b in rows:
        F, f, C, x0 = (p[k][b].numpy() for k in ("F", "f", "C", "x0"))
        X, U = cp.Variable((N + 1, NX)), cp.Variable((N, NU))
        objective, cons = 0.5 * cp.sum_squares(X[N]), [X[0] == x0]
        for t in range(N):
            tau = cp.hstack([X[t], U[t]])
            objective += 0.5 * cp.quad_form(tau, cp.psd_wrap(C[t]))
            cons += [X[t + 1] == F[t] @ tau + f[t], U[t] >= p["lower"][b, t].numpy(), U[t] <= p["upper"][b, t].numpy()]
        cp.Problem(cp.Minimize(objective), cons).solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12,
                                                       tol_feas=1e-12)
        err = max(err, float((sol.U[b] - torch.tensor(U.value)).abs().max()))
    return err


def gradient_error(p, rows=(0, 1), h=1e-6) -> float:
    """Largest relative error of the implicit gradients of the loss against central differences, on a few entries
    of ``F``, ``f`` and ``C`` of problems ``rows``."""
    q = {k: v[list(rows)].clone() for k, v in p.items()}
    leaves = _leaves(q)
    grads = dict(zip(("F", "f", "C"), torch.autograd.grad(_loss(solve_new(leaves)), [leaves[k] for k in "F f C".split()])))
    picks = {"F": [(0, 0, 1, 2), (1, 0, 3, NX + 1), (0, 5, 2, NX + 3)], "f": [(0, 0, 4), (1, 2, 0)],
             "C": [(0, 0, NX, NX), (1, 1, 2, NX + 1), (0, 3, 0, 0)]}
    worst = 0.0
    for name, indices in picks.items():
        for index in indices:
            vals = []
            for sign in (1, -1):
                z = {k: v.clone() for k, v in q.items()}
                z[name][index] += sign * h
                vals.append(float(_loss(solve_new(z, grad=None))))
            fd = (vals[0] - vals[1]) / (2 * h)
            worst = max(worst, abs(float(grads[name][index]) - fd) / max(abs(fd), 1e-3))
    return worst


def measure(umax: float, repeat: int) -> dict:
    p = problems(umax)
    pg = _leaves(p)

    def zero():
        for v in pg.values():
            v.grad = None

    def with_grad(solver):
        def run():
            zero()
            _loss(solver(pg)).backward()
        return run

    fns = {"new": lambda: solve_new(p, grad=None), "new_grad": with_grad(solve_new),
           "old": lambda: solve_old(p, grad=None), "old_grad": with_grad(solve_old)}
    mpc = peers.mpc_pytorch()
    if mpc is not None:
        fns.update(mpc=lambda: solve_mpc(mpc, p, backprop=False), mpc_grad=with_grad(lambda q: solve_mpc(mpc, q)))
    times = interleaved_ms(fns, repeat=repeat if umax > 10 else max(3, repeat // 4), warmup=1)
    new, old = solve_new(p, grad=None), solve_old(p, grad=None)
    summary = lambda s: s.summary().split(": ", 1)[1]            # noqa: E731
    peer = {}
    if mpc is not None:
        U_mpc = solve_mpc(mpc, p, backprop=False)
        peer = {"mpc": times["mpc"], "mpc_grad": times["mpc_grad"], "speedup": times["mpc"] / times["new"],
                "speedup_grad": times["mpc_grad"] / times["new_grad"],
                "mpc_err": float((U_mpc - new.U).abs().max())}
    return {**peer, "umax": f"{umax:g}", "solve": times["new"], "solve_grad": times["new_grad"],
            "old_solve": times["old"], "old_grad": times["old_grad"],
            "ratio": times["new"] / times["old"], "ratio_grad": times["new_grad"] / times["old_grad"],
            "iters": f"{new.iterations.double().mean():.1f}/{int(new.iterations.max())}",
            "old_iters": f"{old.iterations.double().mean():.1f}/{int(old.iterations.max())}",
            "status": summary(new), "old_status": summary(old),
            "active": f"{float(((new.U == p['lower']) | (new.U == p['upper'])).double().mean()):.3f}",
            "clarabel": clarabel_error(p), "grad_err": gradient_error(p)}


COLUMNS = [("umax", "umax", "s"), ("solve", "solve ms", ".1f"), ("solve_grad", "+grad ms", ".1f"),
           ("old_solve", "box-DDP ms", ".1f"), ("old_grad", "box-DDP +grad ms", ".1f"),
           ("ratio", "new/old", ".3f"), ("ratio_grad", "new/old +grad", ".3f"), ("iters", "iters mean/max", "s"),
           ("old_iters", "DDP iters", "s"), ("status", "status", "s"), ("old_status", "DDP status", "s"),
           ("active", "active frac", "s"), ("clarabel", "|U - Clarabel|", ".1e"), ("grad_err", "grad rel err", ".1e")]


MPC_COLUMNS = [("umax", "umax", "s"), ("mpc", "mpc.pytorch ms", ".1f"), ("mpc_grad", "+grad ms", ".1f"),
               ("speedup", "speedup", ".2f"), ("speedup_grad", "speedup +grad", ".2f"), ("mpc_err", "|U - ours|", ".1e")]


def run(repeat: int = 20) -> str:
    lines = [f"Bounded LQR (Frey et al. 2025 setup): B={B}, N={N}, nx={NX}, nu={NU}, float64, seed 42; "
             f"loss = sum of the first controls, gradients w.r.t. F (A, B), f (b), C",
             "times are medians in ms of calls made in turn (new interior point and old box-DDP); "
             "|U - Clarabel| on 8 problems; grad rel err: central differences on 8 entries of 2 problems"]
    if peers.mpc_pytorch() is None:
        lines.append("mpc.pytorch: not installed (pip install --no-deps mpc), no column")
    rows = [measure(umax, repeat) for umax in UMAX]
    lines.append(table(rows, COLUMNS))
    if peers.mpc_pytorch() is not None:
        lines += ["", f"mpc.pytorch (box-constrained iLQR, lqr_iter={MPC_LQR_ITER}), in the same rounds; speedup = its time / "
                  "ours; |U - ours|: its largest control difference from our solution (ours equals Clarabel's)",
                  table(rows, MPC_COLUMNS)]
    return "\n".join(lines)
