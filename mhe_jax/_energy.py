r"""Hyperspherical energies: the math of the paper, in one place.

Notation. ``w`` holds ``N`` neurons along ``neuron_axis``; every other axis is flattened into the
neuron's vector, giving ``W`` of shape ``(d, N)``. Neurons are projected on the unit sphere,
``ŵ_i = w_i / ‖w_i‖``, and everything is a function of the cosines ``c_ij = ŵ_iᵀŵ_j``:

* euclidean distance  ``z_ij = ‖ŵ_i − ŵ_j‖ = sqrt(2 − 2 c_ij)``          (Eq. 1)
* angular distance    ``θ_ij = arccos(c_ij)`` in radians                 (Eq. 5, A-MHE)
* Riesz kernel        ``f_s(r) = r^{−s}`` (s > 0), ``f_0(r) = log(1/r)``  (Eq. 1, 2)

The energy is the mean over the ``N(N−1)`` ordered pairs, ``E = Σ_{i≠j} f_s(r_ij) / (N(N−1))``
(Eq. 4). Half-space MHE adds the virtual neurons ``−ŵ_i``: with ``h(c) = f(c) + f(−c)`` the mean
over the ``2N(2N−1)`` ordered pairs of ``{ŵ_i} ∪ {−ŵ_i}`` is

    E_half = ((N − 1) · mean_{i≠j} h(c_ij) + f(−1)) / (2N − 1),

computed from the same ``N × N`` cosines (the pairs ``(ŵ_i, −ŵ_i)`` have ``c = −1``).

Numerical safety. A small ``eps`` is added where the kernel would be singular: ``z² = 2 − 2c + eps``
and ``r² = θ² + eps`` with ``θ = atan2(sqrt((1 − c)(1 + c) + eps²), c)``. Both keep a non-zero repulsive gradient for
near-duplicates (no clamp), are finite for duplicates and antipodes, and change values by a
relative ``O(eps / r²)``. Zero neurons are left at the origin (finite value, zero gradient).

All reductions over pairs go through :func:`pairwise_sum`, a ``custom_jvp`` whose derivative is
one matmul of ``Ŵ`` with the ``N × N`` matrix ``h'(C)`` (by symmetry of ``C``), so energy and
gradient cost two Gram-sized matmuls plus fused elementwise work.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from mhe_jax import _checks, _tiled
from mhe_jax._atan import atan2_nonneg

Array = jax.Array

__all__ = [
    "hyperspherical_energy",
    "gaussian_energy",
    "output_energy",
    "official_energy",
    "energy_stats",
    "EnergyStats",
    "min_angle",
    "mean_abs_cosine",
    "OFFICIAL_STRENGTHS",
    "uniformity_loss",
]

_HIGHEST = lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------
# Neurons: reshape, normalise, sample.
# --------------------------------------------------------------------------------------------


def as_neuron_matrix(w, neuron_axis: int = -1, name: str = "w") -> Array:
    """``w`` → ``W`` of shape ``(d, N)`` in the compute dtype (≥ float32)."""
    w = _checks.check_weights(w, name)
    axis = _checks.check_axis(neuron_axis, w.ndim)
    w = jnp.moveaxis(w, axis, -1)
    w = w.reshape(-1, w.shape[-1])
    return w if w.dtype == _checks.compute_dtype(w.dtype) else _upcast(w)


@jax.custom_vjp
def _upcast(w: Array) -> Array:
    return w.astype(jnp.float32)


def _upcast_fwd(w):
    return _upcast(w), jnp.zeros((0,), w.dtype)


def _upcast_bwd(res, g):
    # Saturating cast back to bf16/f16: a huge (float32) repulsion stays finite, not inf.
    big = jnp.finfo(res.dtype).max
    return (jnp.clip(g, -big, big).astype(res.dtype),)


_upcast.defvjp(_upcast_fwd, _upcast_bwd)


def normalize_columns(W: Array, norm_eps: float = 0.0) -> Array:
    """``ŵ_i = w_i / sqrt(‖w_i‖² + norm_eps)``; zero columns stay zero with a finite gradient."""
    return W * inverse_norms(W, norm_eps)


def inverse_norms(W: Array, norm_eps: float = 0.0) -> Array:
    """``1 / sqrt(‖w_i‖² + norm_eps)`` as a (1, N) row; 0 for zero columns."""
    sq = jnp.sum(W * W, axis=0, keepdims=True) + norm_eps
    tiny = jnp.finfo(W.dtype).tiny
    ok = sq > tiny
    return jnp.where(ok, lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)


def sample_columns(W: Array, sample_size: int | None, key) -> Array:
    """``sample_size`` columns drawn without replacement (Sec. 3.6 mini-batch approximation)."""
    if sample_size is None:
        return W
    n = W.shape[1]
    if not isinstance(sample_size, int) or isinstance(sample_size, bool):
        raise TypeError(f"sample_size must be an int or None, got {type(sample_size).__name__}")
    if not 2 <= sample_size <= n:
        raise ValueError(f"sample_size must be in [2, N={n}], got {sample_size}")
    if key is None:
        raise ValueError("sample_size requires a PRNG key: pass key=jax.random.key(...)")
    idx = jax.random.choice(key, n, (sample_size,), replace=False)
    return jnp.take(W, idx, axis=1)


def gram(Wn: Array) -> Array:
    return jnp.matmul(Wn.T, Wn, precision=_HIGHEST)


def default_eps(dtype) -> float:
    """Default singularity guard: 1e-6 below float64, 1e-12 in float64."""
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6


# --------------------------------------------------------------------------------------------
# Pair kernels: f(c) for a pair with cosine c.
# --------------------------------------------------------------------------------------------


class Kernel(NamedTuple):
    """Static description of a pair kernel (hashable, safe as a ``nondiff_argnum``).

    ``kind`` is ``"riesz"`` (f_s, log at s = 0) or ``"gaussian"`` (exp(−t r²)); ``power`` is the
    concrete value of s / t when known at trace time (enables exact fast paths), else ``None``
    and the value is read from the traced ``params["p"]``. ``angle_scale``/``angle_offset``
    map θ → scale·θ + offset (1/π and 1e-4 in the official code).
    """

    kind: str
    distance: str
    half_space: bool = False
    power: float | None = None
    angle_scale: float = 1.0
    angle_offset: float = 0.0
    capped: bool = False  # force bound below params["r0"] (see pair_value)


def make_kernel(kind: str, distance: str, half_space: bool, p, eps, dtype, min_distance=None,
                **angle):
    """Split (kernel, params) so traced hyperparameters stay in ``params``."""
    _checks.check_distance(distance)
    _checks.check_nonnegative(p, "s" if kind == "riesz" else "t")
    if eps is None:
        eps = default_eps(dtype)
    _checks.check_nonnegative(eps, "eps")
    power = float(p) if _checks.is_concrete_number(p) else None
    capped = min_distance is not None
    if capped:
        if kind != "riesz":
            raise ValueError("min_distance applies to the Riesz/log kernels only")
        _checks.check_nonnegative(min_distance, "min_distance")
    kernel = Kernel(kind, distance, bool(half_space), power, capped=capped, **angle)
    params = {"p": jnp.asarray(p, dtype), "eps": jnp.asarray(eps, dtype)}
    if capped:
        params["r0"] = jnp.asarray(min_distance, dtype)
    return kernel, params


def _log_r_and_sq(k: Kernel, params, c):
    """(log r, r²) of the pair distance r for cosine c (euclidean z or scaled angle)."""
    eps = params["eps"]
    if k.distance == "euclidean":
        r2 = jnp.maximum(2.0 - 2.0 * c, 0.0) + eps
        return 0.5 * jnp.log(r2), r2
    # eps² under the root only keeps arccos' derivative finite at c = ±1 (an O(eps) change of θ);
    # the collision guard is the same as for z: r² = θ² + eps.
    sin = jnp.sqrt(jnp.maximum((1.0 - c) * (1.0 + c), 0.0) + eps * eps)
    theta = k.angle_scale * atan2_nonneg(sin, c) + k.angle_offset  # vectorisable atan2
    r2 = theta * theta + eps
    return 0.5 * jnp.log(r2), r2


def pair_value(k: Kernel, params, c: Array) -> Array:
    """f(dist(c)) elementwise.

    Force bound (``k.capped``, ``r0 = params["r0"]``): below the distance ``r0`` the kernel is
    continued by its tangent line, ``f(r) = f(r0) + f'(r0)(r − r0)`` for ``r < r0`` — unchanged
    for ``r ≥ r0``, C¹, and the pair force ``|∂f/∂r|`` never exceeds ``|f'(r0)| = s·r0^{−s−1}``
    (``1/r0`` for the log kernel), so nearly coincident neurons cannot produce huge updates.
    """
    log_r, r2 = _log_r_and_sq(k, params, c)
    p = params["p"]
    if k.kind == "gaussian":
        return jnp.exp(-p * r2)
    value = _riesz(k, p, log_r, r2)
    if not k.capped:
        return value
    r0 = params["r0"]
    log_r0 = jnp.log(r0)
    slope = jnp.where(p == 0, -1.0 / r0, -p * jnp.exp(-(p + 1.0) * log_r0))
    tangent = _riesz(k, p, log_r0, r0 * r0) + slope * (jnp.sqrt(r2) - r0)
    return jnp.where(r2 < r0 * r0, tangent, value)


def _riesz(k: Kernel, p, log_r, r2):
    """f_s(r) from log r and r²: r^{−s}, or −log r at s = 0."""
    if k.power is not None:  # concrete s: exact special forms (same values, cheaper)
        s = k.power
        if s == 0.0:
            return -log_r
        if s == 2.0:
            return 1.0 / r2
        if s == 1.0:
            return lax.rsqrt(r2)
        return jnp.exp(-s * log_r)
    return jnp.where(p == 0, -log_r, jnp.exp(-p * log_r))


def pair_function(k: Kernel, params):
    """h(c): f(c) for full space, f(c) + f(−c) for half space."""
    if k.half_space:
        return lambda c: pair_value(k, params, c) + pair_value(k, params, -c)
    return lambda c: pair_value(k, params, c)


def offdiag(x: Array) -> Array:
    n = x.shape[0]
    return jnp.where(jnp.eye(n, dtype=bool), jnp.zeros((), x.dtype), x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 3))
def pairwise_sum(k: Kernel, Wn: Array, params, block_size: int | None = None) -> Array:
    """``Σ_{i≠j} h(ŵ_iᵀŵ_j)`` over the columns of ``Wn`` (d, n).

    Computed by :func:`mhe_jax._tiled.pair_sum` with the kernel's :func:`pair_function`: dense
    up to ``_tiled.DENSE_MAX`` neurons, else in row tiles of ``block_size`` (default
    ``_tiled.DEFAULT_BLOCK``) over the upper triangle of blocks; ``block_size`` forces tiling.
    """
    return _tiled.pair_sum(pair_function(k, params), Wn, block_size, with_force=False)[0]


@functools.partial(pairwise_sum.defjvp, symbolic_zeros=True)
def _pairwise_sum_jvp(k: Kernel, block_size, primals, tangents):
    Wn, params = primals
    dWn, dparams = tangents
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(dparams)):
        raise NotImplementedError(
            "differentiating an energy with respect to s, t or eps is not supported"
        )
    h = pair_function(k, params)
    if isinstance(dWn, SymbolicZero):
        value = _tiled.pair_sum(h, Wn, block_size, with_force=False)[0]
        return value, jnp.zeros_like(value)
    # dE = Σ_ij h'(c_ij)(ŵ_i·dŵ_j + dŵ_i·ŵ_j) = 2 ⟨Ŵ h'(C), dŴ⟩ since h'(C) is symmetric; the
    # force Ŵ h'(C) comes with the value from one pass over the tiles (h, h' from one jax.jvp).
    value, force = _tiled.pair_sum(h, Wn, block_size, with_force=True)
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

    Its derivative is computed without differentiating through a normalised copy: for the dense
    path (``N ≤ _tiled.DENSE_MAX`` or one tile) the normalisation is folded into the ``N × N``
    work (:func:`mhe_jax._tiled.dense_normalized`): energy and gradient cost the Gram product
    and one more matmul; the tiled path uses the force of :func:`pairwise_sum`'s rule.
    """
    return pairwise_sum(k, normalize_columns(W, norm_eps), params, block_size)


