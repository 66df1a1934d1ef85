"""Optional dependencies: the ``[models]`` extra, and a clear error when it is not installed.

``import mhe_jax`` needs only jax, optax and numpy. The subpackages are loaded on first use
(``mhe_jax.models``, see ``mhe_jax.__getattr__``); those that need the ``[models]`` extra raise an
``ImportError`` that says so instead of a bare ``No module named 'flax'``.
"""

from __future__ import annotations

import importlib
import types

SUBPACKAGES = ("data", "experiments", "models", "sphere", "train")
"""Subpackages reachable as attributes of ``mhe_jax`` after ``import mhe_jax``."""

MODELS_EXTRA = {
    "flax": "flax",
    "matplotlib": "matplotlib",
    "orbax": "orbax-checkpoint",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "tqdm": "tqdm",
}
"""Top-level import name -> distribution name, for every package of the ``[models]`` extra."""


def missing_extra_error(subpackage: str, module: str) -> ImportError:
    """The error for ``mhe_jax.<subpackage>`` failing to import ``module`` of the models extra."""
    top = module.partition(".")[0]
    distribution = MODELS_EXTRA[top]
    return ImportError(
        f"mhe_jax.{subpackage} needs {distribution}, which is not installed: "
        f"install mhe_jax[models] (pip install 'mhe_jax[models]')",
        name=top,
    )


def import_subpackage(name: str) -> types.ModuleType:
    """Import ``mhe_jax.<name>``; a missing ``[models]`` package raises "install mhe_jax[models]".

    Any other import failure propagates unchanged.
    """
    try:
        return importlib.import_module(f"mhe_jax.{name}")
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in MODELS_EXTRA:
            raise
        raise missing_extra_error(name, error.name or "") from error
