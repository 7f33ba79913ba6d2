"""One implicit-gradient mechanism for every solver whose solution is defined by optimality conditions.

A solver returns a solution ``w`` that satisfies ``F(w, p) = 0`` (its KKT conditions) for the inputs
``p = (x0, theta)``; by the implicit-function theorem a loss with gradient ``g`` in ``w`` has
``dloss/dp = -w~' dF/dp`` with ``w~`` the solution of the adjoint system ``(dF/dw)' w~ = g``. An
:class:`ImplicitRule` supplies the two solver-specific pieces (the adjoint solve, and the scalar ``w~' F(w, p)``
whose gradient in ``p`` is the product); :func:`implicit` wraps them in one ``autograd.Function``.
"""
from __future__ import annotations

import abc
import itertools

import torch
from torch.autograd.function import once_differentiable

__all__ = ["ImplicitRule", "implicit", "grad_tensors"]


def grad_tensors(*modules) -> list[torch.Tensor]:
    """The tensors of ``modules`` (and their submodules) that require grad, each once: parameters, buffers, and
    plain tensor attributes (a model that keeps its matrices as attributes is reached too). What an implicit
    backward differentiates into."""
    seen, out = set(), []
    for module in modules:
        for sub in module.modules():
            plain = (v for v in vars(sub).values() if isinstance(v, torch.Tensor))
            for z in itertools.chain(sub.parameters(recurse=False), sub.buffers(recurse=False), plain):
                if z.requires_grad and id(z) not in seen:
                    seen.add(id(z))
                    out.append(z)
    return out


class ImplicitRule(abc.ABC):
    """The solver-specific half of an implicit backward pass (see the module docstring)."""

    @abc.abstractmethod
    def adjoint(self, grads: tuple):
        """Solve the adjoint system for the incoming gradients ``grads`` (one per output, None for none), without
        a graph; return a state for :meth:`pairing`, or None when no gradient reaches the inputs."""

    @abc.abstractmethod
    def pairing(self, state, x0: torch.Tensor) -> torch.Tensor:
        """The scalar ``w~' F(w, p)`` (with its graph to ``x0`` and the model's and cost's tensors); its gradient in
        ``p`` is ``-dloss/dp``."""

    def x0_gradient(self, state):
        """``dloss/dx0`` in closed form when no other input requires grad, or None to use :meth:`pairing`."""
        return None


def implicit(rule: ImplicitRule, outputs: tuple, x0: torch.Tensor, tensors: list) -> tuple:
    """``outputs`` (detached tensors) made differentiable with respect to ``x0`` and ``tensors`` by ``rule``.
    Returns the outputs unchanged when grad mode is off or nothing requires grad."""
    if not torch.is_grad_enabled() or not any(z.requires_grad for z in (x0, *tensors)):
        return outputs
    return _Implicit.apply(rule, len(outputs), *outputs, x0, *tensors)


class _Implicit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rule, k, *args):
        ctx.rule, ctx.k, ctx.inputs = rule, k, args[k:]
        return tuple(a.detach().clone() for a in args[:k])

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        rule, inputs = ctx.rule, ctx.inputs
        head = (None, None) + (None,) * ctx.k
        state = rule.adjoint(grads)
        if state is None:
            return (*head, *[None] * len(inputs))
        x0, *tensors = inputs
        if not any(z.requires_grad for z in tensors):
            gx0 = rule.x0_gradient(state)
            if gx0 is not None:
                return (*head, gx0 if x0.requires_grad else None, *[None] * len(tensors))
        # x0 as a fresh leaf: through its own history (an earlier solve in a closed loop, say) x0 may depend on
        # these same tensors, and that path is the outer backward's to follow, not this product's
        x0 = x0.detach().requires_grad_(x0.requires_grad)
        wrt = [z for z in (x0, *tensors) if z.requires_grad]
        with torch.enable_grad():
            phi = rule.pairing(state, x0)
            found = torch.autograd.grad(phi, wrt, allow_unused=True) if phi.requires_grad else [None] * len(wrt)
        found = iter(found)
        out = [None if not z.requires_grad else _neg(next(found)) for z in (x0, *tensors)]
        return (*head, *out)


def _neg(z):
    return None if z is None else z.neg().contiguous()     # a gradient laid out as its tensor (views of it work)
