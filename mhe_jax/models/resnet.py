"""Residual networks with basic blocks (He et al., CVPR 2016), NHWC float32.

* :class:`ResNetCIFAR` / :func:`resnet32` — the CIFAR layout: conv3x3 (16) + BN + ReLU stem,
  3 stages of n basic blocks (widths 16/32/64, stride 2 at the start of stages 2 and 3),
  global average pool, Linear classifier. ResNet-32 uses n = 5. Shortcuts are identity, or a
  1x1 projection conv (stride 2) + BN when the shape changes ("option B").
* :class:`ResNet` / :func:`resnet18` / :func:`resnet34` — the ImageNet layout: conv7x7 stride 2
  (64) + BN + ReLU, max-pool 3x3 stride 2, 4 stages of basic blocks ([2,2,2,2] / [3,4,6,3],
  widths 64/128/256/512, stride 2 at the start of stages 2–4), global average pool, Linear
  classifier.

Conv kernels use no bias and N(0, 2/fan_in) init (as the MHE code); padding follows the
PyTorch convention (explicit pad 1 for 3x3, 3 for 7x7). BatchNorm momentum 0.9, ε = 1e-5.
All blocks are stored flat in ``blocks`` (an ``nnx.List``), so parameter paths are
``blocks/<i>/conv1/kernel``; the classifier kernel is ``classifier/kernel`` with shape
(widths[-1], num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from mhe_jax.models.layers import he_normal

__all__ = ["BasicBlock", "ResNetCIFAR", "ResNet", "resnet32", "resnet18", "resnet34"]


class _ResNetOptions(TypedDict, total=False):
    """The keyword-only options of :class:`ResNetCIFAR` / :class:`ResNet` that the factories
    pass through."""

    in_channels: int
    bn_momentum: float
    bn_epsilon: float


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    p = k // 2
    return nnx.Conv(
        cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
        use_bias=False, kernel_init=he_normal, rngs=rngs,
    )


def _bn(c: int, momentum: float, epsilon: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=momentum, epsilon=epsilon, rngs=rngs)


class BasicBlock(nnx.Module):
    """Basic residual block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    (B, H, W, in_channels) → (B, ceil(H/stride), ceil(W/stride), out_channels).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 bn_momentum: float = 0.9, bn_epsilon: float = 1e-5, rngs: nnx.Rngs):
        self.conv1 = _conv(in_channels, out_channels, 3, stride, rngs)
        self.bn1 = _bn(out_channels, bn_momentum, bn_epsilon, rngs)
        self.conv2 = _conv(out_channels, out_channels, 3, 1, rngs)
        self.bn2 = _bn(out_channels, bn_momentum, bn_epsilon, rngs)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = _conv(in_channels, out_channels, 1, stride, rngs)
            self.shortcut_bn = _bn(out_channels, bn_momentum, bn_epsilon, rngs)
        else:
            self.shortcut = None
            self.shortcut_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        # shortcut and shortcut_bn are set together (both None for the identity shortcut)
        if self.shortcut is None or self.shortcut_bn is None:
            s = x
        else:
            s = self.shortcut_bn(self.shortcut(x))
        return nnx.relu(y + s)


def _make_blocks(in_channels: int, stage_sizes: Sequence[int], widths: Sequence[int],
                 first_stride: int, bn_momentum: float, bn_epsilon: float,
                 rngs: nnx.Rngs) -> tuple[nnx.List, int]:
    blocks = []
    c = in_channels
    for s, (n, w) in enumerate(zip(stage_sizes, widths, strict=True)):
        for b in range(n):
            stride = (first_stride if s == 0 else 2) if b == 0 else 1
            blocks.append(BasicBlock(c, w, stride, bn_momentum=bn_momentum,
                                     bn_epsilon=bn_epsilon, rngs=rngs))
            c = w
    return nnx.List(blocks), c


