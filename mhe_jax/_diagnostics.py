r"""Diagnostics of a layer's neurons: smallest angle (Tammes), coherence, :class:`EnergyStats`.

Smallest angle. The cosines ``c = ŵ_iᵀŵ_j`` cannot resolve close pairs: in float32, ``arccos``
of a rounded cosine is 0 for pairs closer than about 3e-4 rad. The nearest neighbours are found
from the Gram matrix (the 4 largest cosines of each neuron), and their angles are then computed
from the vectors themselves with the well-conditioned form

    θ = 2·atan2(‖ŵ_i − ŵ_j‖, ‖ŵ_i + ŵ_j‖),

accurate to a few ulps relative for any angle (a pair 1e-4 rad apart in float32: ~1e-3
relative). A pair can only be missed if a neuron has more than 4 neighbours whose cosines are
equal after rounding (all within ~3e-4 rad in float32).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from mhe_jax._kernels import kernel_from_spec
from mhe_jax._neurons import as_neuron_matrix, gram, normalize_columns, scale_free
from mhe_jax._pairenergy import check_groups, check_pairs_given_groups, mean_and_variance
from mhe_jax._spec import EnergySpec, resolve_spec

Array = jax.Array

__all__ = ["EnergyStats", "energy_stats", "min_angle", "mean_abs_cosine"]

_NEIGHBOURS = 4


class EnergyStats(NamedTuple):
    """Energy and diagnostics of one layer from one Gram matrix.

    ``energy``: the mean of the pair potential over the pairs (that count); ``min_angle``: the
    smallest angle between two distinct neurons, in radians (Tammes); ``mean_abs_cosine``: the
    mean ``|ŵ_iᵀŵ_j|`` over ``i ≠ j`` (coherence); ``pair_variance``: the variance of the pair
    potential over the same pairs as ``energy`` (its mean).

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # pairs at 90°, 90° and 180°
      >>> energy, angle, coherence, variance = mhe_jax.energy_stats(w, s=1.0)  # a NamedTuple
      >>> round(float(energy), 4), round(float(angle), 4), round(float(coherence), 4)
      (0.6381, 1.5708, 0.3333)
      >>> round(float(variance), 4)  # of the pair terms 1/√2, 1/√2 and 1/2
      0.0095
    """

    energy: Array
    min_angle: Array  # radians, smallest angle between two distinct neurons (Tammes)
    mean_abs_cosine: Array  # mean |ŵ_iᵀŵ_j| over i ≠ j (coherence)
    pair_variance: Array  # variance of the pair potential over the pairs of `energy`


def _cosine_stats(Wn: Array):
    """(smallest angle, mean |c|) of the unit columns ``Wn`` (d, n)."""
    n = Wn.shape[1]
    if n < 2:
        z = jnp.zeros((), Wn.dtype)
        return jnp.asarray(jnp.pi, Wn.dtype), z
    c = gram(Wn)
    eye = jnp.eye(n, dtype=bool)
    coherence = jnp.sum(jnp.abs(jnp.where(eye, 0.0, c))) / (n * (n - 1))
    _, nearest = lax.top_k(jnp.where(eye, -jnp.inf, c), min(_NEIGHBOURS, n - 1))  # (n, k)
    rows = Wn.T  # (n, d)
    a = rows[:, None, :]
    b = jnp.take(rows, nearest, axis=0)  # (n, k, d)
    theta = 2.0 * jnp.arctan2(jnp.linalg.norm(a - b, axis=-1), jnp.linalg.norm(a + b, axis=-1))
    return jnp.min(theta), coherence


def energy_stats(
    w: ArrayLike,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    potential: Callable[[jax.Array], jax.Array] | None = None,
    groups: ArrayLike | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> EnergyStats:
    r""":func:`hyperspherical_energy`, :func:`min_angle`, :func:`mean_abs_cosine` and the
    variance of the pair potential together.

    The energy is the mean ``m`` of the pair potential ``f(dist(ŵ_i, ŵ_j))`` over the pairs
    (half-space: the ordered pairs of the ``2N`` neurons ``±ŵ_i``; with ``groups``: the pairs
    that count), and ``pair_variance`` is ``mean((f − m)²)`` over the same pairs, from a second
    value-only pass over the Gram tiles (two passes: no cancellation, never negative).

    Args:
      w: array with ``N`` neurons along ``neuron_axis`` (other axes flattened).
      s: Riesz exponent of the energy, as in :func:`mhe_jax.hyperspherical_energy`.
      distance: ``"euclidean"`` or ``"angular"``, as in :func:`mhe_jax.hyperspherical_energy`.
      half_space: add the virtual neurons ``−ŵ_i``, as in :func:`mhe_jax.hyperspherical_energy`.
      neuron_axis: axis of ``w`` indexing neurons.
      eps: singularity guard, as in :func:`mhe_jax.hyperspherical_energy`.
      potential: a user pair potential ``f(r)``, as in :func:`mhe_jax.hyperspherical_energy`.
      groups: one integer group id per neuron (``(N,)``): the energy and the variance are over
        the pairs that count, as in :func:`mhe_jax.hyperspherical_energy` (both 0 when none
        counts); ``min_angle`` and ``mean_abs_cosine`` stay over all pairs.
      pairs: with ``groups``, ``"within"`` or ``"across"``.
      spec: a prebuilt :class:`mhe_jax.EnergySpec` instead of the options (its ``s``,
        ``distance``, ``half_space``, ``eps``, ``min_distance``, ``precision``, ``potential``,
        ``pairs`` and ``block_size`` are used).

    Returns:
      ``EnergyStats(energy, min_angle, mean_abs_cosine, pair_variance)`` of scalars;
        ``min_angle`` in radians (π for one neuron). Only ``energy`` carries a gradient.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> stats = mhe_jax.energy_stats(jnp.eye(3), s=2.0)  # orthonormal: all pairs at 90°
      >>> round(float(stats.energy), 4), round(float(stats.min_angle), 4)
      (0.5, 1.5708)
      >>> float(stats.mean_abs_cosine), float(stats.pair_variance)  # every pair alike
      (0.0, 0.0)
      >>> w = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # pairs at 45°, 45° and 90°
      >>> st = mhe_jax.energy_stats(w, s=1.0)
      >>> round(float(st.energy), 4), round(float(st.pair_variance), 4)
      (1.1067, 0.0799)

      Only the pairs across groups (90° and 45°), and a user potential (the frame potential
      ``cos²θ`` of the chord ``r``; the cosines are 1/√2, 1/√2 and 0):

      >>> ids = jnp.array([0, 0, 1])
      >>> st = mhe_jax.energy_stats(w, s=1.0, groups=ids, pairs="across")
      >>> round(float(st.energy), 4), round(float(st.pair_variance), 4)
      (1.0068, 0.0898)
      >>> st = mhe_jax.energy_stats(w, potential=lambda r: (1 - r**2 / 2) ** 2)
      >>> round(float(st.energy), 4), round(float(st.pair_variance), 4)  # cos²: 1/2, 1/2, 0
      (0.3333, 0.0556)
    """
    given = dict(s=s, distance=distance, half_space=half_space, eps=eps, potential=potential,
                 pairs=pairs)
    defaults = dict(s=2.0, distance="euclidean", half_space=False, eps=None, potential=None,
                    pairs="within")
    spec = resolve_spec(spec, defaults, given)
    check_pairs_given_groups(spec.pairs, groups)
    W = scale_free(as_neuron_matrix(w, neuron_axis))
    if groups is not None:
        groups = check_groups(groups, W.shape[1])
    kernel, params = kernel_from_spec(spec, W.dtype)
    Wn = normalize_columns(W)
    energy, variance = mean_and_variance(kernel, params, Wn, groups, spec.pairs, spec.block_size)
    angle, coherence = _cosine_stats(lax.stop_gradient(Wn))
    return EnergyStats(energy, angle, coherence, variance)


def min_angle(w: ArrayLike, *, neuron_axis: int = -1) -> Array:
    r"""Smallest angle (radians) between two neurons; π for a single neuron.

    ``min_{i≠j} arccos(ŵ_iᵀŵ_j)``, computed in the accurate form of the module docstring, so
    close pairs keep their digits (two neurons 1e-4 rad apart in float32: 1e-4 to ~1e-3
    relative, where ``arccos`` of the rounded cosine gives 0).

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jnp.array([[1.0, 1.0], [0.0, 1e-4]], jnp.float32)
      >>> round(float(mhe_jax.min_angle(w)) * 1e4, 3)
      1.0
    """
    Wn = normalize_columns(as_neuron_matrix(w, neuron_axis))
    return _cosine_stats(Wn)[0]


def mean_abs_cosine(w: ArrayLike, *, neuron_axis: int = -1) -> Array:
    r"""Mean ``|ŵ_iᵀŵ_j|`` over ordered pairs ``i ≠ j`` (0 for a single neuron): the coherence.

    ``1/(N(N−1)) Σ_{i≠j} |ŵ_iᵀŵ_j|`` of the normalised neurons ``ŵ_i`` of ``w`` (``N`` of them
    along ``neuron_axis``, the other axes flattened into each); 0 for orthogonal neurons, 1 for
    collinear ones. Returns a scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> float(mhe_jax.mean_abs_cosine(jnp.eye(3)))  # orthonormal neurons
      0.0
      >>> w = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # two neurons 45° apart
      >>> round(float(mhe_jax.mean_abs_cosine(w)), 6)  # cos 45°
      0.707107
    """
    Wn = normalize_columns(as_neuron_matrix(w, neuron_axis))
    return _cosine_stats(Wn)[1]
