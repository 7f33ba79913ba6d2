"""Timing helpers shared by the suites: medians of repeated calls, the environment line of a report."""
from __future__ import annotations

import os
import platform
import time

import torch


def median_ms(fn, repeat: int = 20, warmup: int = 3, max_seconds: float = 20.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (stops early after ``max_seconds``)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times) >= 3:
            break
    times.sort()
    return 1e3 * times[len(times) // 2]


def interleaved_ms(fns: dict, repeat: int = 20, warmup: int = 2, max_seconds: float = 60.0) -> dict:
    """Median wall time in ms of each ``fns[name]()``, measured round-robin.

    On a shared machine the speed drifts by 2x within minutes; calling the
    contenders in turn makes their ratios fair even when absolute times are not.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > max_seconds and len(times[name]) >= 3:
            break
    return {name: 1e3 * sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def environment() -> str:
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
            f"{platform.processor() or platform.machine()}, python {platform.python_version()}")


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Plain-text table; ``columns`` are ``(key, header, format)``; missing values print as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
