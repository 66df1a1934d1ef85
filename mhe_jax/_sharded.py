r"""Hyperspherical energy of neurons sharded over a mesh axis (``jax.shard_map``).

Design: a ring over the ``P`` devices of ``axis_name`` that visits each pair of blocks once.
Device ``p`` owns the normalised neurons ``Ŵ_p`` (``N/P`` columns). At step ``t = 0 … ⌊P/2⌋`` it
holds the block of device ``p + t`` (received from its neighbour by ``ppermute``) and computes
the ``N/P × N/P`` tile of cosines with its own block, ``b`` rows at a time (``b``: about
``block_size``, 256 by default, balanced by :func:`mhe_jax._tiled.plan`; the whole tile when
``N/P`` is at most that): ``h`` and ``h'`` (one ``jax.jvp`` of the
kernel's pair function, through :func:`mhe_jax._tiled.tile_terms`), the value, the force on its
own neurons (rows), and — for ``1 ≤ t < P/2`` — the force on the visiting neurons (columns),
accumulated in a buffer that travels with the visiting block and is sent home at the end. For
even ``P`` the step ``t = P/2`` meets each pair from both sides and only keeps its rows (weight
1). This is the cyclic schedule of :mod:`mhe_jax._tiled` with one block per device.

Why a ring and not an all-gather of ``Ŵ``: per-device memory is ``O(N·d/P + b·N/P)``
(two blocks and ``b`` rows of a tile) instead of ``O(N·d + N²/P)``, the same bytes move over the
links
(``⌊P/2⌋`` block hops plus the force buffers instead of ``P − 1`` gathered blocks), and the
symmetric schedule halves the Gram and elementwise work (``(P+1)/(2P)`` of the dense products).

Exactness: the value is the ``psum`` of the per-device tile sums and the gradient is
``2 Σ_j h'(c_ij) ŵ_j`` for each neuron — the same terms as the single-device path, summed in
another order. ``N`` not divisible by ``P`` (or ``N/P`` by ``b``) is padded with zero neurons
that are masked out.

The regularizers route a layer here with ``mesh_axis=`` (:func:`layer_energy`): the mesh is
read from the parameter's type at trace time, ``jax.typeof(w).sharding.mesh``.

Grouped pairs: the group ids are sharded like the neurons and travel with the visiting block, so
each row block's mask is compared from the ids of its rows and columns (:func:`mhe_jax._tiled.
pair_keep`); the mean over the pairs that count is :mod:`mhe_jax._pairenergy`'s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from mhe_jax import _energy, _tiled
from mhe_jax._kernels import kernel_from_spec, pair_function
from mhe_jax._neurons import as_neuron_matrix, normalize_columns, sample_indices, scale_free
from mhe_jax._pairenergy import (
    check_groups,
    check_pairs_given_groups,
    grouped_kernel,
    grouped_mean,
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
    memory ``O(N·d/P + b·N/P)`` for ``b`` rows of each step's ``N/P × N/P`` tile. Value and
    gradient are those of :func:`~mhe_jax.hyperspherical_energy` with the same options (up to
    the order of summation); the result is a replicated scalar. ``N`` need not be divisible by
    ``P`` (zero padding, masked). Works eagerly and under ``jax.jit``; ``w`` may be sharded
    already. Other keyword options: ``min_distance`` (force bound), ``precision`` (of the tile
    products) and ``spec=`` (a prebuilt :class:`mhe_jax.EnergySpec`, without
    projection/calibration); ``block_size`` sets ``b``, about that many rows (``None``: 256;
    the whole tile when ``N/P ≤ b``); it does not change the result. With ``sample_size``
    the sampled columns are gathered from the devices first (``O(sample_size·d)`` per
    device). The gradient is tangent per neuron and the value scale-invariant, as for
    :func:`~mhe_jax.hyperspherical_energy`. ``potential`` (a user pair potential) and
    ``groups`` / ``pairs`` (group ids, sharded like the neurons, and which pairs count) are as
    in :func:`~mhe_jax.hyperspherical_energy`. The mesh axis must be ``Auto``
    (``jax.make_mesh``'s default in jax 0.10 is ``Explicit``). Regularizers:
    ``mhe_regularizer(..., mesh_axis=)`` uses this ring for the layers it applies to.

    Examples:
      >>> import jax, jax.numpy as jnp, mhe_jax
      >>> from jax.sharding import AxisType
      >>> mesh = jax.make_mesh((jax.device_count(),), ("x",), axis_types=(AxisType.Auto,))
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 3 neurons in R²
      >>> round(float(mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", s=1.0)), 4)
      0.6381
      >>> f = lambda r: 1 / r  # a user potential: the s = 1 kernel again
      >>> round(float(mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", potential=f)), 4)
      0.6381
      >>> ids = jnp.array([0, 0, 1])  # group ids, sharded like the neurons: one pair counts
      >>> e = mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", s=1.0, groups=ids)
      >>> round(float(e), 4)  # the pair (0, 1) at 90°: 1/√2
      0.7071
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
    W = as_neuron_matrix(w, neuron_axis)
    if groups is not None:
        groups = check_groups(groups, W.shape[1])
    return _ring_energy(W, spec, mesh, axis_name, key, groups)


def _ring_energy(W: Array, spec: EnergySpec, mesh, axis_name: str, key,
                 groups: Array | None = None) -> Array:
    """The mean energy of the neuron matrix ``W`` (d, N) by the ring over ``mesh[axis_name]``
    (``mesh`` a :class:`~jax.sharding.Mesh` or the abstract mesh of ``W``'s type); no
    projection, no calibration. ``groups``: checked ``(N,)`` group ids, or None."""
    n_total = W.shape[1]
    devices = mesh.shape[axis_name]
    W = _free_gradient_sharding(W, mesh)
    if n_total % devices == 0:
        # Whole columns on each device before the scale-free map: its column scales and
        # tangent projection are then local, and a layer sharded along its input axis costs
        # one all-to-all each way (the map's backward in that layout took a second one).
        W = lax.with_sharding_constraint(W, NamedSharding(mesh, PartitionSpec(None, axis_name)))
    W = scale_free(W)
    kernel, params = kernel_from_spec(spec, W.dtype)
    n = n_total if spec.sample_size is None else spec.sample_size
    # m neurons a device, in row blocks of `rows` (block_size, default _tiled.DEFAULT_BLOCK)
    block = _tiled.DEFAULT_BLOCK if spec.block_size is None else spec.block_size
    chunks, rows = _tiled.plan(-(-n // devices), block)
    npad = devices * chunks * rows
    if spec.sample_size is not None:
        # Padding is appended to the indices and masked, not to the gathered columns: XLA's SPMD
        # partitioner aborts (a failed CHECK, jax 0.10.2) on the gradient of a pad of a gather
        # from a sharded array.
        idx = sample_indices(n_total, spec.sample_size, key)
        if npad > n:
            idx = jnp.concatenate([idx, jnp.zeros(npad - n, idx.dtype)])
        W = jnp.take(W, idx, axis=1)
        if npad > n:
            W = jnp.where(lax.broadcasted_iota(jnp.int32, W.shape, 1) < n, W, 0.0)
    elif npad > n:
        W = jnp.pad(W, ((0, 0), (0, npad - n)))
    W = lax.with_sharding_constraint(W, NamedSharding(mesh, PartitionSpec(None, axis_name)))
    Wn = normalize_columns(W)  # zero padding stays zero
    if groups is not None:  # the (sampled) ids, padded and sharded like the neurons
        kernel, params = grouped_kernel(kernel, params, spec.pairs, groups, spec.sample_size, key)
        params["groups"] = lax.with_sharding_constraint(
            jnp.pad(params["groups"], (0, npad - n)), NamedSharding(mesh, PartitionSpec(axis_name)))
    if n > 1:
        total = ring_pair_sum(kernel, mesh, axis_name, n, rows, Wn, params)
    else:
        total = jnp.zeros((), W.dtype)
    if groups is None:
        return mean_from_sum(kernel, params, total, n, n_total)
    return grouped_mean(kernel, params, total, n, n_total, groups)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _free_gradient_sharding(W: Array, mesh) -> Array:
    """Identity whose gradient is marked unconstrained, so that XLA lays it out like the
    parameter it is added to (not like the ring's column blocks)."""
    return W


def _free_fwd(W, mesh):
    return W, None


def _free_bwd(mesh, _, ct):
    free = PartitionSpec(*([PartitionSpec.UNCONSTRAINED] * ct.ndim))
    return (lax.with_sharding_constraint(ct, NamedSharding(mesh, free)),)


_free_gradient_sharding.defvjp(_free_fwd, _free_bwd)


def check_mesh_axis(mesh_axis: str | None) -> str | None:
    """``mesh_axis=`` of the regularizers: ``None`` or the name of a mesh axis (a str)."""
    if mesh_axis is not None and not isinstance(mesh_axis, str):
        raise TypeError(f"mesh_axis must be the name of a mesh axis (a str) or None, got "
                        f"{type(mesh_axis).__name__} {mesh_axis!r}")
    return mesh_axis


def on_ring(spec: EnergySpec, n: int) -> bool:
    """Whether a layer of ``n`` neurons whose energy is described by ``spec`` is on the tiled
    path (the one the ring replaces): Riesz kernel, no projection, more than
    ``_tiled.DENSE_MAX`` neurons (after sampling) or a ``block_size`` below that."""
    if spec.kernel != "riesz" or spec.projection is not None:
        return False
    k = spec.sample_size if spec.sample_size is not None and spec.sample_size < n else n
    return not _tiled.is_dense(k, spec.block_size)


def ring_mesh(w, mesh_axis: str, where: str):
    """The (abstract) mesh of ``w``'s type when it has ``mesh_axis`` with more than one device;
    ``None`` when ``w`` lies on no mesh (one device) or that axis has one device.

    Read from ``jax.typeof(w).sharding.mesh``, which a traced array under ``jax.jit`` carries
    for ``NamedSharding`` inputs (only the mesh: with ``Auto`` axes the partition spec is not
    part of the type). Raises a ``ValueError`` naming ``mesh_axis`` and ``where`` when ``w``
    lies on a mesh without that axis or with that axis ``Explicit``.
    """
    mesh = getattr(jax.typeof(w), "sharding", None)
    mesh = getattr(mesh, "mesh", None)
    if mesh is None or mesh.empty:
        return None
    if mesh_axis not in mesh.axis_names:
        raise ValueError(f"mesh_axis={mesh_axis!r} is not an axis of the mesh of {where} "
                         f"({dict(mesh.shape)})")
    if mesh.axis_types[mesh.axis_names.index(mesh_axis)] == AxisType.Explicit:
        raise ValueError(
            f"mesh_axis={mesh_axis!r} is an Explicit axis of the mesh of {where}: the ring "
            "needs an Auto axis (jax.make_mesh(..., axis_types=(AxisType.Auto, ...)))")
    return mesh if mesh.shape[mesh_axis] > 1 else None


def layer_energy(W: Array, spec: EnergySpec, mesh_axis: str | None, key, where: str,
                 groups: Array | None = None) -> Array:
    r"""The regularizer's energy of one layer's neuron matrix ``W`` (d, N).

    With ``mesh_axis`` set, a layer on the tiled path (:func:`on_ring`) that lies on a mesh
    with that axis (:func:`ring_mesh`) is computed by the ring over it (as
    :func:`sharded_hyperspherical_energy`): per-device memory ``O(N·d/P + (N/P)²)``,
    ``⌊P/2⌋ + 1`` neighbour transfers of an ``N/P``-neuron block (and as many of its force
    buffer) instead of an all-gather of the layer. Every other layer, and every layer without
    ``mesh_axis``, is :func:`mhe_jax.energy_from_spec`. Same value and gradient either way, up
    to the order of summation; ``spec.calibrate`` applies to both. ``groups``: the layer's
    ``(N,)`` group ids for ``spec.pairs`` (:func:`mhe_jax._transform.layer_groups`), or None.
    """
    mesh = ring_mesh(W, mesh_axis, where) if mesh_axis is not None else None
    if mesh_axis is None or mesh is None or not on_ring(spec, W.shape[1]):
        return _energy.energy_from_spec(W, spec, key=key, groups=groups)
    if groups is not None:
        groups = check_groups(groups, W.shape[1])
    energy = _ring_energy(W, spec, mesh, mesh_axis, key, groups)
    if spec.calibrate:
        energy = _energy.calibrate(spec, energy, W.shape[1], W.shape[0])
    return energy


def sharded_over(leaf, axes: tuple[int, ...] | None = None) -> tuple[str, ...] | None:
    """The mesh axes (of more than one device) that a concrete ``leaf`` is sharded over along
    its ``axes`` (all of them when None), read from its ``NamedSharding``; ``None`` when that is
    not known (a tracer, a NumPy array, another kind of sharding)."""
    sharding = getattr(leaf, "sharding", None) if isinstance(leaf, jax.Array) else None
    if isinstance(leaf, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec) + (None,) * (leaf.ndim - len(sharding.spec))
    names: list[str] = []
    for a in range(leaf.ndim) if axes is None else axes:
        entry = spec[a]
        for name in (entry if isinstance(entry, tuple) else (entry,)):
            if name is not None and sharding.mesh.shape[name] > 1:
                names.append(name)
    return tuple(names)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3, 4))
