"""Differentiable trajectory optimization for PyTorch.

Solvers are functions that return a :class:`Solution`; dynamics models live in
the sibling package :mod:`dynamics`.
"""
from .costs import Cost, QuadraticCost, Quadratization
from .lqr import lqr, lqr_cost
from .problem import Solution
from .rollout import linearize, rollout

__all__ = ["lqr", "lqr_cost", "rollout", "linearize", "Cost", "QuadraticCost", "Quadratization", "Solution"]
