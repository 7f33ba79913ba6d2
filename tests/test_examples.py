"""Every example runs the way a user runs it: ``python examples/NAME.py --quick --out FOLDER`` in a subprocess,
from another directory, with no PYTHONPATH, against the installed package; it exits 0, writes its figure (a PNG)
into FOLDER and nothing anywhere else in its working directory."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# script, extra arguments, the figure it writes
CASES = [
    ("bounce_to_target.py", [], "bounce_to_target.png"),
    ("imitation.py", [], "imitation.png"),
    ("learned_pendulum.py", [], "learned.png"),
    ("models_gallery.py", [], "models.png"),
    ("plot_collocation.py", [], "collocation_knots.png"),
    ("plot_mppi.py", [], "mppi_samples.png"),
    ("swing_up.py", [], "swing_up.png"),
    ("shac_cartpole.py", [], "shac_cartpole.png"),
    ("shac_tasks.py", ["pendulum"], "shac_pendulum.png"),
    ("shac_tasks.py", ["pusher"], "shac_pusher.png"),
    ("shac_tasks.py", ["bicycle"], "shac_bicycle.png"),
    ("mujoco_mpc.py", [], "mujoco_mpc.png"),
]
NEEDS = {"mujoco_mpc.py": ("mujoco", "needs the optional mujoco extra: pip install -e '.[mujoco]'")}


def test_every_example_is_covered():
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == {script for script, _, _ in CASES}


@pytest.fixture(scope="module")
def user_env(tmp_path_factory):
    """The environment a user's shell would give: this interpreter, no PYTHONPATH; skips unless the package is
    installed (the examples import ``trajopt`` and ``dynamics`` as installed, not from the checkout)."""
    pytest.importorskip("matplotlib", reason="the examples draw with matplotlib: pip install -e '.[bench]'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = tmp_path_factory.mktemp("elsewhere")
    probe = "import importlib.util as u; print(u.find_spec('trajopt') is not None)"
    found = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True)
    if found.stdout.strip() != "True":
        pytest.skip("torch-trajopt is not installed in this interpreter (pip install -e .): the examples are run as a "
                    "user runs them, without PYTHONPATH")
    return env


@pytest.mark.parametrize("script,args,figure", CASES, ids=[" ".join([s, *a]) for s, a, _ in CASES])
def test_example_runs_quick_and_writes_its_figure(script, args, figure, user_env, tmp_path):
    if script in NEEDS:
        pytest.importorskip(NEEDS[script][0], reason=NEEDS[script][1])
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(EXAMPLES / script), *args, "--quick", "--out", str(out)],
                         cwd=tmp_path, env=user_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{script} failed:\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]          # nothing written outside --out


def test_benchmarks_help_lists_every_suite_with_its_purpose_time_and_needs():
    """``python -m benchmarks --help`` (from the checkout) names every suite it accepts, each with a purpose, a typical
    time and what it needs, and the bare command runs the tour."""
    root = EXAMPLES.parent
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    rows = [(i, line.split()) for i, line in enumerate(lines) if "needs:" in line]
    listed = {words[0] for _, words in rows}
    for i, words in rows:                        # name, a time, "needs:", what it needs; then its purpose
        assert len(words) >= 4 and words[words.index("needs:") + 1:] and lines[i + 1].strip(), lines[i:i + 2]
    assert "default: tour" in run.stdout
    unknown = subprocess.run([sys.executable, "-m", "benchmarks", "no-such-suite"], cwd=root, capture_output=True,
                             text=True, timeout=300)
    accepted = set(re.findall(r"'([\w-]+)'", unknown.stderr.split("choose from ")[1]))
    assert listed == accepted and "tour" in listed
