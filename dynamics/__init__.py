"""Models of the world for trajectory optimization: discrete and continuous, analytic and autodiff.

This package knows nothing of solvers; :mod:`trajopt` builds on it.
"""
from . import integrators
from .analytic import Acrobot, CartPole, DoubleIntegrator, KinematicBicycle, LinearDynamics, Pendulum, Quadrotor2D
from .base import ContinuousDynamics, Discretized, Dynamics, stack_columns

__all__ = ["Dynamics", "ContinuousDynamics", "Discretized", "integrators", "LinearDynamics", "Pendulum", "CartPole",
           "KinematicBicycle", "DoubleIntegrator", "Quadrotor2D", "Acrobot", "stack_columns"]


def __getattr__(name):
    # MuJoCoDynamics needs the optional mujoco package: imported on first use (and left out of __all__), so that
    # `import dynamics` works without it; then it raises an ImportError naming `pip install torch-trajopt[mujoco]`
    if name == "MuJoCoDynamics":
        from .mujoco import MuJoCoDynamics
        return MuJoCoDynamics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
