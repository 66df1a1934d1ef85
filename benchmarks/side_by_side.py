"""Jitted value+grad of ``hyperspherical_energy`` (s = 2) for several source trees in one process.

    git worktree add /tmp/bdec18e bdec18e
    taskset -c 0 python benchmarks/side_by_side.py /tmp/bdec18e,. 2304x256 [ROUNDS] [CALLS]

Each tree's ``mhe_jax`` is imported in turn (``sys.modules`` cleared); rounds alternate between
the trees (default 7 rounds of 30 calls, after two warm-up calls); per round the minimum of the
calls, of the wall clock and of the process CPU time (less sensitive to other processes on a
shared machine); prints each round and the medians over rounds, with the ratio to the first tree.
"""

import importlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

paths = sys.argv[1].split(",")
shape = tuple(int(x) for x in sys.argv[2].split("x")) if len(sys.argv) > 2 else (2304, 256)
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 7
calls = int(sys.argv[4]) if len(sys.argv) > 4 else 30
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
    jax.block_until_ready(f(w))
wall = {p: [] for p in paths}
cpu = {p: [] for p in paths}
for _ in range(rounds):
    for p, f in fns.items():
        tw, tc = [], []
        for _ in range(calls):
            c = time.process_time()
            t = time.perf_counter()
            jax.block_until_ready(f(w))
            tw.append(time.perf_counter() - t)
            tc.append(time.process_time() - c)
        wall[p].append(np.min(tw) * 1e3)
        cpu[p].append(np.min(tc) * 1e3)
first = paths[0]
for p in paths:
    rounds_txt = " ".join(f"{t:.2f}" for t in wall[p])
    print(f"{p} {mods[p].__file__}\n  wall {rounds_txt}\n  wall median {np.median(wall[p]):.2f} ms"
          f" ({np.median(wall[p]) / np.median(wall[first]):.3f}x), CPU median"
          f" {np.median(cpu[p]):.2f} ms ({np.median(cpu[p]) / np.median(cpu[first]):.3f}x)")
