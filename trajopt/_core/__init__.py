"""Internal: the shared core every solver imports (problem, status, checks, bounds, Riccati, implicit gradients).

Nothing here is public API; the public names are re-exported by :mod:`trajopt`."""
