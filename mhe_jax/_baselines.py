r"""The regularizers MHE is compared against in the paper (Tables 6–7), in the same optax style.

For one layer with neuron matrix ``W`` of shape ``(d, N)`` (columns ``w_i``, normalised
``ŵ_i = w_i/‖w_i‖``, cosines ``c_ij = ŵ_iᵀŵ_j``):

* orthonormal (Sec. 4, [30]):  ``‖ŴᵀŴ − I‖²_F`` with normalised neurons (default; the
  diagonal is then exactly zero and this is ``Σ_{i≠j} c_ij²``), or ``‖WᵀW − I‖²_F`` on the raw
  weights with ``normalize=False`` (which also pulls every norm to 1).
* orthogonality ([36], "the sum of the cosine values between all the kernel weights"):
  ``Σ_{i≠j} |c_ij|`` (``power=1``, default) or ``Σ_{i≠j} c_ij²`` (``power=2``). Absolute values:
  the signed sum would reward anti-correlated, not orthogonal, neurons.

The regularizers add ``λ · ∇ Σ_l penalty(W_l)`` over the selected layers; layer selection
(``mask``, ``neuron_axis``, ``layout``) follows :func:`mhe_jax.mhe_regularizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.typing import ArrayLike

from mhe_jax import _checks, _layouts
from mhe_jax._layouts import NeuronAxes
from mhe_jax._transform import (
    ScalarOrSchedule,
    _value,
    check_strength,
    penalty_transformation,
)
from mhe_jax._tree import Mask, NeuronAxis

__all__ = ["orthonormal_penalty", "orthogonality_penalty", "orthonormal_regularizer",
           "orthogonality_regularizer"]


def _matrix(w, neuron_axis) -> jax.Array:
    w = _checks.check_weights(w)
    W = _layouts.neuron_matrix(w, _layouts.normalize_axes(neuron_axis, w.ndim))
    return W.astype(_checks.compute_dtype(W.dtype))


def _unit_columns(W: jax.Array) -> jax.Array:
    sq = jnp.sum(W * W, axis=0, keepdims=True)
    ok = sq > jnp.finfo(W.dtype).tiny
    return W * jnp.where(ok, lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)  # zero neurons stay zero


def _gram(W, normalize: bool) -> jax.Array:
    U = _unit_columns(W) if normalize else W
    return jnp.matmul(U.T, U, precision=lax.Precision.HIGHEST)


def _check_power(power):
    if power not in (1, 2) or isinstance(power, bool):
        raise ValueError(f"power must be 1 or 2, got {power!r}")


#: ``neuron_axis=`` of the one-layer penalties: the neuron axes of ``w``.
LayerAxes = int | Sequence[int] | NeuronAxes


def orthonormal_penalty(
    w: ArrayLike, *, normalize: bool = True, neuron_axis: LayerAxes = -1
) -> jax.Array:
    """``‖ŴᵀŴ − I‖²_F`` of one layer (``W`` raw when ``normalize=False``).

    ``w`` has its ``N`` neurons along ``neuron_axis`` (an int or a tuple of ints); the other axes
    are flattened into each neuron. Returns a scalar.

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> float(mhe_jax.orthonormal_penalty(jnp.eye(3)))
      0.0
      >>> round(float(mhe_jax.orthonormal_penalty(jnp.array([[1.0, 1.0], [0.0, 1.0]]))), 6)
      1.0
    """
    c = _gram(_matrix(w, neuron_axis), normalize)
    return jnp.sum((c - jnp.eye(c.shape[0], dtype=c.dtype)) ** 2)


def orthogonality_penalty(
    w: ArrayLike, *, power: int = 1, neuron_axis: LayerAxes = -1
) -> jax.Array:
    """``Σ_{i≠j} |ŵ_iᵀŵ_j|^power`` of one layer (shapes as in :func:`orthonormal_penalty`).

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> w = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # two neurons 45° apart
      >>> round(float(mhe_jax.orthogonality_penalty(w)), 6)  # 2 · cos 45°
      1.414214
    """
    _check_power(power)
    c = _gram(_matrix(w, neuron_axis), True)
    c = jnp.where(jnp.eye(c.shape[0], dtype=bool), 0.0, c)
    return jnp.sum(jnp.abs(c) if power == 1 else c * c)


@dataclasses.dataclass(frozen=True)
class _LayersSum:
    """``strength · Σ_l fn(W_l)`` over the selected layers' ``(d, N)`` matrices."""

    fn: Callable[[jax.Array], jax.Array]
    strength: Any

    def strengths(self, count) -> dict:
        return {"strength": _value(self.strength, count)}

    def __call__(self, matrices, layers, count, key, **unused_extra) -> jax.Array:
        del layers, key
        return _value(self.strength, count) * sum(self.fn(W) for W in matrices)


def orthonormal_regularizer(
    strength: ScalarOrSchedule,
    *,
    normalize: bool = True,
    mask: Mask = None,
    neuron_axis: NeuronAxis = None,
    layout: str = "flax",
    max_norm: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Add ``strength · ∇ Σ_l ‖Ŵ_lᵀŴ_l − I‖²_F`` to the updates (``strength``: number ≥ 0 or
    schedule; ``state.strength`` holds the current one).

    Examples:
      >>> import jax.numpy as jnp, optax, mhe_jax
      >>> params = {"Dense_0": {"kernel": jnp.eye(3)}}
      >>> tx = mhe_jax.orthonormal_regularizer(0.1)
      >>> updates, state = tx.update({"Dense_0": {"kernel": jnp.ones((3, 3))}}, tx.init(params),
      ...                            params)
      >>> float(updates["Dense_0"]["kernel"].sum())  # orthonormal already: nothing added
      9.0
    """
    check_strength(strength, "strength")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {normalize!r}")

    penalty = _LayersSum(lambda W: orthonormal_penalty(W, normalize=normalize), strength)
    return penalty_transformation(penalty, strengths=penalty.strengths, mask=mask,
                                  neuron_axis=neuron_axis, layout=layout, max_norm=max_norm)


def orthogonality_regularizer(
    strength: ScalarOrSchedule,
    *,
    power: int = 1,
    mask: Mask = None,
    neuron_axis: NeuronAxis = None,
    layout: str = "flax",
    max_norm: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Add ``strength · ∇ Σ_l Σ_{i≠j} |c_ij|^power`` to the updates.

    Examples:
      >>> import jax.numpy as jnp, optax, mhe_jax
      >>> params = {"linear": {"weight": jnp.array([[1.0, 0.0], [1.0, 1.0]])}}  # (out, in)
      >>> tx = mhe_jax.orthogonality_regularizer(1.0, layout="equinox")
      >>> zeros = {"linear": {"weight": jnp.zeros((2, 2))}}
      >>> updates, _ = tx.update(zeros, tx.init(params), params)
      >>> bool(jnp.any(updates["linear"]["weight"] != 0))
      True
    """
    check_strength(strength, "strength")
    _check_power(power)

    penalty = _LayersSum(lambda W: orthogonality_penalty(W, power=power), strength)
    return penalty_transformation(penalty, strengths=penalty.strengths, mask=mask,
                                  neuron_axis=neuron_axis, layout=layout, max_norm=max_norm)
