"""Tests for mhe_jax.data: loaders (against tiny files in the official formats, served from a
local HTTP server), class imbalance, augmentation and batching. No network access."""

from __future__ import annotations

import ast
import gzip
import hashlib
import http.server
import io
import itertools
import os
import pickle
import struct
import threading
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax.data as D
from tests.data_files import (
    expected_nhwc as _expected_nhwc,
    idx_bytes as _idx,
    make_cifar10,
    make_cifar100,
    make_jpeg_npz as _make_jpeg_npz,
    make_mnist_files,
    tar_gz,
)

DATA_DIR = Path(D.__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# fixtures: isolated cache, no proxies, a local HTTP server that counts requests


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # never touch the real ~/.cache/mhe_jax
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "env_cache"))


class _Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def count(self, suffix: str) -> int:
        return sum(r.endswith(suffix) for r in self.requests)


@pytest.fixture
def server():
    s = _Server()
    s.thread.start()
    try:
        yield s
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()
        s.thread.join(5)


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _all_files(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []


# ---------------------------------------------------------------------------------------------
# CIFAR files in the official python format


@pytest.mark.parametrize("py2", [True, False], ids=["py2-bytes-keys", "str-keys"])
def test_cifar10_reads_existing_directory(tmp_path, py2):
    exp = make_cifar10(tmp_path, py2=py2)
    ds = D.load_cifar10(root=tmp_path, download=False)
    assert isinstance(ds, D.Dataset) and ds.name == "cifar10" and ds.num_classes == 10
    assert ds.x_train.shape == (15, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.y_train.shape == (15,) and ds.y_train.dtype == np.int32
    assert ds.x_test.shape == (3, 32, 32, 3) and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.x_train, _expected_nhwc(exp["train_rows"]))
    np.testing.assert_array_equal(ds.x_test, _expected_nhwc(exp["test_rows"]))
    np.testing.assert_array_equal(ds.y_train, exp["train_labels"])
    np.testing.assert_array_equal(ds.y_test, exp["test_labels"])
    assert ds.label_names == D.CIFAR10_LABEL_NAMES
    # root may also be the batches folder itself
    ds2 = D.load_cifar10(root=tmp_path / "cifar-10-batches-py", download=False)
    np.testing.assert_array_equal(ds2.x_train, ds.x_train)


def test_cifar_pixel_layout_known_pixel():
    rows = np.zeros((2, 3072), np.uint8)
    r, c = 5, 7
    rows[1, 0 * 1024 + r * 32 + c] = 11  # red plane
    rows[1, 1 * 1024 + r * 32 + c] = 22  # green plane
    rows[1, 2 * 1024 + r * 32 + c] = 33  # blue plane
    rows[0, 31 * 32 + 0] = 200  # red, last row, first column
    x = D.rows_to_nhwc(rows)
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.uint8 and x.flags.c_contiguous
    assert x[1, r, c].tolist() == [11, 22, 33]
    assert x[0, 31, 0].tolist() == [200, 0, 0]
    assert int(x.sum()) == 11 + 22 + 33 + 200
    with pytest.raises(ValueError, match="rows"):
        D.rows_to_nhwc(np.zeros((2, 100), np.uint8))


def test_cifar10_download_checksum_extract_and_cache(tmp_path, server):
    src = tmp_path / "src"
    exp = make_cifar10(src)
    blob = tar_gz(src, "cifar-10-batches-py")
    server.files["/cifar-10-python.tar.gz"] = blob
    cache = tmp_path / "cache"
    url = server.url + "/cifar-10-python.tar.gz"

    ds = D.load_cifar10(root=cache, urls=url, md5=_md5(blob))
    assert server.count("cifar-10-python.tar.gz") == 1
    np.testing.assert_array_equal(ds.x_train, _expected_nhwc(exp["train_rows"]))
    assert (cache / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert D.md5sum(cache / "cifar-10-python.tar.gz") == _md5(blob)
    assert not [f for f in _all_files(cache) if ".part" in f or ".extract" in f]

    ds2 = D.load_cifar10(root=cache, urls=url, md5=_md5(blob))  # cached: no new request
    assert len(server.requests) == 1
    np.testing.assert_array_equal(ds2.x_train, ds.x_train)
    ds3 = D.load_cifar10(root=cache, download=False)
    np.testing.assert_array_equal(ds3.y_test, ds.y_test)


def test_cifar10_wrong_checksum_leaves_nothing(tmp_path, server):
    src = tmp_path / "src"
    make_cifar10(src)
    blob = tar_gz(src, "cifar-10-batches-py")
    server.files["/c10.tgz"] = blob
    cache = tmp_path / "cache"
    with pytest.raises(D.ChecksumError, match="md5"):
        D.load_cifar10(root=cache, urls=server.url + "/c10.tgz", md5="0" * 32)
    assert _all_files(cache) == []  # no tarball, no partial file, no extracted folder
    # the official checksum is the default: our tiny archive does not match it
    with pytest.raises(D.ChecksumError):
        D.load_cifar10(root=cache, urls=server.url + "/c10.tgz")
    assert _all_files(cache) == []
    # a later good download works
    ds = D.load_cifar10(root=cache, urls=server.url + "/c10.tgz", md5=_md5(blob))
    assert ds.x_train.shape == (15, 32, 32, 3)


def test_download_mirrors_in_order_and_errors(tmp_path, server):
    blob = b"hello mirror"
    server.files["/b/file.bin"] = blob
    dest = tmp_path / "dl" / "file.bin"
    out = D.download_file([server.url + "/a/file.bin", server.url + "/b/file.bin"], dest,
                          _md5(blob))
    assert out == dest and dest.read_bytes() == blob
    assert server.requests == ["/a/file.bin", "/b/file.bin"]
    assert D.download_file(server.url + "/a/file.bin", dest, _md5(blob)) == dest  # cached
    assert len(server.requests) == 2
    with pytest.raises(D.DownloadError, match="404") as ei:
        D.download_file(server.url + "/missing", tmp_path / "dl" / "other.bin", None)
    assert not isinstance(ei.value, D.ChecksumError)
    assert _all_files(tmp_path / "dl") == ["file.bin"]
    # a cached file with the wrong content is replaced by a verified download
    dest.write_bytes(b"corrupt")
    with pytest.warns(D.CacheRepairWarning, match="file.bin"):
        D.download_file(server.url + "/b/file.bin", dest, _md5(blob))
    assert dest.read_bytes() == blob
    # ... and removed even if the new download fails
    dest.write_bytes(b"corrupt")
    with pytest.raises(D.DownloadError), pytest.warns(D.CacheRepairWarning):
        D.download_file(server.url + "/gone", dest, _md5(blob))
    assert not dest.exists()
    with pytest.raises(ValueError, match="urls"):
        D.download_file("ftp://example.org/x", dest, None)
    with pytest.raises(ValueError, match="urls"):
        D.download_file([], dest, None)


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "from_env"))
    assert D.cache_dir() == tmp_path / "from_env"
    assert D.cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv(D.ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.cache_dir() == tmp_path / "home" / ".cache" / "mhe_jax"
    with pytest.raises(TypeError, match="root"):
        D.cache_dir(123)


def test_env_var_overrides_default_cache(tmp_path, server, monkeypatch):
    src = tmp_path / "src"
    make_cifar10(src)
    blob = tar_gz(src, "cifar-10-batches-py")
    server.files["/c10.tgz"] = blob
    env_dir = tmp_path / "env_dir"
    monkeypatch.setenv("MHE_JAX_DATA", str(env_dir))
    D.load_cifar10(urls=server.url + "/c10.tgz", md5=_md5(blob))
    assert (env_dir / "cifar-10-batches-py" / "test_batch").is_file()
    D.load_cifar10(download=False)  # found through the env var
    # an explicit root wins over the env var
    with pytest.raises(D.DatasetNotFoundError):
        D.load_cifar10(root=tmp_path / "elsewhere", download=False)
    assert len(server.requests) == 1


def test_missing_data_without_download_raises(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="download=True"):
        D.load_cifar10(root=tmp_path, download=False)
    with pytest.raises(D.DatasetNotFoundError, match="download=True"):
        D.load_cifar100(root=tmp_path, download=False)
    with pytest.raises(D.DatasetNotFoundError, match="download=True"):
        D.load_mnist(root=tmp_path, download=False)
    assert issubclass(D.DatasetNotFoundError, FileNotFoundError)


def test_cifar10_incomplete_directory(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(D.DatasetNotFoundError, match="data_batch_3"):
        D.load_cifar10(root=tmp_path, download=False)


@pytest.mark.parametrize("py2", [True, False], ids=["py2-bytes-keys", "str-keys"])
def test_cifar100_fine_and_coarse(tmp_path, py2):
    exp = make_cifar100(tmp_path, py2=py2)
    fine = D.load_cifar100(root=tmp_path, download=False)
    assert fine.num_classes == 100 and fine.name == "cifar100"
    assert fine.x_train.shape == (4, 32, 32, 3) and fine.y_train.dtype == np.int32
    np.testing.assert_array_equal(fine.x_train, _expected_nhwc(exp["train"][0]))
    np.testing.assert_array_equal(fine.y_train, exp["train"][1])
    np.testing.assert_array_equal(fine.y_test, exp["test"][1])
    assert fine.label_names[:2] == ("f0", "f1") and len(fine.label_names) == 100
    coarse = D.load_cifar100(root=tmp_path, download=False, label_mode="coarse")
    assert coarse.num_classes == 20
    np.testing.assert_array_equal(coarse.y_train, exp["train"][2])
    np.testing.assert_array_equal(coarse.x_test, fine.x_test)
    assert coarse.label_names[-1] == "c19"
    with pytest.raises(ValueError, match="label_mode"):
        D.load_cifar100(root=tmp_path, label_mode="medium")


def test_cifar100_download_and_cache(tmp_path, server):
    src = tmp_path / "src"
    exp = make_cifar100(src)
    blob = tar_gz(src, "cifar-100-python")
    server.files["/cifar-100-python.tar.gz"] = blob
    url = server.url + "/cifar-100-python.tar.gz"
    cache = tmp_path / "cache"
    with pytest.raises(D.ChecksumError):
        D.load_cifar100(root=cache, urls=url, md5="f" * 32)
    assert _all_files(cache) == []
    ds = D.load_cifar100(root=cache, urls=url, md5=_md5(blob))
    D.load_cifar100(root=cache, urls=url, md5=_md5(blob), label_mode="coarse")
    assert server.count("cifar-100-python.tar.gz") == 2  # the bad try + one good download
    np.testing.assert_array_equal(ds.y_test, exp["test"][1])


def test_cifar_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(ValueError, match="getcwd"):
        D.read_cifar_pickle(p)
    p.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a valid CIFAR"):
        D.read_cifar_pickle(p)


def test_corrupt_archive_raises(tmp_path, server):
    blob = b"this is not a tarball"
    server.files["/c10.tgz"] = blob
    with pytest.raises(D.CorruptDataError, match="extract") as ei:
        D.load_cifar10(root=tmp_path / "c", urls=server.url + "/c10.tgz", md5=_md5(blob))
    assert ei.value.path == tmp_path / "c" / "cifar-10-python.tar.gz"
    assert _all_files(tmp_path / "c") == []  # no archive, no folder, no temporary directory


# ---------------------------------------------------------------------------------------------
# MNIST idx


def test_idx_header_magic(tmp_path):
    p = tmp_path / "f"
    img = np.arange(2 * 28 * 28).reshape(2, 28, 28).astype(np.uint8)
    p.write_bytes(_idx(img))
    assert _idx(img)[:4] == b"\x00\x00\x08\x03"
    x = D.read_idx_images(p)
    assert x.shape == (2, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], img)
    p.write_bytes(_idx(np.array([3, 1, 4], np.uint8)))
    y = D.read_idx_labels(p)
    assert y.dtype == np.int32 and y.tolist() == [3, 1, 4]
    with pytest.raises(ValueError, match="magic"):  # label file read as images
        D.read_idx_images(p)
    p.write_bytes(_idx(img, magic=0x00000804))
    with pytest.raises(ValueError, match="magic"):
        D.read_idx_images(p)
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        D.read_idx(p)
    p.write_bytes(_idx(img)[:-5])  # truncated data
    with pytest.raises(ValueError, match="header declares"):
        D.read_idx_images(p)
    # generic reader: other idx element types, big-endian
    p.write_bytes(b"\x00\x00\x0b\x01" + struct.pack(">I", 2) + struct.pack(">hh", -2, 300))
    assert D.read_idx(p).tolist() == [-2, 300]
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03"))  # gzip, header truncated
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(p)


def test_mnist_download_mirrors_cache_and_raw_files(tmp_path, server):
    files, exp = make_mnist_files()
    for name, blob in files.items():
        server.files["/mirror2/" + name] = blob
    md5s = {k: _md5(v) for k, v in files.items()}
    cache = tmp_path / "cache"
    mirrors = [server.url + "/mirror1/", server.url + "/mirror2"]  # first one 404s
    ds = D.load_mnist(root=cache, mirrors=mirrors, md5s=md5s)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_train.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.x_test.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(ds.x_train[..., 0], exp["xtr"])
    np.testing.assert_array_equal(ds.y_test, exp["yte"])
    assert sorted(os.listdir(cache / "mnist")) == sorted(files)
    n_requests = len(server.requests)
    assert n_requests == 8 and server.count("train-images-idx3-ubyte.gz") == 2
    D.load_mnist(root=cache, mirrors=mirrors, md5s=md5s)
    assert len(server.requests) == n_requests  # cached
    # uncompressed idx files in an existing directory, no download
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, blob in files.items():
        (raw / name[:-3]).write_bytes(gzip.decompress(blob))
    ds_raw = D.load_mnist(root=raw, download=False)
    np.testing.assert_array_equal(ds_raw.x_test, ds.x_test)
    np.testing.assert_array_equal(ds_raw.y_train, ds.y_train)


def test_mnist_wrong_checksum_and_bad_magic(tmp_path, server):
    files, _ = make_mnist_files()
    for name, blob in files.items():
        server.files["/m/" + name] = blob
    cache = tmp_path / "cache"
    with pytest.raises(D.ChecksumError):  # official md5s do not match our tiny files
        D.load_mnist(root=cache, mirrors=[server.url + "/m/"])
    assert [f for f in _all_files(cache) if f.endswith(".gz") or ".part" in f] == []
    # swapped files: labels where images belong -> bad magic
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, blob in files.items():
        (bad / name).write_bytes(blob)
    (bad / "train-images-idx3-ubyte.gz").write_bytes(files["train-labels-idx1-ubyte.gz"])
    # the user's .gz files are verified against the official md5s (and kept, not deleted)
    with pytest.raises(D.CorruptDataError, match="failed verification") as ei:
        D.load_mnist(root=bad, download=False)
    assert ei.value.path == bad / "train-images-idx3-ubyte.gz" and "md5s=" in str(ei.value)
    assert sorted(os.listdir(bad)) == sorted(files)
    with pytest.raises(D.CorruptDataError, match="magic") as ei:  # md5s={}: checks skipped
        D.load_mnist(root=bad, download=False, md5s={})
    assert ei.value.path == bad / "train-images-idx3-ubyte.gz"
    assert sorted(os.listdir(bad)) == sorted(files)
    with pytest.raises(ValueError, match="mirrors"):
        D.load_mnist(root=tmp_path / "none", mirrors=[])


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_split_determinism():
    ds = D.load_digits()
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (8, 8, 1)
    assert ds.y_train.dtype == np.int32
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.min() == 0 and ds.x_train.max() == 255
    vals = np.unique(np.concatenate([ds.x_train.ravel(), ds.x_test.ravel()]))
    assert set(vals.tolist()) <= {int(np.rint(v * 255 / 16)) for v in range(17)}
    total = D.class_counts(np.concatenate([ds.y_train, ds.y_test]))
    test = D.class_counts(ds.y_test)
    for c in range(10):  # stratified: each class contributes round(0.25 * n_c) test samples
        assert test[c] == int(np.floor(0.25 * total[c] + 0.5))
    again = D.load_digits()
    np.testing.assert_array_equal(again.x_train, ds.x_train)
    np.testing.assert_array_equal(again.y_test, ds.y_test)
    other = D.load_digits(seed=1)
    assert not np.array_equal(other.y_train, ds.y_train) or \
        not np.array_equal(other.x_train, ds.x_train)
    # train/test disjoint and complete, checked with the raw sklearn images
    x_all = np.concatenate([ds.x_train, ds.x_test]).reshape(1797, -1)
    assert len(np.unique(x_all, axis=0)) == len(np.unique(np.concatenate(
        [ds.x_train.reshape(len(ds.x_train), -1), ds.x_test.reshape(len(ds.x_test), -1)]),
        axis=0))


def test_digits_upsampling():
    ds8 = D.load_digits(test_fraction=0.2, seed=3)
    ds32 = D.load_digits(test_fraction=0.2, seed=3, size=32)
    assert ds32.x_train.shape[1:] == (32, 32, 1) and ds32.x_train.dtype == np.uint8
    np.testing.assert_array_equal(ds32.x_train, ds8.x_train.repeat(4, 1).repeat(4, 2))
    np.testing.assert_array_equal(ds32.y_test, ds8.y_test)
    ds12 = D.load_digits(size=(12, 10))
    assert ds12.x_test.shape[1:] == (12, 10, 1)
    for bad in (dict(test_fraction=1.0), dict(test_fraction=-0.1), dict(size=0),
                dict(size=(8,)), dict(size=2.5)):
        with pytest.raises(ValueError):
            D.load_digits(**bad)
    with pytest.raises(TypeError, match="seed"):
        D.load_digits(seed=1.5)


# ---------------------------------------------------------------------------------------------
# imbalance


def _toy_dataset(per_class=(500, 300, 300), test_per_class=7, hw=4):
    y = np.concatenate([np.full(n, c) for c, n in enumerate(per_class)]).astype(np.int32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    y = y[perm]
    x = np.zeros((len(y), hw, hw, 1), np.uint8)
    x[:, 0, 0, 0] = np.arange(len(y)) % 256  # identify samples
    x[:, 0, 1, 0] = np.arange(len(y)) // 256
    yt = np.repeat(np.arange(len(per_class)), test_per_class).astype(np.int32)
    xt = np.ones((len(yt), hw, hw, 1), np.uint8)
    return D.make_dataset(x, y, xt, yt, len(per_class), "toy")


def _ids(x):
    return x[:, 0, 0, 0].astype(int) + 256 * x[:, 0, 1, 0].astype(int)


def test_imbalance_by_count_exact_and_deterministic():
    ds = _toy_dataset()
    x, y, counts = D.imbalance_by_count(ds.x_train, ds.y_train, {0: 17, 2: 5}, seed=3)
    assert counts == {0: 17, 1: 300, 2: 5}
    assert D.class_counts(y) == counts and len(x) == len(y) == 322
    ids = _ids(x)
    assert np.all(np.diff(ids) > 0)  # original order kept
    np.testing.assert_array_equal(ds.y_train[ids], y)  # x and y stay aligned
    assert set(np.flatnonzero(ds.y_train == 1)) <= set(ids)  # untouched class fully kept
    x2, y2, _ = D.imbalance_by_count(ds.x_train, ds.y_train, {0: 17, 2: 5}, seed=3)
    np.testing.assert_array_equal(x2, x)
    x3, _, _ = D.imbalance_by_count(ds.x_train, ds.y_train, {0: 17, 2: 5}, seed=4)
    assert not np.array_equal(x3, x)
    # a class's selection does not depend on the other classes listed
    x4, y4, _ = D.imbalance_by_count(ds.x_train, ds.y_train, {0: 17}, seed=3)
    np.testing.assert_array_equal(_ids(x4[y4 == 0]), ids[y == 0])
    # count 0 removes a class; full count keeps everything
    _, y5, c5 = D.imbalance_by_count(ds.x_train, ds.y_train, {1: 0, 0: 500})
    assert c5 == {0: 500, 1: 0, 2: 300} and len(y5) == 800


def test_imbalance_by_ratio():
    ds = _toy_dataset()
    _, y, counts = D.imbalance_by_ratio(ds.x_train, ds.y_train, {0: 0.02, 1: 0.5}, seed=0)
    assert counts == {0: 10, 1: 150, 2: 300}
    _, _, c = D.imbalance_by_ratio(ds.x_train, ds.y_train, {0: 0.0001})
    assert c[0] == 1  # a positive ratio keeps at least one sample
    _, _, c = D.imbalance_by_ratio(ds.x_train, ds.y_train, {2: 0.0})
    assert c[2] == 0


@pytest.mark.parametrize("counts, exc, match", [
    ({0: 501}, ValueError, "only 500"),
    ({0: -1}, ValueError, "non-negative"),
    ({0: 2.5}, ValueError, "non-negative int"),
    ({7: 1}, ValueError, "no samples"),
    ({"a": 1}, TypeError, "keys"),
    ([(0, 1)], TypeError, "counts must be a dict"),
])
def test_imbalance_by_count_bad_arguments(counts, exc, match):
    ds = _toy_dataset()
    with pytest.raises(exc, match=match):
        D.imbalance_by_count(ds.x_train, ds.y_train, counts)


def test_imbalance_bad_arrays_and_ratios():
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="same length"):
        D.imbalance_by_count(ds.x_train[:-1], ds.y_train, {0: 1})
    with pytest.raises(ValueError, match="integer label"):
        D.imbalance_by_count(ds.x_train, ds.y_train.astype(float), {0: 1})
    with pytest.raises(TypeError, match="seed"):
        D.imbalance_by_count(ds.x_train, ds.y_train, {0: 1}, seed=0.5)
    for r in (1.5, -0.1, "x", True):
        with pytest.raises(ValueError, match="ratio"):
            D.imbalance_by_ratio(ds.x_train, ds.y_train, {0: r})


def test_named_imbalance_constructions():
    ds = _toy_dataset()
    imb, counts = D.mnist_fig4_imbalance(ds)
    assert counts == {0: 10, 1: 300, 2: 300}  # 2% of 500
    assert D.class_counts(imb.y_train) == counts and len(imb.x_train) == 610
    assert imb.x_test is ds.x_test and imb.y_test is ds.y_test  # test set untouched
    assert imb.num_classes == ds.num_classes and imb.name.startswith("toy_")
    imb_b, _ = D.mnist_fig4_imbalance(ds)
    np.testing.assert_array_equal(imb_b.x_train, imb.x_train)
    _, counts = D.mnist_fig4_imbalance(ds, keep_count=100)
    assert counts[0] == 100
    _, counts = D.mnist_fig4_imbalance(ds, keep_fraction=0.1, cls=1)
    assert counts == {0: 500, 1: 30, 2: 300}

    single, counts = D.cifar10_single_class_imbalance(ds)
    assert counts == {0: 50, 1: 300, 2: 300}
    assert single.y_test is ds.y_test
    multi, counts = D.cifar10_multi_class_imbalance(ds, classes=(0, 1), ratio=0.1)
    assert counts == {0: 50, 1: 30, 2: 300}
    _, counts = D.cifar10_multi_class_imbalance(ds, classes=(0, 1, 2), ratio=[0.1, 0.2, 0.5])
    assert counts == {0: 50, 1: 60, 2: 150}
    assert multi.x_test is ds.x_test

    with pytest.raises(ValueError, match="cls"):
        D.mnist_fig4_imbalance(ds, cls=3)
    with pytest.raises(ValueError, match="keep_fraction"):
        D.mnist_fig4_imbalance(ds, keep_fraction=2.0)
    with pytest.raises(ValueError, match="keep_count"):
        D.mnist_fig4_imbalance(ds, keep_count=-5)
    with pytest.raises(ValueError, match="only 500"):
        D.mnist_fig4_imbalance(ds, keep_count=501)
    with pytest.raises(ValueError, match="classes"):
        D.cifar10_multi_class_imbalance(ds)  # default classes 0..4 do not exist here
    with pytest.raises(ValueError, match="ratio"):
        D.cifar10_multi_class_imbalance(ds, classes=(0, 1), ratio=[0.1])
    with pytest.raises(ValueError, match="duplicates"):
        D.cifar10_multi_class_imbalance(ds, classes=(0, 0))
    with pytest.raises(TypeError, match="dataset"):
        D.cifar10_single_class_imbalance((ds.x_train, ds.y_train))


def test_per_class_subset_exact_deterministic_and_seeded_only_by_seed():
    ds = _toy_dataset(per_class=(500, 300, 40))
    sub, counts = D.per_class_subset(ds, 25, seed=7)
    assert counts == {0: 25, 1: 25, 2: 25} == D.class_counts(sub.y_train, 3)
    assert len(sub.x_train) == len(sub.y_train) == 75 and sub.name == "toy_sub25"
    ids = _ids(sub.x_train)
    assert len(set(ids.tolist())) == 75 and np.all(np.diff(ids) > 0)  # distinct, in file order
    np.testing.assert_array_equal(ds.y_train[ids], sub.y_train)  # images and labels aligned
    assert sub.x_test is ds.x_test and sub.y_test is ds.y_test  # test split untouched
    # determinism: same seed, same subset, whatever global RNG state or JAX keys do in between
    np.random.seed(123)
    _ = np.random.rand(1000), jax.random.normal(jax.random.key(99), (10,))
    again, _ = D.per_class_subset(ds, 25, seed=7)
    np.testing.assert_array_equal(again.x_train, sub.x_train)
    np.random.seed(456)
    np.testing.assert_array_equal(D.per_class_subset(ds, 25, seed=7)[0].y_train, sub.y_train)
    # another seed draws another subset (of every class)
    other, _ = D.per_class_subset(ds, 25, seed=8)
    for c in range(3):
        assert set(_ids(other.x_train)[other.y_train == c]) != set(ids[sub.y_train == c])
    # class c's draw depends only on (seed, c): the same as reducing class c alone
    for c in range(3):
        x_c, y_c, _ = D.imbalance_by_count(ds.x_train, ds.y_train, {c: 25}, seed=7)
        np.testing.assert_array_equal(_ids(x_c[y_c == c]), ids[sub.y_train == c])
    # all samples of the smallest class: every one kept
    full, counts = D.per_class_subset(ds, 40)
    assert counts[2] == 40 and set(np.flatnonzero(ds.y_train == 2)) <= set(_ids(full.x_train))


@pytest.mark.parametrize("per_class", [0, -3, 2.5, True, "10", None, 41])
def test_per_class_subset_bad_per_class_names_it(per_class):
    ds = _toy_dataset(per_class=(500, 300, 40))
    with pytest.raises(ValueError, match="per_class") as ei:
        D.per_class_subset(ds, per_class)
    if per_class == 41:
        assert "{2: 40}" in str(ei.value)  # names the class that is too small
    with pytest.raises(TypeError, match="dataset"):
        D.per_class_subset((ds.x_train, ds.y_train), 5)


def test_cifar10_imbalance_defaults_on_cifar_sized_labels():
    per = (5000,) * 10
    y = np.repeat(np.arange(10), 5000).astype(np.int32)
    ds = D.Dataset(np.zeros((len(y), 1, 1, 1), np.uint8), y, np.zeros((10, 1, 1, 1), np.uint8),
                   np.arange(10, dtype=np.int32), 10, "cifar10")
    _, counts = D.cifar10_single_class_imbalance(ds)
    assert counts == {0: 500, **{c: 5000 for c in range(1, 10)}}
    _, counts = D.cifar10_multi_class_imbalance(ds)
    assert counts == {**{c: 500 for c in range(5)}, **{c: 5000 for c in range(5, 10)}}
    assert sum(counts.values()) == sum(per) - 5 * 4500


# ---------------------------------------------------------------------------------------------
# augmentation and batching


def _img_batch(n=6, h=8, w=10, c=3, seed=0, dtype=np.uint8):
    x = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    return x.astype(dtype)


def test_augment_shape_dtype_determinism():
    key = jax.random.key(0)
    for dtype in (np.uint8, np.float32):
        x = _img_batch(dtype=dtype)
        out = D.augment_batch(key, x)
        assert out.shape == x.shape and out.dtype == dtype
        np.testing.assert_array_equal(D.augment_batch(key, x), out)
        assert not np.array_equal(D.augment_batch(jax.random.key(1), x), out)


def test_augment_crops_are_windows_of_symmetric_padding():
    x = _img_batch(n=32, h=8, w=10, c=2, seed=1)
    pad = 3
    out = np.asarray(D.augment_batch(jax.random.key(5), x, pad=pad, flip=False))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    assert padded[0, 0, pad, 0] == x[0, pad - 1, 0, 0]  # numpy "symmetric" repeats the edge
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if np.array_equal(padded[i, dy:dy + 8, dx:dx + 10], out[i])]
        assert hits, f"example {i} is not a window of the padded image"
        offsets.update(hits)
    assert len(offsets) > 5  # offsets vary across examples
    assert D.random_crop(jax.random.key(0), x, pad=0) is not None
    np.testing.assert_array_equal(D.augment_batch(jax.random.key(0), x, pad=0, flip=False), x)


