"""Building blocks shared by the models: the official conv initialiser and a channel-wise PReLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["he_normal", "PReLU"]

#: N(0, 2/fan_in), untruncated (the official MHE code's conv initialiser).
he_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")  # "normal": untruncated


class PReLU(nnx.Module):
    """Channel-wise PReLU: max(x, 0) + alpha · min(x, 0) over the last axis; alpha: (num_features,).

    Slope init 0.25 (the Caffe default).
    """

    def __init__(self, num_features: int, init: float = 0.25):
        self.alpha = nnx.Param(jnp.full((num_features,), init, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.alpha[...] * x)
