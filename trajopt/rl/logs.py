"""Files that a killed run must never leave half written: checkpoints and CSV logs, written atomically."""
from __future__ import annotations

import csv
import glob
import os
from contextlib import suppress

__all__ = ["atomic_write", "write_rows"]


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