def test_augment_flip_flips():
    base = np.arange(4 * 5 * 3).reshape(1, 4, 5, 3).astype(np.uint8)
    x = np.repeat(base, 64, axis=0)
    out = np.asarray(D.augment_batch(jax.random.key(2), x, pad=0, flip=True))
    same = np.all(out == base, axis=(1, 2, 3))
    flipped = np.all(out == base[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | flipped)
    assert same.any() and flipped.any()
    assert flipped[0] == bool(flipped[0])  # per-example decisions
    np.testing.assert_array_equal(out[flipped][0][:, 0], base[0][:, -1])  # column order reversed
    y = np.asarray(D.random_flip(jax.random.key(2), x))
    assert np.all(np.all(y == base, axis=(1, 2, 3)) | np.all(y == base[:, :, ::-1], (1, 2, 3)))


def test_augment_under_jit():
    x = jnp.asarray(_img_batch())  # same shapes as above: the eager path is already compiled
    key = jax.random.key(7)
    f = jax.jit(partial(D.augment_batch, pad=4, flip=True))
    np.testing.assert_array_equal(f(key, x), D.augment_batch(key, x))

    @jax.jit
    def step(key, images):  # as inside a train step: augment then normalise
        return D.normalize(D.augment_batch(key, images, pad=2, flip=False)).mean()

    assert step(key, x).dtype == jnp.float32


def test_augment_bad_arguments():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="images"):
        D.augment_batch(key, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="pad"):
        D.augment_batch(key, np.zeros((1, 8, 8, 3), np.uint8), pad=-1)
    with pytest.raises(ValueError, match="pad"):
        D.augment_batch(key, np.zeros((1, 8, 8, 3), np.uint8), pad=2.0)
    with pytest.raises(ValueError, match="flip"):
        D.augment_batch(key, np.zeros((1, 8, 8, 3), np.uint8), flip="yes")


