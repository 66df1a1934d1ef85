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
    (or non-finite) columns."""
    big = jnp.max(jnp.abs(W), axis=0, keepdims=True)
    ok = jnp.isfinite(big) & (big > 0)
    _, e = jnp.frexp(jnp.where(ok, big, 1.0))  # big = m · 2^e, m ∈ [0.5, 1)
    return jnp.where(ok, jnp.ldexp(jnp.ones_like(big), 1 - e), 1.0)


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
    dWs = dW * scale
    sq = jnp.sum(Ws * Ws, axis=0, keepdims=True)
    ok = sq > 0
    safe_sq = jnp.where(ok, sq, 1.0)

    def project(t):
        coef = jnp.where(ok, jnp.sum(t * Ws, axis=0, keepdims=True) / safe_sq, 0.0)
        return t - coef * Ws

    # Twice ("twice is enough"): the second pass removes the rounding of the first, so a
    # tangent exactly parallel to a column (identical neurons whose entries equal one power of
    # two, e.g. an all-ones kernel) projects to exactly 0.
    return Ws, project(project(dWs))


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
