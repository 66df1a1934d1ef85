"""The training step stays on the device (issue 16 §2-3): no host transfer inside a step or
between log points of ``fit``, the on-device batch stream, and 8-device data parallelism."""

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as jax_array  # the host-value accessors that the fetch guard wraps

from mhe_jax.experiments import apply_overrides, get_config
from mhe_jax.experiments.runner import build_model, build_optimizer
from mhe_jax.train import DataParallel, StepFns, epoch_batches, fit, make_steps
from tests.helpers import child_xla_flags

WIDTHS = ["model.widths=4,4,8"]


class HostFetch(AssertionError):
    """A device array's value was fetched to the host inside :func:`no_device_to_host`."""


@contextlib.contextmanager
def device_to_host_fetches(refuse: bool = True):
    """Record (or, with ``refuse``, fail on) every device-to-host transfer inside the block.

    ``jax.transfer_guard_device_to_host("disallow")`` raises on GPU and TPU, but on the CPU
    backend the copy to NumPy is zero-copy and that guard never trips (jax-ml/jax#16602). So
    the block also wraps the host-value accessors of ``jax.Array``: ``_value`` (behind
    ``float``/``int``/``bool``, ``repr``, ``tolist`` and ``jax.device_get``),
    ``__array__`` and ``copy_to_host_async``. Yields the list of recorded fetches.
    (``np.asarray`` of a CPU array reads its buffer directly and bypasses ``__array__``; on an
    accelerator the guard itself catches it.)
    """
    cls = jax_array.ArrayImpl
    names = ("_value", "__array__", "copy_to_host_async")
    saved = {name: cls.__dict__[name] for name in names}  # KeyError: jax changed; update this
    fetches: list[str] = []

    def wrap(name, fn):
        def wrapped(self, *args, **kwargs):
            if refuse:
                raise HostFetch(f"device-to-host transfer ({name}) of a {self.aval}")
            fetches.append(f"{name} {self.aval}")
            return fn(self, *args, **kwargs)
        return wrapped

    try:
        cls._value = property(wrap("_value", saved["_value"].fget))
        cls.__array__ = wrap("__array__", saved["__array__"])
        cls.copy_to_host_async = wrap("copy_to_host_async", saved["copy_to_host_async"])
        with jax.transfer_guard_device_to_host("disallow" if refuse else "allow"):
            yield fetches
    finally:
        for name, attr in saved.items():
            setattr(cls, name, attr)


def no_device_to_host():
    return device_to_host_fetches(refuse=True)