def test_normalize():
    x = np.array([0, 127, 128, 255], np.uint8).reshape(1, 2, 2, 1)
    out = D.normalize(x)
    assert out.dtype == jnp.float32 and out.shape == x.shape  # float32 even with x64 enabled
    np.testing.assert_allclose(np.asarray(out).ravel(),
                               (np.array([0, 127, 128, 255]) - 127.5) / 128, rtol=1e-7)
    assert D.normalize(x.astype(np.float64)).dtype == jnp.float32


def test_batches_epochs_shuffle_determinism():
    x = np.arange(10)[:, None] * np.ones((1, 3), int)
    y = np.arange(10)
    out = list(D.batches(x, y, 3, seed=0, epochs=2))
    assert len(out) == 6 == 2 * D.steps_per_epoch(10, 3)
    for xb, yb in out:
        assert xb.shape == (3, 3) and yb.shape == (3,)
        np.testing.assert_array_equal(xb[:, 0], yb)  # x and y stay aligned
    e0 = np.concatenate([b[1] for b in out[:3]])
    e1 = np.concatenate([b[1] for b in out[3:]])
    assert len(set(e0)) == 9 and len(set(e1)) == 9  # no repeats within an epoch
    assert not np.array_equal(e0, e1)  # reshuffled every epoch
    again = list(D.batches(x, y, 3, seed=0, epochs=2))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(out, again, strict=True))
    other = np.concatenate([b[1] for b in D.batches(x, y, 3, seed=1)])
    assert not np.array_equal(other, e0)
    resumed = list(D.batches(x, y, 3, seed=0, epochs=1, start_epoch=1))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(out[3:], resumed, strict=True))
    # keep remainder, no shuffle
    plain = list(D.batches(x, y, 4, shuffle=False, drop_remainder=False))
    assert [b[1].tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    full = list(D.batches(x, y, 4, seed=3, drop_remainder=False))
    assert sorted(np.concatenate([b[1] for b in full]).tolist()) == list(range(10))
    assert D.steps_per_epoch(10, 4, drop_remainder=False) == 3
    # JAX keys as seeds; epochs=None repeats forever
    kb = list(itertools.islice(D.batches(x, y, 5, jax.random.key(1), epochs=None), 7))
    assert len(kb) == 7
    kb2 = list(itertools.islice(D.batches(x, y, 5, jax.random.key(1), epochs=None), 7))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(kb, kb2, strict=True))
    kb3 = list(D.batches(x, y, 5, jax.random.PRNGKey(1)))
    assert len(kb3) == 2


