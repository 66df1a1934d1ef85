"""SphereFace-20 (Liu et al., CVPR 2017; MHE paper Sec. 5.2); its losses are in mhe_jax.train.

SphereFace-20 (the official Caffe ``sphereface_model.prototxt`` / ``sfplus_model.prototxt``):

    input (B, 112, 96, 3) NHWC float32 (official: (rgb − 127.5)/128)
    stage s = 1..4 (widths 64, 128, 256, 512; 1, 2, 4, 1 residual units):
        conv3x3 stride 2 pad 1 (+bias, Xavier init) → PReLU
                                                  112x96 → 56x48 → 28x24 → 14x12 → 7x6
        units × [x + PReLU(conv3x3(PReLU(conv3x3(x))))]  (no bias, N(0, 0.01²) init)
    flatten → fc: Linear(7·6·512, 512) (+bias, Xavier)            embeddings (B, 512)
    classifier: bias-free, kernel (512, num_classes) (neurons = columns), used by the
                A-Softmax loss with normalised columns (``SphereFaceHead``)

``SphereFace20.__call__`` returns the embeddings; ``logits`` returns ‖x‖ cos θ_j for every
class (the normalised-weight logits, without margin). 1 + 2·(1+2+4+1) + 1 (+classifier) = 20 layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.typing import ArrayLike

from mhe_jax.models.layers import PReLU

__all__ = ["SphereFace20", "SphereFaceHead", "sphereface20"]

#: Caffe "xavier" filler (uniform, variance 1/fan_in).
xavier = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")


class _SphereFace20Options(TypedDict, total=False):
    """The keyword-only options of :class:`SphereFace20` that :func:`sphereface20` passes
    through."""

    widths: Sequence[int]
    units: Sequence[int]
    embedding_dim: int
    in_channels: int
    input_shape: tuple[int, int]


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

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class _Stage(nnx.Module):
    """conv3x3 stride 2 (+bias) → PReLU → ``units`` residual units.

    (B, H, W, Cin) → (B, ⌈H/2⌉, ⌈W/2⌉, C).
    """

    def __init__(self, cin: int, c: int, units: int, rngs: nnx.Rngs):
        self.down = nnx.Conv(cin, c, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                             kernel_init=xavier, rngs=rngs)
        self.act = PReLU(c)
        self.units = nnx.List([_ResidualUnit(c, rngs) for _ in range(units)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.act(self.down(x))
        for u in self.units:
            x = u(x)
        return x


class SphereFaceHead(nnx.Module):
    """Bias-free classifier with kernel (embedding_dim, num_classes).

    ``__call__(embeddings)``: (B, embedding_dim) → ‖x‖ cos θ_j, (B, num_classes), with the
    kernel's columns normalised.
    """

    def __init__(self, embedding_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(xavier(rngs.params(), (embedding_dim, num_classes), jnp.float32))

    def __call__(self, embeddings: ArrayLike) -> jax.Array:
        w = self.kernel[...]
        unit_columns = w / optax.safe_norm(w, jnp.finfo(w.dtype).tiny, axis=0, keepdims=True)
        return jnp.asarray(embeddings) @ unit_columns


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

    def __call__(self, x: ArrayLike) -> jax.Array:
        """(B, H, W, in_channels) → embeddings (B, embedding_dim)."""
        h = jnp.asarray(x, jnp.float32)
        for stage in self.stages:
            h = stage(h)
        return self.fc(h.reshape(h.shape[0], -1))

    def logits(self, x: ArrayLike) -> jax.Array:
        """Normalised-weight logits ‖x‖ cos θ_j, (B, num_classes) (no margin; for evaluation)."""
        return self.classifier(self(x))


def sphereface20(num_classes: int = 10572, *, rngs: nnx.Rngs,
                 **kwargs: Unpack[_SphereFace20Options]) -> SphereFace20:
    """SphereFace-20 (CASIA-WebFace has 10572 identities).

    ``kwargs``: the other keyword options of :class:`SphereFace20`.
    """
    return SphereFace20(num_classes, rngs=rngs, **kwargs)
