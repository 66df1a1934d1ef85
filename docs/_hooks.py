"""mkdocs hook: expand ``<!-- public-api: mhe_jax.<package> -->`` into mkdocstrings directives.

Each API page names its main objects by hand (``::: mhe_jax.hyperspherical_energy``) in sections;
the marker line at the end of the page becomes one ``::: <package>.<name>`` directive for every
other public name of the package, so a name added to a package's ``__init__`` is documented
without editing the docs. Public names: ``__all__`` where the package defines it, otherwise every
attribute that does not start with ``_`` and is not a module (the explicit ``x as x`` re-exports).

The docstrings cross-reference with Sphinx roles (``:func:`min_angle```), which mkdocstrings
shows verbatim; ``on_page_content`` drops the role and keeps the code span.

The public objects are defined in private modules (``mhe_jax._energy``) and re-exported, so the
rendered types and defaults carry private paths in their hover titles (``mhe_jax._tree.Mask``,
``mhe_jax.EnergyStats (mhe_jax._diagnostics.EnergyStats)``). ``on_post_page``, which runs after
mkdocs-autorefs has written the cross-references' titles, replaces each by the public name of the
same object, or by what the alias stands for (``str | Callable[[str], bool]``, ``'relocate'``),
and drops a class's "Bases:" line when every base is private (``_Section``). It then checks the
page and logs a warning, which fails ``mkdocs build --strict``, for what the reader must never
see: a private ``mhe_jax`` path, literal double backticks (a docstring's code span that Markdown
did not take), a parameter row naming several parameters (``s, distance:`` in an Args
section, which griffe cannot match to the signature, so it renders as a required parameter
without a type), and a Returns section split into several rows or read as a named value.
"""

from __future__ import annotations
import __future__

import html
import importlib
import logging
import re
import types
from typing import Any

MARKER = re.compile(r"^<!-- public-api: ([\w.]+) -->$", re.MULTILINE)
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
SPHINX_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):(?=<code>)")
PACKAGES = ("mhe_jax", "mhe_jax.sphere", "mhe_jax.models", "mhe_jax.data", "mhe_jax.train",
            "mhe_jax.experiments")
# a dotted path with a private part (``mhe_jax._tree.Mask``, ``jax.jaxlib._jax.Array``)
PRIVATE_PATH = re.compile(r"\b[A-Za-z]\w*(?:\.\w+)*\._[A-Za-z]\w*(?:\.\w+)*")
MHE_PRIVATE_PATH = re.compile(r"\bmhe_jax(?:\.\w+)*\._[A-Za-z]\w*(?:\.\w+)*")
TITLE = re.compile(r'title="([^"]*)"')
# autorefs' tooltip of a re-exported name ends with its canonical path: "mhe_jax.X (mhe_jax._m.X)"
CANONICAL = re.compile(r"\s*\((?:[\w.]*\._[\w.]*)\)")
GROUPED_PARAMETER = re.compile(
    r'<tr class="doc-section-item">\s*<td>\s*<code>(\w+(?:\s*,\s*\w+)+)</code>')
# "Bases: _Section": a class's bases, dropped when all are private (an implementation detail)
BASES = re.compile(r'<p class="doc doc-class-bases">(.*?)</p>', re.DOTALL)
RETURNS_TABLE = re.compile(r'doc-section-title">Returns:</span></p>\s*<table>\s*<thead>(.*?)'
                           r"</thead>\s*<tbody>(.*?)</tbody>", re.DOTALL)
log = logging.getLogger("mkdocs.hooks.mhe_jax")


def public_names(package: str) -> list[str]:
    """The public names of ``package``, sorted (see the module docstring)."""
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            name
            for name in dir(module)
            if not name.startswith("_")
            and not isinstance(getattr(module, name), types.ModuleType | __future__._Feature)
        ]
    return sorted(names)


def expand(markdown: str) -> str:
    """``markdown`` with each public-api marker replaced by the directives it stands for."""
    documented = set(DIRECTIVE.findall(markdown))

    def directives(match: re.Match[str]) -> str:
        package = match.group(1)
        rest = [f"{package}.{n}" for n in public_names(package)]
        rest = [path for path in rest if path not in documented]
        return "\n\n".join(f"::: {path}" for path in rest)

    return MARKER.sub(directives, markdown)


