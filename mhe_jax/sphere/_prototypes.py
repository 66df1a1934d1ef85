r"""Fixed classifier prototypes: the simplex ETF, or a minimum-energy configuration.

``num_classes = K`` unit vectors in ``R^dim`` that minimise the Riesz energy
``Σ_{i<j} ‖p_i − p_j‖^{−s}`` (``s = 0``: ``Σ_{i<j} log(1/‖p_i − p_j‖)``). For ``K ≤ dim + 1``
the minimiser is the regular simplex, for every ``s ≥ 0``: for unit vectors
``Σ_{i<j} ‖p_i − p_j‖² = K² − ‖Σ_i p_i‖² ≤ K²`` with equality iff ``Σ_i p_i = 0``, and
``r ↦ f_s(√r)`` is convex and decreasing, so by Jensen's inequality the energy is at least
``(K(K−1)/2) f_s(√(2K/(K−1)))``, reached exactly when every pair is at that distance, i.e. every
cosine is ``−1/(K−1)`` (the simplex equiangular tight frame, ETF). Above ``dim + 1`` the
minimiser depends on ``s`` and is found numerically by :func:`mhe_jax.sphere.minimize_energy`.
"""

from __future__ import annotations

import jax
import numpy as np
import scipy.linalg

from mhe_jax.sphere import _basin, _solver

__all__ = ["prototypes"]


def _simplex_etf(num_classes: int) -> np.ndarray:
    """``(K − 1, K)`` float64: the simplex ETF in ``R^{K−1}``, unit columns, every cosine
    ``−1/(K−1)``: ``√(K/(K−1)) Hᵀ`` scaled rows of the Helmert matrix (``H``: ``K − 1``
    orthonormal rows orthogonal to the all-ones vector, so ``HᵀH = I − 11ᵀ/K``)."""
    k = num_classes
    return np.sqrt(k / (k - 1)) * scipy.linalg.helmert(k)


def prototypes(
    num_classes: int,
    dim: int,
    *,
    s: float = 1.0,
    key: jax.Array | int | None = None,
    restarts: int | None = None,
) -> jax.Array:
    r"""``num_classes`` energy-minimising unit vectors in ``R^dim``, as a classifier kernel.

    Returns ``P`` of shape ``(dim, num_classes)``: one prototype per class, as the *columns*
    (the library's neuron layout, that of a Flax ``Dense`` kernel and of
    :class:`mhe_jax.models.PrototypeHead`; the sphere solvers return rows, ``P`` is their
    transpose). Each column has unit norm and the columns minimise the Riesz energy
    ``Σ_{i<j} ‖p_i − p_j‖^{−s}`` (``s = 0``: ``Σ_{i<j} log(1/‖p_i − p_j‖)``), as in
    :func:`minimize_energy`.

    * ``num_classes ≤ dim + 1``: the simplex equiangular tight frame, the exact minimiser for
      every ``s ≥ 0`` (module docstring): ``PᵀP = (K/(K−1)) I − 1/(K−1) 11ᵀ``, every pairwise
      cosine ``−1/(K−1)`` and ``Σ_i p_i = 0``, built in closed form (float64, then cast). With
      ``key=None`` it is the canonical one, in the first ``K − 1`` coordinates (the others are
      0); with a ``key`` it is rotated by a uniformly random orthogonal matrix drawn from it.
    * ``num_classes > dim + 1``: the best local minimum of ``restarts`` runs of
      :func:`minimize_energy` (Riemannian L-BFGS from random starts drawn from ``key``;
      ``None``: key 0). A local minimum, the global one when the restarts find it (the
      Thomson problem for ``dim = 3``, ``s = 1``); for hard cases run
      :func:`basin_hopping` and pass its transposed points instead.

    The result is deterministic for a given ``key``. Float64 when ``jax_enable_x64`` is on,
    else float32.

    Args:
      num_classes: number of prototypes ``K >= 2``.
      dim: dimension ``>= 1`` of the feature space (``dim = 1`` holds only ``K = 2``: ±1).
      s: Riesz exponent ``>= 0`` (0: log energy). Only the solver path depends on it.
      key: PRNG key or int seed: the rotation of the ETF, or the solver's random starts.
      restarts: number of solver starts (default 16); ``num_classes > dim + 1`` only.

    Returns:
      The prototypes as the unit columns of a ``(dim, num_classes)`` array.

    Raises:
      TypeError: ``num_classes``, ``dim`` or ``restarts`` is not an int, ``s`` not a real
        number, ``key`` neither a PRNG key nor an int.
      ValueError: ``num_classes < 2``, ``dim < 1``, ``s < 0`` or not finite, ``restarts <
        1``, or ``dim = 1`` with ``num_classes > 2``.

    Examples:
      >>> import numpy as np
      >>> from mhe_jax import sphere
      >>> p = sphere.prototypes(4, 8)  # 4 classes, 8-dim features: the simplex ETF
      >>> p.shape
      (8, 4)
      >>> np.round(np.asarray(p.T @ p), 4)  # unit norms, every cosine −1/3
      array([[ 1.    , -0.3333, -0.3333, -0.3333],
             [-0.3333,  1.    , -0.3333, -0.3333],
             [-0.3333, -0.3333,  1.    , -0.3333],
             [-0.3333, -0.3333, -0.3333,  1.    ]], dtype=float32)
      >>> q = sphere.prototypes(6, 3, restarts=4)  # more classes than dim + 1: the octahedron
      >>> float(np.round(np.min(np.asarray(q.T @ q)), 4))
      -1.0
    """
    num_classes = _solver._check_int(num_classes, "num_classes", 2)
    dim = _solver._check_int(dim, "dim", 1)
    s = _solver._check_s(s)
    if restarts is not None:
        restarts = _solver._check_int(restarts, "restarts", 1)
    dtype = _solver.compute_dtype()
    if num_classes <= dim + 1:
        rng = None if key is None else _basin._rng_from_key(key)  # validates key
        p = np.zeros((dim, num_classes))
        p[: num_classes - 1] = _simplex_etf(num_classes)
        if rng is not None:
            p = _basin._random_rotation(dim, rng) @ p
        return jax.numpy.asarray(p, dtype)
    if dim == 1:
        raise ValueError(
            f"dim=1 holds only 2 distinct unit vectors (±1); got num_classes={num_classes}")
    if key is not None:
        _basin._rng_from_key(key)  # the same key errors as the ETF path
    result = _solver.minimize_energy(num_classes, dim, s=s, key=key, restarts=restarts)
    return jax.numpy.asarray(result.points, dtype).T
