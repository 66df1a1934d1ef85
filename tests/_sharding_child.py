"""Child of tests/test_sharding.py: run with 8 host devices (XLA_FLAGS set by the parent).

Builds float64 parameters with FSDP / tensor-parallel / data-parallel shardings, runs
``mhe_regularizer`` (chained with SGD momentum, so the optimizer state has a leaf per parameter;
on the tiled path with and without ``mesh_axis=``) and ``layer_energies`` under ``jax.jit``,
and writes a JSON report: errors against the unsharded
computation, which leaves lost their parameter's sharding, the collectives of each compiled
program (counted in the HLO text, with their operand shapes) and ``memory_analysis()`` figures.
Usage: ``python tests/_sharding_child.py {dense,tiled} OUT.json``.
"""

from __future__ import annotations

import json
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

jax.config.update("jax_enable_x64", True)

import mhe_jax  # noqa: E402

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "reduce-scatter", "all-to-all")
assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
rng = np.random.default_rng(0)


def collectives(compiled) -> dict[str, list[str]]:
    """``{op: [result type, ...]}`` of the collectives in the compiled (partitioned) HLO."""
    out: dict[str, list[str]] = {k: [] for k in COLLECTIVES}
    for line in compiled.as_text().splitlines():
        m = re.search(r"=\s+(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
        if m:
            out[m.group(2)].append(m.group(1))
    return out


def memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    return {"temp": int(m.temp_size_in_bytes), "argument": int(m.argument_size_in_bytes),
            "output": int(m.output_size_in_bytes)}


def make(shapes):
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s)), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def spec_for(path, leaf, kind: str) -> P:
    """FSDP: the largest axis; TP: the neuron axis (attention q/k/v: heads); DP: replicated."""
    names = [getattr(k, "key", None) for k in path]
    if kind == "dp" or leaf.ndim == 1:
        return P()
    axes: list[str | None] = [None] * leaf.ndim
    if kind == "fsdp":
        axes[int(np.argmax(leaf.shape))] = "x"
    elif names[-2] in ("query", "key", "value"):  # (in, heads, head_dim): along heads
        axes[1] = "x"
    else:  # Dense / conv kernels (..., out): along the neurons
        axes[-1] = "x"
    return P(*axes)


def shardings(params, kind):
    return jax.tree_util.tree_map_with_path(
        lambda p, leaf: NamedSharding(mesh, spec_for(p, leaf, kind)), params)


def rel_err(a, b) -> float:
    errs = [float(jnp.max(jnp.abs(x - y))) / max(float(jnp.max(jnp.abs(y))), 1e-300)
            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
    return max(errs)


def lost(tree, params) -> list[str]:
    """Paths of the array leaves of ``tree`` (same structure as params) whose sharding is not
    that of their parameter."""
    bad = []
    for (path, x), p in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                            jax.tree.leaves(params), strict=True):
        if not x.sharding.is_equivalent_to(p.sharding, p.ndim):
            got = getattr(x.sharding, "spec", type(x.sharding).__name__)
            bad.append(f"{jax.tree_util.keystr(path)}: {got} (param {p.sharding.spec})")
    return bad


report: dict = {}
PART = sys.argv[1]

# ------------------------------------------------------------ dense path (every layer <= 1024)
SHAPES = {"conv": {"kernel": (3, 3, 8, 32), "bias": (32,)},
          "Dense_0": {"kernel": (96, 32), "bias": (32,)},
          "Dense_1": {"kernel": (32, 64)},
          "attention": {"query": {"kernel": (32, 8, 4)}, "key": {"kernel": (32, 8, 4)},
                        "value": {"kernel": (32, 8, 4)}},
          "head": {"kernel": (64, 16), "bias": (16,)}}
params = make(SHAPES)
grads = make(SHAPES)
tx = optax.chain(
    mhe_jax.mhe_regularizer(1.0, 2.0, output="head", half_space=True, sample_size=24, seed=3),
    optax.sgd(0.1, momentum=0.9))


def step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return updates, state


def energies(params):
    return mhe_jax.layer_energies(params, output="head", half_space=True)


ref_state = tx.init(params)
if PART != "dense":
    kinds = ()
else:
    kinds = ("dp", "fsdp", "tp")
ref_updates = ref_new_state = ref_energies = None
if kinds:
    ref_compiled = jax.jit(step).lower(grads, ref_state, params).compile()
    ref_updates, ref_new_state = ref_compiled(grads, ref_state, params)
    ref_energies = jax.jit(energies)(params)
    report["dense_unsharded"] = {"memory": memory(ref_compiled)}
