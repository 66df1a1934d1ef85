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

A variant below the one dispatch on the spec (:func:`mhe_jax._energy.energy_from_spec`): each
projected copy's energy is :func:`mhe_jax._pairenergy.matrix_energy` with the same kernel
(built-in or user potential) and grouping.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from mhe_jax._neurons import as_neuron_matrix, normalize_columns, scale_free
from mhe_jax._pairenergy import check_groups, matrix_energy
from mhe_jax._spec import EnergySpec, ProjectionSpec, resolve_spec

__all__ = ["compressive_energy", "random_projections"]


def random_projections(
    key: jax.Array,
    d: int,
    *,
    projections: int = 20,
    dim: int = 40,
    kind: str = "gaussian",
    dtype: DTypeLike = jnp.float32,
) -> jax.Array:
    """``(projections, dim, d)`` random projection matrices."""
    if kind not in ("gaussian", "orthogonal"):
        raise ValueError(f"kind must be 'gaussian' or 'orthogonal', got {kind!r}")
    if not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections must be a positive int, got {projections!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if kind == "gaussian":
        scale = jnp.sqrt(jnp.asarray(dim, dtype))
        return jax.random.normal(key, (projections, dim, d), dtype) / scale
    if dim > d:
        raise ValueError(f"orthogonal projections need dim <= d = {d}, got dim={dim}")
    g = jax.random.normal(key, (projections, d, dim), dtype)
    q, r = jnp.linalg.qr(g)  # (P, d, dim) orthonormal columns; sign fix makes it Haar-uniform
    q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
    return jnp.swapaxes(q, -1, -2)


def compressive_energy(
    w: ArrayLike,
    key: jax.Array,
    *,
    projections: int = 20,
    dim: int = 40,
    kind: str = "gaussian",
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    min_distance: ArrayLike | None = None,
    spec: EnergySpec | None = None,
) -> jax.Array:
    r"""CoMHE energy of ``w`` (module docstring): mean over ``projections`` random projections.

    ``E = (1/P) Σ_p E(A_p Ŵ)`` with ``A_p`` of shape ``(dim, d)`` drawn from ``key``.

    Args:
      w: array with ``N`` neurons along ``neuron_axis`` (other axes flattened, size ``d``).
      key: PRNG key of the projections.
      projections: ``P``, the number of random projections.
      dim: the dimension each neuron is projected to (``A_p`` has shape ``(dim, d)``).
      kind: ``"gaussian"`` or ``"orthogonal"`` projection matrices.
      s: Riesz exponent, as in :func:`mhe_jax.hyperspherical_energy`.
      distance: ``"euclidean"`` or ``"angular"``, as in :func:`mhe_jax.hyperspherical_energy`.
      half_space: add the virtual neurons ``−ŵ_i``, as in :func:`mhe_jax.hyperspherical_energy`.
      neuron_axis: axis of ``w`` indexing neurons.
      eps: singularity guard, as in :func:`mhe_jax.hyperspherical_energy`.
      min_distance: pair-force bound, as in :func:`mhe_jax.hyperspherical_energy`.
      spec: a prebuilt :class:`mhe_jax.EnergySpec` instead of the options (its ``projection``
        field gives ``projections``/``dim``/``kind``).

    Returns:
      A scalar. Scale-invariant per neuron, with a tangent gradient.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jax.random.normal(jax.random.key(0), (16, 8))  # 8 neurons in R^16
      >>> energy = jax.jit(lambda w, key: mhe_jax.compressive_energy(
      ...     w, key, projections=2, dim=16, kind="orthogonal"))
      >>> e = energy(w, jax.random.key(1))
      >>> bool(jnp.allclose(e, mhe_jax.hyperspherical_energy(w), rtol=1e-4))  # k = d: exact
      True
    """
    given: dict[str, Any] = dict(s=s, distance=distance, half_space=half_space, eps=eps,
                                 min_distance=min_distance)
    defaults = dict(s=2.0, distance="euclidean", half_space=False, eps=None, min_distance=None)
    if spec is None:
        spec = EnergySpec(**given, projection=ProjectionSpec(projections, dim, kind))
    else:
        layout = dict(projections=projections, dim=dim, kind=kind)
        if any(v != d for v, d in zip(layout.values(), (20, 40, "gaussian"), strict=True)):
            raise TypeError("pass the projection options either as keywords or in spec=, not both")
        spec = resolve_spec(spec, defaults, given)
        if spec.projection is None:
            spec = spec.replace(projection=ProjectionSpec())
    return compressive_from_spec(as_neuron_matrix(w, neuron_axis), key, spec)


def compressive_from_spec(W, key, spec: EnergySpec, groups=None):
    """CoMHE energy of the neuron matrix ``W`` (d, N) with ``spec.projection``; ``groups``:
    ``(N,)`` group ids (or None), as in :func:`mhe_jax._pairenergy.matrix_energy`."""
    proj = spec.projection
    if proj is None:
        raise ValueError("compressive_from_spec needs spec.projection (a ProjectionSpec)")
    if spec.sample_size is not None:
        raise ValueError("spec.sample_size and spec.projection cannot be combined")
    W = scale_free(W)
    Wn = normalize_columns(W)
    A = random_projections(key, W.shape[0], projections=proj.projections, dim=proj.dim,
                           kind=proj.kind, dtype=W.dtype)
    inner = spec.replace(projection=None, calibrate=False)
    if groups is not None:
        groups = check_groups(groups, W.shape[1])

    def one(a):
        return matrix_energy(jnp.matmul(a, Wn, precision=spec.lax_precision), inner, None, groups)

    return jnp.mean(jax.vmap(one)(A))
