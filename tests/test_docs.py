"""The docs' and the README's Python examples run as written, the API reference documents exactly the public surface, and the site
builds strictly."""
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXAMPLES = [(page.name, i, block) for page in [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]
            for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))]


@pytest.mark.parametrize("page,index,code", EXAMPLES, ids=[f"{p}-{i}" for p, i, _ in EXAMPLES])
def test_docs_example_runs(page, index, code):
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": "__docs__"})


API = DOCS / "api"
ROOT = DOCS.parent
# each public module and its generated reference page (``::: module.name`` directives, one per exported name)
API_PAGES = {"trajopt": "trajopt.md", "trajopt.problems": "problems.md", "dynamics": "dynamics.md",
             "dynamics.validation": "validation.md", "dynamics.contact": "contact.md",
             "dynamics.learned": "learned.md", "trajopt.rl": "rl.md", "trajopt.rl.tasks": "tasks.md"}
# exported lazily (not in __all__: their optional dependency may be missing), documented where they are defined
LAZY = {"dynamics": {"MuJoCoDynamics": "dynamics.mujoco"}}


def _resolve(path):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("module", sorted(API_PAGES))
def test_api_page_documents_exactly_the_public_surface(module):
    """The reference page of each public module has one ``:::`` directive per exported name, each naming the
    very object the module exports as the renderer resolves a path (modules first: ``dynamics.learned.fit`` is the
    submodule, so the function is ``dynamics.learned.fit.fit``); lazily exported names are documented at their
    definition."""
    mod = importlib.import_module(module)
    paths = re.findall(r"^::: ([\w.]+)\s*$", (API / API_PAGES[module]).read_text(), re.M)
    names = [path.rsplit(".", 1)[1] for path in paths]
    assert len(names) == len(set(names)), f"documented twice: {sorted(n for n in names if names.count(n) > 1)}"
    lazy = LAZY.get(module, {})
    assert set(names) == set(mod.__all__) | set(lazy)
    for path, name in zip(paths, names):
        assert path.startswith(f"{lazy.get(name, module)}.")
        if name in lazy:
            try:
                exported = getattr(mod, name)
            except ImportError:          # the optional dependency is missing: the lazy export raises, as documented
                continue
        else:
            exported = getattr(mod, name)
        assert _resolve(path) is exported


def test_api_pages_are_in_the_site_and_linked_from_the_api_page():
    config = (ROOT / "mkdocs.yml").read_text()
    index = (DOCS / "api.md").read_text()
    assert {p.name for p in API.glob("*.md")} == set(API_PAGES.values())
    for page in API_PAGES.values():
        assert f"api/{page}" in config and f"(api/{page})" in index


def _documented_parameters(doc):
    """The names an ``Args:`` section of a Google-style docstring documents (``a, b: ...`` documents two)."""
    names, indent = [], None
    lines = (doc or "").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*(Args|Arguments|Parameters):\s*$", line):
            indent = None
            for entry in lines[i + 1:]:
                if not entry.strip():
                    continue
                depth = len(entry) - len(entry.lstrip())
                match = re.match(r"^\s*([\w*]+(?:,\s*[\w*]+)*)\s*(\([^)]*\))?:(\s|$)", entry)
                indent = depth if indent is None and match else indent
                if indent is None or depth < indent or (depth == indent and not match):
                    break
                if depth == indent:
                    names += [n.strip().lstrip("*") for n in match.group(1).split(",")]
    return names


def test_every_documented_argument_is_a_parameter():
    """What griffe's unknown-parameter warning would check (off in mkdocs.yml, since ``a, b: ...`` documents two
    parameters at once): every name an ``Args:`` section of the public surface documents is in the signature."""
    wrong, checked = [], 0
    for module in API_PAGES:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            targets = [(name, obj.__doc__, obj)] if inspect.isfunction(obj) else []
            if inspect.isclass(obj):
                targets += [(name, obj.__doc__, obj.__init__), (f"{name}.__init__", obj.__init__.__doc__, obj.__init__)]
                for attr, value in vars(obj).items():
                    function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                    if not attr.startswith("_") and inspect.isfunction(function):
                        targets.append((f"{name}.{attr}", function.__doc__, function))
            for label, doc, function in targets:
                documented = _documented_parameters(doc)
                if not documented:
                    continue
                checked += 1
                parameters = set(inspect.signature(function).parameters)
                wrong += [f"{module}.{label}: {n}" for n in documented if n not in parameters]
    assert checked > 20 and not wrong, wrong


@pytest.mark.slow
def test_mkdocs_builds_the_site_strictly(tmp_path):
    """``mkdocs build --strict`` (the API pages rendered from the docstrings by mkdocstrings) passes: no broken
    link, no page missing from the navigation's references, no docstring the renderer rejects."""
    pytest.importorskip("mkdocs", reason="the docs site needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs site needs mkdocs-material: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python",
                        reason="the API pages need mkdocstrings-python: pip install -e '.[docs]'")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                          "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "trajopt" / "index.html").read_text()
    assert 'id="trajopt.ilqr"' in page and ":func:" not in page       # rendered, roles turned into links
