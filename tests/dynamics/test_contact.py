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


# ------------------------------------------------------------------------------------------------ nothing silent
_d = torch.linspace(-0.1, 0.1, 5, **D64)
_v = torch.zeros(5, 2, **D64)


@pytest.mark.parametrize("call, error, match", [
    # a sharpness or stiffness that is not a finite positive number
    *[(lambda k=k: soft_step(_d, k), ValueError, r"soft_step: k must be a positive finite number")
      for k in (math.nan, math.inf, 0.0, -1.0)],
    *[(lambda k=k: softplus_penetration(_d, k), ValueError, r"softplus_penetration: k must be a positive finite")
      for k in (math.nan, -math.inf, 0.0)],
    *[(lambda k=k: smooth_coulomb_friction(_v, _d, 0.3, k), ValueError, r"smooth_coulomb_friction: k must be a pos")
      for k in (math.nan, 0.0)],
    *[(lambda mu=mu: smooth_coulomb_friction(_v, _d, mu, 10.0), ValueError,
       r"smooth_coulomb_friction: mu must be a finite number >= 0") for mu in (math.nan, -0.1, math.inf)],
    # constants of the wrong type
    (lambda: soft_step(_d, "10"), TypeError, r"soft_step: k must be a positive finite number or a float tensor, got str"),
    (lambda: soft_step(_d, True), TypeError, r"soft_step: k must be .* got bool"),
    (lambda: softplus_penetration(_d, torch.tensor(3)), TypeError, r"softplus_penetration: k must be .* torch\.int64"),
    (lambda: smooth_coulomb_friction(_v, _d, None, 10.0), TypeError, r"smooth_coulomb_friction: mu must be .*NoneType"),
    # tensors of the wrong type, or shape
    (lambda: soft_step([0.1, 0.2], 10.0), TypeError, r"soft_step: d must be a float torch\.Tensor, got list"),
    (lambda: softplus_penetration(torch.arange(3), 10.0), TypeError, r"softplus_penetration: d must be a float tensor"),
    (lambda: soft_step(_d, torch.ones(3, **D64)), ValueError, r"soft_step: k has shape \(3,\), which does not broadcast"),
    (lambda: smooth_coulomb_friction(0.5, _d, 0.3, 10.0), TypeError, r"smooth_coulomb_friction: v must be a float"),
    (lambda: smooth_coulomb_friction(torch.tensor(0.5), _d, 0.3, 10.0), ValueError,
     r"smooth_coulomb_friction: v must have at least 1 dimension"),
    (lambda: smooth_coulomb_friction(_v, 9.81, 0.3, 10.0), TypeError, r"smooth_coulomb_friction: normal_force must be"),
    (lambda: smooth_coulomb_friction(_v, torch.ones(4, **D64), 0.3, 10.0), ValueError,
     r"smooth_coulomb_friction: normal_force has shape \(4,\), which does not broadcast against v's"),
    (lambda: smooth_coulomb_friction(_v, _d, torch.full((5, 2), 0.3, device="meta"), 10.0), ValueError,
     r"smooth_coulomb_friction: mu is on meta but v's \(\.\.\., 1\) is on cpu"),
])
def test_primitives_name_a_bad_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_primitives_take_tensor_constants_and_stay_differentiable_in_them():
    k = torch.tensor(20.0, **D64, requires_grad=True)
    soft_step(_d, k).sum().backward()
    assert torch.isfinite(k.grad)
    per_row = torch.full((5,), 20.0, **D64)                     # one sharpness per entry broadcasts
    torch.testing.assert_close(softplus_penetration(_d, per_row), softplus_penetration(_d, 20.0))
    torch.testing.assert_close(smooth_coulomb_friction(_v + 0.1, _d, torch.tensor(0.3, **D64), per_row.unsqueeze(-1)),
                               smooth_coulomb_friction(_v + 0.1, _d, 0.3, 20.0))


@pytest.mark.parametrize("change, match", [
    (dict(z0=-0.1), "z0 must be a finite number >= 0"),
    (dict(z0=math.nan), "z0 must be a finite number >= 0"),
    (dict(vz0=math.inf), r"vz0 must be a number in \(-inf, inf\)"),
    (dict(vz0=math.nan), r"vz0 must be a number in \(-inf, inf\)"),
    (dict(restitution=1.2), r"restitution must be a number in \[0, 1\]"),
    (dict(restitution=-0.1), r"restitution must be a number in \[0, 1\]"),
    (dict(restitution=math.nan), r"restitution must be a number in \[0, 1\]"),
    (dict(g=0.0), "g must be a positive finite number"),
    (dict(g=math.nan), "g must be a positive finite number"),
    (dict(bounces=-1), "bounces must be an int >= 0"),
    (dict(bounces=2.0), "bounces must be an int >= 0"),
])
def test_event_based_bounce_names_a_bad_argument(change, match):
    with pytest.raises(ValueError, match=f"event_based_bounce: {match}"):
        event_based_bounce(**{**dict(z0=1.0, vz0=0.0, restitution=0.8), **change})
    assert event_based_bounce(z0=0.0, vz0=0.0, restitution=0.0, bounces=0) == []


@pytest.mark.parametrize("finger, box, error, match", [
    ([0.0, 0.0], torch.zeros(2, **D64), TypeError, r"finger must be a float torch\.Tensor \(\.\.\., 2\), got list"),
    (torch.zeros(2, **D64), torch.zeros(2, dtype=torch.int64), TypeError, "box must be a float tensor"),
    (torch.zeros(3, **D64), torch.zeros(2, **D64), ValueError, r"finger must have shape \(\.\.\., 2\), got \(3,\)"),
    (torch.zeros(2, **D64), torch.zeros(2), TypeError, "box has dtype torch.float32 but finger has torch.float64"),
    (torch.zeros(4, 2, **D64), torch.zeros(3, 2, **D64), ValueError, r"finger \(4, 2\) and box \(3, 2\) do not broadc"),
])
def test_pusher_signed_distance_names_a_bad_argument(finger, box, error, match):
    with pytest.raises(error, match=f"PlanarPusher.signed_distance: {match}"):
        PlanarPusher().double().signed_distance(finger, box)


def test_primitives_name_a_tensor_of_another_dtype():
    from dynamics.contact import primitives as P
    with pytest.raises(TypeError, match="smooth_coulomb_friction: normal_force has dtype torch.float64 but v has "
                                        "torch.float32"):
        P.smooth_coulomb_friction(torch.ones(3, 2), torch.ones(3, dtype=torch.float64), 0.5, 10.0)
    with pytest.raises(TypeError, match="soft_step: k has dtype torch.float64 but d has torch.float32"):
        P.soft_step(torch.ones(3), torch.ones(3, dtype=torch.float64))
