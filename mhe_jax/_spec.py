r"""The one option spec of every energy: :class:`EnergySpec`, frozen and validated once.

Every energy (:func:`mhe_jax.hyperspherical_energy`, :func:`mhe_jax.gaussian_energy`,
:func:`mhe_jax.output_energy`, :func:`mhe_jax.energy_stats`, the sharded and compressive ones) and
the layers above them (regularizer, penalty, ``layer_energies``) read their options from an
``EnergySpec``. The keyword arguments of the public functions build one and pass it on; a prebuilt
spec can be given instead with ``spec=``.

Static and traced fields. Only ``s``, ``t``, ``eps`` and ``min_distance`` are numbers that may be
traced (e.g. by ``optax.inject_hyperparams``); every structural field is a ``str``, ``bool``,
``int``/``None`` or a frozen sub-spec, never an int standing for a choice (``distance`` is a
string, ``half_space`` a bool), so none of them can be traced by accident. ``sample_size`` and
``block_size`` are ints that fix array shapes: they must stay static.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import numpy as np
from jax import lax

from mhe_jax import _checks

__all__ = ["EnergySpec", "ProjectionSpec", "PRECISIONS", "KERNELS"]

#: Gram-product precision names (see :attr:`EnergySpec.precision`) and their XLA values.
PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": lax.Precision.DEFAULT,
}
KERNELS = ("riesz", "gaussian")
PROJECTION_KINDS = ("gaussian", "orthogonal")


def _check_optional_int(value, name: str, minimum: int):
    if value is None:
        return None
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} (or None), got {value}")
    return int(value)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a str, one of {tuple(choices)}, got {type(value).__name__}"
        )
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _check_number(value, name: str, optional: bool):
    """A finite real ≥ 0 (Python/NumPy scalar or a scalar JAX array, traced values unchecked)."""
    if value is None:
        if optional:
            return None
        raise TypeError(f"{name} must be a real number, got None")
    _checks.check_nonnegative(value, name)
    if isinstance(value, (numbers.Real, np.generic)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, np.ndarray):
        return float(value)
    return value  # a JAX array (possibly traced): kept as is


@dataclasses.dataclass(frozen=True)
class ProjectionSpec:
    """CoMHE random projections (:func:`mhe_jax.compressive_energy`): ``projections`` matrices of
    shape ``(dim, d)``, ``kind`` ``"gaussian"`` or ``"orthogonal"``."""

    projections: int = 20
    dim: int = 40
    kind: str = "gaussian"

    def __post_init__(self):
        for name in ("projections", "dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
                raise TypeError(f"projection {name} must be a positive int, got {value!r}")
            if value < 1:
                raise ValueError(f"projection {name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        _check_choice(self.kind, "projection kind", PROJECTION_KINDS)

    @classmethod
    def of(cls, value) -> ProjectionSpec | None:
        """``None``, a ``ProjectionSpec`` or a mapping with its fields (unknown keys raise)."""
        if value is None or isinstance(value, ProjectionSpec):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                "projection must be None, a ProjectionSpec or a dict like "
                f"{{'projections': 20, 'dim': 40, 'kind': 'gaussian'}}, got {type(value).__name__}"
            )
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"projection has unknown keys {sorted(unknown)}; known: "
                             "'projections', 'dim', 'kind'")
        return cls(**value)


@dataclasses.dataclass(frozen=True)
class EnergySpec:
    r"""Options of a hyperspherical energy, validated once at construction.

    Fields (see :func:`mhe_jax.hyperspherical_energy` for the math):

    * ``s``: Riesz exponent ``s ≥ 0`` (``s = 0``: log energy); may be a traced scalar.
    * ``distance``: ``"euclidean"`` (chord ``‖ŵ_i − ŵ_j‖``) or ``"angular"`` (radians).
    * ``half_space``: add the virtual neurons ``−ŵ_i`` (bool).
    * ``eps``: singularity guard added to the squared distance, ``None`` = dtype default
      (1e-6 below float64, 1e-12 in float64).
    * ``min_distance``: force bound, the kernel is continued linearly below this distance.
    * ``sample_size``: energy of this many neurons drawn without replacement (needs a key).
    * ``projection``: CoMHE projections, a dict ``{"projections": P, "dim": k, "kind":
      "gaussian" | "orthogonal"}`` (stored validated, as a frozen record of those three
      fields; see :func:`mhe_jax.compressive_energy`).
    * ``calibrate``: divide by the energy of uniform random neurons
      (:func:`mhe_jax.uniform_reference_energy`; regularizer, diagnostics); ``exp(E − E_ref)``
      for ``s = 0``, whose reference may be ≤ 0.
    * ``block_size``: neurons per Gram tile (``None``: automatic).
    * ``precision``: Gram-product precision, ``"highest"`` (default: full float32 products,
      6-pass bf16 on TPU), ``"high"`` (bf16×3, about float32 accuracy but ~1e-6 relative
      error in the cosines) or ``"default"`` (one bf16 pass on TPU / TF32 on GPU: the cosines
      carry ~4e-3 error and pairs closer than ~5° are wrong; see benchmarks/RESULTS.md).
    * ``kernel``: ``"riesz"`` (``f_s``) or ``"gaussian"`` (``exp(−t r²)``, with ``t``).
    * ``t``: Gaussian temperature ``t ≥ 0``; may be traced.

    Errors name the argument (``TypeError`` for a wrong type, ``ValueError`` for a bad value).
    The spec is hashable when its numbers are concrete; :meth:`replace` gives a validated copy.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> spec = mhe_jax.EnergySpec(s=1.0, half_space=True)
      >>> w = jnp.eye(3)
      >>> round(float(mhe_jax.hyperspherical_energy(w, spec=spec)), 4)  # octahedron: mean 1/r
      0.6657
      >>> mhe_jax.EnergySpec(distance="cosine")
      Traceback (most recent call last):
      ...
      ValueError: distance must be one of ('euclidean', 'angular'), got 'cosine'
    """

    s: Any = 2.0
    distance: str = "euclidean"
    half_space: bool = False
    eps: Any = None
    min_distance: Any = None
    sample_size: int | None = None
    projection: ProjectionSpec | None = None
    calibrate: bool = False
    block_size: int | None = None
    precision: str = "highest"
    kernel: str = "riesz"
    t: Any = 2.0

    def __post_init__(self):
        put = object.__setattr__
        put(self, "s", _check_number(self.s, "s", optional=False))
        put(self, "t", _check_number(self.t, "t", optional=False))
        put(self, "eps", _check_number(self.eps, "eps", optional=True))
        put(self, "min_distance", _check_number(self.min_distance, "min_distance", optional=True))
        _check_choice(self.distance, "distance", _checks.DISTANCES)
        put(self, "half_space", _check_bool(self.half_space, "half_space"))
        put(self, "calibrate", _check_bool(self.calibrate, "calibrate"))
        put(self, "sample_size", _check_optional_int(self.sample_size, "sample_size", 2))
        put(self, "block_size", _check_optional_int(self.block_size, "block_size", 1))
        put(self, "projection", ProjectionSpec.of(self.projection))
        _check_choice(self.precision, "precision", PRECISIONS)
        _check_choice(self.kernel, "kernel", KERNELS)
        if self.min_distance is not None and self.kernel != "riesz":
            raise ValueError("min_distance applies to the Riesz/log kernels only (kernel='riesz')")

    def replace(self, **changes: Any) -> EnergySpec:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def lax_precision(self) -> lax.Precision:
        """The ``jax.lax.Precision`` of the Gram products."""
        return PRECISIONS[self.precision]

    @property
    def power(self):
        """The kernel's exponent: ``s`` (Riesz) or ``t`` (Gaussian)."""
        return self.s if self.kernel == "riesz" else self.t


def is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


# Options given as keywords or as a prebuilt spec.


def _same(value, default) -> bool:
    if value is default:
        return True
    if isinstance(value, jax.Array) or isinstance(default, jax.Array):
        return False
    if isinstance(value, bool) != isinstance(default, bool):
        return False
    try:
        return bool(value == default)
    except Exception:  # noqa: BLE001 - anything that cannot be compared is not the default
        return False


def resolve_spec(spec, defaults: dict, given: dict, **fixed) -> EnergySpec:
    """The spec of a call: ``spec`` if given (then every option must be at its default), else
    one built from the keyword options (``fixed``: fields set by the function itself)."""
    if spec is None:
        return EnergySpec(**given, **fixed)
    if not isinstance(spec, EnergySpec):
        raise TypeError(f"spec must be an EnergySpec or None, got {type(spec).__name__}")
    changed = [name for name, value in given.items() if not _same(value, defaults[name])]
    if changed:
        raise TypeError(
            f"pass the options either as keywords or in spec=, not both: got spec and {changed}"
        )
    for name, value in fixed.items():
        if getattr(spec, name) != value:
            raise ValueError(
                f"this energy needs spec.{name}={value!r}, got {getattr(spec, name)!r}"
            )
    return spec
