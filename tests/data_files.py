"""Tiny files in the official dataset formats (CIFAR python pickles and tarballs, MNIST idx,
the JPEG CIFAR-10 .npz), written independently of mhe_jax.data for its tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes what Python 2 wrote: str as BINSTRING, numpy globals under
    their numpy-1 names (``numpy.core.multiarray``)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        name = name or obj.__qualname__
        if module == "numpy" or module.startswith("numpy."):
            module = module.replace("numpy._core", "numpy.core")
            self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global


def _dump(obj, path: Path, py2: bool) -> None:
    if py2:  # bytes keys and values, like the files on the dataset's home page
        buf = io.BytesIO()
        _Py2Pickler(buf, protocol=2).dump(obj)
        path.write_bytes(buf.getvalue())
    else:  # str keys, as re-written by Python 3 tools (e.g. cifar10_jpeg_to_python.py)
        def keys_to_str(o):
            if isinstance(o, dict):
                return {k.decode(): keys_to_str(v) for k, v in o.items()}
            if isinstance(o, list):
                return [v.decode() if isinstance(v, bytes) else v for v in o]
            return o
        path.write_bytes(pickle.dumps(keys_to_str(obj), protocol=2))


def _cifar_rows(rng, n):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_cifar10(parent: Path, py2: bool = True, n: int = 3, seed: int = 0) -> dict:
    """Write parent/cifar-10-batches-py with 5 train batches of n images and a test batch."""
    rng = np.random.default_rng(seed)
    d = parent / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rows, labels = [], []
    for b in range(1, 6):
        r, lab = _cifar_rows(rng, n), rng.integers(0, 10, n).tolist()
        _dump({b"batch_label": b"training batch %d of 5" % b, b"data": r, b"labels": lab,
               b"filenames": [b"img_%d.png" % i for i in range(n)]}, d / f"data_batch_{b}", py2)
        rows.append(r)
        labels += lab
    test_rows, test_labels = _cifar_rows(rng, n), rng.integers(0, 10, n).tolist()
    _dump({b"batch_label": b"testing batch 1 of 1", b"data": test_rows, b"labels": test_labels},
          d / "test_batch", py2)
    names = [n.encode() for n in CIFAR10_LABEL_NAMES]
    _dump({b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072},
          d / "batches.meta", py2)
    return {"train_rows": np.concatenate(rows), "train_labels": np.array(labels),
            "test_rows": test_rows, "test_labels": np.array(test_labels)}


def make_cifar100(parent: Path, py2: bool = True, n: int = 4, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    d = parent / "cifar-100-python"
    d.mkdir(parents=True)
    out = {}
    for split in ("train", "test"):
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        r = _cifar_rows(rng, n)
        _dump({b"filenames": [b"x.png"] * n, b"batch_label": split.encode(),
               b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(), b"data": r},
              d / split, py2)
        out[split] = (r, fine, coarse)
    _dump({b"fine_label_names": [b"f%d" % i for i in range(100)],
           b"coarse_label_names": [b"c%d" % i for i in range(20)]}, d / "meta", py2)
    return out


def tar_gz(parent: Path, folder: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(parent / folder, arcname=folder)
    return buf.getvalue()


def expected_nhwc(rows):
    # independent of the implementation: pixel (r, c) channel ch is rows[ch*1024 + r*32 + c]
    n = len(rows)
    out = np.zeros((n, 32, 32, 3), np.uint8)
    for ch in range(3):
        for r in range(32):
            out[:, r, :, ch] = rows[:, ch * 1024 + r * 32: ch * 1024 + r * 32 + 32]
    return out


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, np.uint8)
    magic = magic if magic is not None else (0x0800 | arr.ndim)
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + \
        arr.tobytes()


def make_mnist_files(seed=0, n_train=6, n_test=4) -> tuple[dict[str, bytes], dict]:
    rng = np.random.default_rng(seed)
    xtr = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    ytr = rng.integers(0, 10, n_train).astype(np.uint8)
    xte = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    yte = rng.integers(0, 10, n_test).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(idx_bytes(xtr)),
        "train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(ytr)),
        "t10k-images-idx3-ubyte.gz": gzip.compress(idx_bytes(xte)),
        "t10k-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(yte)),
    }
    return files, {"xtr": xtr, "ytr": ytr, "xte": xte, "yte": yte}


def make_jpeg_npz(path: Path, n_train=6, n_test=4, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        # distinct flat colours with a gentle ramp: JPEG error stays small, channel order shows
        ramp = np.broadcast_to(np.linspace(0, 20, 32)[None, :, None], (32, 32, 1))
        colours = np.array([[(10 + 40 * i) % 200, (200 - 30 * i) % 200, (90 + 25 * i) % 200]
                            for i in range(n)], float)
        imgs = np.rint(colours[:, None, None, :] + ramp[None]).astype(np.uint8)
        labels = np.sort(rng.integers(0, 10, n)).astype(np.uint8)  # sorted by class
        blobs = []
        for im in imgs:
            buf = io.BytesIO()
            pil = Image.fromarray(im)
            (pil.convert("L") if mode == "L" else pil).save(buf, format="JPEG", quality=95)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        out[f"{split}_jpeg"] = np.concatenate(blobs)
        out[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]
                                                 ).astype(np.int64)
        out[f"{split}_labels"] = labels
        out[f"_{split}_images"] = imgs
    np.savez(path, label_names=np.array(CIFAR10_LABEL_NAMES),
             **{k: v for k, v in out.items() if not k.startswith("_")})
    return out
