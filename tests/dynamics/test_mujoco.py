"""MuJoCoDynamics against Gymnasium's own step, MuJoCo's mjd_transitionFD and central differences."""
import copy
import importlib
import pickle
import sys

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco", reason="MuJoCo models need the optional mujoco package: "
                                               "pip install torch-trajopt[mujoco]")
gymnasium = pytest.importorskip("gymnasium", reason="the references are Gymnasium's MuJoCo environments")

import dynamics  # noqa: E402
import trajopt  # noqa: E402
from dynamics.mujoco import MuJoCoDynamics  # noqa: E402
from trajopt._core.rollout import unchecked_rollout  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# a planar two-link arm on hinges, Euler integrator (which mjd_transitionFD supports), limited controls
ARM = """
<mujoco>
  <option timestep="0.01" integrator="Euler"/>
  <worldbody>
    <body>
      <joint name="shoulder" type="hinge" axis="0 1 0" damping="0.1"/>
      <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.05" mass="1"/>
      <body pos="0 0 -0.5">
        <joint name="elbow" type="hinge" axis="0 1 0" damping="0.1"/>
        <geom type="capsule" fromto="0 0 0 0 0 -0.5" size="0.05" mass="1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor joint="shoulder" ctrlrange="-2 2"/>
    <motor joint="elbow" ctrlrange="-2 2"/>
  </actuator>
</mujoco>
"""


def env_states(env, B, seed=0, spread=0.3):
    """Random states near the environment's initial pose and controls inside its ctrlrange."""
    rng = np.random.default_rng(seed)
    m = env.unwrapped.model
    lo, hi = m.actuator_ctrlrange.T
    x = np.concatenate([env.unwrapped.init_qpos + rng.uniform(-spread, spread, (B, m.nq)),
                        rng.normal(0.0, 0.5, (B, m.nv))], 1)
    return torch.tensor(x), torch.tensor(rng.uniform(lo, hi, (B, m.nu)))


def central_jacobian(model, x, u, h):
    n = model.state_dim
    tau = torch.cat([x, u], -1)
    cols = []
    for i in range(tau.shape[-1]):
        e = torch.zeros_like(tau)
        e[:, i] = h
        cols.append((model(*(tau + e).split([n, model.control_dim], -1))
                     - model(*(tau - e).split([n, model.control_dim], -1))) / (2 * h))
    return torch.stack(cols, -1)


@pytest.mark.parametrize("name", ["InvertedPendulum-v5", "InvertedDoublePendulum-v5"])
def test_forward_equals_gymnasium_step(name):
    env = gymnasium.make(name)
    env.reset(seed=0)
    inner = env.unwrapped
    model = MuJoCoDynamics(env)
    assert model.frame_skip == inner.frame_skip
    x, u = env_states(env, 50)
    nq = inner.model.nq
    ref = []
    for xi, ui in zip(x.numpy(), u.numpy()):
        inner.set_state(xi[:nq], xi[nq:])
        env.step(ui)
        ref.append(np.concatenate([inner.data.qpos, inner.data.qvel]))
    ref = torch.tensor(np.array(ref))
    nxt = model(x, u)
    assert nxt.shape == x.shape and nxt.dtype == torch.float64
    torch.testing.assert_close(nxt, ref, rtol=0, atol=1e-12)
    assert not model.last_unstable.any()
    torch.testing.assert_close(model(x[3], u[3]), ref[3], rtol=0, atol=1e-12)         # unbatched
    env.close()


def test_loading_routes_agree(tmp_path):
    path = tmp_path / "arm.xml"
    path.write_text(ARM)
    x = torch.tensor([[0.3, -0.2, 0.1, 0.4]], dtype=torch.float64)
    u = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    models = [MuJoCoDynamics(ARM, frame_skip=3), MuJoCoDynamics(str(path), frame_skip=3),
              MuJoCoDynamics(path, frame_skip=3), MuJoCoDynamics(mujoco.MjModel.from_xml_string(ARM), frame_skip=3)]
    assert (models[0].state_dim, models[0].control_dim) == (4, 2)
    outs = [mdl(x, u) for mdl in models]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)
    # three substeps of MuJoCo itself
    d = mujoco.MjData(models[0].mjmodel)
    d.qpos[:], d.qvel[:], d.ctrl[:] = x[0, :2].numpy(), x[0, 2:].numpy(), u[0].numpy()
    mujoco.mj_step(models[0].mjmodel, d, 3)
    torch.testing.assert_close(outs[0][0], torch.tensor(np.concatenate([d.qpos, d.qvel])), rtol=0, atol=1e-14)
    assert MuJoCoDynamics("InvertedPendulum-v5").frame_skip == gymnasium.make("InvertedPendulum-v5").unwrapped.frame_skip


