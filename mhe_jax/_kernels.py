r"""Pair kernels on a cosine: the only definition of the energies' math.

For two unit neurons with cosine ``c = ŵ_iᵀŵ_j`` the pair distance ``r`` and kernel value are

* euclidean  ``r² = 2 − 2c + eps``                       (chord ``‖ŵ_i − ŵ_j‖``, Eq. 1)
* angular    ``r² = θ² + eps``,  ``θ = a·atan2(sqrt((1 − c)(1 + c) + eps²), c) + b``  (Eq. 5)
  (``a = 1, b = 0``: radians; the official code uses ``a = 1/π``, ``b = 1e−4``)
* Riesz      ``f_s(r) = r^{−s}`` (s > 0), ``f_0(r) = log(1/r) = −log r``  (Eq. 1, 2)
* Gaussian   ``exp(−t r²)``
* potential  ``f(r)``, a user function of the distance (``EnergySpec.potential``), ``r = √r²``

and for half-space MHE the pair function is ``h(c) = f(c) + f(−c)`` (virtual neurons ``−ŵ``).

``eps`` keeps a finite, still repulsive kernel for duplicates and antipodes (a relative change
``O(eps / r²)``). ``eps²`` under the root only keeps ``atan2``'s derivative finite at ``c = ±1``.

Tangent continuation (force bound). Below a distance ``r0`` a Riesz/log kernel is continued by its
tangent line, ``f(r) = f(r0) + f'(r0)(r − r0)`` for ``r < r0``, i.e. ``f(r0)(1 + s(1 − r/r0))``
(``−log r0 + 1 − r/r0`` for the log kernel): unchanged above ``r0``, C¹, and the pair force never
exceeds ``|f'(r0)| = s·r0^{−s−1}``. ``r0`` is the larger of

* the user's ``min_distance`` (if any), and
* the *saturation distance* ``r_sat = exp(−L/s)`` where ``f_s(r_sat) = e^L``,
  ``L = log(float max) − log(1 + s) − 30`` (about 54.8 in float32 and 675 in float64 for s = 50).
  It keeps every value and gradient finite for any ``s ≥ 0``: each pair's value is at most
  ``(1 + s)·e^L`` and a sum over up to ``~1e6`` pairs cannot overflow. It only acts where
  ``f_s`` would exceed ``e^L`` (≈ 6e23 in float32): in float32 that needs ``s ≳ 8`` with the
  default eps (e.g. s = 50: pairs closer than 0.33 in chord, about 19°); in float64 ``s ≳ 49``.
  When ``s`` and ``eps`` are concrete and ``f_s`` cannot reach ``e^L`` (``s·log(1/√eps) ≤ L``),
  the continuation is left out of the program.

A user potential gets the same tangent continuation below ``min_distance`` (if given):
``f(r0) + f'(r0)(r − r0)``, with ``f(r0)`` and ``f'(r0)`` from one ``jax.jvp`` of ``f``; it is
not saturated (``f`` is the user's to keep finite). Its derivative in the pair sums comes from
JAX differentiating ``f`` inside the same ``jax.jvp`` as the built-in kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mhe_jax import _checks
from mhe_jax._atan import platform_atan2

Array = jax.Array

__all__ = [
    "Kernel",
    "make_kernel",
    "kernel_from_spec",
    "pair_energy",
    "riesz",
    "default_eps",
    "pair_value",
    "pair_function",
]

_SATURATION_MARGIN = 30.0


class Kernel(NamedTuple):
    """Static description of a pair kernel (hashable, safe as a ``nondiff_argnum``).

    ``kind`` is ``"riesz"`` (f_s, log at s = 0) or ``"gaussian"`` (exp(−t r²)); ``power`` is the
    concrete value of s / t when known at trace time (enables exact fast paths), else ``None``
    and the value is read from the traced ``params["p"]``. ``angle_scale``/``angle_offset``
    map θ → scale·θ + offset (1/π and 1e-4 in the official code). ``capped``: a tangent
    continuation below ``params["log_r0"]`` (module docstring). ``precision``: the Gram
    products' precision name (see :class:`mhe_jax.EnergySpec`). ``potential``: the user's
    ``f(r)`` for ``kind == "potential"``. ``pairs``: ``"all"``, or with group ids in
    ``params["groups"]`` the pairs ``"within"`` / ``"across"`` groups (the pair sums mask the
    others, tile by tile).
    """

    kind: str
    distance: str
    half_space: bool = False
    power: float | None = None
    angle_scale: float = 1.0
    angle_offset: float = 0.0
    capped: bool = False
    precision: str = "highest"
    potential: Callable | None = None
    pairs: str = "all"


def default_eps(dtype) -> float:
    """Default singularity guard: 1e-6 below float64, 1e-12 in float64."""
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def saturation_log(s, dtype):
    """``L = log(float max) − log(1 + s) − 30``: the log of the largest kernel value kept."""
    log_max = math.log(float(jnp.finfo(dtype).max))
    if _checks.is_concrete_number(s):
        return log_max - math.log1p(float(s)) - _SATURATION_MARGIN
    return log_max - jnp.log1p(s) - _SATURATION_MARGIN


def _may_saturate(power, eps, dtype) -> bool:
    """Whether f_s can exceed e^L (static; True when s or eps is traced)."""
    if power is None or not _checks.is_concrete_number(eps):
        return True
    if power == 0.0:
        return False
    if float(eps) <= 0.0:
        return True
    return power * (-0.5 * math.log(float(eps))) > saturation_log(power, dtype)


def make_kernel(kind: str, distance: str, half_space: bool, p, eps, dtype, min_distance=None,
                precision: str = "highest", potential=None, **angle):
    """Split (kernel, params) so traced hyperparameters stay in ``params``.

    ``kind="potential"`` (with ``potential=f``): the user's kernel ``f(r)``; ``p`` is unused.
    """
    if kind == "potential":
        return _potential_kernel(distance, half_space, eps, dtype, min_distance, precision,
                                 potential, **angle)
    _checks.check_distance(distance)
    _checks.check_nonnegative(p, "s" if kind == "riesz" else "t")
    if eps is None:
        eps = default_eps(dtype)
    _checks.check_nonnegative(eps, "eps")
    power = float(p) if _checks.is_concrete_number(p) else None
    if min_distance is not None:
        if kind != "riesz":
            raise ValueError("min_distance applies to the Riesz/log kernels only")
        _checks.check_nonnegative(min_distance, "min_distance")
    saturate = kind == "riesz" and _may_saturate(power, eps, dtype)
    capped = kind == "riesz" and (min_distance is not None or saturate)
    kernel = Kernel(kind, distance, bool(half_space), power, capped=capped, precision=precision,
                    **angle)
    params = {"p": jnp.asarray(p, dtype), "eps": jnp.asarray(eps, dtype)}
    if capped:
        floor = jnp.asarray(-1e4, dtype)  # log r0 stays finite (r0 = 0: never continued)
        log_r0 = floor
        if min_distance is not None:
            md = jnp.asarray(min_distance, dtype)
            log_r0 = jnp.where(md > 0, jnp.log(jnp.where(md > 0, md, 1.0)), floor)
        if saturate:
            pp = params["p"]
            log_sat = -saturation_log(pp, dtype) / jnp.where(pp > 0, pp, 1.0)
            log_r0 = jnp.maximum(log_r0, jnp.where(pp > 0, log_sat, floor))
        params["log_r0"] = jnp.asarray(log_r0, dtype)
    return kernel, params


def _potential_kernel(distance, half_space, eps, dtype, min_distance, precision, potential,
                      **angle):
    """(kernel, params) of a user potential: ``params["r0"]`` is the continuation distance."""
    _checks.check_distance(distance)
    if not callable(potential):
        raise TypeError(f"potential must be a callable, got {type(potential).__name__}")
    if eps is None:
        eps = default_eps(dtype)
    _checks.check_nonnegative(eps, "eps")
    capped = min_distance is not None
    kernel = Kernel("potential", distance, bool(half_space), None, capped=capped,
                    precision=precision, potential=potential, **angle)
    params = {"p": jnp.zeros((), dtype), "eps": jnp.asarray(eps, dtype)}
    if capped:
        _checks.check_nonnegative(min_distance, "min_distance")
        params["r0"] = jnp.asarray(min_distance, dtype)
    return kernel, params


def kernel_from_spec(spec, dtype, **angle):
    """(kernel, params) of an :class:`mhe_jax.EnergySpec` for arrays of ``dtype``."""
    if spec.potential is not None:
        return make_kernel("potential", spec.distance, spec.half_space, 0.0, spec.eps, dtype,
                           spec.min_distance, spec.precision, spec.potential, **angle)
    return make_kernel(spec.kernel, spec.distance, spec.half_space, spec.power, spec.eps, dtype,
                       spec.min_distance, spec.precision, **angle)


def _log_r_and_sq(k: Kernel, params, c):
    """(log r, r²) of the pair distance r for cosine c (euclidean z or scaled angle)."""
    eps = params["eps"]
    if k.distance == "euclidean":
        r2 = jnp.maximum(2.0 - 2.0 * c, 0.0) + eps
        return 0.5 * jnp.log(r2), r2
    # eps² under the root only keeps arccos' derivative finite at c = ±1 (an O(eps) change of θ);
    # the collision guard is the same as for z: r² = θ² + eps.
    sin = jnp.sqrt(jnp.maximum((1.0 - c) * (1.0 + c), 0.0) + eps * eps)
    theta = k.angle_scale * platform_atan2(sin, c) + k.angle_offset  # per backend, see _atan
    r2 = theta * theta + eps
    return 0.5 * jnp.log(r2), r2


def riesz_from_log(log_r, r2, s, power=None, xp=jnp):
    """``f_s(r)`` from ``log r`` and ``r²``: ``r^{−s}``, or ``−log r`` at ``s = 0``.

    ``power``: the concrete value of ``s`` when known (exact cheaper forms); ``xp``: ``jax.numpy``
    or ``numpy`` (the float64 quadratures of :mod:`mhe_jax._calibration`).
    """
    if power is not None:
        if power == 0.0:
            return -log_r
        if power == 2.0:
            return 1.0 / r2
        if power == 1.0:
            return (xp.sqrt(r2) ** -1) if xp is np else jax.lax.rsqrt(r2)
        return xp.exp(-power * log_r)
    return xp.where(s == 0, -log_r, xp.exp(-s * log_r))


def riesz(r, s):
    """``f_s(r) = r^{−s}`` (s > 0) or ``log(1/r)`` (s = 0) of distances ``r`` (NumPy or JAX)."""
    numpy_in = not isinstance(r, jax.Array) and not isinstance(s, jax.Array)
    xp = np if numpy_in else jnp
    r = xp.asarray(r, np.float64) if numpy_in else r
    power = float(s) if _checks.is_concrete_number(s) else None
    out = riesz_from_log(xp.log(r), r * r, s, power, xp)
    return float(out) if numpy_in and np.ndim(out) == 0 else out


def _potential_value(k: Kernel, params, r2: Array) -> Array:
    """``f(r)`` of a user potential (applied elementwise), continued linearly below ``r0``."""
    potential = k.potential
    assert potential is not None  # kind == "potential"
    f = jnp.vectorize(potential)  # a scalar function: vmapped over the tile
    r = jnp.sqrt(r2)
    if not k.capped:
        return f(r).astype(r2.dtype)
    r0 = params["r0"]
    on = r0 > 0  # min_distance = 0: never continued
    r0 = jnp.where(on, r0, jnp.ones_like(r0))
    f0, slope = jax.jvp(potential, (r0,), (jnp.ones_like(r0),))  # f(r0), f'(r0): two scalars
    below = on & (r < r0)
    value = f(jnp.where(below, r0, r)).astype(r2.dtype)  # f is never evaluated below r0
    return jnp.where(below, (f0 + slope * (r - r0)).astype(r2.dtype), value)


def pair_value(k: Kernel, params, c: Array) -> Array:
    """``f(dist(c))`` elementwise, with the tangent continuation of the module docstring."""
    log_r, r2 = _log_r_and_sq(k, params, c)
    p = params["p"]
    if k.kind == "gaussian":
        return jnp.exp(-p * r2)
    if k.kind == "potential":
        return _potential_value(k, params, r2)
    value = riesz_from_log(log_r, r2, p, k.power)
    if not k.capped:
        return value
    log_r0 = params["log_r0"]
    below = log_r < log_r0
    rho = jnp.exp(jnp.where(below, log_r, log_r0) - log_r0)  # r / r0 ≤ 1 where used
    if k.power is not None and k.power == 0.0:
        tangent = -log_r0 + 1.0 - rho
    else:
        f0 = riesz_from_log(log_r0, jnp.exp(2.0 * log_r0), p, None)
        tangent = jnp.where(p == 0, -log_r0 + 1.0 - rho, f0 * (1.0 + p * (1.0 - rho)))
    return jnp.where(below, tangent, value)


def pair_function(k: Kernel, params):
    """h(c): f(c) for full space, f(c) + f(−c) for half space."""
    if k.half_space:
        return lambda c: pair_value(k, params, c) + pair_value(k, params, -c)
    return lambda c: pair_value(k, params, c)


def pair_energy(c, *, s: ArrayLike = 2.0, distance: str = "euclidean", eps=None,
                min_distance=None, half_space: bool = False, angle_scale: float = 1.0,
                angle_offset: float = 0.0) -> Array:
    r"""Pair kernel ``f_s(dist(c))`` of cosines ``c`` (any shape), elementwise.

    The public entry point to the kernels (e.g. for point-set solvers that form their own
    cosines): the same function the energies sum, with the same ``eps`` guard (``None``: dtype
    default, ``0``: the bare formula), ``min_distance`` force bound and saturation for large
    ``s`` (module docstring); ``half_space`` gives ``f(c) + f(−c)``. Differentiable in ``c``;
    ``s`` may be traced.
    """
    c = jnp.asarray(c)
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.float32)
    k, params = make_kernel("riesz", distance, half_space, s, eps, c.dtype, min_distance,
                            angle_scale=angle_scale, angle_offset=angle_offset)
    return pair_function(k, params)(c)
