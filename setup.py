"""Long description for the package index: README.md with its relative links made absolute.

README's links such as ``[notebook](notebooks/01_quickstart.ipynb)`` work on the repository host
but break on PyPI, so the long description rewrites them against ``[project.urls] Source`` from
pyproject.toml (links to ``blob/main/``, images to ``raw/main/``). Everything else about the
package is declared in pyproject.toml.
"""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent

# [text](target) or ![alt](target); a target with a scheme (https:, mailto:) or a bare #anchor is
# already absolute.
_LINK = re.compile(r"(!?)\[([^\]]*)\]\((?![a-zA-Z][a-zA-Z0-9+.-]*:|#)([^)\s]+)\)")


def source_url(root: pathlib.Path = ROOT) -> str:
    """The repository address, ``[project.urls] Source`` in pyproject.toml."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return project["urls"]["Source"].rstrip("/")


def absolute_links(markdown: str, base: str) -> str:
    """``markdown`` with every relative link and image made absolute against ``base``."""

    def rewrite(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        kind = "raw" if bang else "blob"
        return f"{bang}[{text}]({base}/{kind}/main/{target.removeprefix('./')})"

    return _LINK.sub(rewrite, markdown)


def long_description(root: pathlib.Path = ROOT) -> str:
    """README.md with absolute links, as published on the package index."""
    return absolute_links((root / "README.md").read_text(encoding="utf-8"), source_url(root))


if __name__ == "__main__":
    from setuptools import setup

    setup(long_description=long_description(), long_description_content_type="text/markdown")
