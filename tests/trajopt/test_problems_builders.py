"""The canonical problems' builders (trajopt.problems) name a bad argument."""
import math

import pytest
import torch

from trajopt import problems


@pytest.mark.parametrize("call, error, match", [
    # batch sizes, horizons and dimensions: ints >= 1
    *[(lambda b=b, f=f: f(B=b), ValueError, rf"{f.__name__}: B must be an int >= 1, got {b!r}")
      for f in (problems.pendulum, problems.cartpole, problems.bicycle, problems.random_lqr) for b in (0, -2, 2.0)],
    *[(lambda name=name: problems.random_lqr(**{name: 0}), ValueError, f"random_lqr: {name} must be an int >= 1")
      for name in ("T", "n", "m")],
    (lambda: problems.random_lqr(T="50"), ValueError, "random_lqr: T must be an int >= 1, got '50'"),
    (lambda: problems.pumping_guesses(T=0), ValueError, "pumping_guesses: T must be an int >= 1, got 0"),
    (lambda: problems.pumping_guesses(T=None), ValueError, "pumping_guesses: T must be an int >= 1, got None"),
    # seeds: ints >= 0
    *[(lambda s=s, f=f: f(seed=s), ValueError, rf"{f.__name__}: seed must be an int >= 0, got {s!r}")
      for f in (problems.pendulum, problems.cartpole, problems.random_lqr) for s in (-1, 0.5, None)],
    # dtypes
    *[(lambda f=f: f(dtype=torch.int64), TypeError, f"{f.__name__}: dtype must be torch.float32 or torch.float64")
      for f in (problems.pendulum, problems.cartpole, problems.bicycle, problems.random_lqr)],
    (lambda: problems.pendulum(dtype="float64"), TypeError, "pendulum: dtype must be torch.float32 or torch.float64"),
    (lambda: problems.pumping_guesses(10, dtype=torch.float16), TypeError, "pumping_guesses: dtype must be"),
    # pumping_guesses' numbers and sequences
    *[(lambda v=v: problems.pumping_guesses(10, dt=v), ValueError, "pumping_guesses: dt must be a positive finite")
      for v in (0.0, -0.05, math.nan, math.inf)],
    (lambda: problems.pumping_guesses(10, u_max=math.nan), ValueError, "pumping_guesses: u_max must be a positive"),
    (lambda: problems.pumping_guesses(10, periods=1.2), TypeError,
     "pumping_guesses: periods must be a list or tuple of numbers > 0, got float"),
    (lambda: problems.pumping_guesses(10, cycles="12"), TypeError, "pumping_guesses: cycles must be a list or tuple"),
    (lambda: problems.pumping_guesses(10, periods=(1.2, 0.0)), ValueError,
     r"pumping_guesses: periods\[1\] must be a positive finite number, got 0.0"),
    (lambda: problems.pumping_guesses(10, cycles=(1, math.nan)), ValueError, r"pumping_guesses: cycles\[1\] must be"),
])
def test_builders_name_a_bad_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_builders_accept_the_edges_of_their_ranges():
    assert problems.pendulum(B=1, seed=0, dtype=torch.float32).x0.shape == (1, 2)
    assert problems.cartpole(B=1).x0.shape == (1, 4)
    assert problems.random_lqr(B=1, T=1, n=1, m=1)["F"].shape == (1, 1, 1, 2)
    assert problems.pumping_guesses(1, periods=(), cycles=()).shape == (1, 1, 1)
