"""mkdocs hook: expand ``<!-- public-api: mhe_jax.<package> -->`` into mkdocstrings directives.

Each API page names its main objects by hand (``::: mhe_jax.hyperspherical_energy``) in sections;
the marker line at the end of the page becomes one ``::: <package>.<name>`` directive for every
other public name of the package, so a name added to a package's ``__init__`` is documented
without editing the docs. Public names: ``__all__`` where the package defines it, otherwise every
attribute that does not start with ``_`` and is not a module (the explicit ``x as x`` re-exports).

The docstrings cross-reference with Sphinx roles (``:func:`min_angle```), which mkdocstrings
shows verbatim; ``on_page_content`` drops the role and keeps the code span.
"""

from __future__ import annotations
import __future__

import importlib
import re
import types
from typing import Any

MARKER = re.compile(r"^<!-- public-api: ([\w.]+) -->$", re.MULTILINE)
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
SPHINX_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):(?=<code>)")


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
