r"""Width-calibrated energies: one λ that means the same thing in every layer.

The mean pair energy of ``N`` independent uniform points on ``S^{d−1}`` does not depend on ``N``:
it is ``I(d) = E[f_s(dist(x, y))]`` for independent uniform ``x, y``. With ``t = xᵀy``, whose
density is ``∝ (1 − t²)^{(d−3)/2}``:

* Riesz, euclidean (``s < d − 1``):
  ``I_s(d) = 2^{d−2−s} Γ(d/2) Γ((d−1−s)/2) / (√π Γ(d − 1 − s/2))``;
* log (s = 0), euclidean: ``I_0(d) = −log 2 + (ψ(d − 1) − ψ((d−1)/2)) / 2``  (d = 3: ½ − log 2);
* angular: ``E[θ^{−s}]`` (or ``E[−log θ]``) with density ``∝ sin^{d−2} θ`` on ``[0, π]``, by
  Gauss–Legendre quadrature (finite for ``s < d − 1``).

For half-space MHE the ``2N`` points are not independent (``(x, −x)`` pairs), and the reference is
``(2(N − 1) I(d) + f(2)) / (2N − 1)`` (``f(π)`` for angular).

Calibrated energy (:func:`calibrate_energy`). For ``s > 0``, ``E / E_ref`` (``E_ref > 0``). The
log energy (``s = 0``) takes any sign (``I_0(d) < 0`` for ``d ≥ 3``, ``I_0(2) = 0``), so a ratio
would reverse or blow up the regularizer; it is calibrated as ``exp(E − E_ref)``, the ratio of the
geometric means of ``1/r`` (the ``s → 0`` limit of ``(mean r^{−s})^{1/s}``). Both are positive
and increasing in ``E``, with gradient a positive multiple of ``∇E``; both are ≈ 1 for random
(e.g. freshly initialised) neurons in any layer and < 1 for configurations more uniform than
random. For ``s ≥ d − 1`` the uniform expectation diverges
(e.g. s = 2 in R²) and calibration raises. The kernel ``f_s`` is :func:`mhe_jax._kernels.riesz`
(the one definition, evaluated in float64 NumPy here); the closed forms are its expectations.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from mhe_jax._kernels import riesz

__all__ = ["uniform_reference_energy", "calibrate_energy"]


def _digamma(x: float) -> float:
    result = 0.0
    while x < 6.0:
        result -= 1.0 / x
        x += 1.0
    inv = 1.0 / x
    inv2 = inv * inv
    series = inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 * (1 / 252 - inv2 / 240)))
    return result + math.log(x) - 0.5 * inv - series


def _angular_mean(d: int, s: float) -> float:
    # θ = π u^a puts nodes densely near the integrable singularity at θ = 0.
    a = max(1.0, 3.0 / max(d - 1 - s, 1e-3))
    u, wts = np.polynomial.legendre.leggauss(400)
    u = 0.5 * (u + 1.0)
    wts = 0.5 * wts
    theta = math.pi * u ** a
    jac = math.pi * a * u ** (a - 1.0)
    dens = np.sin(theta) ** (d - 2) * jac
    f = riesz(theta, s)  # the kernel of _kernels, in float64 NumPy
    return float(np.sum(wts * f * dens) / np.sum(wts * dens))


def uniform_reference_energy(n: int, d: int, *, s: float = 2.0, distance: str = "euclidean",
                             half_space: bool = False) -> float:
    r"""Expected :func:`mhe_jax.hyperspherical_energy` of ``n`` uniform random neurons in ``R^d``.

    ``E_ref = E[f_s(dist(x, y))]`` for independent uniform ``x, y`` on ``S^{d−1}`` (the same for
    every ``n``; closed forms and quadrature in the module docstring), or
    ``(2(n − 1) E_ref + f_s(2)) / (2n − 1)`` with ``half_space`` (``f_s(π)`` for ``"angular"``).
    ``s`` is a concrete number ``>= 0``; raises for ``s >= d − 1``, where the expectation
    diverges. Returns a Python float (float64 arithmetic).

    Examples:
      >>> import jax, mhe_jax
      >>> round(mhe_jax.uniform_reference_energy(100, 3, s=1.0), 6)  # Thomson: E[1/r] = 1
      1.0
      >>> ref = mhe_jax.uniform_reference_energy(2000, 10, s=2.0)
      >>> round(ref, 6)
      0.571429
      >>> w = jax.random.normal(jax.random.key(0), (10, 2000))  # 2000 random neurons in R^10
      >>> abs(float(mhe_jax.hyperspherical_energy(w, s=2.0)) / ref - 1) < 0.01
      True
    """
    if d < 2:
        raise ValueError(f"d must be >= 2 for a calibrated energy, got {d}")
    if n < 2 and not half_space:
        raise ValueError(f"n must be >= 2, got {n}")
    s = float(s)
    if s < 0:
        raise ValueError(f"s must be >= 0, got {s}")
    if s >= d - 1:
        raise ValueError(
            f"the uniform reference diverges for s >= d - 1 (s={s}, d={d}); use a smaller s or "
            "min_distance, or leave this layer uncalibrated"
        )
    if distance == "euclidean":
        if s == 0:
            ref = -math.log(2.0) + 0.5 * (_digamma(d - 1.0) - _digamma((d - 1.0) / 2.0))
        else:
            log_ref = ((d - 2 - s) * math.log(2.0) + math.lgamma(d / 2)
                       + math.lgamma((d - 1 - s) / 2)
                       - 0.5 * math.log(math.pi) - math.lgamma(d - 1 - s / 2))
            ref = math.exp(log_ref)
        antipodal = float(riesz(2.0, s))  # a float for NumPy/Python inputs
    elif distance == "angular":
        ref = _angular_mean(d, s)
        antipodal = float(riesz(math.pi, s))
    else:
        raise ValueError(f"distance must be 'euclidean' or 'angular', got {distance!r}")
    if half_space:
        return (2 * (n - 1) * ref + antipodal) / (2 * n - 1)
    return ref


def calibrate_energy(energy, reference: float, s: float):
    r"""The calibrated energy: ``E / E_ref`` for ``s > 0``, ``exp(E − E_ref)`` for ``s = 0``.

    ``reference``: :func:`uniform_reference_energy` of the layer (a Python float). Positive and
    increasing in ``energy`` for every ``s ≥ 0`` and ``d`` (module docstring); ≈ 1 when
    ``energy ≈ reference``. ``energy``: a scalar array; returns one of its dtype.
    """
    if float(s) == 0.0:
        return jnp.exp(energy - reference)
    if not (math.isfinite(reference) and reference > 0):
        raise ValueError(f"calibration reference must be finite and > 0 for s={s}, got {reference}")
    return energy / reference