@functools.partial(normalized_pairwise_sum.defjvp, symbolic_zeros=True)
def _normalized_pairwise_sum_jvp(k: Kernel, norm_eps, block_size, primals, tangents):
    W, params = primals
    dW, dparams = tangents
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(dparams)):
        raise NotImplementedError(
            "differentiating an energy with respect to s, t or eps is not supported"
        )
    h = pair_function(k, params)
    if isinstance(dW, SymbolicZero):
        value = _tiled.pair_sum(h, normalize_columns(W, norm_eps), block_size, False)[0]
        return value, jnp.zeros_like(value)
    if _tiled.is_dense(W.shape[1], block_size):
        value, grad = _tiled.dense_normalized(h, W, inverse_norms(W, norm_eps))
        return value, jnp.sum(grad * dW)
    Wn, dWn = jax.jvp(lambda W: normalize_columns(W, norm_eps), (W,), (dW,))
    value, force = _tiled.pair_sum(h, Wn, block_size, with_force=True)
    return value, 2.0 * jnp.sum(force * dWn)


def mean_from_sum(k: Kernel, params, total: Array, n: int, n_total: int) -> Array:
    """:func:`mean_energy` from ``total = Σ_{i≠j} h(c_ij)`` over ``n`` of ``n_total`` neurons."""
    pairs = n * (n - 1)
    mean_h = total / pairs if pairs else jnp.zeros((), total.dtype)
    if not k.half_space:
        return mean_h
    f_antipodal = pair_value(k, params, jnp.asarray(-1.0, total.dtype))
    return ((n_total - 1) * mean_h + f_antipodal) / (2 * n_total - 1)


