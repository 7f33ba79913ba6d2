"""Models of the world for trajectory optimization: discrete and continuous, analytic and autodiff.

This package knows nothing of solvers; :mod:`trajopt` builds on it.
"""
from . import integrators
from .analytic import Acrobot, CartPole, DoubleIntegrator, KinematicBicycle, LinearDynamics, Pendulum, Quadrotor2D
from .base import ContinuousDynamics, Discretized, Dynamics, stack_columns

__all__ = ["Dynamics", "ContinuousDynamics", "Discretized", "integrators", "LinearDynamics", "Pendulum", "CartPole",
           "KinematicBicycle", "DoubleIntegrator", "Quadrotor2D", "Acrobot", "stack_columns"]