class Tiny(NamedTuple):
    model: nnx.Module
    optimizer: nnx.Optimizer
    fns: StepFns
    x: np.ndarray
    y: np.ndarray
    batch: tuple  # the first batch of the on-device stream


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    """CNN-9 (widths 4/4/8) with MHE (``mhe_regularizer``) and its lr schedule, the step of
    ``fit`` (augmentation on), 64 uint8 8x8x1 images; compiled once for the module."""
    cfg = apply_overrides(get_config("quickstart/mhe"), WIDTHS + ["optim.warmup_steps=0"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 64).astype(np.int32)
    model = build_model(cfg, 10, 1, 8)
    optimizer, lr = build_optimizer(cfg, model)
    fns = make_steps(augment=True, seed=0, learning_rate=lr)
    stream = epoch_batches(x, y, batch_size=16, seed=0, put=jax.device_put)
    batch = next(stream)
    fns.train(model, optimizer, batch)  # compile outside every guard (for fit's batches too)
    fns.train(model, optimizer, next(stream))
    assert fns.train.jitted_fn._cache_size() == 1  # the stream's batches: no second compile
    return Tiny(model, optimizer, fns, x, y, batch)


def test_fetch_guard_trips_on_a_deliberate_host_fetch():
    """The guard can fail: float(), jax.device_get and an implicit upload all raise in it."""
    metric = jnp.ones(()) * 2
    for fetch in (float, int, bool, jax.device_get, repr, lambda v: v.tolist()):
        with pytest.raises(HostFetch), no_device_to_host():
            fetch(metric)
    assert float(metric) == 2.0  # restored afterwards
    with pytest.raises(Exception, match="host-to-device"), jax.transfer_guard("disallow"):
        jnp.ones(3) + np.ones(3)  # a NumPy operand is an implicit upload


def test_train_step_does_no_host_transfer(tiny):
    """The jitted step of ``fit`` (augment, MHE, optimizer, lr): 3 steps with the batch on the
    device under both transfer guards and the fetch guard; a float(metric) inside trips it."""
    model, optimizer, fns, x, y, batch = tiny
    start = int(optimizer.step[...])
    with no_device_to_host(), jax.transfer_guard("disallow"):
        for _ in range(3):
            metrics = fns.train(model, optimizer, batch)
    assert set(metrics) == {"loss", "accuracy", "lr"} and int(optimizer.step[...]) == start + 3

    def syncing_step(m, o, b):
        out = fns.train(m, o, b)
        float(out["loss"])  # the classic mistake: a per-step host sync
        return out

    with pytest.raises(HostFetch), no_device_to_host():
        syncing_step(model, optimizer, batch)
    with pytest.raises(Exception, match="host-to-device"), jax.transfer_guard("disallow"):
        fns.train(model, optimizer, (x[:16], y[:16]))  # NumPy batch: an implicit upload


def test_train_step_has_no_host_callback(tiny):
    """The compiled step contains no host callback or outfeed (each one a device-to-host
    round trip per step on an accelerator); ``jax.debug.print`` in a step is caught."""
    model, optimizer, fns, x, y, batch = tiny

    def hlo(step):
        return step.lower(model, optimizer, batch).as_text()

    def host_ops(text):
        return [w for w in ("callback", "outfeed", "send", "recv") if w in text.lower()]

    assert host_ops(hlo(fns.train)) == []

    @nnx.jit
    def printing_step(m, o, b):
        out = fns.train(m, o, b)
        jax.debug.print("loss {}", out["loss"])
        return out

    assert "callback" in host_ops(hlo(printing_step))


def test_fit_does_no_host_transfer_between_log_points(tiny):
    """``fit`` without logs, evals or checkpoints fetches one value from the device, the
    optimizer's step before its loop, however many steps it runs; each log point adds one
    fetch of the metrics. No implicit upload at all with the on-device stream (``put``); the
    host stream's NumPy batches are one per step."""
    model, optimizer, fns, x, y, batch = tiny
    data = epoch_batches(x, y, batch_size=16, seed=0, put=jax.device_put)
    start = int(optimizer.step[...])
    counts = {}
    for steps, log_every in [(start + 2, None), (start + 8, None), (start + 12, 2)]:
        with device_to_host_fetches(refuse=False) as fetches, \
                jax.transfer_guard_host_to_device("disallow"):
            fit(model, optimizer, data, steps=steps, train_step=fns.train, log_every=log_every)
        counts[steps - start] = fetches
    # 2 or 6 steps: only int(optimizer.step) before the loop
    assert [len(counts[2]), len(counts[8])] == [1, 1], counts
    assert len(counts[12]) > 1  # 4 more steps, 2 log points: their metrics are fetched
    assert int(optimizer.step[...]) == start + 12
    # K = 4 steps per jitted call (jnp.stack of the on-device batches, one lax.scan): no
    # transfer either, and the one fetch before the loop
    for k in (4, 2):  # compile the two call lengths (4, 4, 2) outside the guards
        fns.train_many(model, optimizer, jax.tree.map(lambda *b: jnp.stack(b), *[batch] * k))
    start = int(optimizer.step[...])
    with device_to_host_fetches(refuse=False) as fetches, \
            jax.transfer_guard_host_to_device("disallow"):
        fit(model, optimizer, data, steps=start + 10, train_step=fns.train_many,
            steps_per_call=4)
    assert len(fetches) == 1 and int(optimizer.step[...]) == start + 10, fetches
    host = epoch_batches(x, y, batch_size=16, seed=0)
    with pytest.raises(Exception, match="host-to-device"), \
            jax.transfer_guard_host_to_device("disallow"):
        fit(model, optimizer, host, steps=start + 13, train_step=fns.train)


def _same(a, b):
    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("placement", ["device_put", "data_parallel"])
def test_device_stream_equals_the_host_stream_and_resumes(placement):
    """The on-device stream yields the host stream's batches (70 examples, batch 16: 4 steps
    an epoch, 6 left over), over 3 epochs; started at step k it equals the stream skipping k."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (70, 5, 5, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 70)
    put = jax.device_put if placement == "device_put" else DataParallel()
    host = list(itertools.islice(epoch_batches(x, y, batch_size=16, seed=7), 12))
    dev = list(itertools.islice(epoch_batches(x, y, batch_size=16, seed=7, put=put), 12))
    assert all(_same(h, d) for h, d in zip(host, dev, strict=True))
    assert all(isinstance(d[0], jax.Array) and d[0].dtype == np.uint8 for d in dev)
    assert not _same(host[0], host[4])  # epochs are reshuffled
    for k in (1, 4, 6, 9):
        resumed = epoch_batches(x, y, batch_size=16, seed=7, start_step=k, put=put)
        got = list(itertools.islice(resumed, 12 - k))
        assert all(_same(h, d) for h, d in zip(host[k:], got, strict=True)), k


def test_device_stream_uploads_once_per_epoch():
    """Within an epoch no array is put on the device, not even explicitly; the next epoch's
    order is one upload (the guard trips there, so this test can fail)."""
    x = np.zeros((64, 2, 2, 1), np.uint8)
    stream = epoch_batches(x, np.arange(64), batch_size=16, seed=0, put=jax.device_put)
    next(stream)  # the arrays and epoch 0's order
    with jax.transfer_guard_host_to_device("disallow_explicit"):
        for _ in range(3):
            next(stream)
        with pytest.raises(Exception, match="host-to-device"):
            next(stream)  # epoch 1's order


def test_device_stream_checks_its_placement():
    x, y = np.zeros((8, 2, 2, 1), np.uint8), np.arange(8)
    with pytest.raises(ValueError, match="one device"):
        next(epoch_batches(x, y, batch_size=4, seed=0, put=np.asarray))
    with pytest.raises(ValueError, match="start_step"):
        epoch_batches(x, y, batch_size=4, seed=0, start_step=-1, put=jax.device_put)
    with pytest.raises(ValueError, match="batch_size"):
        epoch_batches(x, y, batch_size=9, seed=0, put=jax.device_put)


DATA_PARALLEL_8 = """
import json, sys
import jax, numpy as np, flax.nnx as nnx
from mhe_jax.experiments import apply_overrides, get_config
from mhe_jax.experiments.runner import build_model, build_optimizer
from mhe_jax.train import DataParallel, epoch_batches, fit, make_steps
assert jax.local_device_count() == 8, jax.devices()
cfg = apply_overrides(get_config("quickstart/mhe"), ["model.widths=4,4,8", "optim.warmup_steps=0"])
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
y = rng.integers(0, 10, 32).astype(np.int32)
runs = {}
for name in ("single", "data_parallel", "data_parallel_scan"):  # runner.run's construction
    model = build_model(cfg, 10, 1, 8)
    opt, lr = build_optimizer(cfg, model)
    fns = make_steps(augment=True, seed=0, learning_rate=lr)
    put = DataParallel() if name.startswith("data_parallel") else None
    if put is not None:
        put.replicate(model, opt)
    data = epoch_batches(x, y, batch_size=16, seed=0, put=put or jax.device_put)
    if put is not None:
        batch = next(epoch_batches(x, y, batch_size=16, seed=0, put=put))
        assert len(batch[0].sharding.device_set) == 8 and batch[0].shape == (16, 8, 8, 1)
    # two steps through fit, as runner.run trains (the second one sees updated BN stats);
    # "_scan": both steps in one jitted lax.scan (runner.run(steps_per_call=2))
    if name.endswith("_scan"):
        history = fit(model, opt, data, steps=2, train_step=fns.train_many, log_every=2,
                      steps_per_call=2)["history"]
    else:
        history = fit(model, opt, data, steps=2, train_step=fns.train, log_every=1)["history"]
    metrics = [{k: v for k, v in e.items() if k != "step"} for e in history]
    if put is not None:
        assert len(model.layers[0].conv.kernel[...].sharding.device_set) == 8
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state((model, opt))))[0]
    runs[name] = ({jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}, metrics)
