"""Fitting learned models to transitions, and measuring their prediction errors."""
from __future__ import annotations

import copy
import math
import numbers

import torch
from tqdm.auto import tqdm

from ..base import Dynamics
from ..validation import check_bool, check_consistent, check_fraction, check_int, check_positive, check_tensor
from .data import Transitions
from .models import ProbabilisticEnsemble


def fit(model, data: Transitions, *, epochs: int = 100, batch_size: int = 256, lr: float = 1e-3,
        weight_decay: float = 0.0, val_fraction: float = 0.1, patience: int = 20, seed: int = 0,
        progress: bool = True) -> dict:
    """Train ``model`` (any of :mod:`dynamics.learned`) on ``data`` with Adam on minibatches.

    A ``val_fraction`` of the data is held out; training stops once the validation loss has not
    improved for ``patience`` epochs, and the best weights are restored. Ensembles train each
    member on its own bootstrap resample of the training set. Normalization statistics are
    fitted on the training set first. The model is moved to the data's dtype and device.

    Returns a history: ``train_loss`` and ``val_loss`` per epoch, ``best_epoch``, ``epochs``.

    Raises a ValueError for data that is not finite or too small (at least 2 transitions: one to train on, one to
    validate) and for options out of range, and a RuntimeError when a training loss turns non-finite (the
    learning rate too high, say) with the model's weights left as they were before the call.
    """
    where = "fit"
    if not (isinstance(model, Dynamics) and callable(getattr(model, "fit_normalization", None))
            and callable(getattr(model, "loss", None))):
        raise TypeError(f"{where}: model must be a learned model of dynamics.learned (a Dynamics with "
                        f"fit_normalization and loss, e.g. MLPDynamics), got {type(model).__name__}; fit a physical "
                        "model's parameters with dynamics.learned.identify")
    check_data(where, data, model)
    check_int(where, epochs=epochs, batch_size=batch_size, patience=patience)
    check_int(where, minimum=0, seed=seed)
    check_bool(where, progress=progress)
    check_positive(where, lr=lr)
    check_fraction(where, val_fraction=val_fraction)
    if not (isinstance(weight_decay, numbers.Real) and not isinstance(weight_decay, bool)
            and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"{where}: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    # data that carries a graph (collected through a differentiable model) is fitted as values
    data = Transitions(data.x.detach(), data.u.detach(), data.x_next.detach())
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(seed)
    model.to(dtype=data.x.dtype, device=data.x.device)
    train, val = data.split(val_fraction, generator=g)
    model.fit_normalization(train)
    if not all(bool(torch.isfinite(b).all()) for b in model.buffers()):
        raise ValueError(f"{where}: data's normalization statistics (means, spreads) overflow the {data.x.dtype} "
                         "range; rescale the states and controls")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    ensemble = isinstance(model, ProbabilisticEnsemble)
    boot = torch.randint(len(train), (model.members, len(train)), generator=g) if ensemble else None
    history = {"train_loss": [], "val_loss": [], "best_epoch": 0}
    initial = copy.deepcopy(model.state_dict())
    best, best_state, waited = float("inf"), initial, 0
    bar = tqdm(range(epochs), desc=f"fit {type(model).__name__}", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train), generator=g)
        total = 0.0
        for start in range(0, len(train), batch_size):
            rows = perm[start:start + batch_size]
            batch = train[boot[:, rows]] if ensemble else train[rows]
            loss = model.loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        with torch.no_grad():
            val_loss = float(model.loss(val))
        if not (math.isfinite(total) and math.isfinite(val_loss)):
            model.load_state_dict(initial)
            raise RuntimeError(f"{where}: the loss became non-finite in epoch {epoch} (train {total / len(train)}, "
                               f"validation {val_loss}); lower lr (now {lr}) or check the data's scale")
        history["train_loss"].append(total / len(train))
        history["val_loss"].append(val_loss)
        bar.set_postfix(train=f"{history['train_loss'][-1]:.4g}", val=f"{val_loss:.4g}")
        if val_loss < best:
            best, best_state, waited, history["best_epoch"] = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
        else:
            waited += 1
            if waited >= patience:
                break
    model.load_state_dict(best_state)
    history["epochs"] = len(history["val_loss"])
    return history


def check_data(where, data, model):
    """``data`` a :class:`Transitions` of at least 2 finite transitions with ``model``'s ``n`` and ``m``."""
    if not isinstance(data, Transitions):
        raise TypeError(f"{where}: data must be a dynamics.learned.Transitions(x, u, x_next), "
                        f"got {type(data).__name__}")
    data.check_model(where, model)
    data.check(where, at_least=2)


@torch.no_grad()
def open_loop_error(model: Dynamics, reference: Dynamics, x0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """RMS error ``(T,)`` over the batch of ``model``'s open-loop rollout against ``reference``'s, from
    ``x0 (B, n)`` under ``U (B, T, m)``; entry ``k-1`` is the ``k``-step error (entry 0: one step).

    Unbatched ``x0 (n,)`` and ``U (T, m)`` are a batch of one (and one of them unbatched is broadcast). Raises a
    TypeError or ValueError naming the argument for models that are not :class:`~dynamics.Dynamics` of the same
    ``n`` and ``m``, and for ``x0`` or ``U`` that are not finite float tensors of those shapes with ``T >= 1``.
    """
    where = "open_loop_error"
    for name, value in (("model", model), ("reference", reference)):
        if not isinstance(value, Dynamics):
            raise TypeError(f"{where}: {name} must be a dynamics.Dynamics, got {type(value).__name__}")
    if (model.state_dim, model.control_dim) != (reference.state_dim, reference.control_dim):
        raise ValueError(f"{where}: reference must have the model's n={model.state_dim} states and "
                         f"m={model.control_dim} controls, got n={reference.state_dim}, m={reference.control_dim}")
    dims = {"n": model.state_dim, "m": model.control_dim}
    check_tensor(where, "x0", x0, ("n",), dims)
    check_tensor(where, "U", U, ("T", "m"), dims)
    if dims["T"] < 1:
        raise ValueError(f"{where}: U must hold at least one control (T >= 1), got shape {tuple(U.shape)}")
    batch = check_consistent(where, {"x0": x0, "U": U}, {"x0": 1, "U": 2})
    batch = 1 if batch is None else batch
    x0, U = x0.expand(batch, dims["n"]), U.expand(batch, dims["T"], dims["m"])
    x, y, errs = x0, x0, []
    for t in range(U.shape[1]):
        x, y = model(x, U[:, t], t), reference(y, U[:, t], t)
        for name, z in (("model", x), ("reference", y)):
            bad = ~torch.isfinite(z).all(-1)
            if bool(bad.any()):         # no NaN error curve: name the model and the rows
                raise FloatingPointError(f"{where}: the {name}'s rollout is not finite at step {t} for row(s) "
                                         f"{bad.nonzero().flatten().tolist()[:10]}")
        errs.append((x - y).square().sum(-1).mean().sqrt())
    return torch.stack(errs)
