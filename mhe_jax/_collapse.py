r"""Neural-collapse metrics of features and labels (Papyan, Han & Donoho, PNAS 2020).

For ``N`` features ``h_i ∈ R^d`` (rows of ``features``) with labels ``y_i ∈ {0, …, K−1}``,
``n_c`` samples in class ``c``:

* class means ``μ_c = (1/n_c) Σ_{y_i = c} h_i``, their centre ``μ_G = (1/K) Σ_c μ_c`` (the
  mean of the class means: equal to the mean of all samples when the classes are balanced, and
  the centre of a simplex ETF otherwise), the centred means ``μ̃_c = μ_c − μ_G`` as the columns
  of ``M̃`` ``(d, K)``;
* within-class covariance ``Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` and
  between-class covariance ``Σ_B = (1/K) Σ_c μ̃_c μ̃_cᵀ``;
* within-class variance ``V_c = (1/n_c) Σ_{y_i = c} ‖h_i − μ_c‖²``.

The metrics (each 0 at exact neural collapse: zero within-class spread, centred means forming a
simplex ETF, classifier proportional to the centred means):

* ``nc1 = tr(Σ_W Σ_B^†)/K`` (Papyan et al., Fig. 6), ``†`` the Moore–Penrose pseudo-inverse:
  only the within-class spread inside the span of the centred means counts;
* ``cdnv``: the class-distance normalised variance of Galanti, György & Hutter (ICLR 2022),
  ``(V_c + V_{c'}) / (2 ‖μ_c − μ_{c'}‖²)`` averaged over the ``K(K−1)/2`` pairs ``c < c'``;
  ``+inf`` when two class means coincide (the classes are not separated at all);
* ``nc2 = ‖ G/‖G‖_F − (I_K − 11ᵀ/K)/√(K−1) ‖_F`` with ``G = M̃ᵀM̃`` (Zhu et al., NeurIPS
  2021): the distance of the normalised Gram matrix of the centred means to that of a simplex
  ETF (``‖I − 11ᵀ/K‖_F = √(K−1)``), in ``[0, 2]``; 0 iff the centred means are a simplex ETF up
  to scale (any rotation); 1 when all the class means coincide (``G = 0``);
* ``equinorm = std_c ‖μ̃_c‖ / mean_c ‖μ̃_c‖`` and ``equiangularity = std_{c<c'} cos(μ̃_c,
  μ̃_{c'})`` (Papyan et al., Fig. 2–3; population standard deviations): the two halves of NC2;
  a zero centred mean has cosine 0 with every other, and ``equinorm`` is 0 when every norm is;
* ``nc3 = ‖ W/‖W‖_F − M̃/‖M̃‖_F ‖²_F`` (Papyan et al., Fig. 5, self-duality) for a classifier
  kernel ``W`` ``(d, K)`` (the library's layout: one column per class), in ``[0, 4]``; a zero
  ``W`` or ``M̃`` counts as the zero matrix.
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import NamedTuple

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax
from jax.typing import ArrayLike

from mhe_jax import _checks

__all__ = ["CollapseStats", "collapse_stats"]

Array = jax.Array
_HIGHEST = lax.Precision.HIGHEST


class CollapseStats(NamedTuple):
    """Neural-collapse metrics of :func:`collapse_stats` (scalars; the module's definitions).

    Attributes:
      nc1: ``tr(Σ_W Σ_B^†)/K``, within-class variability relative to the between-class one.
      cdnv: class-distance normalised variance, mean over the pairs of classes.
      nc2: Frobenius distance of the normalised Gram matrix of the centred class means to the
        simplex ETF's.
      equinorm: coefficient of variation of the centred class-mean norms.
      equiangularity: standard deviation of the cosines between centred class means.
      nc3: squared Frobenius distance between the normalised classifier and the normalised
        centred class means; ``None`` without a classifier.

    Examples:
      >>> import numpy as np, mhe_jax
      >>> features = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]])
      >>> stats = mhe_jax.collapse_stats(features, np.array([0, 0, 1, 1]), 2)
      >>> stats._fields
      ('nc1', 'cdnv', 'nc2', 'equinorm', 'equiangularity', 'nc3')
      >>> round(float(stats.nc2), 6), stats.nc3 is None  # 2 centred means: a simplex ETF
      (0.0, True)
    """

    nc1: Array
    cdnv: Array
    nc2: Array
    equinorm: Array
    equiangularity: Array
    nc3: Array | None


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_inputs(features, labels, num_classes, classifier):
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    num_classes = int(num_classes)
    h = jnp.asarray(features)
    if h.ndim != 2 or h.shape[0] < 1 or h.shape[1] < 1:
        raise ValueError(f"features must have shape (N, d) with N, d >= 1, got shape {h.shape}")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        raise TypeError(f"features must have a floating dtype, got {h.dtype}")
    y = jnp.asarray(labels)
    if y.ndim != 1 or y.shape[0] != h.shape[0]:
        raise ValueError(
            f"labels must have shape (N,) = ({h.shape[0]},), one per row of features; got shape "
            f"{y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if not _is_traced(labels):
        values = np.asarray(labels)
        bad = (values < 0) | (values >= num_classes)
        if np.any(bad):
            raise ValueError(
                f"labels must be in [0, num_classes={num_classes}); got {values[bad][0]} at "
                f"index {int(np.flatnonzero(bad)[0])}")
        missing = np.setdiff1d(np.arange(num_classes), values)
        if missing.size:
            raise ValueError(
                f"labels must hold every class 0..{num_classes - 1} at least once (class means); "
                f"missing: {missing[:10].tolist()}")
    h = h.astype(_checks.compute_dtype(h.dtype))
    W = None
    if classifier is not None:
        W = jnp.asarray(classifier)
        if W.shape != (h.shape[1], num_classes):
            raise ValueError(
                f"classifier must have shape (d, num_classes) = ({h.shape[1]}, {num_classes}), "
                f"one column per class; got shape {W.shape}")
        if not jnp.issubdtype(W.dtype, jnp.floating):
            raise TypeError(f"classifier must have a floating dtype, got {W.dtype}")
        W = W.astype(h.dtype)
    return h, y, W


def _safe_div(a: Array, b: Array) -> Array:
    """``a / b``, 0 where ``b == 0``."""
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


def _unit_frobenius(x: Array) -> Array:
    return _safe_div(x, jnp.linalg.norm(x))


def _pair_std(values: Array, k: int) -> Array:
    """Population standard deviation of the strictly upper triangle of ``values`` (K, K)."""
    iu = np.triu_indices(k, 1)
    return jnp.std(values[iu])


def collapse_stats(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    *,
    classifier: ArrayLike | None = None,
) -> CollapseStats:
    r"""Neural-collapse metrics NC1, CDNV, NC2 (with equinorm, equiangularity) and NC3.

    ``features`` ``(N, d)`` holds one sample per row (penultimate-layer features), ``labels``
    ``(N,)`` its integer classes in ``[0, num_classes)``, every class present (``n_c = 1`` is
    fine: that class has zero spread). ``classifier`` (optional, for NC3) is the last layer's
    kernel ``(d, num_classes)``, one column per class as in Flax ``Dense``. The definitions
    are in the module docstring: with ``M̃`` ``(d, K)`` the class means centred at their mean,

    * ``nc1 = tr(Σ_W Σ_B^†)/K``, ``cdnv = mean_{c<c'} (V_c + V_{c'})/(2‖μ_c − μ_{c'}‖²)``;
    * ``nc2 = ‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F`` with ``G = M̃ᵀM̃``;
    * ``nc3 = ‖W/‖W‖_F − M̃/‖M̃‖_F‖²_F``.

    All are 0 at exact collapse onto a simplex ETF (any scale and rotation) with the classifier
    proportional to the centred means. Computed in ``O(N d K + d K²)``, without a ``d × d``
    matrix (``Σ_B^†`` from the pseudo-inverse of ``M̃`` restricted to the complement of the
    all-ones vector, its exact null space). Works under ``jax.jit`` with ``num_classes``
    static; the label checks below then cannot run, and a missing class gives NaN.

    Args:
      features: ``(N, d)`` floating features, samples as rows.
      labels: ``(N,)`` integer labels.
      num_classes: ``K >= 2``.
      classifier: optional ``(d, K)`` classifier kernel for NC3.

    Returns:
      The metrics, as a :class:`CollapseStats` of scalars (``nc3`` is ``None`` without a
        classifier).

    Raises:
      TypeError: non-floating features or classifier, non-integer labels or num_classes.
      ValueError: wrong shapes (each named), labels out of range or a class without samples.

    Examples:
      Three classes at the vertices of a simplex ETF, two samples each at distance 0.1 from
      their class mean along it: NC2 = NC3 = 0, NC1 = σ²(K−1)/K and CDNV = σ²(K−1)/(2K):

      >>> import numpy as np, mhe_jax
      >>> from mhe_jax import sphere
      >>> etf = np.asarray(sphere.prototypes(3, 2))  # (2, 3): unit columns, cosines −1/2
      >>> features = np.concatenate([etf.T * 1.1, etf.T * 0.9])  # (6, 2)
      >>> labels = np.array([0, 1, 2, 0, 1, 2])
      >>> stats = mhe_jax.collapse_stats(features, labels, 3, classifier=etf)
      >>> [round(float(v), 5) for v in stats]
      [0.00667, 0.00333, 0.0, 0.0, 0.0, 0.0]
    """
    h, y, W = _check_inputs(features, labels, num_classes, classifier)
    return _collapse_stats(h, y, W, int(num_classes))


@partial(jax.jit, static_argnums=3)
def _collapse_stats(h: Array, y: Array, W: Array | None, k: int) -> CollapseStats:
    n = h.shape[0]
    onehot = jax.nn.one_hot(y, k, dtype=h.dtype)  # (N, K)
    counts = jnp.sum(onehot, axis=0)  # (K,)
    means = jnp.matmul(h.T, onehot, precision=_HIGHEST) / counts  # (d, K)
    centred = means - jnp.mean(means, axis=1, keepdims=True)  # M̃
    resid = h - means.T[y]  # (N, d)
    var = jnp.matmul(jnp.sum(resid * resid, axis=1), onehot, precision=_HIGHEST) / counts

    # NC1 = tr(Σ_W (M̃M̃ᵀ)^†) with Σ_W = ZᵀZ/N; M̃M̃ᵀ = BBᵀ, B = M̃ Hᵀ (H: the K−1 Helmert rows,
    # orthonormal and orthogonal to 1), so (M̃M̃ᵀ)^† = B^{†ᵀ}B^† and NC1 = ‖Z B^{†ᵀ}‖²_F / N.
    helmert = jnp.asarray(scipy.linalg.helmert(k), h.dtype)  # (K−1, K)
    b = jnp.matmul(centred, helmert.T, precision=_HIGHEST)  # (d, K−1)
    proj = jnp.matmul(resid, jnp.linalg.pinv(b).T, precision=_HIGHEST)  # (N, K−1)
    nc1 = jnp.sum(proj * proj) / n

    # CDNV: exact pair distances (differences, not the Gram matrix: coinciding means give 0).
    def row(mu):
        d = means - mu[:, None]
        return jnp.sum(d * d, axis=0)

    dist2 = lax.map(row, means.T)  # (K, K)
    iu = np.triu_indices(k, 1)
    num, den = (var[:, None] + var[None, :])[iu], 2.0 * dist2[iu]
    ratio = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.inf)
    cdnv = jnp.mean(ratio)

    gram = jnp.matmul(centred.T, centred, precision=_HIGHEST)  # (K, K)
    etf = (jnp.eye(k, dtype=h.dtype) - 1.0 / k) / np.sqrt(k - 1)
    nc2 = jnp.linalg.norm(_unit_frobenius(gram) - etf)
    norms = jnp.sqrt(jnp.diagonal(gram))
    equinorm = _safe_div(jnp.std(norms), jnp.mean(norms))
    cosines = _safe_div(gram, norms[:, None] * norms[None, :])
    equiangularity = _pair_std(cosines, k)

    nc3 = None
    if W is not None:
        diff = _unit_frobenius(W) - _unit_frobenius(centred)
        nc3 = jnp.sum(diff * diff)
    return CollapseStats(nc1, cdnv, nc2, equinorm, equiangularity, nc3)
