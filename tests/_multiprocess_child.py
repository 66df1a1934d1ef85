"""Child of tests/test_multiprocess.py: one process of a 2-process JAX run on CPU, or the one
process it is compared with.

Usage: ``python tests/_multiprocess_child.py COORDINATOR PROCESS_ID OUT_DIR``. ``COORDINATOR``
is ``127.0.0.1:PORT`` (one of 2 processes, 2 host devices each, gloo collectives) or
``single`` (this process alone, 1 device, no distributed runtime). The three processes (the
pair and the single one) run at the same time and meet through files in ``OUT_DIR``:

* pair: the sharded energy and ``mhe_jax.mhe_regularizer``'s update (dense path, and the ring
  of ``mesh_axis=``), float64, saved as ``energy.multi.<pid>.npz``; two data-parallel CNN-9 + MHE
  steps (float32) saved as ``train.multi.<pid>.npz``; an orbax checkpoint of that state saved
  by both processes (``ckpt_multi``, and ``mhe_jax.train.Checkpointer``), then the single
  process's checkpoint restored into the pair's sharding; then process 1 kills itself
  (SIGKILL) and process 0 steps on until the distributed runtime stops it;
* single: the same energies on one device (``energy.single.0.npz``), the same two CNN steps on
  one device (``train.single.0.npz``), its checkpoint
  (``ckpt_single``), then the pair's checkpoint restored on one device.

Each process writes ``OUT_DIR/<tag>.json`` (``multi.<pid>`` or ``single.0``) when its checks
are done; process 0 of the pair writes ``kill.json`` (the time its peer died) last. The
parent compares the ``.npz`` arrays. The model's parameters come from NumPy (the same in every
process), not from its initialisers: that saves a compile per parameter shape.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

T0 = time.monotonic()


def phase(name: str) -> None:
    """A line in this process's log: seconds since start, then what starts now."""
    print(f"[{time.monotonic() - T0:6.1f} s, cpu {time.process_time():6.1f} s] {name}", flush=True)


COORD, PID, OUT = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
MULTI = COORD != "single"
os.environ["JAX_PLATFORMS"] = "cpu"
# LLVM at -O0: a third less compile time for the CNN step (the same HLO; what is checked here is
# what the processes exchange, not the speed of the generated code)
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={2 if MULTI else 1} "
                           "--xla_backend_optimization_level=0")

import jax  # noqa: E402

if MULTI:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # gloo listens on the address of this host's name: pin it to the loopback interface
    from jax._src import xla_bridge  # noqa: E402

    xla_bridge._jax.make_gloo_tcp_collectives = functools.partial(
        xla_bridge._jax.make_gloo_tcp_collectives, hostname="127.0.0.1")
    jax.distributed.initialize(coordinator_address=COORD, num_processes=2, process_id=PID,
                               initialization_timeout=60, heartbeat_timeout_seconds=10)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import mhe_jax  # noqa: E402

