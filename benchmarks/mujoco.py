"""Throughput of :class:`dynamics.MuJoCoDynamics` at ``B`` rows against MuJoCo called directly.

``forward`` is timed against ``mujoco.rollout`` on the same float64 arrays with the same thread count (the floor:
what the model adds is the torch/numpy conversion and the instability checks) and against a Python loop over the
rows (``mj_setState``, ``mj_step`` ``frame_skip`` times, ``mj_getState``) on one thread. ``jacobians`` is timed
against the same loop computing each row's centred differences by stepping every perturbation (the
algorithm the model batches), and, on models with the Euler integrator (which ``mjd_transitionFD`` accepts), a
loop of ``mjd_transitionFD`` chained over the substeps. Calls are interleaved (:func:`interleaved_ms`), so the
ratios hold on a shared machine. ``python -m benchmarks.mujoco [--threads 2] [--batch 256]``.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.timing import environment, interleaved_ms  # noqa: E402

TASKS = ("HalfCheetah-v5", "Hopper-v5", "InvertedDoublePendulum-v5")


def _points(model, B, seed=0):
    rng = np.random.default_rng(seed)
    m = model.mjmodel
    lo, hi = m.actuator_ctrlrange.T
    x = np.concatenate([m.qpos0 + rng.uniform(-0.1, 0.1, (B, m.nq)), rng.normal(0, 0.3, (B, m.nv))], 1)
    return torch.tensor(x), torch.tensor(rng.uniform(0.9 * lo, 0.9 * hi, (B, m.nu)))


def measure(task: str, B: int = 256, threads: int = 2, repeat: int = 20) -> dict:
    """Milliseconds per call of each contender (``forward`` and ``jacobians`` groups) on ``task``."""
    import mujoco
    from mujoco import rollout as mj_rollout

    from dynamics.mujoco import MuJoCoDynamics

    torch.set_num_threads(threads)
    model = MuJoCoDynamics(task, nthread=threads)
    m, k, n, nu = model.mjmodel, model.frame_skip, model.state_dim, model.control_dim
    x, u = _points(model, B)
    xd, ud = x.numpy(), u.numpy()
    full = int(mujoco.mjtState.mjSTATE_FULLPHYSICS)
    nstate = mujoco.mj_stateSize(m, full)
    state0 = np.zeros((B, nstate))
    state0[:, 1:1 + n] = xd
    control = np.ascontiguousarray(np.broadcast_to(ud[:, None], (B, k, nu)))
    out = np.empty((B, k, nstate))
    pool = mj_rollout.Rollout(nthread=threads if threads > 1 else 0)
    datas = [mujoco.MjData(m) for _ in range(threads)]
    models = [m] * B
    d = mujoco.MjData(m)

    def direct():
        pool.rollout(models, datas, state0, control, skip_checks=True, nstep=k, initial_warmstart=None, state=out,
                     sensordata=None, chunk_size=max(1, B // (4 * threads)))

    def step_row(s, c):
        mujoco.mj_setState(m, d, s, full)
        d.qacc_warmstart[:] = 0.0
        d.ctrl[:] = c
        mujoco.mj_step(m, d, k)
        return d.qpos.copy(), d.qvel.copy()

    def loop():
        for r in range(B):
            step_row(state0[r], ud[r])

    # the Jacobians' perturbed points, as the model batches them
    N, eps = n + nu, model.eps
    tau = np.concatenate([xd, ud], 1)
    E = np.eye(N) * eps
    pts = np.concatenate([tau[:, None], tau[:, None] + E, tau[:, None] - E], 1).reshape(-1, N)
    R = pts.shape[0]
    fd_state0 = np.zeros((R, nstate))
    fd_state0[:, 1:1 + n] = pts[:, :n]
    fd_control = np.ascontiguousarray(np.broadcast_to(pts[:, None, n:], (R, k, nu)))
    fd_out = np.empty((R, k, nstate))
    fd_models = [m] * R

    def direct_fd():
        pool.rollout(fd_models, datas, fd_state0, fd_control, skip_checks=True, nstep=k, initial_warmstart=None,
                     state=fd_out, sensordata=None, chunk_size=max(1, R // (4 * threads)))

    def loop_fd():
        J = np.empty((N, n))
        for r in range(B):
            for i in range(N):
                p = step_row(fd_state0[r * (2 * N + 1) + 1 + i], pts[r * (2 * N + 1) + 1 + i, n:])
                q = step_row(fd_state0[r * (2 * N + 1) + 1 + N + i], pts[r * (2 * N + 1) + 1 + N + i, n:])
                J[i] = (np.concatenate(p) - np.concatenate(q)) / (2 * eps)

    def loop_transition_fd():
        A, Bm = np.empty((n, n)), np.empty((n, nu))
        for r in range(B):
            mujoco.mj_setState(m, d, state0[r], full)
            d.qacc_warmstart[:] = 0.0
            d.ctrl[:] = ud[r]
            At, Bt = np.eye(n), np.zeros((n, nu))
            for j in range(k):
                mujoco.mjd_transitionFD(m, d, eps, 1, A, Bm, None, None)
                At, Bt = A @ At, A @ Bt + Bm
                if j + 1 < k:
                    mujoco.mj_step(m, d)

    with torch.no_grad():
        fwd = interleaved_ms({"model.forward": lambda: model(x, u), "mujoco.rollout": direct,
                              "python loop": loop}, repeat=repeat)
        jac_fns = {"model.jacobians": lambda: model.jacobians(x, u), "mujoco.rollout of the points": direct_fd,
                   "python loop": loop_fd}
        if m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER:
            jac_fns["loop of mjd_transitionFD"] = loop_transition_fd
        jac = interleaved_ms(jac_fns, repeat=max(3, repeat // 4))
    pool.close()
    return {"forward": fwd, "jacobians": jac, "frame_skip": k, "integrator": int(m.opt.integrator)}


def run(repeat: int = 20, B: int = 256, threads: int = 2, tasks=TASKS) -> str:
    """The report: per task, ms per call and the model's ratios (steps/s of the model over the contender's)."""
    lines = [f"MuJoCoDynamics throughput, B = {B}, {threads} threads (ms per call; ratio = contender ms / model ms)"]
    for task in tasks:
        r = measure(task, B=B, threads=threads, repeat=repeat)
        lines.append(f"{task} (frame_skip {r['frame_skip']}, integrator {r['integrator']}):")
        for group, model_key in (("forward", "model.forward"), ("jacobians", "model.jacobians")):
            t = r[group]
            parts = [f"{name} {ms:.2f} ms" + ("" if name == model_key else f" (x{ms / t[model_key]:.2f})")
                     for name, ms in t.items()]
            lines.append(f"  {group}: " + ", ".join(parts))
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mujoco", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(environment())
    print(run(repeat=args.repeat, B=args.batch, threads=args.threads))
