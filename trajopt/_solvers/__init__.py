"""Internal: one module per algorithm, each importing only :mod:`trajopt._core`.

The public names are re-exported by :mod:`trajopt`."""