# --------------------------------------------------------------------------------------------
# Public energies.
# --------------------------------------------------------------------------------------------


def hyperspherical_energy(
    w,
    *,
    s=2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps=None,
    sample_size: int | None = None,
    key=None,
    min_distance=None,
    block_size: int | None = None,
) -> Array:
    r"""Hyperspherical energy of the neurons of ``w`` (Eq. 1, 2, 4, 5 of the paper).

    ``E = 1/(N(N−1)) Σ_{i≠j} f_s(dist(ŵ_i, ŵ_j))`` with ``f_s(r) = r^{−s}`` (s > 0) or
    ``log(1/r)`` (s = 0); ``dist`` is ``‖ŵ_i − ŵ_j‖`` (``"euclidean"``) or ``arccos(ŵ_iᵀŵ_j)`` in
    radians (``"angular"``, A-MHE).

    Args:
      w: array with ``N`` neurons along ``neuron_axis``; the other axes are flattened into each
        neuron (Dense kernel ``(in, out)``: ``out`` neurons; Conv ``(kh, kw, in, out)``: ``out``
        neurons of size ``kh·kw·in``). bf16/f16 are computed in float32.
      s: Riesz exponent ``s ≥ 0`` (may be a traced scalar, e.g. under ``inject_hyperparams``).
      distance: ``"euclidean"`` or ``"angular"``.
      half_space: add the virtual neurons ``−ŵ_i`` (mean over ``2N(2N−1)`` ordered pairs).
      neuron_axis: axis of ``w`` indexing neurons.
      eps: singularity guard added to the squared distance (``z²`` or ``θ²``); default
        1e-6 (1e-12 in float64). ``eps=0`` gives the bare formula (infinite for duplicates).
      sample_size: if set, the energy of ``sample_size`` neurons drawn without replacement with
        ``key`` — an unbiased estimate of value and gradient (Sec. 3.6).
      key: PRNG key, required with ``sample_size``.
      min_distance: bound the pair force: below this distance (chord, or radians for
        ``"angular"``) ``f_s`` is continued linearly (C¹); the energy is unchanged above it and
        each pair's force is at most ``s·min_distance^{−s−1}``. For low dimensions (e.g. 10
        classifier neurons in R², where s = 2 forces grow like θ^{−3} at initialisation).
      block_size: neurons per tile of the Gram matrix. ``None`` (default): the ``N × N`` pair
        matrices are formed at once for ``N ≤ 1024`` (``_tiled.DENSE_MAX``) and computed in
        tiles of about 256 neurons above; an int asks for tiles of about that size (an int
        ``≥ N``: one dense tile). Tiles visit
        each pair of blocks once (symmetry) and keep the memory at ``O(N·d + block·N/2)``; the
        value and gradient are those of the dense formula (up to the order of summation).

    Returns:
      A scalar (float32, or float64 for float64 input). ``N = 1`` gives 0 (full space).
    """
    W = as_neuron_matrix(w, neuron_axis)
    n_total = W.shape[1]
    kernel, params = make_kernel("riesz", distance, half_space, s, eps, W.dtype, min_distance)
    W = sample_columns(W, sample_size, key)
    return normalized_mean_energy(kernel, params, W, n_total, block_size)