DEVICES = 4 if MULTI else 1
assert jax.device_count() == DEVICES, jax.devices()
MESH = jax.make_mesh((DEVICES,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
LOCAL = jax.local_devices()[0]
TAG = f"multi.{PID}" if MULTI else "single.0"
SIDE = "multi" if MULTI else "single"
OTHER = "single" if MULTI else "multi"
report: dict = {"process_count": jax.process_count(), "devices": jax.device_count()}


def wait_for(path: Path, timeout: float = 200.0) -> None:
    """Wait for a file another process writes (the parent's timeout bounds the whole run)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def mark(name: str, obj: dict | None = None) -> None:
    """Write ``OUT/name`` atomically (readers poll for it)."""
    tmp = OUT / f".{name}.tmp"
    tmp.write_text(json.dumps(obj or {}))
    tmp.rename(OUT / name)


def host(a) -> np.ndarray:
    """The full value of a global array on this host (gathered when it is sharded)."""
    if a.is_fully_addressable:
        return np.asarray(a)
    if a.sharding.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


# ------------------------------------------------------------------ energy (pair, float64)


def energy() -> None:
    """A (16, 40) float64 layer, its neurons over the 4 devices of both processes in the pair
    (on one device in the single process): ``sharded_hyperspherical_energy`` (value, gradient;
    ``hyperspherical_energy`` in the single process) and ``mhe_regularizer``'s update on the
    dense path and on the tiled one (``block_size=4``; in the pair through the ring,
    ``mesh_axis="x"``), saved to ``energy.<tag>.npz`` for the parent to compare."""
    w = np.random.default_rng(0).standard_normal((16, 40))
    sharding = NamedSharding(MESH, P(None, "x")) if MULTI else LOCAL
    w = jax.device_put(w, sharding)  # neurons over the 4 devices
    kw = dict(s=1.0, half_space=True)
    if MULTI:
        value, grad = jax.jit(jax.value_and_grad(
            lambda w: mhe_jax.sharded_hyperspherical_energy(w, MESH, "x", **kw)))(w)
    else:
        value, grad = jax.jit(jax.value_and_grad(
            lambda w: mhe_jax.hyperspherical_energy(w, **kw)))(w)
    out = {"value": host(value), "grad": host(grad)}
    with warnings.catch_warnings():  # one hidden layer and no output layer, on purpose
        warnings.filterwarnings("ignore", "half_space=True with output=None")
        dense = mhe_jax.mhe_regularizer(1.0, half_space="hidden")
        spec = mhe_jax.EnergySpec(half_space=True, block_size=4)
        tiled = mhe_jax.mhe_regularizer(1.0, spec=spec, mesh_axis="x" if MULTI else None)
    params = {"Dense_0": {"kernel": w}}
    for name, tx in (("update", dense), ("tiled_update", tiled)):
        u = jax.jit(lambda p, tx=tx: tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[
            0])(params)["Dense_0"]["kernel"]
        out[name] = host(u)
        report[f"{name}_sharding_kept"] = bool(u.sharding.is_equivalent_to(w.sharding, 2))
    np.savez(OUT / f"energy.{TAG}.npz", **out)


# ------------------------------------------------------------------ CNN-9 (float32)


def build():
    """CNN-9 + MHE (quickstart config, widths 4/4/8, 8 x 8 images) and its optimizer, with
    parameters from NumPy; on ``DataParallel(jax.devices())`` in the pair."""
    import flax.nnx as nnx

    from mhe_jax.experiments import apply_overrides, get_config
    from mhe_jax.experiments.runner import build_model, build_optimizer
    from mhe_jax.train import DataParallel

    cfg = apply_overrides(get_config("quickstart/mhe"),
                          ["model.widths=4,4,8", "optim.warmup_steps=0"])
    graph, state = nnx.split(nnx.eval_shape(lambda: build_model(cfg, 10, 1, 8)))
    rng = np.random.default_rng(0)

    def value(path, leaf):
        name = jax.tree_util.keystr(path)  # e.g. "['layers'][0]['conv']['kernel'].value"
        if "'kernel'" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        ones = "'scale'" in name or "'var'" in name
        return (jnp.ones if ones else jnp.zeros)(leaf.shape, leaf.dtype)

    state = jax.tree_util.tree_map_with_path(value, state)
    kinds = [k for k in ("'kernel'", "'scale'", "'var'", "'bias'", "'mean'")
             if not any(k in jax.tree_util.keystr(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(state)[0])]
    assert not kinds, f"no leaf named {kinds}: the initialisation above missed them"
    model = nnx.merge(graph, state)
    opt, lr = build_optimizer(cfg, model)
    put = DataParallel(jax.devices()) if MULTI else None
    if put is not None:
        put.replicate(model, opt)
    return nnx, model, opt, lr, put


def leaves(nnx, model, opt, shift: float = 0.0) -> dict:
    """The pure-dict state of the model and optimizer (floats ``x·1.5 + shift`` when shifted)."""
    state = nnx.to_pure_dict(nnx.state((model, opt)))
    if shift:
        state = jax.tree.map(lambda a: a * 1.5 + shift if jnp.issubdtype(a.dtype, jnp.floating)
                             else a + 3, state)
    return state


def save_npz(name: str, state: dict) -> None:
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(OUT / name, **{jax.tree_util.keystr(p): host(v) for p, v in flat})


def train_and_checkpoint() -> None:
    """Two CNN-9 + MHE steps (augmentation, BatchNorm in train mode), global batch 16 (4
    examples a device in the pair); orbax checkpoints both ways."""
    import orbax.checkpoint as ocp

    from mhe_jax.train import Checkpointer, epoch_batches, make_steps

    phase("build the CNN")
    nnx, model, opt, lr, put = build()
    if put is not None:
        kernel = model.layers[0].conv.kernel[...]
        assert len(kernel.sharding.device_set) == DEVICES and not kernel.is_fully_addressable
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 32).astype(np.int32)
    fns = make_steps(augment=True, seed=0, learning_rate=lr)
    stream = epoch_batches(x, y, batch_size=16, seed=0, put=put or jax.device_put)
    metrics = []
    phase("train steps")
    for _ in range(2):  # the second step sees the updated BatchNorm statistics
        batch = next(stream)
        metrics.append({k: float(host(v)) for k, v in fns.train(model, opt, batch).items()})
    report["metrics"] = metrics
    save_npz(f"train.{TAG}.npz", leaves(nnx, model, opt))

    phase("save checkpoints")
    # each side saves values of its own (so a restore that returned its target would fail)
    saved = leaves(nnx, model, opt, shift=0.25 if MULTI else -0.75)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(OUT / f"ckpt_{SIDE}", saved)
    save_npz(f"saved.{TAG}.npz", saved)
    if MULTI:  # mhe_jax.train.Checkpointer (fit's checkpoints) with a multi-process state
        try:
            with Checkpointer(OUT / "checkpointer") as ck:
                ck.save(1, model, opt)
            report["checkpointer_error"] = None
        except Exception as e:  # noqa: BLE001 - reported to the parent
            report["checkpointer_error"] = f"{type(e).__name__}: {e}"[:500]
    if PID == 0:
        mark(f"ckpt_{SIDE}.done")

    phase(f"wait for ckpt_{OTHER}")
    wait_for(OUT / f"ckpt_{OTHER}.done")
    phase("restore")
    target = leaves(nnx, model, opt)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(OUT / f"ckpt_{OTHER}", abstract)
    save_npz(f"restored.{TAG}.npz", restored)
    report["same_sharding"] = all(
        r.sharding.is_equivalent_to(t.sharding, t.ndim)
        for r, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target), strict=True))


def kill() -> None:
    """Process 1 dies (SIGKILL) once both are here; process 0 keeps stepping."""
    phase("kill")
    x = jax.device_put(np.ones(4), NamedSharding(MESH, P("x")))
    step = jax.jit(lambda x: x + jnp.sum(x), out_shardings=NamedSharding(MESH, P("x")))
    x = step(x)
    x.block_until_ready()
    multihost_utils.sync_global_devices("kill")
    if PID == 1:
        os.kill(os.getpid(), 9)
    mark("kill.json", {"started": time.time()})
    for _ in range(10_000):
        x = step(x)
        x.block_until_ready()
        time.sleep(0.01)
    mark("kill_never.json", {"never": "process 0 ran 10000 steps without its peer"})


phase("started")
jax.config.update("jax_enable_x64", True)
energy()
jax.config.update("jax_enable_x64", False)  # the CNN runs in float32 as in CI
train_and_checkpoint()
mark(f"{TAG}.json", report)
phase("done")
if MULTI:
    kill()
