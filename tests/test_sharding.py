"""Sharding stability of the regularizer (issue 27 §1): 8 host devices, float64.

The work runs in a subprocess (``tests/_sharding_child.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax starts. Parameters get
FSDP (largest axis), tensor-parallel (neuron axis; attention q/k/v along heads) and
data-parallel (replicated) shardings; ``mhe_regularizer`` (hidden + output, half-space,
``sample_size``) chained with SGD momentum, and ``layer_energies``, run under ``jax.jit``;
on the tiled path with ``mesh_axis=`` (the ring) and without.
The figures quoted in docs/scaling.md are the ones these tests print and bound.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mhe_jax
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_sharding_child.py")


def _run(part: str, tmp_path) -> dict:
    env = helpers.eight_cpu_devices_env()
    out = tmp_path / f"{part}.json"
    proc = subprocess.run([sys.executable, str(CHILD), part, str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    print(json.dumps(report, indent=1))
    return report


def _count(entry: dict, op: str) -> int:
    return len(entry["collectives"][op])


@pytest.fixture(scope="module")
def dense(tmp_path_factory) -> dict:
    return helpers.once_per_session(tmp_path_factory, "sharding_dense",
                                    lambda: _run("dense", tmp_path_factory.mktemp("dense")))


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> dict:
    return helpers.once_per_session(tmp_path_factory, "sharding_tiled",
                                    lambda: _run("tiled", tmp_path_factory.mktemp("tiled")))


@pytest.mark.parametrize("kind", ["dp", "fsdp", "tp"])
def test_dense_path_equals_unsharded_and_keeps_shardings(dense, kind):
    """Updates, momentum and energies equal the unsharded ones (float64, to rounding);
    ``init`` works from abstract shapes; every update and momentum leaf (eager ``init`` and
    after the step) keeps its parameter's sharding; the energies are replicated scalars."""
    r = dense[f"dense_{kind}"]
    assert r["err_updates"] < 1e-12 and r["err_state"] < 1e-12, r
    assert r["err_energies"] < 1e-12, r
    assert r["init_from_abstract"] and r["count"] == 1
    assert r["lost_updates"] == [] and r["lost_trace_init"] == [] and r["lost_trace"] == [], r
    assert r["energies_replicated"]


def test_dense_path_collectives(dense):
    """The collectives of the compiled regularizer step, read from the HLO text.

    Data parallel: none at all (every device computes the replicated update). FSDP: only
    all-reduces (partial Gram products of the layers sharded along their input axis, and the
    ``sample_size`` columns), never an all-gather of a layer. Tensor parallel: the sampled
    hidden layers move only their ``sample_size`` columns (a fused all-reduce); the only float
    all-gather is the full-space output layer (64 × 16), whose Gram needs all its neurons."""
    dp, fsdp, tp = (dense[f"dense_{k}"] for k in ("dp", "fsdp", "tp"))
    assert all(v == [] for v in dp["collectives"].values()), dp["collectives"]
    assert _count(fsdp, "all-gather") == 0 and _count(fsdp, "all-reduce") > 0
    gathered = sorted(t.split("{")[0] for t in tp["collectives"]["all-gather"]
                      if t.startswith("f64"))  # (index vectors of the energy core aside)
    assert gathered == ["f64[16]", "f64[64,16]"], tp["collectives"]
    assert _count(tp, "all-reduce") >= 1
    # no path all-gathers the optimizer state or a gradient: the outputs stay sharded (above)
    for r in (fsdp, tp):
        assert _count(r, "collective-permute") == 0 and _count(r, "all-to-all") == 0


def test_jit_init_without_out_shardings_loses_the_sharding(dense):
    """Documented pitfall (docs/scaling.md): ``jax.jit(tx.init)(params)`` without
    ``out_shardings`` puts optax's zero momentum on one device (jit's default placement of
    outputs that depend on no input value); eager ``tx.init`` keeps each leaf's sharding."""
    for kind in ("dp", "fsdp", "tp"):
        lost = dense[f"dense_{kind}"]["lost_trace_jit_init"]
        assert lost and all("SingleDeviceSharding" in x for x in lost), lost


