"""Models with closed-form equations and Jacobians.

Each is a :class:`~dynamics.ContinuousDynamics` whose ``derivative_jacobians``
is written out by hand (tests hold it against ``torch.func``), so its
discretizations have closed-form Jacobians too; ``model.discretize()`` uses the
step and integrator of the canonical problem or Gymnasium environment.
"""
from .acrobot import Acrobot
from .bicycle import KinematicBicycle
from .cartpole import CartPole
from .double_integrator import DoubleIntegrator
from .linear import LinearDynamics
from .pendulum import Pendulum
from .quadrotor import Quadrotor2D

__all__ = ["Acrobot", "CartPole", "DoubleIntegrator", "KinematicBicycle", "LinearDynamics", "Pendulum",
           "Quadrotor2D"]