def test_batches_bad_arguments():
    x, y = np.zeros((10, 2)), np.zeros(10)
    with pytest.raises(ValueError, match="batch_size"):
        D.batches(x, y, 0)
    with pytest.raises(ValueError, match="batch_size"):
        D.batches(x, y, 11)
    with pytest.raises(ValueError, match="same length"):
        D.batches(x, y[:-1], 2)
    with pytest.raises(ValueError, match="epochs"):
        D.batches(x, y, 2, epochs=-1)
    with pytest.raises(TypeError, match="seed"):
        D.batches(x, y, 2, seed=-3)
    with pytest.raises(TypeError, match="seed"):
        D.batches(x, y, 2, seed=1.5)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 JPEG npz


def test_cifar10_jpeg_npz(tmp_path):
    p = tmp_path / "tiny.npz"
    exp = _make_jpeg_npz(p)
    ds = D.load_cifar10_jpeg_npz(p)
    assert ds.name == "cifar10_jpeg" and ds.num_classes == 10
    assert ds.x_train.shape == (6, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 32, 32, 3) and ds.y_test.dtype == np.int32
    np.testing.assert_array_equal(ds.y_train, exp["train_labels"])
    np.testing.assert_array_equal(ds.y_test, exp["test_labels"])
    err = np.abs(ds.x_train.astype(int) - exp["_train_images"].astype(int))
    assert err.mean() < 3.0  # lossy but close, and channels in RGB order
    from PIL import Image  # exact match with a plain Pillow decode

    o = exp["test_offsets"]
    for i in range(4):
        raw = exp["test_jpeg"][o[i]:o[i + 1]].tobytes()
        ref = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        np.testing.assert_array_equal(ds.x_test[i], ref)
    assert ds.label_names == D.CIFAR10_LABEL_NAMES
    small = D.load_cifar10_jpeg_npz(p, limit=2)
    assert small.x_train.shape == (2, 32, 32, 3) and small.x_test.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(small.x_train, ds.x_train[:2])
    np.testing.assert_array_equal(small.y_test, ds.y_test[:2])
    # decoded cache, reused on the second call
    cache = tmp_path / "cache"
    c1 = D.load_cifar10_jpeg_npz(p, cache=True, root=cache)
    assert (cache / "cifar10_jpeg_decoded.npz").is_file()
    c2 = D.load_cifar10_jpeg_npz(p, cache=True, root=cache)
    np.testing.assert_array_equal(c2.x_train, ds.x_train)
    np.testing.assert_array_equal(c1.y_test, c2.y_test)
    assert c2.label_names == ds.label_names


