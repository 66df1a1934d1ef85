r"""Compressive MHE (CoMHE; Lin, Liu et al., CVPR 2020), random-projection variant.

The normalised neurons ``Ŵ`` (d, N) are projected by ``P`` random matrices ``A_p`` (k, d), the
projected neurons are renormalised, and the energy is averaged:

    E_CoMHE = (1/P) Σ_p E(A_p Ŵ),

with ``E`` = :func:`mhe_jax.hyperspherical_energy` (same s, distance, half-space). ``kind``:
``"gaussian"`` (i.i.d. N(0, 1/k) entries, the original code's default, P = 20, k = 40) or
``"orthogonal"`` (``A_p`` has orthonormal rows, a random k-dimensional subspace; with ``k = d``
angles are preserved exactly and E_CoMHE equals plain MHE). Fresh projections come from ``key``
(the regularizer derives it from its seed and step). The average over ``P`` projections is an
unbiased estimate of ``E_A[E(AŴ)]`` whose variance falls as ``1/P``; note that this expectation is
the compressed energy, not the original one (CoMHE's objective).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mhe_jax import _energy

__all__ = ["compressive_energy", "random_projections"]


def random_projections(key, d: int, *, projections: int = 20, dim: int = 40, kind: str = "gaussian",
                       dtype=jnp.float32):
    """``(projections, dim, d)`` random projection matrices."""
    if kind not in ("gaussian", "orthogonal"):
        raise ValueError(f"kind must be 'gaussian' or 'orthogonal', got {kind!r}")
    if not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be a positive int, got {projections!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if kind == "gaussian":
        return jax.random.normal(key, (projections, dim, d), dtype) / jnp.sqrt(jnp.asarray(dim, dtype))
    if dim > d:
        raise ValueError(f"orthogonal projections need dim <= d = {d}, got dim={dim}")
    g = jax.random.normal(key, (projections, d, dim), dtype)
    q, r = jnp.linalg.qr(g)  # (P, d, dim) orthonormal columns; sign fix makes it Haar-uniform
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    return jnp.swapaxes(q, -1, -2)


def compressive_energy(
    w,
    key,
    *,
    projections: int = 20,
    dim: int = 40,
    kind: str = "gaussian",
    s=2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps=None,
    min_distance=None,
):
    """CoMHE energy of ``w`` (module docstring): mean over ``projections`` random projections."""
    W = _energy.as_neuron_matrix(w, neuron_axis)
    Wn = _energy.normalize_columns(W)
    A = random_projections(key, W.shape[0], projections=projections, dim=dim, kind=kind, dtype=W.dtype)

    def one(a):
        return _energy.hyperspherical_energy(
            jnp.matmul(a, Wn, precision=jax.lax.Precision.HIGHEST), s=s, distance=distance,
            half_space=half_space, eps=eps, min_distance=min_distance,
        )

    return jnp.mean(jax.vmap(one)(A))
