"""Learned dynamics: an MLP on the state change, a PETS-style probabilistic ensemble, and an analytic
model with a learned residual (the semi-parametric model of the source notes; Georgiev et al. 2020).

All predict the state change ``x_next - x`` (or its residual) in normalized units whose
statistics are fitted from data (:meth:`fit_normalization`), and are ordinary
:class:`~dynamics.Dynamics`: solvers use them through ``forward`` and ``jacobians``.

Differentiable with respect to: state, control and every weight.
"""
from __future__ import annotations

import numbers
import operator

import torch
from torch import nn

from ..base import Dynamics, accepts_unbatched
from ..validation import check_bool, check_int
from .data import Transitions


def mlp(inputs: int, outputs: int, hidden=(128, 128), activation=nn.SiLU) -> nn.Sequential:
    layers, width = [], inputs
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


_INPLACE = {nn.SiLU: lambda h: nn.functional.silu(h, inplace=True), nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_}


class _Normalized(Dynamics):
    """Input ``[x, u]`` and target (state change) normalization, fitted from data and kept as buffers."""

    def __init__(self, state_dim, control_dim, hidden=()):
        where = type(self).__name__
        check_int(where, state_dim=state_dim, control_dim=control_dim)
        if not (isinstance(hidden, (tuple, list)) and all(
                isinstance(h, numbers.Integral) and not isinstance(h, bool) and h >= 1 for h in hidden)):   # NumPy too
            raise ValueError(f"{where}: hidden must be a tuple of layer widths, ints >= 1, got {hidden!r}")
        super().__init__(state_dim, control_dim)
        n, m = state_dim, control_dim
        for name, size in (("in_mean", n + m), ("in_std", n + m), ("out_mean", n), ("out_std", n)):
            self.register_buffer(name, torch.zeros(size) if "mean" in name else torch.ones(size))

    def targets(self, data: Transitions) -> torch.Tensor:
        """What the network predicts for each transition, in physical units: the state change."""
        return data.x_next - data.x

    @torch.no_grad()
    def fit_normalization(self, data: Transitions) -> None:
        inputs = torch.cat([data.x, data.u], -1)
        target = self.targets(data)
        self.in_mean.copy_(inputs.mean(0))
        self.in_std.copy_(inputs.std(0).clamp_min(1e-6))
        self.out_mean.copy_(target.mean(0))
        self.out_std.copy_(target.std(0).clamp_min(1e-6))

    def normalized_inputs(self, x, u):
        if x.dtype != self.in_std.dtype:        # one attribute read: a clear message instead of a matmul's
            raise TypeError(f"{type(self).__name__}: x and u have dtype {x.dtype} but the model's weights are "
                            f"{self.in_std.dtype}; convert one of them (model.to({x.dtype}) or x.to(...))")
        return (torch.cat([x, u], -1) - self.in_mean) / self.in_std

    def normalized_targets(self, data: Transitions) -> torch.Tensor:
        return (self.targets(data) - self.out_mean) / self.out_std


class MLPDynamics(_Normalized):
    """``x_next = x + out_std * net((([x, u] - in_mean) / in_std)) + out_mean``."""

    def __init__(self, state_dim: int, control_dim: int, hidden=(128, 128)):
        super().__init__(state_dim, control_dim, hidden)
        self.net = mlp(state_dim + control_dim, state_dim, hidden)

    def forward(self, x, u, t=None):
        return x + self.net(self.normalized_inputs(x, u)) * self.out_std + self.out_mean

    def loss(self, data: Transitions) -> torch.Tensor:
        """Mean squared error of the normalized state change."""
        return (self.net(self.normalized_inputs(data.x, data.u)) - self.normalized_targets(data)).square().mean()