def gaussian_energy(
    w,
    *,
    t=2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps=None,
    sample_size: int | None = None,
    key=None,
    block_size: int | None = None,
) -> Array:
    r"""Gaussian-kernel energy ``log mean_{i≠j} exp(−t · dist(ŵ_i, ŵ_j)²)``.

    With the euclidean distance this is the uniformity loss of Wang & Isola (2020) on the
    normalised neurons (their ``t = 2``). Same conventions as :func:`hyperspherical_energy`;
    the log is taken of the (half-space) mean. In float32 keep ``t·dist² ≲ 80`` (no rescaling
    against underflow is done). ``block_size``: tiling, as in :func:`hyperspherical_energy`.
    """
    W = as_neuron_matrix(w, neuron_axis)
    n_total = W.shape[1]
    kernel, params = make_kernel("gaussian", distance, half_space, t, eps, W.dtype)
    W = sample_columns(W, sample_size, key)
    if W.shape[1] < 2 and not half_space:
        return jnp.zeros((), W.dtype)
    return jnp.log(normalized_mean_energy(kernel, params, W, n_total, block_size))


def output_energy(
    w,
    labels,
    *,
    s=2.0,
    distance: str = "euclidean",
    neuron_axis: int = -1,
    eps=None,
    min_distance=None,
) -> Array:
    r"""Data-dependent output-layer energy (Sec. 3.6, Eq. 8).

    ``E = 1/(m(N−1)) Σ_{i=1..m} Σ_{j≠y_i} f_s(dist(ŵ_{y_i}, ŵ_j))`` for a mini-batch of ``m``
    labels ``y`` (integer array of shape ``(m,)``): only the rows of the classes present in the
    batch are computed, ``O(m·N·d)``. ``min_distance``: force bound, as in
    :func:`hyperspherical_energy`.
    """
    W = as_neuron_matrix(w, neuron_axis)
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (m,), got shape {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    n = W.shape[1]
    m = labels.shape[0]
    if n < 2 or m == 0:
        return jnp.zeros((), W.dtype)
    kernel, params = make_kernel("riesz", distance, False, s, eps, W.dtype, min_distance)
    Wn = normalize_columns(W)
    c = jnp.matmul(jnp.take(Wn, labels, axis=1).T, Wn, precision=_HIGHEST)  # (m, N)
    same = labels[:, None] == jnp.arange(n)[None, :]
    f = jnp.where(same, jnp.zeros((), c.dtype), pair_value(kernel, params, c))
    return jnp.sum(f) / (m * (n - 1))


def uniformity_loss(x, t=2.0, *, normalize: bool = True) -> Array:
    r"""Uniformity loss of Wang & Isola (ICML 2020) on a batch of feature vectors (rows).

    ``log mean_{i<j} exp(−t ‖x_i − x_j‖²)`` for ``x`` of shape (batch, dim) — their
    ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``, default ``t = 2``. With ``normalize``
    the rows are first projected on the sphere (their features are L2-normalised), and the value
    equals :func:`gaussian_energy` with ``neuron_axis=0``.
    """
    if normalize:
        return gaussian_energy(x, t=t, neuron_axis=0)
    X = as_neuron_matrix(x, 0, "x")  # (dim, batch)
    _checks.check_nonnegative(t, "t")
    n = X.shape[1]
    sq = jnp.sum(X * X, axis=0)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram(X), 0.0)
    iu = jnp.triu_indices(n, 1)
    return jax.nn.logsumexp(-t * d2[iu]) - jnp.log(n * (n - 1) / 2)


