"""CIFAR-10 / CIFAR-100 loaders (official "python version" files, or the JPEG ``.npz`` copy).

Official layout (Krizhevsky, 2009), as extracted from the tarballs:

- ``cifar-10-batches-py/``: ``data_batch_1..5``, ``test_batch``, ``batches.meta``
- ``cifar-100-python/``: ``train``, ``test``, ``meta``

Each file is a pickled dict written by Python 2 (keys are ``bytes`` when loaded with
``encoding="bytes"``; re-written copies may have ``str`` keys, both are accepted). ``data`` is a
(n, 3072) uint8 array: 1024 red values, then 1024 green, then 1024 blue, each plane row-major
over 32x32. The loaders return NHWC uint8 images and int32 labels in a ``Dataset``.

Pickles are read with a restricted unpickler that only accepts the numpy array constructors, so
a tampered file cannot run arbitrary code.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mhe_jax.data._download import (
    Dataset,
    DatasetNotFoundError,
    cache_dir,
    download_file,
    extract_tar,
    make_dataset,
)

__all__ = [
    "CIFAR10_LABEL_NAMES",
    "CIFAR100_MD5",
    "CIFAR100_URL",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "default_cifar10_jpeg_path",
    "load_cifar10",
    "load_cifar100",
    "load_cifar10_jpeg_npz",
    "read_cifar_pickle",
    "rows_to_nhwc",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_ENV_JPEG = "MHE_JAX_CIFAR10_JPEG"

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


def read_cifar_pickle(path: str | os.PathLike) -> dict[str, object]:
    """Load one CIFAR pickle (Python 2 or 3) into a dict with ``str`` keys.

    Loaded with ``encoding="bytes"``; ``bytes`` keys are decoded as latin-1, ``bytes`` values in
    lists (label names, filenames) are left to the caller.
    """
    with open(path, "rb") as f:
        try:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path} is not a valid CIFAR python-format pickle: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def rows_to_nhwc(rows: np.ndarray, height: int = 32, width: int = 32) -> np.ndarray:
    """(n, 3*H*W) uint8 rows (R plane, G plane, B plane) -> (n, H, W, 3) uint8, C-contiguous."""
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3 * height * width:
        raise ValueError(f"rows must have shape (n, {3 * height * width}), got {rows.shape}")
    if rows.dtype != np.uint8:
        if rows.size and (rows.min() < 0 or rows.max() > 255):
            raise ValueError("rows must hold pixel values in [0, 255]")
        rows = rows.astype(np.uint8)
    return np.ascontiguousarray(rows.reshape(-1, 3, height, width).transpose(0, 2, 3, 1))


def _read_split(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; has {sorted(d)}")
    x = rows_to_nhwc(np.asarray(d["data"]))
    y = np.asarray(d[label_key], dtype=np.int64)
    if y.shape != (len(x),):
        raise ValueError(f"{path}: {len(x)} images but {label_key} has shape {y.shape}")
    return x, y.astype(np.int32)


def _locate(root, folder: str, marker: str) -> tuple[Path, Path | None]:
    """(base cache dir, dataset folder if present). ``root`` may also be the folder itself."""
    base = cache_dir(root)
    for cand in (base / folder, base):
        if (cand / marker).is_file():
            return base, cand
    return base, None


def _obtain(root, download: bool, folder: str, marker: str, archive: str,
            urls: str | Sequence[str] | None, default_url: str, md5: str | None,
            default_md5: str, what: str) -> Path:
    base, found = _locate(root, folder, marker)
    if found is not None:
        return found
    if not download:
        raise DatasetNotFoundError(
            f"{what} not found: expected {base / folder / marker}. Pass download=True, point "
            f"root= (or the MHE_JAX_DATA environment variable) at a directory containing "
            f"{folder}/, or download {default_url} and extract it there.")
    tarball = download_file(urls if urls is not None else default_url, base / archive,
                            md5 if md5 is not None else default_md5)
    out = extract_tar(tarball, base, folder)
    if not (out / marker).is_file():
        raise DatasetNotFoundError(f"{tarball} extracted but {out / marker} is missing")
    return out


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True, *,
                 urls: str | Sequence[str] | None = None, md5: str | None = None) -> Dataset:
    """CIFAR-10: x_train (50000, 32, 32, 3) uint8, y_train (50000,) int32, test 10000, 10 classes.

    Reads ``<root>/cifar-10-batches-py/`` (or ``root`` itself if it holds the batch files);
    ``root`` defaults to ``$MHE_JAX_DATA`` then ``~/.cache/mhe_jax``. If absent and ``download``,
    fetches the official tarball (``urls``: one URL or mirrors tried in order; ``md5``: expected
    checksum, default the official one), verifies it and extracts it there.
    """
    d = _obtain(root, download, _CIFAR10_DIR, "test_batch", "cifar-10-python.tar.gz",
                urls, CIFAR10_URL, md5, CIFAR10_MD5, "CIFAR-10")
    missing = [n for n in (*_CIFAR10_TRAIN, "test_batch") if not (d / n).is_file()]
    if missing:
        raise DatasetNotFoundError(f"CIFAR-10 directory {d} is incomplete, missing {missing}")
    parts = [_read_split(d / n, "labels") for n in _CIFAR10_TRAIN]
    x_test, y_test = _read_split(d / "test_batch", "labels")
    names: Sequence[str] = CIFAR10_LABEL_NAMES
    if (d / "batches.meta").is_file():
        meta = read_cifar_pickle(d / "batches.meta")
        if "label_names" in meta:
            names = [_text(n) for n in meta["label_names"]]
    return make_dataset(np.concatenate([p[0] for p in parts]),
                        np.concatenate([p[1] for p in parts]),
                        x_test, y_test, 10, "cifar10", names)


def load_cifar100(root: str | os.PathLike | None = None, download: bool = True, *,
                  label_mode: str = "fine", urls: str | Sequence[str] | None = None,
                  md5: str | None = None) -> Dataset:
    """CIFAR-100: x_train (50000, 32, 32, 3) uint8, test 10000; labels int32.

    ``label_mode="fine"`` (default, 100 classes) or ``"coarse"`` (20 superclasses). Location,
    download and checksum rules as in ``load_cifar10`` (folder ``cifar-100-python/``).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    d = _obtain(root, download, _CIFAR100_DIR, "test", "cifar-100-python.tar.gz",
                urls, CIFAR100_URL, md5, CIFAR100_MD5, "CIFAR-100")
    if not (d / "train").is_file():
        raise DatasetNotFoundError(f"CIFAR-100 directory {d} is incomplete, missing 'train'")
    key = f"{label_mode}_labels"
    x_train, y_train = _read_split(d / "train", key)
    x_test, y_test = _read_split(d / "test", key)
    num_classes = 100 if label_mode == "fine" else 20
    names: Sequence[str] = ()
    if (d / "meta").is_file():
        meta = read_cifar_pickle(d / "meta")
        if f"{label_mode}_label_names" in meta:
            names = [_text(n) for n in meta[f"{label_mode}_label_names"]]
    name = "cifar100" if label_mode == "fine" else "cifar100_coarse"
    return make_dataset(x_train, y_train, x_test, y_test, num_classes, name, names)


