r"""Neurons as the columns of a matrix: reshape, rescale, normalise, sample, Gram products.

``w`` holds ``N`` neurons along ``neuron_axis``; every other axis is flattened into the neuron's
vector, giving ``W`` of shape ``(d, N)`` in the compute dtype (≥ float32).

Scale freedom. The energies depend on the directions ``ŵ_i = w_i / ‖w_i‖`` only. :func:`scale_free`
makes that exact in floating point, both ways:

* forward, each column is multiplied by a power of two that brings its largest entry to
  ``[1, 2)`` (exact, no rounding), so squaring never overflows or underflows: column norms from
  1e−30 to 1e30 in float32 give the same value as norm 1;
* backward, the radial component of each column's gradient is projected out,
  ``g_i ← g_i − (⟨g_i, w_i⟩ / ‖w_i‖²) w_i``, so ``⟨∂E/∂w_i, w_i⟩ = 0`` to rounding however
  large the pair forces are (exact duplicates, s = 50). For ``d = 1`` (the sphere ``S⁰ = {±1}``,
  where every energy is locally constant) the gradient is exactly zero.

The projection in floating point (:func:`project_gradient`; :func:`tangent_projection` is its
forward-mode transpose). With ``w`` a column of the scaled ``W`` (largest entry in ``[1, 2)``)
and ``g`` its gradient:

    c₀ = g₁ / w₁  if |w₁| ≥ 1, else 0        (a row of g: no pass over d × N)
    r  = g − c₀ w
    δ  = ⟨r, w⟩ / ‖w‖²                        (one reduction; r is not stored)
    g ← r − δ w                               (one elementwise pass, r recomputed in it)

In exact arithmetic this is the orthogonal projection (``c₀ + δ = ⟨g, w⟩/‖w‖²``). In floating
point it is "project twice" (the second coefficient comes from ``r``, so its rounding is
relative to ``r``, not ``g``) with a first step that costs no pass: when ``g`` is exactly
parallel to a column whose entries are ``±`` one power of two (identical neurons of an all-ones
kernel, ``2^k·ones``: the scaled column is ``±1`` and ``g`` is constant) ``c₀ w = g`` exactly, so
``r = 0`` and the gradient is exactly 0, which one plain projection (``⟨g, w⟩`` summed in
rounding) does not give. ``|w₁| ≥ 1`` (within a factor 2 of the column's largest entry) keeps
``|c₀ w| ≤ 2 |g₁|``, so the first step adds no more rounding than ``g`` carries.
"""

from __future__ import annotations

import jax
import jax.core  # jax.core.ShapedArray (so type checkers know the submodule)
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from mhe_jax import _checks

Array = jax.Array

_HIGHEST = lax.Precision.HIGHEST


def as_neuron_matrix(w, neuron_axis: int = -1, name: str = "w") -> Array:
    """``w`` → ``W`` of shape ``(d, N)`` in the compute dtype (≥ float32)."""
    w = _checks.check_weights(w, name)
    axis = _checks.check_axis(neuron_axis, w.ndim)
    if w.shape[axis] == 0 or w.size == 0:
        raise ValueError(
            f"{name} must have at least one neuron (along neuron_axis={neuron_axis}) and non-empty "
            f"neuron vectors; got shape {tuple(w.shape)}"
        )
    w = jnp.moveaxis(w, axis, -1)
    w = w.reshape(-1, w.shape[-1])
    return w if w.dtype == _checks.compute_dtype(w.dtype) else _upcast(w)


@jax.custom_jvp
def _upcast(w: Array) -> Array:
    """bf16/f16 → float32. Its tangent is :data:`_upcast_tangent_p`, a cast whose transpose (the
    gradient) casts back *saturating*, so a huge float32 repulsion stays finite, not inf. A
    ``custom_jvp`` with a linear tangent, not a ``custom_vjp``: forward mode (``jax.jvp``,
    ``jax.hessian``) and ``vmap`` work too."""
    return w.astype(jnp.float32)


def _to_float32(x):
    return x.astype(jnp.float32)


#: The linear map ``x ↦ float32(x)`` of a bf16/f16 tangent; transpose: saturating cast back.
_upcast_tangent_p = Primitive("mhe_upcast_tangent")
_upcast_tangent_p.def_impl(_to_float32)
_upcast_tangent_p.def_abstract_eval(lambda x: jax.core.ShapedArray(x.shape, jnp.float32))
mlir.register_lowering(_upcast_tangent_p, mlir.lower_fun(_to_float32, multiple_results=False))
batching.defvectorized(_upcast_tangent_p)


