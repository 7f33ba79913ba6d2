from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "problems.py"


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/problems.py is not beside this checkout")
def test_benchmark_problems_are_the_canonical_ones():
    ours = (Path(__file__).resolve().parents[1] / "trajopt" / "problems" / "reference.py").read_text()
    assert ours.split("\n", 1)[1] == SHARED.read_text()
