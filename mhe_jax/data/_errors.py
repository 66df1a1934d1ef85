"""The exceptions ``mhe_jax.data`` raises about data files, and the warning it gives when it
repairs its cache.

One hierarchy, so ``except DatasetError`` catches every data problem::

    DatasetError                              (Exception)
    ├── DatasetNotFoundError                  (also FileNotFoundError)  not on disk, no download
    ├── DownloadError                         (also RuntimeError)       every URL failed
    │   └── ChecksumError                                               size or md5 did not match
    └── CorruptDataError                      (also ValueError)         a file cannot be decoded

``CorruptDataError`` carries the file (``.path``), what is wrong (``.problem``) and what to do
about it (``.fix``); its message holds all three.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CacheRepairWarning",
    "ChecksumError",
    "CorruptDataError",
    "DatasetError",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "DownloadError",
]


class DatasetError(Exception):
    """Base class of every error ``mhe_jax.data`` raises about a dataset's files."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset is not on disk and could not be downloaded (``download=False``, or no
    download exists for it)."""


class DatasetLayoutError(DatasetError, ValueError):
    """A dataset folder exists but is not laid out as the loader expects (e.g. an image folder's
    ``val/`` holds a class that ``train/`` has not, or a split has no class sub-folders)."""


class DownloadError(DatasetError, RuntimeError):
    """Every URL tried for a file failed (HTTP error, connection error, timeout, truncated body).
    Nothing was written under the file's final name."""


class ChecksumError(DownloadError):
    """A URL answered, but no answer had the expected size and md5. Nothing was written under the
    file's final name."""


class CorruptDataError(DatasetError, ValueError):
    """A data file exists but is not what it should be: it cannot be decoded (truncated archive,
    corrupt gzip, bit-flipped pickle, damaged ``.npz``) or it fails verification.

    Attributes: ``path`` (the file), ``problem`` (what is wrong), ``fix`` (what to do about it).
    """

    def __init__(self, path: str | os.PathLike, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. {fix}")

    def __reduce__(self):  # picklable across processes despite the 3-argument constructor
        return type(self), (self.path, self.problem, self.fix)


class CacheRepairWarning(UserWarning):
    """A file in the library's cache failed verification or decoding and was deleted (and, where
    possible, fetched or rebuilt again)."""
