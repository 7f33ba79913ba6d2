"""Physical constants as learnable scalar parameters."""
import torch
from torch import nn


def scalar_parameters(module: nn.Module, **values: float) -> None:
    """Register each value as a 0-dim float64 ``nn.Parameter`` (0-dim, so float32 inputs stay float32)."""
    for name, value in values.items():
        setattr(module, name, nn.Parameter(torch.tensor(float(value), dtype=torch.float64)))
