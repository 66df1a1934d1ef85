"""Child of tests/test_multiprocess.py: one process of a 2-process JAX run on CPU (or 1 process).

Usage: ``python tests/_multiprocess_child.py MODE COORDINATOR PROCESS_ID OUT_DIR``;
``COORDINATOR`` is ``127.0.0.1:PORT`` (2 processes, 2 host devices each, gloo collectives)
or ``single`` (this process alone, 1 device, no distributed runtime). Each process writes
``OUT_DIR/MODE.{multi,single}.<process_id>.json`` (and ``.npz`` arrays to compare).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path

MODE, COORD, PID, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
MULTI = COORD != "single"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={2 if MULTI else 1}"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", MODE == "energy")  # the CNN runs in float32 as in CI
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


TAG = f"{MODE}.{'multi' if MULTI else 'single'}.{PID}"


def write(obj: dict) -> None:
    (OUT / f"{TAG}.json").write_text(json.dumps(obj))


def host(a) -> np.ndarray:
    """The full value of a global array on this host (gathered when it is sharded)."""
    if a.is_fully_addressable:
        return np.asarray(a)
    if a.sharding.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def energy() -> None:
    """Sharded energy and regularizer over the 4 devices of both processes vs one device."""
    w = np.random.default_rng(0).standard_normal((16, 40))
    w_global = jax.device_put(w, NamedSharding(MESH, P(None, "x")))  # neurons over 4 devices
    kw = dict(s=1.0, half_space=True)
    v1, g1 = jax.jit(jax.value_and_grad(
        lambda w: mhe_jax.sharded_hyperspherical_energy(w, MESH, "x", **kw)))(w_global)
    w_local = jax.device_put(w, LOCAL)
    v0, g0 = jax.jit(jax.value_and_grad(
        lambda w: mhe_jax.hyperspherical_energy(w, **kw)))(w_local)
    with warnings.catch_warnings():  # one hidden layer and no output layer, on purpose
        warnings.simplefilter("ignore", UserWarning)
        tx = mhe_jax.mhe_regularizer(1.0, half_space="hidden")
    params = {"Dense_0": {"kernel": w_global}}

    def update(p):
        return tx.update(jax.tree.map(jnp.zeros_like, p), tx.init(p), p)[0]

    u1 = jax.jit(update)(params)["Dense_0"]["kernel"]
    u0 = jax.jit(update)({"Dense_0": {"kernel": w_local}})["Dense_0"]["kernel"]
    write({"process_count": jax.process_count(), "devices": jax.device_count(),
           "value": float(host(v1)), "value_single": float(v0),
           "grad_err": float(np.abs(host(g1) - np.asarray(g0)).max() / np.abs(g0).max()),
           "update_err": float(np.abs(host(u1) - np.asarray(u0)).max() / np.abs(u0).max()),
           "update_sharding_kept": bool(u1.sharding.is_equivalent_to(w_global.sharding, 2))})


def _cnn(put, steps=2):
    import flax.nnx as nnx

    from mhe_jax.experiments import apply_overrides, get_config
    from mhe_jax.experiments.runner import build_model, build_optimizer
    from mhe_jax.train import epoch_batches, make_steps

    cfg = apply_overrides(get_config("quickstart/mhe"),
                          ["model.widths=4,4,8", "optim.warmup_steps=0"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 10, 32).astype(np.int32)
    model = build_model(cfg, 10, 1, 8)
    opt, lr = build_optimizer(cfg, model)
    fns = make_steps(augment=True, seed=0, learning_rate=lr)
    if put is not None:
        put.replicate(model, opt)
    stream = epoch_batches(x, y, batch_size=16, seed=0, put=put or jax.device_put)
    metrics = []
    for _ in range(steps):  # the second step sees the updated BatchNorm statistics
        batch = next(stream)
        metrics.append({k: float(host(v)) for k, v in fns.train(model, opt, batch).items()})
    return nnx, model, opt, metrics


def _leaves(nnx, model, opt) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state((model, opt))))[0]
    return {jax.tree_util.keystr(p): host(v) for p, v in flat}


def train() -> None:
    """Two CNN-9 + MHE steps, data parallel over the 4 devices of both processes (global
    batch 16, 4 examples a device), against the same two steps on this process's one device."""
    from mhe_jax.train import DataParallel

    put = DataParallel(jax.devices()) if MULTI else None
    nnx, model, opt, metrics = _cnn(put)
    got = _leaves(nnx, model, opt)
    if put is not None:
        kernel = model.layers[0].conv.kernel[...]
        assert len(kernel.sharding.device_set) == DEVICES and not kernel.is_fully_addressable
    if PID != 0:  # process 0 alone computes the reference (2 CPU cores in CI)
        return write({"metrics": metrics})
    with jax.default_device(LOCAL):
        nnx, model0, opt0, metrics0 = _cnn(None)
    want = _leaves(nnx, model0, opt0)
    errs = {}
    for k in want:
        if want[k].dtype.kind == "f":
            errs[k] = float(np.abs(got[k] - want[k]).max()) / (float(np.abs(want[k]).max()) or 1)
        else:
            errs[k] = 0.0 if np.array_equal(got[k], want[k]) else float("inf")
    write({"metrics": metrics, "metrics_single": metrics0, "errs": errs})


