"""Differentiable trajectory optimization for PyTorch.

A :class:`Problem` holds a batch of problems; every solver is a function ``solver(problem, **options)``
returning a :class:`Solution` with one :class:`Status` per problem. Dynamics models live in the sibling
package :mod:`dynamics`. Everything outside this namespace (``trajopt._core``, ``trajopt._solvers``) is
internal.
"""
from ._core.box_kkt import projected_gradient
from ._core.constraint import Constraint
from ._core.costs import Cost, Quadratization, QuadraticCost, SlewRateCost
from ._core.problem import Problem, Solution, SolveError, Status
from ._core.rollout import linearize, rollout
from ._solvers.collocation import Scipy, Theseus, collocation, collocation_defects, multiple_shooting
from ._solvers.constrained import constrained_ilqr
from ._solvers.ilqr import ddp, ilqr
from ._solvers.lqr import lqr, lqr_cost
from ._solvers.mpc import MPC
from ._solvers.multistart import multistart
from ._solvers.sampling import cem, mppi, random_shooting
from ._solvers.shooting import single_shooting
from . import problems  # noqa: F401  (the canonical problems P1-P4: trajopt.problems.pendulum, ...)

__all__ = ["Problem", "Solution", "Status", "SolveError", "lqr", "lqr_cost", "ilqr", "ddp", "MPC", "multistart",
           "mppi", "cem", "random_shooting", "single_shooting", "multiple_shooting", "collocation",
           "collocation_defects", "Scipy", "Theseus", "constrained_ilqr", "Constraint", "projected_gradient", "rollout",
           "linearize", "Cost", "QuadraticCost", "Quadratization", "SlewRateCost"]
