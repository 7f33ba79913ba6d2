"""iLQR MPC on Gymnasium's InvertedDoublePendulum-v5: the real environment's own step, planning on its MuJoCo
model with the negative reward (plus the planning terms of benchmarks/mujoco_mpc.py) as the cost.

One episode (seed 0) under :class:`trajopt.MPC` (box-constrained iLQR, horizon 20 steps = 1 s, warm-started,
3 iterations per control step); the figure shows the link angles, the cart position, the tip height (the
episode ends when it drops to 1) and the control against time, with the episode's return. Run
``python examples/mujoco_mpc.py [--out FOLDER] [--steps N] [--quick]`` to save ``FOLDER/mujoco_mpc.png``
(default ./figures, 100 steps; the benchmark runs 1000).
"""
import time

import numpy as np
import torch
from _plot import arguments, output, save, subplots

import trajopt
from trajopt.rl.mujoco_tasks import mujoco_task

PLANNING = dict(exact=False, horizon=20, barrier=100.0, cart_weight=1.0, angle_weight=10.0)


def main(argv=None):
    args = arguments(__doc__, argv, lambda p: p.add_argument("--steps", type=int, default=100,
                                                              help="control steps of the episode (default 100)"))
    steps = 15 if args.quick else args.steps
    task = mujoco_task("InvertedDoublePendulum-v5", **PLANNING)
    mpc = trajopt.MPC(task.model, task.cost, task.horizon, u_lower=task.u_lower, u_upper=task.u_upper, max_iter=3,
                      first_max_iter=30, grad=None)
    env = task.make_env()
    env.reset(seed=0)
    states, controls, tips, total = [task.state(env)], [], [], 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        u, _ = mpc(states[-1].unsqueeze(0))
        _, reward, terminated, _, _ = env.step(u[0].numpy())
        total += reward
        controls.append(float(u[0, 0]))
        tips.append(float(env.unwrapped.data.site_xpos[0, 2]))
        states.append(task.state(env))
        if terminated:
            break
    seconds = time.perf_counter() - t0
    env.close()
    S = torch.stack(states).numpy()
    dt = task.cost.dt
    t = dt * np.arange(len(S))
    fig, axes = subplots(4, 1, figsize=(7, 7), sharex=True)
    axes[0].plot(t, S[:, 1], label="link 1")
    axes[0].plot(t, S[:, 1] + S[:, 2], label="link 2 (absolute)")
    axes[0].set_ylabel("angle [rad]")
    axes[0].legend(loc="upper right")
    axes[1].plot(t, S[:, 0])
    axes[1].set_ylabel("cart [m]")
    axes[2].plot(t[1:], tips)
    axes[2].axhline(1.0, color="k", ls=":", label="termination")
    axes[2].set_ylabel("tip height [m]")
    axes[2].legend(loc="lower right")
    axes[3].step(t[:-1], controls, where="post")
    axes[3].set_ylabel("control")
    axes[3].set_xlabel("time [s]")
    axes[0].set_title(f"InvertedDoublePendulum-v5, iLQR MPC: return {total:.1f} over {len(controls)} steps "
                      f"({1e3 * seconds / len(controls):.0f} ms per control step)")
    path = output(args.out, "mujoco_mpc.png")
    save(fig, path)
    print(f"return {total:.1f} over {len(controls)} steps; {1e3 * seconds / len(controls):.0f} ms per control step; "
          f"figure: {path}")


if __name__ == "__main__":
    main()
