"""CIFAR-10 / CIFAR-100 loaders for the official "python version" files.

Official layout (Krizhevsky, 2009), as extracted from the tarballs:

- ``cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch``, ``batches.meta``
- ``cifar-100-python/``: ``train``, ``test``, ``meta``

Each file is a pickled dict written by Python 2 (keys are ``bytes`` when loaded with
``encoding="bytes"``; re-written copies may have ``str`` keys, both are accepted). ``data`` is a
(n, 3072) uint8 array: 1024 red values, then 1024 green, then 1024 blue, each plane row-major
over 32x32. The loaders return NHWC uint8 images and int32 labels in a ``Dataset``.

Pickles are read with a restricted unpickler that only accepts the numpy array constructors, so
a tampered file cannot run arbitrary code.

Cache (``<root>``: ``root=`` > ``$MHE_JAX_DATA`` > ``~/.cache/mhe_jax``): the tarball is kept
next to the folder extracted from it, and the folder holds a manifest of its files' sizes and
md5s. Before use, the tarball is checked against its size and md5 and the folder against its
manifest. A bad tarball is deleted and downloaded again; a bad folder is deleted and extracted
again from the verified tarball. A file that still cannot be decoded raises
``CorruptDataError`` naming it, and the cache keeps nothing built from it. A folder placed by
the user (no manifest, or ``root`` pointing at the folder itself) is read as it is and never
deleted.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mhe_jax.data._archive import extract_tar, has_manifest, verify_extracted
from mhe_jax.data._dataset import Dataset, make_dataset
from mhe_jax.data._download import cache_dir, download_file, file_problem
from mhe_jax.data._errors import (
    CacheRepairWarning,
    CorruptDataError,
    DatasetNotFoundError,
)

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "CIFAR100_MD5",
    "CIFAR100_SIZE",
    "CIFAR100_URL",
    "CIFAR10_MD5",
    "CIFAR10_SIZE",
    "CIFAR10_URL",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_pickle",
    "rows_to_nhwc",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_SIZE = 170498071  # bytes
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_SIZE = 169001437  # bytes
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")

_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_FIX_FILE = ("Delete it and load again to download and extract the dataset again, or pass "
             "another root=.")
# Globals a CIFAR pickle may reference: the numpy array / dtype reconstructors (numpy 1 and 2
# module names) and the helpers Python 3 uses for bytes in protocol <= 2 pickles.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("builtins", "bytearray"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle global {module}.{name}: not a numpy array constructor "
            "(CIFAR files only contain dicts, lists, strings and numpy arrays)")


# what a damaged pickle can raise inside the restricted unpickler (LookupError covers the
# "unknown encoding" of a flipped codec name, KeyError and IndexError of a bad memo reference)
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, LookupError,
                  AttributeError, OverflowError, MemoryError, RecursionError)


def read_cifar_pickle(path: str | os.PathLike) -> dict[str, object]:
    """Load one CIFAR pickle (Python 2 or 3) into a dict with ``str`` keys.

    Loaded with ``encoding="bytes"``; ``bytes`` keys are decoded as latin-1, ``bytes`` values in
    lists (label names, filenames) are left to the caller. Only numpy array constructors may be
    referenced. A file that is not such a pickle (truncated, bit-flipped, or referencing any other
    global) raises ``CorruptDataError`` (a ``ValueError``) naming it.
    """
    data = Path(path).read_bytes()  # in memory: a corrupt length field cannot ask for gigabytes
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _PICKLE_ERRORS as e:
        raise CorruptDataError(path, f"not a valid CIFAR python-format pickle "
                               f"({type(e).__name__}: {e})", _FIX_FILE) from e
    if not isinstance(obj, dict):
        raise CorruptDataError(path, f"expected a pickled dict, got {type(obj).__name__}",
                               _FIX_FILE)
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def rows_to_nhwc(rows: np.ndarray, height: int = 32, width: int = 32) -> np.ndarray:
    """(n, 3*H*W) uint8 rows (R plane, G plane, B plane) -> (n, H, W, 3) uint8, C-contiguous.

    Examples:
        >>> import numpy as np
        >>> rows = np.zeros((1, 3072), np.uint8); rows[0, 1024] = 7  # green plane, pixel (0, 0)
        >>> rows_to_nhwc(rows)[0, 0, 0].tolist()
        [0, 7, 0]
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 * height * width:
        raise ValueError(f"rows must have shape (n, {3 * height * width}), got {rows.shape}")
    if rows.dtype != np.uint8:
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise ValueError("rows must hold pixel values in [0, 255]")
        rows = rows.astype(np.uint8)
    return np.ascontiguousarray(rows.reshape(-1, 3, height, width).transpose(0, 2, 3, 1))