def _state_to_save():
    """The CNN-9 + MHE train state, replicated over every device (no step: fast)."""
    from mhe_jax.train import DataParallel

    put = DataParallel(jax.devices())
    nnx, model, opt, _ = _cnn(put, steps=0)
    return nnx, model, opt, put


def ckpt_save() -> None:
    """Orbax save of the (globally replicated) state by every process, or by one."""
    import orbax.checkpoint as ocp

    nnx, model, opt, _ = _state_to_save()
    # each side saves values of its own (so a restore that returned its target would fail)
    shift = 0.25 if MULTI else -0.75
    state = jax.tree.map(
        lambda a: a * 1.5 + shift if jnp.issubdtype(a.dtype, jnp.floating) else a + 3,
        nnx.to_pure_dict(nnx.state((model, opt))))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(OUT / f"ckpt_{'multi' if MULTI else 'single'}", state)
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    np.savez(OUT / f"{TAG}.npz", **{jax.tree_util.keystr(p): host(v) for p, v in flat})
    checkpointer_error = None
    if MULTI:  # mhe_jax.train.Checkpointer (fit's checkpoints) with a multi-process state
        from mhe_jax.train import Checkpointer

        try:
            with Checkpointer(OUT / "checkpointer") as ck:
                ck.save(1, model, opt)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            checkpointer_error = f"{type(e).__name__}: {e}"[:500]
    write({"saved": True, "checkpointer_error": checkpointer_error})


def ckpt_restore() -> None:
    """Restore the other side's checkpoint into this run's sharded state; bit-exact?"""
    import orbax.checkpoint as ocp

    nnx, model, opt, _ = _state_to_save()
    target = nnx.to_pure_dict(nnx.state((model, opt)))
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), target)
    src = OUT / f"ckpt_{'single' if MULTI else 'multi'}"
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(src, abstract)
    flat = jax.tree_util.tree_flatten_with_path(restored)[0]
    np.savez(OUT / f"{TAG}.npz", **{jax.tree_util.keystr(p): host(v) for p, v in flat})
    same_sharding = all(r.sharding.is_equivalent_to(t.sharding, t.ndim) for r, t in zip(
        jax.tree.leaves(restored), jax.tree.leaves(target), strict=True))
    write({"restored": True, "same_sharding": bool(same_sharding)})


def kill() -> None:
    """Process 1 dies (SIGKILL) after the first collective; process 0 keeps stepping."""
    x = jax.device_put(np.ones(4), NamedSharding(MESH, P("x")))
    step = jax.jit(lambda x: x + jnp.sum(x), out_shardings=NamedSharding(MESH, P("x")))
    x = step(x)
    x.block_until_ready()
    write({"started": time.time()})
    if PID == 1:
        os.kill(os.getpid(), 9)
    for _ in range(10_000):
        x = step(x)
        x.block_until_ready()
        time.sleep(0.01)
    write({"never": "process 0 ran 10000 steps without its peer"})


{"energy": energy, "train": train, "ckpt_save": ckpt_save, "ckpt_restore": ckpt_restore,
 "kill": kill}[MODE]()
if MULTI:
    jax.distributed.shutdown()
