r"""Classification losses: the official MHE cross-entropy, and A-Softmax / SphereFace+.

* :func:`official_cross_entropy` — the loss of the official MHE code (label smoothing, and
  ``log_eps`` inside the log);
* :func:`a_softmax_loss`, :func:`a_softmax_logits`, :func:`sphereface_psi`,
  :func:`sphereface_lambda`, :func:`normalized_softmax_loss` — SphereFace (Liu et al., CVPR 2017)
  for :class:`mhe_jax.models.SphereFace20`;
* :func:`sphereface_plus_loss` — SphereFace+ (MHE paper Eq. 8): A-Softmax + output-layer MHE.

Softmax cross-entropies with integer labels are ``optax.softmax_cross_entropy_with_integer_labels``
and norms with a finite gradient at 0 are ``optax.safe_norm``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

import mhe_jax

__all__ = [
    "official_cross_entropy",
    "sphereface_psi",
    "a_softmax_logits",
    "a_softmax_loss",
    "normalized_softmax_loss",
    "sphereface_lambda",
    "sphereface_plus_loss",
]


def official_cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                           label_smoothing: float = 0.01, log_eps: float = 1e-4) -> jax.Array:
    r"""Mean label-smoothed softmax cross-entropy with ``log_eps`` inside the log (official code).

    ``−Σ_k ỹ_k log(softmax(z)_k + log_eps)`` with ``ỹ = (1 − ε)·onehot(y) + ε/K``.
    logits: (B, K); labels: (B,) integers. ``log_eps=0`` gives the usual loss
    (``optax.softmax_cross_entropy`` of ``optax.smooth_labels``).

    Examples:
        >>> import jax.numpy as jnp
        >>> z = jnp.array([[2.0, 0.0, 0.0]])
        >>> float(official_cross_entropy(z, jnp.array([0]), label_smoothing=0.0, log_eps=0.0))
        ... # doctest: +ELLIPSIS
        0.2395...
    """
    logits = jnp.asarray(logits, jnp.float32)
    target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    if log_eps == 0:
        return jnp.mean(optax.softmax_cross_entropy(logits, target))
    logp = jnp.log(jax.nn.softmax(logits) + log_eps)
    return -jnp.mean(jnp.sum(target * logp, axis=-1))


def _unit_columns(w: jax.Array) -> jax.Array:
    """Columns of ``w`` (d, C) scaled to unit norm; a zero column stays zero (finite gradient)."""
    return w / optax.safe_norm(w, jnp.finfo(w.dtype).tiny, axis=0, keepdims=True)


def _chebyshev_cos_m(c: jax.Array, m: int) -> jax.Array:
    """cos(mθ) as the Chebyshev polynomial T_m(cos θ) (no arccos: smooth at θ = 0 and π)."""
    if m == 1:
        return c
    if m == 2:
        return 2 * c**2 - 1
    if m == 3:
        return (4 * c**2 - 3) * c
    if m == 4:
        c2 = c * c
        return 8 * c2 * (c2 - 1) + 1
    raise ValueError(f"m must be one of 1, 2, 3, 4, got {m}")


def sphereface_psi(cos_theta: ArrayLike, m: int = 4) -> jax.Array:
    """ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m], as a function of cos θ.

    k is found by comparing cos θ with the thresholds cos(jπ/m), j = 1 … m−1 (piecewise constant,
    so no gradient flows through it); cos(mθ) is the Chebyshev polynomial T_m(cos θ). ψ is
    continuous and monotonically decreasing in θ, from 1 at θ = 0 to 1 − 2m at θ = π.

    Examples:
        >>> float(sphereface_psi(1.0, m=4)), float(sphereface_psi(-1.0, m=4))
        (1.0, -7.0)
    """
    m = int(m)
    c = jnp.clip(cos_theta, -1.0, 1.0)
    k = jnp.zeros(c.shape, jnp.int32)
    for j in range(1, m):
        k = k + (c <= np.cos(j * np.pi / m)).astype(jnp.int32)
    k = jax.lax.stop_gradient(k).astype(c.dtype)
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)  # (−1)^k
    return sign * _chebyshev_cos_m(c, m) - 2.0 * k


def a_softmax_logits(embeddings: ArrayLike, classifier_kernel: ArrayLike, labels: ArrayLike,
                     m: int = 4, lam: ArrayLike = 0.0, *, eps: float = 1e-12) -> jax.Array:
    """A-Softmax logits (B, C): ‖x‖ cos θ_j for j ≠ y, and for the target class
    f_y = (λ ‖x‖ cos θ_y + ‖x‖ ψ(θ_y)) / (1 + λ), with θ_j the angle between x and column j of
    ``classifier_kernel`` (shape (d, C), columns normalised here; a zero column gives 0 logits).
    ``eps`` floors ‖x‖ when dividing by it.
    """
    x = jnp.asarray(embeddings)
    w = _unit_columns(jnp.asarray(classifier_kernel))
    labels = jnp.asarray(labels)
    x_norm = optax.safe_norm(x, 0.0, axis=-1, keepdims=True)  # (B, 1); finite gradient at 0
    wx = x @ w  # ‖x‖ cos θ, (B, C)
    cos = wx / jnp.maximum(x_norm, eps)
    onehot = jax.nn.one_hot(labels, w.shape[1], dtype=wx.dtype)
    cos_y = jnp.sum(cos * onehot, axis=-1, keepdims=True)
    psi_y = sphereface_psi(cos_y, m)
    lam = jnp.asarray(lam, wx.dtype)
    f_y = x_norm * (lam * cos_y + psi_y) / (1.0 + lam)
    return wx + onehot * (f_y - x_norm * cos_y)


def a_softmax_loss(embeddings: ArrayLike, classifier_kernel: ArrayLike, labels: ArrayLike,
                   m: int = 4, lam: ArrayLike = 0.0, *, eps: float = 1e-12) -> jax.Array:
    """Mean A-Softmax loss (SphereFace): softmax cross-entropy of :func:`a_softmax_logits`.

    ``embeddings`` (B, d), ``classifier_kernel`` (d, C), integer ``labels`` (B,); ``m`` ∈ {1,2,3,4}
    (m = 1 is the normalised-weight softmax); ``lam`` is the annealing weight λ
    (:func:`sphereface_lambda`), λ = 0 gives the pure A-Softmax.
    """
    logits = a_softmax_logits(embeddings, classifier_kernel, labels, m, lam, eps=eps)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)))


def normalized_softmax_loss(embeddings: ArrayLike, classifier_kernel: ArrayLike,
                            labels: ArrayLike) -> jax.Array:
    """Softmax cross-entropy of the normalised-weight logits ‖x‖ cos θ_j (= A-Softmax with
    m = 1)."""
    logits = jnp.asarray(embeddings) @ _unit_columns(jnp.asarray(classifier_kernel))
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)))


def sphereface_lambda(step: ArrayLike, base: float = 1000.0, gamma: float = 0.12,
                      power: float = 1.0, lambda_min: float = 5.0) -> jax.Array:
    """λ annealing of SphereFace: max(lambda_min, base · (1 + gamma · step)^(−power)).

    (The Caffe layer increments its iteration counter before computing λ, i.e. uses step + 1.)
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(lambda_min, base * (1.0 + gamma * step) ** (-power))


def sphereface_plus_loss(embeddings: ArrayLike, classifier_kernel: ArrayLike,
                         labels: ArrayLike, m: int = 4, lam: ArrayLike = 0.0, *,
                         mhe_weight: ArrayLike = 1.0, s: ArrayLike = 2.0,
                         distance: str = "euclidean", eps: float = 1e-12) -> jax.Array:
    """SphereFace+ (Eq. 8): A-Softmax + λ_M · mini-batch output-layer MHE of the classifier neurons.

    = ``a_softmax_loss(...) + mhe_weight · mhe_jax.output_energy(classifier_kernel, labels, s=s,
    distance=distance)``; ``classifier_kernel`` is (d, C) with neurons as columns. ``mhe_weight``
    (λ_M) default 1.0 is a placeholder: the paper does not state the value used.
    """
    sf = a_softmax_loss(embeddings, classifier_kernel, labels, m, lam, eps=eps)
    mhe = mhe_jax.output_energy(classifier_kernel, jnp.asarray(labels), s=s, distance=distance,
                                neuron_axis=-1)
    return sf + mhe_weight * mhe
