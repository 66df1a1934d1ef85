r"""Public hyperspherical energies (the paper's Eq. 1, 2, 4, 5, 8) and their spec entry point.

Notation. ``w`` holds ``N`` neurons along ``neuron_axis``; every other axis is flattened into the
neuron's vector, giving ``W`` of shape ``(d, N)`` (:mod:`mhe_jax._neurons`). Neurons are projected
on the unit sphere, ``ŵ_i = w_i / ‖w_i‖``, and everything is a function of the cosines
``c_ij = ŵ_iᵀŵ_j`` through the pair kernels of :mod:`mhe_jax._kernels` (the only definition of
the math); sums over pairs and their derivatives are :mod:`mhe_jax._pairsum`'s. The options of
every energy are one validated :class:`mhe_jax.EnergySpec` (:mod:`mhe_jax._spec`).

Numerics guaranteed here (tests/test_numerics.py): values and gradients are finite for any input
with finite entries and any ``s ≥ 0`` (large ``s`` saturates, see :mod:`mhe_jax._kernels`); the
energies are exactly invariant to per-neuron scales by powers of two and invariant to rounding
for other positive scales, for column norms anywhere in the float range; gradients are tangent
(``⟨∂E/∂w_i, w_i⟩ = 0`` to rounding; exactly 0 for ``d = 1``).

Accuracy limit for close pairs (float32). ``2 − 2c`` is formed from a rounded cosine (the
float32 Gram product), so its absolute error is ~1e-7 to a few 1e-7 (more for large ``d``),
comparable to the default float32 ``eps = 1e-6`` in ``r² = 2 − 2c + eps``: the pair energy of
neurons closer than about 1e-3 rad is off by up to 20–30 % (s = 2; measured up to 0.32 at
1e-4 rad and 0.25 at 1e-3 rad in 512-d, 0.4 % at 1e-2 rad), and so is their pair force. Use
float64 where such pairs matter. A compensated distance for the nearest pairs fixes it but was
measured at +12 % of the small-layer value and gradient, so it is not applied
(benchmarks/RESULTS.md, "Close pairs in float32").

Other modules import the pieces from the modules named above (or the public ``mhe_jax``
names), never through this one.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mhe_jax import _checks, _comhe
from mhe_jax._kernels import kernel_from_spec, pair_value
from mhe_jax._neurons import as_neuron_matrix, gram, normalize_columns, scale_free
from mhe_jax._pairenergy import check_groups, check_pairs_given_groups, matrix_energy
from mhe_jax._spec import EnergySpec, resolve_spec

Array = jax.Array

__all__ = [
    "hyperspherical_energy",
    "gaussian_energy",
    "output_energy",
    "energy_from_spec",
    "uniformity_loss",
]


def _riesz_defaults():
    return dict(s=2.0, distance="euclidean", half_space=False, eps=None, sample_size=None,
                min_distance=None, block_size=None, potential=None, pairs="within")


# --------------------------------------------------------------------------------------------
# Public energies.
# --------------------------------------------------------------------------------------------


def energy_from_spec(w, spec: EnergySpec, *, neuron_axis: int = -1, key=None,
                     groups=None) -> Array:
    r"""The energy of the neurons of ``w`` described by a prebuilt :class:`mhe_jax.EnergySpec`.

    The one place that dispatches on the spec; the regularizer and the energies build on it,
    and the variants sit below it:

    * ``spec.projection``: the CoMHE energy :func:`mhe_jax.compressive_energy` (needs ``key``;
      :mod:`mhe_jax._comhe`), the mean of the energy below over projected copies;
    * otherwise :func:`mhe_jax._pairenergy.matrix_energy`: the kernel (``spec.kernel``
      ``"riesz"``: :func:`hyperspherical_energy`, ``"gaussian"``: :func:`gaussian_energy`, or
      ``spec.potential``), ``spec.sample_size`` (an unbiased estimate from that many neurons,
      needs ``key``) and the grouping (``groups`` ids with ``spec.pairs``);
    * ``spec.calibrate``: divided by :func:`mhe_jax.uniform_reference_energy` of the layer's
      shape (``N``, ``d``), so random neurons give ≈ 1 (needs a concrete ``s``); for the log
      energy (``s = 0``, whose reference may be ≤ 0) ``exp(E − E_ref)`` instead (positive and
      increasing in ``E``, :mod:`mhe_jax._calibration`).

    Args:
      w: array with ``N`` neurons along ``neuron_axis`` (other axes flattened).
      spec: the options.
      neuron_axis: axis of ``w`` indexing neurons.
      key: PRNG key for ``sample_size`` / ``projection``.
      groups: ``(N,)`` integer group ids (only the pairs ``spec.pairs`` count), or None.

    Returns:
      A scalar in the compute dtype (float32 for bf16/f16 input).
    """
    if not isinstance(spec, EnergySpec):
        raise TypeError(f"spec must be an EnergySpec, got {type(spec).__name__}")
    W = as_neuron_matrix(w, neuron_axis)
    n_total = W.shape[1]
    if groups is not None:
        groups = check_groups(groups, n_total)
    elif spec.groups is not None:
        raise ValueError(
            f"spec.groups={spec.groups!r} is resolved per layer by mhe_regularizer, mhe_penalty "
            "and layer_energies (from the layer's layout); for one weight pass its ids, groups="
        )
    if spec.projection is not None:
        if spec.sample_size is not None:
            raise ValueError("spec.sample_size and spec.projection cannot be combined")
        if key is None:
            raise ValueError("spec.projection (CoMHE) requires a PRNG key: pass key=")
        energy = _comhe.compressive_from_spec(W, key, spec, groups)
    else:
        energy = matrix_energy(W, spec, key, groups)
    if spec.calibrate:
        energy = calibrate(spec, energy, n_total, W.shape[0])
    return energy


def calibration_reference(spec: EnergySpec, n: int, d: int, half_space=None) -> float:
    """Expected energy of ``n`` uniform random neurons in ``R^d`` with the spec's kernel."""
    from mhe_jax._calibration import uniform_reference_energy

    if spec.kernel != "riesz":
        raise ValueError("calibrate=True is defined for the Riesz/log kernels (kernel='riesz')")
    if not _checks.is_concrete_number(spec.s):
        raise ValueError("calibrate=True needs a concrete s (not a traced hyperparameter)")
    half = spec.half_space if half_space is None else half_space
    return uniform_reference_energy(n, d, s=float(spec.s), distance=spec.distance, half_space=half)


