r"""The regularizers MHE is compared against in the paper (Tables 6–7), in the same optax style.

* orthonormal (Sec. 4, [30]):  ``Σ_l ‖Ŵ_lᵀŴ_l − I‖²_F`` with normalised neurons (default; the
  diagonal is then exactly zero and this is ``Σ_{i≠j} c_ij²``), or ``‖W_lᵀW_l − I‖²_F`` on the raw
  weights with ``normalize=False`` (which also pulls every norm to 1).
* orthogonality ([36], "the sum of the cosine values between all the kernel weights"):
  ``Σ_l Σ_{i≠j} |c_ij|`` (``power=1``, default) or ``Σ_{i≠j} c_ij²`` (``power=2``). Absolute values:
  the signed sum would reward anti-correlated, not orthogonal, neurons.

Layer selection (``mask``, ``neuron_axis``) follows :func:`mhe_jax.mhe_regularizer`.
"""

from __future__ import annotations

import jax.numpy as jnp

from mhe_jax import _energy
from mhe_jax._transform import penalty_transformation

__all__ = ["orthonormal_penalty", "orthogonality_penalty", "orthonormal_regularizer",
           "orthogonality_regularizer"]


def _gram_of(w, neuron_axis, normalize):
    W = _energy.as_neuron_matrix(w, neuron_axis)
    return _energy.gram(_energy.normalize_columns(W) if normalize else W)


def orthonormal_penalty(w, *, normalize: bool = True, neuron_axis: int = -1):
    """``‖ŴᵀŴ − I‖²_F`` of one layer (``W`` raw when ``normalize=False``)."""
    c = _gram_of(w, neuron_axis, normalize)
    return jnp.sum((c - jnp.eye(c.shape[0], dtype=c.dtype)) ** 2)


def orthogonality_penalty(w, *, power: int = 1, neuron_axis: int = -1):
    """``Σ_{i≠j} |ŵ_iᵀŵ_j|^power`` of one layer."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    c = _energy.offdiag(_gram_of(w, neuron_axis, True))
    return jnp.sum(jnp.abs(c) if power == 1 else c * c)


def _layers_sum(fn):
    def penalty(weights, layers, strengths, key, **extra):
        del key, extra
        return strengths[0] * sum(fn(w, neuron_axis=layer.neuron_axis) for w, layer in zip(weights, layers))
    return penalty


def orthonormal_regularizer(strength, *, normalize: bool = True, mask=None, neuron_axis=-1,
                            max_norm=None):
    """Add ``strength · ∇ Σ_l ‖Ŵ_lᵀŴ_l − I‖²_F`` to the updates (``strength``: number or schedule)."""
    fn = lambda w, neuron_axis: orthonormal_penalty(w, normalize=normalize, neuron_axis=neuron_axis)  # noqa: E731
    return penalty_transformation(_layers_sum(fn), (strength,), mask=mask, neuron_axis=neuron_axis,
                                  max_norm=max_norm)


def orthogonality_regularizer(strength, *, power: int = 1, mask=None, neuron_axis=-1, max_norm=None):
    """Add ``strength · ∇ Σ_l Σ_{i≠j} |c_ij|^power`` to the updates."""
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power!r}")
    fn = lambda w, neuron_axis: orthogonality_penalty(w, power=power, neuron_axis=neuron_axis)  # noqa: E731
    return penalty_transformation(_layers_sum(fn), (strength,), mask=mask, neuron_axis=neuron_axis,
                                  max_norm=max_norm)
