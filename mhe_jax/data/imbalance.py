"""Class-imbalanced training sets (MHE paper, Fig. 4 and Table 7). Test sets are never touched.

Subsampling is deterministic: the samples kept of class c are chosen by a numpy generator seeded
with ``(seed, c)``, so a class's selection does not depend on which other classes are reduced.
Kept samples stay in their original order.

Choices we made where the paper is silent (its Appendix A with the exact setups is not
available to us):

- Fig. 4 (MNIST): the text says both "throw away 98% training data for digit 0" and "only 100
  samples are preserved"; the default keeps 2% of digit 0 (118 of 5923), ``keep_count=100``
  gives the other reading.
- Table 7 single (S): class 0 ("airplane") keeps 10% of its training images (500 of 5000).
- Table 7 multiple (M): the paper says "the number of images decreases as the class index
  decreases from 9 to 0"; our default reduces classes 0..4 (half the classes) to 10% each. Pass
  ``classes=range(9), ratio=[0.1, 0.2, ..., 0.9]`` for a staircase closer to that sentence.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np

from mhe_jax.data._dataset import Dataset

__all__ = [
    "class_counts",
    "cifar10_multi_class_imbalance",
    "cifar10_single_class_imbalance",
    "imbalance_by_count",
    "imbalance_by_ratio",
    "mnist_fig4_imbalance",
    "per_class_subset",
]


def class_counts(y: np.ndarray, num_classes: int | None = None) -> dict[int, int]:
    """{class: number of samples} for the labels ``y`` (all classes < num_classes if given)."""
    y = np.asarray(y)
    n = int(y.max()) + 1 if y.size else 0
    n = max(n, num_classes or 0)
    return {c: int(k) for c, k in enumerate(np.bincount(y.astype(np.int64), minlength=n))}


def _check_xy(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise ValueError(f"y must be a 1-D integer label array, got {y.dtype} {y.shape}")
    if x.ndim < 1 or len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {x.shape[:1]} and {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError("y must hold non-negative class indices")
    return x, y


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def imbalance_by_count(x: np.ndarray, y: np.ndarray, counts: Mapping[int, int], seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Keep exactly ``counts[c]`` random samples of each listed class c, all samples of others.

    x: (n, ...) any dtype; y: (n,) int labels. Returns (x_kept, y_kept, {class: kept count} for
    every class 0..max(y)), kept samples in their original order. Raises ValueError if a class
    is absent from ``y`` or asks for more samples than it has.
    """
    x, y = _check_xy(x, y)
    if not isinstance(counts, Mapping):
        raise TypeError(f"counts must be a dict {{class: count}}, got {type(counts).__name__}")
    if not _is_int(seed):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    keep = np.ones(len(y), bool)
    for c, k in counts.items():
        if not _is_int(c):
            raise TypeError(f"counts keys must be int class indices, got {c!r}")
        if not _is_int(k) or k < 0:
            raise ValueError(f"counts[{c}] must be a non-negative int, got {k!r}")
        idx = np.flatnonzero(y == c)
        if len(idx) == 0:
            raise ValueError(f"counts names class {c}, which has no samples in y")
        if k > len(idx):
            raise ValueError(f"counts[{c}] = {k} but class {c} has only {len(idx)} samples")
        rng = np.random.default_rng([int(seed), int(c)])
        keep[idx] = False
        keep[rng.choice(idx, size=int(k), replace=False)] = True
    x_kept, y_kept = x[keep], y[keep]
    return x_kept, y_kept, class_counts(y_kept, int(y.max()) + 1 if y.size else 0)


def _ratio_to_count(c, r, n: int) -> int:
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not 0.0 <= float(r) <= 1.0:
        raise ValueError(f"ratio for class {c} must be a number in [0, 1], got {r!r}")
    k = int(np.floor(float(r) * n + 0.5))
    return max(k, 1) if float(r) > 0 and n > 0 else k


