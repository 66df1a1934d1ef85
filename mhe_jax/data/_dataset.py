"""The ``Dataset`` container every loader returns, and its validating constructor."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "make_dataset"]


class Dataset(NamedTuple):
    """An image classification dataset held in host memory.

    Images stay uint8 NHWC (scaling to float happens on-device, see ``augment.normalize``).

    x_train: (n_train, H, W, C) uint8      y_train: (n_train,) int32 in [0, num_classes)
    x_test:  (n_test, H, W, C) uint8       y_test:  (n_test,) int32
    num_classes: int; name: str; label_names: tuple of ``num_classes`` str (may be empty).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    label_names: tuple[str, ...] = ()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def summary(self) -> str:
        """One line for logs: name, split sizes, image shape, number of classes."""
        h, w, c = self.image_shape
        return (f"{self.name}: {len(self.y_train)} train / {len(self.y_test)} test, "
                f"{h}x{w}x{c} uint8, {self.num_classes} classes")


def make_dataset(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, num_classes: int, name: str,
                 label_names: Sequence[str] = ()) -> Dataset:
    """Build a ``Dataset`` after validating shapes and dtypes (casts labels to int32).

    Raises ValueError naming the argument: ``num_classes`` must be an int ``>= 1`` (not a
    bool or a float), images uint8 (n, H, W, C) with the same (H, W, C) in both splits, labels
    1-D integers in [0, num_classes) of matching length, ``label_names`` empty or one per
    class.

    Examples:
        >>> import numpy as np
        >>> x = np.zeros((2, 4, 4, 1), np.uint8)
        >>> make_dataset(x, [0, 1], x, [1, 1], 2, "toy").summary()
        'toy: 2 train / 2 test, 4x4x1 uint8, 2 classes'
    """
    if (isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    arrays = {"x_train": x_train, "x_test": x_test}
    for arg, x in arrays.items():
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{arg} must be a uint8 (n, H, W, C) array, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"x_train and x_test image shapes differ: {x_train.shape[1:]} vs "
                         f"{x_test.shape[1:]}")
    ys = []
    for arg, y, x in (("y_train", y_train, x_train), ("y_test", y_test, x_test)):
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or (y.size and not np.issubdtype(y.dtype, np.integer)):
            raise ValueError(f"{arg} must be a 1-D integer array of length {len(x)}, got "
                             f"{y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{arg} has labels outside [0, {num_classes}): "
                             f"min {y.min()}, max {y.max()}")
        ys.append(y.astype(np.int32))
    label_names = tuple(str(n) for n in label_names)
    if label_names and len(label_names) != num_classes:
        raise ValueError(f"label_names has {len(label_names)} entries for {num_classes} classes")
    return Dataset(x_train, ys[0], x_test, ys[1], int(num_classes), str(name), label_names)
