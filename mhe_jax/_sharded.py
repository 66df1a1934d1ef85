r"""Hyperspherical energy of neurons sharded over a mesh axis (``jax.shard_map``).

Design: a ring over the ``P`` devices of ``axis_name`` that visits each pair of blocks once.
Device ``p`` owns the normalised neurons ``Ŵ_p`` (``N/P`` columns). At step ``t = 0 … ⌊P/2⌋`` it
holds the block of device ``p + t`` (received from its neighbour by ``ppermute``) and computes
the ``N/P × N/P`` tile of cosines with its own block: ``h`` and ``h'`` (one ``jax.jvp`` of the
kernel's pair function, through :func:`mhe_jax._tiled.tile_terms`), the value, the force on its
own neurons (rows), and — for ``1 ≤ t < P/2`` — the force on the visiting neurons (columns),
accumulated in a buffer that travels with the visiting block and is sent home at the end. For
even ``P`` the step ``t = P/2`` meets each pair from both sides and only keeps its rows (weight
1). This is the cyclic schedule of :mod:`mhe_jax._tiled` with one block per device.

Why a ring and not an all-gather of ``Ŵ``: per-device memory is ``O(N·d/P + (N/P)²)``
(two blocks and one tile) instead of ``O(N·d + N²/P)``, the same bytes move over the links
(``⌊P/2⌋`` block hops plus the force buffers instead of ``P − 1`` gathered blocks), and the
symmetric schedule halves the Gram and elementwise work (``(P+1)/(2P)`` of the dense products).

Exactness: the value is the ``psum`` of the per-device tile sums and the gradient is
``2 Σ_j h'(c_ij) ŵ_j`` for each neuron — the same terms as the single-device path, summed in
another order. ``N`` not divisible by ``P`` is padded with zero neurons that are masked out.

Grouped pairs: the group ids are sharded like the neurons and travel with the visiting block, so
each tile's mask is compared from the ids of its rows and columns (:func:`mhe_jax._tiled.
pair_keep`); the mean over the pairs that count is :mod:`mhe_jax._pairenergy`'s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from mhe_jax import _tiled
from mhe_jax._kernels import kernel_from_spec, pair_function, pair_value
from mhe_jax._neurons import as_neuron_matrix, normalize_columns, sample_columns, scale_free
from mhe_jax._pairenergy import (
    check_groups,
    check_pairs_given_groups,
    counted_pairs,
    mean_over_pairs,
)
from mhe_jax._pairsum import mean_from_sum
from mhe_jax._spec import PRECISIONS, EnergySpec, resolve_spec

Array = jax.Array

__all__ = ["sharded_hyperspherical_energy"]


def sharded_hyperspherical_energy(
    w: ArrayLike,
    mesh: Mesh,
    axis_name: str,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    sample_size: int | None = None,
    key: jax.Array | None = None,
    **kernel_options: Any,
) -> Array:
    r""":func:`mhe_jax.hyperspherical_energy` with the neurons sharded over ``mesh[axis_name]``.

    The neurons of ``w`` (along ``neuron_axis``) are split in ``P = mesh.shape[axis_name]``
    contiguous blocks, one per device along that axis (replicated over the other mesh axes), and
    the pairs are computed by a ring of ``ppermute`` (see the module docstring): per-device
    memory ``O(N·d/P + (N/P)²)``. Value and gradient are those of
    :func:`~mhe_jax.hyperspherical_energy` with the same options (up to the order of
    summation); the result is a replicated scalar. ``N`` need not be divisible by ``P`` (zero
    padding, masked). Works eagerly and under ``jax.jit``; ``w`` may be sharded already.
    Other keyword options: ``min_distance`` (force bound), ``precision`` (of the tile products),
    ``potential`` (a user pair potential), ``groups`` / ``pairs`` (group ids, sharded like the
    neurons, and which pairs count) as in :func:`~mhe_jax.hyperspherical_energy`, and ``spec=``
    (a prebuilt :class:`mhe_jax.EnergySpec`, without projection/calibration);
    ``block_size`` is accepted and has no effect on the result (each device computes one
    ``N/P × N/P`` tile per step). The gradient is tangent per neuron and the value
    scale-invariant, as for :func:`~mhe_jax.hyperspherical_energy`.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np, mhe_jax
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("x",))
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
      >>> e = mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", potential=lambda r: 1 / r)
      >>> round(float(e), 4)  # as hyperspherical_energy(w, s=1.0)
      0.6381
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    spec = kernel_options.pop("spec", None)
    block_size = kernel_options.pop("block_size", None)
    groups = kernel_options.pop("groups", None)
    unknown = set(kernel_options) - {"min_distance", "precision", "potential", "pairs"}
    if unknown:
        raise TypeError(f"sharded_hyperspherical_energy got unexpected options {sorted(unknown)}")
    given: dict[str, Any] = dict(
        s=s, distance=distance, half_space=half_space, eps=eps, sample_size=sample_size,
        min_distance=kernel_options.get("min_distance"), block_size=block_size,
        potential=kernel_options.get("potential"), pairs=kernel_options.get("pairs", "within"),
    )
    if spec is None:
        spec = EnergySpec(**given, precision=kernel_options.get("precision", "highest"))
    else:
        defaults = dict(s=2.0, distance="euclidean", half_space=False, eps=None, sample_size=None,
                        min_distance=None, block_size=None, potential=None, pairs="within")
        spec = resolve_spec(spec, defaults, given, kernel="riesz")
    if spec.projection is not None or spec.calibrate:
        raise ValueError("sharded_hyperspherical_energy: spec.projection / spec.calibrate are "
                         "not supported (use hyperspherical_energy)")
    check_pairs_given_groups(spec.pairs, groups)
    W = scale_free(as_neuron_matrix(w, neuron_axis))
    n_total = W.shape[1]
    kernel, params = kernel_from_spec(spec, W.dtype)
    if groups is not None:
        groups = check_groups(groups, n_total)
        counts = counted_pairs(groups, spec.pairs, W.dtype)
        ids = groups
        if spec.sample_size is not None:  # the same draw as the columns (same key)
            ids = sample_columns(ids[None, :], spec.sample_size, key)[0]
    W = sample_columns(W, spec.sample_size, key)
    n = W.shape[1]
    devices = mesh.shape[axis_name]
    npad = -(-n // devices) * devices
    if npad > n:
        W = jnp.pad(W, ((0, 0), (0, npad - n)))
    W = lax.with_sharding_constraint(W, NamedSharding(mesh, PartitionSpec(None, axis_name)))
    Wn = normalize_columns(W)  # zero padding stays zero
    if groups is not None:
        kernel = kernel._replace(pairs=spec.pairs)
        ids = lax.with_sharding_constraint(jnp.pad(ids, (0, npad - n)),
                                           NamedSharding(mesh, PartitionSpec(axis_name)))
        params = {**params, "groups": ids}
    if n > 1:
        total = ring_pair_sum(kernel, mesh, axis_name, n, Wn, params)
    else:
        total = jnp.zeros((), W.dtype)
    if groups is None:
        return mean_from_sum(kernel, params, total, n, n_total)
    antipodal = (pair_value(kernel, params, jnp.asarray(-1.0, W.dtype)) if spec.half_space
                 else 0.0)
    return mean_over_pairs(total, antipodal, spec.half_space, n, n_total, counts)[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3))
