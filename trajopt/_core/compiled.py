"""The solvers' compiled paths: ``torch.compile`` of a function once per process and device type.

Shapes are static (``dynamic=False``): loops over time unroll into one graph, and each new set of shapes, dtype or
option values compiles again (torch's recompile limit, 8 per function, then calls run eagerly). On a CPU the
generated code calls its kernels from a C++ wrapper (inductor's ``cpp_wrapper``): at batch size one the Python
wrapper's per-kernel call costs as much as the kernel. The inductor cache (on disk, ``TORCHINDUCTOR_CACHE_DIR``)
lets a later process skip code generation; tracing is paid again. docs/latency.md gives the compile times.
"""
from __future__ import annotations

import functools
import importlib
import warnings

import torch

__all__ = ["compiled"]


@functools.cache
def compiled(fn, device_type: str = "cpu"):
    """``fn`` compiled for tensors on ``device_type`` (one compiled function per process and device type)."""
    # torch.compile's inductor imports torch.utils.mkldnn, whose classes are decorated with the deprecated
    # torch.jit.script_method: torch warns once per decorated method (14 DeprecationWarnings) on that first import,
    # about torch's own code, not ours. Import it first with exactly that warning silenced; later imports are cached.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script_method` is deprecated",
                                category=DeprecationWarning)
        importlib.import_module("torch.utils.mkldnn")
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    return torch.compile(fn, dynamic=False, options=options)
