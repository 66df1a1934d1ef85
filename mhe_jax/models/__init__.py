"""Flax NNX models used in the MHE experiments (NHWC, float32); losses are in mhe_jax.train.

Every model exposes ``output_path``, the "/"-joined path of its classifier kernel inside
``nnx.state(model, nnx.Param)`` (e.g. ``"classifier/kernel"``), to pass as
``mhe_regularizer(..., output=model.output_path)``.
"""

# The extra check must run before the flax imports below (hence E402 for this file).
# ruff: noqa: E402
try:
    import flax  # noqa: F401  (the [models] extra)
except ModuleNotFoundError as _error:
    raise ImportError(
        "mhe_jax.models needs flax, which is not installed: "
        "install mhe_jax[models] (pip install 'mhe_jax[models]')", name="flax") from _error

from mhe_jax.models.cnn import CNN as CNN, cnn6 as cnn6, cnn9 as cnn9, cnn15 as cnn15
from mhe_jax.models.layers import PReLU as PReLU
from mhe_jax.models.mnist2d import MNIST2D as MNIST2D, mnist2d as mnist2d
from mhe_jax.models.prototype import PrototypeHead as PrototypeHead, Prototypes as Prototypes
from mhe_jax.models.resnet import (
    BasicBlock as BasicBlock,
    ResNet as ResNet,
    ResNetCIFAR as ResNetCIFAR,
    resnet18 as resnet18,
    resnet32 as resnet32,
    resnet34 as resnet34,
)
from mhe_jax.models.sphereface import (
    SphereFace20 as SphereFace20,
    SphereFaceHead as SphereFaceHead,
    sphereface20 as sphereface20,
)

__all__ = [
    "CNN", "cnn6", "cnn9", "cnn15",
    "ResNetCIFAR", "ResNet", "BasicBlock", "resnet32", "resnet18", "resnet34",
    "MNIST2D", "mnist2d", "PReLU",
    "SphereFace20", "SphereFaceHead", "sphereface20",
    "PrototypeHead", "Prototypes",
]
