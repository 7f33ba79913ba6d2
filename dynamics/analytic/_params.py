"""Physical constants as learnable scalar parameters, checked once at construction."""
import math
import numbers

import torch
from torch import nn

_RANGES = {"positive": ("> 0", lambda v: v > 0), "nonnegative": (">= 0", lambda v: v >= 0),
           "fraction": ("in [0, 1]", lambda v: 0 <= v <= 1)}


def scalar_parameters(module: nn.Module, *, positive=(), nonnegative=(), fraction=(), **values: float) -> None:
    """Register each value as a 0-dim float64 ``nn.Parameter`` (0-dim, so float32 inputs stay float32).

    Every value must be a finite real number; those named in ``positive``, ``nonnegative`` or ``fraction``
    must also be ``> 0``, ``>= 0`` or in ``[0, 1]`` (masses, lengths, inertias, stiffnesses, ...). A value outside
    its range raises a ValueError naming the model, the constant and the range.
    """
    kinds = {name: kind for kind, names in (("positive", positive), ("nonnegative", nonnegative),
                                            ("fraction", fraction)) for name in names}
    where = type(module).__name__
    for name, value in values.items():
        number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        valid = isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number)
        text, test = _RANGES.get(kinds.get(name), ("", lambda v: True))
        if not (valid and test(number)):
            raise ValueError(f"{where}: {name} must be a finite number{' ' + text if text else ''}, got {value!r}")
        setattr(module, name, nn.Parameter(torch.tensor(float(number), dtype=torch.float64)))
