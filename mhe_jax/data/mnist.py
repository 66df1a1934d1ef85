"""MNIST: idx file reader (raw or gzip) and a verified, cached downloader.

idx format (LeCun et al.): big-endian header ``0x00 0x00 <type> <ndim>`` then ``ndim`` uint32
sizes, then the data. Images are magic ``0x00000803`` (uint8, 3 dims), labels ``0x00000801``
(uint8, 1 dim).

Cache: the four ``.gz`` files are downloaded into ``<root>/mnist/`` and checked against their
md5 (and, for the official files, their size) before every use. A file there that fails the
check is deleted and downloaded again; one that passes but cannot be decoded is deleted, and
downloaded once more only if there was no md5 to check it against. Files found elsewhere under
``root`` (``<root>/``, ``<root>/MNIST/raw/``, uncompressed copies) are the user's: they are
checked and read but never deleted.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mhe_jax.data._dataset import Dataset, make_dataset
from mhe_jax.data._download import cache_dir, download_file, file_problem
from mhe_jax.data._errors import CacheRepairWarning, CorruptDataError, DatasetNotFoundError

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_SIZES",
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
# file name -> size in bytes of the official .gz file
MNIST_SIZES = {
    "train-images-idx3-ubyte.gz": 9912422,
    "train-labels-idx1-ubyte.gz": 28881,
    "t10k-images-idx3-ubyte.gz": 1648877,
    "t10k-labels-idx1-ubyte.gz": 4542,
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SUBDIR = "mnist"
_FIX_FILE = "Delete it and load again to download it again, or pass another root=."


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head == b"\x1f\x8b":  # gzip magic, whatever the file name says
            try:
                with gzip.GzipFile(fileobj=f) as g:
                    return g.read()  # to the end: checks the CRC-32 and length
            except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
                raise CorruptDataError(path, f"corrupt gzip stream ({type(e).__name__}: {e})",
                                       _FIX_FILE) from e
        return f.read()


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an idx file (raw or gzip-compressed) into a numpy array of its declared shape/type.

    Validates the gzip stream (CRC-32 and length), the header (two zero bytes, known type code,
    sizes matching the data length) and, if given, the full 32-bit ``expected_magic`` (e.g.
    0x00000803 for images). A file that fails raises ``CorruptDataError`` (a ``ValueError``)
    naming it.

    Examples:
        >>> import struct, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "labels.idx")
        >>> with open(p, "wb") as f:
        ...     _ = f.write(struct.pack(">II", LABELS_MAGIC, 3) + bytes([3, 1, 4]))
        >>> read_idx(p, LABELS_MAGIC).tolist()
        [3, 1, 4]
    """
    data = _read_bytes(path)

    def bad(problem: str) -> CorruptDataError:
        return CorruptDataError(path, problem, _FIX_FILE)

    if len(data) < 4:
        raise bad(f"too short for an idx header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise bad(f"bad idx magic number 0x{magic:08X}, expected 0x{expected_magic:08X}")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise bad(f"bad idx magic number 0x{magic:08X} (not an idx file)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise bad(f"truncated idx header (ndim={ndim})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(data) - header != expected:
        raise bad(f"header declares shape {shape} ({expected} data bytes) but the file holds "
                  f"{len(data) - header}")
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


def _load_file(base: Path, name: str, read: Callable[[Path], np.ndarray], download: bool,
               urls: list[str], md5: str | None, size: int | None) -> np.ndarray:
    """One MNIST file, found or downloaded, verified and decoded (see the module docstring)."""
    managed = base / _SUBDIR / name
    found = _find(base, name)
    if found is not None and found != managed:  # the user's copy: check, read, never delete
        if found.suffix == ".gz" and (problem := file_problem(found, md5, size)) is not None:
            raise CorruptDataError(found, f"failed verification ({problem})",
                                   "Delete it (it is then downloaded into "
                                   f"{base / _SUBDIR}), or pass md5s= with its checksum "
                                   "(md5s={} skips the check).")
        return read(found)
    hint = ("Pass download=True, or point root= (or MHE_JAX_DATA) at a directory with the idx "
            "files.")
    if not download:
        if found is None:
            raise DatasetNotFoundError(f"MNIST file {name} not found under {base / _SUBDIR} (or "
                                       f"{base}). {hint}")
        if (problem := file_problem(managed, md5, size)) is not None:
            managed.unlink()
            raise DatasetNotFoundError(f"cached MNIST file {managed} failed verification "
                                       f"({problem}) and was deleted. {hint}")
    tries = 2 if md5 is None and size is None else 1  # unverifiable: one more download
    for attempt in range(1, tries + 1):
        path = managed if not download else download_file(urls, managed, md5, size=size)
        try:
            return read(path)
        except CorruptDataError as e:
            managed.unlink(missing_ok=True)
            if attempt < tries and download:
                warnings.warn(f"{managed} cannot be decoded ({e.problem}); deleted it, "
                              "downloading it again", CacheRepairWarning, stacklevel=3)
                continue
            fix = ("It matched the expected md5, so the mirror serves a damaged file: check "
                   "mirrors= and md5s=." if md5 is not None or size is not None else
                   "Pass md5s= so downloads are verified, or check mirrors=.")
            raise CorruptDataError(managed, f"{e.problem}; deleted it", fix) from e
    raise AssertionError("unreachable")  # pragma: no cover


def load_mnist(root: str | os.PathLike | None = None, download: bool = True, *,
               mirrors: Sequence[str] | None = None,
               md5s: Mapping[str, str] | None = None) -> Dataset:
    """MNIST: x_train (60000, 28, 28, 1) uint8, y_train (60000,) int32, test 10000, 10 classes.

    Looks for the four idx files (``.gz`` or uncompressed) in ``<root>/mnist/``, ``<root>/`` or
    ``<root>/MNIST/raw/``; ``root`` defaults to ``$MHE_JAX_DATA`` then ``~/.cache/mhe_jax``.
    Missing files are downloaded (if ``download``) into ``<root>/mnist/`` from ``mirrors``
    (base URLs tried in order, default ``MNIST_MIRRORS``) and checked against ``md5s``
    (file name -> md5, default ``MNIST_FILES``, whose sizes ``MNIST_SIZES`` are checked too; a
    file missing from ``md5s`` is not checked). Verification and repair of the cache: see the
    module docstring. Raises ``DatasetNotFoundError``, ``DownloadError`` / ``ChecksumError`` or
    ``CorruptDataError`` (naming the file).

    Examples:
        >>> ds = load_mnist("/data")  # doctest: +SKIP
        >>> ds.summary()  # doctest: +SKIP
        'mnist: 60000 train / 10000 test, 28x28x1 uint8, 10 classes'
    """
    base = cache_dir(root)
    if isinstance(mirrors, str):
        mirrors = [mirrors]
    mirrors = list(MNIST_MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("mirrors must be a non-empty sequence of base URLs")
    sizes = MNIST_SIZES if md5s is None else {}
    md5s = dict(MNIST_FILES if md5s is None else md5s)
    bases = [m if m.endswith("/") else m + "/" for m in mirrors]
    readers = {"train-images-idx3-ubyte.gz": read_idx_images,
               "train-labels-idx1-ubyte.gz": read_idx_labels,
               "t10k-images-idx3-ubyte.gz": read_idx_images,
               "t10k-labels-idx1-ubyte.gz": read_idx_labels}
    arrays = {name: _load_file(base, name, read, download, [b + name for b in bases],
                               md5s.get(name), sizes.get(name))
              for name, read in readers.items()}
    try:
        return make_dataset(arrays["train-images-idx3-ubyte.gz"],
                            arrays["train-labels-idx1-ubyte.gz"],
                            arrays["t10k-images-idx3-ubyte.gz"],
                            arrays["t10k-labels-idx1-ubyte.gz"],
                            10, "mnist", [str(i) for i in range(10)])
    except ValueError as e:  # counts or label ranges of the four files do not fit together
        raise CorruptDataError(base, f"the MNIST files do not fit together ({e})",
                               "Delete them and load again to download them again.") from e
