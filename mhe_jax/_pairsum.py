r"""Pair sums with custom derivatives: ``Σ_{i≠j} h(ŵ_iᵀŵ_j)`` and the mean energies built on it.

``h`` is the pair function of :mod:`mhe_jax._kernels` (never a copy). :func:`pairwise_sum` is a
``custom_jvp`` whose derivative is one matmul of ``Ŵ`` with the ``N × N`` matrix ``h'(C)`` (by
symmetry of ``C``), so energy and gradient cost two Gram-sized matmuls plus fused elementwise
work; the schedule (dense, or symmetric row tiles) is :mod:`mhe_jax._tiled`'s.

Means. Over the ``N(N−1)`` ordered pairs, ``E = Σ_{i≠j} h(c_ij) / (N(N−1))`` (Eq. 4). Half-space
MHE adds the virtual neurons ``−ŵ_i``: with ``h(c) = f(c) + f(−c)`` the mean over the
``2N(2N−1)`` ordered pairs of ``{ŵ_i} ∪ {−ŵ_i}`` is

    E_half = ((N − 1) · mean_{i≠j} h(c_ij) + f(−1)) / (2N − 1),

computed from the same ``N × N`` cosines (the pairs ``(ŵ_i, −ŵ_i)`` have ``c = −1``).

Grouped pairs: a kernel with ``pairs`` ``"within"`` / ``"across"`` sums only the pairs that count
for the group ids ``params["groups"]`` (masked tile by tile, :mod:`mhe_jax._tiled`); the means
over the pairs that count are :mod:`mhe_jax._pairenergy`'s.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from mhe_jax import _tiled
from mhe_jax._kernels import Kernel, pair_function, pair_value
from mhe_jax._neurons import (
    column_scales,
    inverse_norms,
    normalize_columns,
    project_gradient,
)
from mhe_jax._spec import PRECISIONS

Array = jax.Array

__all__ = ["pairwise_sum", "normalized_pairwise_sum", "mean_energy", "normalized_mean_energy",
           "mean_from_sum"]


def _no_param_tangents(dparams):
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(dparams)):
        raise NotImplementedError(
            "differentiating an energy with respect to s, t or eps is not supported"
        )


def _groups(k: Kernel, params):
    """``(ids, pairs)`` of a grouped kernel for :func:`mhe_jax._tiled.pair_sum`, else None."""
    return None if k.pairs == "all" else (params["groups"], k.pairs)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3))
def pairwise_sum(k: Kernel, Wn: Array, params, block_size: int | None = None) -> Array:
    """``Σ_{i≠j} h(ŵ_iᵀŵ_j)`` over the columns of ``Wn`` (d, n).

    Computed by :func:`mhe_jax._tiled.pair_sum` with the kernel's pair function: dense
    up to ``_tiled.DENSE_MAX`` neurons, else in row tiles of ``block_size`` (default
    ``_tiled.DEFAULT_BLOCK``) over the upper triangle of blocks; ``block_size`` forces tiling.
    """
    return _tiled.pair_sum(pair_function(k, params), Wn, block_size, False,
                           PRECISIONS[k.precision], _groups(k, params))[0]


@functools.partial(pairwise_sum.defjvp, symbolic_zeros=True)
def _pairwise_sum_jvp(k: Kernel, block_size, primals, tangents):
    Wn, params = primals
    dWn, dparams = tangents
    _no_param_tangents(dparams)
    h = pair_function(k, params)
    precision = PRECISIONS[k.precision]
    groups = _groups(k, params)
    if isinstance(dWn, SymbolicZero):
        value = _tiled.pair_sum(h, Wn, block_size, False, precision, groups)[0]
        return value, jnp.zeros_like(value)
    # dE = Σ_ij h'(c_ij)(ŵ_i·dŵ_j + dŵ_i·ŵ_j) = 2 ⟨Ŵ h'(C), dŴ⟩ since h'(C) is symmetric; the
    # force Ŵ h'(C) comes with the value from one pass over the tiles (h, h' from one jax.jvp).
    value, force = _tiled.pair_sum(h, Wn, block_size, True, precision, groups)
    return value, 2.0 * jnp.sum(force * dWn)


def mean_energy(
    k: Kernel, params, Wn: Array, n_total: int, block_size: int | None = None
) -> Array:
    """Mean pair energy of the full (or half-space) set, from the columns ``Wn``.

    ``Wn`` may be a uniform sample of the ``n_total`` neurons: the mean over sampled pairs is an
    unbiased estimate of the mean over all pairs, and the half-space constants use ``n_total``,
    so value and gradient stay unbiased. ``block_size``: see :func:`pairwise_sum`.
    """
    n = Wn.shape[1]
    total = pairwise_sum(k, Wn, params, block_size) if n > 1 else jnp.zeros((), Wn.dtype)
    return mean_from_sum(k, params, total, n, n_total)


def normalized_mean_energy(
    k: Kernel, params, W: Array, n_total: int, block_size: int | None = None,
    norm_eps: float = 0.0,
) -> Array:
    """:func:`mean_energy` of ``normalize_columns(W, norm_eps)``, normalising inside the pair sum.

    Same value and gradient; the normalisation is fused into the pair computation (see
    :func:`normalized_pairwise_sum`), which saves the passes over the normalised copy.
    """
    n = W.shape[1]
    total = (
        normalized_pairwise_sum(k, W, params, norm_eps, block_size)
        if n > 1 else jnp.zeros((), W.dtype)
    )
    return mean_from_sum(k, params, total, n, n_total)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3, 4))
def normalized_pairwise_sum(
    k: Kernel, W: Array, params, norm_eps: float = 0.0, block_size: int | None = None
) -> Array:
    """``pairwise_sum(k, normalize_columns(W, norm_eps), params, block_size)``.

    ``norm_eps = 0`` (the scale-invariant energies): ``W`` may have any column norms; the
    derivative is that of ``scale_free(W)`` (:mod:`mhe_jax._neurons`): columns rescaled by
    powers of two, gradient projected orthogonal to each column. ``norm_eps > 0`` (the
    official formula, not scale-invariant): the plain derivative of the raw columns.

    Its derivative is computed without differentiating through a normalised copy: for the dense
    path (``N ≤ _tiled.DENSE_MAX`` or one tile) the normalisation is folded into the ``N × N``
    work (:func:`mhe_jax._tiled.dense_normalized`): energy and gradient cost the Gram product
    and one more matmul, and the projection reads the squared norms off the Gram diagonal;
    the tiled path uses the force of :func:`pairwise_sum`'s rule.
    """
    return pairwise_sum(k, normalize_columns(W, norm_eps), params, block_size)


@functools.partial(normalized_pairwise_sum.defjvp, symbolic_zeros=True)
def _normalized_pairwise_sum_jvp(k: Kernel, norm_eps, block_size, primals, tangents):
    W, params = primals
    dW, dparams = tangents
    _no_param_tangents(dparams)
    h = pair_function(k, params)
    precision = PRECISIONS[k.precision]
    scale_free_w = isinstance(norm_eps, (int, float)) and norm_eps == 0
    groups = _groups(k, params)
    if isinstance(dW, SymbolicZero):
        value = _tiled.pair_sum(h, normalize_columns(W, norm_eps), block_size, False, precision,
                                groups)[0]
        return value, jnp.zeros_like(value)
    dense = _tiled.is_dense(W.shape[1], block_size)
    if not scale_free_w:  # norm_eps > 0: the plain derivative of the raw columns
        if dense:
            value, grad, _ = _tiled.dense_normalized(h, W, norm_eps, precision, groups)
            return value, jnp.sum(grad * dW)
        Wn, dWn = jax.jvp(lambda W: normalize_columns(W, norm_eps), (W,), (dW,))
        value, force = _tiled.pair_sum(h, Wn, block_size, True, precision, groups)
        return value, 2.0 * jnp.sum(force * dWn)
    # Scale-free: W_s = W·scale (powers of two); the gradient w.r.t. W_s is projected orthogonal
    # to each column here (project_gradient), not through scale_free's tangent map, so that in
    # reverse mode the cotangent (1/(N(N−1)) of the mean), the scale and the projection share one
    # elementwise pass over d × N.
    scale = column_scales(W)
    Ws = W * scale
    if dense:
        # the squared norms come off the Gram diagonal
        value, grad, sq = _tiled.dense_normalized(h, Ws, 0.0, precision, groups)
        factor, by_matmul = scale, True
    else:
        # ŵ = w_s/‖w_s‖: dE = Σ_i ⟨2 f_i, (I − ŵ_iŵ_iᵀ) dw_s,i⟩ / ‖w_s,i‖ for the force f, so the
        # projected force (times 2/‖w_s,i‖) is the gradient: the projection replaces the
        # normalisation's backward pass.
        sq = jnp.sum(Ws * Ws, axis=0, keepdims=True)
        inv = inverse_norms(Ws)
        value, grad = _tiled.pair_sum(h, Ws * inv, block_size, True, precision,
                                       groups)
        assert grad is not None  # with_force
        factor, by_matmul = 2.0 * scale * inv, False
    if W.shape[0] == 1:  # S⁰: the energy is locally constant
        return value, jnp.zeros_like(value)
    return value, jnp.sum(project_gradient(grad, Ws, sq, by_matmul) * (dW * factor))


def mean_from_sum(k: Kernel, params, total: Array, n: int, n_total: int) -> Array:
    """:func:`mean_energy` from ``total = Σ_{i≠j} h(c_ij)`` over ``n`` of ``n_total`` neurons."""
    pairs = n * (n - 1)
    mean_h = total / pairs if pairs else jnp.zeros((), total.dtype)
    if not k.half_space:
        return mean_h
    f_antipodal = pair_value(k, params, jnp.asarray(-1.0, total.dtype))
    return ((n_total - 1) * mean_h + f_antipodal) / (2 * n_total - 1)
