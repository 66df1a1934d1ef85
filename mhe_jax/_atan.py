r"""``atan2(y, x)`` for ``y ≥ 0`` from a polynomial, so that XLA can vectorise it.

Why. On CPU, XLA lowers ``atan2``/``arccos`` to scalar library calls (~35 ns an element on the
benchmark machine, against ~1 ns for ``sqrt``, ``log``, ``exp`` or an FMA), which made the angular
energies' N² elementwise pass cost more than the Gram matmul itself.

How. With ``a = min(|x|, y) / max(|x|, y) ∈ [0, 1]``, reduce once more with
``atan(a) = π/4 + atan((a − 1)/(a + 1))`` for ``a > tan(π/8)``, so that ``|z| ≤ tan(π/8)``, and
evaluate ``atan(z) = z + z³·g(z²)`` where ``g`` is a Chebyshev least-squares fit of
``(atan(z) − z)/z³`` on ``u = z² ∈ [0, tan²(π/8)]`` (degree 13 for float64, 6 for float32; the
Chebyshev coefficients decay like 25^{−k}, so both reach their format's rounding error). Then
undo the reductions: ``π/2 − t`` where ``y > |x|``, ``π − t`` where ``x < 0``. Only FMAs, two
divisions and selects remain.

The derivative is the exact one of ``atan2``, ``(x·dy − y·dx)/(x² + y²)``, not the polynomial's.
NaN arguments give NaN (value and derivative), so a diverged weight is never hidden
behind a finite angle.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_TAN_PI_8 = math.tan(math.pi / 8)
_U_MAX = _TAN_PI_8**2


@functools.cache
def _chebyshev_coefficients(degree: int) -> tuple[float, ...]:
    """Coefficients of g(u) = (atan(√u) − √u)/u^{3/2} in Chebyshev polynomials of
    t = 2u/U_MAX − 1."""
    t = np.cos(np.pi * (np.arange(4 * degree) + 0.5) / (4 * degree))  # Chebyshev nodes
    u = (t + 1.0) * (_U_MAX / 2)
    # atan(z) − z by its alternating series (no cancellation): Σ_{k≥1} (−1)^k z^{2k+1}/(2k+1)
    k = np.arange(1, 40)[:, None]
    g = np.sum((-1.0) ** k * u ** (k - 1) / (2 * k + 1), axis=0)
    return tuple(float(c) for c in np.polynomial.chebyshev.chebfit(t, g, degree))  # weak-typed


def _clenshaw(coefficients, t):
    """Σ_k c_k T_k(t) (Clenshaw's recurrence)."""
    b1 = jnp.zeros_like(t)
    b2 = jnp.zeros_like(t)
    for c in coefficients[:0:-1]:
        b1, b2 = 2.0 * t * b1 - b2 + c, b1
    return t * b1 - b2 + coefficients[0]


def _atan_reduced(z):
    """atan(z) for |z| ≤ tan(π/8)."""
    degree = 13 if jnp.finfo(z.dtype).bits > 32 else 6
    u = z * z
    g = _clenshaw(_chebyshev_coefficients(degree), u * (2.0 / _U_MAX) - 1.0)
    return z + z * u * g


@jax.custom_jvp
def atan2_nonneg(y, x):
    """``atan2(y, x) ∈ [0, π]`` for ``y ≥ 0`` (elementwise, floating inputs of one dtype)."""
    ax = jnp.abs(x)
    swap = y > ax
    num = jnp.where(swap, ax, y)
    den = jnp.where(swap, y, ax)
    # ``den == 0`` (not ``den > 0``): a NaN argument must give NaN, never a finite angle.
    a = jnp.where(den == 0, 0.0, num / jnp.where(den == 0, 1, den))
    big = a > _TAN_PI_8
    t = _atan_reduced(jnp.where(big, (a - 1.0) / (a + 1.0), a))
    t = jnp.where(big, t + math.pi / 4, t)
    t = jnp.where(swap, math.pi / 2 - t, t)
    return jnp.where(x < 0, math.pi - t, t)


@atan2_nonneg.defjvp
def _atan2_nonneg_jvp(primals, tangents):
    y, x = primals
    dy, dx = tangents
    r2 = x * x + y * y
    zero = r2 == 0  # NaN arguments give a NaN derivative, as atan2's
    safe = jnp.where(zero, 1, r2)
    return atan2_nonneg(y, x), jnp.where(zero, 0.0, (x * dy - y * dx) / safe)


def atan2_builtin(y, x):
    """XLA's ``atan2`` (vectorised on GPU/TPU; its derivative is ``atan2``'s too)."""
    return jnp.arctan2(y, x)


def platform_atan2(y, x):
    """``atan2(y, x)`` for ``y ≥ 0``, chosen per backend when the program is compiled.

    CPU: :func:`atan2_nonneg` (XLA's CPU ``atan2`` is a scalar library call); GPU/TPU and any
    other backend: the built-in, which is vectorised there. Selected with
    ``jax.lax.platform_dependent``, so one traced program carries both and the compiler keeps
    the branch of the device it runs on. Both agree to a few ulps (tests/test_atan.py).
    """
    return jax.lax.platform_dependent(y, x, cpu=atan2_nonneg, default=atan2_builtin)
