"""The package version: the one place it is written (pyproject reads it as a dynamic attr)."""

__version__ = "0.1.0"
