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
import re
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


# --- The rendered API pages (issue 26). mkdocstrings reads Google-style sections: an Args entry
# is one line at the section's indentation, `name: text`, the rest of the entry indented deeper;
# a Returns entry likewise, and `word: text` there reads as a return value named `word`.

SECTION = re.compile(r"^(Args|Arguments|Parameters|Keyword Args|Returns|Yields|Raises|Examples|"
                     r"Attributes|Note|Notes|Example|Warns|Warnings|References):\s*$")
PRIVATE_MHE_PATH = re.compile(r"\bmhe_jax(?:\.\w+)*\._[A-Za-z]\w*")


def _sections(doc: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    current = None
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match:
            current = match.group(1)
            out.setdefault(current, [])
        elif current and line.strip() and not line[0].isspace():
            current = None
        elif current:
            out[current].append(line)
    return out


def _entries(lines: list[str]) -> list[str]:
    """The first lines of a section's entries: those at the section's own indentation."""
    text = [line for line in lines if line.strip()]
    if not text:
        return []
    indent = min(len(line) - len(line.lstrip()) for line in text)
    return [line.strip() for line in text if len(line) - len(line.lstrip()) == indent]


def _rendered_objects() -> list[tuple[str, object]]:
    """Every function and class of the API pages, with the public methods of the classes."""
    objects = []
    for path in _public_paths():
        obj = _resolve(path)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            objects.append((path, obj))
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                function = getattr(member, "__func__", member)
                if not name.startswith("_") and inspect.isfunction(function):
                    objects.append((f"{path}.{name}", function))
    return objects


RENDERED = _rendered_objects()


def test_args_entries_name_one_parameter_of_the_signature_each():
    # "s, distance: ..." rendered as one required parameter named "s, distance", without a type
    bad = []
    for path, obj in RENDERED:
        doc = inspect.getdoc(obj) or ""
        try:
            parameters = set(inspect.signature(obj).parameters)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        for entry in _entries(_sections(doc).get("Args", [])):
            match = re.match(r"\*{0,2}(\w+)\s*(?:\([^)]*\))?:", entry)
            if match is None or match.group(1) not in parameters:
                bad.append(f"{path}: {entry[:60]!r}")
    assert not bad, "Args entries that are not one parameter of the signature:\n" + "\n".join(bad)


def test_returns_sections_are_one_unnamed_entry():
    # basin_hopping's 7-line Returns rendered as 7 rows; "A :class:`X`: ..." as a value named "A"
    bad = []
    for path, obj in RENDERED:
        entries = _entries(_sections(inspect.getdoc(obj) or "").get("Returns", []))
        if len(entries) > 1:
            bad.append(f"{path}: {len(entries)} entries (indent the continuation lines)")
        elif entries and re.match(r"\w+\s*(?:\([^)]*\))?:", entries[0]):
            bad.append(f"{path}: {entries[0][:40]!r} reads as a return value named by its 1st word")
    assert not bad, "\n".join(bad)


def test_docstrings_point_at_public_names_only():
    # the reference documents the public names; a private module (mhe_jax._kernels) is not in it
    bad = [f"{path}: {match.group(0)}" for path, obj in RENDERED
           for match in PRIVATE_MHE_PATH.finditer(inspect.getdoc(obj) or "")]
    bad += [f"{path}: ``{match.group(1)}``" for path, obj in RENDERED
            for match in re.finditer(r"``(_[a-z]\w*\.\w+)``", inspect.getdoc(obj) or "")]
    assert not bad, "references to private names in rendered docstrings:\n" + "\n".join(bad)


def test_no_code_spans_in_indented_blocks():
    # an indented block is a code block in Markdown: its ``x`` showed as literal backticks
    bad = []
    for path, obj in RENDERED:
        doc = inspect.getdoc(obj) or ""
        text = doc.split("\nArgs:")[0].split("\nExamples:")[0]
        for block in re.findall(r"\n\n((?: {4}.*\n?)+)", text):
            if "``" in block and ">>>" not in block:
                bad.append(f"{path}: {block.strip()[:60]!r}")
    assert not bad, "\n".join(bad)


def test_checkpointer_page_lists_every_public_method():
    # docs/api/train.md renders Checkpointer's methods only (not the attributes __init__ sets)
    from mhe_jax.train import Checkpointer

    page = (ROOT / "docs" / "api" / "train.md").read_text(encoding="utf-8")
    match = re.search(r"::: mhe_jax\.train\.Checkpointer\n(?:    .*\n)*?\s+members: \[(.*)\]",
                      page)
    assert match, "docs/api/train.md: no members list for mhe_jax.train.Checkpointer"
    listed = [name.strip() for name in match.group(1).split(",")]
    public = [name for name, member in vars(Checkpointer).items()
              if not name.startswith("_") and callable(member)]
    assert sorted(listed) == sorted(public)


def test_hook_gives_private_titles_their_public_names():
    html = ('<code><span title="mhe_jax._tree.PathPattern">PathPattern</span></code> '
            '<a title="mhe_jax.EnergyStats (mhe_jax._diagnostics.EnergyStats)" href="#x">E</a> '
            '<span title="mhe_jax._energy.Array">Array</span> '
            '<span title="mhe_jax.sphere._basin.DEFAULT_MOVE">DEFAULT_MOVE</span> '
            '<span title="mhe_jax._layouts.NeuronAxes">NeuronAxes</span> '
            '<span title="mhe_jax._nothing.Here">Here</span>'
            '<p class="doc doc-class-bases">\n Bases: <code><span >_Section</span></code></p>'
            '<p class="doc doc-class-bases">\n Bases: <code><span >NamedTuple</span></code></p>')
    fixed = HOOKS.public_titles(html)
    assert 'title="str | Callable[[str], bool]"' in fixed
    assert 'title="mhe_jax.EnergyStats"' in fixed
    assert 'title="jax.Array"' in fixed
    assert "title=\"&#x27;relocate&#x27;\"" in fixed
    assert 'title="mhe_jax.NeuronAxes"' in fixed
    assert "<span >Here</span>" in fixed  # unknown: no title rather than a private path
    assert "_Section" not in fixed and "NamedTuple" in fixed
    assert not HOOKS.page_problems(fixed)


def test_hook_reports_what_a_page_must_not_show():
    returns = ('<p><span class="doc-section-title">Returns:</span></p>\n<table>\n<thead><tr>'
               '<th>Name</th><th>Type</th></tr></thead>\n<tbody><tr><td>An</td></tr>'
               '<tr><td>x</td></tr></tbody>')
    html = ('<p>see <code>mhe_jax._kernels</code></p><pre><code>``E(x)``</code></pre>'
            '<tr class="doc-section-item">\n<td>\n<code>s, distance</code>' + returns)
    problems = "\n".join(HOOKS.page_problems(html))
    for expected in ("private path 'mhe_jax._kernels'", "literal double backticks",
                     "'s, distance'", "Returns entry with a name", "Returns split into 2 rows"):
        assert expected in problems
    assert HOOKS.page_problems('<tr class="doc-section-item"><td><code>s</code>') == []