class ResidualDynamics(_Normalized):
    """An analytic model plus a learned correction: ``x_next = base(x, u) + residual(x, u)``.

    The network learns what the (possibly wrong) base model misses; its output starts at
    zero, so an untrained residual model is the base model. With ``train_base=True`` the
    base's physical parameters are fitted jointly; by default they stay as given.
    """

    def __init__(self, base: Dynamics, hidden=(64, 64), train_base: bool = False):
        if not isinstance(base, Dynamics):
            raise TypeError(f"ResidualDynamics: base must be a dynamics.Dynamics, got {type(base).__name__}")
        super().__init__(base.state_dim, base.control_dim, hidden)
        self.base = base
        check_bool(type(self).__name__, train_base=train_base)
        base.requires_grad_(train_base)
        self.net = mlp(base.state_dim + base.control_dim, base.state_dim, hidden)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def targets(self, data):
        with torch.no_grad():
            return data.x_next - self.base(data.x, data.u)

    @torch.no_grad()
    def fit_normalization(self, data):
        super().fit_normalization(data)
        self.out_mean.zero_()                      # keep "zero output = the base model"

    def forward(self, x, u, t=None):
        return self.base(x, u, t) + self.net(self.normalized_inputs(x, u)) * self.out_std

    def loss(self, data):
        pred = self.base(data.x, data.u) + self.net(self.normalized_inputs(data.x, data.u)) * self.out_std
        return ((pred - data.x_next) / self.out_std).square().mean()


