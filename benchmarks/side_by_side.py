"""Jitted value+grad of ``hyperspherical_energy`` (s = 2) for several source trees in one process.

    git worktree add /tmp/bdec18e bdec18e
    taskset -c 0 python benchmarks/side_by_side.py /tmp/bdec18e,. 2304x256

Each tree's ``mhe_jax`` is imported in turn (``sys.modules`` cleared); rounds alternate between
the trees; per round the minimum of 30 calls after a warm-up; prints each round and the median.
"""

import importlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

paths = sys.argv[1].split(",")
shape = tuple(int(x) for x in sys.argv[2].split("x")) if len(sys.argv) > 2 else (2304, 256)
mods = {}
for p in paths:
    for k in [k for k in sys.modules if k == "mhe_jax" or k.startswith("mhe_jax.")]:
        del sys.modules[k]
    sys.path.insert(0, p)
    mods[p] = importlib.import_module("mhe_jax")
    sys.path.pop(0)
w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
fns = {p: jax.jit(jax.value_and_grad(lambda w, m=m: m.hyperspherical_energy(w, s=2.0)))
       for p, m in mods.items()}
for f in fns.values():
    jax.block_until_ready(f(w))
times = {p: [] for p in paths}
for _ in range(7):
    for p, f in fns.items():
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            jax.block_until_ready(f(w))
            ts.append(time.perf_counter() - t)
        times[p].append(np.min(ts) * 1e3)
for p in paths:
    rounds = " ".join(f"{t:.2f}" for t in times[p])
    print(p, mods[p].__file__, rounds, "median", f"{np.median(times[p]):.2f} ms")