def test_cifar10_jpeg_npz_grayscale_and_errors(tmp_path):
    p = tmp_path / "gray.npz"
    _make_jpeg_npz(p, mode="L")
    ds = D.load_cifar10_jpeg_npz(p)
    assert ds.x_train.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(ds.x_train[..., 0], ds.x_train[..., 2])
    with pytest.raises(D.DatasetNotFoundError, match="does not exist"):
        D.load_cifar10_jpeg_npz(tmp_path / "missing.npz")
    with pytest.raises(D.DatasetNotFoundError, match="not a file"):
        D.load_cifar10_jpeg_npz(tmp_path)
    # the path is always an argument: no default location, no environment variable
    with pytest.raises(TypeError, match="path"):
        D.load_cifar10_jpeg_npz(None)
    with pytest.raises(TypeError, match="path"):
        D.load_cifar10_jpeg_npz()  # type: ignore[call-arg]
    assert not hasattr(D, "default_cifar10_jpeg_path")
    with pytest.raises(ValueError, match="limit"):
        D.load_cifar10_jpeg_npz(p, limit=-1)
    with np.load(p) as z:
        arrays = dict(z)
    arrays["train_offsets"] = arrays["train_offsets"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="train_offsets"):
        D.load_cifar10_jpeg_npz(tmp_path / "bad.npz")
    with np.load(p) as z:
        arrays = dict(z)
    arrays["test_jpeg"] = np.zeros_like(arrays["test_jpeg"])
    np.savez(tmp_path / "garbage.npz", **arrays)
    with pytest.raises(D.CorruptDataError, match="could not be decoded") as ei:
        D.load_cifar10_jpeg_npz(tmp_path / "garbage.npz")
    assert ei.value.path == tmp_path / "garbage.npz" and "pass another path" in str(ei.value)
    (tmp_path / "short.npz").write_bytes((tmp_path / "garbage.npz").read_bytes()[:-100])
    with pytest.raises(D.CorruptDataError, match="BadZipFile"):  # was a bare BadZipFile
        D.load_cifar10_jpeg_npz(tmp_path / "short.npz")
    del arrays["test_labels"]
    np.savez(tmp_path / "nokey.npz", **arrays)
    with pytest.raises(ValueError, match="test_labels"):
        D.load_cifar10_jpeg_npz(tmp_path / "nokey.npz")