def _upcast_tangent_transpose(g, x):
    dtype = x.aval.dtype
    big = jnp.finfo(dtype).max
    return [jnp.clip(g, -big, big).astype(dtype)]


ad.deflinear2(_upcast_tangent_p, _upcast_tangent_transpose)


@_upcast.defjvp
def _upcast_jvp(primals, tangents):
    (w,), (dw,) = primals, tangents
    return _upcast(w), _upcast_tangent_p.bind(dw)


def column_scales(W: Array) -> Array:
    """(1, N) powers of two ``2^{−e_i}`` with ``max_k |W_ki| · 2^{−e_i} ∈ [1, 2)``; 1 for zero
    (or non-finite) columns.

    ``2^{e_i}`` is the largest entry with its mantissa bits cleared (exact); the scale is its
    reciprocal, the last operation, so XLA computes the row once instead of in every
    elementwise pass that multiplies by it.
    """
    # max|W| as max(max W, −min W): two plain reductions, which XLA CPU runs faster than one
    # of a fused |W|
    big = jnp.maximum(jnp.max(W, axis=0, keepdims=True), -jnp.min(W, axis=0, keepdims=True))
    ok = jnp.isfinite(big) & (big > 0)
    return 1.0 / jnp.where(ok, _leading_power_of_two(big), 1.0)


def _leading_power_of_two(x: Array) -> Array:
    """``2^⌊log₂ x⌋`` for positive normal ``x`` (its exponent bits, mantissa cleared)."""
    info = jnp.finfo(x.dtype)
    uint = jnp.uint64 if info.bits == 64 else jnp.uint32
    exponent_bits = ((1 << info.nexp) - 1) << info.nmant
    bits = lax.bitcast_convert_type(x, uint) & jnp.asarray(exponent_bits, uint)
    return lax.bitcast_convert_type(bits, x.dtype)


@jax.custom_jvp
def scale_free(W: Array) -> Array:
    """``W`` with each column rescaled by a power of two (exact); tangent-only derivative.

    See the module docstring. Use it on the input of any scale-invariant energy: the derivative
    is ``dW ↦ scale · P(dW)`` with ``P`` the projection orthogonal to each column, which is the
    true derivative composed with a scale-invariant function (their gradient is tangent), so
    first and higher derivatives are unchanged in exact arithmetic and exactly tangent here.
    """
    return W * column_scales(W)


@scale_free.defjvp
def _scale_free_jvp(primals, tangents):
    (W,), (dW,) = primals, tangents
    scale = column_scales(W)
    Ws = W * scale
    if W.shape[0] == 1:  # S⁰: the energy is locally constant
        return Ws, jnp.zeros_like(dW)
    sq = jnp.sum(Ws * Ws, axis=0, keepdims=True)
    return Ws, tangent_projection(dW * scale, Ws, sq)


def _projection_rows(Ws: Array, sq: Array) -> tuple[Array, Array]:
    """``(1/‖w‖², a)`` (1, N) of the projection: ``a = 1/w₁`` where ``|w₁| ≥ 1``, else 0.

    Reciprocals are the last operation (XLA computes the rows once); ``1/inf = 0`` where a
    step is skipped (zero columns, small first entries).
    """
    inv_sq = 1.0 / jnp.where(sq > 0, sq, jnp.inf)
    first = Ws[:1]
    return inv_sq, 1.0 / jnp.where(jnp.abs(first) >= 1.0, first, jnp.inf)


def project_gradient(g: Array, Ws: Array, sq: Array, sums_by_matmul: bool = True) -> Array:
    """The gradient ``g`` (d, N) with its component along each column ``w`` of ``Ws`` removed.

    ``Ws`` has scaled columns (:func:`column_scales`) and ``sq`` (1, N) their squared norms
    (e.g. the Gram diagonal). ``c₀ = a g₁``, ``r = g − c₀ w``, ``δ = ⟨r, w⟩/sq``, ``r − δ w``:
    the one-reduction projection of the module docstring (exact zero for a ``g`` parallel to
    a ``±2^k`` column). Zero columns (``sq = 0``) keep ``g``.

    ``sums_by_matmul``: the column sums ``⟨r, w⟩`` as a product with a row of ones (as
    :func:`tangent_projection` transposes to) or as a reduction. Only the speed differs, and
    with XLA CPU it depends on the program: the dense energy gets its ``⟨r, w⟩`` 2 % faster as a
    product (a separate matrix–vector product), the tiled one 2 % faster as a reduction (XLA
    fuses ``r∘w`` into the product there and computes it as a strided loop); measured in
    benchmarks/RESULTS.md.
    """
    inv_sq, inv_first = _projection_rows(Ws, sq)
    c0 = inv_first * g[:1]
    rw = (g - c0 * Ws) * Ws
    if sums_by_matmul:
        ones = jnp.ones((1, g.shape[0]), g.dtype)
        delta = jnp.matmul(ones, rw, precision=lax.Precision.HIGHEST) * inv_sq
    else:
        delta = jnp.sum(rw, axis=0, keepdims=True) * inv_sq
    # g − c₀w again, bit for bit, as g + (−c₀)w: a second expression XLA does not merge with
    # the reduction's, so neither is stored (one pass fewer over d × N).
    return (g + (-c0) * Ws) - delta * Ws


