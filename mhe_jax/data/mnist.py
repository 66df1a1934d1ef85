"""MNIST: idx file reader (raw or gzip) and a checksum-verified, cached downloader.

idx format (LeCun et al.): big-endian header ``0x00 0x00 <type> <ndim>`` then ``ndim`` uint32
sizes, then the data. Images are magic ``0x00000803`` (uint8, 3 dims), labels ``0x00000801``
(uint8, 1 dim).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mhe_jax.data._download import (
    Dataset,
    DatasetNotFoundError,
    cache_dir,
    download_file,
    make_dataset,
)

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "load_mnist",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
]

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# file name -> md5 of the .gz file (same values as torchvision)
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SUBDIR = "mnist"


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"\x1f\x8b":  # gzip magic, whatever the file name says
            try:
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()
            except (OSError, EOFError) as e:
                raise ValueError(f"{path}: corrupt gzip stream: {e}") from e
        return f.read()


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an idx file (raw or gzip-compressed) into a numpy array of its declared shape/type.

    Validates the header (two zero bytes, known type code, sizes matching the data length) and,
    if given, the full 32-bit ``expected_magic`` (e.g. 0x00000803 for images).
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an idx header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(f"{path}: bad idx magic number 0x{magic:08X}, expected "
                         f"0x{expected_magic:08X}")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad idx magic number 0x{magic:08X} (not an idx file)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated idx header (ndim={ndim})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: header declares shape {shape} ({expected} data bytes) but the "
                         f"file holds {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """idx3 image file (magic 0x00000803) -> (n, rows, cols, 1) uint8."""
    return read_idx(path, IMAGES_MAGIC)[..., None]


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """idx1 label file (magic 0x00000801) -> (n,) int32."""
    return read_idx(path, LABELS_MAGIC).astype(np.int32)


def _find(base: Path, gz_name: str) -> Path | None:
    raw_name = gz_name[:-3]
    for d in (base / _SUBDIR, base, base / "MNIST" / "raw"):
        for n in (gz_name, raw_name):
            if (d / n).is_file():
                return d / n
    return None


def load_mnist(root: str | os.PathLike | None = None, download: bool = True, *,
               mirrors: Sequence[str] | None = None,
               md5s: Mapping[str, str] | None = None) -> Dataset:
    """MNIST: x_train (60000, 28, 28, 1) uint8, y_train (60000,) int32, test 10000, 10 classes.

    Looks for the four idx files (``.gz`` or uncompressed) in ``<root>/mnist/``, ``<root>/`` or
    ``<root>/MNIST/raw/``; ``root`` defaults to ``$MHE_JAX_DATA`` then ``~/.cache/mhe_jax``.
    Missing files are downloaded (if ``download``) into ``<root>/mnist/`` from ``mirrors``
    (base URLs tried in order, default ``MNIST_MIRRORS``) and checked against ``md5s``
    (file name -> md5, default ``MNIST_FILES``; a file missing from ``md5s`` is not checked).
    """
    base = cache_dir(root)
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    mirrors = list(MNIST_MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("mirrors must be a non-empty sequence of base URLs")
    md5s = dict(MNIST_FILES if md5s is None else md5s)
    paths = {}
    for name in MNIST_FILES:
        p = _find(base, name)
        if p is None:
            if not download:
                raise DatasetNotFoundError(
                    f"MNIST file {name} not found under {base / _SUBDIR} (or {base}). Pass "
                    "download=True, or point root= (or MHE_JAX_DATA) at a directory with the "
                    "idx files.")
            urls = [m if m.endswith("/") else m + "/" for m in mirrors]
            p = download_file([u + name for u in urls], base / _SUBDIR / name, md5s.get(name))
        paths[name] = p
    return make_dataset(
        read_idx_images(paths["train-images-idx3-ubyte.gz"]),
        read_idx_labels(paths["train-labels-idx1-ubyte.gz"]),
        read_idx_images(paths["t10k-images-idx3-ubyte.gz"]),
        read_idx_labels(paths["t10k-labels-idx1-ubyte.gz"]),
        10, "mnist", [str(i) for i in range(10)])