def test_real_cifar10_jpeg_npz_first_images(cifar10_jpeg_path):
    ds = D.load_cifar10_jpeg_npz(cifar10_jpeg_path, limit=5)
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.x_test.shape == (5, 32, 32, 3)
    assert ds.label_names == D.CIFAR10_LABEL_NAMES
    assert ds.y_train.tolist() == [0] * 5  # file is sorted by class: airplanes first
    assert 20 < ds.x_train.mean() < 235 and ds.x_train.std() > 5


# ---------------------------------------------------------------------------------------------
# package hygiene


def test_data_package_imports_only_numpy_jax_stdlib():
    allowed_top = {"numpy", "jax", "mhe_jax", "__future__"}
    lazy = {"PIL", "sklearn", "pooch", "requests"}
    for py in sorted(DATA_DIR.glob("*.py")):
        tree = ast.parse(py.read_text())
        for node in tree.body:  # module-level imports
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed_top or top in __import__("sys").stdlib_module_names, \
                    f"{py.name} imports {name} at module level"
                assert top not in lazy
                if top == "mhe_jax":
                    assert name.startswith("mhe_jax.data"), f"{py.name} imports {name}"
        for node in ast.walk(tree):  # no flax / model code anywhere, even lazily
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for m in mods:
                    assert not m.startswith(("flax", "mhe_jax.models", "mhe_jax.train")), \
                        f"{py.name} imports {m}"
    assert set(D.__all__) <= set(dir(D))