def _read_split(path: Path, label_key: str, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise CorruptDataError(path, f"missing key(s) {missing}; has {sorted(d)}", _FIX_FILE)
    try:
        x = rows_to_nhwc(np.asarray(d["data"]))
        y = np.asarray(d[label_key], dtype=np.int64)
    except (ValueError, TypeError, OverflowError) as e:
        raise CorruptDataError(path, f"bad 'data' or {label_key!r} ({e})", _FIX_FILE) from e
    if y.shape != (len(x),):
        raise CorruptDataError(path, f"{len(x)} images but {label_key} has shape {y.shape}",
                               _FIX_FILE)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise CorruptDataError(path, f"{label_key} outside [0, {num_classes}): min {y.min()}, "
                               f"max {y.max()}", _FIX_FILE)
    return x, y.astype(np.int32)


def _label_names(path: Path, key: str, count: int) -> list[str] | None:
    """Label names from a meta pickle, None if the file or key is absent."""
    if not path.is_file():
        return None
    meta = read_cifar_pickle(path)
    if key not in meta:
        return None
    try:
        names = [_text(n) for n in meta[key]]  # type: ignore[attr-defined]
    except (TypeError, UnicodeDecodeError) as e:
        raise CorruptDataError(path, f"bad {key!r} ({e})", _FIX_FILE) from e
    if len(names) != count:
        raise CorruptDataError(path, f"{key!r} has {len(names)} names, expected {count}",
                               _FIX_FILE)
    return names


def _make(path: Path, *arrays_and_meta) -> Dataset:
    try:
        return make_dataset(*arrays_and_meta)
    except ValueError as e:  # labels out of range, shapes: the files are inconsistent
        raise CorruptDataError(path, str(e), _FIX_FILE) from e


def _read_cifar10(d: Path) -> Dataset:
    missing = [n for n in (*_CIFAR10_TRAIN, "test_batch") if not (d / n).is_file()]
    if missing:
        raise DatasetNotFoundError(f"CIFAR-10 directory {d} is incomplete, missing {missing}")
    parts = [_read_split(d / n, "labels", 10) for n in _CIFAR10_TRAIN]
    x_test, y_test = _read_split(d / "test_batch", "labels", 10)
    names = _label_names(d / "batches.meta", "label_names", 10) or CIFAR10_LABEL_NAMES
    return _make(d, np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                 x_test, y_test, 10, "cifar10", names)


def _read_cifar100(d: Path, label_mode: str) -> Dataset:
    if not (d / "train").is_file():
        raise DatasetNotFoundError(f"CIFAR-100 directory {d} is incomplete, missing 'train'")
    key = f"{label_mode}_labels"
    num_classes = 100 if label_mode == "fine" else 20
    x_train, y_train = _read_split(d / "train", key, num_classes)
    x_test, y_test = _read_split(d / "test", key, num_classes)
    names = _label_names(d / "meta", f"{label_mode}_label_names", num_classes) or ()
    name = "cifar100" if label_mode == "fine" else "cifar100_coarse"
    return _make(d, x_train, y_train, x_test, y_test, num_classes, name, names)


class _Official(NamedTuple):
    what: str
    folder: str
    marker: str
    archive: str
    url: str
    md5: str
    size: int


_CIFAR10 = _Official("CIFAR-10", "cifar-10-batches-py", "test_batch", "cifar-10-python.tar.gz",
                     CIFAR10_URL, CIFAR10_MD5, CIFAR10_SIZE)
_CIFAR100 = _Official("CIFAR-100", "cifar-100-python", "test", "cifar-100-python.tar.gz",
                      CIFAR100_URL, CIFAR100_MD5, CIFAR100_SIZE)


def _locate(root, spec: _Official) -> tuple[Path, Path | None]:
    """(base cache dir, dataset folder if present). ``root`` may also be the folder itself."""
    base = cache_dir(root)
    if has_manifest(base / spec.folder):  # ours, even with files missing (verified next)
        return base, base / spec.folder
    for cand in (base / spec.folder, base):
        if (cand / spec.marker).is_file():
            return base, cand
    return base, None


def _archive(spec: _Official, base: Path, download: bool, urls, md5: str, size: int | None
             ) -> Path:
    """The verified tarball in the cache (downloaded if needed and allowed)."""
    archive = base / spec.archive
    if download:
        return download_file(urls if urls is not None else spec.url, archive, md5, size=size)
    problem = file_problem(archive, md5, size)
    if problem is None:
        return archive
    hint = (f"Pass download=True, point root= (or the MHE_JAX_DATA environment variable) at a "
            f"directory containing {spec.folder}/, or download {spec.url} and extract it there.")
    if problem == "missing":
        raise DatasetNotFoundError(f"{spec.what} not found: expected "
                                   f"{base / spec.folder / spec.marker}. {hint}")
    archive.unlink()
    raise DatasetNotFoundError(f"{spec.what}: the cached archive {archive} failed verification "
                               f"({problem}) and was deleted. {hint}")


def _load_official(spec: _Official, root, download: bool, urls, md5: str | None,
                   read: Callable[[Path], Dataset]) -> Dataset:
    base, found = _locate(root, spec)
    if found is not None and (found != base / spec.folder or not has_manifest(found)):
        return read(found)  # the user's folder: read as it is, never deleted
    if md5 is None:
        md5, size = spec.md5, spec.size
    else:
        size = None  # another file than the official one: its size is not known
    if found is not None:  # extracted by us: verify against the manifest before use
        problems = verify_extracted(found)
        if problems:
            shutil.rmtree(found)
            warnings.warn(f"{found} failed verification ({'; '.join(problems[:3])}); deleted "
                          "it, extracting it again", CacheRepairWarning, stacklevel=3)
            found = None
    if found is None:
        archive = _archive(spec, base, download, urls, md5, size)
        try:
            found = extract_tar(archive, base, spec.folder)
        except CorruptDataError as e:
            archive.unlink(missing_ok=True)
            raise CorruptDataError(
                archive, f"{e.problem}; deleted it", "It matched the expected md5, so the file "
                "served under that checksum is itself damaged: check urls= and md5=.") from e
    try:
        return read(found)
    except (CorruptDataError, DatasetNotFoundError) as e:
        shutil.rmtree(found, ignore_errors=True)
        (base / spec.archive).unlink(missing_ok=True)
        problem = e.problem if isinstance(e, CorruptDataError) else str(e)
        raise CorruptDataError(
            getattr(e, "path", found), f"{problem}; deleted {found} and {spec.archive}",
            "The archive matched the expected md5 but holds unusable files: check urls= and "
            "md5=.") from e


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True, *,
                 urls: str | Sequence[str] | None = None, md5: str | None = None) -> Dataset:
    """CIFAR-10: x_train (50000, 32, 32, 3) uint8, y_train (50000,) int32, test 10000, 10 classes.

    Reads ``<root>/cifar-10-batches-py/`` (or ``root`` itself if it holds the batch files);
    ``root`` defaults to ``$MHE_JAX_DATA`` then ``~/.cache/mhe_jax``. If absent, extracts the
    tarball ``<root>/cifar-10-python.tar.gz``, downloading it first if needed and ``download``
    (``urls``: one URL or mirrors tried in order; ``md5``: expected checksum, default the
    official one, whose size is then checked too). Verification and repair of the cache: see
    the module docstring. Raises ``DatasetNotFoundError`` (not on disk, ``download=False``),
    ``DownloadError`` / ``ChecksumError`` (download failed) or ``CorruptDataError`` (a file
    cannot be decoded; the message names it).

    Examples:
        >>> ds = load_cifar10("/data")  # doctest: +SKIP
        >>> ds.summary()  # doctest: +SKIP
        'cifar10: 50000 train / 10000 test, 32x32x3 uint8, 10 classes'
    """
    return _load_official(_CIFAR10, root, download, urls, md5, _read_cifar10)


def load_cifar100(root: str | os.PathLike | None = None, download: bool = True, *,
                  label_mode: str = "fine", urls: str | Sequence[str] | None = None,
                  md5: str | None = None) -> Dataset:
    """CIFAR-100: x_train (50000, 32, 32, 3) uint8, test 10000; labels int32.

    ``label_mode="fine"`` (default, 100 classes) or ``"coarse"`` (20 superclasses). Location,
    download, verification and errors as in ``load_cifar10`` (folder ``cifar-100-python/``,
    tarball ``cifar-100-python.tar.gz``).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    return _load_official(_CIFAR100, root, download, urls, md5,
                          lambda d: _read_cifar100(d, label_mode))