def _block_and_tile_bound(ref: dict) -> int:
    """Bytes: 6 x (own block of N/8 neurons + one N/8 x N/8 tile), the ring's O(N·d/P + (N/P)²)."""
    d, n = ref["shape"]
    return 6 * 8 * (n * d // 8 + (n // 8) ** 2)


def test_tiled_regularizer_memory_is_per_device(tiled):
    """Issue 27: a (128, 2048) float64 layer with its neurons sharded over 8 devices (tensor
    parallel; FSDP too, its largest axis is the neuron axis), ``mhe_regularizer(block_size=256,
    mesh_axis="x")`` under ``jax.jit``: the update equals the unsharded one to float64 rounding
    and keeps the layer's sharding, the compiled program's temporary memory per device is
    O(N·d/P + (N/P)²) (at most a quarter of the unsharded program's), and its only
    collectives are the ring's 5 collective-permutes of a (128, 256) block or force buffer
    (3 scanned hops, the opposite block, the buffers sent home): no all-gather of the layer."""
    ref, r = tiled["tiled_unsharded"], tiled["ring_tp"]
    assert r["init"] is None, r["init"]  # neither a warning nor an error
    assert r["err_updates"] < 1e-12 and r["lost_updates"] == [], r
    assert r["memory"]["temp"] <= min(_block_and_tile_bound(ref), ref["memory"]["temp"] // 4), (
        r["memory"], ref["memory"])
    assert {k: v for k, v in r["collectives"].items() if v} == {
        "collective-permute": ["f64[128,256]{1,0}"] * 5}, r["collectives"]


def test_tiled_regularizer_ring_other_shardings(tiled):
    """The same layer sharded along its input axis (FSDP of a layer with more inputs than
    neurons): one all-to-all re-shards it to its neurons and one brings the gradient back, then
    the ring, nothing else; memory per device O(N·d/P + (N/P)²), update exact and sharded like
    the layer.
    Replicated (data parallel): ``init`` refuses ``mesh_axis`` (the ring would hand back an
    update sharded along the neurons), and without it the tiled path runs on every device
    with no collective at all."""
    ref, r = tiled["tiled_unsharded"], tiled["ring_d_sharded"]
    assert r["init"] is None and r["err_updates"] < 1e-12 and r["lost_updates"] == [], r
    assert r["memory"]["temp"] <= min(_block_and_tile_bound(ref), ref["memory"]["temp"] // 4)
    # the column scales and tangent projection run on the re-sharded whole columns: no
    # all-gather or all-reduce of the column norms (a second all-to-all before)
    assert {k: len(v) for k, v in r["collectives"].items() if v} == {
        "collective-permute": 5, "all-to-all": 2}, r["collectives"]
    assert tiled["ring_dp"] == {"init": tiled["ring_dp"]["init"]}
    assert "replicated over that axis" in tiled["ring_dp"]["init"], tiled["ring_dp"]
    dp = tiled["tiled_dp"]
    assert dp["err_updates"] < 1e-12 and dp["lost_updates"] == [], dp
    assert all(v == [] for v in dp["collectives"].values()), dp["collectives"]


def test_tiled_regularizer_without_mesh_axis_warns_and_gathers(tiled):
    """Without ``mesh_axis`` the tiled path is exact under every sharding, but for a layer
    sharded along its neurons it all-gathers the layer (``f64[128,2048]``) on every device:
    ``init`` warns and names the option."""
    for kind in ("tp", "d_sharded", "dp"):
        r = tiled[f"tiled_{kind}"]
        assert r["err_updates"] < 1e-12 and r["lost_updates"] == [], r
    tp = tiled["tiled_tp"]
    assert "mesh_axis='x'" in tp["init"], tp["init"]
    assert tiled["tiled_d_sharded"]["init"] is None and tiled["tiled_dp"]["init"] is None
    assert "f64[128,2048]{0,1}" in tp["collectives"]["all-gather"], tp["collectives"]


def test_ring_every_layer_kind(tiled):
    """``mesh_axis="x"`` with ``block_size=8`` (every layer of the dense part on the tiled
    path, so through the ring), tensor parallel: conv, Dense, attention q/k/v (neurons =
    heads x head_dim), ``sample_size=24`` and the full-space output layer; the updates and
    SGD momentum equal the unsharded ones to float64 rounding and keep their parameters'
    shardings."""
    r = tiled["ring_small_tp"]
    assert r["err_updates"] < 1e-12 and r["err_state"] < 1e-12, r
    assert r["lost_updates"] == [] and r["lost_trace"] == [], r
    assert _count(r, "collective-permute") > 0


# ------------------------------------------------------------------ mesh_axis= in this process


def _one_device_params(axis: str = "x", axis_type=None):
    kind = jax.sharding.AxisType.Auto if axis_type is None else axis_type
    mesh = jax.make_mesh((1,), (axis,), axis_types=(kind,), devices=jax.devices()[:1])
    w = jnp.asarray(np.random.default_rng(0).standard_normal((6, 40)))
    return {"Dense_0": {"kernel": jax.device_put(w, NamedSharding(mesh, P(None, axis)))}}


def _tx(**kw):
    return mhe_jax.mhe_regularizer(1.0, spec=mhe_jax.EnergySpec(block_size=8), **kw)


def test_mesh_axis_errors_name_the_argument():
    """A mesh_axis that is not a str raises at construction; a layer on a mesh without that
    axis, or with it Explicit, raises at ``init`` (and in ``mhe_penalty``), naming
    ``mesh_axis`` and the layer."""
    with pytest.raises(TypeError, match="mesh_axis must be the name of a mesh axis"):
        _tx(mesh_axis=("x",))
    with pytest.raises(TypeError, match="mesh_axis"):
        mhe_jax.mhe_penalty({"Dense_0": {"kernel": jnp.eye(3)}}, 1.0, mesh_axis=0)
    params = _one_device_params("y")
    with pytest.raises(ValueError, match=r"mesh_axis='x' is not an axis of the mesh of layer "
                       r"'Dense_0/kernel' \(\{'y': 1\}\)"):
        _tx(mesh_axis="x").init(params)
    with pytest.raises(ValueError, match="mesh_axis='x' is not an axis"):
        mhe_jax.mhe_penalty(params, 1.0, spec=mhe_jax.EnergySpec(block_size=8), mesh_axis="x")
    explicit = _one_device_params("x", jax.sharding.AxisType.Explicit)
    with pytest.raises(ValueError, match="mesh_axis='x' is an Explicit axis"):
        _tx(mesh_axis="x").init(explicit)


def test_mesh_axis_with_one_device_is_the_plain_path():
    """An axis of one device needs no ring: the update is bit-identical to the one without
    ``mesh_axis``."""
    params = _one_device_params()
    zero = jax.tree.map(jnp.zeros_like, params)
    ring, plain = _tx(mesh_axis="x"), _tx()
    want = jax.jit(plain.update)(zero, plain.init(params), params)[0]["Dense_0"]["kernel"]
    got = jax.jit(ring.update)(zero, ring.init(params), params)[0]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(got, want)


def test_ring_tiles_in_row_blocks():
    """Each ring step's ``N/P × N/P`` tile is computed ``block_size`` rows at a time (default
    256), so its temporary memory is ``O(block·N/P)``: here one device holding 2048 neurons
    (float64), against ``block_size=2048`` (the whole tile at once); same value and gradient."""
    mesh = jax.make_mesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=jax.devices()[:1])
    w = jnp.asarray(np.random.default_rng(1).standard_normal((16, 2048)))
    out, temp = {}, {}
    for block in (None, 2048):
        f = jax.jit(jax.value_and_grad(lambda w, block=block: mhe_jax.sharded_hyperspherical_energy(
            w, mesh, "x", s=1.0, block_size=block)))
        compiled = f.lower(w).compile()
        out[block], temp[block] = compiled(w), compiled.memory_analysis().temp_size_in_bytes
    assert temp[None] * 3 < temp[2048], temp  # 256 of 2048 rows
    np.testing.assert_allclose(out[None][0], out[2048][0], rtol=1e-13)
    np.testing.assert_allclose(out[None][1], out[2048][1], rtol=1e-12, atol=1e-18)