def imbalance_by_ratio(x: np.ndarray, y: np.ndarray, ratios: Mapping[int, float], seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """Keep round(ratios[c] * n_c) samples (at least 1 if the ratio is > 0) of each listed class.

    Same outputs and determinism as ``imbalance_by_count``.
    """
    x, y = _check_xy(x, y)
    if not isinstance(ratios, Mapping):
        raise TypeError(f"ratios must be a dict {{class: ratio}}, got {type(ratios).__name__}")
    counts = {}
    for c, r in ratios.items():
        if not _is_int(c):
            raise TypeError(f"ratios keys must be int class indices, got {c!r}")
        counts[c] = _ratio_to_count(c, r, int(np.sum(y == c)))
    return imbalance_by_count(x, y, counts, seed)


def _check_dataset(dataset) -> None:
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a mhe_jax.data.Dataset, got {type(dataset).__name__}")


def _check_class(arg: str, c, dataset: Dataset) -> None:
    if not _is_int(c) or not 0 <= c < dataset.num_classes:
        raise ValueError(f"{arg} must be a class index in [0, {dataset.num_classes}), got {c!r}")


def _apply(dataset: Dataset, counts: dict[int, int], seed: int, tag: str
           ) -> tuple[Dataset, dict[int, int]]:
    x, y, _ = imbalance_by_count(dataset.x_train, dataset.y_train, counts, seed)
    new = dataset._replace(x_train=x, y_train=y, name=f"{dataset.name}_{tag}")
    return new, class_counts(y, dataset.num_classes)


def per_class_subset(dataset: Dataset, per_class: int, seed: int = 0
                     ) -> tuple[Dataset, dict[int, int]]:
    """Keep exactly ``per_class`` random training samples of every class (small-data studies).

    The draw depends only on ``seed`` (not on the training seed), so every run of a study sees
    the same subset. Test split unchanged. Returns (dataset, train class counts). Raises
    ValueError naming ``per_class`` if it is not a positive int or exceeds a class's count.

    Examples:
        >>> import numpy as np
        >>> from mhe_jax.data import make_dataset
        >>> x = np.zeros((6, 1, 1, 1), np.uint8)
        >>> ds = make_dataset(x, [0, 0, 0, 1, 1, 1], x[:2], [0, 1], 2, "toy")
        >>> per_class_subset(ds, 2)[1]
        {0: 2, 1: 2}
    """
    _check_dataset(dataset)
    if not _is_int(per_class) or per_class < 1:
        raise ValueError(f"per_class must be a positive int, got {per_class!r}")
    have = class_counts(dataset.y_train, dataset.num_classes)
    short = {c: n for c, n in have.items() if n < per_class}
    if short:
        raise ValueError(f"per_class = {per_class} is more than the training samples of "
                         f"class(es) {short} ({{class: count}})")
    counts = {c: int(per_class) for c in range(dataset.num_classes)}
    return _apply(dataset, counts, seed, f"sub{per_class}")


def mnist_fig4_imbalance(dataset: Dataset, keep_fraction: float = 0.02, cls: int = 0,
                         seed: int = 0, *, keep_count: int | None = None
                         ) -> tuple[Dataset, dict[int, int]]:
    """Fig. 4 of the MHE paper: class ``cls`` (digit 0) keeps ``keep_fraction`` (2%) of its
    training samples, or exactly ``keep_count`` if given. Returns (dataset, train class counts).
    """
    _check_dataset(dataset)
    _check_class("cls", cls, dataset)
    n = int(np.sum(dataset.y_train == cls))
    if keep_count is not None:
        if not _is_int(keep_count) or keep_count < 0:
            raise ValueError(f"keep_count must be a non-negative int, got {keep_count!r}")
        k = int(keep_count)
    else:
        if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, numbers.Real) \
                or not 0.0 <= keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction!r}")
        k = _ratio_to_count(cls, keep_fraction, n)
    return _apply(dataset, {cls: k}, seed, f"imb{cls}x{k}")


def cifar10_single_class_imbalance(dataset: Dataset, cls: int = 0, ratio: float = 0.1,
                                   seed: int = 0) -> tuple[Dataset, dict[int, int]]:
    """Table 7 "single": class ``cls`` (default 0, airplane) keeps ``ratio`` (default 10%) of its
    training images, all other classes unchanged. Returns (dataset, train class counts)."""
    _check_dataset(dataset)
    _check_class("cls", cls, dataset)
    k = _ratio_to_count(cls, ratio, int(np.sum(dataset.y_train == cls)))
    return _apply(dataset, {cls: k}, seed, "imb_single")


def cifar10_multi_class_imbalance(dataset: Dataset, classes: Sequence[int] = (0, 1, 2, 3, 4),
                                  ratio: float | Sequence[float] = 0.1, seed: int = 0
                                  ) -> tuple[Dataset, dict[int, int]]:
    """Table 7 "multiple": each class in ``classes`` (default 0..4, half of CIFAR-10) keeps
    ``ratio`` of its training images (a float, or one ratio per class). Returns (dataset, train
    class counts)."""
    _check_dataset(dataset)
    classes = list(classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    for c in classes:
        _check_class("classes", c, dataset)
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicates: {classes}")
    if isinstance(ratio, numbers.Real) and not isinstance(ratio, bool):
        ratios = [ratio] * len(classes)
    else:
        ratios = list(cast(Sequence[float], ratio))
        if len(ratios) != len(classes):
            raise ValueError(f"ratio must be a float or have one entry per class "
                             f"({len(classes)}), got {len(ratios)}")
    counts = {c: _ratio_to_count(c, r, int(np.sum(dataset.y_train == c)))
              for c, r in zip(classes, ratios, strict=True)}
    return _apply(dataset, counts, seed, "imb_multi")
