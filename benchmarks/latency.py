"""Latency suite: the solvers at batch size one and against the batch size, eager, compiled and parallel in time.

Model-predictive control runs one problem at a time, where eager PyTorch pays its per-operation overhead (several
microseconds each) at every stage of every recursion. Blocks:

1. P1 LQR (T=50, n=8, m=3) against the batch size B: forward and forward+backward, the sequential recursion and
   the time-parallel one (``time_parallel=True``, an associative scan: ``ceil(log2 T)`` dependent levels, ``T log T``
   work), eager; mpc.pytorch's forward where importable.
2. P1 LQR at B=1 against the horizon T: where the parallel recursion's depth pays.
3. P1 LQR at B=1 with ``compile=True`` against eager, side by side, for both recursions; the first call's time
   (tracing and code generation), and a second process's first call, which finds inductor's on-disk cache.
4. MPC control steps at B=1 on the pendulum (horizon 30): one warm-started iLQR iteration, and MPPI with 1000
   samples, eager and with ``compile=True``; one P3 iLQR solve from zero controls and its time per iteration.

Blocks 2-4 (batch size one) run with one intra-op thread. Every time is a median of calls made in turn
(``benchmarks.timing.interleaved_ms``); the ratios are the figures to read on a shared machine. ``--out FOLDER``
also writes ``latency.png`` (blocks 1 and 2).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time

import torch

import trajopt
import trajopt.problems
from benchmarks import peers
from benchmarks.lqr import ARGS, loss_of, p1_inputs
from benchmarks.sampling import pendulum_model_and_cost
from benchmarks.timing import interleaved_ms, table

BATCHES, QUICK_BATCHES = (1, 4, 16, 64, 256, 1024, 4096), (1, 16, 256)
PARALLEL_MAX_B = 256            # the time-parallel recursion's T log T work: beyond this it only loses
HORIZONS, QUICK_HORIZONS = (10, 25, 50, 100, 200, 400), (25, 100)


def _lqr_calls(B, T, n=8, m=3, compile=False, grad=True, parallel=(False, True)) -> dict:
    """``name -> call`` for P1's forward (and forward+backward) with each recursion of ``parallel``."""
    t = p1_inputs(B, T, n, m)
    tg = p1_inputs(B, T, n, m, requires_grad=True)
    calls = {}
    for par in parallel:
        tag = "par" if par else "seq"

        def fwd(par=par):
            trajopt.lqr(*(t[k] for k in ARGS), grad=None, time_parallel=par, compile=compile)

        def fwd_bwd(par=par):
            for v in tg.values():
                v.grad = None
            sol = trajopt.lqr(*(tg[k] for k in ARGS), time_parallel=par, compile=compile)
            loss_of(sol.X, sol.U, sol.cost.sum()).backward()
        calls[f"{tag}_fwd"] = fwd
        if grad:
            calls[f"{tag}_fwd_bwd"] = fwd_bwd
    return calls


