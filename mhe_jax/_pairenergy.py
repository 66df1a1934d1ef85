r"""The energy of one neuron matrix for one spec: the mean pair potential over the pairs that count.

:func:`mhe_jax._energy.energy_from_spec` is the one place that dispatches on an
:class:`mhe_jax.EnergySpec`; its variants sit below it:

* the projection (CoMHE, :mod:`mhe_jax._comhe`) averages this module's energy over projected
  copies of the neurons;
* this module (:func:`matrix_energy`) takes a neuron matrix ``W`` (d, N) to its energy: the
  kernel (built-in Riesz/log or Gaussian, or a user ``potential``: :func:`mhe_jax._kernels.
  kernel_from_spec`), sampling (``sample_size``) and grouping (``groups`` / ``pairs``), all
  through the one custom-JVP pair sum of :mod:`mhe_jax._pairsum`.

Grouped pairs. With group ids ``g_i`` (one int per neuron), only the ordered pairs ``i ≠ j`` with
``g_i = g_j`` (``pairs="within"``) or ``g_i ≠ g_j`` (``"across"``) count, and the energy is the mean
over the ``P`` pairs that count:

    E = Σ_{counted i≠j} f(dist(ŵ_i, ŵ_j)) / P.

Half-space: the virtual neuron ``−ŵ_i`` belongs to ``ŵ_i``'s group, so among the ``2N`` neurons the
pairs that count are, for each counted pair ``(i, j)``, its four copies ``(±ŵ_i, ±ŵ_j)``, and the
``N`` pairs ``(ŵ_i, −ŵ_i)`` with ``"within"`` (never with ``"across"``):

    E_half = (2 Σ_{counted i≠j} h(c_ij) + 2 n_self f(−1)) / (4P + 2 n_self),

``h(c) = f(c) + f(−c)``, ``n_self = N`` (within) or 0 (across); without groups ``P = N(N−1)``,
``n_self = N`` give the ungrouped formula of :mod:`mhe_jax._pairsum`. When no pair counts (every
group a single neuron with ``"within"``, one group with ``"across"``) the energy is **0**, with a
zero gradient (half-space ``"within"``: ``f(−1)``, the pairs ``(ŵ_i, −ŵ_i)`` still count).

``P`` is counted from the ids by sorting (``O(N log N)``); the pair mask of each tile is compared
from the ids of its rows and columns, so memory stays ``O(N·d)`` on the tiled path. With
``sample_size`` the ids are sampled with the neurons and the sum is scaled to the full set,
``Σ̂ = N(N−1)/(n(n−1)) Σ_sample``, an unbiased estimate; ``P`` is that of the full set, so value and
gradient stay unbiased (without groups, this is the ungrouped estimator exactly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mhe_jax import _tiled
from mhe_jax._kernels import Kernel, kernel_from_spec, pair_value
from mhe_jax._neurons import sample_columns
from mhe_jax._pairsum import (
    mean_energy,
    normalized_mean_energy,
    normalized_pairwise_sum,
    pairwise_sum,
)
from mhe_jax._spec import PAIRS, PRECISIONS, EnergySpec

Array = jax.Array

__all__ = ["check_groups", "check_pairs_given_groups", "counted_pairs", "grouped_kernel",
           "grouped_mean", "matrix_energy", "mean_over_pairs", "mean_and_variance"]


def check_groups(groups, n: int) -> Array:
    """``groups`` as an int32 ``(n,)`` array of group ids (errors name ``groups``)."""
    if isinstance(groups, str):
        raise TypeError(
            f"groups={groups!r} is a preset of the layer-level functions (mhe_regularizer, "
            "mhe_penalty, layer_energies), which know the layer's layout; here pass one integer "
            "group id per neuron"
        )
    if not isinstance(groups, jax.Array):
        values = np.asarray(groups)
        if values.dtype == object:
            raise TypeError(f"groups must be an integer array of shape (N,), got {groups!r}")
        groups = jnp.asarray(values)
    if groups.dtype == jnp.bool_ or not jnp.issubdtype(groups.dtype, jnp.integer):
        raise TypeError(f"groups must hold integer group ids, got dtype {groups.dtype}")
    if groups.shape != (n,):
        raise ValueError(
            f"groups must have shape (N,) = ({n},), one id per neuron, got {tuple(groups.shape)}"
        )
    return groups.astype(jnp.int32)


def check_pairs_given_groups(pairs: str, groups) -> None:
    """``pairs`` other than the default needs a grouping (else every pair counts)."""
    if groups is None and pairs != "within":
        raise ValueError(
            f"pairs={pairs!r} applies to grouped pairs: give groups= (one integer id per "
            "neuron, or groups='heads' in the regularizers); without groups every pair counts"
        )


def counted_pairs(ids: Array, pairs: str, dtype) -> tuple[Array, int]:
    """``(P, n_self)``: ordered pairs ``i ≠ j`` of ``ids`` that count, and the pairs
    ``(ŵ_i, −ŵ_i)`` that count in half-space (module docstring). ``O(N log N)``, no N × N."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    n = ids.shape[0]
    ordered = jnp.sort(ids)
    size = (jnp.searchsorted(ordered, ids, side="right")
            - jnp.searchsorted(ordered, ids, side="left"))  # size of each neuron's group
    within = jnp.sum((size - 1).astype(dtype))
    if pairs == "within":
        return within, n
    return jnp.asarray(n * (n - 1), dtype) - within, 0


