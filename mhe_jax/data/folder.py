"""Image-folder datasets (ImageNet and its subsets) loaded into memory at a fixed resolution.

Layout (torchvision's ``ImageFolder``; ImageNet's validation set after the usual
reorganisation into one folder per class)::

    root/train/<class_name>/*.{jpg,jpeg,png,...}
    root/val/<class_name>/*.{jpg,jpeg,png,...}

Classes are the sorted sub-folder names of ``root/train`` (ImageNet: the 1000 ``n0…`` WordNet
ids); the test split must use the same names. Each image is decoded with Pillow, converted to
RGB, its shorter side resized to ``size`` (bilinear, antialiased) and centre-cropped to
``size × size`` — the standard evaluation transform, applied to the training images too since
the ``Dataset`` holds fixed-size uint8 arrays (augmentation is done on-device later).

Memory: ``n · size² · 3`` bytes. Full ImageNet (1.28 M training images) takes 15.7 GB at 64 × 64
and 193 GB at the paper's 224 × 224, so the paper's Table 6 resolution needs a streaming input
pipeline that this in-memory format does not provide; ``max_per_class`` loads a subset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mhe_jax.data._dataset import Dataset, make_dataset
from mhe_jax.data._errors import CorruptDataError, DatasetLayoutError, DatasetNotFoundError

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "list_image_folder", "load_image"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


def list_image_folder(
    split_dir: str | os.PathLike, classes: Sequence[str] | None = None,
    max_per_class: int | None = None,
) -> tuple[list[str], list[tuple[Path, int]]]:
    """(sorted class names, [(path, label), …]) of ``split_dir/<class>/<image>``.

    ``DatasetNotFoundError`` (naming ``split_dir``) if it is missing or a class folder of it
    (or, with ``classes``, of the given ones) holds no image: an empty split is never loaded
    as 0 images."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetNotFoundError(f"no image folder at {split_dir}")
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        raise DatasetLayoutError(f"{split_dir} has classes not in the training split: "
                         f"{sorted(set(found) - set(classes))[:5]}")
    if not classes:
        raise DatasetLayoutError(f"{split_dir} has no class sub-folders")
    items, empty = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        files = (sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                 if folder.is_dir() else [])
        if not files:
            empty.append(name)
        items += [(p, label) for p in files[:max_per_class]]
    if empty:  # as torchvision's ImageFolder: a class without images is an error, not 0 images
        what = ("holds no images" if len(empty) == len(classes) else
                f"has no images for class(es) {', '.join(empty[:5])}"
                + (f" (and {len(empty) - 5} more)" if len(empty) > 5 else ""))
        raise DatasetNotFoundError(
            f"{split_dir} {what}: expected files with an extension of {', '.join(IMAGE_EXTENSIONS)}"
            " in each class folder")
    return list(classes), items


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image as (size, size, 3) uint8: RGB, shorter side resized to ``size``, centre crop.

    A file Pillow cannot decode (truncated, not an image) raises ``CorruptDataError`` naming it.
    """
    from PIL import Image  # lazy: Pillow is only needed for image folders and the JPEG CIFAR copy

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # UnidentifiedImageError and "image file is truncated" are OSErrors
        raise CorruptDataError(path, f"cannot be decoded as an image ({type(e).__name__}: {e})",
                               "Delete or replace it, or pass another root=.") from e


def _load_split(items, size, workers):
    x = np.empty((len(items), size, size, 3), np.uint8)
    y = np.fromiter((label for _, label in items), np.int32, len(items))

    def fill(i):
        x[i] = load_image(items[i][0], size)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        list(pool.map(fill, range(len(items))))
    return x, y


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int = 64,
    train: str = "train",
    test: str = "val",
    max_per_class: int | None = None,
    name: str | None = None,
    workers: int | None = None,
) -> Dataset:
    """``root/{train,test}/<class>/*`` as an in-memory :class:`Dataset` of ``size × size`` RGB
    images.

    Args:
      root: dataset directory (e.g. an ImageNet copy with ``train/`` and ``val/`` class folders).
      size: output height and width (shorter side resized, then centre crop).
      train: name of the training split's folder under ``root``.
      test: name of the test split's folder under ``root``.
      max_per_class: keep at most this many images per class and split (sorted by file name).
      name: dataset name (default: the folder name of ``root``).
      workers: decoding threads (default: the CPU count).

    Raises ``DatasetNotFoundError`` if ``root``, a split folder, or a class folder's images
    are missing (an empty ``val/`` is an error, as in torchvision's ``ImageFolder``), and
    ``CorruptDataError`` naming a file that cannot be decoded.
    """
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if max_per_class is not None and (not isinstance(max_per_class, (int, np.integer))
                                      or isinstance(max_per_class, bool) or max_per_class < 1):
        raise ValueError(f"max_per_class must be a positive int or None, got {max_per_class!r}")
    if workers is not None and (not isinstance(workers, (int, np.integer))
                                or isinstance(workers, bool) or workers < 1):
        raise ValueError(f"workers must be a positive int or None, got {workers!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder dataset not found: {root} (expected {train}/ "
                                   f"and {test}/ with one sub-folder per class)")
    classes, train_items = list_image_folder(root / train, max_per_class=max_per_class)
    _, test_items = list_image_folder(root / test, classes, max_per_class=max_per_class)
    workers = int(workers) if workers is not None else os.cpu_count() or 1
    x_train, y_train = _load_split(train_items, int(size), workers)
    x_test, y_test = _load_split(test_items, int(size), workers)
    return make_dataset(x_train, y_train, x_test, y_test, len(classes), name or root.name, classes)
