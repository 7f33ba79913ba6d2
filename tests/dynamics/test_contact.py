import math
import sys
from pathlib import Path

import pytest
import torch

import trajopt
from dynamics.contact import (BouncingMass, PlanarPusher, event_based_bounce, smooth_coulomb_friction, soft_step,
                              softplus_penetration)

D64 = dict(dtype=torch.float64)


def test_primitives_tend_to_their_hard_versions():
    d = torch.tensor([-0.3, -0.01, 0.01, 0.3], **D64)
    hard_step, hard_pen = (d > 0).double(), torch.clamp(-d, min=0)
    errs = [((soft_step(d, k) - hard_step).abs().max(), (softplus_penetration(d, k) - hard_pen).abs().max())
            for k in (10.0, 100.0, 1000.0)]
    assert errs[0][0] > errs[1][0] > errs[2][0] and errs[2][0] < 1e-8
    assert errs[0][1] > errs[1][1] > errs[2][1] and errs[2][1] < 1e-7
    assert float(softplus_penetration(torch.zeros((), **D64), 50.0)) == pytest.approx(math.log(2) / 50)
    v = torch.tensor([[0.5, 0.0], [0.0, -0.2], [0.0, 0.0]], **D64)
    f = smooth_coulomb_friction(v, torch.full((3,), 10.0, **D64), 0.3, 1e6)
    torch.testing.assert_close(f, torch.tensor([[-3.0, 0.0], [0.0, 3.0], [0.0, 0.0]], **D64), atol=1e-4, rtol=0)


def bounce_apexes(k, stiffness=1e6, dt=2.5e-4, duration=2.0):
    model = BouncingMass(k=k, stiffness=stiffness, restitution=0.8).discretize(dt)
    x0 = torch.tensor([[0.0, 1.0, 0.0, 0.0]], **D64)
    with torch.no_grad():
        X = trajopt.rollout(model, x0, torch.zeros(1, round(duration / dt), 2, **D64))
    z, vz = X[0, :, 1], X[0, :, 3]
    tops = ((vz[:-1] > 0) & (vz[1:] <= 0) & (z[:-1] > 0.05)).nonzero().flatten()
    return [float(z[i:i + 2].max()) for i in tops[:3]]


@pytest.mark.slow
def test_bounces_approach_the_event_based_model_as_k_grows():
    reference = event_based_bounce(z0=1.0, vz0=0.0, restitution=0.8)
    errors = {k: max(abs(a / r - 1) for a, r in zip(bounce_apexes(k), reference)) for k in (100.0, 1e4)}
    assert len(bounce_apexes(1e4)) == 3
    assert errors[1e4] < 0.01 < errors[100.0]


def test_rollout_gradients_through_a_bounce_match_finite_differences():
    model = BouncingMass(k=50.0, stiffness=1e4, restitution=0.8).discretize(1e-3)
    U = torch.zeros(1, 800, 2, **D64)

    def final(v):
        return trajopt.rollout(model, torch.cat([torch.tensor([0.0, 0.5], **D64), v]).unsqueeze(0), U)[0, -1]
    v = torch.tensor([1.0, 0.5], **D64)
    z = trajopt.rollout(model, torch.tensor([[0.0, 0.5, 1.0, 0.5]], **D64), U)[0, :, 1]
    assert z.min() < 0 < z[-1]                                     # the horizon contains a bounce
    J = torch.autograd.functional.jacobian(final, v)
    eps = 1e-6
    with torch.no_grad():
        J_fd = torch.stack([(final(v + eps * e) - final(v - eps * e)) / (2 * eps) for e in torch.eye(2, **D64)], -1)
    assert ((J - J_fd).abs().max() / J_fd.abs().max()) < 1e-5
    assert torch.isfinite(J).all()


def pushed(k, steps=300):
    model = PlanarPusher(k=k).discretize()
    x0 = torch.tensor([[-0.3, 0.0, 0.0, 0.0, 0.0, 0.0]], **D64)
    with torch.no_grad():
        return model, trajopt.rollout(model, x0, torch.tensor([0.2, 0.0], **D64).expand(1, steps, 2))


def test_pusher_approaches_hard_contact_and_moves_the_box_with_the_finger():
    gaps = {}
    for k in (50.0, 200.0, 1000.0):
        model, X = pushed(k)
        gaps[k] = float(X[0, -1, 2] - X[0, -1, 0])
        if k >= 200:
            assert float(X[0, -1, 4]) == pytest.approx(0.2, abs=1e-6)  # box slides along with the finger
        assert abs(float(X[0, -1, 3])) < 1e-12                          # and straight
    friction = 0.3 * 1.0 * 9.81 * 0.2 / math.sqrt(0.2 ** 2 + 1 / 20.0 ** 2)   # smooth Coulomb at 0.2 m/s
    hard_gap = 0.1 + 0.02 - friction / 1000.0                           # half width + radius - force / stiffness
    errors = [abs(gaps[k] - hard_gap) for k in (50.0, 200.0, 1000.0)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_pusher_box_stays_put_out_of_contact():
    model = PlanarPusher().discretize()
    x0 = torch.tensor([[-0.5, 0.3, 0.0, 0.0, 0.0, 0.0]], **D64)
    with torch.no_grad():
        X = trajopt.rollout(model, x0, torch.tensor([0.0, -0.1], **D64).expand(1, 100, 2))
    assert X[0, :, 2:].abs().max() < 1e-12


def test_pusher_gradients_match_finite_differences():
    model = PlanarPusher(k=100.0).discretize()
    x0 = torch.tensor([[-0.2, 0.03, 0.0, 0.0, 0.0, 0.0]], **D64)

    def box_final(u):
        return trajopt.rollout(model, x0, u.expand(1, 150, 2))[0, -1, 2:4]
    u = torch.tensor([0.3, 0.02], **D64)
    J = torch.autograd.functional.jacobian(box_final, u)
    eps = 1e-6
    with torch.no_grad():
        J_fd = torch.stack([(box_final(u + eps * e) - box_final(u - eps * e)) / (2 * eps) for e in torch.eye(2, **D64)], -1)
    assert ((J - J_fd).abs().max() / J_fd.abs().max()) < 1e-5


def test_bounce_to_target_example_hits_the_target():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from bounce_to_target import optimize
    v0, miss, _ = optimize(guesses=[[2.2, -2.0]], iterations=6)
    assert float(miss.min()) < 1e-6
