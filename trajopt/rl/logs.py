"""Files that a killed run must never leave half written: checkpoints and CSV logs, written atomically;
checkpoints read back with an error that names the file when it is missing or unreadable; and the CPU copies of
modules' and optimizers' state that go into them."""
from __future__ import annotations

import csv
import glob
import os
from contextlib import suppress

import torch

__all__ = ["atomic_write", "write_rows", "read_checkpoint", "cpu_copy"]


def atomic_write(path: str, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path`` (readers see the old file
    or the new one, never half of one). The temporary file is removed when ``write`` raises, and the ones left by
    writers that were killed (their process is gone) are removed first."""
    for stale in glob.glob(glob.escape(path) + ".tmp*"):
        pid = stale.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with suppress(OSError):
                os.remove(stale)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.remove(tmp)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:           # a live process of another user
        return True
    return True


def write_rows(path: str, columns, rows) -> None:
    """Write the CSV log ``path`` anew, atomically: a header of ``columns`` and the dicts ``rows``."""
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)
    atomic_write(path, write)


def read_checkpoint(where: str, path, map_location=None):
    """The object :func:`torch.save` wrote to ``path`` (a str or os.PathLike). A missing file raises a
    FileNotFoundError, a file ``torch.load`` cannot read (truncated, corrupt, not a checkpoint) a ValueError; both
    name ``where`` and the file. Whether it is a checkpoint of the right run is the caller's check."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{where}: path must be a path (str or os.PathLike), got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where}: no checkpoint file at {os.fspath(path)!r}")
    try:
        return torch.load(path, weights_only=False, map_location=map_location)
    except Exception as error:          # pickle, zip and storage errors alike: the file is not a readable checkpoint
        raise ValueError(f"{where}: {os.fspath(path)!r} is not a checkpoint torch.load can read (truncated, corrupt "
                         f"or another kind of file): {type(error).__name__}: {error}") from error


def cpu_copy(state):
    """A deep copy of a (module's or optimizer's) state dict for a checkpoint, tensors detached on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().clone()
    if isinstance(state, dict):
        return {k: cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(v) for v in state)
    return state