(a, ma), (b, mb), (c, mc) = runs["single"], runs["data_parallel"], runs["data_parallel_scan"]
assert a.keys() == b.keys() == c.keys()
out = {"metrics": [ma, mb, mc], "leaves": {}, "leaves_scan": {}}
for other, key in ((b, "leaves"), (c, "leaves_scan")):
    for k in a:
        if a[k].dtype.kind == "f":  # max |difference| relative to the leaf's largest value
            scale = float(np.abs(a[k]).max()) or 1.0
            out[key][k] = float(np.abs(a[k] - other[k]).max()) / scale
        else:
            assert np.array_equal(a[k], other[k]), k
json.dump(out, open(sys.argv[1], "w"))
"""


def test_data_parallel_8_devices_equals_single_device(tmp_path):
    """Two CNN-9 steps through ``fit`` (BatchNorm in train mode, MHE, augmentation, the
    on-device stream) with ``DataParallel`` over 8 host devices, global batch 16 (2 examples a
    device), as ``runner.run`` builds them, equal the single-device steps:
    parameters, BatchNorm running statistics, optimizer state and metrics agree to float32
    rounding (measured: at most ~3e-6 of each leaf's largest value, loss within 5e-7). With
    per-device batch statistics over 2 examples the BatchNorm outputs, and so every leaf,
    would differ at order 1: the statistics are over the global batch. The same two steps as
    one jitted ``lax.scan`` (``train_many``, ``steps_per_call=2``) over the 8 devices agree
    as well."""
    script = tmp_path / "dp8.py"
    script.write_text(DATA_PARALLEL_8)
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": child_xla_flags("--xla_force_host_platform_device_count=8")}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out.json")], env=env,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    (ma, mb, mc), leaves = out["metrics"], out["leaves"]
    assert len(ma) == len(mb) == 2 and len(mc) == 1
    # the two steps as one jitted scan over the 8 devices: the same state and last metrics
    assert mc[0]["loss"] == pytest.approx(ma[1]["loss"], rel=1e-5, abs=1e-6)
    worst_scan = max(out["leaves_scan"].values())
    assert worst_scan < 2e-5, worst_scan
    for a, b in zip(ma, mb, strict=True):
        assert a.keys() == b.keys() == {"loss", "accuracy", "lr"}
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-6)
        assert b["accuracy"] == a["accuracy"] and b["lr"] == a["lr"]
    bn = [k for k in leaves if "['bn']" in k and ("['mean']" in k or "['var']" in k)]
    assert len(bn) >= 16, sorted(leaves)  # running mean and var of every BatchNorm
    worst = max(leaves, key=leaves.get)
    print(f"worst leaf {worst}: {leaves[worst]:.2e}; losses {ma} {mb}")
    assert leaves[worst] < 2e-5, (worst, leaves[worst])


def _x64_setters(source: str) -> list[int]:
    """Lines that call ``jax.config.update("jax_enable_x64", ...)`` or ``jax.enable_x64(...)``."""
    import ast

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            named = any(isinstance(a, ast.Constant) and a.value == "jax_enable_x64"
                        for a in node.args)
            if node.func.attr == "enable_x64" or (node.func.attr == "update" and named):
                lines.append(node.lineno)
    return lines


def test_the_library_never_turns_on_float64():
    """No module of mhe_jax turns on ``jax_enable_x64`` (TPUs have no float64): every precision
    follows the user's setting (the study's t-statistics use scipy on the host)."""
    probe = 'import jax\njax.config.update("jax_enable_x64", True)\nwith jax.enable_x64(True):\n 0'
    assert _x64_setters(probe) == [2, 3]  # the matcher finds both forms
    root = Path(__file__).resolve().parents[1] / "mhe_jax"
    found = {str(f.relative_to(root)): _x64_setters(f.read_text()) for f in root.rglob("*.py")}
    assert len(found) > 20 and {k: v for k, v in found.items() if v} == {}