def ring_pair_sum(k, mesh: Mesh, axis_name: str, n: int, rows: int, Wn: Array, params) -> Array:
    """``Σ_{i≠j<n} h(ŵ_iᵀŵ_j)`` for ``Wn`` (d, P·m) sharded by columns over ``axis_name``;
    each step's ``m × m`` tile is computed ``rows`` rows at a time (``rows`` divides ``m``)."""
    return _ring(k, mesh, axis_name, n, rows, Wn, params, with_force=False)[0]


@functools.partial(ring_pair_sum.defjvp, symbolic_zeros=True)
def _ring_pair_sum_jvp(k, mesh, axis_name, n, rows, primals, tangents):
    Wn, params = primals
    dWn, dparams = tangents
    if any(not isinstance(t, SymbolicZero) for t in jax.tree.leaves(dparams)):
        raise NotImplementedError(
            "differentiating an energy with respect to s, t or eps is not supported"
        )
    if isinstance(dWn, SymbolicZero):
        value = _ring(k, mesh, axis_name, n, rows, Wn, params, with_force=False)[0]
        return value, jnp.zeros_like(value)
    value, force = _ring(k, mesh, axis_name, n, rows, Wn, params, with_force=True)
    return value, 2.0 * jnp.sum(force * dWn)  # force sharded like Wn