# --------------------------------------------------------------------------------------------
# The official TensorFlow code (github wy1iu/MHE, code/architecture.py, _add_thomson_constraint).
# --------------------------------------------------------------------------------------------

#: λ of the official code per power: hidden layers and output layer (multiply official_energy).
OFFICIAL_STRENGTHS = {
    "hidden": {"0": 1.0, "1": 1.0, "2": 1.0, "a0": 1.0, "a1": 0.1, "a2": 0.1},
    "output": {"0": 10.0, "1": 10.0, "2": 10.0, "a0": 10.0, "a1": 1.0, "a2": 1.0},
}
_OFFICIAL_POWERS = ("0", "1", "2", "a0", "a1", "a2")


def official_energy(w, power: str, *, half_space: bool = False, neuron_axis: int = -1) -> Array:
    r"""Per-layer loss of the official TensorFlow MHE code, without its λ factor.

    As in ``_add_thomson_constraint``: ``ŵ = w / sqrt(‖w‖² + 1e-4)``; for ``power`` in
    ``"0", "1", "2"`` the pair term is ``−log(2 − 2c)`` / ``(2 − 2c)^{−s/2}``; for ``"a0", "a1",
    "a2"`` it is ``−log(r)`` / ``r^{−s}`` with ``r = arccos(c)/π + 1e-4``; the loss is the mean
    over the ``N(N−1)/2`` unordered pairs; half-space concatenates ``[W, −W]``.

    Relation to :func:`hyperspherical_energy` (which has no 1e-4 terms): ``"0"`` is twice the
    paper's log energy ``E_0``; ``"1"``, ``"2"`` are ``E_1``, ``E_2``; the angular ones use the
    angle divided by π. The official code multiplies "a1"/"a2" by 0.1 — that factor is part of
    λ here (see :data:`OFFICIAL_STRENGTHS`: hidden λ = 1, output λ = 10, a1/a2: 0.1 and 1).
    """
    if power not in _OFFICIAL_POWERS:
        raise ValueError(f"power must be one of {_OFFICIAL_POWERS}, got {power!r}")
    W = as_neuron_matrix(w, neuron_axis)
    if half_space:
        W = jnp.concatenate([W, -W], axis=1)
    angular = power.startswith("a")
    s = float(power[-1])
    angle = {"angle_scale": 1.0 / math.pi, "angle_offset": 1e-4} if angular else {}
    # eps = machine epsilon: the official formula up to rounding, finite for exact duplicates.
    eps = float(jnp.finfo(W.dtype).eps)
    kernel, params = make_kernel(
        "riesz", "angular" if angular else "euclidean", False, s, eps, W.dtype, **angle
    )
    Wn = normalize_columns(W, norm_eps=1e-4)
    log_scale = 2.0 if power == "0" else 1.0  # −log(2 − 2c) = 2 log(1/z)
    return log_scale * mean_energy(kernel, params, Wn, W.shape[1])


