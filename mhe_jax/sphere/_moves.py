r"""Basin-hopping moves: perturbations of a configuration ``x`` of unit rows ``(n, dim)``.

Pure JAX functions of ``(x, key)`` (and static options), so that the search runs them inside its
jitted loop, ``vmap``-ed over chains:

* :func:`relocate`: one point, chosen uniformly at random, is put at a uniformly random position
  on the sphere (a vacancy–interstitial pair);
* :func:`cap_move`: the ``k ≤ cap`` points nearest to a centre point (one of the 6 points of
  highest local energy with probability 1/2, else a uniformly random one; ``k`` uniform in
  ``[2, cap]``) are rotated about the centre by a random orthogonal map of the tangent space
  (probability 1/2, ``dim > 2``), then each is displaced by a random tangent vector of length
  about ``step × spacing``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from mhe_jax import _kernels
from mhe_jax.sphere import _solver

Array = jax.Array

TOP_CENTRES = 6  # cap_move: the centre is one of this many highest-energy points half the time


def relocate(x: Array, key: Array) -> Array:
    """``x`` with one uniformly chosen row replaced by a uniform random unit vector."""
    k_index, k_point = jax.random.split(key)
    i = jax.random.randint(k_index, (), 0, x.shape[0])
    z = jax.random.normal(k_point, (x.shape[1],), x.dtype)
    return x.at[i].set(z / jnp.linalg.norm(z))


def local_energy(x: Array, s) -> Array:
    """``e_i = Σ_{j≠i} f_s(‖x_i − x_j‖)`` per point (chord; the core kernel)."""
    eye, c = _solver._masked_gram(x)
    return jnp.sum(jnp.where(eye, 0.0, _kernels.pair_energy(c, s=s, eps=0.0)), axis=1)


def _random_orthogonal(key: Array, k: int, dtype) -> Array:
    """A Haar-random ``k × k`` orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (k, k), dtype))
    return q * jnp.sign(jnp.diag(r))


def _tangent_basis(centre: Array) -> Array:
    """``(dim, dim − 1)`` orthonormal basis of the tangent space at the unit vector ``centre``:
    the last ``dim − 1`` columns of the Householder reflection that maps ``e_1`` to ``centre``
    (reflecting about ``v = centre ∓ e_1``, the sign chosen away from cancellation)."""
    dim = centre.shape[0]
    e1 = jnp.zeros_like(centre).at[0].set(1.0)
    sign = jnp.where(centre[0] >= 0, 1.0, -1.0)
    v = centre + sign * e1
    h = jnp.eye(dim, dtype=centre.dtype) - 2.0 * jnp.outer(v, v) / jnp.sum(v * v)
    return h[:, 1:]


def cap_move(x: Array, key: Array, *, s: float, step, spacing: float, cap: int) -> Array:
    """One cap move of ``x`` (see the module docstring); ``cap`` and the shapes are static."""
    n, dim = x.shape
    keys = jax.random.split(key, 7)
    top = lax.top_k(local_energy(x, s), min(n, TOP_CENTRES))[1]
    j = jnp.where(
        jax.random.uniform(keys[0]) < 0.5,
        top[jax.random.randint(keys[1], (), 0, top.shape[0])],
        jax.random.randint(keys[2], (), 0, n),
    )
    centre = x[j]
    k = jax.random.randint(keys[3], (), min(2, n), min(cap, n) + 1)
    # The k points nearest to the centre (the centre itself first).
    rank = jnp.argsort(jnp.argsort(jnp.sum((x - centre) ** 2, axis=1)))
    in_cap = rank < k
    normal = x @ centre
    pts = x
    if dim > 2:
        basis = _tangent_basis(centre)
        q = basis @ _random_orthogonal(keys[4], dim - 1, x.dtype) @ basis.T
        rotated = normal[:, None] * centre + (x - normal[:, None] * centre) @ q.T
        pts = jnp.where(jax.random.uniform(keys[5]) < 0.5, rotated, x)
    noise = jax.random.normal(keys[6], x.shape, x.dtype)
    noise = noise - jnp.sum(noise * pts, axis=1, keepdims=True) * pts
    pts = pts + step * spacing * noise / math.sqrt(max(dim - 1, 1))
    pts = pts / jnp.linalg.norm(pts, axis=1, keepdims=True)
    return jnp.where(in_cap[:, None], pts, x)
