"""System identification: fit a model's physical parameters to transitions by least squares on the
one-step prediction residuals, by gradient (L-BFGS or Adam) or by theseus-ai's Levenberg-Marquardt.

Both routes minimize the same objective: the mean over transitions of the squared residual
``model(x, u) - x_next``, each state coordinate scaled by the spread of its observed change
(so that angles and rates weigh alike).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch.func import functional_call

from ..base import Dynamics
from ..validation import check_int, check_positive
from .data import Transitions
from .fit import check_data


def _select(model: Dynamics, names, where="identify"):
    if isinstance(names, str):
        raise TypeError(f"{where}: names must be a list of parameter names, got the str {names!r}; "
                        f"write [{names!r}]")
    try:
        names = list(names)
    except TypeError:
        raise TypeError(f"{where}: names must be a list of parameter names, got {type(names).__name__}") from None
    if not names:
        raise ValueError(f"{where}: names is empty; give the parameters to fit, some of "
                         f"{sorted(dict(model.named_parameters()))}")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    unknown = [n for n in names if n not in params]
    held = [n for n in unknown if n in buffers or _attribute(model, n)]
    if held:
        raise ValueError(f"{where}: names {held} {'is' if len(held) == 1 else 'are'} not learnable parameter(s) of the "
                         f"model (a buffer or a fixed attribute, e.g. the time step); the model's parameters are "
                         f"{sorted(params)}")
    if unknown:
        raise ValueError(f"{where}: unknown parameter(s) {unknown}; the model has {sorted(params)}")
    return [params[n] for n in names]


def _attribute(model, name):
    try:
        for part in name.split("."):
            model = getattr(model, part)
        return True
    except AttributeError:
        return False


def residuals(model: Dynamics, data: Transitions, values: dict) -> torch.Tensor:
    """Scaled one-step residuals ``(N, n)`` of ``model`` with the parameters in ``values`` substituted.

    ``values`` maps names of the model's parameters or buffers (as in ``model.named_parameters()``) to tensors of
    their shapes (``{}``: the model as it is). Raises a TypeError or ValueError naming the argument for a model that
    is not a :class:`~dynamics.Dynamics`, data as :func:`~dynamics.learned.fit` takes it, and any other ``values``.
    """
    where = "residuals"
    if not isinstance(model, Dynamics):
        raise TypeError(f"{where}: model must be a dynamics.Dynamics, got {type(model).__name__}")
    check_data(where, data, model)
    if not isinstance(values, Mapping):
        raise TypeError(f"{where}: values must be a dict {{parameter name: tensor}}, got {type(values).__name__}")
    params = dict(model.named_parameters())
    known = {**dict(model.named_buffers()), **params}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise ValueError(f"{where}: values has unknown name(s) {unknown}; the model's parameters are {sorted(params)}")
    for k, v in values.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{where}: values[{k!r}] must be a torch.Tensor, got {type(v).__name__}")
        if v.shape != known[k].shape:
            raise ValueError(f"{where}: values[{k!r}] has shape {tuple(v.shape)}; expected {tuple(known[k].shape)}, "
                             "that of the model's tensor")
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{where}: values[{k!r}] contains NaN or Inf")
    out = _residuals(model, data, values)
    bad = ~torch.isfinite(out.detach()).all(-1)
    if bool(bad.any()):     # e.g. a mass of zero: the model is undefined with these values
        raise FloatingPointError(f"{where}: the model with these values gives non-finite residuals on transition(s) "
                                 f"{bad.nonzero().flatten().tolist()[:10]}; values outside the model's valid range?")
    return out


def _residuals(model, data, values):
    """:func:`residuals` without the checks (inside the fits' objectives)."""
    scale = (data.x_next - data.x).std(0).clamp_min(1e-12)
    return (functional_call(model, values, (data.x, data.u)) - data.x_next) / scale


def identify(model: Dynamics, data: Transitions, names, *, method: str = "lbfgs", steps: int = 200,
             lr: float = 1e-2, tolerance: float = 1e-12) -> dict:
    """Fit the parameters ``names`` (as in ``model.named_parameters()``) to ``data``, in place.

    ``method``: ``"lbfgs"`` (strong-Wolfe L-BFGS, the default), ``"adam"`` (``steps`` of Adam at ``lr``)
    or ``"levenberg_marquardt"`` (theseus-ai; see :func:`identify_theseus`). The other
    parameters are held fixed. Returns ``{name: value}`` of the fitted parameters.
    """
    where = "identify"
    if not isinstance(model, Dynamics):
        raise TypeError(f"{where}: model must be a dynamics.Dynamics, got {type(model).__name__}")
    if method not in ("lbfgs", "adam", "levenberg_marquardt"):
        raise ValueError(f"{where}: method must be 'lbfgs', 'adam' or 'levenberg_marquardt', got {method!r}")
    check_data(where, data, model)         # the residuals are scaled by the spread of the observed changes
    check_int(where, steps=steps)
    check_positive(where, lr=lr, tolerance=tolerance)
    if method == "levenberg_marquardt":
        _select(model, names)                 # errors in names as identify's
        return identify_theseus(model, data, names, max_iterations=steps)
    params = _select(model, names)
    names = list(names)
    with torch.no_grad():
        start = _residuals(model, data, {})
    if not bool(torch.isfinite(start).all()):
        bad = ~torch.isfinite(start).all(-1)
        raise ValueError(f"{where}: the model is not finite on data (its prediction is NaN or Inf for "
                         f"{int(bad.sum())} of {len(data)} transitions, first: row {int(bad.nonzero()[0])}) at the "
                         "current parameters; start them where the model is defined, or drop those transitions")
    before = [p.detach().clone() for p in params]
    frozen = [p for p in model.parameters() if all(p is not q for q in params)]
    state = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        def objective():
            return _residuals(model, data, {}).square().mean()

        if method == "adam":
            opt = torch.optim.Adam(params, lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                loss = objective()
                loss.backward()
                opt.step()
        else:
            opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe",
                                    tolerance_grad=tolerance, tolerance_change=tolerance ** 2)

            def closure():
                opt.zero_grad()
                loss = objective()
                loss.backward()
                return loss
            try:
                opt.step(closure)
            except IndexError:      # torch's L-BFGS indexes an empty history once the objective turns NaN
                with torch.no_grad():
                    for p in params:
                        p.fill_(float("nan"))       # reported (and the parameters restored) below
    finally:
        for p, s in zip(frozen, state):
            p.requires_grad_(s)
    if not all(bool(torch.isfinite(p).all()) for p in params):
        with torch.no_grad():
            for p, b in zip(params, before):
                p.copy_(b)
        raise RuntimeError(f"{where}: the fit of {list(names)} went non-finite (the model is not finite on this data, "
                           "or Adam's lr is too high); the parameters are left as they were")
    return {n: p.detach().clone() for n, p in zip(names, params)}


def identify_theseus(model: Dynamics, data: Transitions, names, *, max_iterations: int = 50,
                     damping: float = 1e-3) -> dict:
    """Levenberg-Marquardt on the residuals with theseus-ai (each parameter a ``th.Vector`` of size 1,
    forward-mode Jacobians). The fitted values are written into the model and returned.

    ``max_iterations`` an int ``>= 1``, ``damping`` (Levenberg-Marquardt's initial damping) a finite number ``> 0``;
    other values, data or names raise a TypeError or ValueError naming the argument."""
    where = "identify_theseus"
    if not isinstance(model, Dynamics):
        raise TypeError(f"{where}: model must be a dynamics.Dynamics, got {type(model).__name__}")
    check_data(where, data, model)
    check_int(where, max_iterations=max_iterations)
    check_positive(where, damping=damping)
    params = _select(model, names, where)
    try:
        with warnings.catch_warnings():   # without scikit-sparse theseus warns that CHOLMOD is unavailable
            warnings.simplefilter("ignore", UserWarning)
            import theseus as th
    except ImportError as err:  # pragma: no cover - exercised where theseus-ai is absent
        raise ImportError("identify(method='levenberg_marquardt') needs theseus-ai; see the README for its "
                          "install (pip install --no-build-isolation --no-deps theseus-ai ...)") from err
    names = list(names)
    dtype = params[0].dtype
    variables = [th.Vector(1, name=f"p{i}", dtype=dtype) for i in range(len(names))]
    n = data.x.shape[-1]
    X, U, Xn = (th.Variable(t.to(dtype).unsqueeze(0), name=k) for k, t in
                (("x", data.x), ("u", data.u), ("x_next", data.x_next)))

    def err_fn(optim_vars, aux_vars):           # theseus batch of one: the whole dataset is one problem
        x, u, xn = (a.tensor[0] for a in aux_vars)
        values = {name: v.tensor[0, 0] for name, v in zip(names, optim_vars)}
        return _residuals(model, Transitions._unchecked(x, u, xn), values).reshape(1, -1) / len(data) ** 0.5

    cost = th.AutoDiffCostFunction(variables, err_fn, len(data) * n, aux_vars=[X, U, Xn],
                                   cost_weight=th.ScaleCostWeight(torch.ones(1, 1, dtype=dtype)),
                                   autograd_strategy="forward-mode", autograd_mode="dense", autograd_vectorize=True,
                                   autograd_create_graph=False, name="residuals")
    objective = th.Objective(dtype=dtype)
    objective.add(cost)
    optimizer = th.LevenbergMarquardt(objective, max_iterations=max_iterations, abs_err_tolerance=1e-20,
                                      rel_err_tolerance=1e-14)
    layer = th.TheseusLayer(optimizer)
    inputs = {f"p{i}": p.detach().reshape(1, 1).clone() for i, p in enumerate(params)}
    with warnings.catch_warnings():   # theseus 0.2.3 calls np.array(tensor, copy=False), which numpy 2 flags
        warnings.simplefilter("ignore", DeprecationWarning)
        solution, _ = layer.forward(inputs, optimizer_kwargs={"damping": damping, "track_best_solution": True})
    values = [solution[f"p{i}"].reshape(()) for i in range(len(params))]
    if not all(bool(torch.isfinite(v)) for v in values):
        raise RuntimeError(f"identify: the Levenberg-Marquardt fit of {list(names)} went non-finite (the model is not "
                           "finite on this data); the parameters are left as they were")
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    return {n: p.detach().clone() for n, p in zip(names, params)}
