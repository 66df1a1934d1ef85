"""Cache directory, checksums and verified downloads.

Cache directory resolution: explicit ``root=`` argument > environment variable ``MHE_JAX_DATA``
> ``~/.cache/mhe_jax``. The environment variable names a cache directory only; the library
knows no other location.

Downloads go through `pooch <https://www.fatiando.org/pooch/>`_ (imported only when a file
has to be downloaded): the body is streamed to a temporary file in the destination directory,
a body shorter than its ``Content-Length`` raises, the size (when known) and md5 are checked,
and only then is the file moved to its final name. A failed, truncated, stalled or wrong
download therefore never leaves a file under the final name, and the temporary file is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

from mhe_jax.data._errors import CacheRepairWarning, ChecksumError, DownloadError

__all__ = ["ENV_VAR", "cache_dir", "download_file", "file_problem", "md5sum"]

ENV_VAR = "MHE_JAX_DATA"
_USER_AGENT = "mhe_jax-data/0.1 (+https://arxiv.org/abs/1805.09298)"
_CHUNK = 1 << 20
_MD5_RE = re.compile(r"[0-9a-f]{32}")


def cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Directory holding the datasets: ``root`` > ``$MHE_JAX_DATA`` > ``~/.cache/mhe_jax``.

    The directory is not created here (loaders create it only when they write to it).

    Examples:
        >>> str(cache_dir("/data/sets"))
        '/data/sets'
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


def file_problem(path: str | os.PathLike, md5: str | None, size: int | None = None) -> str | None:
    """What is wrong with ``path`` against the expected ``size`` (bytes) and ``md5``, or None if
    it matches (checks that are None are skipped; the size is checked first, it costs nothing).
    """
    path = Path(path)
    md5 = _check_md5(md5)
    if not path.is_file():
        return "missing"
    if size is not None and (got_size := path.stat().st_size) != size:
        return f"size {got_size} bytes != expected {size}"
    if md5 is not None and (got := md5sum(path)) != md5:
        return f"md5 {got} != expected {md5}"
    return None


def _check_md5(md5: str | None) -> str | None:
    if md5 is None:
        return None
    if not isinstance(md5, str) or not _MD5_RE.fullmatch(md5.lower()):
        raise ValueError(f"md5 must be None or 32 hex digits, got {md5!r}")
    return md5.lower()


def _check_urls(urls: str | Sequence[str]) -> list[str]:
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("urls must contain at least one URL")
    for u in urls:
        if not isinstance(u, str) or not u.lower().startswith(("http://", "https://")):
            raise ValueError(f"urls must be http(s) URL strings, got {u!r}")
    return urls


class _SizeMismatch(ValueError):
    """Raised inside pooch's download (before it moves the file) when the size is wrong."""


class _SizedDownloader:
    """pooch downloader: pooch's HTTP downloader, then a check of the number of bytes received.

    Runs on pooch's temporary file, before pooch compares the hash and moves the file into place.
    """

    def __init__(self, size: int | None, timeout: float) -> None:
        import pooch  # lazy: needed only to download

        self.size = size
        self.http = pooch.HTTPDownloader(progressbar=False, timeout=timeout,
                                         headers={"User-Agent": _USER_AGENT})

    def __call__(self, url: str, output_file: str, pooch_obj) -> None:
        self.http(url, output_file, pooch_obj)
        got = os.path.getsize(output_file)
        if self.size is not None and got != self.size:
            raise _SizeMismatch(f"received {got} bytes, expected {self.size}")


class _DropHashHint(logging.Filter):
    """Drops pooch's advice to pass a SHA256 ``known_hash`` (this API takes ``md5=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SHA256 hash of downloaded file")


def _import_pooch():
    try:
        import pooch
        import requests
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("downloading datasets needs pooch: pip install 'mhe_jax[models]' "
                          "(or pip install pooch)") from e
    logger = pooch.get_logger()
    if not any(isinstance(f, _DropHashHint) for f in logger.filters):
        logger.addFilter(_DropHashHint())
    return pooch, requests


def download_file(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    md5: str | None,
    *,
    size: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``dest`` from the first working URL of ``urls``, verified by size and md5.

    If ``dest`` already exists with the expected ``size`` (bytes) and ``md5`` it is returned
    without any download. An existing ``dest`` that does not match is deleted (with a
    ``CacheRepairWarning``) and downloaded again. Checks given as None are skipped; with both
    None an existing file is trusted as it is.

    URLs are tried in order. A download counts as failed if the HTTP request fails, the
    connection stalls for ``timeout`` seconds, the body is shorter than its ``Content-Length``,
    or the received bytes do not have the expected size and md5. Raises ``ChecksumError`` if a
    URL answered but no answer had the expected size and md5, ``DownloadError`` if none
    answered. In every failure case nothing is left at ``dest`` or in its directory, and the
    folders created for ``dest`` are removed again.

    Examples:
        >>> path = download_file(  # doctest: +SKIP
        ...     "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        ...     "/tmp/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
        ...     size=170498071)
    """
    urls = _check_urls(urls)
    md5 = _check_md5(md5)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be None or a non-negative int, got {size!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    dest = Path(dest)
    if dest.is_file():
        problem = file_problem(dest, md5, size)
        if problem is None:
            return dest
        dest.unlink()
        warnings.warn(f"cached file {dest} failed verification ({problem}); deleted it and "
                      "downloading it again", CacheRepairWarning, stacklevel=2)

    pooch, requests = _import_pooch()
    downloader = _SizedDownloader(size, float(timeout))
    # The folders pooch will create for dest: removed again (if still empty) when every URL
    # fails, so a mistyped root= or data_dir leaves nothing on disk.
    created = []
    parent = dest.parent.absolute()
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    try:
        return _retrieve(pooch, requests, urls, dest, md5, downloader)
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (another writer) or already gone: leave it
                break
        raise


def _retrieve(pooch, requests, urls: list[str], dest: Path, md5: str | None,
              downloader: _SizedDownloader) -> Path:
    errors: list[str] = []
    bad_checksum = False
    for url in urls:
        try:
            pooch.retrieve(url, known_hash=None if md5 is None else f"md5:{md5}",
                           fname=dest.name, path=dest.parent, downloader=downloader)
            return dest
        except (ValueError, requests.RequestException, OSError) as e:
            # pooch raises ValueError for a hash mismatch; RequestException covers HTTP errors,
            # timeouts and bodies shorter than their Content-Length (ChunkedEncodingError).
            # RequestException and some of its subclasses are also OSError / ValueError.
            if isinstance(e, requests.RequestException):
                errors.append(f"{url}: {type(e).__name__}: {e}")
            elif isinstance(e, ValueError):
                bad_checksum = True
                errors.append(f"{url}: size or md5 differs from the expected ({e})")
            else:
                raise  # local I/O error (disk full, permissions): not the URL's fault
    detail = "\n  ".join(errors)
    cls = ChecksumError if bad_checksum else DownloadError
    what = ("check the URL or mirror, or pass the md5 (and size) of the file it serves"
            if bad_checksum else "check the network connection and the URLs")
    raise cls(f"could not download {dest.name} into {dest.parent} ({what}):\n  {detail}")
