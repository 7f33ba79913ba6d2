"""Random draws from a generator that may live on another device than the tensors they feed (the planners')."""
from __future__ import annotations

import torch

__all__ = ["draw_randn", "draw_randint"]


def draw_randn(shape, generator, dtype, device):
    """``torch.randn`` from ``generator`` (on its own device; the default generator when None), moved to ``device``."""
    at = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=at).to(device)


def draw_randint(high, shape, generator, device):
    """``torch.randint(high, shape)`` from ``generator`` (on its own device), moved to ``device``."""
    at = generator.device if generator is not None else device
    return torch.randint(high, shape, generator=generator, device=at).to(device)
