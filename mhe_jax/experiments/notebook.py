"""The setup every example notebook starts with: smoke mode, the figure folder, versions.

The notebooks in ``notebooks/`` read two environment variables (``notebooks/README.md``):

- ``MHE_JAX_SMOKE``: smoke mode (tiny sizes, no network), as CI runs every notebook. Unset,
  empty, ``0``, ``false``, ``no`` or ``off`` mean off; ``1``, ``true``, ``yes`` or ``on`` mean
  on (any case); anything else raises, naming the variable.
- ``MHE_JAX_NOTEBOOK_OUT``: the folder the figures are saved to (created if missing; a
  leading ``~`` is the home folder); unset or empty, a fresh temporary folder. A blank value
  (only spaces) raises, naming the variable.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["NotebookEnv", "notebook_setup", "smoke_mode"]

SMOKE_VARIABLE = "MHE_JAX_SMOKE"
OUT_VARIABLE = "MHE_JAX_NOTEBOOK_OUT"
_OFF = ("", "0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


class NotebookEnv(NamedTuple):
    """What a notebook's setup cell unpacks: ``SMOKE, OUT_DIR, show, T_START = ...``.

    Attributes:
      smoke: smoke mode (``MHE_JAX_SMOKE``).
      out_dir: the existing folder figures are saved to.
      show: ``show(fig, name)`` saves the matplotlib figure ``fig`` as ``out_dir/<name>.png``
        (100 dpi, tight bounding box), then displays it inline (``pyplot.show()``); returns
        the path of the PNG.
      start: ``time.perf_counter()`` at setup (for the notebook's total run time).
    """

    smoke: bool
    out_dir: Path
    show: Callable[[Any, str], Path]
    start: float


def smoke_mode(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``MHE_JAX_SMOKE`` in ``environ`` (default ``os.environ``) asks for smoke mode.

    Examples:
      >>> from mhe_jax.experiments import smoke_mode
      >>> smoke_mode({"MHE_JAX_SMOKE": "1"}), smoke_mode({"MHE_JAX_SMOKE": "no"}), smoke_mode({})
      (True, False, False)
    """
    environ = os.environ if environ is None else environ
    value = environ.get(SMOKE_VARIABLE, "").strip().lower()
    if value not in _OFF + _ON:
        raise ValueError(f"{SMOKE_VARIABLE}={environ[SMOKE_VARIABLE]!r}: use one of "
                         f"{', '.join(_ON)} (smoke mode) or {', '.join(_OFF[1:])} (or unset)")
    return value in _ON


def _out_dir(value: str, name: str) -> Path:
    """The figure folder ``value`` (``~`` expanded), created; unset or empty: a fresh
    temporary folder. A blank value or one at (or below) a regular file raises, naming the
    variable."""
    if value == "":
        return Path(tempfile.mkdtemp(prefix=f"mhe_jax_{name}_"))
    if not value.strip():
        raise ValueError(f"{OUT_VARIABLE}={value!r} is blank: set it to a folder, or unset it "
                         "(or set it empty) for a fresh temporary folder")
    out_dir = Path(value).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ValueError(f"{OUT_VARIABLE}={value!r}: {out_dir} cannot be a folder "
                         f"({type(e).__name__}: a file is in the way)") from None
    return out_dir


def notebook_setup(name: str, *, environ: Mapping[str, str] | None = None,
                   verbose: bool = True) -> NotebookEnv:
    """Smoke flag, figure folder, ``show`` and start time of the notebook ``name``.

    Reads ``MHE_JAX_SMOKE`` and ``MHE_JAX_NOTEBOOK_OUT`` from ``environ`` (default
    ``os.environ``; module docstring), creates the figure folder (without it: a fresh
    ``mhe_jax_<name>_*`` temporary folder) and, with ``verbose``, prints the versions of
    mhe_jax and jax, the devices, the smoke flag and the folder.

    Args:
      name: the notebook's name, e.g. ``"01_quickstart"`` (names the temporary folder).
      environ: the environment variables to read.
      verbose: print the versions and settings.

    Returns:
      The settings as a :class:`NotebookEnv` ``(smoke, out_dir, show, start)``.

    Examples:
      >>> import tempfile
      >>> from mhe_jax.experiments import notebook_setup
      >>> out = tempfile.mkdtemp()
      >>> SMOKE, OUT_DIR, show, T_START = notebook_setup(
      ...     "01_quickstart", environ={"MHE_JAX_SMOKE": "1", "MHE_JAX_NOTEBOOK_OUT": out},
      ...     verbose=False)
      >>> SMOKE, str(OUT_DIR) == out
      (True, True)
    """
    if not isinstance(name, str) or not name or os.sep in name or "/" in name:
        raise ValueError(f"name must be a notebook's name such as '01_quickstart', got {name!r}")
    environ = os.environ if environ is None else environ
    start = time.perf_counter()
    smoke = smoke_mode(environ)
    out_dir = _out_dir(environ.get(OUT_VARIABLE, ""), name)

    def show(fig: Any, figure_name: str) -> Path:
        import matplotlib.pyplot as plt  # lazy: matplotlib is an optional dependency

        path = out_dir / f"{figure_name}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.show()
        return path

    if verbose:
        import jax

        import mhe_jax

        print(f"mhe_jax {mhe_jax.__version__}, jax {jax.__version__}, devices {jax.devices()}")
        print(f"smoke mode: {smoke}; figures are saved to {out_dir}")
    return NotebookEnv(smoke, out_dir, show, start)
