"""LQR suite: P1 (random time-varying LQR) at the sizes of the foundation issue.

Columns: forward ms (no graph), forward+backward ms (gradients of a loss on X, U and the cost with
respect to every input), microseconds per problem, the backward/forward ratio, and, when mpc.pytorch
is importable, its forward and forward+backward on the same problems and our speed-up over it.
A first block checks the answers: our solution and gradients against the dense KKT reference and the
unrolled recursion.
"""
from __future__ import annotations

import torch

import trajopt
from benchmarks import peers
from benchmarks.timing import interleaved_ms, table
from trajopt.problems import reference as problems

SIZES = [(1, 50, 8, 3), (64, 50, 8, 3), (256, 100, 8, 3), (16, 50, 32, 8)]
ARGS = ("F", "f", "C", "c", "x0")


def p1_inputs(B, T, n, m, *, requires_grad=False, seed=0):
    p = problems.lqr_problem(B=B, T=T, n=n, m=m, seed=seed)
    return {k: torch.tensor(p[k]).requires_grad_(requires_grad) for k in ARGS}


def loss_of(X, U, extra=0.0):
    return X.square().sum() + U.sum() + extra


def check_accuracy(B=8, T=30, n=8, m=3) -> dict:
    """Max errors of X, U against the dense KKT solve, and of implicit against unrolled gradients."""
    p = problems.lqr_problem(B=B, T=T, n=n, m=m, seed=1)
    X_ref, U_ref = problems.lqr_reference(p)
    t = p1_inputs(B, T, n, m, requires_grad=True, seed=1)
    grads = {}
    for mode in ("implicit", "unroll"):
        sol = trajopt.lqr(*(t[k] for k in ARGS), grad=mode)
        grads[mode] = torch.autograd.grad(loss_of(sol.X, sol.U, sol.cost.sum()), list(t.values()))
    return {
        "X_err": float((sol.X[:, :T].detach() - torch.tensor(X_ref)).abs().max()),
        "U_err": float((sol.U.detach() - torch.tensor(U_ref)).abs().max()),
        "grad_err": max(float((a - b).abs().max()) for a, b in zip(grads["implicit"], grads["unroll"])),
    }


def measure(B, T, n, m, repeat=20) -> dict:
    t = p1_inputs(B, T, n, m)
    tg = p1_inputs(B, T, n, m, requires_grad=True)
    row = {"size": f"B={B} T={T} n={n} m={m}"}

    def fwd():
        trajopt.lqr(*(t[k] for k in ARGS), grad=None)

    def zero_grad():
        for v in tg.values():
            v.grad = None

    def fwd_bwd():
        zero_grad()
        sol = trajopt.lqr(*(tg[k] for k in ARGS))
        loss_of(sol.X, sol.U, sol.cost.sum()).backward()

    fns = {"fwd": fwd, "fwd_bwd": fwd_bwd}
    for name, solve in _peer_solvers().items():
        def peer_fwd(solve=solve):
            with torch.no_grad():
                solve(*(t[k] for k in ARGS))

        def peer_fwd_bwd(solve=solve):
            zero_grad()
            X, U = solve(*(tg[k] for k in ARGS))
            loss_of(X, U).backward()
        fns.update({f"{name}_fwd": peer_fwd, f"{name}_fwd_bwd": peer_fwd_bwd})
    row.update(interleaved_ms(fns, repeat if len(fns) == 2 else max(5, repeat // 2)))
    row["us_per_problem"] = 1e3 * row["fwd"] / B
    row["bwd_over_fwd"] = row["fwd_bwd"] / row["fwd"]
    for name in _peer_solvers():
        row[f"x_{name}_fwd"] = row[f"{name}_fwd"] / row["fwd"]
        row[f"x_{name}_fwd_bwd"] = row[f"{name}_fwd_bwd"] / row["fwd_bwd"]
    return row


def _peer_solvers() -> dict:
    """Peer LQR solvers that are importable here, as ``name -> solve(F, f, C, c, x0) -> (X, U)``."""
    out = {}
    mpc = peers.mpc_pytorch()
    if mpc is not None:
        out["mpc"] = lambda *a: peers.mpc_lqr(mpc, *a, backprop=torch.is_grad_enabled())
    pp = peers.pypose_module()
    if pp is not None:
        out["pypose"] = lambda *a: peers.pypose_lqr(pp, *a)
    return out


COLUMNS = [("size", "problem (P1)", "s"), ("fwd", "fwd ms", ".2f"), ("fwd_bwd", "fwd+bwd ms", ".2f"),
           ("us_per_problem", "us/problem", ".1f"), ("bwd_over_fwd", "(fwd+bwd)/fwd", ".2f")]
for _peer in ("mpc", "pypose"):
    COLUMNS += [(f"{_peer}_fwd", f"{_peer} fwd", ".1f"), (f"{_peer}_fwd_bwd", f"{_peer} f+b", ".1f"),
                (f"x_{_peer}_fwd", f"x {_peer} fwd", ".1f"), (f"x_{_peer}_fwd_bwd", f"x {_peer} f+b", ".1f")]


def run(repeat: int = 20, sizes=SIZES, progress: bool = True) -> str:
    acc = check_accuracy()
    lines = ["LQR on P1, float64",
             f"accuracy (B=8, T=30, n=8, m=3): |X - KKT| = {acc['X_err']:.1e}, |U - KKT| = {acc['U_err']:.1e}, "
             f"|implicit grad - unrolled grad| = {acc['grad_err']:.1e}"]
    if peers.mpc_pytorch() is None:
        lines.append("mpc.pytorch not importable: its columns are empty (pip install --no-deps mpc)")
    if peers.pypose_module() is None:
        lines.append("pypose not importable: its columns are empty (pip install --no-deps pypose)")
    lines.append("times are medians in ms of calls made in turn; 'x peer' is the peer's time over ours")
    rows = []
    for size in sizes:
        rows.append(measure(*size, repeat=repeat))
        if progress:
            print(f"  measured {rows[-1]['size']}", flush=True)
    lines.append(table(rows, COLUMNS))
    return "\n".join(lines)