def tangent_projection(t: Array, Ws: Array, sq: Array) -> Array:
    """Forward-mode projection of a tangent ``t`` (d, N): the transpose of
    :func:`project_gradient`, which reverse mode then runs on a gradient.

    :func:`project_gradient` is the linear map ``g ↦ g − (c₀(g) + δ(g)) w``; this is its
    transpose ``t ↦ t − ℓ ⟨w, t⟩`` (``ℓ = w/sq + a (1 − ‖w‖²/sq) e₁``), written operation by
    operation as the transpose of :func:`project_gradient`'s (``⟨w, t⟩`` twice, for the two
    subtractions; the row of ones as an outer product), so that JAX's transpose of it rounds
    exactly as :func:`project_gradient` does (tests/test_projection.py checks they agree bit
    for bit). Both are the orthogonal projection in exact arithmetic.
    """
    inv_sq, inv_first = _projection_rows(Ws, sq)
    ones = jnp.ones((t.shape[0], 1), t.dtype)
    s_delta = jnp.sum(Ws * t, axis=0, keepdims=True)  # transposes to − δ w
    s_c0 = jnp.sum(Ws * t, axis=0, keepdims=True)  # transposes to − c₀ w (subtracted first)
    t_p = jnp.matmul(ones, -(s_delta * inv_sq), precision=lax.Precision.HIGHEST) * Ws
    t_c0 = -s_c0 - jnp.sum(t_p * Ws, axis=0, keepdims=True)  # transposes to g − c₀ w
    return (t + t_p).at[:1].add(inv_first * t_c0)  # transposes to c₀ = a g₁


def inverse_norms(W: Array, norm_eps: float = 0.0) -> Array:
    """``1 / sqrt(‖w_i‖² + norm_eps)`` as a (1, N) row; 0 for zero columns."""
    sq = jnp.sum(W * W, axis=0, keepdims=True) + norm_eps
    tiny = jnp.finfo(W.dtype).tiny
    ok = sq > tiny
    return jnp.where(ok, lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)


def normalize_columns(W: Array, norm_eps: float = 0.0) -> Array:
    """``ŵ_i = w_i / sqrt(‖w_i‖² + norm_eps)``; zero columns stay zero with a finite gradient.

    With ``norm_eps = 0`` the columns are first rescaled by powers of two (:func:`column_scales`,
    exact), so any finite norm is safe; ``norm_eps > 0`` (the official code's 1e-4) is applied
    to the raw columns, as that formula is not scale-invariant.
    """
    if isinstance(norm_eps, (int, float)) and norm_eps == 0:
        W = W * lax.stop_gradient(column_scales(W))  # ŵ does not depend on the scale
    return W * inverse_norms(W, norm_eps)


def sample_columns(W: Array, sample_size: int | None, key) -> Array:
    """``sample_size`` columns drawn without replacement (Sec. 3.6 mini-batch approximation)."""
    if sample_size is None:
        return W
    return jnp.take(W, sample_indices(W.shape[1], sample_size, key), axis=1)


def sample_indices(n: int, sample_size: int, key) -> Array:
    """The ``sample_size`` indices of :func:`sample_columns` among ``n`` columns."""
    if not isinstance(sample_size, int) or isinstance(sample_size, bool):
        raise TypeError(f"sample_size must be an int or None, got {type(sample_size).__name__}")
    if not 2 <= sample_size <= n:
        raise ValueError(f"sample_size must be in [2, N={n}], got {sample_size}")
    if key is None:
        raise ValueError("sample_size requires a PRNG key: pass key=jax.random.key(...)")
    return jax.random.choice(key, n, (sample_size,), replace=False)


def gram(Wn: Array, precision=_HIGHEST) -> Array:
    """``ŴᵀŴ`` (N, N)."""
    return jnp.matmul(Wn.T, Wn, precision=precision)


def offdiag(x: Array) -> Array:
    """``x`` with its diagonal set to zero."""
    n = x.shape[0]
    return jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), x.dtype), x)
