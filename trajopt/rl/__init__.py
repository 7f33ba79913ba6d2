"""Policy learning through the solvers: differentiable environments and Short-Horizon Actor-Critic.

:class:`DiffEnv` makes a batched, differentiable environment of any :class:`dynamics.Dynamics` and a
cost or reward; :class:`SHAC` trains an actor (an MLP, or a policy with a solver inside such as
:class:`MPCPolicy`) by first-order gradients through it. :class:`ModelBasedAgent` runs model-based RL on a real
Gymnasium environment with a pluggable :class:`Planner` such as :class:`PETS`, :class:`MBPO` (stable-baselines3's SAC
on model rollouts) or :class:`ValueGuidedMPPI` (short-horizon MPPI closed by a learned critic, a learned policy's
rollouts among its candidates: TD-MPC's idea).
"""
from .env import DiffEnv, Step
from .policies import GaussianPolicy, LearnedCost, MPCPolicy, ObservationNormalizer, ValueNetwork
from .model_based import train_in_learned_model
from .agent import PETS, ModelBasedAgent, PendulumV1Cost, Planner, RandomPlanner, plot_learning_curves
from .mbpo import MBPO
from .value_mppi import ValueGuidedMPPI
from .shac import SHAC

__all__ = ["DiffEnv", "Step", "SHAC", "GaussianPolicy", "MPCPolicy", "LearnedCost", "ValueNetwork",
           "ObservationNormalizer", "train_in_learned_model", "ModelBasedAgent", "Planner", "RandomPlanner", "PETS",
           "MBPO", "ValueGuidedMPPI", "PendulumV1Cost", "plot_learning_curves"]