def calibrate(spec: EnergySpec, energy: Array, n: int, d: int, half_space=None) -> Array:
    """``energy`` calibrated by :func:`calibration_reference` (``E / E_ref``, or
    ``exp(E − E_ref)`` for ``s = 0``; see :func:`mhe_jax._calibration.calibrate_energy`)."""
    from mhe_jax._calibration import calibrate_energy

    ref = calibration_reference(spec, n, d, half_space)
    return calibrate_energy(energy, ref, float(spec.s))


def hyperspherical_energy(
    w: ArrayLike,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    sample_size: int | None = None,
    key: jax.Array | None = None,
    min_distance: ArrayLike | None = None,
    block_size: int | None = None,
    potential: Callable[[jax.Array], jax.Array] | None = None,
    groups: ArrayLike | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> Array:
    r"""Hyperspherical energy of the neurons of ``w`` (Eq. 1, 2, 4, 5 of the paper).

    ``E = 1/(N(N−1)) Σ_{i≠j} f_s(dist(ŵ_i, ŵ_j))`` with ``f_s(r) = r^{−s}`` (s > 0) or
    ``log(1/r)`` (s = 0); ``dist`` is ``‖ŵ_i − ŵ_j‖`` (``"euclidean"``) or ``arccos(ŵ_iᵀŵ_j)`` in
    radians (``"angular"``, A-MHE). Half-space MHE adds the virtual neurons ``−ŵ_i`` (mean over
    the ``2N(2N−1)`` ordered pairs of the ``2N`` neurons).

    Args:
      w: array with ``N`` neurons along ``neuron_axis``; the other axes are flattened into each
        neuron (Dense kernel ``(in, out)``: ``out`` neurons; Conv ``(kh, kw, in, out)``: ``out``
        neurons of size ``kh·kw·in``). bf16/f16 are computed in float32. Empty shapes raise.
      s: Riesz exponent ``s ≥ 0`` (may be a traced scalar, e.g. under ``inject_hyperparams``).
        Any ``s`` gives finite values and gradients: where ``f_s`` would exceed ``e^L``
        (``L ≈ 54`` in float32 for s = 50) the kernel is continued linearly (C¹, like
        ``min_distance``); this only acts for ``s ≳ 8`` in float32.
      distance: ``"euclidean"`` or ``"angular"``.
      half_space: add the virtual neurons ``−ŵ_i`` (mean over ``2N(2N−1)`` ordered pairs).
      neuron_axis: axis of ``w`` indexing neurons.
      eps: singularity guard added to the squared distance (``z²`` or ``θ²``); default
        1e-6 (1e-12 in float64). ``eps=0`` gives the bare formula (huge but finite, saturated
        values for duplicates).
      sample_size: if set, the energy of ``sample_size`` neurons drawn without replacement with
        ``key`` — an unbiased estimate of value and gradient (Sec. 3.6).
      key: PRNG key, required with ``sample_size`` (and with a ``spec`` that has a projection).
      min_distance: bound the pair force: below this distance (chord, or radians for
        ``"angular"``) ``f_s`` is continued linearly (C¹); the energy is unchanged above it and
        each pair's force is at most ``s·min_distance^{−s−1}``. For low dimensions (e.g. 10
        classifier neurons in R², where s = 2 forces grow like θ^{−3} at initialisation).
      block_size: neurons per tile of the Gram matrix. ``None`` (default): the ``N × N`` pair
        matrices are formed at once for ``N ≤ 1024`` and computed in
        tiles of about 256 neurons above; an int asks for tiles of about that size (an int
        ``≥ N``: one dense tile). Tiles visit
        each pair of blocks once (symmetry) and keep the memory at ``O(N·d + block·N/2)``; the
        value and gradient are those of the dense formula (up to the order of summation).
      potential: a user pair potential ``f(r)`` in place of ``f_s``: a JAX-traceable scalar
        function of the pair distance ``r`` (chord, or radians for ``"angular"``; the kernel
        evaluates it at ``r = sqrt(dist² + eps)``), e.g. ``lambda r: jnp.exp(-2.0 * r**2)``.
        Half-space adds the ``−ŵ_j`` pairs and ``min_distance`` continues it linearly, as for
        ``f_s``; its derivative comes from JAX (``jax.jvp`` of ``f``) inside the same pair sum,
        so value and gradient still cost two Gram-sized products, tiled and sampled alike.
        Checked when the spec is built (callable, a float scalar for a float scalar, finite
        with a finite derivative on ``(0, 2]``, ``(0, π]`` for ``"angular"``); errors name
        ``potential``. Leave ``s`` at its default (``s`` and ``potential`` together raise).
        ``min_distance`` makes a potential that is only defined above a distance usable.
      groups: one integer group id per neuron, shape ``(N,)`` (may be traced, e.g. a batch's
        labels). Only the pairs named by ``pairs`` count, and the energy is the mean over
        them. When no pair counts (every group a single neuron with ``"within"``, one group
        with ``"across"``) the energy is 0 with a zero gradient (half-space ``"within"``:
        ``f(−1)``, the pairs ``(ŵ_i, −ŵ_i)`` still count; the virtual ``−ŵ_i`` is in
        ``ŵ_i``'s group). Masks are formed tile by tile: memory stays ``O(N·d)`` when tiled.
      pairs: with ``groups``: ``"within"`` (pairs in the same group; equal groups give the
        mean of the per-group energies) or ``"across"`` (pairs from different groups).
      spec: a prebuilt :class:`mhe_jax.EnergySpec` instead of the options above (leave them at
        their defaults); all its fields apply, ``projection``, ``calibrate`` and
        ``precision`` included. ``groups`` (data, not an option) may be given with it.

    Returns:
      A scalar (float32, or float64 for float64 input). ``N = 1`` gives 0 (full space).

    The gradient is tangent to the sphere at each neuron (its radial component is projected
    out), and the value does not depend on the neurons' norms (1e-30 to 1e30 in float32).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 3 neurons in R²
      >>> round(float(mhe_jax.hyperspherical_energy(w, s=1.0)), 4)  # mean of 1/‖ŵ_i − ŵ_j‖
      0.6381
      >>> g = jax.grad(lambda w: mhe_jax.hyperspherical_energy(w, s=1.0))(w)
      >>> [round(float(x), 6) for x in jnp.sum(g * w, axis=0)]  # tangent: ⟨∂E/∂w_i, w_i⟩ = 0
      [0.0, 0.0, 0.0]
      >>> spec = mhe_jax.EnergySpec(s=1.0, distance="angular")
      >>> round(float(mhe_jax.hyperspherical_energy(w, spec=spec)), 4)  # mean of 1/θ_ij
      0.5305

      A user potential (here the Riesz s = 1 kernel again) and grouped pairs:

      >>> round(float(mhe_jax.hyperspherical_energy(w, potential=lambda r: 1 / r)), 4)
      0.6381
      >>> ids = jnp.array([0, 0, 1])  # neurons 0 and 1 form a group
      >>> round(float(mhe_jax.hyperspherical_energy(w, s=1.0, groups=ids)), 4)  # 1/√2
      0.7071
      >>> round(float(mhe_jax.hyperspherical_energy(w, s=1.0, groups=ids, pairs="across")), 4)
      0.6036
    """
    given = dict(s=s, distance=distance, half_space=half_space, eps=eps, sample_size=sample_size,
                 min_distance=min_distance, block_size=block_size, potential=potential,
                 pairs=pairs)
    spec = resolve_spec(spec, _riesz_defaults(), given, kernel="riesz")
    check_pairs_given_groups(spec.pairs, groups)
    return energy_from_spec(w, spec, neuron_axis=neuron_axis, key=key, groups=groups)


def gaussian_energy(
    w: ArrayLike,
    *,
    t: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool = False,
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    sample_size: int | None = None,
    key: jax.Array | None = None,
    block_size: int | None = None,
    groups: ArrayLike | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> Array:
    r"""Gaussian-kernel energy ``log mean_{i≠j} exp(−t · dist(ŵ_i, ŵ_j)²)``.

    With the euclidean distance this is the uniformity loss of Wang & Isola (2020) on the
    normalised neurons (their ``t = 2``). Same conventions as :func:`hyperspherical_energy`;
    the log is taken of the (half-space) mean. In float32 keep ``t·dist² ≲ 80`` (no rescaling
    against underflow is done). ``block_size``: tiling, as in :func:`hyperspherical_energy`.
    ``groups`` / ``pairs``: the mean over the pairs that count, as in
    :func:`hyperspherical_energy` (0 when none counts). ``spec``: a prebuilt
    :class:`mhe_jax.EnergySpec` with ``kernel="gaussian"`` (its ``t``).

    Args:
      w: array with ``N`` neurons along ``neuron_axis`` (other axes flattened).
      t: temperature ``t ≥ 0``.

    Returns:
      A scalar; 0 for a single neuron (full space).

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jnp.eye(2)  # two orthogonal neurons: dist² = 2
      >>> round(float(mhe_jax.gaussian_energy(w, t=2.0)), 4)  # log exp(−4)
      -4.0
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 3 features (rows), labels:
      >>> labels = jnp.array([0, 1, 1])  # the inter-class pairs only (chord² 2, 2 − √2)
      >>> e = mhe_jax.gaussian_energy(x, neuron_axis=0, groups=labels, pairs="across")
      >>> round(float(e), 4)  # log mean(exp(−4), exp(−2(2 − √2)))
      -1.8073
    """
    given = dict(t=t, distance=distance, half_space=half_space, eps=eps, sample_size=sample_size,
                 block_size=block_size, pairs=pairs)
    defaults = dict(t=2.0, distance="euclidean", half_space=False, eps=None, sample_size=None,
                    block_size=None, pairs="within")
    spec = resolve_spec(spec, defaults, given, kernel="gaussian")
    check_pairs_given_groups(spec.pairs, groups)
    return energy_from_spec(w, spec, neuron_axis=neuron_axis, key=key, groups=groups)


def _check_labels(labels, n: int):
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= n):
        bad = values[(values < 0) | (values >= n)]
        raise ValueError(
            f"labels must be class indices in [0, N={n}), got {bad[:5].tolist()}"
            + (" ..." if bad.size > 5 else "")
        )


def output_energy(
    w: ArrayLike,
    labels: ArrayLike,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    neuron_axis: int = -1,
    eps: ArrayLike | None = None,
    min_distance: ArrayLike | None = None,
    spec: EnergySpec | None = None,
) -> Array:
    r"""Data-dependent output-layer energy (Sec. 3.6, Eq. 8).

    ``E = 1/(m(N−1)) Σ_{i=1..m} Σ_{j≠y_i} f_s(dist(ŵ_{y_i}, ŵ_j))`` for a mini-batch of ``m``
    labels ``y`` (integer array of shape ``(m,)``): only the rows of the classes present in the
    batch are computed, ``O(m·N·d)``. ``min_distance``: force bound, as in
    :func:`hyperspherical_energy`.

    Args:
      w: classifier kernel with ``N`` class neurons along ``neuron_axis``.
      labels: integer class indices in ``[0, N)``, shape ``(m,)``. Concrete labels outside that
        range raise a ``ValueError``. Under ``jax.jit`` (traced labels) they cannot be checked:
        a batch with an out-of-range label (``−1`` included, never wrapped) gives ``NaN``
        (value and gradient), never a silently wrong energy.
      spec: a prebuilt :class:`mhe_jax.EnergySpec` instead of the options (full space: its
        ``half_space``, ``sample_size`` and ``projection`` must be unset; ``calibrate``
        divides by the uniform reference of the layer).

    Returns:
      A scalar; 0 for ``N < 2`` or an empty batch.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 3 classes in R²
      >>> e = mhe_jax.output_energy(w, jnp.array([0, 0]), s=2.0)  # class 0 twice
      >>> round(float(e), 4)  # (1/2 + 1/4) / 2: chords √2 and 2 from class 0
      0.375
      >>> mhe_jax.output_energy(w, jnp.array([3]))
      Traceback (most recent call last):
      ...
      ValueError: labels must be class indices in [0, N=3), got [3]
    """
    given = dict(s=s, distance=distance, eps=eps, min_distance=min_distance)
    defaults = dict(s=2.0, distance="euclidean", eps=None, min_distance=None)
    spec = resolve_spec(spec, defaults, given, kernel="riesz")
    for name in ("half_space", "sample_size", "projection"):
        if getattr(spec, name) not in (None, False):
            raise ValueError(f"output_energy is the full-space Eq. 8: spec.{name} must be unset")
    W = as_neuron_matrix(w, neuron_axis)
    labels = jnp.asarray(labels) if not isinstance(labels, jax.Array) else labels
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (m,), got shape {tuple(labels.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    n, d = W.shape[1], W.shape[0]
    _check_labels(labels, n)
    m = labels.shape[0]
    if n < 2 or m == 0:
        return jnp.zeros((), W.dtype)
    W = scale_free(W)
    kernel, params = kernel_from_spec(spec, W.dtype)
    Wn = normalize_columns(W)
    bad = (labels < 0) | (labels >= n)
    rows = jnp.take(Wn, jnp.where(bad, n, labels), axis=1, mode="fill", fill_value=jnp.nan)
    c = jnp.matmul(rows.T, Wn, precision=spec.lax_precision)  # (m, N)
    same = labels[:, None] == jnp.arange(n)[None, :]
    f = jnp.where(same, jnp.zeros((), c.dtype), pair_value(kernel, params, c))
    energy = jnp.sum(f) / (m * (n - 1))
    if spec.calibrate:
        energy = calibrate(spec, energy, n, d, half_space=False)
    return energy


def uniformity_loss(x: ArrayLike, t: ArrayLike = 2.0, *, normalize: bool = True) -> Array:
    r"""Uniformity loss of Wang & Isola (ICML 2020) on a batch of feature vectors (rows).

    ``log mean_{i<j} exp(−t ‖x_i − x_j‖²)`` for ``x`` of shape (batch, dim) — their
    ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``, default ``t = 2``. With ``normalize``
    the rows are first projected on the sphere (their features are L2-normalised), and the value
    equals :func:`gaussian_energy` with ``neuron_axis=0``.
    """
    if normalize:
        return gaussian_energy(x, t=t, neuron_axis=0)
    X = as_neuron_matrix(x, 0, "x")  # (dim, batch)
    _checks.check_nonnegative(t, "t")
    n = X.shape[1]
    sq = jnp.sum(X * X, axis=0)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram(X), 0.0)
    iu = jnp.triu_indices(n, 1)
    return jax.nn.logsumexp(-jnp.asarray(t) * d2[iu]) - jnp.log(n * (n - 1) / 2)