def mean_over_pairs(total: Array, antipodal, half_space: bool, n: int, n_total: int,
                    counts=None) -> tuple[Array, Array]:
    """``(mean, any pair counts)`` of a pair value over the pairs that count.

    ``total``: its sum over the counted ordered pairs ``i ≠ j`` of the ``n`` (sampled) neurons
    (``v(c) + v(−c)`` in half-space); ``antipodal``: ``v(−1)`` (half-space only); ``counts``:
    :func:`counted_pairs` of the ``n_total`` neurons, or None when every pair counts.
    """
    dtype = total.dtype
    if counts is None:
        counts = (jnp.asarray(n_total * (n_total - 1), dtype), n_total)
    p, n_self = counts
    if n < n_total:  # a sample of n of the n_total neurons: scale to the full set
        total = total * ((n_total * (n_total - 1)) / (n * (n - 1)))
    if half_space:
        num = 2.0 * total + (2.0 * n_self) * antipodal
        den = 4.0 * p + 2.0 * n_self
    else:
        num, den = total, p
    den = jnp.asarray(den, dtype)
    some = den > 0
    return jnp.where(some, num / jnp.where(some, den, 1.0), jnp.zeros((), dtype)), some


def grouped_kernel(kernel: Kernel, params, pairs: str, groups: Array,
                   sample_size: int | None = None, key=None):
    """``(kernel, params)`` whose pair sums count only the ``pairs`` (``"within"`` /
    ``"across"``) of the group ids ``groups`` (N,); with ``sample_size`` the ids of the columns
    :func:`mhe_jax._neurons.sample_columns` draws with ``key`` (the same draw)."""
    ids = groups if sample_size is None else sample_columns(groups[None, :], sample_size, key)[0]
    return kernel._replace(pairs=pairs), {**params, "groups": ids}


def grouped_mean(kernel: Kernel, params, total: Array, n: int, n_total: int,
                 groups: Array) -> tuple[Array, Array]:
    """:func:`mean_over_pairs` of a pair sum ``total`` of ``n`` of the ``n_total`` neurons by a
    :func:`grouped_kernel` (its ``pairs`` and half-space), over the pairs that count among the
    ``n_total`` neurons of ``groups``."""
    antipodal = (pair_value(kernel, params, jnp.asarray(-1.0, total.dtype)) if kernel.half_space
                 else 0.0)
    counts = counted_pairs(groups, kernel.pairs, total.dtype)
    return mean_over_pairs(total, antipodal, kernel.half_space, n, n_total, counts)


def matrix_energy(W: Array, spec: EnergySpec, key=None, groups: Array | None = None) -> Array:
    """Energy of the neuron matrix ``W`` (d, N) for ``spec`` without projection or calibration.

    ``groups``: ``(N,)`` int ids (:func:`check_groups`), or None (every pair counts: the
    ungrouped path, unchanged).
    """
    n_total = W.shape[1]
    kernel, params = kernel_from_spec(spec, W.dtype)
    # Sampling commutes with the per-column scale freedom, which normalized_mean_energy and
    # normalized_pairwise_sum apply (their norm_eps = 0 derivative is scale_free's).
    gaussian = spec.kernel == "gaussian"
    if groups is None:
        W = sample_columns(W, spec.sample_size, key)
        if gaussian:
            if W.shape[1] < 2 and not spec.half_space:
                return jnp.zeros((), W.dtype)
            return jnp.log(normalized_mean_energy(kernel, params, W, n_total, spec.block_size))
        return normalized_mean_energy(kernel, params, W, n_total, spec.block_size)
    W = sample_columns(W, spec.sample_size, key)
    kernel, params = grouped_kernel(kernel, params, spec.pairs, groups, spec.sample_size, key)
    n = W.shape[1]
    zero = jnp.zeros((), W.dtype)
    total = normalized_pairwise_sum(kernel, W, params, 0.0, spec.block_size) if n > 1 else zero
    mean, some = grouped_mean(kernel, params, total, n, n_total, groups)
    if gaussian:
        return jnp.where(some, jnp.log(jnp.where(some, mean, 1.0)), zero)
    return mean


def mean_and_variance(kernel: Kernel, params, Wn: Array, groups: Array | None = None,
                      pairs: str = "within", block_size: int | None = None):
    """``(mean, variance)`` of the pair potential over the pairs that count, of the unit
    columns ``Wn`` (d, N): the mean is the energy (with its gradient; the ungrouped one is
    :func:`mhe_jax._pairsum.mean_energy`'s), the variance ``mean((f − mean)²)`` over the same
    pairs (half-space: the ``2N`` neurons) comes from a second, value-only pass, without a
    gradient.
    """
    n = Wn.shape[1]
    dtype = Wn.dtype
    zero = jnp.zeros((), dtype)
    minus_one = jnp.asarray(-1.0, dtype)
    if groups is None:
        counts = None
        mean = mean_energy(kernel, params, Wn, n, block_size)
    else:
        kernel, params = grouped_kernel(kernel, params, pairs, groups)
        counts = counted_pairs(groups, pairs, dtype)
        total = pairwise_sum(kernel, Wn, params, block_size) if n > 1 else zero
        antipodal = pair_value(kernel, params, minus_one) if kernel.half_space else 0.0
        mean = mean_over_pairs(total, antipodal, kernel.half_space, n, n, counts)[0]
    # Second pass: the squared deviations from the (constant) mean, summed like the energy.
    m = lax.stop_gradient(mean)
    params = lax.stop_gradient(params)

    def dev(c):
        return (pair_value(kernel, params, c) - m) ** 2

    h = (lambda c: dev(c) + dev(-c)) if kernel.half_space else dev
    group_mask = None if groups is None else (groups, pairs)
    precision = PRECISIONS[kernel.precision]
    total = (_tiled.pair_sum(h, lax.stop_gradient(Wn), block_size, False, precision,
                             group_mask)[0] if n > 1 else zero)
    antipodal = dev(minus_one) if kernel.half_space else 0.0
    variance = mean_over_pairs(total, antipodal, kernel.half_space, n, n, counts)[0]
    return mean, variance