def ring_pair_sum(k, mesh: Mesh, axis_name: str, n: int, Wn: Array, params) -> Array:
    """``Σ_{i≠j<n} h(ŵ_iᵀŵ_j)`` for ``Wn`` (d, P·m) sharded by columns over ``axis_name``."""
    return _ring(k, mesh, axis_name, n, Wn, params, with_force=False)[0]


@functools.partial(ring_pair_sum.defjvp, symbolic_zeros=True)
def _ring_pair_sum_jvp(k, mesh, axis_name, n, primals, tangents):
    Wn, params = primals
    dWn, dparams = tangents
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(dparams)):
        raise NotImplementedError(
            "differentiating an energy with respect to s, t or eps is not supported"
        )
    if isinstance(dWn, SymbolicZero):
        value = _ring(k, mesh, axis_name, n, Wn, params, with_force=False)[0]
        return value, jnp.zeros_like(value)
    value, force = _ring(k, mesh, axis_name, n, Wn, params, with_force=True)
    return value, 2.0 * jnp.sum(force * dWn)  # force sharded like Wn


def _ring(k, mesh, axis_name, n, Wn, params, with_force) -> tuple[Array, Array | None]:
    devices = mesh.shape[axis_name]
    spec = PartitionSpec(None, axis_name)
    out_specs = (PartitionSpec(), spec) if with_force else PartitionSpec()
    params = dict(params)
    ids = params.pop("groups", None) if k.pairs != "all" else None  # sharded like the neurons

    def body(Wl, params, ids):
        h = pair_function(k, params)
        value, force = _ring_local(h, Wl, axis_name, devices, n, with_force,
                                   PRECISIONS[k.precision],
                                   None if ids is None else (ids, k.pairs))
        value = lax.psum(value, axis_name)
        return (value, force) if with_force else value

    id_spec = None if ids is None else PartitionSpec(axis_name)
    fn = jax.shard_map(
        body, mesh=mesh, in_specs=(spec, PartitionSpec(), id_spec), out_specs=out_specs,
        check_vma=False
    )
    out = fn(Wn, params, ids)
    return out if with_force else (out, None)


