"""The docs' Python examples run as written, and the API page lists exactly the public surface."""
import re
from pathlib import Path

import pytest

import dynamics
import dynamics.contact
import dynamics.learned
import dynamics.validation
import trajopt
import trajopt.problems
import trajopt.rl
import trajopt.rl.tasks

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLES = [(page.name, i, block) for page in sorted(DOCS.glob("*.md"))
            for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page,index,code", EXAMPLES, ids=[f"{p}-{i}" for p, i, _ in EXAMPLES])
def test_docs_example_runs(page, index, code):
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__docs__"})


def test_api_page_lists_the_public_surface():
    text = (DOCS / "api.md").read_text()
    section = {name: set(re.findall(r"^\| `(\w+)", body, re.M))
               for name, body in re.findall(r"^## `([\w.]+)`\n(.*?)(?=^## |\Z)", text, re.M | re.S)}
    assert section["trajopt"] == set(trajopt.__all__)
    assert section["dynamics"] == set(dynamics.__all__)
    assert section["dynamics.contact"] == set(dynamics.contact.__all__)
    assert section["dynamics.learned"] == set(dynamics.learned.__all__)
    assert section["trajopt.rl"] == set(trajopt.rl.__all__)
    assert section["trajopt.rl.tasks"] == set(trajopt.rl.tasks.__all__)
    assert section["trajopt.problems"] == set(trajopt.problems.__all__)
    assert section["dynamics.validation"] == set(dynamics.validation.__all__)