for kind in kinds:
    sh = shardings(params, kind)
    p = jax.device_put(params, sh)
    g = jax.device_put(grads, sh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            params, sh)
    state_shapes = jax.eval_shape(tx.init, abstract)  # init from abstract shapes
    jit_init_lost = lost(jax.jit(tx.init)(p)[1][0].trace, p)
    state = tx.init(p)  # eager init
    same_structure = (jax.tree.structure(state_shapes) == jax.tree.structure(state) and all(
        a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(jax.tree.leaves(state_shapes), jax.tree.leaves(state), strict=True)))
    trace0 = state[1][0].trace
    compiled = jax.jit(step).lower(g, state, p).compile()
    updates, new_state = compiled(g, state, p)
    e_compiled = jax.jit(energies).lower(p).compile()
    e = e_compiled(p)
    report[f"dense_{kind}"] = {
        "err_updates": rel_err(updates, ref_updates),
        "err_state": rel_err(new_state[1][0].trace, ref_new_state[1][0].trace),
        "err_energies": rel_err(e, ref_energies),
        "count": int(new_state[0].count),
        "init_from_abstract": bool(same_structure),
        "lost_updates": lost(updates, p),
        "lost_trace_init": lost(trace0, p),
        "lost_trace_jit_init": jit_init_lost,
        "lost_trace": lost(new_state[1][0].trace, p),
        "energies_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(e)),
        "collectives": collectives(compiled),
        "collectives_energies": collectives(e_compiled),
        "memory": memory(compiled),
    }

# ------------------------------------------------------------ tiled path (block_size=)
D, N, BLOCK = 128, 2048, 256
big = {"Dense_0": {"kernel": jnp.asarray(rng.standard_normal((D, N)))}}
big_g = jax.tree.map(jnp.zeros_like, big)
TILED = mhe_jax.EnergySpec(half_space=True, block_size=BLOCK)


def quiet(make):
    """One hidden layer and no output layer: half-space on purpose (no warning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "half_space=True with output=None")
        return make()


tiled_tx = quiet(lambda: mhe_jax.mhe_regularizer(1.0, spec=TILED))
# the fix of issue 27: the tiled-path layers sharded over "x" go through the ring
ring_tx = quiet(lambda: mhe_jax.mhe_regularizer(1.0, spec=TILED, mesh_axis="x"))


def init(tx, p) -> tuple:
    """Eager ``init``: (state, the warning or the error it gave, as text)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            state = tx.init(p)
        except ValueError as e:
            return None, f"ValueError: {e}"
    return state, "; ".join(str(w.message) for w in seen) or None


def run_update(tx, g, p, ref) -> dict:
    state, said = init(tx, p)
    if state is None:
        return {"init": said}
    compiled = jax.jit(tx.update).lower(g, state, p).compile()
    out = compiled(g, state, p)[0]
    return {"init": said, "err_updates": rel_err(out, ref), "lost_updates": lost(out, p),
            "collectives": collectives(compiled), "memory": memory(compiled)}


if PART == "tiled":
    c_big = jax.jit(tiled_tx.update).lower(big_g, tiled_tx.init(big), big).compile()
    ref_big = c_big(big_g, tiled_tx.init(big), big)[0]
    report["tiled_unsharded"] = {"memory": memory(c_big), "collectives": collectives(c_big),
                                 "layer_bytes": D * N * 8, "shape": [D, N], "block_size": BLOCK}
    # neurons over "x" (tensor parallel, and FSDP: the largest axis of (128, 2048) is the
    # neuron axis), the input axis over "x" (FSDP of a layer with more inputs than neurons),
    # and replicated (data parallel)
    for kind, spec in (("tp", P(None, "x")), ("d_sharded", P("x", None)), ("dp", P())):
        sh = {"Dense_0": {"kernel": NamedSharding(mesh, spec)}}
        p = jax.device_put(big, sh)
        g = jax.device_put(big_g, sh)
        report[f"tiled_{kind}"] = run_update(tiled_tx, g, p, ref_big)
        report[f"ring_{kind}"] = run_update(ring_tx, g, p, ref_big)

    # every layer kind of the dense part through the ring (block_size=8 puts them on the
    # tiled path): conv reshape, attention heads, sample_size, the full-space output layer,
    # SGD momentum; tensor parallel (input-axis sharding: the big layer above)
    small_spec = mhe_jax.EnergySpec(half_space=True, sample_size=24, block_size=8)

    def small_tx(**kw):
        return optax.chain(mhe_jax.mhe_regularizer(1.0, 2.0, output="head", spec=small_spec,
                                                   seed=3, **kw), optax.sgd(0.1, momentum=0.9))

    ref_tx = small_tx()
    ref_u, ref_s = jax.jit(ref_tx.update)(grads, ref_tx.init(params), params)
    for kind in ("tp",):
        tx = small_tx(mesh_axis="x")
        sh = shardings(params, kind)
        p, g = jax.device_put(params, sh), jax.device_put(grads, sh)
        state = tx.init(p)
        compiled = jax.jit(tx.update).lower(g, state, p).compile()
        u, new_state = compiled(g, state, p)
        report[f"ring_small_{kind}"] = {
            "err_updates": rel_err(u, ref_u),
            "err_state": rel_err(new_state[1][0].trace, ref_s[1][0].trace),
            "lost_updates": lost(u, p), "lost_trace": lost(new_state[1][0].trace, p),
            "collectives": collectives(compiled),
        }

json.dump(report, open(sys.argv[2], "w"), indent=1)
