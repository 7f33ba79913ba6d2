"""Models with closed-form equations and Jacobians."""
from .linear import LinearDynamics

__all__ = ["LinearDynamics"]