# ---------------------------------------------------------------------------- image folders


def _write_image(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _banded(h, w, value):
    """h × w RGB image: the middle half of the longer side is ``value``, the outer quarters 0."""
    img = np.zeros((h, w, 3), np.uint8)
    if h >= w:
        img[h // 4: 3 * h // 4] = value
    else:
        img[:, w // 4: 3 * w // 4] = value
    return img


def test_image_folder_layout_labels_and_centre_crop(tmp_path):
    # class "a": tall images, class "b": wide ones; a centre crop of the shorter side keeps only
    # the middle band, so every pixel of the output has the band's value (borders cut off).
    for i in range(3):
        _write_image(tmp_path / "train/a" / f"{i}.png", _banded(80, 40, 200))
        _write_image(tmp_path / "train/b" / f"{i}.jpg", _banded(30, 60, 120))
    _write_image(tmp_path / "val/a/x.png", _banded(80, 40, 200))
    _write_image(tmp_path / "val/b/y.png", _banded(30, 60, 120))
    (tmp_path / "train/a/notes.txt").write_text("not an image")
    ds = D.load_image_folder(tmp_path, size=16, workers=2)
    assert ds.x_train.shape == (6, 16, 16, 3) and ds.x_test.shape == (2, 16, 16, 3)
    assert ds.label_names == ("a", "b") and ds.num_classes == 2
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.y_test, [0, 1])
    a, b = ds.x_test
    assert abs(int(a[8, 8, 0]) - 200) <= 2 and abs(int(b[8, 8, 0]) - 120) <= 6  # JPEG/PNG
    assert a[1:-1, 1:-1].min() >= 190  # the black quarters were cropped away
    small = D.load_image_folder(tmp_path, size=8, max_per_class=1)
    assert small.x_train.shape == (2, 8, 8, 3)


def test_image_folder_errors(tmp_path):
    with pytest.raises(D.DatasetNotFoundError, match="not found"):
        D.load_image_folder(tmp_path / "missing")
    _write_image(tmp_path / "train/a/0.png", _banded(8, 8, 1))
    with pytest.raises(D.DatasetNotFoundError, match="val"):
        D.load_image_folder(tmp_path)
    _write_image(tmp_path / "val/zzz/0.png", _banded(8, 8, 1))
    with pytest.raises(D.DatasetLayoutError, match="not in the training split"):
        D.load_image_folder(tmp_path)  # a user error for the CLI: one line, exit 2
    with pytest.raises(ValueError, match="size"):
        D.load_image_folder(tmp_path, size=0)
    bad = tmp_path / "train/a/1.png"
    bad.write_bytes((tmp_path / "train/a/0.png").read_bytes()[:40])  # truncated PNG
    with pytest.raises(D.CorruptDataError, match="cannot be decoded") as ei:
        D.load_image(bad, 8)
    assert ei.value.path == bad and bad.is_file()  # the user's file: named, never deleted
    with pytest.raises(ValueError, match="max_per_class"):
        D.load_image_folder(tmp_path, max_per_class=0)


def test_image_folder_without_images_in_a_split_or_class_raises(tmp_path):
    """A val/ without images loaded silently as "N train / 0 test" (torchvision's ImageFolder
    raises); so does a class folder without images."""
    for c in ("a", "b"):
        _write_image(tmp_path / "train" / c / "0.png", _banded(8, 8, 1))
        (tmp_path / "val" / c).mkdir(parents=True)
    (tmp_path / "val/a/readme.txt").write_text("not an image")
    with pytest.raises(D.DatasetNotFoundError, match=r"val holds no images: expected files"):
        D.load_image_folder(tmp_path, size=8)
    _write_image(tmp_path / "val/a/0.png", _banded(8, 8, 1))
    with pytest.raises(D.DatasetNotFoundError, match=r"val has no images for class\(es\) b"):
        D.load_image_folder(tmp_path, size=8)
    _write_image(tmp_path / "val/b/0.png", _banded(8, 8, 1))
    (tmp_path / "train/c").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match=r"train has no images for class\(es\) c"):
        D.load_image_folder(tmp_path, size=8)
    (tmp_path / "train/c").rmdir()
    assert D.load_image_folder(tmp_path, size=8).summary().startswith(f"{tmp_path.name}: 2 "
                                                                       "train / 2 test")


@pytest.mark.parametrize("workers", [0, -1, True, 1.5])
def test_image_folder_workers_is_checked(tmp_path, workers):
    """workers=0 silently meant "the CPU count" (``workers or cpu_count``)."""
    with pytest.raises(ValueError, match="workers must be a positive int"):
        D.load_image_folder(tmp_path, workers=workers)


@pytest.mark.parametrize("num_classes", [3.7, -1, 0, True, np.float64(3.0), "3"])
def test_make_dataset_num_classes_must_be_a_positive_int(num_classes):
    """num_classes=3.7 was stored as 3; -1 and True were accepted."""
    x = np.zeros((2, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1"):
        D.make_dataset(x, [0, 1], x, [1, 1], num_classes, "toy")
    assert D.make_dataset(x, [0, 1], x, [1, 1], np.int64(2), "toy").num_classes == 2


def test_imagenet_config_reads_an_image_folder(tmp_path):
    from mhe_jax.experiments import apply_overrides, get_config
    from mhe_jax.experiments.runner import load_dataset

    for split in ("train", "val"):
        for c in ("n01", "n02", "n03"):
            _write_image(tmp_path / split / c / "0.png", _banded(40, 30, 99))
    cfg = apply_overrides(get_config("table6/resnet18/mhe"),
                          [f"data_dir={tmp_path}", "image_size=32"])
    ds, counts = load_dataset(cfg)
    assert counts is None and ds.x_train.shape == (3, 32, 32, 3)
    assert ds.label_names == ("n01", "n02", "n03")
    assert get_config("table6/resnet34/baseline").data.image_size == 64