def test_bad_arguments_raise_named_errors(tmp_path):
    with pytest.raises(ValueError, match="XML string"):
        MuJoCoDynamics("<mujoco><worldbody><body><joint type='nonsense'/></body></worldbody></mujoco>")
    bad = tmp_path / "broken.xml"
    bad.write_text("<mujoco><nonsense/></mujoco>")
    with pytest.raises(ValueError, match="broken.xml"):
        MuJoCoDynamics(bad)
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        MuJoCoDynamics("NoSuchEnv-v0")
    with pytest.raises(TypeError, match="model"):
        MuJoCoDynamics(3.0)
    with pytest.raises(ValueError, match="frame_skip"):
        MuJoCoDynamics(ARM, frame_skip=0)
    model = MuJoCoDynamics(ARM)
    with pytest.raises(ValueError, match="x has shape"):
        model(torch.zeros(2, 5, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="u has shape"):
        model(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 2))
    strict = MuJoCoDynamics(ARM, on_unstable="raise")
    u = torch.zeros(2, 2, dtype=torch.float64)
    u[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"u contains NaN.*\[1\]"):
        strict(torch.zeros(2, 4, dtype=torch.float64), u)


def test_missing_mujoco_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mujoco", None)           # `import mujoco` now fails
    monkeypatch.delitem(sys.modules, "dynamics.mujoco")
    with pytest.raises(ImportError, match=r"pip install torch-trajopt\[mujoco\]"):
        importlib.import_module("dynamics.mujoco")
    monkeypatch.undo()
    assert importlib.import_module("dynamics.mujoco").MuJoCoDynamics is MuJoCoDynamics
    assert dynamics.MuJoCoDynamics is MuJoCoDynamics