def batch_curves(batches, repeat) -> list[dict]:
    mpc = peers.mpc_pytorch()
    rows = []
    for B in batches:
        calls = _lqr_calls(B, 50, parallel=(False, True) if B <= PARALLEL_MAX_B else (False,))
        if mpc is not None:
            t = p1_inputs(B, 50, 8, 3)

            def peer(t=t):
                with torch.no_grad():
                    peers.mpc_lqr(mpc, *(t[k] for k in ARGS), backprop=False)
            calls["mpc_fwd"] = peer
        row = {"B": B, **interleaved_ms(calls, repeat=max(3, repeat if B <= 256 else repeat // 4))}
        if "par_fwd" in row:
            row["par_over_seq"] = row["par_fwd"] / row["seq_fwd"]
        rows.append(row)
        print(f"  B={B}", flush=True)
    return rows


def one_thread(fn):
    """``fn`` run with one intra-op thread (then the suite's count again): at batch size one a second thread only
    adds a wake-up to every operation, more so under ``OMP_WAIT_POLICY=PASSIVE``, and compiled kernels open a
    parallel region each."""
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return run


@one_thread
def horizon_curves(horizons, repeat) -> list[dict]:
    rows = []
    for T in horizons:
        row = {"T": T, **interleaved_ms(_lqr_calls(1, T), repeat=repeat)}
        row["par_over_seq"] = row["par_fwd"] / row["seq_fwd"]
        row["par_over_seq_fb"] = row["par_fwd_bwd"] / row["seq_fwd_bwd"]
        rows.append(row)
        print(f"  T={T}", flush=True)
    return rows


_FIRST_CALL = """
import time, torch, trajopt
from benchmarks.lqr import ARGS, p1_inputs
torch.set_num_threads(1)            # as in this block: inductor's code depends on the thread count
t = p1_inputs(1, 50, 8, 3)
t0 = time.perf_counter()
trajopt.lqr(*(t[k] for k in ARGS), grad=None, time_parallel={par}, compile=True)
print(time.perf_counter() - t0)
"""


@one_thread
def compiled_block(repeat) -> list[dict]:
    """Eager against compiled at B=1, T=50, both recursions; first-call (compile) times in this process and in a
    fresh one that finds the on-disk cache."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="latency-inductor-"))    # cold
    rows = []
    for par in (False, True):
        tag = "par" if par else "seq"
        first = {}
        for name, call in _lqr_calls(1, 50, compile=True, parallel=(par,)).items():
            t0 = time.perf_counter()
            call()
            first[name] = time.perf_counter() - t0
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL.format(par=par)], capture_output=True, text=True,
                             env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        second = float(out.stdout.split()[-1]) if out.returncode == 0 else float("nan")
        eager = {f"eager_{k}": v for k, v in _lqr_calls(1, 50, parallel=(par,)).items()}
        comp = {f"compiled_{k}": v for k, v in _lqr_calls(1, 50, compile=True, parallel=(par,)).items()}
        ms = interleaved_ms({**eager, **comp}, repeat=repeat)
        rows.append({"recursion": "time-parallel" if par else "sequential",
                     "eager_fwd": ms[f"eager_{tag}_fwd"], "compiled_fwd": ms[f"compiled_{tag}_fwd"],
                     "eager_fb": ms[f"eager_{tag}_fwd_bwd"], "compiled_fb": ms[f"compiled_{tag}_fwd_bwd"],
                     "first_fwd_s": first[f"{tag}_fwd"], "first_fb_s": first[f"{tag}_fwd_bwd"],
                     "second_process_s": second})
        rows[-1]["x_fwd"] = rows[-1]["eager_fwd"] / rows[-1]["compiled_fwd"]
        rows[-1]["x_fb"] = rows[-1]["eager_fb"] / rows[-1]["compiled_fb"]
        print(f"  compiled {tag}", flush=True)
    return rows


@one_thread
def control_steps(repeat, quick) -> list[str]:
    """MPC steps at B=1 on the pendulum (eager; MPPI also compiled) and a P3 iLQR solve's time per iteration."""
    lines = []
    bounds = dict(u_lower=-2.0, u_upper=2.0)
    model, cost = pendulum_model_and_cost(torch.float64)     # the sampling suite's pendulum (P2's model and cost)
    ilqr_mpc = trajopt.MPC(model, cost, 30, **bounds, solver=trajopt.ilqr, max_iter=1)
    model32, cost32 = pendulum_model_and_cost()              # in the sampling suite's dtype, float32
    mppi_mpc = {c: trajopt.MPC(model32, cost32, 30, **bounds, solver=trajopt.mppi, samples=1000, rollout_plan=False,
                               generator=torch.Generator().manual_seed(0), compile=c) for c in (False, True)}
    hanging = {dtype: torch.tensor([[math.pi, 0.0]], dtype=dtype) for dtype in (torch.float32, torch.float64)}
    t0 = time.perf_counter()
    with torch.no_grad():
        mppi_mpc[True](hanging[torch.float32])
    first = time.perf_counter() - t0

    def step(mpc, dtype):
        with torch.no_grad():
            mpc(hanging[dtype])
    ms = interleaved_ms({"ilqr": lambda: step(ilqr_mpc, torch.float64),
                         "mppi": lambda: step(mppi_mpc[False], torch.float32),
                         "mppi_compiled": lambda: step(mppi_mpc[True], torch.float32)}, repeat=repeat)
    lines.append(f"MPC step, pendulum, B=1, horizon 30, from hanging: iLQR (1 warm-started iteration, float64) "
                 f"{ms['ilqr']:.2f} ms; MPPI (1000 samples, float32) eager {ms['mppi']:.2f} ms, compile=True "
                 f"{ms['mppi_compiled']:.2f} ms (its first call, compiling: {first:.0f} s)")
    if not quick:
        p3 = trajopt.problems.cartpole(B=1)
        t0 = time.perf_counter()
        sol = trajopt.ilqr(p3)
        seconds = time.perf_counter() - t0
        lines.append(f"P3 iLQR, B=1, from zero controls: cost {float(sol.cost[0]):.2f}, "
                     f"{trajopt.Status(int(sol.status[0])).name} in {int(sol.iterations[0])} iterations, "
                     f"{seconds * 1e3:.0f} ms ({seconds * 1e3 / max(1, int(sol.iterations[0])):.1f} ms per iteration)")
    return lines


def plot(batch_rows, horizon_rows, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("seq_fwd", "sequential, forward"), ("seq_fwd_bwd", "sequential, forward+backward"),
                       ("par_fwd", "time-parallel, forward"), ("par_fwd_bwd", "time-parallel, forward+backward"),
                       ("mpc_fwd", "mpc.pytorch, forward")):
        pts = [(r["B"], r[key]) for r in batch_rows if r.get(key) is not None]
        if pts:
            a.plot(*zip(*pts), marker="o", label=label)
        pts = [(r["T"], r[key]) for r in horizon_rows if r.get(key) is not None]
        if pts:
            b.plot(*zip(*pts), marker="o", label=label)
    a.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="ms",
          title=f"P1 LQR (T=50, n=8, m=3), eager, {torch.get_num_threads()} threads")
    b.set(xscale="log", yscale="log", xlabel="horizon T", ylabel="ms", title="P1 LQR at B=1, eager, one thread")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(repeat: int = 20, quick: bool = False, out: str | None = None) -> str:
    lines = [f"Latency, float64, {torch.get_num_threads()} threads; medians in ms of calls made in turn"]
    if peers.mpc_pytorch() is None:
        lines.append("mpc.pytorch not importable: its column is empty (pip install --no-deps mpc)")
    batch_rows = batch_curves(QUICK_BATCHES if quick else BATCHES, repeat)
    lines += ["", "1. P1 LQR (T=50, n=8, m=3) against B, eager (time-parallel up to B=256)",
              table(batch_rows, [("B", "B", "d"), ("seq_fwd", "seq fwd", ".2f"), ("seq_fwd_bwd", "seq f+b", ".2f"),
                                 ("par_fwd", "par fwd", ".2f"), ("par_fwd_bwd", "par f+b", ".2f"),
                                 ("par_over_seq", "par/seq fwd", ".2f"), ("mpc_fwd", "mpc.pytorch fwd", ".2f")])]
    horizon_rows = horizon_curves(QUICK_HORIZONS if quick else HORIZONS, repeat)
    lines += ["", "2. P1 LQR at B=1 against T, eager, one thread (blocks 2-4)",
              table(horizon_rows, [("T", "T", "d"), ("seq_fwd", "seq fwd", ".2f"), ("par_fwd", "par fwd", ".2f"),
                                   ("par_over_seq", "par/seq fwd", ".2f"), ("seq_fwd_bwd", "seq f+b", ".2f"),
                                   ("par_fwd_bwd", "par f+b", ".2f"), ("par_over_seq_fb", "par/seq f+b", ".2f")])]
    if out:
        os.makedirs(out, exist_ok=True)
        plot(batch_rows, horizon_rows, os.path.join(out, "latency.png"))
        lines.append(f"wrote {os.path.join(out, 'latency.png')}")
    if not quick:
        lines += ["", "3. P1 LQR at B=1, T=50: compile=True against eager (first calls in s: tracing and code "
                  "generation; 'second process': a fresh process's first forward, with the on-disk cache)",
                  table(compiled_block(repeat),
                        [("recursion", "recursion", "s"), ("eager_fwd", "eager fwd", ".2f"),
                         ("compiled_fwd", "compiled fwd", ".3f"), ("x_fwd", "x fwd", ".1f"),
                         ("eager_fb", "eager f+b", ".2f"), ("compiled_fb", "compiled f+b", ".3f"),
                         ("x_fb", "x f+b", ".1f"), ("first_fwd_s", "first fwd s", ".0f"),
                         ("first_fb_s", "first f+b s", ".0f"), ("second_process_s", "2nd process s", ".0f")])]
    print("\n".join(lines), flush=True)      # the blocks so far, should a later one fail
    return "\n".join(["", "4. Control steps at B=1"] + control_steps(repeat, quick))