def strip_sphinx_roles(html: str) -> str:
    """``:func:`x``` in a docstring renders as ``:func:<code>x</code>``: keep only the code."""
    return SPHINX_ROLE.sub("", html)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return expand(markdown)


def on_page_content(html: str, **kwargs: Any) -> str:
    return strip_sphinx_roles(html)


def on_post_page(output: str, **kwargs: Any) -> str:
    # after mkdocs-autorefs, which writes the cross-references' titles in on_env
    output = public_titles(output)
    page = kwargs.get("page")
    where = page.file.src_uri if page is not None else "page"
    for problem in dict.fromkeys(page_problems(output)):
        log.warning("%s: %s", where, problem)
    return output


def _resolve(path: str) -> Any:
    """The object at the dotted ``path`` (module prefix, then attributes); raises if none."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def _public_path(obj: Any, name: str) -> str | None:
    """``<package>.<name>`` when a documented package exports ``obj`` as ``name``."""
    import jax

    if obj is jax.Array:
        return "jax.Array"
    for package in PACKAGES:
        module = importlib.import_module(package)
        if name in public_names(package) and getattr(module, name, None) is obj:
            return f"{package}.{name}"
    return None


def public_title(path: str) -> str:
    """What a hover title shows for the private ``path``: the public name of the same object,
    else the alias's meaning (a type's union or a constant's value); "" if neither is known."""
    name = path.rpartition(".")[2]
    try:
        obj = _resolve(path)
    except (ImportError, AttributeError):
        return ""
    public = _public_path(obj, name)
    if public is not None:
        return public
    if isinstance(obj, str | int | float | tuple) and not isinstance(obj, bool):
        return repr(obj)
    if isinstance(obj, types.UnionType | types.GenericAlias) or type(obj).__module__ == "typing":
        text = repr(obj).replace("collections.abc.", "").replace("typing.", "")
        return PRIVATE_PATH.sub(lambda m: _public_or_short(m.group(0)), text)
    return ""


def _public_or_short(path: str) -> str:
    """The public path of the object at ``path``, else its last name (``jax.jaxlib._jax.Array``,
    as ``repr`` writes the class of ``jaxlib._jax``: ``jax.Array``)."""
    name = path.rpartition(".")[2]
    if name == "Array" and path.startswith("jax."):
        return "jax.Array"
    try:
        return _public_path(_resolve(path), name) or name
    except (ImportError, AttributeError):
        return name


def public_titles(html_text: str) -> str:
    """Hover titles without private paths (see the module docstring)."""

    def fix(match: re.Match[str]) -> str:
        title = html.unescape(match.group(1))
        if not PRIVATE_PATH.search(title):
            return match.group(0)
        title = CANONICAL.sub("", title)
        title = PRIVATE_PATH.sub(lambda m: public_title(m.group(0)), title).strip()
        return f'title="{html.escape(title, quote=True)}"' if title else ""

    html_text = TITLE.sub(fix, html_text)
    return BASES.sub(lambda m: "" if _private_bases_only(m.group(1)) else m.group(0), html_text)


def _private_bases_only(bases_html: str) -> bool:
    names = [re.sub(r"<[^>]+>", "", code).strip()
             for code in re.findall(r"<code>(.*?)</code>", bases_html, re.DOTALL)]
    return bool(names) and all(name.rpartition(".")[2].startswith("_") for name in names)


def page_problems(html_text: str) -> list[str]:
    """What a rendered API page must not show (see the module docstring), one line each."""
    problems = [f"private path {m.group(0)!r}" for m in MHE_PRIVATE_PATH.finditer(html_text)]
    for m in re.finditer("``", html_text):
        context = re.sub(r"<[^>]+>", "", html_text[max(0, m.start() - 80):m.end() + 40])
        problems.append(f"literal double backticks near {' '.join(context.split())!r}")
    problems += [f"one row for several parameters: {m.group(1)!r} (give each its own line)"
                 for m in GROUPED_PARAMETER.finditer(html_text)]
    for m in RETURNS_TABLE.finditer(html_text):
        head, rows = m.group(1), m.group(2).count("<tr")
        if "<th>Name</th>" in head:  # "A :class:`X`: ..." reads as a return value named "A"
            problems.append("a Returns entry with a name: start its text with no 'word:'")
        if rows > 1:  # each line at the section's indentation is an entry of its own
            problems.append(f"Returns split into {rows} rows: indent the continuation lines")
    return problems
