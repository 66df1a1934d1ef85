"""The API reference: every docstring example runs, every public name is documented and typed.

The doctests are collected from every module of the package (``doctest.DocTestFinder`` over
``pkgutil.walk_packages``), so an ``Examples:`` block added to any docstring runs here without
registering it. They run as a user would run them: float32 defaults (``jax_enable_x64`` off,
although the rest of the suite turns it on), with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``.
The ```python blocks of the docs pages run like README.md's (tests/test_readme.py). The docs
build itself (``mkdocs build --strict``) runs in ``.ci/run``.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import os
import pathlib
import pkgutil
import subprocess
import sys
import types

import jax
import pytest

import mhe_jax
from tests.test_readme import FENCE, _preamble as readme_preamble

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["mhe_jax", "mhe_jax.sphere", "mhe_jax.models", "mhe_jax.data", "mhe_jax.train",
            "mhe_jax.experiments"]
# Main functions: each shows a runnable example (issue 14: "one runnable example per main
# function").
MAIN_FUNCTIONS = [
    "mhe_jax.hyperspherical_energy", "mhe_jax.output_energy", "mhe_jax.gaussian_energy",
    "mhe_jax.official_energy", "mhe_jax.compressive_energy", "mhe_jax.energy_stats",
    "mhe_jax.min_angle", "mhe_jax.mean_abs_cosine", "mhe_jax.mhe_regularizer",
    "mhe_jax.mhe_penalty", "mhe_jax.layer_energies", "mhe_jax.orthonormal_regularizer",
    "mhe_jax.orthogonality_regularizer", "mhe_jax.uniform_reference_energy",
    "mhe_jax.sphere.minimize_energy", "mhe_jax.sphere.tammes", "mhe_jax.train.fit",
]
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _load_hooks() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("mhe_jax_docs_hooks", ROOT / "docs" / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _load_hooks()


def _modules() -> list[str]:
    names = ["mhe_jax"] + [
        info.name for info in pkgutil.walk_packages(mhe_jax.__path__, prefix="mhe_jax.")
    ]
    return sorted(n for n in names if not n.endswith("__main__"))  # __main__ runs the CLI


def _doctests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        module = importlib.import_module(name)
        # globs: a copy of the module's namespace, as `pytest --doctest-modules` gives.
        tests += [t for t in finder.find(module, name) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


@pytest.fixture
def float32_defaults():
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples(test, float32_defaults):
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    output: list[str] = []
    result = runner.run(test, out=output.append)
    assert result.failed == 0, "".join(output)


def test_examples_are_collected_from_private_modules():
    # The energies are defined in private modules and re-exported: their examples must be found.
    names = {t.name for t in DOCTESTS}
    assert "mhe_jax._energy.hyperspherical_energy" in names
    assert len(DOCTESTS) >= 10


def _resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", MAIN_FUNCTIONS)
def test_main_functions_show_an_example(path):
    doc = inspect.getdoc(_resolve(path)) or ""
    assert "Examples:" in doc and ">>>" in doc, f"{path} has no doctest `Examples:` block"
    # more than a one-line summary: the math and the shapes
    assert len([line for line in doc.splitlines() if line.strip()]) >= 5, f"{path}: one-liner"


def _public_paths() -> list[str]:
    return [f"{p}.{n}" for p in PACKAGES for n in HOOKS.public_names(p)]


def test_hook_expands_marker_to_every_undocumented_public_name():
    page = "# x\n\n::: mhe_jax.sphere.tammes\n\n<!-- public-api: mhe_jax.sphere -->\n"
    expanded = HOOKS.expand(page)
    directives = HOOKS.DIRECTIVE.findall(expanded)
    expected = [f"mhe_jax.sphere.{n}" for n in HOOKS.public_names("mhe_jax.sphere")]
    assert sorted(directives) == sorted(expected)
    assert directives.count("mhe_jax.sphere.tammes") == 1
    assert "public-api" not in expanded


def test_every_public_name_is_in_the_api_reference():
    pages = sorted((ROOT / "docs" / "api").glob("*.md"))
    documented: set[str] = set()
    for page in pages:
        documented |= set(HOOKS.DIRECTIVE.findall(HOOKS.expand(page.read_text(encoding="utf-8"))))
    missing = sorted(set(_public_paths()) - documented)
    assert not missing, f"public names missing from docs/api/: {missing}"
    unknown = sorted(documented - set(_public_paths()))
    assert not unknown, f"docs/api/ names objects that are not public (renamed?): {unknown}"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(f"api/{page.name}" in nav for page in pages)


def test_public_names_have_docstrings():
    missing = []
    for path in _public_paths():
        obj = _resolve(path)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(path)
    assert not missing, f"public objects without a docstring: {missing}"


def _missing_annotations(function) -> list[str]:
    signature = inspect.signature(function)
    missing = [
        name
        for name, parameter in signature.parameters.items()
        if name not in ("self", "cls")
        and parameter.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append("return")
    return missing


def test_public_api_is_fully_annotated():
    gaps = []
    for path in _public_paths():
        obj = _resolve(path)
        functions = [(path, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            functions += [
                (f"{path}.{name}", member)
                for name, member in vars(obj).items()
                if inspect.isfunction(member) and (not name.startswith("_") or name == "__init__")
            ]
        for where, function in functions:
            missing = _missing_annotations(function)
            if missing:
                gaps.append(f"{where}({', '.join(missing)})")
    assert not gaps, f"{len(gaps)} public functions lack type hints: " + "; ".join(gaps)


def test_hook_strips_sphinx_roles_from_rendered_docstrings():
    html = "see :func:<code>mhe_jax.min_angle</code> and :mod:<code>x</code>; a:b <code>c</code>"
    assert HOOKS.strip_sphinx_roles(html) == (
        "see <code>mhe_jax.min_angle</code> and <code>x</code>; a:b <code>c</code>"
    )


def _docs_python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == "python":
                line = text.count("\n", 0, match.start()) + 1
                blocks.append((f"{page.relative_to(ROOT)}:{line}", match.group(2)))
    return blocks


DOCS_BLOCKS = _docs_python_blocks()


@pytest.mark.parametrize("where, code", DOCS_BLOCKS, ids=[w for w, _ in DOCS_BLOCKS])
def test_docs_python_blocks_run(where, code, tmp_path):
    # Same rules as README.md's blocks (tests/test_readme.py): alone, [models] extra only.
    result = subprocess.run(
        [sys.executable, "-c", readme_preamble(set()) + code], cwd=tmp_path,
        env=dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT)),
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-4000:]}"
