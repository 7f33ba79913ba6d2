#!/usr/bin/env sh
# Install theseus-ai (Levenberg-Marquardt for system identification) beside an installed torch.
#
# theseus-ai ships only a source distribution whose build imports torch, so it is built without
# build isolation (against the torch already installed) and without its dependencies: its
# scikit-sparse 0.5.0 does not build against Debian 12's SuiteSparse, and is only needed for the
# CHOLMOD sparse solver, which this project does not use (theseus warns about it on import).
# The rest of its dependencies install normally.
set -eu
python -c "import torch" 2>/dev/null || { echo "install torch first (pip install torch==2.13.0)" >&2; exit 1; }
# its other dependencies first, then theseus-ai itself without them (in this order pip's resolver never sees
# theseus-ai's unmet scikit-sparse requirement, so the install prints no dependency-conflict error)
pip install torchlie torchkin urdf_parser_py semantic-version pybind11 lxml pyyaml
pip install --no-build-isolation --no-deps "theseus-ai==0.2.3"
python -c "import warnings; warnings.simplefilter('ignore'); import theseus; print('theseus', theseus.__version__)"
