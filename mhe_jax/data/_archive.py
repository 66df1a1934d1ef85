"""Safe, atomic, verified extraction of ``.tar`` / ``.tar.gz`` archives.

The archive is extracted into a temporary sibling directory with tarfile's ``"data"`` safety
filter (no absolute paths, no ``..``, no links out, no device files). A gzip stream is read to
its end, so its CRC-32 and length are checked even though tar stops reading at the end-of-archive
blocks. The expected top-level folder then gets a manifest (size and md5 of every extracted
file, ``MANIFEST_NAME``) and is renamed into place: a folder under its final name is always
complete, and ``verify_extracted`` can later tell whether its files are still intact.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from mhe_jax.data._download import md5sum
from mhe_jax.data._errors import CorruptDataError, DatasetError

__all__ = ["MANIFEST_NAME", "extract_tar", "has_manifest", "verify_extracted"]

MANIFEST_NAME = ".mhe_jax_manifest.json"
_CHUNK = 1 << 20
# what a damaged archive raises while being read (BadGzipFile is an OSError subclass; other
# OSErrors, such as a full disk, are not the archive's fault and propagate unchanged)
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)


def _extract(archive: Path, into: Path) -> None:
    with open(archive, "rb") as raw:
        if raw.read(2) == b"\x1f\x8b":
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                    tarfile.open(fileobj=gz, mode="r|") as tar:
                tar.extractall(into, filter="data")
                while gz.read(_CHUNK):  # to the end of the stream: gzip checks CRC and length
                    pass
        else:
            raw.seek(0)
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                tar.extractall(into, filter="data")


def _write_manifest(folder: Path, archive: Path) -> None:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            files[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size,
                                                        "md5": md5sum(p)}
    manifest = {"format": 1, "archive": archive.name, "files": files}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def extract_tar(archive: str | os.PathLike, dest_dir: str | os.PathLike, top: str) -> Path:
    """Extract ``archive`` (tar, tar.gz, tar.bz2, tar.xz) and move its top-level folder ``top``
    to ``dest_dir/top``, with a manifest of the extracted files' sizes and md5s.

    Returns ``dest_dir/top``. If that folder already exists with a manifest (another process
    finished first) it is returned as it is; without one it is not ours, and ``DatasetError``
    is raised. Raises ``CorruptDataError`` naming the archive if it cannot be read
    to the end (truncated, corrupt gzip, bad tar header, unsafe member) or has no folder
    ``top``; nothing is left in ``dest_dir`` then. The archive itself is never deleted here.

    Examples:
        >>> extract_tar("cifar-10-python.tar.gz", "/data", "cifar-10-batches-py")  # doctest: +SKIP
        PosixPath('/data/cifar-10-batches-py')
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    final = dest_dir / top
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}.", suffix=".extract", dir=dest_dir))
    fix = "Delete it and load again to download it again, or pass another path."
    try:
        try:
            _extract(archive, tmp)
        except _ARCHIVE_ERRORS as e:
            raise CorruptDataError(archive, f"archive cannot be extracted "
                                   f"({type(e).__name__}: {e})", fix) from e
        src = tmp / top
        if not src.is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise CorruptDataError(archive, f"archive has no top-level folder {top!r} "
                                   f"(found {found})", fix)
        _write_manifest(src, archive)
        if final.exists():
            if has_manifest(final):  # another process finished first
                return final
            raise DatasetError(f"{final} already exists but was not extracted by mhe_jax (it "
                               f"has no {MANIFEST_NAME}); move it away, or pass it as root= "
                               "to read it as it is")
        os.replace(src, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def has_manifest(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was extracted by ``extract_tar`` (it holds a manifest)."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def verify_extracted(folder: str | os.PathLike) -> list[str]:
    """Problems of an extracted folder against its manifest ([] if every listed file has its
    recorded size and md5). A folder without a manifest raises ``ValueError``."""
    folder = Path(folder)
    if not has_manifest(folder):
        raise ValueError(f"{folder} has no {MANIFEST_NAME}")
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not a mapping")
        problems = []
        for rel, rec in files.items():
            p = folder / rel
            if not p.is_file():
                problems.append(f"{rel}: missing")
            elif p.stat().st_size != rec["size"]:
                problems.append(f"{rel}: size {p.stat().st_size} != {rec['size']}")
            elif md5sum(p) != rec["md5"]:
                problems.append(f"{rel}: md5 differs from the manifest")
        return problems
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        return [f"{MANIFEST_NAME}: unreadable ({type(e).__name__}: {e})"]
