"""Child of tests/test_potential.py: the ring of ``sharded_hyperspherical_energy`` on 8 host
devices (XLA_FLAGS set by the parent) with user potentials and grouped pairs, float64.

Prints one JSON line of worst relative errors (value and gradient) against the built-in kernel,
the single-device energy and the NumPy brute force of ``tests/pair_reference.py``.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

jax.config.update("jax_enable_x64", True)

import mhe_jax  # noqa: E402
from tests import pair_reference as ref  # noqa: E402

assert jax.device_count() == 8, jax.devices()
devices = np.array(jax.devices())
mesh8 = Mesh(devices, ("x",))
mesh3 = Mesh(devices[:3], ("x",))
rng = np.random.default_rng(0)
w = jnp.asarray(rng.standard_normal((5, 13)))  # 13 neurons: padded on 8 and on 3 devices
ids = jnp.asarray([0, 0, 1, 2, 2, 2, 1, 3, 0, 4, 1, 2, 2])  # a group of one (4)
key = jax.random.key(2)


def vg(fn, w):
    return jax.jit(jax.value_and_grad(fn))(w)


def err(a, b) -> float:
    (va, ga), (vb, gb) = a, b
    return max(abs(float(va - vb)) / abs(float(vb)),
               float(jnp.max(jnp.abs(ga - gb)) / jnp.max(jnp.abs(gb))))


def ring(mesh, **kw):
    return lambda w: mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", **kw)


def single(**kw):
    return lambda w: mhe_jax.hyperspherical_energy(w, **kw)


out = {"riesz2_vs_builtin": 0.0, "riesz2_vs_single": 0.0, "gaussian_vs_single": 0.0,
       "riesz2_ref": 0.0, "groups_vs_single": 0.0, "groups_ref": 0.0}
for distance, half in (("euclidean", False), ("angular", True)):
    kw = dict(distance=distance, half_space=half)
    user = vg(ring(mesh8, potential=lambda r: r ** -2, **kw), w)
    out["riesz2_vs_builtin"] = max(out["riesz2_vs_builtin"], err(user, vg(ring(mesh8, **kw), w)))
    out["riesz2_vs_single"] = max(out["riesz2_vs_single"], err(user, vg(single(**kw), w)))
    want = ref.np_mean_potential(np.asarray(w), lambda r: r ** -2, **kw)
    out["riesz2_ref"] = max(out["riesz2_ref"], abs(float(user[0]) - want) / want)
gauss = dict(potential=lambda r: jnp.exp(-1.5 * r ** 2), half_space=True, min_distance=0.3)
out["gaussian_vs_single"] = err(vg(ring(mesh3, **gauss), w), vg(single(**gauss), w))

for mesh, kw in ((mesh8, dict(groups=ids)),
                 (mesh3, dict(groups=ids, pairs="across", half_space=True)),
                 (mesh8, dict(groups=ids, half_space=True, distance="angular", s=1.0))):
    got = vg(ring(mesh, **kw), w)
    out["groups_vs_single"] = max(out["groups_vs_single"], err(got, vg(single(**kw), w)))
    s = kw.pop("s", 2.0)
    want = ref.np_mean_potential(np.asarray(w), lambda r, s=s: r ** -s, **kw)
    out["groups_ref"] = max(out["groups_ref"], abs(float(got[0]) - want) / want)
# sampling: the ids are drawn with the columns (the same key as one device), also where the
# sample needs padding (9 of 13 on 8 devices); row blocks of 1 (each visiting tile in rows,
# with the ids of its rows sliced).
for kw in (dict(groups=ids, pairs="across", sample_size=8, key=key),
           dict(groups=ids, sample_size=9, key=key, half_space=True),
           dict(groups=ids, pairs="across", block_size=1),
           dict(groups=ids, block_size=1, half_space=True, distance="angular")):
    out["groups_vs_single"] = max(out["groups_vs_single"],
                                  err(vg(ring(mesh8 if "key" in kw else mesh3, **kw), w),
                                      vg(single(**kw), w)))
# the regularizer: groups="heads" on an attention kernel (in, heads, head_dim) sharded along
# its heads, mesh_axis="x" (block_size below N, so on the ring's path), equals one device.
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

q = jnp.asarray(rng.standard_normal((6, 8, 3)))
params = {"attn": {"query": {"kernel": q}}, "head": {"kernel": jnp.asarray(
    rng.standard_normal((24, 5)))}}
placed = jax.device_put(params, {
    "attn": {"query": {"kernel": NamedSharding(mesh8, PartitionSpec(None, "x", None))}},
    "head": {"kernel": NamedSharding(mesh8, PartitionSpec("x", None))}})
opts = dict(output="head", spec=mhe_jax.EnergySpec(groups="heads", half_space=True, block_size=4))
reg_ring = mhe_jax.mhe_regularizer(1.0, 1.0, mesh_axis="x", **opts)
reg_one = mhe_jax.mhe_regularizer(1.0, 1.0, **opts)
zeros = jax.tree.map(jnp.zeros_like, params)
u_ring = jax.jit(reg_ring.update)(jax.tree.map(jnp.zeros_like, placed), reg_ring.init(placed),
                                  placed)[0]
u_one = reg_one.update(zeros, reg_one.init(params), params)[0]
out["heads_regularizer_vs_single"] = max(
    float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
    for a, b in zip(jax.tree.leaves(u_ring), jax.tree.leaves(u_one), strict=True))
out["heads_regularizer_moved"] = float(jnp.max(jnp.abs(u_one["attn"]["query"]["kernel"])))
out["heads_regularizer_sharding"] = str(u_ring["attn"]["query"]["kernel"].sharding.spec)
# no pair counts: 0 with a zero gradient (all singletons, within)
v, g = vg(ring(mesh3, groups=jnp.arange(13)), w)
out["groups_empty"] = [float(v), float(jnp.max(jnp.abs(g)))]
assert all(math.isfinite(x) for x in out["groups_empty"])
print(json.dumps(out))
