"""On-device augmentation (JAX) and a host-side numpy batch iterator.

``augment_batch`` follows the official MHE TensorFlow code ("moderate" CIFAR augmentation):
pad 4 pixels on each side with ``SYMMETRIC`` mode (edge pixel repeated, as ``jnp.pad(...,
mode="symmetric")``), take a random HxW crop, flip left-right with probability 1/2. Each
example draws its own crop offset and flip from ``key``; the function is pure, vectorised with
``vmap`` and can be called inside a jitted train step (``pad`` and ``flip`` are Python values).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "augment_batch",
    "batches",
    "normalize",
    "random_crop",
    "random_flip",
    "steps_per_epoch",
]


def _check_images(images) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a (N, H, W, C) batch, got shape {images.shape}")
    return images


def _check_pad(pad) -> int:
    if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
        raise ValueError(f"pad must be a non-negative Python int, got {pad!r}")
    return int(pad)


@partial(jax.jit, static_argnames=("pad",))
def _crop(key, images, pad):
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], jnp.zeros((), off.dtype)), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


@jax.jit
def _flip(key, images):
    do_flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
    return jnp.where(do_flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_crop(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
    """Symmetric-pad (N, H, W, C) images by ``pad`` and crop a random HxW window per example.

    Offsets are uniform in [0, 2*pad]; output has the input's shape and dtype.
    """
    images = _check_images(images)
    pad = _check_pad(pad)
    return images if pad == 0 else _crop(key, images, pad)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Flip each (N, H, W, C) image left-right with probability 1/2; same shape and dtype."""
    return _flip(key, _check_images(images))


def augment_batch(key: jax.Array, images: jax.Array, pad: int = 4, flip: bool = True
                  ) -> jax.Array:
    """Random symmetric-pad crop (``pad`` pixels, 0 disables) then random horizontal flip.

    images: (N, H, W, C) uint8 or float; returns the same shape and dtype. Deterministic given
    ``key``. Jit-able (``pad``/``flip`` must be static); compiled once per shape when called
    eagerly.
    """
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"flip must be a Python bool, got {flip!r}")
    k_crop, k_flip = jax.random.split(key)
    out = random_crop(k_crop, images, pad)
    return random_flip(k_flip, out) if flip else out


def normalize(images: ArrayLike) -> jax.Array:
    """Pixel values in [0, 255] (uint8 or float) -> float32 ``(x - 127.5) / 128``, in ~[-1, 1]."""
    x = jnp.asarray(images).astype(jnp.float32)
    return (x - jnp.float32(127.5)) / jnp.float32(128.0)


# ---------------------------------------------------------------------------------------------
# host-side batching


def _entropy(seed) -> list[int]:
    if isinstance(seed, (jax.Array, np.ndarray)):
        if jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        data = np.asarray(seed)
        if not np.issubdtype(data.dtype, np.integer):
            raise TypeError(f"seed must be an int or a JAX PRNG key, got dtype {data.dtype}")
        return [int(v) for v in data.astype(np.uint32).ravel()]
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int or a JAX PRNG key, got {seed!r}")
    return [int(seed)]


def steps_per_epoch(n: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Number of batches ``batches`` yields per epoch for ``n`` examples."""
    return n // batch_size if drop_remainder else -(-n // batch_size)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    seed: int | jax.Array = 0,
    *,
    shuffle: bool = True,
    drop_remainder: bool = True,
    epochs: int | None = 1,
    start_epoch: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield numpy (x_batch (B, ...), y_batch (B,)) pairs, epoch after epoch.

    ``seed``: int or JAX PRNG key; epoch e is shuffled with a generator seeded by (seed, e), so
    the order is reproducible and resuming at ``start_epoch`` gives the same batches.
    Runs epochs ``start_epoch .. start_epoch + epochs - 1``; ``epochs=None`` repeats forever.
    With ``drop_remainder=False`` the last batch of each epoch may be smaller.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if drop_remainder and batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(x)} examples with "
                         "drop_remainder=True (no batch would ever be yielded)")
    if len(x) == 0:
        raise ValueError("x is empty")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral)
                               or epochs < 0):
        raise ValueError(f"epochs must be None or a non-negative int, got {epochs!r}")
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) \
            or start_epoch < 0:
        raise ValueError(f"start_epoch must be a non-negative int, got {start_epoch!r}")
    entropy = _entropy(seed)
    return _batch_gen(x, y, int(batch_size), entropy, shuffle, drop_remainder, epochs,
                      int(start_epoch))


def _batch_gen(x, y, batch_size, entropy, shuffle, drop_remainder, epochs, start_epoch):
    n = len(x)
    stop = n - n % batch_size if drop_remainder else n
    epoch = start_epoch
    while epochs is None or epoch < start_epoch + epochs:
        if shuffle:
            order = np.random.default_rng([*entropy, epoch]).permutation(n)
            for i in range(0, stop, batch_size):
                idx = order[i:i + batch_size]
                yield x[idx], y[idx]
        else:
            for i in range(0, stop, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
        epoch += 1
