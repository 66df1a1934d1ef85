"""Write the example notebooks' ``.ipynb`` files from their jupytext sources, the ``.py`` files.

    python notebooks/_sync.py           # rewrite notebooks/NN_*.ipynb (and badges, install URLs)
    python notebooks/_sync.py --check   # exit 1, naming the files, if anything is out of date

Each notebook is a pair: ``NN_name.py`` (jupytext percent format: the source that is edited,
linted and reviewed) and ``NN_name.ipynb`` (what Colab and Jupyter open; committed without
outputs). Jupyter with jupytext installed keeps the pair in sync as you edit either file
(``formats: ipynb,py:percent`` in each header); this script regenerates every ``.ipynb`` from
its ``.py``, so only edit an ``.ipynb`` through a jupytext-aware editor.

The repository address in the Colab badges and install cells has one configured place:
``[project.urls] Source`` in ``pyproject.toml`` (a placeholder until the repository is
public). This script writes it into every notebook; ``tests/test_notebooks.py`` fails if a
notebook carries another address or if a ``.ipynb`` differs from its ``.py``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_config

HERE = Path(__file__).resolve().parent
PYPROJECT = HERE.parent / "pyproject.toml"

# jupytext.toml: the pairing, and no metadata in the .py files: the .ipynb's is set here.
CONFIG = load_jupytext_config(str(HERE))
NOTEBOOK_METADATA = {
    "colab": {"provenance": [], "toc_visible": True},
    "jupytext": {"formats": "ipynb,py:percent"},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
EXTRA_METADATA = {"04_cifar_reproduction": {"accelerator": "GPU"}}  # Colab opens it on a GPU

_GITHUB = re.compile(r"^https://github\.com/(?P<repo>[^/\s]+/[^/\s]+?)(?:\.git)?/?$")
# What the notebooks carry: the badge's target and the install cell's requirement.
_BADGE_TARGET = re.compile(r"https://colab\.research\.google\.com/github/[^)\s]+")
_INSTALL_SPEC = re.compile(r'"mhe_jax\[models\] @ git\+[^"]+"')


def repository(pyproject: Path = PYPROJECT) -> str:
    """``owner/name`` of the GitHub repository named by ``[project.urls] Source``."""
    urls = tomllib.loads(pyproject.read_text())["project"].get("urls", {})
    if "Source" not in urls:
        raise KeyError(f"{pyproject}: [project.urls] has no Source (the repository address the "
                       "notebooks' Colab badges and install cells are generated from)")
    match = _GITHUB.match(urls["Source"])
    if match is None:
        raise ValueError(f"{pyproject}: [project.urls] Source = {urls['Source']!r} is not "
                         "https://github.com/<owner>/<name>")
    return match["repo"]


def badge_target(repo: str, ipynb_name: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{ipynb_name}"


def install_spec(repo: str) -> str:
    return f'"mhe_jax[models] @ git+https://github.com/{repo}"'


def with_links(py_text: str, repo: str, ipynb_name: str) -> str:
    """``py_text`` with its Colab badge target and install requirement pointing at ``repo``."""
    for pattern, new in ((_BADGE_TARGET, badge_target(repo, ipynb_name)),
                         (_INSTALL_SPEC, install_spec(repo))):
        py_text, count = pattern.subn(lambda _, new=new: new, py_text)
        if count != 1:
            raise ValueError(f"{ipynb_name}: expected one match of {pattern.pattern!r} in the "
                             f".py source, found {count}")
    return py_text


def _read_py(py_text: str) -> nbformat.NotebookNode:
    return jupytext.reads(py_text, fmt="py:percent", config=CONFIG)


def to_notebook(py_text: str, stem: str) -> nbformat.NotebookNode:
    """The stripped notebook of a percent-format source; cell ids ``nb<NN>-<index>``."""
    nb = _read_py(py_text)
    nb.metadata = {**NOTEBOOK_METADATA, **EXTRA_METADATA.get(stem, {})}
    prefix = stem.split("_")[0]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"nb{prefix}-{i:02d}"
        cell["metadata"] = {}
        if cell.cell_type == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """What must agree between a pair: every cell's type and source, in order."""
    return [(c.cell_type, c.source) for c in nb.cells]


def sources(directory: Path = HERE) -> list[Path]:
    """The notebooks' .py sources in ``directory``: ``NN_name.py``."""
    return sorted(directory.glob("[0-9][0-9]_*.py"))


def stale(repo: str | None = None, directory: Path = HERE) -> list[str]:
    """Why each out-of-date notebook in ``directory`` is out of date (empty when all are in sync).

    Compares cell types and sources (not ids or metadata, which editors may rewrite), and checks
    the links and that the .ipynb carries no outputs. A .ipynb without a .py is reported too.
    """
    repo = repository() if repo is None else repo
    problems = [f"{ipynb.name}: no {ipynb.stem}.py source"
                for ipynb in sorted(directory.glob("[0-9][0-9]_*.ipynb"))
                if not ipynb.with_suffix(".py").is_file()]
    for py in sources(directory):
        ipynb = py.with_suffix(".ipynb")
        text = py.read_text()
        try:
            linked = with_links(text, repo, ipynb.name)
        except ValueError as e:
            problems.append(str(e))
            continue
        if linked != text:
            problems.append(f"{py.name}: Colab badge or install URL is not {repo!r} "
                            "([project.urls] Source)")
        if not ipynb.is_file():
            problems.append(f"{ipynb.name}: missing")
            continue
        committed = nbformat.read(ipynb, as_version=4)
        if cells(committed) != cells(to_notebook(text, py.stem)):
            problems.append(f"{ipynb.name}: cells differ from {py.name}")
        if any(c.get("outputs") or c.get("execution_count") is not None
               for c in committed.cells if c.cell_type == "code"):
            problems.append(f"{ipynb.name}: has outputs or execution counts")
    return problems


def canonical(py_text: str) -> str:
    """``py_text`` as jupytext writes it (so that a round trip through Jupyter changes nothing)."""
    nb = _read_py(py_text)
    for cell in nb.cells:
        cell.metadata = {}
    return jupytext.writes(nb, fmt="py:percent", config=CONFIG)


def write_all(repo: str | None = None, directory: Path = HERE) -> list[Path]:
    """Point the .py files at ``repo``, normalise them, and write their .ipynb; what changed."""
    repo = repository() if repo is None else repo
    written = []
    for py in sources(directory):
        ipynb = py.with_suffix(".ipynb")
        text = canonical(with_links(py.read_text(), repo, ipynb.name))
        if text != py.read_text():
            py.write_text(text)
            written.append(py)
        new = nbformat.writes(to_notebook(text, py.stem)) + "\n"
        if not ipynb.is_file() or ipynb.read_text() != new:
            ipynb.write_text(new)
            written.append(ipynb)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description="Write the notebooks' .ipynb from their .py")
    ap.add_argument("--check", action="store_true", help="only report what is out of date")
    args = ap.parse_args()
    if args.check:
        problems = stale()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("fix: edit the .py files, then run python notebooks/_sync.py", file=sys.stderr)
        return 1 if problems else 0
    for path in write_all():
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
