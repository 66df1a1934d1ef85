"""scikit-learn's bundled 8x8 handwritten digits (1797 images): the offline default dataset."""

from __future__ import annotations

import functools

import numpy as np

from mhe_jax.data._dataset import Dataset, make_dataset

__all__ = ["load_digits", "resize_nearest", "stratified_split"]


def resize_nearest(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (n, H, W, C) images to ``size`` (int or (H', W')).

    For integer factors this is exact pixel replication (each pixel becomes a k x k block).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (n, H, W, C), got shape {images.shape}")
    th, tw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if min(th, tw) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    h, w = images.shape[1:3]
    rows = (np.arange(th) * h) // th
    cols = (np.arange(tw) * w) // tw
    return np.ascontiguousarray(images[:, rows][:, :, cols])


def stratified_split(y: np.ndarray, test_fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of indices: (train_idx, test_idx), each sorted ascending.

    Each class c with n_c samples puts round(test_fraction * n_c) of them (chosen by a numpy
    generator seeded with (seed, c)) in the test split.
    """
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    y = np.asarray(y)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(np.floor(test_fraction * len(idx) + 0.5))
        rng = np.random.default_rng([int(seed), int(c)])
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


@functools.lru_cache(maxsize=1)
def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install mhe_jax[models]") from e
    data, target = _sk_load_digits(return_X_y=True)  # (1797, 64) in 0..16, (1797,)
    images = np.asarray(data, np.float64).reshape(-1, 8, 8)
    x = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    x.flags.writeable = False  # cached: callers get copies through indexing
    y = np.asarray(target, np.int32)
    y.flags.writeable = False
    return x, y


def load_digits(test_fraction: float = 0.25, seed: int = 0,
                size: int | tuple[int, int] = 8) -> Dataset:
    """sklearn digits as a ``Dataset``: uint8 (n, size, size, 1) images in [0, 255], 10 classes.

    Pixel values 0..16 are scaled by 255/16 and rounded. ``size`` > 8 (e.g. 16 or 32) upsamples
    with nearest neighbour so CNNs with several pooling stages fit. The train/test split is
    stratified and deterministic given ``seed`` (1797 images; 0.25 -> 1346 train / 451 test,
    each class rounding its own quarter).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(size, (int, np.integer)):
        if size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
    elif not (isinstance(size, tuple) and len(size) == 2
              and all(isinstance(s, (int, np.integer)) and s >= 1 for s in size)):
        raise ValueError(f"size must be an int or a (height, width) tuple of ints, got {size!r}")
    x, y = _digits_uint8()
    if size != 8 and size != (8, 8):
        x = resize_nearest(x, size)
    tr, te = stratified_split(y, test_fraction, seed)
    return make_dataset(x[tr], y[tr], x[te], y[te], 10, "digits", [str(i) for i in range(10)])
