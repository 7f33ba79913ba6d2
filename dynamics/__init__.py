"""Models of the world for trajectory optimization: discrete and continuous, analytic and autodiff.

This package knows nothing of solvers; :mod:`trajopt` builds on it.
"""
from . import integrators
from .analytic import LinearDynamics
from .base import ContinuousDynamics, Discretized, Dynamics

__all__ = ["Dynamics", "ContinuousDynamics", "Discretized", "LinearDynamics", "integrators"]
