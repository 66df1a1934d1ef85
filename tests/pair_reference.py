"""Float64 NumPy brute force of a mean pair potential over the pairs that count (issue 28).

One pair at a time, from the definitions: unit neurons (half-space: with their antipodes, in the
same group), the guarded distance ``r = sqrt(dist² + eps)``, a potential ``f`` continued by its
tangent below ``min_distance``, and the mean over the ordered pairs that count (0 when none does).
Gradients are central finite differences of the same brute force along random directions.
"""

from __future__ import annotations

import math

import numpy as np

from tests.helpers import neuron_matrix, unit


def pair_distance(a, b, kind: str) -> float:
    """Chord, or the angle in the well-conditioned form 2·atan2(‖a − b‖, ‖a + b‖) (``acos`` of
    a rounded cosine is noisy near 0 and π, which central differences would amplify)."""
    if kind == "euclidean":
        return float(np.linalg.norm(a - b))
    return 2.0 * math.atan2(float(np.linalg.norm(a - b)), float(np.linalg.norm(a + b)))


def np_mean_potential(w, f, *, distance="euclidean", half_space=False, eps=1e-12,
                      min_distance=None, df=None, groups=None, pairs="within", moment=1,
                      neuron_axis=-1) -> float:
    """Mean of ``f(r)`` over the counted ordered pairs (``moment=2``: the variance instead).

    ``f`` (and ``df``, its derivative, needed with ``min_distance``) act on Python floats."""
    W = unit(neuron_matrix(w, neuron_axis))
    n = W.shape[1]
    ids = np.zeros(n, int) if groups is None else np.asarray(groups)
    if half_space:
        W = np.concatenate([W, -W], axis=1)
        ids = np.concatenate([ids, ids])
    values = []
    for i in range(W.shape[1]):
        for j in range(W.shape[1]):
            if i == j:
                continue
            if groups is not None and (ids[i] == ids[j]) != (pairs == "within"):
                continue
            r = math.sqrt(pair_distance(W[:, i], W[:, j], distance) ** 2 + eps)
            if min_distance is not None and r < min_distance:
                values.append(f(min_distance) + df(min_distance) * (r - min_distance))
            else:
                values.append(f(r))
    if not values:
        return 0.0
    if moment == 2:
        return float(np.var(values))
    return float(np.mean(values))


def fd_directional(fn, w, directions, step=1e-6):
    """Central differences of ``fn`` (NumPy, float64) at ``w`` along each direction."""
    w = np.asarray(w, np.float64)
    return np.array([(fn(w + step * v) - fn(w - step * v)) / (2 * step) for v in directions])


def directions(shape, count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(count)]
