"""Fault injection for mhe_jax.data.

- A threaded 127.0.0.1 HTTP server started by the tests truncates bodies (with and without a
  Content-Length), stalls, serves wrong bytes or answers 404.
- Random truncations and single bit flips of every format the loaders read: the CIFAR tarball
  (.tar.gz), a gzip MNIST idx file, a CIFAR python pickle, the JPEG CIFAR-10 .npz and the
  decoded .npz cache. Half the cuts and flips are uniform over the file, half fall in its first
  or last KiB (gzip/tar/zip headers, trailers, central directory).

After every fault the cache directory is listed: nothing partial, nothing bad kept, and what
is kept reads back as the original. Each fuzz test runs FAST truncations + FAST flips in CI and
SLOW + SLOW under ``-m slow``; the outcome counts are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import os
import pickle
import shutil
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import mhe_jax.data as D
from tests.data_files import make_cifar10, make_jpeg_npz, make_mnist_files, tar_gz

FAST, SLOW = 5, 100  # cases per kind (truncation, bit flip) and format
SIZES = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
STALL_MAX_S = 10.0  # a stalled response never holds a server thread longer than this

C10_DIR = "cifar-10-batches-py"
C10_TAR = "cifar-10-python.tar.gz"
MANIFEST = ".mhe_jax_manifest.json"
DECODED = "cifar10_jpeg_decoded.npz"
TALLY: collections.Counter = collections.Counter()  # (test, outcome) -> cases


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env_cache"))  # never the real cache


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    if TALLY:
        print("\nfault-injection tally (test, outcome): cases")
        for key, n in sorted(TALLY.items()):
            print(f"  {key}: {n}")
        print(f"  total cases: {sum(TALLY.values())}")


# ---------------------------------------------------------------------------------------------
# the fault server


class FaultServer:
    """Each path answers with a list of responses, used in order; the last one repeats.

    ("ok", body) | ("truncate", body, n): Content-Length len(body), only n bytes, then close |
    ("nolength", body, n): no Content-Length, n bytes, close (HTTP/1.0 close-delimited) |
    ("stall", body, n): Content-Length len(body), n bytes, then silence (at most STALL_MAX_S) |
    ("status", code).
    """

    def __init__(self):
        self.routes: dict[str, list[tuple]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        fault = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                fault.requests.append(self.path)
                plan = fault.routes.get(self.path)
                if not plan:
                    self.send_error(404)
                    return
                resp = plan.pop(0) if len(plan) > 1 else plan[0]
                if resp[0] == "status":
                    self.send_error(resp[1])
                    return
                kind, body = resp[0], resp[1]
                n = len(body) if kind == "ok" else resp[2]
                self.send_response(200)
                if kind != "nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:n])
                self.wfile.flush()
                if kind == "stall":
                    fault.release.wait(STALL_MAX_S)
                self.close_connection = True

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # the client hung up on a stalled or truncated answer: expected here

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def serve(self, path: str, *responses: tuple) -> str:
        self.routes[path] = list(responses)
        return self.url + path

    def count(self, suffix: str) -> int:
        return sum(r.endswith(suffix) for r in self.requests)


@pytest.fixture
def server():
    s = FaultServer()
    s.thread.start()
    try:
        yield s
    finally:
        s.release.set()
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(5)


# ---------------------------------------------------------------------------------------------
# helpers


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _listing(d: Path) -> list[str]:
    """Every file and folder under d (hidden ones included), relative, sorted."""
    return sorted(p.relative_to(d).as_posix() for p in d.rglob("*")) if d.exists() else []


def mutants(blob: bytes, n: int, seed: int) -> list[tuple[str, bytes]]:
    """n random truncations and n random single bit flips of blob (all differ from blob)."""
    rng = np.random.default_rng(seed)
    size = len(blob)
    edge = min(size, 1024)
    out = []
    for i in range(n):
        cut = int(rng.integers(0, size) if i % 2 == 0 else rng.integers(size - edge, size))
        out.append((f"truncate@{cut}", blob[:cut]))
    for i in range(n):
        if i % 2 == 0:
            pos = int(rng.integers(0, size))
        else:
            pos = int(rng.integers(0, edge) if i % 4 == 1 else rng.integers(size - edge, size))
        bit = int(rng.integers(0, 8))
        b = bytearray(blob)
        b[pos] ^= 1 << bit
        out.append((f"flip@{pos}.{bit}", bytes(b)))
    return out


def _assert_same(ds: D.Dataset, ref: D.Dataset, case: str = "") -> None:
    for f in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(ds, f), getattr(ref, f), err_msg=f"{case}: {f}")
    assert (ds.num_classes, ds.name, ds.label_names) == \
        (ref.num_classes, ref.name, ref.label_names), case


def _repairs(record: list[warnings.WarningMessage]) -> int:
    return sum(issubclass(w.category, D.CacheRepairWarning) for w in record)


# ---------------------------------------------------------------------------------------------
# downloads: truncated, close-delimited, stalled, wrong, 404


def test_truncated_body_raises_without_any_checksum(tmp_path, server):
    """The reported bug: a body shorter than its Content-Length, md5=None, returned normally."""
    blob = bytes(range(256)) * 40
    url = server.serve("/f.bin", ("truncate", blob, 3000))
    dest = tmp_path / "dl" / "f.bin"
    with pytest.raises(D.DownloadError, match="IncompleteRead|Connection broken") as ei:
        D.download_file(url, dest, None)
    assert not isinstance(ei.value, D.ChecksumError)
    assert "f.bin" in str(ei.value) and url in str(ei.value)
    assert _listing(tmp_path / "dl") == []  # no partial file, no temporary file


def test_close_delimited_short_body_is_caught_by_size_and_md5(tmp_path, server):
    """Without a Content-Length, only the expected size or md5 can reveal a short body."""
    blob = b"0123456789" * 500
    url = server.serve("/f.bin", ("nolength", blob, 1234))
    for kw in ({"size": len(blob)}, {"md5": _md5(blob)}):
        md5 = kw.pop("md5", None)
        with pytest.raises(D.ChecksumError, match="1234|md5"):
            D.download_file(url, tmp_path / "dl" / "f.bin", md5, **kw)
        assert _listing(tmp_path / "dl") == []
    # nothing to check against: the short body is all the library can know about
    assert D.download_file(url, tmp_path / "dl" / "f.bin", None).read_bytes() == blob[:1234]


def test_stalled_server_times_out_then_next_mirror(tmp_path, server):
    blob = b"x" * 5000
    stalled = server.serve("/stall/f.bin", ("stall", blob, 100))
    good = server.serve("/good/f.bin", ("ok", blob))
    dest = tmp_path / "dl" / "f.bin"
    t0 = time.monotonic()
    with pytest.raises(D.DownloadError, match="[Tt]imed? ?out"):
        D.download_file(stalled, dest, _md5(blob), timeout=0.3)
    assert time.monotonic() - t0 < 5.0  # bounded by the timeout, not by the server
    assert _listing(tmp_path / "dl") == []
    assert D.download_file([stalled, good], dest, _md5(blob), timeout=0.3) == dest
    assert dest.read_bytes() == blob and _listing(tmp_path / "dl") == ["f.bin"]


def test_bad_mirrors_in_order_then_a_good_one(tmp_path, server):
    blob = np.random.default_rng(0).bytes(20000)
    urls = [server.serve("/a/f", ("status", 404)),
            server.serve("/b/f", ("ok", b"wrong bytes")),
            server.serve("/c/f", ("truncate", blob, 10000)),
            server.serve("/d/f", ("nolength", blob, 19999)),
            server.serve("/e/f", ("ok", blob))]
    dest = tmp_path / "dl" / "f"
    assert D.download_file(urls, dest, _md5(blob), size=len(blob)) == dest
    assert server.requests == ["/a/f", "/b/f", "/c/f", "/d/f", "/e/f"]
    assert dest.read_bytes() == blob and _listing(tmp_path / "dl") == ["f"]
    with pytest.raises(D.ChecksumError) as ei:  # all bad: one answered with wrong bytes
        D.download_file(urls[:4], tmp_path / "dl2" / "f", _md5(blob), size=len(blob))
    msg = str(ei.value)
    assert all(u in msg for u in urls[:4]) and "404" in msg and "md5" in msg
    assert _listing(tmp_path / "dl2") == []
    with pytest.raises(D.DownloadError, match="404") as ei:  # only 404s: not a checksum error
        D.download_file(urls[0], tmp_path / "dl3" / "f", None)
    assert not isinstance(ei.value, D.ChecksumError)


def test_cached_partial_file_is_deleted_and_fetched_again(tmp_path, server):
    blob = np.random.default_rng(1).bytes(8000)
    url = server.serve("/f", ("ok", blob))
    dest = tmp_path / "dl" / "f"
    for kw in ({"md5": _md5(blob)}, {"md5": None, "size": len(blob)}):
        dest.parent.mkdir(exist_ok=True)
        dest.write_bytes(blob[:5000])  # what the old downloader left behind
        with pytest.warns(D.CacheRepairWarning, match="failed verification"):
            D.download_file(url, dest, **kw)
        assert dest.read_bytes() == blob and _listing(tmp_path / "dl") == ["f"]
    n = len(server.requests)
    D.download_file(url, dest, _md5(blob), size=len(blob))  # verified cache: no request
    assert len(server.requests) == n == 2


def test_download_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="md5"):
        D.download_file("http://127.0.0.1:9/x", tmp_path / "x", "abc")
    with pytest.raises(ValueError, match="size"):
        D.download_file("http://127.0.0.1:9/x", tmp_path / "x", None, size=-1)
    with pytest.raises(ValueError, match="timeout"):
        D.download_file("http://127.0.0.1:9/x", tmp_path / "x", None, timeout=0)


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_truncated_downloads(tmp_path, server, n):
    blob = np.random.default_rng(2).bytes(30000)
    rng = np.random.default_rng(3)
    dest = tmp_path / "dl" / "f"
    for k in range(2 * n):
        cut = int(rng.integers(0, len(blob)))
        kind = ("truncate", "nolength")[k % 2]
        url = server.serve(f"/{k}", (kind, blob, cut))
        with pytest.raises(D.DownloadError):  # ChecksumError is a DownloadError
            D.download_file(url, dest, _md5(blob))
        assert _listing(tmp_path / "dl") == [], (kind, cut)
        TALLY["truncated download", "raised, nothing kept"] += 1


# ---------------------------------------------------------------------------------------------
# MNIST: never cache a partial file; repair a bad cache once


MNIST_IMAGES = "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("loader", ["mnist", "cifar10"])
def test_failed_load_leaves_no_new_folder(tmp_path, server, loader):
    """A mistyped root= (the CLI's data.data_dir) was created on disk before the download
    failed; now every folder made for the download goes again with it (an existing one stays)."""
    root = tmp_path / "typo" / "data"
    with pytest.raises(D.DownloadError):
        if loader == "mnist":
            D.load_mnist(root=root, mirrors=[server.url + "/none/"])
        else:
            D.load_cifar10(root, urls=server.url + "/none.tar.gz")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(D.DownloadError):
        D.download_file(server.url + "/none", tmp_path / "kept" / "a" / "f.bin", None)
    assert _listing(tmp_path) == ["kept"]


def _serve_mnist(server, files, prefix="/m/", override=None):
    for name, blob in files.items():
        server.serve(prefix + name, *(override or {}).get(name, [("ok", blob)]))
    return server.url + prefix


def test_mnist_truncated_download_is_never_cached(tmp_path, server):
    files, exp = make_mnist_files()
    blob = files[MNIST_IMAGES]
    mirror = _serve_mnist(server, files,
                          override={MNIST_IMAGES: [("truncate", blob, len(blob) // 2)]})
    cache = tmp_path / "cache"
    with pytest.raises(D.DownloadError, match=MNIST_IMAGES):
        D.load_mnist(root=cache, mirrors=[mirror], md5s={})  # no checksum to catch it
    assert MNIST_IMAGES not in _listing(cache / "mnist")
    server.routes["/m/" + MNIST_IMAGES] = [("ok", blob)]  # the mirror recovers
    ds = D.load_mnist(root=cache, mirrors=[mirror], md5s={})
    np.testing.assert_array_equal(ds.x_train[..., 0], exp["xtr"])
    assert _listing(cache / "mnist") == sorted(files)


def test_mnist_undetectable_short_body_is_downloaded_again_once(tmp_path, server):
    files, exp = make_mnist_files()
    name = "train-labels-idx1-ubyte.gz"
    blob = files[name]
    mirror = _serve_mnist(server, files,
                          override={name: [("nolength", blob, len(blob) - 3), ("ok", blob)]})
    cache = tmp_path / "cache"
    with pytest.warns(D.CacheRepairWarning, match="cannot be decoded"):
        ds = D.load_mnist(root=cache, mirrors=[mirror], md5s={})
    np.testing.assert_array_equal(ds.y_train, exp["ytr"])
    assert server.count(name) == 2 and _listing(cache / "mnist") == sorted(files)
    assert (cache / "mnist" / name).read_bytes() == blob


def test_mnist_always_damaged_raises_and_keeps_nothing(tmp_path, server):
    files, _ = make_mnist_files()
    name = "t10k-images-idx3-ubyte.gz"
    mirror = _serve_mnist(server, files,
                          override={name: [("nolength", files[name], 100)]})
    cache = tmp_path / "cache"
    with pytest.raises(D.CorruptDataError, match="gzip") as ei, \
            pytest.warns(D.CacheRepairWarning):
        D.load_mnist(root=cache, mirrors=[mirror], md5s={})
    assert ei.value.path == cache / "mnist" / name and "deleted" in str(ei.value)
    assert server.count(name) == 2  # fetched again exactly once
    assert name not in _listing(cache / "mnist")


def test_mnist_bad_cache_with_md5_is_refetched_or_reported(tmp_path, server):
    files, exp = make_mnist_files()
    md5s = {k: _md5(v) for k, v in files.items()}
    mirror = _serve_mnist(server, files)
    cache = tmp_path / "cache"
    D.load_mnist(root=cache, mirrors=[mirror], md5s=md5s)
    bad = bytearray(files[MNIST_IMAGES])
    bad[len(bad) // 2] ^= 4
    (cache / "mnist" / MNIST_IMAGES).write_bytes(bytes(bad))
    n = len(server.requests)
    with pytest.warns(D.CacheRepairWarning, match="failed verification"):
        ds = D.load_mnist(root=cache, mirrors=[mirror], md5s=md5s)
    np.testing.assert_array_equal(ds.x_train[..., 0], exp["xtr"])
    assert len(server.requests) == n + 1
    assert (cache / "mnist" / MNIST_IMAGES).read_bytes() == files[MNIST_IMAGES]
    # download=False: the bad file is deleted and the error says so
    (cache / "mnist" / MNIST_IMAGES).write_bytes(bytes(bad))
    with pytest.raises(D.DatasetNotFoundError, match="failed verification.*deleted"):
        D.load_mnist(root=cache, download=False, md5s=md5s)
    assert MNIST_IMAGES not in _listing(cache / "mnist")


# ---------------------------------------------------------------------------------------------
# CIFAR: verified archive, manifest-checked folder, the user's folders never deleted


@pytest.fixture
def cifar(tmp_path):
    """(source dir, tarball bytes, reference Dataset) of a tiny CIFAR-10."""
    src = tmp_path / "src"
    make_cifar10(src)
    blob = tar_gz(src, C10_DIR)
    return src, blob, D.load_cifar10(root=src, download=False)


def _cifar_cache(tmp_path, blob, name="cache") -> Path:
    cache = tmp_path / name
    cache.mkdir()
    (cache / C10_TAR).write_bytes(blob)
    D.load_cifar10(root=cache, download=False, md5=_md5(blob))  # extracts from the archive
    return cache


def test_cifar_download_false_extracts_a_cached_archive(tmp_path, cifar):
    _, blob, ref = cifar
    cache = _cifar_cache(tmp_path, blob)
    files = sorted(p.name for p in (cache / C10_DIR).iterdir())
    assert MANIFEST in files and "data_batch_5" in files
    assert D.md5sum(cache / C10_TAR) == _md5(blob)
    assert not [f for f in _listing(cache) if ".extract" in f or "tmp" in f]
    _assert_same(D.load_cifar10(root=cache, download=False, md5=_md5(blob)), ref)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "delete_marker", "manifest"])
def test_cifar_damaged_folder_is_extracted_again_offline(tmp_path, cifar, damage):
    _, blob, ref = cifar
    cache = _cifar_cache(tmp_path, blob)
    before = _listing(cache)
    name = {"manifest": MANIFEST, "delete_marker": "test_batch"}.get(damage, "data_batch_2")
    target = cache / C10_DIR / name
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x10  # inside the pixels: the pickle still loads
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(bytes(data[:100]))
    elif damage.startswith("delete"):
        target.unlink()
    else:
        target.write_bytes(bytes(data[:-7]))  # the manifest no longer parses
    with pytest.warns(D.CacheRepairWarning, match="failed verification"):
        ds = D.load_cifar10(root=cache, download=False, md5=_md5(blob))
    _assert_same(ds, ref)
    assert _listing(cache) == before
    from mhe_jax.data._archive import verify_extracted

    assert verify_extracted(cache / C10_DIR) == []


def test_cifar_bad_cached_archive_is_downloaded_again(tmp_path, server, cifar):
    _, blob, ref = cifar
    url = server.serve("/c10.tgz", ("ok", blob))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / C10_TAR).write_bytes(blob[: len(blob) // 2])  # partial, from an old download
    with pytest.warns(D.CacheRepairWarning, match="failed verification"):
        ds = D.load_cifar10(root=cache, urls=url, md5=_md5(blob))
    _assert_same(ds, ref)
    assert server.count("/c10.tgz") == 1 and D.md5sum(cache / C10_TAR) == _md5(blob)
    # download=False: a bad cached archive is deleted, and the error says so
    shutil.rmtree(cache / C10_DIR)
    (cache / C10_TAR).write_bytes(blob[:100])
    with pytest.raises(D.DatasetNotFoundError, match="deleted"):
        D.load_cifar10(root=cache, download=False, md5=_md5(blob))
    assert _listing(cache) == []


def test_cifar_user_folder_is_read_as_is_and_never_deleted(tmp_path, cifar):
    src, _, _ = cifar
    user = tmp_path / "user"
    shutil.copytree(src, user)
    target = user / C10_DIR / "data_batch_3"
    target.write_bytes(target.read_bytes()[:500])
    before = _listing(user)
    for root in (user, user / C10_DIR):
        with pytest.raises(D.CorruptDataError, match="not a valid CIFAR") as ei:
            D.load_cifar10(root=root, download=False)
        assert ei.value.path == target and "Delete it" in str(ei.value)
        assert _listing(user) == before


def test_cifar_foreign_folder_in_the_cache_is_not_replaced(tmp_path, cifar):
    """A folder under the dataset's name that mhe_jax did not extract (no manifest) and that is
    incomplete: an error, and neither it nor the archive is touched."""
    src, blob, _ = cifar
    cache = tmp_path / "cache"
    shutil.copytree(src, cache)
    (cache / C10_DIR / "test_batch").unlink()
    (cache / C10_TAR).write_bytes(blob)
    before = _listing(cache)
    with pytest.raises(D.DatasetError, match="not extracted by mhe_jax"):
        D.load_cifar10(root=cache, download=False, md5=_md5(blob))
    assert _listing(cache) == before


def test_cifar_archive_without_the_folder(tmp_path, server):
    other = tmp_path / "other"
    (other / "not-cifar").mkdir(parents=True)
    (other / "not-cifar" / "x").write_bytes(b"x")
    blob = tar_gz(other, "not-cifar")
    url = server.serve("/c10.tgz", ("ok", blob))
    with pytest.raises(D.CorruptDataError, match="no top-level folder") as ei:
        D.load_cifar10(root=tmp_path / "c", urls=url, md5=_md5(blob))
    assert ei.value.path == tmp_path / "c" / C10_TAR
    assert _listing(tmp_path / "c") == []


# ---------------------------------------------------------------------------------------------
# the decoded JPEG cache; the error types


def test_decoded_cache_bad_zip_is_rebuilt_and_stale_cache_replaced(tmp_path):
    src = tmp_path / "src.npz"
    make_jpeg_npz(src)
    ref = D.load_cifar10_jpeg_npz(src)
    cache = tmp_path / "cache"
    D.load_cifar10_jpeg_npz(src, cache=True, root=cache)
    f = cache / DECODED
    f.write_bytes(f.read_bytes()[:-50])  # np.load raised a bare BadZipFile on this before
    with pytest.warns(D.CacheRepairWarning, match="BadZipFile"):
        _assert_same(D.load_cifar10_jpeg_npz(src, cache=True, root=cache), ref)
    assert _listing(cache) == [DECODED]
    # the source changed (new mtime): the cache is stale, rebuilt without a warning
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with warnings.catch_warnings():
        warnings.simplefilter("error", D.CacheRepairWarning)
        _assert_same(D.load_cifar10_jpeg_npz(src, cache=True, root=cache), ref)
    with np.load(f) as c:
        assert c["source_stamp"].tolist() == [st.st_size, st.st_mtime_ns + 10**9]
    # arrays that no longer match their stored md5 (rewritten consistently but wrongly)
    with np.load(f) as c:
        arrays = dict(c)
    arrays["x_train"] = arrays["x_train"].copy()
    arrays["x_train"][0, 0, 0, 0] ^= 1
    np.savez(f, **arrays)
    with pytest.warns(D.CacheRepairWarning, match="md5"):
        _assert_same(D.load_cifar10_jpeg_npz(src, cache=True, root=cache), ref)
    # limit= never reads or writes the cache
    shutil.rmtree(cache)
    D.load_cifar10_jpeg_npz(src, cache=True, root=cache, limit=2)
    assert _listing(cache) == []


def test_error_hierarchy_and_messages():
    for cls, base in ((D.DatasetNotFoundError, FileNotFoundError),
                      (D.DownloadError, RuntimeError), (D.ChecksumError, D.DownloadError),
                      (D.CorruptDataError, ValueError)):
        assert issubclass(cls, D.DatasetError) and issubclass(cls, base)
    e = D.CorruptDataError("/data/x.npz", "bad CRC", "Delete it.")
    assert str(e) == "/data/x.npz: bad CRC. Delete it." and e.path == Path("/data/x.npz")
    e2 = pickle.loads(pickle.dumps(e))  # crosses process boundaries intact
    assert (type(e2), str(e2), e2.path, e2.fix) == (type(e), str(e), e.path, e.fix)
    assert issubclass(D.CacheRepairWarning, UserWarning)


# ---------------------------------------------------------------------------------------------
# fuzz: truncations and bit flips of every format


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_cifar_tar_gz(tmp_path, cifar, n):
    """A damaged tarball that still matches the md5 given: CorruptDataError naming it, and the
    cache empty; or (a harmless flip, e.g. in the gzip header's mtime) the original data."""
    _, blob, ref = cifar
    good = _listing(_cifar_cache(tmp_path, blob, "good"))
    for k, (case, bad) in enumerate(mutants(blob, n, seed=10)):
        cache = tmp_path / f"c{k}"
        cache.mkdir()
        (cache / C10_TAR).write_bytes(bad)
        try:
            ds = D.load_cifar10(root=cache, download=False, md5=_md5(bad))
        except D.CorruptDataError as e:
            assert e.path == cache / C10_TAR or e.path.is_relative_to(cache / C10_DIR), case
            assert _listing(cache) == [], case
            TALLY["tar.gz", "CorruptDataError, cache empty"] += 1
        else:
            _assert_same(ds, ref, case)
            assert _listing(cache) == good, case
            TALLY["tar.gz", "harmless, original data"] += 1
        shutil.rmtree(cache)


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_cifar_tar_gz_in_cache_is_refetched(tmp_path, server, cifar, n):
    """A damaged cached tarball (against the true md5) is deleted and downloaded once."""
    _, blob, ref = cifar
    url = server.serve("/c10.tgz", ("ok", blob))
    good = _listing(_cifar_cache(tmp_path, blob, "good"))
    for k, (case, bad) in enumerate(mutants(blob, n, seed=11)):
        cache = tmp_path / f"c{k}"
        cache.mkdir()
        (cache / C10_TAR).write_bytes(bad)
        before = len(server.requests)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ds = D.load_cifar10(root=cache, urls=url, md5=_md5(blob))
        _assert_same(ds, ref, case)
        assert len(server.requests) == before + 1 and _repairs(rec) == 1, case
        assert _listing(cache) == good, case
        TALLY["tar.gz cached", "deleted, fetched again"] += 1
        shutil.rmtree(cache)


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_gzip_idx(tmp_path, server, n):
    """read_idx: CorruptDataError naming the file, or the original array (gzip's CRC-32 leaves
    only header fields such as mtime unchecked). load_mnist with md5s={} (nothing to verify
    against): a damaged cached file is deleted and downloaded again once."""
    files, exp = make_mnist_files()
    mirror = _serve_mnist(server, files)
    for k, (case, bad) in enumerate(mutants(files[MNIST_IMAGES], n, seed=12)):
        p = tmp_path / f"r{k}.gz"
        p.write_bytes(bad)
        try:
            x = D.read_idx_images(p)
        except D.CorruptDataError as e:
            assert e.path == p, case
            detected = True
        else:
            np.testing.assert_array_equal(x[..., 0], exp["xtr"], err_msg=case)
            detected = False
        p.unlink()
        cache = tmp_path / f"c{k}"
        (cache / "mnist").mkdir(parents=True)
        for name, blob in files.items():
            (cache / "mnist" / name).write_bytes(bad if name == MNIST_IMAGES else blob)
        before = len(server.requests)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ds = D.load_mnist(root=cache, mirrors=[mirror], md5s={})
        np.testing.assert_array_equal(ds.x_train[..., 0], exp["xtr"], err_msg=case)
        assert len(server.requests) - before == _repairs(rec) == int(detected), case
        assert _listing(cache) == ["mnist", *(f"mnist/{f}" for f in sorted(files))], case
        kept = (cache / "mnist" / MNIST_IMAGES).read_bytes()
        assert kept == (files[MNIST_IMAGES] if detected else bad), case
        TALLY["gzip idx", "CorruptDataError; cache repaired" if detected
              else "harmless, original data"] += 1
        shutil.rmtree(cache)


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_cifar_pickle(tmp_path, cifar, n):
    """read_cifar_pickle: CorruptDataError naming the file, or a dict (a flip inside the pixel
    bytes cannot be seen without a checksum). In the library's cache the manifest sees every
    change: the folder is extracted again and the original data returned. In the user's folder
    nothing is ever deleted."""
    src, blob, ref = cifar
    original = (src / C10_DIR / "data_batch_1").read_bytes()
    good_cache = _cifar_cache(tmp_path, blob, "good")
    good = _listing(good_cache)
    for k, (case, bad) in enumerate(mutants(original, n, seed=13)):
        p = tmp_path / f"p{k}"
        p.write_bytes(bad)
        try:
            d = D.read_cifar_pickle(p)
        except D.CorruptDataError as e:
            assert e.path == p and "Delete it" in str(e), case
            outcome = "CorruptDataError"
        else:
            assert isinstance(d, dict), case
            outcome = "loaded (undetectable without a checksum)"
        p.unlink()
        # the library's cache: manifest mismatch -> extracted again from the verified archive
        cache = tmp_path / f"m{k}"
        shutil.copytree(good_cache, cache)
        (cache / C10_DIR / "data_batch_1").write_bytes(bad)
        with pytest.warns(D.CacheRepairWarning, match="failed verification"):
            ds = D.load_cifar10(root=cache, download=False, md5=_md5(blob))
        _assert_same(ds, ref, case)
        assert _listing(cache) == good, case
        assert (cache / C10_DIR / "data_batch_1").read_bytes() == original, case
        shutil.rmtree(cache)
        # the user's folder: an error naming the file, or data; the folder is never touched
        user = tmp_path / f"u{k}"
        shutil.copytree(src, user)
        (user / C10_DIR / "data_batch_1").write_bytes(bad)
        before = _listing(user)
        try:
            ds = D.load_cifar10(root=user, download=False)
        except D.CorruptDataError as e:
            assert e.path == user / C10_DIR / "data_batch_1", case
        else:
            assert ds.x_train.shape == ref.x_train.shape, case
        assert _listing(user) == before
        assert (user / C10_DIR / "data_batch_1").read_bytes() == bad
        shutil.rmtree(user)
        TALLY["cifar pickle", f"read: {outcome}; cache repaired"] += 1


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_jpeg_npz(tmp_path, n):
    """load_cifar10_jpeg_npz: CorruptDataError naming the file and no cache written, or (a
    harmless flip in zip metadata) the original data. Zip CRC-32s cover every array."""
    good = tmp_path / "good.npz"
    make_jpeg_npz(good)
    ref = D.load_cifar10_jpeg_npz(good)
    blob = good.read_bytes()
    for k, (case, bad) in enumerate(mutants(blob, n, seed=14)):
        p = tmp_path / f"j{k}.npz"
        p.write_bytes(bad)
        cache = tmp_path / f"jc{k}"
        try:
            ds = D.load_cifar10_jpeg_npz(p, cache=True, root=cache)
        except D.CorruptDataError as e:
            assert e.path == p and "pass another path" in str(e), case
            assert _listing(cache) == [], case
            TALLY["jpeg npz", "CorruptDataError, nothing cached"] += 1
        else:
            _assert_same(ds, ref, case)
            assert _listing(cache) == [DECODED], case
            TALLY["jpeg npz", "harmless, original data"] += 1
        p.unlink()
        shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.parametrize("n", SIZES)
def test_fuzz_decoded_cache(tmp_path, n):
    """A damaged decoded cache is never used: deleted with a warning and rebuilt (or, for a flip
    that only makes it look stale, rebuilt); what is left reads back as the original."""
    src = tmp_path / "src.npz"
    make_jpeg_npz(src)
    ref = D.load_cifar10_jpeg_npz(src)
    D.load_cifar10_jpeg_npz(src, cache=True, root=tmp_path / "good")
    cblob = (tmp_path / "good" / DECODED).read_bytes()
    for k, (case, bad) in enumerate(mutants(cblob, n, seed=15)):
        cache = tmp_path / f"dc{k}"
        cache.mkdir()
        (cache / DECODED).write_bytes(bad)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            ds = D.load_cifar10_jpeg_npz(src, cache=True, root=cache)
        _assert_same(ds, ref, case)
        assert _listing(cache) == [DECODED], case
        now = (cache / DECODED).read_bytes()
        if _repairs(rec):
            outcome = "damaged: deleted, warned, rebuilt"
        elif now != bad:
            outcome = "looked stale: rebuilt"
        else:
            outcome = "harmless (zip metadata), used"
        with warnings.catch_warnings():
            warnings.simplefilter("error", D.CacheRepairWarning)
            _assert_same(D.load_cifar10_jpeg_npz(src, cache=True, root=cache), ref, case)
        assert (cache / DECODED).read_bytes() == now, case  # used as it is the second time
        TALLY["decoded cache", outcome] += 1
        shutil.rmtree(cache)