# --------------------------------------------------------------------------------------------
# Diagnostics.
# --------------------------------------------------------------------------------------------


class EnergyStats(NamedTuple):
    """Energy and diagnostics of one layer from one Gram matrix."""

    energy: Array
    min_angle: Array  # radians, smallest angle between two distinct neurons (Tammes)
    mean_abs_cosine: Array  # mean |ŵ_iᵀŵ_j| over i ≠ j (coherence)


def _cosine_stats(Wn: Array):
    n = Wn.shape[1]
    if n < 2:
        z = jnp.zeros((), Wn.dtype)
        return jnp.asarray(jnp.pi, Wn.dtype), z
    c = offdiag(gram(Wn))
    eye = jnp.eye(n, dtype=bool)
    max_c = jnp.max(jnp.where(eye, -jnp.inf, c))
    min_angle_ = jnp.arccos(jnp.clip(max_c, -1.0, 1.0))
    return min_angle_, jnp.sum(jnp.abs(c)) / (n * (n - 1))


def energy_stats(
    w, *, s=2.0, distance: str = "euclidean", half_space: bool = False, neuron_axis: int = -1,
    eps=None,
) -> EnergyStats:
    """:func:`hyperspherical_energy`, :func:`min_angle` and :func:`mean_abs_cosine` together."""
    W = as_neuron_matrix(w, neuron_axis)
    kernel, params = make_kernel("riesz", distance, half_space, s, eps, W.dtype)
    Wn = normalize_columns(W)
    energy = mean_energy(kernel, params, Wn, W.shape[1])
    angle, coherence = _cosine_stats(lax.stop_gradient(Wn))
    return EnergyStats(energy, angle, coherence)


def min_angle(w, *, neuron_axis: int = -1) -> Array:
    """Smallest angle (radians) between two neurons; π for a single neuron."""
    Wn = normalize_columns(as_neuron_matrix(w, neuron_axis))
    return _cosine_stats(Wn)[0]


def mean_abs_cosine(w, *, neuron_axis: int = -1) -> Array:
    """Mean ``|ŵ_iᵀŵ_j|`` over ordered pairs ``i ≠ j`` (0 for a single neuron)."""
    Wn = normalize_columns(as_neuron_matrix(w, neuron_axis))
    return _cosine_stats(Wn)[1]
