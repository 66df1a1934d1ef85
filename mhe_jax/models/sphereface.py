"""SphereFace-20 and the A-Softmax / SphereFace+ losses (Liu et al., CVPR 2017; MHE paper Sec. 5.2).

SphereFace-20 (the official Caffe ``sphereface_model.prototxt`` / ``sfplus_model.prototxt``):

    input (B, 112, 96, 3) NHWC float32 (official: (rgb − 127.5)/128)
    stage s = 1..4 (widths 64, 128, 256, 512; 1, 2, 4, 1 residual units):
        conv3x3 stride 2 pad 1 (+bias, Xavier init) → PReLU          112x96 → 56x48 → 28x24 → 14x12 → 7x6
        units × [x + PReLU(conv3x3(PReLU(conv3x3(x))))]  (no bias, N(0, 0.01²) init)
    flatten → fc: Linear(7·6·512, 512) (+bias, Xavier)            embeddings (B, 512)
    classifier: bias-free, kernel (512, num_classes) (neurons = columns), used by the
                A-Softmax loss with normalised columns (``SphereFaceHead``)

``SphereFace20.__call__`` returns the embeddings; ``logits`` returns ‖x‖ cos θ_j for every
class (the normalised-weight logits, without margin). 1 + 2·(1+2+4+1) + 1 (+classifier) = 20 layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhe_jax.models.mnist2d import PReLU
from mhe_jax._energy import normalize_columns

__all__ = [
    "SphereFace20",
    "SphereFaceHead",
    "sphereface20",
    "sphereface_psi",
    "a_softmax_logits",
    "a_softmax_loss",
    "sphereface_lambda",
    "sphereface_plus_loss",
    "normalized_softmax_loss",
]

#: Caffe "xavier" filler (uniform, variance 1/fan_in).
xavier = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")


class _ResidualUnit(nnx.Module):
    """x + PReLU(conv(PReLU(conv(x)))), shape-preserving (B, H, W, C)."""

    def __init__(self, c: int, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.01)
        self.conv1 = nnx.Conv(c, c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                              kernel_init=init, rngs=rngs)
        self.act1 = PReLU(c)
        self.conv2 = nnx.Conv(c, c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                              kernel_init=init, rngs=rngs)
        self.act2 = PReLU(c)

    def __call__(self, x):
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class _Stage(nnx.Module):
    """conv3x3 stride 2 (+bias) → PReLU → ``units`` residual units. (B,H,W,Cin) → (B,⌈H/2⌉,⌈W/2⌉,C)."""

    def __init__(self, cin: int, c: int, units: int, rngs: nnx.Rngs):
        self.down = nnx.Conv(cin, c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             kernel_init=xavier, rngs=rngs)
        self.act = PReLU(c)
        self.units = nnx.List([_ResidualUnit(c, rngs) for _ in range(units)])

    def __call__(self, x):
        x = self.act(self.down(x))
        for u in self.units:
            x = u(x)
        return x


class SphereFaceHead(nnx.Module):
    """Bias-free classifier with kernel (embedding_dim, num_classes); ``__call__`` → ‖x‖ cos θ (B, C)."""

    def __init__(self, embedding_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(xavier(rngs.params(), (embedding_dim, num_classes), jnp.float32))

    def __call__(self, embeddings):
        return embeddings @ normalize_columns(self.kernel[...])


class SphereFace20(nnx.Module):
    """SphereFace-20: (B, H, W, in_channels) → embeddings (B, embedding_dim); see module docstring.

    ``input_shape`` (H, W) fixes the flatten size of the fc layer (default 112x96). Paths:
    ``stages/<s>/down/kernel``, ``stages/<s>/units/<u>/conv{1,2}/kernel``, ``fc/kernel``,
    ``classifier/kernel`` (embedding_dim, num_classes) (= :attr:`output_path`).
    """

    output_path: str = "classifier/kernel"

    def __init__(self, num_classes: int = 10572, *, widths: Sequence[int] = (64, 128, 256, 512),
                 units: Sequence[int] = (1, 2, 4, 1), embedding_dim: int = 512,
                 in_channels: int = 3, input_shape: tuple[int, int] = (112, 96),
                 rngs: nnx.Rngs):
        stages = []
        c = in_channels
        h, w = input_shape
        for width, n in zip(widths, units, strict=True):
            stages.append(_Stage(c, int(width), int(n), rngs))
            c = int(width)
            h, w = (h + 1) // 2, (w + 1) // 2  # floor((h + 2·1 − 3)/2) + 1
        self.stages = nnx.List(stages)
        self.fc = nnx.Linear(h * w * c, embedding_dim, kernel_init=xavier, rngs=rngs)
        self.classifier = SphereFaceHead(embedding_dim, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def __call__(self, x):
        """(B, H, W, in_channels) → embeddings (B, embedding_dim)."""
        x = jnp.asarray(x, jnp.float32)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x.reshape(x.shape[0], -1))

    def logits(self, x):
        """Normalised-weight logits ‖x‖ cos θ_j, (B, num_classes) (no margin; for evaluation)."""
        return self.classifier(self(x))


def sphereface20(num_classes: int = 10572, *, rngs: nnx.Rngs, **kwargs) -> SphereFace20:
    """SphereFace-20 (CASIA-WebFace has 10572 identities)."""
    return SphereFace20(num_classes, rngs=rngs, **kwargs)


# ---------------------------------------------------------------------------------------------
# A-Softmax
# ---------------------------------------------------------------------------------------------


def _safe_norm(x, axis, keepdims=False):
    """‖x‖ with a finite (zero) gradient at x = 0."""
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _chebyshev_cos_m(c, m):
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


def sphereface_psi(cos_theta, m: int = 4):
    """ψ(θ) = (−1)^k cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m], as a function of cos θ.

    k is found by comparing cos θ with the thresholds cos(jπ/m), j = 1 … m−1 (piecewise constant,
    so no gradient flows through it); cos(mθ) is the Chebyshev polynomial T_m(cos θ). ψ is
    continuous and monotonically decreasing in θ, from 1 at θ = 0 to 1 − 2m at θ = π.
    """
    m = int(m)
    c = jnp.clip(cos_theta, -1.0, 1.0)
    k = jnp.zeros(c.shape, jnp.int32)
    for j in range(1, m):
        k = k + (c <= np.cos(j * np.pi / m)).astype(jnp.int32)
    k = jax.lax.stop_gradient(k).astype(c.dtype)
    sign = 1.0 - 2.0 * jnp.mod(k, 2.0)  # (−1)^k
    return sign * _chebyshev_cos_m(c, m) - 2.0 * k


def a_softmax_logits(embeddings, classifier_kernel, labels, m: int = 4, lam=0.0, *, eps=1e-12):
    """A-Softmax logits (B, C): ‖x‖ cos θ_j for j ≠ y, and for the target class
    f_y = (λ ‖x‖ cos θ_y + ‖x‖ ψ(θ_y)) / (1 + λ), with θ_j the angle between x and column j of
    ``classifier_kernel`` (shape (d, C), columns normalised here; a zero column gives 0 logits).
    ``eps`` floors ‖x‖ when dividing by it.
    """
    x = jnp.asarray(embeddings)
    w = normalize_columns(jnp.asarray(classifier_kernel))
    labels = jnp.asarray(labels)
    x_norm = _safe_norm(x, axis=-1, keepdims=True)  # (B, 1)
    wx = x @ w  # ‖x‖ cos θ, (B, C)
    cos = wx / jnp.maximum(x_norm, eps)
    onehot = jax.nn.one_hot(labels, w.shape[1], dtype=wx.dtype)
    cos_y = jnp.sum(cos * onehot, axis=-1, keepdims=True)
    psi_y = sphereface_psi(cos_y, m)
    lam = jnp.asarray(lam, wx.dtype)
    f_y = x_norm * (lam * cos_y + psi_y) / (1.0 + lam)
    return wx + onehot * (f_y - x_norm * cos_y)


def a_softmax_loss(embeddings, classifier_kernel, labels, m: int = 4, lam=0.0, *, eps=1e-12):
    """Mean A-Softmax loss (SphereFace): softmax cross-entropy of :func:`a_softmax_logits`.

    ``embeddings`` (B, d), ``classifier_kernel`` (d, C), integer ``labels`` (B,); ``m`` ∈ {1,2,3,4}
    (m = 1 is the normalised-weight softmax); ``lam`` is the annealing weight λ
    (:func:`sphereface_lambda`), λ = 0 gives the pure A-Softmax.
    """
    logits = a_softmax_logits(embeddings, classifier_kernel, labels, m, lam, eps=eps)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=-1))


def normalized_softmax_loss(embeddings, classifier_kernel, labels):
    """Softmax cross-entropy of the normalised-weight logits ‖x‖ cos θ_j (= A-Softmax with m = 1)."""
    logits = jnp.asarray(embeddings) @ normalize_columns(jnp.asarray(classifier_kernel))
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(labels)[:, None], axis=-1))


def sphereface_lambda(step, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0):
    """λ annealing of SphereFace: max(lambda_min, base · (1 + gamma · step)^(−power)).

    (The Caffe layer increments its iteration counter before computing λ, i.e. uses step + 1.)
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.maximum(lambda_min, base * (1.0 + gamma * step) ** (-power))


def sphereface_plus_loss(embeddings, classifier_kernel, labels, m: int = 4, lam=0.0, *,
                         mhe_weight=1.0, s=2.0, distance: str = "euclidean", eps=1e-12):
    """SphereFace+ (Eq. 8): A-Softmax + λ_M · mini-batch output-layer MHE of the classifier neurons.

    = ``a_softmax_loss(...) + mhe_weight · mhe_jax.output_energy(classifier_kernel, labels, s=s,
    distance=distance)``; ``classifier_kernel`` is (d, C) with neurons as columns. ``mhe_weight``
    (λ_M) default 1.0 is a placeholder: the paper does not state the value used.
    """
    from mhe_jax import output_energy

    sf = a_softmax_loss(embeddings, classifier_kernel, labels, m, lam, eps=eps)
    mhe = output_energy(classifier_kernel, jnp.asarray(labels), s=s, distance=distance,
                        neuron_axis=-1)
    return sf + mhe_weight * mhe
