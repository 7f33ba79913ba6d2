"""Benchmark suites: ``python -m benchmarks [suite ...]`` prints a report; ``pytest benchmarks`` runs the
pytest-benchmark cases.

Importing this package sets ``OMP_WAIT_POLICY=PASSIVE`` for the process (unless set already): with
OpenMP's default spin-waiting, the same call ran 10-25x slower on a busy 2-core machine. It must
happen before torch is imported, which is why it is here.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