def test_jacobians_agree_with_mjd_transitionFD_and_central_differences():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(0, 0.5, (8, 4)))
    u = torch.tensor(rng.uniform(-1.8, 1.8, (8, 2)))
    for k in (1, 3):
        model = MuJoCoDynamics(ARM, frame_skip=k)
        m, d = model.mjmodel, mujoco.MjData(model.mjmodel)
        A, Bm = model.jacobians(x, u)
        assert A.shape == (8, 4, 4) and Bm.shape == (8, 4, 2)
        for r in range(8):          # MuJoCo's own derivatives, chained over the substeps
            d.qpos[:], d.qvel[:], d.ctrl[:] = x[r, :2].numpy(), x[r, 2:].numpy(), u[r].numpy()
            A_ref, B_ref = np.eye(4), np.zeros((4, 2))
            for _ in range(k):
                Aj, Bj = np.zeros((4, 4)), np.zeros((4, 2))
                mujoco.mjd_transitionFD(m, d, 1e-6, 1, Aj, Bj, None, None)
                A_ref, B_ref = Aj @ A_ref, Aj @ B_ref + Bj
                mujoco.mj_step(m, d)
            np.testing.assert_allclose(A[r].numpy(), A_ref, rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(Bm[r].numpy(), B_ref, rtol=1e-6, atol=1e-8)
        J = central_jacobian(model, x, u, h=1e-4)
        torch.testing.assert_close(torch.cat([A, Bm], -1), J, rtol=1e-5, atol=1e-7)


def test_jacobians_of_an_rk4_gymnasium_task_agree_with_central_differences():
    model = MuJoCoDynamics("InvertedDoublePendulum-v5")                    # RK4, five substeps
    assert model.mjmodel.opt.integrator == mujoco.mjtIntegrator.mjINT_RK4
    x, u = env_states(gymnasium.make("InvertedDoublePendulum-v5"), 6, seed=2)
    A, Bm = model.jacobians(x, u)
    J = central_jacobian(model, x, u, h=1e-4)
    torch.testing.assert_close(torch.cat([A, Bm], -1), J, rtol=1e-5, atol=1e-6)
    # unbatched, float32
    A1, B1 = model.jacobians(x[0].float(), u[0].float())
    assert A1.shape == (6, 6) and B1.shape == (6, 1) and A1.dtype == torch.float32
    torch.testing.assert_close(A1, A[0].float())


def test_control_at_its_limit_takes_a_one_sided_difference():
    model = MuJoCoDynamics(ARM, frame_skip=2)
    x = torch.tensor([[0.1, 0.2, 0.0, 0.0]], dtype=torch.float64)
    at_limit = torch.tensor([[2.0, 0.0]], dtype=torch.float64)                 # upper end of ctrlrange
    beyond = torch.tensor([[3.0, 0.0]], dtype=torch.float64)                   # clamped by MuJoCo
    _, B_at = model.jacobians(x, at_limit)
    _, B_beyond = model.jacobians(x, beyond)
    h = 1e-4
    e = torch.tensor([[h, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(B_at[0, :, 0], ((model(x, at_limit) - model(x, at_limit - e)) / h)[0],
                               rtol=1e-4, atol=1e-8)
    assert B_beyond[0, :, 0].abs().max() == 0 and B_beyond[0, :, 1].abs().max() > 0


def test_rollout_gradient_agrees_with_central_differences():
    model = MuJoCoDynamics("InvertedPendulum-v5")
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([[0.0, 0.1, 0.0, 0.0], [0.2, -0.05, 0.1, 0.3]], dtype=torch.float64)
    U = (0.3 * torch.randn(2, 20, 1, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((trajopt.rollout(model, x0, U)[:, -1] * w).sum(), U)
    h, ref = 1e-5, torch.zeros_like(U)
    with torch.no_grad():
        for t in range(20):
            e = torch.zeros_like(U)
            e[:, t] = h
            ref[:, t, 0] = ((trajopt.rollout(model, x0, U + e)[:, -1] - trajopt.rollout(model, x0, U - e)[:, -1])
                            * w).sum(-1) / (2 * h)
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-8)
    x0g = x0.clone().requires_grad_(True)
    gx, = torch.autograd.grad(trajopt.rollout(model, x0g, U.detach())[:, -1].sum(), x0g)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_vector_hessians_agree_with_second_differences_of_forward():
    model = MuJoCoDynamics(ARM, frame_skip=2)
    x = torch.tensor([[0.4, -0.3, 0.5, 0.2]], dtype=torch.float64)
    u = torch.tensor([[0.5, -0.7]], dtype=torch.float64)
    lam = torch.tensor([[1.0, -0.5, 0.3, 2.0]], dtype=torch.float64)
    hxx, hux, huu = model.vector_hessians(x, u, lam)
    H = torch.cat([torch.cat([hxx, hux.mT], -1), torch.cat([hux, huu], -1)], -2)[0]
    tau, h = torch.cat([x, u], -1)[0], 1e-3

    def F(z):
        return (model(z[:4], z[4:]) * lam[0]).sum()

    ref = torch.zeros(6, 6, dtype=torch.float64)
    eye = torch.eye(6, dtype=torch.float64) * h
    for i in range(6):
        for j in range(6):
            ref[i, j] = (F(tau + eye[i] + eye[j]) - F(tau + eye[i] - eye[j]) - F(tau - eye[i] + eye[j])
                         + F(tau - eye[i] - eye[j])) / (4 * h * h)
    torch.testing.assert_close(H, ref, rtol=1e-4, atol=1e-5)


def test_float32_and_thread_count_and_copies():
    model = MuJoCoDynamics("InvertedDoublePendulum-v5")
    x, u = env_states(gymnasium.make("InvertedDoublePendulum-v5"), 33)
    y = model(x, u)
    y32 = model(x.float(), u.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32, y.float(), rtol=1e-5, atol=1e-5)
    one = MuJoCoDynamics("InvertedDoublePendulum-v5", nthread=1)
    three = MuJoCoDynamics("InvertedDoublePendulum-v5", nthread=3)
    torch.testing.assert_close(one(x, u), y, rtol=0, atol=0)
    torch.testing.assert_close(three(x, u), y, rtol=0, atol=0)
    torch.testing.assert_close(three.jacobians(x, u)[0], one.jacobians(x, u)[0], rtol=0, atol=0)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x, u), y, rtol=0, atol=0)


UNSTABLE = """
<mujoco>
  <option timestep="0.01"/>
  <worldbody>
    <body>
      <joint name="slider" type="slide" axis="1 0 0"/>
      <geom type="sphere" size="0.1" mass="1e-6"/>
    </body>
  </worldbody>
  <actuator><motor joint="slider" gear="1e6"/></actuator>
</mujoco>
"""


def test_diverged_rows_are_flagged_never_silently_reset():
    # with mass 1e-6 and gear 1e6, u = 1e3 accelerates by 1e15: MuJoCo's instability (it would reset that row)
    x = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    u = torch.tensor([[1e-8], [1e3], [float("nan")]], dtype=torch.float64)   # fine, diverges, not finite
    model = MuJoCoDynamics(UNSTABLE, frame_skip=3)
    y = model(x, u)
    assert model.last_unstable.tolist() == [False, True, True]
    assert torch.isfinite(y[0]).all() and y[0, 0] > 0.5 and torch.isnan(y[1:]).all()
    last = MuJoCoDynamics(UNSTABLE, frame_skip=3, on_unstable="last")
    y_last = last(x, u)
    torch.testing.assert_close(y_last[0], y[0])
    torch.testing.assert_close(y_last[1], x[1])           # diverged in the first substep: x is the last finite
    assert torch.isnan(y_last[2]).all()
    assert last.last_unstable.tolist() == [False, True, True]
    A, _ = model.jacobians(x, u)
    assert torch.isfinite(A[0]).all() and torch.isnan(A[1:]).all()
    with pytest.raises(RuntimeError, match=r"diverged.*\[1\]"):
        MuJoCoDynamics(UNSTABLE, frame_skip=3, on_unstable="raise")(x[:2], u[:2])
    # the rollouts solvers check: the diverged row is non-finite from its first step on, the other intact
    U = u[:2].unsqueeze(1).expand(2, 4, 1)
    X = unchecked_rollout(model, x[:2], U)
    assert torch.isfinite(X[0]).all() and torch.isnan(X[1, 1:]).all()
    with pytest.raises(FloatingPointError, match=r"rollout: .*row\(s\) \[1\], first at step t=0"):
        trajopt.rollout(model, x[:2], U)                     # the public rollout never returns NaN


def test_quaternion_joints_step_but_have_no_jacobians():
    xml = """<mujoco><worldbody><body pos="0 0 1"><freejoint name="torso"/><geom size="0.1"/>
             <body pos="0.2 0 0"><joint name="hip" type="hinge"/><geom size="0.05"/></body></body></worldbody>
             <actuator><motor joint="hip"/></actuator></mujoco>"""
    model = MuJoCoDynamics(xml)
    m = model.mjmodel
    x = torch.tensor(np.concatenate([m.qpos0, np.zeros(m.nv)]))[None]
    y = model(x, torch.zeros(1, 1, dtype=torch.float64))
    assert y.shape == (1, m.nq + m.nv) and y[0, 2] < 1.0                        # it falls
    with pytest.raises(NotImplementedError, match="torso"):
        model.jacobians(x, torch.zeros(1, 1, dtype=torch.float64))


def test_ilqr_stabilizes_the_inverted_pendulum():
    model = MuJoCoDynamics("InvertedPendulum-v5")
    D = dict(dtype=torch.float64)
    cost = trajopt.QuadraticCost.from_weights(torch.diag(torch.tensor([1.0, 10.0, 0.1, 0.1], **D)),
                                              0.01 * torch.eye(1, **D), Q_final=100 * torch.eye(4, **D))
    x0 = torch.tensor([[0.0, 0.15, 0.0, 0.0], [0.3, -0.1, 0.2, 0.5]], **D)
    sol = trajopt.ilqr(trajopt.Problem(model, cost, x0, horizon=40), max_iter=50)
    assert (sol.status == trajopt.Status.CONVERGED).all()
    X = trajopt.rollout(model, x0, sol.U)
    assert X[:, -1, 1].abs().max() < 0.05 and X[:, 0, 1].abs().max() >= 0.1         # the pole is upright