class ProbabilisticEnsemble(_Normalized):
    """PETS-style ensemble (Chua et al. 2018): ``members`` networks, each a Gaussian over the state change.

    Each member outputs a mean and a log-variance, softly bounded between learned
    ``min_logvar`` and ``max_logvar`` (as in PETS). Members are trained on bootstrap
    resamples (:func:`~dynamics.learned.fit` draws them). ``propagation`` chooses how
    :meth:`forward` predicts: ``"expectation"`` (the mean over members of their means),
    ``"random"`` (each sample in the batch follows one random member, fixed until
    :meth:`resample_members`, the TS-1 propagation of PETS) or ``"random_every_step"`` (a fresh random member
    for every sample at every call, PETS's TS-infinity; drawn from the generator last given to
    :meth:`resample_members`, else torch's global one).

    The members run as one batched matrix product per layer (their weights stacked on the fly from ``nets``,
    so the parameters and the state dict are those of ``members`` separate MLPs).
    """

    PROPAGATIONS = ("expectation", "random", "random_every_step")

    def __init__(self, state_dim: int, control_dim: int, members: int = 5, hidden=(128, 128),
                 propagation: str = "expectation"):
        super().__init__(state_dim, control_dim, hidden)
        check_int("ProbabilisticEnsemble", members=members)
        if propagation not in self.PROPAGATIONS:
            raise ValueError(f"ProbabilisticEnsemble: propagation must be one of {self.PROPAGATIONS}, "
                             f"got {propagation!r}")
        self.members, self.propagation = members, propagation
        self.nets = nn.ModuleList(mlp(state_dim + control_dim, 2 * state_dim, hidden) for _ in range(members))
        self.max_logvar = nn.Parameter(torch.full((state_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((state_dim,), -10.0))
        self._assignment = None
        self._generator = None

    def member_outputs(self, x, u, members=None):
        """Normalized means and log-variances of every member: two ``(E, B, n)`` tensors.

        ``x (B, n)``, ``u (B, m)`` go to every member; ``x (E, B, n)``, ``u (E, B, m)`` give each member its own rows.
        ``members`` (a sequence of ``K`` member indices, ints in ``[0, members)``, e.g. the elites) runs only those:
        ``E`` is then ``K``; other indices raise a ValueError naming ``members``.
        Differentiable with respect to the inputs and every member's weights.
        """
        nets = self.nets if members is None else [self.nets[e] for e in self._member_indices(members)]
        for name, z, size in (("x", x, self.state_dim), ("u", u, self.control_dim)):
            if not isinstance(z, torch.Tensor) or z.ndim == 0 or z.shape[-1] != size:
                got = f"shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(f"ProbabilisticEnsemble.member_outputs: {name} must end in its size {size} "
                                 f"({'n' if name == 'x' else 'm'}), got {got}")
        h = self.normalized_inputs(x, u)
        E = len(nets)
        if h.ndim == 3 and h.shape[0] != E:
            raise ValueError(f"ProbabilisticEnsemble.member_outputs: x and u with a member dimension need {E} "
                             f"members first, got x {tuple(x.shape)}")
        lead = h.shape[:-1] if h.ndim != 3 else None             # rows shared by every member: (B,) or ()
        if lead is not None:
            h = h.reshape(1, -1, h.shape[-1]).expand(E, -1, -1)
        for i, layer in enumerate(nets[0]):
            if isinstance(layer, nn.Linear):
                weight = torch.stack([net[i].weight for net in nets]).transpose(1, 2)    # (E, in, out)
                bias = torch.stack([net[i].bias for net in nets]).unsqueeze(1)          # (E, 1, out)
                h = torch.baddbmm(bias, h, weight)
            elif type(layer) in _INPLACE and not (torch.is_grad_enabled() and h.requires_grad):
                h = _INPLACE[type(layer)](h)        # no graph to keep: in place, sparing an allocation per layer
            else:
                h = layer(h)                                        # the (parameter-free) activation
        if lead is not None:
            h = h.reshape(E, *lead, h.shape[-1])
        mean, logvar = h.chunk(2, -1)
        logvar = self.max_logvar - nn.functional.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + nn.functional.softplus(logvar - self.min_logvar)
        return mean, logvar

    def _member_indices(self, members) -> list[int]:
        where, E = "ProbabilisticEnsemble.member_outputs", self.members
        try:
            indices = [None if isinstance(e, bool) else operator.index(e) for e in members]  # ints, numpy ints,
        except TypeError:                                                                    # integer tensors
            indices = None
        if not indices or any(e is None or not 0 <= e < E for e in indices):
            raise ValueError(f"{where}: members must be a non-empty sequence of member indices, ints in "
                             f"[0, {E}), got {members!r}")
        return indices

    def predict(self, x, u):
        """Mean ``(B, n)`` and total variance ``(B, n)`` (aleatoric + spread between members) of ``x_next``."""
        mean, logvar = self.member_outputs(x, u)
        mean = mean * self.out_std + self.out_mean
        var = logvar.exp() * self.out_std ** 2
        return x + mean.mean(0), var.mean(0) + mean.var(0, unbiased=False)

    def resample_members(self, batch: int, generator: torch.Generator | None = None):
        """Draw the member each of ``batch`` samples follows under ``propagation="random"``; ``generator`` (kept)
        also draws the members of ``propagation="random_every_step"``."""
        where = "ProbabilisticEnsemble.resample_members"
        check_int(where, batch=batch)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")
        self._generator = generator
        self._assignment = torch.randint(self.members, (batch,), generator=generator)

    @accepts_unbatched
    def forward(self, x, u, t=None):
        mean, _ = self.member_outputs(x, u)
        mean = mean * self.out_std + self.out_mean
        if self.propagation == "expectation":
            return x + mean.mean(0)
        if self.propagation == "random_every_step":
            self._assignment = torch.randint(self.members, (x.shape[0],), generator=self._generator)
        elif self._assignment is None or self._assignment.shape[0] != x.shape[0]:
            self.resample_members(x.shape[0], self._generator)
        return x + mean[self._assignment.to(x.device), torch.arange(x.shape[0], device=x.device)]

    def loss(self, data: Transitions) -> torch.Tensor:
        """Gaussian negative log-likelihood summed over members, plus PETS's small penalty on the
        log-variance bounds. With ``data.x (E, N, n)`` each member is scored on its own rows (bootstrap)."""
        mean, logvar = self.member_outputs(data.x, data.u)
        target = self.normalized_targets(data).expand_as(mean)
        nll = (mean - target).square() * torch.exp(-logvar) + logvar
        return nll.mean((1, 2)).sum() + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
