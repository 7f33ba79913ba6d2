"""Differentiable trajectory optimization for PyTorch.

Solvers are functions that return a :class:`Solution`; dynamics models live in
the sibling package :mod:`dynamics`.
"""
from .collocation import collocation, collocation_defects, multiple_shooting
from .constrained import Constraint, constrained_ilqr
from .costs import Cost, QuadraticCost, Quadratization
from .ilqr import ddp, ilqr, projected_gradient
from .lqr import lqr, lqr_cost
from .mpc import MPC
from .multistart import multistart
from .problem import Solution
from .rollout import linearize, rollout
from .sampling import cem, mppi, random_shooting
from .shooting import single_shooting

__all__ = ["lqr", "lqr_cost", "ilqr", "ddp", "MPC", "multistart", "mppi", "cem", "random_shooting", "single_shooting", "multiple_shooting", "collocation", "collocation_defects", "constrained_ilqr", "Constraint", "projected_gradient", "rollout", "linearize", "Cost", "QuadraticCost", "Quadratization", "Solution"]
