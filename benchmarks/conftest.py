# Importing the package first sets OMP_WAIT_POLICY=PASSIVE before torch loads (see benchmarks/__init__.py).
import benchmarks  # noqa: F401
import torch

torch.set_num_threads(2)
