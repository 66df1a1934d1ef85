"""Shared pieces of the dataset loaders: the ``Dataset`` container, cache directory, download,
checksum and extraction helpers.

Cache directory resolution: explicit ``root=`` argument > environment variable ``MHE_JAX_DATA``
> ``~/.cache/mhe_jax``.

Downloads are atomic: bytes go to a hidden temporary file in the destination directory, the md5
is verified, and only then is the file renamed into place. A failed or corrupt download never
leaves a file under the final name. Archives are extracted into a temporary directory and the
expected top-level folder is renamed into place, so an interrupted extraction never looks
complete either.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "ENV_VAR",
    "Dataset",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "cache_dir",
    "download_file",
    "make_dataset",
    "extract_tar",
    "md5sum",
]

ENV_VAR = "MHE_JAX_DATA"
_USER_AGENT = "mhe_jax-data/0.1 (+https://arxiv.org/abs/1805.09298)"
_CHUNK = 1 << 20


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


def make_dataset(x_train, y_train, x_test, y_test, num_classes, name, label_names=()) -> Dataset:
    """Build a ``Dataset`` after validating shapes and dtypes (casts labels to int32)."""
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


class DownloadError(RuntimeError):
    """Every URL tried for a file failed (network error, HTTP error)."""


class ChecksumError(DownloadError):
    """A downloaded file did not have the expected md5; nothing was written to the cache."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not on disk and downloading was disabled (``download=False``)."""


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Directory holding the datasets: ``root`` > ``$MHE_JAX_DATA`` > ``~/.cache/mhe_jax``.

    The directory is not created here (loaders create it only when they download).
    """
    if root is not None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a str or os.PathLike path, got {type(root).__name__}")
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mhe_jax"


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 digest of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, fileobj, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (http/https only)
        shutil.copyfileobj(resp, fileobj, _CHUNK)


def download_file(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    md5: str | None,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first working URL of ``urls`` and verify its md5.

    If ``dest`` already exists with the right md5 (or ``md5`` is None) nothing is downloaded;
    an existing ``dest`` with the wrong md5 is deleted and downloaded again.
    URLs are tried in order; a URL serving a file with the wrong checksum counts as failed.
    Raises ``ChecksumError`` if some URL answered but no answer had the expected md5,
    ``DownloadError`` if no URL answered. Never leaves a partial or corrupt file at ``dest``.
    """
    if isinstance(urls, str):
        urls = [urls]
    urls = list(urls)
    if not urls:
        raise ValueError("urls must contain at least one URL")
    for u in urls:
        if not isinstance(u, str) or not u.lower().startswith(("http://", "https://")):
            raise ValueError(f"urls must be http(s) URL strings, got {u!r}")
    if md5 is not None:
        md5 = md5.lower()
    dest = Path(dest)
    if dest.is_file():
        if md5 is None or md5sum(dest) == md5:
            return dest
        dest.unlink()  # corrupt or stale cached copy: never leave it behind
    dest.parent.mkdir(parents=True, exist_ok=True)

    errors: list[str] = []
    bad_checksum = False
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                _fetch(url, f, timeout)
            if md5 is not None:
                got = md5sum(tmp)
                if got != md5:
                    bad_checksum = True
                    errors.append(f"{url}: md5 {got} != expected {md5}")
                    continue
            os.replace(tmp, dest)
            return dest
        # HTTPError is a URLError; http.client errors cover truncated responses
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if tmp.exists():
                tmp.unlink()
    detail = "\n  ".join(errors)
    cls = ChecksumError if bad_checksum else DownloadError
    raise cls(f"could not download {dest.name} into {dest.parent}:\n  {detail}")


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike, top: str) -> Path:
    """Extract ``archive`` (tar/tar.gz) and move its top-level folder ``top`` to ``dest_dir/top``.

    Extraction happens in a temporary sibling directory with tarfile's ``"data"`` safety filter
    (no absolute paths, no ``..``, no device files); the folder appears at its final name only
    once complete. Returns ``dest_dir/top``.
    """
    dest_dir = Path(dest_dir)
    final = dest_dir / top
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".extract", dir=dest_dir))
    try:
        with tarfile.open(archive, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
                tar.extractall(tmp, filter="data")
            else:  # pragma: no cover - older patch releases
                for m in tar.getmembers():
                    target = (tmp / m.name).resolve()
                    if not (m.isfile() or m.isdir()) or not target.is_relative_to(tmp.resolve()):
                        raise DownloadError(f"refusing unsafe archive member {m.name!r}")
                tar.extractall(tmp)
        src = tmp / top
        if not src.is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise DownloadError(
                f"archive {archive} has no top-level folder {top!r} (found {found})")
        if final.exists():  # another process finished first
            return final
        os.replace(src, final)
        return final
    except tarfile.TarError as e:
        raise DownloadError(f"could not extract {archive}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