# ---------------------------------------------------------------------------------------------
# JPEG copy of CIFAR-10 (../shared/data/cifar10_jpeg.npz in this project)


def default_cifar10_jpeg_path() -> Path | None:
    """``$MHE_JAX_CIFAR10_JPEG`` if set, else ``<repo>/../shared/data/cifar10_jpeg.npz`` if it
    exists (source checkouts of this project), else None."""
    env = os.environ.get(_ENV_JPEG)
    if env:
        return Path(env).expanduser()
    cand = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10_jpeg.npz"
    return cand if cand.is_file() else None


def _jpeg_class():
    try:
        from PIL import JpegImagePlugin
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("load_cifar10_jpeg_npz needs Pillow: pip install mhe_jax[models]"
                          ) from e
    return JpegImagePlugin.JpegImageFile


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, n: int, what: str) -> np.ndarray:
    """Decode images 0..n-1 of one split into (n, 32, 32, 3) uint8."""
    jpeg = _jpeg_class()  # opening the JPEG class directly skips Pillow's format probing (~30%)
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


def load_cifar10_jpeg_npz(path: str | os.PathLike | None = None, *, limit: int | None = None,
                          cache: bool = False, root: str | os.PathLike | None = None) -> Dataset:
    """CIFAR-10 from the JPEG ``.npz`` copy (keys ``train_jpeg``, ``train_offsets``,
    ``train_labels``, ``test_*``, ``label_names``), decoded with Pillow.

    Returns uint8 (n, 32, 32, 3) images and int32 labels, in file order (sorted by class: shuffle
    before training, e.g. with ``batches``). ``path`` defaults to ``default_cifar10_jpeg_path()``.
    ``limit``: decode only the first ``limit`` images of each split (quick checks). ``cache``:
    store/reuse the decoded arrays as ``<cache dir>/cifar10_jpeg_decoded.npz`` (``root`` as in
    ``load_cifar10``; ~185 MB, reused only while the source file's size and mtime are unchanged).
    JPEG is lossy: pixels differ slightly from the official dataset.
    """
    if path is None:
        path = default_cifar10_jpeg_path()
        if path is None:
            raise DatasetNotFoundError(
                "no path given and no CIFAR-10 JPEG npz found: pass path= or set "
                f"${_ENV_JPEG}")
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"path {path} does not exist")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int, got {limit!r}")

    st = path.stat()
    stamp = np.array([st.st_size, st.st_mtime_ns], np.int64)
    cache_file = cache_dir(root) / "cifar10_jpeg_decoded.npz"
    use_cache = cache and limit is None
    if use_cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as c:
                if np.array_equal(c["source_stamp"], stamp):
                    return make_dataset(c["x_train"], c["y_train"], c["x_test"], c["y_test"],
                                        10, "cifar10_jpeg", [str(n) for n in c["label_names"]])
        except (OSError, KeyError, ValueError):
            pass  # unreadable cache: decode again and overwrite

    with np.load(path, allow_pickle=False) as src:
        need = ["train_jpeg", "train_offsets", "train_labels",
                "test_jpeg", "test_offsets", "test_labels"]
        missing = [k for k in need if k not in src.files]
        if missing:
            raise ValueError(f"{path} is missing key(s) {missing}; has {src.files}")
        splits = {}
        for s in ("train", "test"):
            offsets = np.asarray(src[f"{s}_offsets"], np.int64)
            labels = np.asarray(src[f"{s}_labels"])
            if len(offsets) != len(labels) + 1:
                raise ValueError(f"{path}: {s}_offsets has {len(offsets)} entries for "
                                 f"{len(labels)} labels (expected n+1)")
            n = len(labels) if limit is None else min(limit, len(labels))
            splits[s] = (_decode_jpegs(src[f"{s}_jpeg"], offsets, n, s), labels[:n])
        names = ([str(n) for n in src["label_names"]] if "label_names" in src.files
                 else list(CIFAR10_LABEL_NAMES))
    ds = make_dataset(*splits["train"], *splits["test"], 10, "cifar10_jpeg", names)

    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".cifar10_jpeg_decoded.", suffix=".npz",
                                   dir=cache_file.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test,
                         y_test=ds.y_test, label_names=np.array(ds.label_names),
                         source_stamp=stamp)
            os.replace(tmp, cache_file)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ds
