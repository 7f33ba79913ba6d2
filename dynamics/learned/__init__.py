"""Learned dynamics models, their datasets and fitting, and system identification."""
from .data import Transitions, collect_from_env, collect_from_model
from .fit import fit, open_loop_error
from .models import MLPDynamics, ProbabilisticEnsemble, ResidualDynamics
from .sysid import identify, identify_theseus, residuals

__all__ = ["MLPDynamics", "ProbabilisticEnsemble", "ResidualDynamics", "Transitions", "collect_from_model",
           "collect_from_env", "fit", "open_loop_error", "identify", "identify_theseus", "residuals"]
