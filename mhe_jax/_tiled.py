r"""Pair sums over the Gram matrix, computed in row tiles with its symmetry.

This module only *schedules* the work of :func:`mhe_jax._pairsum.pairwise_sum`: it receives the
pair function ``h`` (the kernel of :mod:`mhe_jax._kernels`, never a copy of it) and returns

    value = Σ_{i≠j} h(c_ij)          force = Σ_{j≠i} h'(c_ij) ŵ_j   (one column per neuron)

for the columns ``ŵ_i`` of ``Wn`` (d, N), with ``c_ij = ŵ_iᵀŵ_j``. The gradient of ``value`` is
``2 · force`` (``h'(C)`` is symmetric).

Schedule. The neurons are cut into ``K`` blocks of ``B`` (the last one padded with masked zero
columns). Because ``C`` is symmetric, each unordered pair of blocks is visited once: step ``I``
computes the ``B × W`` tile ``C[I, I : I + W]`` (column indices cyclic mod ``K·B``) with
``W = (⌊K/2⌋ + 1)·B`` — the diagonal block, then the ``⌊K/2⌋`` next blocks. Off-diagonal blocks
count twice in the value and push both their rows (``h'_tile @ Ŵ_window``) and their columns
(``Ŵ_I @ h'_tile``); for even ``K`` the block at distance ``K/2`` is reached from both sides and
counts once, rows only. Per step this is one ``B × W`` Gram tile, one elementwise pass that gives
``h`` and ``h'`` together (``jax.jvp``), and two tile matmuls; in all about ``(K+1)/(2K)`` of the
Gram and elementwise work of the dense product and the same matmul work for the force.

Memory is ``O(N·d + B·W) = O(N·d + B·N/2)``: the ``N × N`` matrices are never formed.
``K = 1`` (one block) is the dense computation, without a loop.

Masks are built from ``iota`` comparisons that XLA fuses into the elementwise pass; the diagonal
(``h(1)``, up to ``1/eps``) and the padding are removed with ``select``, never by subtraction.

Grouped pairs (``groups=(ids, pairs)``): only the pairs inside a group (``"within"``) or between
groups (``"across"``) count. The mask of a tile is compared from the group ids of its rows and
columns (slices of the ``(N,)`` ids, carried like the neurons), so no ``N × N`` mask is ever
formed on the tiled path; it is symmetric, so the force rule above is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

#: ``block_size=None`` computes the ``N × N`` matrices at once up to this many neurons and
#: tiles above (measured: tiles that stay in cache and the halved elementwise work win from
#: about a thousand neurons on, see benchmarks/RESULTS.md).
DENSE_MAX = 1024
#: Block used above :data:`DENSE_MAX` (rounded to balance the blocks).
DEFAULT_BLOCK = 256

_HIGHEST = lax.Precision.HIGHEST


def plan(n: int, block_size: int | None) -> tuple[int, int]:
    """(K blocks, B neurons per block) for ``n`` neurons: ``K·B ≥ n``, less than ``K·8`` padding."""
    if block_size is None:
        if n <= DENSE_MAX:
            return 1, n
        block_size = DEFAULT_BLOCK
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise TypeError(f"block_size must be an int or None, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if block_size >= n:
        return 1, n
    k = -(-n // block_size)
    b = -(-n // k)
    if b >= 64:
        b = -(-b // 8) * 8  # aligned tiles
        k = -(-n // b)
    return k, b


def _dot(a: Array, b: Array, contract: tuple[int, int], precision=_HIGHEST) -> Array:
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision)


def tile_terms(h: Callable[[Array], Array], rows: Array, cols: Array, keep, with_force: bool,
               precision=_HIGHEST):
    """``h`` and ``h'`` of the cosines of one tile, zero where ``keep`` is False.

    ``rows`` (b, d) and ``cols`` (w, d) are neurons in row layout; the result is (b, w). Both come
    from one ``jax.jvp`` of ``h`` (one elementwise pass); masked entries (the diagonal, padding)
    are removed with ``select``, so a huge or infinite ``h(1)`` never reaches a sum.
    """
    c = _dot(rows, cols, (1, 1), precision)
    zero = jnp.zeros((), c.dtype)
    if not with_force:
        return jnp.where(keep, h(c), zero), None
    hv, dh = jax.jvp(h, (c,), (jnp.ones_like(c),))
    return jnp.where(keep, hv, zero), jnp.where(keep, dh, zero)


def pair_keep(row_ids: Array, col_ids: Array, pairs: str) -> Array:
    """The ``(len(row_ids), len(col_ids))`` mask of the pairs that count for ``pairs``."""
    same = row_ids[:, None] == col_ids[None, :]
    return same if pairs == "within" else ~same


def is_dense(n: int, block_size: int | None) -> bool:
    """Whether :func:`pair_sum` computes ``n`` neurons as one ``n × n`` tile."""
    return plan(n, block_size)[0] == 1


def pair_sum(
    h: Callable[[Array], Array], Wn: Array, block_size: int | None = None, with_force: bool = True,
    precision=_HIGHEST, groups: tuple[Array, str] | None = None,
):
    """``(Σ_{i≠j} h(c_ij), force (d, N) or None)``; see the module docstring.

    ``precision``: of the Gram tiles (the force products use it too). ``groups``: ``(ids,
    pairs)`` to sum only the pairs that count (module docstring), None for all pairs.
    """
    d, n = Wn.shape
    k, b = plan(n, block_size)
    if k == 1:
        return _dense(h, Wn, with_force, precision, groups)
    return _tiled(h, Wn, k, b, with_force, precision, groups)


def dense_normalized(h: Callable[[Array], Array], W: Array, norm_eps: float = 0.0,
                     precision=_HIGHEST, groups: tuple[Array, str] | None = None):
    """``(Σ_{i≠j} h(c_ij), ∇_W, ‖w_i‖²)`` for the *raw* columns ``W`` (d, N).

    With ``G = WᵀW`` the inverse norms ``r_i = 1 / sqrt(G_ii + norm_eps)`` (``ŵ_i = r_i w_i``,
    ``r_i = 0`` for a zero column) come from the Gram product's diagonal, and the
    normalisation is folded into the ``N × N`` work: ``c = G ∘ r rᵀ`` and, with ``A = h'(C)``
    (diagonal removed) and ``∂r_i/∂w_i = −r_i³ w_i``,

        ∇_W = W Q,   Q = 2 A ∘ r rᵀ − 2 diag(r_i² Σ_j A_ij c_ij),

    so value and gradient are the Gram product and one more ``d × N × N`` product — no pass over
    ``W`` (its squared norms) or the ``d × N`` normalised copy and its backward (what makes
    ``d ≫ N`` layers cheap). The factor 2 is applied to ``Q`` (``N × N``), not to ``∇_W``.
    The squared norms ``G_ii`` (1, N) are returned for the caller's tangent projection.
    ``groups``: as in :func:`pair_sum` (``A`` keeps the pairs that count).
    """
    n = W.shape[1]
    g = _dot(W, W, (0, 0), precision)
    sq = jnp.diagonal(g)
    sq_eps = sq + norm_eps
    ok = sq_eps > jnp.finfo(W.dtype).tiny
    r = jnp.where(ok, lax.rsqrt(jnp.where(ok, sq_eps, 1.0)), 0.0)
    rr = r[:, None] * r[None, :]
    c = g * rr
    off = lax.broadcasted_iota(jnp.int32, (n, n), 0) != lax.broadcasted_iota(jnp.int32, (n, n), 1)
    zero = jnp.zeros((), c.dtype)
    hv, dh = jax.jvp(h, (c,), (jnp.ones_like(c),))
    keep = off if groups is None else off & pair_keep(groups[0], groups[0], groups[1])
    dh = jnp.where(keep, dh, zero)
    value = jnp.sum(jnp.where(keep, hv, zero))
    radial = r * r * jnp.sum(dh * c, axis=1)
    q = jnp.where(off, (2.0 * dh) * rr, (-2.0) * radial[:, None])
    return value, _dot(W, q, (1, 0), precision), sq[None, :]


def _dense(h, Wn, with_force, precision=_HIGHEST, groups=None):
    n = Wn.shape[1]
    R = Wn.T  # (N, d): row layout, the Gram and force products contract the minor dimension
    off = lax.broadcasted_iota(jnp.int32, (n, n), 0) != lax.broadcasted_iota(jnp.int32, (n, n), 1)
    if groups is not None:
        off = off & pair_keep(groups[0], groups[0], groups[1])
    hv, dh = tile_terms(h, R, R, off, with_force, precision)
    value = jnp.sum(hv)
    if dh is None:  # not with_force
        return value, None
    return value, _dot(Wn, dh, (1, 0), precision)  # (d, N) = Ŵ h'(C), h'(C) symmetric


def _tiled(h, Wn, k, b, with_force, precision=_HIGHEST, groups=None):
    d, n = Wn.shape
    dtype = Wn.dtype
    npad = k * b
    half = k // 2  # blocks after the diagonal one in each window
    w = (half + 1) * b
    once = (k - 1) // 2  # of those, blocks whose pair is visited only from this side
    if npad > n:
        Wn = jnp.pad(Wn, ((0, 0), (0, npad - n)))
    R = Wn.T  # (npad, d)
    R2 = jnp.concatenate([R, R[: half * b]], axis=0)  # cyclic extension, (npad + half·b, d)

    # Masks of one tile (row a, window column j): the diagonal, padding, the column weights.
    a_idx = lax.broadcasted_iota(jnp.int32, (b, w), 0)
    j_idx = lax.broadcasted_iota(jnp.int32, (b, w), 1)
    twice = (j_idx >= b) & (j_idx < (1 + once) * b)
    if groups is not None:  # the ids travel like the neurons: padded, cyclically extended
        ids = jnp.pad(groups[0], (0, npad - n))
        ids2 = jnp.concatenate([ids, ids[: half * b]])

    def tile(i, with_force):
        start = i * b
        rows = lax.dynamic_slice_in_dim(R, start, b, 0)  # (b, d)
        window = lax.dynamic_slice_in_dim(R2, start, w, 0)  # (w, d)
        keep = a_idx != j_idx
        if npad > n:
            col = start + j_idx
            col = jnp.where(col >= npad, col - npad, col)
            keep = keep & (start + a_idx < n) & (col < n)
        if groups is not None:
            keep = keep & pair_keep(lax.dynamic_slice_in_dim(ids, start, b),
                                    lax.dynamic_slice_in_dim(ids2, start, w), groups[1])
        hv, dh = tile_terms(h, rows, window, keep, with_force, precision)
        return start, window, jnp.sum(jnp.where(twice, hv + hv, hv)), dh

    if not with_force:

        def value_body(total, i):
            return total + tile(i, False)[2], None

        value, _ = lax.scan(value_body, jnp.zeros((), dtype), jnp.arange(k))
        return value, None

    def body(carry, i):
        total, colf = carry
        start, window, part, dh = tile(i, True)
        assert dh is not None  # with_force: tile_terms returns h'
        row_force = _dot(dh, window, (1, 0), precision)  # (b, d)
        if once:
            cols = lax.dynamic_slice_in_dim(Wn, start, b, 1)  # (d, b)
            col_force = _dot(cols, dh[:, b : (1 + once) * b], (1, 0), precision)  # (d, once·b)
            pos = start + b
            old = lax.dynamic_slice_in_dim(colf, pos, once * b, 1)
            colf = lax.dynamic_update_slice_in_dim(colf, old + col_force, pos, 1)
        return (total + part, colf), row_force

    colf0 = jnp.zeros((d, npad + half * b), dtype)
    (value, colf), row_force = lax.scan(body, (jnp.zeros((), dtype), colf0), jnp.arange(k))
    colf = colf[:, :npad].at[:, : half * b].add(colf[:, npad:])
    force = row_force.reshape(npad, d).T + colf
    return value, force[:, :n]
