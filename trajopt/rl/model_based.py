"""Policy learning in a learned model (the Dyna / MBPO / Dreamer idea of the source notes).

:func:`train_in_learned_model` alternates: collect transitions on the real system (uniform random controls
first, then the current policy with its exploration noise), fit the learned model to everything collected
so far (:func:`dynamics.learned.fit`), and train :class:`~trajopt.rl.SHAC` through the learned model, whose
:class:`~trajopt.rl.DiffEnv` the SHAC run owns. Only the collection touches the real system; every
gradient of the policy comes from the model.

Differentiable: the policy's gradients flow through the learned model (its weights are not trained by SHAC).
"""
from __future__ import annotations

import math
import time

import torch

from dynamics.learned import Transitions, fit
from .._core.checks import check_bool, check_callable, check_int, check_positive
from ._checks import check_score
from .env import DiffEnv
from .shac import SHAC

__all__ = ["train_in_learned_model"]


@torch.no_grad()
def collect(real: DiffEnv, steps: int, generator: torch.Generator, shac: SHAC | None = None) -> Transitions:
    """``steps`` rounds of all of ``real``'s copies (``steps * local_envs`` transitions): uniform random controls
    in the bounds when ``shac`` is None, else its actor with exploration noise. Episodes run on from call to
    call; ``real`` is reset on its first use."""
    if real.state is None:
        real.reset(generator)
    xs, us, nexts = [], [], []
    B, m = real.local_envs, real.control_dim
    for _ in range(steps):
        x = real.state
        if shac is None:
            u = real.lower + (real.upper - real.lower) * torch.rand(B, m, generator=generator, dtype=x.dtype).to(x)
        else:
            noise = torch.randn(B, m, generator=generator, dtype=x.dtype).to(x)
            u = shac.act(real.observe(x, real.t), noise)
        step = real.step(u, generator)
        xs.append(x)
        us.append(u)
        nexts.append(step.final_state)
    return Transitions(torch.cat(xs), torch.cat(us), torch.cat(nexts))


def train_in_learned_model(shac: SHAC, real: DiffEnv, *, rounds: int = 5, transitions_per_round: int = 4000,
                           epochs_per_round: int = 200, seconds_per_round: float | None = None,
                           fit_options: dict | None = None, evaluate=None, seed: int = 0,
                           progress: bool = True) -> list[dict]:
    """Alternate data collection on ``real``, fitting ``shac.env.dynamics`` (a model of :mod:`dynamics.learned`)
    and SHAC training in it.

    Args:
        shac: a :class:`SHAC` run whose ``env`` steps the learned model (same cost, resets and bounds as ``real``).
        real: the real system as a :class:`DiffEnv` (used without gradients), of ``shac.env``'s state and control
            sizes, dtype and observation size.
        rounds: collect-fit-train rounds (an int >= 1, like the two counts below).
        transitions_per_round: real transitions collected per round (rounded up to whole steps of ``real``'s
            copies); the first round's come from uniform random controls.
        epochs_per_round: SHAC epochs per round (or until ``seconds_per_round`` of training time, a positive number
            or None).
        fit_options: keyword arguments of :func:`dynamics.learned.fit` (``epochs``, ``lr``, ...).
        evaluate: ``evaluate(shac) -> float``, called after each round (e.g. the cost on the real dynamics).
        seed: an int >= 0; seeds the collection's random controls, noise and resets.

    Returns one dict per round: ``round``, ``real_transitions`` (collected so far), ``model_val_loss``,
    ``shac_epochs`` (so far), ``fit_time`` and ``train_time`` (seconds, this round), ``eval_cost`` (NaN when
    ``evaluate`` is None: "not measured").
    """
    where = "train_in_learned_model"
    if not isinstance(shac, SHAC):
        raise TypeError(f"{where}: shac must be a trajopt.rl.SHAC, got {type(shac).__name__}")
    if not isinstance(real, DiffEnv):
        raise TypeError(f"{where}: real must be a trajopt.rl.DiffEnv, got {type(real).__name__}")
    check_int(where, rounds=rounds, transitions_per_round=transitions_per_round, epochs_per_round=epochs_per_round)
    check_int(where, minimum=0, seed=seed)
    if seconds_per_round is not None:
        check_positive(where, allow_inf=True, seconds_per_round=seconds_per_round)
    if fit_options is not None and not isinstance(fit_options, dict):
        raise TypeError(f"{where}: fit_options must be a dict of dynamics.learned.fit's options or None, got "
                        f"{type(fit_options).__name__}")
    check_callable(where, allow_none=True, evaluate=evaluate)
    check_bool(where, progress=progress)
    seed = int(seed)
    imagined = shac.env
    for name in ("state_dim", "control_dim"):
        if getattr(real, name) != getattr(imagined, name):
            raise ValueError(f"{where}: real has {name} = {getattr(real, name)} but shac.env (the learned model) "
                             f"has {getattr(imagined, name)}; the model must be of the real system's states and "
                             "controls")
    obs = real.reset(torch.Generator().manual_seed(seed))    # resolves the bounds; the real run resets again
    if imagined.state is not None and obs.dtype != imagined.state.dtype:
        raise TypeError(f"{where}: real's states are {obs.dtype} but shac.env's are {imagined.state.dtype}; build "
                        "both in one dtype")
    if obs.shape[-1] != shac.normalizer.mean.shape[0]:
        raise ValueError(f"{where}: real's observations have size {obs.shape[-1]} but shac's actor and critic take "
                         f"{shac.normalizer.mean.shape[0]} (same observe and time_feature for both envs)")
    if real.lower is None or real.upper is None:
        raise ValueError(f"{where}: real needs finite u_lower and u_upper (random controls)")
    generator = torch.Generator().manual_seed(seed)
    real.state = None
    model = shac.env.dynamics
    options = dict(epochs=100, progress=progress, seed=seed)
    options.update(fit_options or {})
    data, history = None, []
    steps = math.ceil(transitions_per_round / real.local_envs)
    for r in range(int(rounds)):
        new = collect(real, steps, generator, None if r == 0 else shac)
        data = new if data is None else Transitions(torch.cat([data.x, new.x]), torch.cat([data.u, new.u]),
                                                    torch.cat([data.x_next, new.x_next]))
        tick = time.perf_counter()
        fitted = fit(model, data, **options)
        fit_time = time.perf_counter() - tick
        for p in model.parameters():
            p.requires_grad_(False)
        tick = time.perf_counter()
        shac.train(shac.epoch + int(epochs_per_round), time_limit=seconds_per_round)
        history.append(dict(round=r + 1, real_transitions=len(data), model_val_loss=min(fitted["val_loss"]),
                            shac_epochs=shac.epoch, fit_time=fit_time, train_time=time.perf_counter() - tick,
                            eval_cost=math.nan if evaluate is None else check_score(where, "evaluate",
                                                                                     evaluate(shac))))
        for p in model.parameters():
            p.requires_grad_(True)
    return history
