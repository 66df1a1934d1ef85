"""README.md runs as written: every ```python block, each on its own in a fresh interpreter.

Each block runs in a new ``python`` process started in an empty directory, with nothing defined
beforehand (so each block has its own imports) and with the packages that the ``[models]`` extra
does not bring blocked (``BLOCKED``: importing them raises ``ModuleNotFoundError``), so a block
that passes here runs after ``pip install "mhe_jax[models]"``.

Markers, as a comment line anywhere in a block:

- ``# readme: needs <package>[, <package>]`` lets the block import those blocked packages (say
  so in the text around it, e.g. "with ``pip install equinox``");
- ``# readme: no-run <reason>`` skips the block (for blocks that need data or hardware CI does
  not have; use sparingly).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
NEEDS = re.compile(r"^\s*# readme: needs ([\w, .-]+)$", re.MULTILINE)
NO_RUN = re.compile(r"^\s*# readme: no-run\b(.*)$", re.MULTILINE)

# Import names of the packages that the test/docs/lint extras add on top of [models].
BLOCKED = {
    "equinox": "equinox",
    "hypothesis": "hypothesis",
    "ipykernel": "ipykernel",
    "jupytext": "jupytext",
    "mkdocs": "mkdocs",
    "mkdocs-material": "material",
    "mkdocstrings": "mkdocstrings",
    "nbmake": "nbmake",
    "pytest": "pytest",
    "pytest-xdist": "xdist",
    "ruff": "ruff",
    "pyright": "pyright",
    "build": "build",
}
# In those extras but also installed by [models] or the core (optax requires chex), or present
# in every environment pip runs in (setuptools, the build backend the test extra pins).
NOT_BLOCKED = {"chex", "setuptools"}


def _blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of every fenced block of ``language`` in README.md."""
    found = []
    for match in FENCE.finditer(README):
        if match.group(1) == language:
            found.append((README.count("\n", 0, match.start()) + 1, match.group(2)))
    return found


PYTHON_BLOCKS = _blocks("python")


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def _preamble(allowed: set[str]) -> str:
    blocked = sorted(set(BLOCKED.values()) - allowed)
    return (
        "import sys\n"
        "class _NotInModelsExtra:\n"
        f"    blocked = {blocked!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        top = name.partition('.')[0]\n"
        "        if top in self.blocked:\n"
        "            raise ModuleNotFoundError(\n"
        "                f'{top} is not installed by mhe_jax[models]; mark the block with '\n"
        "                f'\"# readme: needs {top}\" and say so in the README', name=top)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NotInModelsExtra())\n"
        "del sys, _NotInModelsExtra\n"
    )


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS, ids=[f"line{n}" for n, _ in PYTHON_BLOCKS])
def test_python_block_runs_alone(line, code, tmp_path):
    skip = NO_RUN.search(code)
    if skip:
        pytest.skip(f"README.md line {line}: marked no-run{skip.group(1)}")
    allowed = {p.strip() for m in NEEDS.findall(code) for p in m.split(",") if p.strip()}
    assert allowed <= set(BLOCKED.values()), f"'# readme: needs' names {allowed}"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", _preamble(allowed) + code],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, (
        f"README.md block at line {line} failed when run on its own:\n{result.stderr[-4000:]}"
    )


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2
    assert not _blocks("py"), "use ```python fences (```py blocks are not run)"


def test_blocked_list_covers_the_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    names = set()
    for extra in ("test", "docs", "lint"):
        for requirement in extras.get(extra, []):
            name = re.match(r"[A-Za-z0-9_.-]+", requirement)
            assert name is not None
            if not name.group(0).startswith("mhe_jax"):
                names.add(name.group(0).lower())
    unknown = names - set(BLOCKED) - NOT_BLOCKED
    assert not unknown, f"add the import names of {unknown} to BLOCKED (or NOT_BLOCKED)"


def test_markers_are_detected():
    assert NO_RUN.search("x = 1\n# readme: no-run needs CIFAR-10\n")
    assert not NO_RUN.search("x = 1  # readme: no-runner\n")
    assert NEEDS.findall("# readme: needs equinox, hypothesis\n") == ["equinox, hypothesis"]


def test_quickstart_is_two_commands():
    section = _section("Quickstart")
    fences = FENCE.findall(section)
    assert [language for language, _ in fences] == ["bash"], "Quickstart: one ```bash block"
    commands = [
        line for line in fences[0][1].splitlines() if line.strip() and not line.startswith("#")
    ]
    assert len(commands) == 2, f"Quickstart must be exactly two commands, got {commands}"
    assert "python -m mhe_jax.experiments quickstart" in commands[0]
    assert commands[1].startswith('pip install -e ".[test]"')
    assert commands[1].endswith('python -m pytest -m "not slow" -n auto')


def test_ci_runs_the_readme_test_command_literally():
    """.ci/run takes the Quickstart's command 2 from README.md (through
    .ci/readme_commands.py) and runs it in a fresh virtualenv: the two cannot drift."""
    section = _section("Quickstart")
    commands = [line for line in FENCE.findall(section)[0][1].splitlines()
                if line.strip() and not line.startswith("#")]
    for index, want in enumerate(commands, 1):
        got = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_commands.py"),
                              str(index)], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0 and got.stdout.strip() == want, got.stderr
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    run_lines = [line.strip() for line in ci.splitlines() if not line.lstrip().startswith("#")]
    assert 'test_command="$(python .ci/readme_commands.py 2)"' in run_lines
    assert 'eval "$test_command" || status=$?' in run_lines
    assert 'python3 -m venv "$venv"' in run_lines and '. "$venv/bin/activate"' in run_lines
    # the venv is made and entered before the README's command, the linters come after it
    order = [run_lines.index(x) for x in ('python3 -m venv "$venv"', '. "$venv/bin/activate"',
                                          'eval "$test_command" || status=$?', "ruff check .",
                                          "pyright")]
    assert order == sorted(order)
    assert not any("pytest" in line for line in run_lines if "PYTEST_ADDOPTS" not in line
                   and "pytest collected" not in line), "pytest runs only through the README"


def test_relative_links_point_to_files():
    targets = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [t for t in targets if not re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|#", t)]
    missing = [t for t in relative if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_preamble_blocks_packages_outside_the_models_extra(tmp_path):
    code = "import optax, flax\nimport equinox\n"
    result = subprocess.run(
        [sys.executable, "-c", _preamble(set()) + code], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "equinox is not installed by mhe_jax[models]" in result.stderr
    allowed = subprocess.run(
        [sys.executable, "-c", _preamble({"equinox"}) + code], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )
    assert allowed.returncode == 0, allowed.stderr