class _ResNet(nnx.Module):
    """Stem conv + BN + ReLU (+ optional max-pool), basic-block stages, global average pool,
    Linear classifier: the part both layouts share (parameter paths ``stem/kernel``,
    ``stem_bn/*``, ``blocks/<i>/...``, ``classifier/{kernel,bias}``)."""

    output_path: str = "classifier/kernel"

    def __init__(self, stage_sizes: Sequence[int], widths: Sequence[int], num_classes: int, *,
                 in_channels: int, stem_kernel: int, stem_stride: int, stem_pool: bool,
                 bn_momentum: float, bn_epsilon: float, rngs: nnx.Rngs):
        self.stem = _conv(in_channels, widths[0], stem_kernel, stem_stride, rngs)
        self.stem_bn = _bn(widths[0], bn_momentum, bn_epsilon, rngs)
        self.stem_pool = stem_pool
        self.blocks, c = _make_blocks(widths[0], stage_sizes, widths, 1, bn_momentum, bn_epsilon,
                                      rngs)
        self.classifier = nnx.Linear(c, num_classes, rngs=rngs)
        self.num_classes = num_classes

    def features(self, x: ArrayLike) -> jax.Array:
        """Global-average-pooled features (B, widths[-1])."""
        x = nnx.relu(self.stem_bn(self.stem(jnp.asarray(x, jnp.float32))))
        if self.stem_pool:
            # flax documents padding as "SAME", "VALID" or (low, high) pairs, but leaves it
            # unannotated, so pyright infers `str` from its default "VALID".
            x = nnx.max_pool(x, (3, 3), strides=(2, 2),
                             padding=((1, 1), (1, 1)))  # pyright: ignore[reportArgumentType]
        for block in self.blocks:
            x = block(x)
        return jnp.mean(x, axis=(1, 2))

    def __call__(self, x: ArrayLike) -> jax.Array:
        """(B, H, W, in_channels) → logits (B, num_classes)."""
        return self.classifier(self.features(x))


class ResNetCIFAR(_ResNet):
    """CIFAR ResNet: (B, H, W, in_channels) → logits (B, num_classes); 6n+2 layers for n
    blocks/stage.

    Stem conv3x3/1 (no max-pool). Paths: ``stem/kernel``, ``stem_bn/*``,
    ``blocks/<i>/{conv1,conv2,shortcut}/kernel``, ``classifier/kernel`` (widths[-1], num_classes)
    and ``classifier/bias``.
    """

    def __init__(self, stage_sizes: Sequence[int] = (5, 5, 5), widths: Sequence[int] = (16, 32, 64),
                 num_classes: int = 10, *, in_channels: int = 3, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, rngs: nnx.Rngs):
        super().__init__(stage_sizes, widths, num_classes, in_channels=in_channels, stem_kernel=3,
                         stem_stride=1, stem_pool=False, bn_momentum=bn_momentum,
                         bn_epsilon=bn_epsilon, rngs=rngs)


class ResNet(_ResNet):
    """ImageNet-layout ResNet with basic blocks: (B, H, W, in_channels) → logits (B, num_classes).

    Stem conv7x7/2 + BN + ReLU + max-pool 3x3/2 (H/4), then stages (strides 1, 2, 2, 2; H/32),
    global average pool, Linear classifier ``classifier`` (kernel (widths[-1], num_classes)).
    """

    def __init__(self, stage_sizes: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512),
                 num_classes: int = 1000, *, in_channels: int = 3, bn_momentum: float = 0.9,
                 bn_epsilon: float = 1e-5, rngs: nnx.Rngs):
        super().__init__(stage_sizes, widths, num_classes, in_channels=in_channels, stem_kernel=7,
                         stem_stride=2, stem_pool=True, bn_momentum=bn_momentum,
                         bn_epsilon=bn_epsilon, rngs=rngs)


def resnet32(num_classes: int = 10, widths: Sequence[int] = (16, 32, 64), *, rngs: nnx.Rngs,
             **kwargs: Unpack[_ResNetOptions]) -> ResNetCIFAR:
    """ResNet-32 for CIFAR (3 stages × 5 basic blocks, widths 16/32/64).

    ``kwargs``: the keyword options of :class:`ResNetCIFAR`.
    """
    return ResNetCIFAR((5, 5, 5), widths, num_classes, rngs=rngs, **kwargs)


def resnet18(num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512), *,
             rngs: nnx.Rngs, **kwargs: Unpack[_ResNetOptions]) -> ResNet:
    """ResNet-18, ImageNet layout ([2, 2, 2, 2] basic blocks).

    ``kwargs``: the keyword options of :class:`ResNet`.
    """
    return ResNet((2, 2, 2, 2), widths, num_classes, rngs=rngs, **kwargs)


def resnet34(num_classes: int = 1000, widths: Sequence[int] = (64, 128, 256, 512), *,
             rngs: nnx.Rngs, **kwargs: Unpack[_ResNetOptions]) -> ResNet:
    """ResNet-34, ImageNet layout ([3, 4, 6, 3] basic blocks).

    ``kwargs``: the keyword options of :class:`ResNet`.
    """
    return ResNet((3, 4, 6, 3), widths, num_classes, rngs=rngs, **kwargs)
