r"""A classifier head of scaled cosine logits against given prototypes, fixed by default.

Fixed-classifier training (Hoffer et al. 2018; Mettes et al. 2019, Hyperspherical Prototype
Networks; EBV): the classifier is set once to energy-minimising prototypes
(:func:`mhe_jax.sphere.prototypes`) and only the backbone learns. The prototypes are held in a
:class:`Prototypes` variable, not an ``nnx.Param``, so ``nnx.grad`` / ``nnx.value_and_grad``
(which differentiate ``nnx.Param`` by default) and ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
leave them alone: no gradient, no update, no weight decay. Everything else about the model and
its training is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

__all__ = ["PrototypeHead", "Prototypes"]


class Prototypes(nnx.Variable):
    """The prototype matrix of a fixed :class:`PrototypeHead`: an ``nnx.Variable`` that is not
    an ``nnx.Param``, so optimizers built with ``wrt=nnx.Param`` do not train it. Select it
    with ``nnx.state(model, Prototypes)``.

    Examples:
      >>> from flax import nnx
      >>> from mhe_jax import models, sphere
      >>> head = models.PrototypeHead(sphere.prototypes(3, 2))  # 3 classes in R²
      >>> isinstance(head.kernel, models.Prototypes), len(nnx.state(head, nnx.Param))
      (True, 0)
      >>> nnx.state(head, models.Prototypes)["kernel"].shape
      (2, 3)
    """


class PrototypeHead(nnx.Module):
    r"""Cosine-logit classifier ``logits_k = scale · ⟨x / ‖x‖, p_k / ‖p_k‖⟩``.

    ``prototypes``: ``(d, K)``, one class per column (the layout of
    :func:`mhe_jax.sphere.prototypes`, of a Flax ``Dense`` kernel and of the library's
    neurons); the columns are normalised here, once. ``__call__(x)``: features ``(..., d)`` →
    logits ``(..., K)``, any leading axes (``(B, d)``, or ``(B, H, W, d)`` in place of a 1x1
    convolution classifier such as :class:`mhe_jax.models.CNN`'s). A zero feature vector gives
    zero logits (and a finite gradient).

    With ``trainable=False`` (default) the unit prototypes are stored as :class:`Prototypes`,
    which the usual ``nnx.Param`` optimizers leave untouched; ``trainable=True`` stores them as
    an ``nnx.Param`` (attribute ``kernel``), a learned cosine classifier started at the same
    prototypes (the control of a fixed-versus-learned comparison). ``scale`` is the fixed
    inverse temperature: with the simplex ETF of ``K`` classes the largest logit margin is
    ``scale · K/(K−1)``.

    Attributes:
      kernel: the ``(d, K)`` unit prototypes, a :class:`Prototypes` or an ``nnx.Param``.
      scale: the logit scale.

    Examples:
      Swap the classifier of a CNN-9 for the simplex ETF of its 10 classes (its features are
      256-dim, 1x1 spatially); ``nnx.Param`` holds only the backbone now:

      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from mhe_jax import models, sphere
      >>> model = models.cnn9(10, widths=(8, 8, 8), fc_width=16, rngs=nnx.Rngs(0))
      >>> model.classifier = models.PrototypeHead(sphere.prototypes(10, 16), scale=16.0)
      >>> model(jnp.zeros((2, 32, 32, 3))).shape
      (2, 10)
      >>> "classifier" in nnx.state(model, nnx.Param)
      False
      >>> nnx.state(model, models.Prototypes)["classifier"]["kernel"].shape
      (16, 10)
    """

    def __init__(self, prototypes: ArrayLike, *, scale: float = 16.0, trainable: bool = False):
        p = jnp.asarray(prototypes)
        if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] < 1:
            raise ValueError(
                "prototypes must have shape (d, num_classes) with num_classes >= 2, got shape "
                f"{tuple(p.shape)}")
        if not jnp.issubdtype(p.dtype, jnp.floating):
            raise TypeError(f"prototypes must have a floating dtype, got {p.dtype}")
        norms = np.linalg.norm(np.asarray(p, np.float64), axis=0)
        if not np.all(np.isfinite(norms)) or not np.all(norms > 0):
            raise ValueError("prototypes must be finite with non-zero columns")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)):
            raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a finite real > 0, got {scale!r}")
        if not isinstance(trainable, bool):
            raise TypeError(f"trainable must be a bool, got {type(trainable).__name__}")
        unit = p / jnp.asarray(norms, p.dtype)
        self.kernel = nnx.Param(unit) if trainable else Prototypes(unit)
        self.scale = float(scale)

    def __call__(self, x: ArrayLike) -> jax.Array:
        """Features ``(..., d)`` → scaled cosine logits ``(..., K)``."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.float32)
        p = self.kernel[...]
        if x.shape[-1] != p.shape[0]:
            raise ValueError(
                f"x has {x.shape[-1]} features on its last axis; the prototypes have d = "
                f"{p.shape[0]}")
        unit_x = x * _inverse_norm(x, -1)
        return self.scale * (unit_x @ (p * _inverse_norm(p, 0)).astype(unit_x.dtype))


def _inverse_norm(x: jax.Array, axis: int) -> jax.Array:
    """``1/‖x‖`` along ``axis`` (kept), 0 where ``‖x‖² ≤ tiny``: a zero vector stays zero, with
    a zero (finite) derivative."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    ok = sq > jnp.finfo(sq.dtype).tiny
    return jnp.where(ok, jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)
