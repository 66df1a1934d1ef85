r"""KoLeo: the Kozachenko–Leonenko differential-entropy estimator as a spreading term.

Sablayrolles et al. (ICLR 2019, "Spreading vectors for similarity search") and DINOv2 (Oquab et
al. 2023) spread vectors on the sphere by maximising the log-distance of each to its nearest
neighbour. For ``N`` vectors ``x_i`` normalised to ``x̂_i = x_i/‖x_i‖``:

    KoLeo(x) = −(1/N) Σ_i ½ log(ρ_i² + ε²),    ρ_i = min_{j≠i} ‖x̂_i − x̂_j‖,

i.e. ``−(1/N) Σ_i log ρ_i`` up to the guard ``ε`` (default 1e-8): the relative change is at most
``ε²/(2ρ_i²)``, below float64 resolution for ``ρ_i > 1e-4``.

Exact duplicates (``ρ_i = 0``) give the finite term ``−log ε`` and, as ``ρ² ↦ log(ρ² + ε²)`` is
smooth and ``ρ_i² = ‖x̂_i − x̂_j‖²`` has a zero derivative at ``x̂_i = x̂_j``, a zero gradient
from that pair: an exact duplicate is a stationary point by symmetry (no direction is
preferred). Any perturbation gets the full repulsion ``≈ 1/ρ``. A zero vector stays zero
(distance 1 to every unit vector, 0 to another zero vector), with a finite gradient.

Differences from DINOv2's ``KoLeoLoss`` (``dinov2/loss/koleo_loss.py``), which computes
``−mean log(‖x̂_i − x̂_{n(i)} + ε·1‖ + ε)`` with ``ε = 1e-8`` and ``x̂ = x/max(‖x‖, ε)``:

* the guard: ``½ log(ρ² + ε²)`` instead of ``log(‖δ + ε·1‖ + ε)``, which adds ``ε`` to every
  coordinate of the difference (a preferred direction) as well as to the norm; for
  ``ρ ≫ ε`` the two agree to ``O(ε/ρ)``;
* the normalisation is exact (scale-free, zero vectors stay zero) instead of ``max(‖x‖, ε)``.

As in DINOv2, the nearest neighbour ``n(i)`` is found from the Gram matrix of the normalised
vectors (O(N²) memory, fine for a batch), then ``ρ_i`` is recomputed from the difference
``x̂_i − x̂_{n(i)}`` (exact for near-duplicates, where ``2 − 2 cos`` loses all digits); the
gradient reaches both ``x_i`` and its neighbour, and is piecewise smooth (it changes where the
nearest neighbour changes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mhe_jax import _checks
from mhe_jax._baselines import _LayersSum
from mhe_jax._neurons import as_neuron_matrix, gram, normalize_columns
from mhe_jax._transform import ScalarOrSchedule, check_strength, penalty_transformation
from mhe_jax._tree import Mask, NeuronAxis

__all__ = ["koleo_energy", "koleo_loss", "koleo_regularizer"]

DEFAULT_EPS = 1e-8


def _check_eps(eps) -> ArrayLike:
    _checks.check_nonnegative(eps, "eps")
    if _checks.is_concrete_number(eps) and float(eps) == 0.0:
        raise ValueError("eps must be > 0 (it keeps duplicates finite: each adds −log(eps))")
    return eps


@jax.jit
def koleo_of_matrix(W: jax.Array, eps: ArrayLike = DEFAULT_EPS) -> jax.Array:
    """KoLeo of the ``N >= 2`` columns of ``W`` ``(d, N)`` (no argument checks)."""
    Wn = normalize_columns(W)
    n = Wn.shape[1]
    sq = jnp.sum(Wn * Wn, axis=0)  # 1, or 0 for a zero column
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram(Wn)
    d2 = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d2)
    nearest = jnp.argmin(jax.lax.stop_gradient(d2), axis=1)
    delta = Wn - jnp.take(Wn, nearest, axis=1)
    rho2 = jnp.sum(delta * delta, axis=0)
    eps = jnp.asarray(eps, Wn.dtype)
    return -0.5 * jnp.mean(jnp.log(rho2 + eps * eps))


def koleo_energy(w: ArrayLike, *, neuron_axis: int = -1, eps: ArrayLike = DEFAULT_EPS
                 ) -> jax.Array:
    r"""KoLeo energy of the neurons of ``w``: ``−(1/N) Σ_i ½ log(ρ_i² + ε²)``.

    ``ρ_i = min_{j≠i} ‖ŵ_i − ŵ_j‖`` is the distance of neuron ``i`` to its nearest neighbour on
    the unit sphere (``ŵ_i = w_i/‖w_i‖``); lower is more spread out. ``w`` holds its ``N >= 2``
    neurons along ``neuron_axis`` (default: the last axis, a Flax kernel's outputs), every
    other axis flattened into the neuron's vector, as for
    :func:`mhe_jax.hyperspherical_energy`; for features ``(batch, dim)`` (samples as rows) use
    :func:`koleo_loss`. Exact duplicates give ``−log ε`` each and no gradient from their pair;
    see the module docstring for the definition and how it differs from DINOv2's.

    Args:
      w: array with ``ndim >= 2`` and a floating dtype.
      neuron_axis: the axis of the neurons.
      eps: the guard ``ε > 0`` inside the log (finite for duplicates).

    Returns:
      A scalar in the compute dtype (at least float32).

    Raises:
      ValueError: fewer than 2 neurons, ``eps <= 0`` or not finite.

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> w = jnp.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # 3 neurons (columns) in R²
      >>> round(float(mhe_jax.koleo_energy(w)), 6)  # every nearest neighbour at distance √2
      -0.346574
      >>> round(float(mhe_jax.koleo_energy(jnp.ones((2, 2)))), 4)  # a duplicate: −log(1e-8)
      18.4207
    """
    W = as_neuron_matrix(w, neuron_axis)
    if W.shape[1] < 2:
        raise ValueError(
            f"w must have at least 2 neurons along neuron_axis={neuron_axis} (a nearest "
            f"neighbour each); got shape {tuple(jnp.shape(w))}")
    return koleo_of_matrix(W, _check_eps(eps))


def koleo_loss(x: ArrayLike, *, eps: ArrayLike = DEFAULT_EPS) -> jax.Array:
    r"""KoLeo loss of a batch of features ``x`` of shape ``(batch, dim)``, samples as rows.

    ``−(1/B) Σ_i ½ log(ρ_i² + ε²)`` with ``ρ_i = min_{j≠i} ‖x̂_i − x̂_j‖`` over the L2-normalised
    rows ``x̂_i = x_i/‖x_i‖``: DINOv2's ``KoLeoLoss`` on ``(batch, dim)`` (the module docstring
    says where the guard differs). Add ``λ · koleo_loss(features)`` to a training loss to
    spread the features (DINOv2: λ = 0.1). Equal to :func:`koleo_energy` with
    ``neuron_axis=0``.

    Args:
      x: ``(batch, dim)`` features, ``batch >= 2``, floating dtype.
      eps: the guard ``ε > 0`` inside the log.

    Returns:
      A scalar; lower is more spread out.

    Raises:
      ValueError: ``x`` is not 2-D or has fewer than 2 rows; ``eps <= 0`` or not finite.

    Examples:
      >>> import jax, jax.numpy as jnp, mhe_jax
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])  # two near rows
      >>> g = jax.grad(mhe_jax.koleo_loss)(x)  # pushes rows 0 and 1 apart
      >>> bool(g[0, 1] > 0) and bool(g[1, 1] < 0)
      True
    """
    if jnp.ndim(x) != 2:
        raise ValueError(f"x must have shape (batch, dim), got shape {tuple(jnp.shape(x))}")
    if jnp.shape(x)[0] < 2:
        raise ValueError(f"x must have at least 2 rows (samples), got shape {jnp.shape(x)}")
    return koleo_of_matrix(as_neuron_matrix(x, 0, "x"), _check_eps(eps))


def koleo_regularizer(
    strength: ScalarOrSchedule,
    *,
    eps: float = DEFAULT_EPS,
    mask: Mask = None,
    neuron_axis: NeuronAxis = None,
    layout: str = "flax",
    max_norm: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add ``strength · ∇ Σ_l KoLeo(W_l)`` over the selected layers to the updates.

    The weight-space form of :func:`koleo_energy`, in the style of
    :func:`mhe_jax.mhe_regularizer`: chain it before the optimizer. Layer selection (``mask``,
    ``neuron_axis``, ``layout``) and ``max_norm`` (clip the regularizer's gradient, global
    norm) are those of :func:`mhe_jax.orthonormal_regularizer`; ``state.strengths`` holds the
    current strength. Every selected layer needs at least 2 neurons.

    Args:
      strength: a number ``>= 0`` or an optax schedule of the step count.
      eps: the guard ``ε > 0`` of :func:`koleo_energy`.
      mask: which layers (see :func:`mhe_jax.selected_layers`).
      neuron_axis: the neuron axes of the selected layers (default: the layout's).
      layout: the parameter layout (``"flax"``, ``"equinox"``, ...).
      max_norm: clip the regularizer's own gradient to this global norm.

    Returns:
      An ``optax`` gradient transformation.

    Examples:
      >>> import jax.numpy as jnp, optax, mhe_jax
      >>> params = {"Dense_0": {"kernel": jnp.array([[1.0, 0.9], [0.0, 0.1]])}}
      >>> tx = optax.chain(mhe_jax.koleo_regularizer(0.1), optax.sgd(0.1))
      >>> updates, _ = tx.update({"Dense_0": {"kernel": jnp.zeros((2, 2))}}, tx.init(params),
      ...                        params)
      >>> new = optax.apply_updates(params, updates)["Dense_0"]["kernel"]
      >>> bool(mhe_jax.koleo_energy(new) < mhe_jax.koleo_energy(params["Dense_0"]["kernel"]))
      True
    """
    check_strength(strength, "strength")
    _check_eps(eps)
    penalty = _LayersSum(_Koleo(eps), strength)
    return penalty_transformation(penalty, strengths=penalty.strengths, mask=mask,
                                  neuron_axis=neuron_axis, layout=layout, max_norm=max_norm)


@dataclasses.dataclass(frozen=True)
class _Koleo:
    """``W ↦ KoLeo(W)`` of one layer's ``(d, N)`` matrix (a named, comparable callable)."""

    eps: float = DEFAULT_EPS

    def __call__(self, W: jax.Array) -> jax.Array:
        if W.shape[1] < 2:
            raise ValueError(
                f"koleo_regularizer: a selected layer has {W.shape[1]} neuron(s); KoLeo needs "
                "at least 2 (exclude it with mask=)")
        return koleo_of_matrix(W, self.eps)
