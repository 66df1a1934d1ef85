"""Plain CNN-k models of the MHE paper (CNN-6 / CNN-9 / CNN-15).

Layout of the official TensorFlow code (github ``wy1iu/MHE``, ``code/architecture.py``,
``VGG.build``), which is the CNN-9 of the paper; CNN-6 and CNN-15 use 2 and 5 convolutions per
stage (the paper's Appendix A describing them is not part of the available text, so the
per-stage counts 2/3/5 are inferred from the names: 3 stages × k + 2 final layers ≈ depth).

    input (B, H, W, C_in), NHWC float32 (the official code feeds (rgb − 127.5)/128; do that in the
    data pipeline)
    stage s = 1..3:  k × [conv3x3 (SAME, no bias) → BatchNorm → ReLU] with widths[s] channels,
                     then max-pool 2x2 stride 2 (SAME)            32 → 16 → 8 → 4
    fc:              conv fc_kernel_size² (VALID, no bias), fc_width channels      4 → 1
                     (official: *no* BatchNorm and *no* ReLU here — a linear layer; pass
                     ``fc_bn_relu=True`` for the BN + ReLU variant)
    classifier:      conv1x1 (no bias), num_classes channels; kernel (1, 1, fc_width, num_classes)
    output:          logits (B, num_classes) (averaged over any remaining spatial positions,
                     which only happens for inputs larger than 32x32)

Init: convolution kernels ~ N(0, 2 / fan_in) (untruncated He normal, as the official
``tf.random_normal_initializer(stddev=sqrt(2 / (k·k·C_in)))``); BatchNorm γ = 1, β = 0,
ε = 1e-3 and running-average decay 0.999 as in the official code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from mhe_jax.models.layers import he_normal

__all__ = ["CNN", "cnn6", "cnn9", "cnn15", "he_normal"]


class _CNNOptions(TypedDict, total=False):
    """The keyword-only options of :class:`CNN` that the factories pass through."""

    in_channels: int
    fc_width: int
    fc_kernel_size: int
    fc_bn_relu: bool
    bn_momentum: float
    bn_epsilon: float


class ConvBNReLU(nnx.Module):
    """conv (no bias) → optional BatchNorm → optional ReLU. (B, H, W, C_in) → (B, H', W', C_out)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        padding: str = "SAME",
        bn: bool = True,
        relu: bool = True,
        bn_momentum: float = 0.999,
        bn_epsilon: float = 1e-3,
        rngs: nnx.Rngs,
    ):
        self.conv = nnx.Conv(
            in_channels,
            out_channels,
            (kernel_size, kernel_size),
            padding=padding,
            use_bias=False,
            kernel_init=he_normal,
            rngs=rngs,
        )
        self.bn = (
            nnx.BatchNorm(out_channels, momentum=bn_momentum, epsilon=bn_epsilon, rngs=rngs)
            if bn
            else None
        )
        self.relu = relu

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return nnx.relu(x) if self.relu else x


class CNN(nnx.Module):
    """CNN-k of the MHE paper: 3 stages × ``depth_per_stage`` conv3x3-BN-ReLU + fc conv + 1x1
    classifier.

    ``x``: (B, H, W, in_channels) → logits (B, num_classes). With the default
    ``fc_kernel_size=4`` the input must satisfy ceil(H/8) ≥ 4 and ceil(W/8) ≥ 4 (32x32 CIFAR,
    28x28 MNIST, digits upsampled to 32x32); for smaller inputs (e.g. 8x8 digits) pass
    ``fc_kernel_size=1``. See the module docstring for the full layout.

    Parameter paths (``nnx.state(model, nnx.Param)``): ``layers/<i>/conv/kernel`` (i = 0 … 3k−1),
    ``layers/<i>/bn/{scale,bias}``, ``fc/conv/kernel``, ``classifier/kernel``
    (= :attr:`output_path`).
    """

    output_path: str = "classifier/kernel"

    def __init__(
        self,
        depth_per_stage: int,
        widths: Sequence[int] = (64, 128, 256),
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        fc_width: int = 256,
        fc_kernel_size: int = 4,
        fc_bn_relu: bool = False,
        bn_momentum: float = 0.999,
        bn_epsilon: float = 1e-3,
        rngs: nnx.Rngs,
    ):
        if depth_per_stage < 1:
            raise ValueError(f"depth_per_stage must be >= 1, got {depth_per_stage}")
        widths = tuple(int(w) for w in widths)
        if not widths:
            raise ValueError("widths must be non-empty")
        layers = []
        pool_after = []
        c = in_channels
        for w in widths:
            for _ in range(depth_per_stage):
                layers.append(ConvBNReLU(c, w, 3, bn_momentum=bn_momentum,
                                         bn_epsilon=bn_epsilon, rngs=rngs))
                c = w
            pool_after.append(len(layers) - 1)
        self.layers = nnx.List(layers)
        self.pool_after = tuple(pool_after)
        self.fc = ConvBNReLU(
            c, fc_width, fc_kernel_size, padding="VALID", bn=fc_bn_relu, relu=fc_bn_relu,
            bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, rngs=rngs,
        )
        self.classifier = nnx.Conv(
            fc_width, num_classes, (1, 1), padding="VALID", use_bias=False,
            kernel_init=he_normal, rngs=rngs,
        )
        self.num_classes = num_classes

    def features(self, x: ArrayLike) -> jax.Array:
        """Output of the fc layer, (B, H'', W'', fc_width) (1x1 spatially for 32x32 inputs)."""
        h = jnp.asarray(x, jnp.float32)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i in self.pool_after:
                h = nnx.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        return self.fc(h)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """(B, H, W, in_channels) → logits (B, num_classes)."""
        logits = self.classifier(self.features(x))
        return jnp.mean(logits, axis=(1, 2))


def cnn6(num_classes: int = 10, widths: Sequence[int] = (64, 128, 256), *, rngs: nnx.Rngs,
         **kwargs: Unpack[_CNNOptions]) -> CNN:
    """CNN-6: 2 conv3x3 per stage (2·3 + fc + classifier = 8 weight layers; see module
    docstring). ``kwargs``: the keyword options of :class:`CNN`."""
    return CNN(2, widths, num_classes, rngs=rngs, **kwargs)


def cnn9(num_classes: int = 10, widths: Sequence[int] = (64, 128, 256), *, rngs: nnx.Rngs,
         **kwargs: Unpack[_CNNOptions]) -> CNN:
    """CNN-9 (the official MHE code): 3 conv3x3 per stage, widths 64/128/256, fc 256.
    ``kwargs``: the keyword options of :class:`CNN`."""
    return CNN(3, widths, num_classes, rngs=rngs, **kwargs)


def cnn15(num_classes: int = 10, widths: Sequence[int] = (64, 128, 256), *, rngs: nnx.Rngs,
         **kwargs: Unpack[_CNNOptions]) -> CNN:
    """CNN-15: 5 conv3x3 per stage. ``kwargs``: the keyword options of :class:`CNN`."""
    return CNN(5, widths, num_classes, rngs=rngs, **kwargs)
