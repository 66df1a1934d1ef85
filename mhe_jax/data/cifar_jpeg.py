"""CIFAR-10 from a JPEG ``.npz`` copy, decoded with Pillow, with an optional decoded cache.

The ``.npz`` holds, per split ``s`` in (train, test): ``s_jpeg`` (all JPEG files concatenated,
uint8), ``s_offsets`` (n + 1 increasing byte offsets into it) and ``s_labels`` (n ints), plus
``label_names`` (10 strings, optional). The file's location is always an argument: the library
knows no default place for it.

Decoded cache (``cache=True``): ``<cache dir>/cifar10_jpeg_decoded.npz`` (``root=`` >
``$MHE_JAX_DATA`` > ``~/.cache/mhe_jax``) with the decoded arrays, the source file's size and
mtime, and an md5 of the arrays. It is used only if it reads back completely (the zip CRCs),
its stamp matches the source and its md5 matches its arrays. A stale cache is rebuilt; an
unreadable or mismatching one is deleted with a ``CacheRepairWarning`` and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from mhe_jax.data._dataset import Dataset, make_dataset
from mhe_jax.data._download import cache_dir
from mhe_jax.data._errors import CacheRepairWarning, CorruptDataError, DatasetNotFoundError
from mhe_jax.data.cifar import CIFAR10_LABEL_NAMES

__all__ = ["load_cifar10_jpeg_npz"]

DECODED_CACHE_NAME = "cifar10_jpeg_decoded.npz"
_SPLIT_KEYS = ("train_jpeg", "train_offsets", "train_labels",
               "test_jpeg", "test_offsets", "test_labels")
_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "label_names", "source_stamp",
               "digest")
# what reading a damaged .npz raises: zip-level (BadZipFile, bad CRC, zlib.error for a flipped
# compression method, NotImplementedError for an unknown one, RuntimeError for a flipped
# "encrypted" flag), .npy-level (ValueError for a bad header, EOFError / OSError when short;
# numpy's fallback header parser lets tokenize.TokenError and IndentationError through)
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
               IndexError, TypeError, AttributeError, NotImplementedError, RuntimeError,
               OverflowError, MemoryError, struct.error, SyntaxError, tokenize.TokenError)
_FIX_SOURCE = ("Download or re-create the JPEG .npz (delete the damaged copy first), or pass "
               "another path=.")


def _jpeg_class():
    try:
        from PIL import JpegImagePlugin
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_cifar10_jpeg_npz needs Pillow: pip install mhe_jax[models]"
                          ) from e
    return JpegImagePlugin.JpegImageFile


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, n: int, what: str) -> np.ndarray:
    """Decode images 0..n-1 of one split into (n, 32, 32, 3) uint8 (ValueError if damaged)."""
    jpeg = _jpeg_class()  # opening the JPEG class directly skips Pillow's format probing (~30%)
    if blob.ndim != 1 or blob.dtype != np.uint8:
        raise ValueError(f"{what}_jpeg must be a 1-D uint8 array, got {blob.dtype} {blob.shape}")
    if offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"{what}_offsets must be 1-D of length n+1, got shape {offsets.shape}")
    if (offsets[0] < 0 or offsets[-1] > blob.size
            or (len(offsets) > 1 and np.any(np.diff(offsets) <= 0))):
        raise ValueError(f"{what}_offsets are not increasing positions inside {what}_jpeg")
    raw = blob[:offsets[n]].tobytes()  # only the bytes of the images decoded
    out = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        try:
            im = jpeg(io.BytesIO(raw[offsets[i]:offsets[i + 1]]))
            if im.size != (32, 32):
                raise ValueError(f"size {im.size[0]}x{im.size[1]}, expected 32x32")
            if im.mode != "RGB":
                im = im.convert("RGB")
            out[i] = np.frombuffer(im.tobytes(), np.uint8).reshape(32, 32, 3)
        except (SyntaxError, OSError, ValueError) as e:  # Pillow raises SyntaxError on non-JPEG
            raise ValueError(f"{what}_jpeg image {i} could not be decoded: {e}") from e
    return out


def _label_names(arrays) -> list[str]:
    if "label_names" not in arrays.files:
        return list(CIFAR10_LABEL_NAMES)
    names = [str(n) for n in arrays["label_names"]]
    if len(names) != 10:
        raise ValueError(f"label_names has {len(names)} entries, expected 10")
    return names


def _decode_source(path: Path, limit: int | None) -> Dataset:
    try:  # (a bare .npy file loads as an array, and `with` then raises TypeError)
        with np.load(path, allow_pickle=False) as src:
            missing = [k for k in _SPLIT_KEYS if k not in src.files]
            if missing:
                raise ValueError(f"missing key(s) {missing}; has {src.files}")
            splits = {}
            for s in ("train", "test"):
                offsets = np.asarray(src[f"{s}_offsets"], np.int64)
                labels = np.asarray(src[f"{s}_labels"])
                if offsets.ndim != 1 or labels.ndim != 1 or len(offsets) != len(labels) + 1:
                    raise ValueError(f"{s}_offsets has {len(offsets)} entries for "
                                     f"{len(labels)} labels (expected n+1)")
                n = len(labels) if limit is None else min(limit, len(labels))
                splits[s] = (_decode_jpegs(src[f"{s}_jpeg"], offsets, n, s), labels[:n])
            names = _label_names(src)
        (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
        return make_dataset(x_train, y_train, x_test, y_test, 10, "cifar10_jpeg", names)
    except _NPZ_ERRORS as e:
        raise CorruptDataError(path, f"cannot be read as a CIFAR-10 JPEG .npz "
                               f"({type(e).__name__}: {e})", _FIX_SOURCE) from e


def _digest(ds: Dataset) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(ds.label_names).encode())
    return h.hexdigest()


def _read_cache(cache_file: Path, stamp: np.ndarray) -> Dataset | None:
    """The cached dataset if it is intact and matches ``stamp``; None otherwise (a damaged or
    mismatching cache is deleted with a warning, a stale one is left to be overwritten)."""
    if not cache_file.is_file():
        return None
    try:
        with np.load(cache_file, allow_pickle=False) as c:
            missing = [k for k in _CACHE_KEYS if k not in c.files]
            if missing:
                raise KeyError(f"missing key(s) {missing}")
            if not np.array_equal(c["source_stamp"], stamp):
                return None  # the source changed: rebuild
            ds = make_dataset(c["x_train"], c["y_train"], c["x_test"], c["y_test"], 10,
                              "cifar10_jpeg", [str(n) for n in c["label_names"]])
            if len(ds.label_names) != 10:
                raise ValueError(f"{len(ds.label_names)} label names, expected 10")
            if str(c["digest"]) != _digest(ds):
                raise ValueError("md5 of the arrays differs from the one stored with them")
        return ds
    except _NPZ_ERRORS as e:
        cache_file.unlink(missing_ok=True)
        warnings.warn(f"decoded cache {cache_file} is damaged ({type(e).__name__}: {e}); "
                      "deleted it, decoding the source again", CacheRepairWarning, stacklevel=3)
        return None


def _write_cache(cache_file: Path, ds: Dataset, stamp: np.ndarray) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cache_file.stem}.", suffix=".npz.part",
                               dir=cache_file.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                     y_test=ds.y_test, label_names=np.array(ds.label_names),
                     source_stamp=stamp, digest=np.array(_digest(ds)))
        os.replace(tmp, cache_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_cifar10_jpeg_npz(path: str | os.PathLike, *, limit: int | None = None,
                          cache: bool = False, root: str | os.PathLike | None = None
                          ) -> Dataset:
    """CIFAR-10 from the JPEG ``.npz`` copy at ``path`` (layout in the module docstring).

    Returns uint8 (n, 32, 32, 3) images and int32 labels, in file order (sorted by class: shuffle
    before training, e.g. with ``batches``). ``limit``: decode only the first ``limit`` images of
    each split (quick checks). ``cache``: store and reuse the decoded arrays (~185 MB) as
    ``<cache dir>/cifar10_jpeg_decoded.npz``, ``root`` as in ``load_cifar10``; verified before
    use, see the module docstring. JPEG is lossy: pixels differ slightly from the official
    dataset.

    Raises ``TypeError`` if ``path`` is not a path, ``DatasetNotFoundError`` if it does not
    exist, ``CorruptDataError`` naming it if it cannot be decoded (truncated zip, bad CRC,
    missing keys, undecodable JPEG).

    Examples:
        >>> ds = load_cifar10_jpeg_npz("data/cifar10_jpeg.npz", limit=5)  # doctest: +SKIP
        >>> ds.x_train.shape  # doctest: +SKIP
        (5, 32, 32, 3)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError("path must be the location of the CIFAR-10 JPEG .npz file (str or "
                        f"os.PathLike), got {path!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"path {path} " + ("is not a file" if path.exists()
                                                      else "does not exist"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be a bool, got {cache!r}")

    st = path.stat()
    stamp = np.array([st.st_size, st.st_mtime_ns], np.int64)
    use_cache = cache and limit is None
    cache_file = cache_dir(root) / DECODED_CACHE_NAME
    if use_cache and (ds := _read_cache(cache_file, stamp)) is not None:
        return ds
    ds = _decode_source(path, limit)
    if use_cache:
        _write_cache(cache_file, ds, stamp)
    return ds