def _ring_local(h, Wl, axis_name, devices, n, with_force, precision=lax.Precision.HIGHEST,
                groups=None):
    """Per-device part: value of the tiles of this device and the force on its neurons.

    ``groups``: ``(local ids, pairs)``; the ids of the visiting block travel with it."""
    d, m = Wl.shape
    dtype = Wl.dtype
    me = lax.axis_index(axis_name)
    half = devices // 2
    once = (devices - 1) // 2
    Rl = Wl.T  # (m, d) row layout
    a_idx = lax.broadcasted_iota(jnp.int32, (m, m), 0)
    b_idx = lax.broadcasted_iota(jnp.int32, (m, m), 1)
    padded = devices * m > n
    row_ok = me * m + a_idx < n

    def keep_for(block) -> Array:
        """The valid pairs of the tile (me, block) (padding columns masked)."""
        return row_ok & (block * m + b_idx < n)

    # t = 0: the diagonal tile.
    keep = a_idx != b_idx
    if padded:
        keep = keep & keep_for(me)
    if groups is not None:
        keep = keep & _tiled.pair_keep(groups[0], groups[0], groups[1])
    hv, dh = _tiled.tile_terms(h, Rl, Rl, keep, with_force, precision)
    value = jnp.sum(hv)
    force = None
    if dh is not None:  # with_force
        force = _tiled._dot(Wl, dh, (1, 0), precision)  # (d, m), dh symmetric
    if half == 0:
        return value, force

    # device p receives from p + 1: after t hops it holds the block of device p + t.
    left = [(j, (j - 1) % devices) for j in range(devices)]
    zeros = jnp.zeros((d, m), dtype)

    def visit(carry, t, columns):
        """Tile (me, me + t); ``columns``: the pair is met from this side only (weight 2)."""
        value, force, V, G, *visiting = carry  # [the visiting block's group ids] when grouped
        V = lax.ppermute(V, axis_name, left)
        if with_force:
            G = lax.ppermute(G, axis_name, left)
        keep = keep_for((me + t) % devices) if padded else jnp.ones((m, m), bool)
        if groups is not None:
            visiting = [lax.ppermute(visiting[0], axis_name, left)]
            keep = keep & _tiled.pair_keep(groups[0], visiting[0], groups[1])
        hv, dh = _tiled.tile_terms(h, Rl, V.T, keep, with_force, precision)
        part = jnp.sum(hv)
        value = value + (part + part if columns else part)
        if dh is not None:  # with_force
            force = force + _tiled._dot(V, dh, (1, 1), precision)  # (d, m): Σ_j h'_ij ŵ_j, own i
            if columns:
                G = G + _tiled._dot(Wl, dh, (1, 0), precision)  # (d, m): Σ_i h'_ij ŵ_i, visiting j
        return (value, force, V, G, *visiting)

    carry = (value, force if with_force else zeros, Wl, zeros)
    if groups is not None:
        carry = (*carry, groups[0])
    if once:
        carry, _ = lax.scan(
            lambda c, t: (visit(c, t, True), None), carry, jnp.arange(1, once + 1)
        )
    if half > once:  # even P: the opposite block, met from both sides
        carry = visit(carry, half, False)
    value, force, _, G = carry[:4]
    if not with_force:
        return value, None
    # the buffer of each block now sits at (owner − half): send it home.
    home = [(j, (j + half) % devices) for j in range(devices)]
    return value, force + lax.ppermute(G, axis_name, home)
