# Copy of ../shared/problems.py, the canonical benchmark problems (tests/test_problems_copy.py keeps it identical).
"""Canonical benchmark problems, in plain NumPy.

The library's benchmarks and tests, and every comparison with another library,
use these definitions. A port of a model to another framework is first checked
against the NumPy step functions here (a 50-step rollout under random controls
must match to 1e-10 in float64).

Cost of P2, P3 and P4, used for every figure quoted about them:
    J = sum_{t=0}^{T-1} (x_t - target)' Q (x_t - target) + u_t' R u_t
(no 1/2, angle not wrapped, no terminal term; `trajectory_cost` below computes it
from controls alone, by rolling out with the NumPy step).

Conventions (mpc.pytorch's): tau_t = [x_t; u_t]; dynamics x_{t+1} = F_t tau_t + f_t;
cost sum_t 1/2 tau_t^T C_t tau_t + c_t^T tau_t, t = 0..T-1 (the last step's u is free
but costed). Batch first: arrays are [B, T, ...].
"""
import numpy as np

# ---------------------------------------------------------------- P1: batched LTV LQR
def lqr_problem(B=64, T=50, n=8, m=3, seed=0):
    """Random, well-conditioned time-varying LQR. Returns dict of float64 arrays."""
    rng = np.random.default_rng(seed)
    A = np.eye(n) + 0.1 * rng.standard_normal((B, T, n, n)) / np.sqrt(n)
    Bm = 0.5 * rng.standard_normal((B, T, n, m)) / np.sqrt(n)
    F = np.concatenate([A, Bm], axis=-1)                    # [B,T,n,n+m]
    f = 0.01 * rng.standard_normal((B, T, n))
    L = rng.standard_normal((B, T, n + m, n + m)) / np.sqrt(n + m)
    C = L @ np.swapaxes(L, -1, -2) + 0.1 * np.eye(n + m)     # SPD
    c = rng.standard_normal((B, T, n + m))
    x0 = rng.standard_normal((B, n))
    return dict(F=F, f=f, C=C, c=c, x0=x0)

def lqr_reference(p):
    """Exact solution by one dense KKT solve per batch element (slow, for checking)."""
    F, f, C, c, x0 = p["F"], p["f"], p["C"], p["c"], p["x0"]
    Bn, T, n, nm = F.shape
    m = nm - n
    N = T * nm                                                # decision vars tau_0..tau_{T-1}
    out_x, out_u = np.zeros((Bn, T, n)), np.zeros((Bn, T, m))
    for b in range(Bn):
        H = np.zeros((N, N)); g = np.zeros(N)
        for t in range(T):
            s = slice(t * nm, (t + 1) * nm)
            H[s, s] = C[b, t]; g[s] = c[b, t]
        rows = []; rhs = []
        E0 = np.zeros((n, N)); E0[:, :n] = np.eye(n); rows.append(E0); rhs.append(x0[b])
        for t in range(T - 1):
            E = np.zeros((n, N))
            E[:, t * nm:(t + 1) * nm] = F[b, t]
            E[:, (t + 1) * nm:(t + 1) * nm + n] -= np.eye(n)
            rows.append(E); rhs.append(-f[b, t])
        A = np.vstack(rows); r = np.concatenate(rhs)
        K = np.block([[H, A.T], [A, np.zeros((A.shape[0], A.shape[0]))]])
        sol = np.linalg.solve(K, np.concatenate([-g, r]))
        tau = sol[:N].reshape(T, nm)
        out_x[b], out_u[b] = tau[:, :n], tau[:, n:]
    return out_x, out_u

# ---------------------------------------------------------------- P2: pendulum swing-up
# Gymnasium Pendulum-v1 physics, semi-implicit Euler, theta = 0 upright, no speed clip.
PENDULUM = dict(g=10.0, m=1.0, l=1.0, dt=0.05, u_max=2.0, T=100,
                Q=np.diag([1.0, 0.1]), R=0.001)  # cost: theta^2 + 0.1 thdot^2 + 0.001 u^2
def pendulum_step(x, u, g=10.0, m=1.0, l=1.0, dt=0.05):
    th, thd = x[..., 0], x[..., 1]
    thd_new = thd + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l ** 2) * u[..., 0]) * dt
    th_new = th + thd_new * dt
    return np.stack([th_new, thd_new], -1)
def pendulum_x0(B, seed=0):
    """B starts: first one hanging down at rest, the rest gym-like random."""
    rng = np.random.default_rng(seed)
    x0 = np.stack([rng.uniform(-np.pi, np.pi, B), rng.uniform(-1, 1, B)], -1)
    x0[0] = [np.pi, 0.0]
    return x0

# ---------------------------------------------------------------- P3: cart-pole swing-up
# Classic cart-pole (Barto; Gymnasium CartPole masses), continuous force, explicit Euler.
# x = (p, pdot, th, thd), th = 0 upright, start hanging (th = pi). u in [-10, 10] N.
CARTPOLE = dict(mc=1.0, mp=0.1, l=0.5, g=9.8, dt=0.05, u_max=10.0, T=60,
                Q=np.diag([1.0, 0.1, 5.0, 0.1]), R=0.01)   # quadratic to origin
def cartpole_step(x, u, mc=1.0, mp=0.1, l=0.5, g=9.8, dt=0.05):
    p, pd, th, thd = (x[..., i] for i in range(4))
    F = u[..., 0]
    s, c = np.sin(th), np.cos(th)
    tmp = (F + mp * l * thd ** 2 * s) / (mc + mp)
    thdd = (g * s - c * tmp) / (l * (4.0 / 3.0 - mp * c ** 2 / (mc + mp)))
    pdd = tmp - mp * l * thdd * c / (mc + mp)
    return np.stack([p + dt * pd, pd + dt * pdd, th + dt * thd, thd + dt * thdd], -1)
def cartpole_x0(B, seed=0):
    rng = np.random.default_rng(seed)
    x0 = np.zeros((B, 4)); x0[:, 2] = np.pi
    x0[1:] += 0.05 * rng.standard_normal((B - 1, 4)) if B > 1 else 0
    return x0

# ---------------------------------------------------------------- P4: kinematic bicycle parking
# Seed 004's kinematic bicycle, explicit Euler. x = (px, py, psi, delta), u = (v, delta_rate).
BICYCLE = dict(L=2.5, lr=1.25, dt=0.1, T=50, u_max=np.array([5.0, 0.5]),
               target=np.array([10.0, 5.0, 0.0, 0.0]),
               Q=np.diag([1.0, 1.0, 1.0, 0.1]), R=np.diag([0.01, 0.1]))
def bicycle_step(x, u, L=2.5, lr=1.25, dt=0.1):
    px, py, psi, d = (x[..., i] for i in range(4))
    v, dr = u[..., 0], u[..., 1]
    beta = np.arctan(lr * np.tan(d) / L)
    return np.stack([px + dt * v * np.cos(psi + beta), py + dt * v * np.sin(psi + beta),
                     psi + dt * v * np.tan(d) * np.cos(beta) / L, d + dt * dr], -1)


def trajectory_cost(step, x0, U, Q, R, target=None):
    """J of the docstring for controls U (T, m) from x0 (n,), rolled out with `step`."""
    Q = np.asarray(Q); R = np.atleast_2d(R); x = np.asarray(x0, float)
    tgt = np.zeros_like(x) if target is None else np.asarray(target)
    J = 0.0
    for u in np.asarray(U, float):
        e = x - tgt
        J += e @ Q @ e + u @ R @ u
        x = step(x, u)
    return float(J)
