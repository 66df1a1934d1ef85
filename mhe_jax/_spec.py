r"""The one option spec of every energy: :class:`EnergySpec`, frozen and validated once.

Every energy (:func:`mhe_jax.hyperspherical_energy`, :func:`mhe_jax.gaussian_energy`,
:func:`mhe_jax.output_energy`, :func:`mhe_jax.energy_stats`, the sharded and compressive ones) and
the layers above them (regularizer, penalty, ``layer_energies``) read their options from an
``EnergySpec``. The keyword arguments of the public functions build one and pass it on; a prebuilt
spec can be given instead with ``spec=``.

Static and traced fields. Only ``s``, ``t``, ``eps`` and ``min_distance`` are numbers that may be
traced (e.g. by ``optax.inject_hyperparams``); every structural field is a ``str``, ``bool``,
``int``/``None``, a frozen sub-spec or (``potential``) a function, never an int standing for a
choice (``distance`` is a string, ``half_space`` a bool, ``pairs`` a string), so none of them can
be traced by accident. ``sample_size`` and ``block_size`` are ints that fix array shapes: they
must stay static. Per-neuron group ids are data, not options: they are passed to the energies
next to the spec (``groups=``), and the spec only names a preset (``groups="heads"``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import jax.numpy as jnp
import numpy as np
from jax import lax

from mhe_jax import _checks

__all__ = ["EnergySpec", "ProjectionSpec", "PRECISIONS", "KERNELS", "PAIRS", "GROUP_PRESETS"]

#: Gram-product precision names (see :attr:`EnergySpec.precision`) and their XLA values.
PRECISIONS = {
    "highest": lax.Precision.HIGHEST,
    "high": lax.Precision.HIGH,
    "default": lax.Precision.DEFAULT,
}
KERNELS = ("riesz", "gaussian")
PROJECTION_KINDS = ("gaussian", "orthogonal")
#: Which pairs of a grouping count: those inside a group, or those between two groups.
PAIRS = ("within", "across")
#: Groupings the layer-level functions derive from a layer's layout (``mhe_regularizer`` ...).
GROUP_PRESETS = ("heads",)
#: The largest pair distance: the chord of antipodes (euclidean), π radians (angular).
_MAX_DISTANCE = {"euclidean": 2.0, "angular": math.pi}


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


def _concrete_float(value) -> float | None:
    """``float(value)`` of a concrete number (Python, NumPy or a concrete JAX scalar), else None."""
    if value is None or is_traced(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check_potential(f, distance: str, eps, min_distance) -> None:
    """A user potential: a hashable callable, a float scalar for a float scalar, and finite (value
    and derivative) wherever the energies evaluate it (see :class:`EnergySpec`)."""
    if not callable(f):
        raise TypeError(
            "potential must be a callable f(r) of the pair distance r (a JAX-traceable scalar "
            f"function), got {type(f).__name__}"
        )
    try:
        hash(f)
    except TypeError:
        raise TypeError(
            "potential must be hashable (a function: it is a static option of the spec), got an "
            f"unhashable {type(f).__name__}"
        ) from None
    dtype = "float64" if jax.config.read("jax_enable_x64") else "float32"
    eps_value = _concrete_float(eps)
    if eps_value is None or eps_value <= 0:
        eps_value = 1e-12 if dtype == "float64" else 1e-6  # _kernels.default_eps
    md = _concrete_float(min_distance)
    lower = "traced" if min_distance is not None and md is None else md
    _validate_potential(f, distance, eps_value, lower, dtype)


@functools.lru_cache(maxsize=256)
def _validate_potential(f, distance: str, eps: float, min_distance, dtype: str) -> None:
    """The checks of :func:`_check_potential` that call ``f`` (cached: a spec is rebuilt often)."""
    r_max = _MAX_DISTANCE[distance]
    hi = math.sqrt(r_max * r_max + eps)  # the kernel sees r = sqrt(dist² + eps)
    if isinstance(min_distance, float) and min_distance > 0:
        lo, where = min(min_distance, hi), f"[min_distance, {r_max:.4g}]"
    elif min_distance == "traced":  # a traced bound is not known here: check above r = 1
        lo, where = 1.0, f"[1, {r_max:.4g}] (min_distance is traced)"
    else:
        lo, where = math.sqrt(eps), f"(0, {r_max:.4g}]"
    grid = np.unique(np.concatenate([np.geomspace(lo, hi, 49), [min(1.0, hi), min(2.0, hi)]]))
    grid = grid[grid >= lo]
    with jax.ensure_compile_time_eval():  # eager even when the spec is built under a trace
        try:
            out = f(jnp.asarray(1.0, dtype))
        except Exception as e:  # noqa: BLE001 - any failure of user code is reported as such
            raise TypeError(
                "potential must be a JAX-traceable function of a float scalar r: potential(1.0) "
                f"raised {type(e).__name__}: {e}"
            ) from e
        kind = getattr(out, "dtype", None)
        if kind is None and isinstance(out, float):
            kind = np.dtype(dtype)
        if np.shape(out) != () or kind is None or not jnp.issubdtype(kind, jnp.floating):
            raise TypeError(
                "potential must return a float scalar for a float scalar r: potential(1.0) gave "
                f"{type(out).__name__} {getattr(out, 'dtype', '')} of shape {np.shape(out)}"
            )
        r = jnp.asarray(grid, dtype)
        try:
            values, slopes = jax.vmap(jax.value_and_grad(
                lambda x: jnp.asarray(f(x), dtype)))(r)
        except Exception as e:  # noqa: BLE001
            raise TypeError(
                "potential must be differentiable by JAX (its derivative gives the pair forces): "
                f"jax.grad(potential) raised {type(e).__name__}: {e}"
            ) from e
        values, slopes = np.asarray(values), np.asarray(slopes)
    bad = ~(np.isfinite(values) & np.isfinite(slopes))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"potential must be finite, with a finite derivative, on {where} ({distance} "
            f"distance): potential({grid[i]:.6g}) = {values[i]:.6g}, derivative "
            f"{slopes[i]:.6g} in {dtype}. A potential that is only defined above some distance "
            "needs min_distance= (below it the potential is continued linearly)"
        )


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
    * ``potential``: a user pair potential ``f(r)`` in place of ``f_s``: a JAX-traceable scalar
      function of the pair distance ``r`` (chord or radians, as ``distance``), a static option
      (a function, hashed by identity; never traced). Its derivative comes from JAX. Checked here:
      callable, a float scalar for a float scalar, finite with a finite derivative on
      ``(0, 2]`` (``(0, π]`` for ``"angular"``; from ``sqrt(eps)``, or from ``min_distance``
      when given, below which it is continued linearly), on a grid of 50 distances there
      (a pole between grid points is not seen). It replaces the Riesz kernel: ``s`` must
      stay at its default (a traced ``s``, as ``optax.inject_hyperparams`` injects it, is
      ignored), ``kernel`` must be ``"riesz"`` and ``calibrate`` False. Large values are not
      saturated as ``f_s``'s are: keep ``f`` finite in the compute dtype.
    * ``groups``: a grouping preset the layer-level functions derive from a layer's layout:
      ``"heads"`` (the neurons of one attention head form a group; see
      :func:`mhe_jax.mhe_regularizer`). Per-neuron group ids are data, passed to the energies
      as ``groups=`` next to the spec.
    * ``pairs``: with a grouping, which pairs count: ``"within"`` a group (default) or
      ``"across"`` groups; the energy is the mean over the pairs that count.

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
      >>> gauss = mhe_jax.EnergySpec(potential=lambda r: jnp.exp(-2.0 * r**2))  # a user f(r)
      >>> round(float(mhe_jax.hyperspherical_energy(w, spec=gauss)), 4)  # exp(−2 · 2)
      0.0183
      >>> mhe_jax.EnergySpec(potential=lambda r: 1 / jnp.sqrt(r - 0.5))  # NaN below 0.5
      Traceback (most recent call last):
      ...
      ValueError: potential must be finite, with a finite derivative, on (0, 2] ...

      The ``"heads"`` preset of the layer-level functions: one energy per attention head of a
      query kernel ``(in, heads, head_dim)`` (2 heads of 2 neurons, at 90° and 45°):

      >>> heads = mhe_jax.EnergySpec(s=1.0, groups="heads")
      >>> q = jnp.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
      >>> params = {"attn": {"query": {"kernel": q}}}
      >>> round(float(mhe_jax.mhe_penalty(params, 1.0, spec=heads)), 4)  # mean over heads
      1.0068
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
    potential: Callable[[Any], Any] | None = None
    groups: str | None = None
    pairs: str = "within"

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
        _check_choice(self.pairs, "pairs", PAIRS)
        if self.groups is not None:
            if not isinstance(self.groups, str):
                raise TypeError(
                    f"groups in a spec names a preset, one of {GROUP_PRESETS}, got "
                    f"{type(self.groups).__name__}; per-neuron group ids are passed to the "
                    "energy itself (hyperspherical_energy(w, groups=ids))"
                )
            _check_choice(self.groups, "groups", GROUP_PRESETS)
        if self.potential is not None:
            if self.kernel != "riesz":
                raise ValueError(
                    f"potential replaces the Riesz kernel: give potential or kernel="
                    f"{self.kernel!r}, not both"
                )
            s = _concrete_float(self.s)
            if s is not None and s != 2.0:
                raise ValueError(
                    f"potential and s cannot both be given (got s={s!r}): the potential replaces "
                    "the Riesz kernel f_s"
                )
            if self.calibrate:
                raise ValueError(
                    "calibrate=True divides by the uniform reference of the built-in Riesz/log "
                    "kernels: it is not defined for a user potential"
                )
            _check_potential(self.potential, self.distance, self.eps, self.min_distance)

    def replace(self, **changes: Any) -> EnergySpec:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def lax_precision(self) -> lax.Precision:
        """The ``jax.lax.Precision`` of the Gram products."""
        return PRECISIONS[self.precision]

    @property
    def power(self):
        """The kernel's exponent: ``s`` (Riesz) or ``t`` (Gaussian); 0 with a ``potential``."""
        if self.potential is not None:
            return 0.0
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