def _ring(k, mesh, axis_name, n, rows, Wn, params, with_force) -> tuple[Array, Array | None]:
    devices = mesh.shape[axis_name]
    spec = PartitionSpec(None, axis_name)
    out_specs = (PartitionSpec(), spec) if with_force else PartitionSpec()
    params = dict(params)
    ids = params.pop("groups", None) if k.pairs != "all" else None  # sharded like the neurons

    def body(Wl, params, ids):
        h = pair_function(k, params)
        value, force = _ring_local(h, Wl, axis_name, devices, n, with_force,
                                   PRECISIONS[k.precision], rows,
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
                rows=None, groups=None):
    """Per-device part: value of the tiles of this device and the force on its neurons.

    Each step's ``m × m`` tile (own rows, visiting columns) is computed in ``m / rows`` row
    blocks (one when ``rows`` is None or ``m``), so the tile memory is ``rows × m``.
    ``groups``: ``(local ids, pairs)``; the ids of the visiting block travel with it.
    """
    d, m = Wl.shape
    dtype = Wl.dtype
    me = lax.axis_index(axis_name)
    half = devices // 2
    once = (devices - 1) // 2
    b = m if rows is None else rows
    chunks = m // b
    Rl = Wl.T  # (m, d) row layout
    a_idx = lax.broadcasted_iota(jnp.int32, (b, m), 0)
    b_idx = lax.broadcasted_iota(jnp.int32, (b, m), 1)
    padded = devices * m > n

    def part(V, block, diagonal: bool, columns: bool, vids=None):
        """The tile (me, block) with the visiting neurons ``V`` (d, m): ``(Σ h, force on the
        own rows (d, m), force on the visiting columns (d, m) when ``columns``)``."""
        Rv = V.T  # (m, d)

        def rows_terms(r):
            """Rows ``r·b … r·b + b`` of the tile: their value, row force (d, b), and their
            share of the column force (d, m)."""
            own = Rl if chunks == 1 else lax.dynamic_slice_in_dim(Rl, r * b, b, 0)
            keep = jnp.ones((b, m), bool)
            if diagonal:
                keep = (r * b + a_idx) != b_idx
            if padded:
                keep = keep & (me * m + r * b + a_idx < n) & (block * m + b_idx < n)
            if groups is not None:
                assert vids is not None  # the visiting block's ids travel with it when grouped
                own_ids = groups[0] if chunks == 1 else lax.dynamic_slice_in_dim(
                    groups[0], r * b, b, 0)
                keep = keep & _tiled.pair_keep(own_ids, vids, groups[1])
            hv, dh = _tiled.tile_terms(h, own, Rv, keep, with_force, precision)
            if dh is None:
                return jnp.sum(hv), None, None
            row_force = _tiled._dot(Rv, dh, (0, 1), precision)  # (d, b): Σ_j h'_ij ŵ_j
            col_force = _tiled._dot(own, dh, (0, 0), precision) if columns else None
            return jnp.sum(hv), row_force, col_force  # col: (d, m), Σ_i h'_ij ŵ_i

        if chunks == 1:
            return rows_terms(0)

        def body(carry, r):
            value, colf = carry
            v, row_force, col_force = rows_terms(r)
            if col_force is not None:
                colf = colf + col_force
            return (value + v, colf), row_force

        carry0 = (jnp.zeros((), dtype), jnp.zeros((d, m), dtype) if columns else None)
        (value, colf), row_force = lax.scan(body, carry0, jnp.arange(chunks))
        if row_force is not None:  # (chunks, d, b) -> (d, m)
            row_force = jnp.transpose(row_force, (1, 0, 2)).reshape(d, m)
        return value, row_force, colf

    # t = 0: the diagonal tile (rows only: h'(C) is symmetric).
    value, force, _ = part(Wl, me, True, False, None if groups is None else groups[0])
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
        if groups is not None:
            visiting = [lax.ppermute(visiting[0], axis_name, left)]
        p, row_force, col_force = part(V, (me + t) % devices, False, columns,
                                       visiting[0] if groups is not None else None)
        value = value + (p + p if columns else p)
        if with_force:
            force = force + row_force
            if columns:
                G = G + col_force
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
