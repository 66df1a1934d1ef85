"""A float64 reference of the MHE penalty over layers chosen by hand, written from the paper.

Independent of the library: each layer is given as its ``(d, N)`` neuron matrix built by hand
(``w.reshape(...)``, ``w.T``), and the energy is the plain mean of ``f_s`` over ordered pairs of
the normalised columns (with ``{ŵ_i} ∪ {−ŵ_i}`` for half space), differentiable with ``jax.grad``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def energy(W, s=2.0, half_space=False):
    """(1/(M(M−1))) Σ_{i≠j} f_s(‖u_i − u_j‖), u = normalised columns of W (d, N), M = N or 2N."""
    W = jnp.asarray(W, jnp.float64)
    U = W / jnp.linalg.norm(W, axis=0, keepdims=True)
    if half_space:
        U = jnp.concatenate([U, -U], axis=1)
    m = U.shape[1]
    sq = jnp.sum(U * U, axis=0)
    r2 = sq[:, None] + sq[None, :] - 2.0 * (U.T @ U)
    off = ~np.eye(m, dtype=bool)
    r2 = jnp.where(off, r2, 1.0)
    f = -0.5 * jnp.log(r2) if s == 0 else r2 ** (-s / 2.0)
    return jnp.sum(jnp.where(off, f, 0.0)) / (m * (m - 1))


def penalty(hidden, output, lam_h, lam_o=None, s=2.0, half_space=False):
    """λ_h Σ_hidden E(W) + λ_o Σ_output E(W); ``hidden``/``output``: lists of (d, N) matrices."""
    total = lam_h * sum(energy(W, s, half_space) for W in hidden)
    if output:
        total = total + lam_o * sum(energy(W, s) for W in output)
    return total


def to64(tree):
    return jax.tree.map(lambda a: a if a is None else jnp.asarray(a, jnp.float64), tree)


def max_abs_diff(a, b) -> float:
    """On the host (NumPy): op by op in jax, every leaf shape compiled three small programs."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
