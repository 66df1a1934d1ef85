"""Sharding stability of the regularizer (issue 27 §1): 8 host devices, float64.

The work runs in a subprocess (``tests/_sharding_child.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` set before jax starts. Parameters get
FSDP (largest axis), tensor-parallel (neuron axis; attention q/k/v along heads) and
data-parallel (replicated) shardings; ``mhe_regularizer`` (hidden + output, half-space,
``sample_size``) chained with SGD momentum, and ``layer_energies``, run under ``jax.jit``.
The figures quoted in docs/scaling.md are the ones these tests print and bound.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_sharding_child.py")


def _run(part: str, tmp_path) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
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
    return _run("dense", tmp_path_factory.mktemp("dense"))


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> dict:
    return _run("tiled", tmp_path_factory.mktemp("tiled"))


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


def test_tiled_ring_recipe_memory_and_collectives(tiled):
    """A (128, 2048) float64 layer with neurons sharded over 8 devices, through
    ``penalty_transformation`` + ``sharded_hyperspherical_energy`` (the recipe of
    docs/scaling.md): equal to the unsharded tiled regularizer (``block_size=256``), only
    ``collective-permute`` (the ring), and temporary memory per device O(N·d/P + (N/P)²),
    at most a quarter of the unsharded program's."""
    ref = tiled["tiled_unsharded"]
    d, n = ref["shape"]
    bound = 6 * 8 * (n * d // 8 + (n // 8) ** 2)  # bytes: 6 x (own block + one tile)
    for kind in ("tp", "d_sharded"):
        r = tiled[f"ring_{kind}"]
        assert r["err_updates"] < 1e-12 and r["lost_updates"] == [], r
        assert r["memory"]["temp"] <= min(bound, ref["memory"]["temp"] // 4), (r, ref, bound)
        assert _count(r, "collective-permute") == 5  # 3 scanned hops (block + force), 1 + home
        assert _count(r, "all-gather") <= 1 and all(
            t.startswith("f64[2048]") for t in r["collectives"]["all-gather"])  # norms only
    # neurons sharded: nothing but the ring; input axis sharded: one all-to-all to re-shard
    assert set(k for k, v in tiled["ring_tp"]["collectives"].items() if v) == {
        "collective-permute"}
    assert _count(tiled["ring_d_sharded"], "all-to-all") == 2


def test_tiled_regularizer_equals_unsharded(tiled):
    for kind in ("tp", "d_sharded"):
        r = tiled[f"tiled_{kind}"]
        assert r["err_updates"] < 1e-12 and r["lost_updates"] == [], r


@pytest.mark.xfail(strict=True, reason="known defect (issue 27): under jit, mhe_regularizer's "
                   "tiled path all-gathers a neuron-sharded layer (f64[128,2048]) and its "
                   "cyclic extension; per-device temp stays ~0.84x the unsharded program's")
def test_tiled_regularizer_memory_is_per_device(tiled):
    ref, r = tiled["tiled_unsharded"], tiled["tiled_tp"]
    assert _count(r, "all-gather") == 0, r["collectives"]["all-gather"]
    assert r["memory"]["temp"] <= ref["memory"]["temp"] // 4
