"""6-layer CNN with a 2-D feature layer, for the class-imbalanced MNIST toy (Fig. 4 of the paper).

The paper only says "a 6-layer CNN" with output feature dimension 2; this layout follows the
usual 2-D MNIST visualisation network (SphereFace / center-loss toy nets) with 3x3 convs:

    input (B, H, W, in_channels) NHWC float32 (28x28x1 MNIST, 8x8x1 / 16x16x1 digits, ...)
    3 × [conv3x3 (SAME) → BN → PReLU → conv3x3 → BN → PReLU → max-pool 2x2/2 (SAME)]
        widths 32,32 | 64,64 | 128,128       28 → 14 → 7 → 4,   8 → 4 → 2 → 1
    global average pool                       (B, 128)       (adapts to any input size)
    fc:          Linear(128, feature_dim=2)   (B, 2)         the 2-D features (no activation)
    classifier:  Linear(2, num_classes), no bias, kernel (2, num_classes); neurons = columns

Convs have no bias when followed by BatchNorm (``use_bn=True``, default) and a bias otherwise.
PReLU is channel-wise with slope init 0.25 (Caffe default). Conv init N(0, 2/fan_in).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from mhe_jax.models.layers import PReLU, he_normal

__all__ = ["MNIST2D", "mnist2d"]


class _MNIST2DOptions(TypedDict, total=False):
    """The keyword-only options of :class:`MNIST2D` that :func:`mnist2d` passes through."""

    widths: Sequence[int]
    feature_dim: int
    pool_every: int
    use_bn: bool
    bn_momentum: float


class _ConvBNPReLU(nnx.Module):
    def __init__(self, cin: int, cout: int, use_bn: bool, bn_momentum: float, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), padding="SAME", use_bias=not use_bn,
                             kernel_init=he_normal, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, momentum=bn_momentum, rngs=rngs) if use_bn else None
        self.act = PReLU(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MNIST2D(nnx.Module):
    """6-layer CNN → 2-D features → bias-free classifier (see module docstring).

    ``features(x)``: (B, H, W, in_channels) → (B, feature_dim); ``__call__(x)`` → logits
    (B, num_classes) = features @ classifier kernel. Paths: ``layers/<i>/conv/kernel``
    (i = 0 … 5), ``fc/kernel`` (128, 2), ``fc/bias``, ``classifier/kernel`` (2, num_classes).
    """

    output_path: str = "classifier/kernel"

    def __init__(self, num_classes: int = 10, *, in_channels: int = 1,
                 widths: Sequence[int] = (32, 32, 64, 64, 128, 128), feature_dim: int = 2,
                 pool_every: int = 2, use_bn: bool = True, bn_momentum: float = 0.9,
                 rngs: nnx.Rngs):
        layers = []
        c = in_channels
        for w in widths:
            layers.append(_ConvBNPReLU(c, int(w), use_bn, bn_momentum, rngs))
            c = int(w)
        self.layers = nnx.List(layers)
        self.pool_every = int(pool_every)
        self.fc = nnx.Linear(c, feature_dim, rngs=rngs)
        self.classifier = nnx.Linear(feature_dim, num_classes, use_bias=False, rngs=rngs)
        self.num_classes = num_classes

    def features(self, x: ArrayLike) -> jax.Array:
        """(B, H, W, in_channels) → 2-D features (B, feature_dim)."""
        h = jnp.asarray(x, jnp.float32)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if (i + 1) % self.pool_every == 0:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        return self.fc(jnp.mean(h, axis=(1, 2)))

    def __call__(self, x: ArrayLike) -> jax.Array:
        """(B, H, W, in_channels) → logits (B, num_classes)."""
        return self.classifier(self.features(x))


def mnist2d(num_classes: int = 10, *, in_channels: int = 1, rngs: nnx.Rngs,
            **kwargs: Unpack[_MNIST2DOptions]) -> MNIST2D:
    """The default 6-layer 2-D-feature network (widths 32,32,64,64,128,128).

    ``kwargs``: the other keyword options of :class:`MNIST2D`.
    """
    return MNIST2D(num_classes, in_channels=in_channels, rngs=rngs, **kwargs)
