"""Speed, memory and multi-device benchmarks of the hyperspherical energy (issue 6, targets 1-3).

    python benchmarks/energy.py                 # everything, writes benchmarks/energy.json
    python benchmarks/energy.py --quick         # smaller shapes / fewer configs, a smoke run
    python benchmarks/energy.py --only speed    # or memory, multi

Speed: ``jax.jit(jax.value_and_grad(hyperspherical_energy))`` against one jitted ``w.T @ w`` of
the same shape and against a naive port of the official TensorFlow formula (normalise with
``sqrt(Σw² + 1e-4)``, Gram, elementwise, band-part mask, plain autodiff; half-space by
concatenating ``[W, −W]``). The three functions run interleaved in one process (rounds of
``mm, ours, naive``); each time is the median of ``--reps`` runs after a warm-up, with
``block_until_ready``. Ratios are to the matmul time. Side by side with other source trees
(``--trees /tmp/bdec18e``, a ``git worktree`` of an older commit): each tree's ``mhe_jax`` is
imported in turn and its value+grad joins the same rounds (``mm, ours, tree…``); the process CPU
time of each call is recorded too (``*_cpu_s``, less sensitive to other processes than the
wall clock on a shared machine).

Memory: peak RSS (``ru_maxrss``) of a fresh Python process that computes value and gradient
once (the process baseline — interpreter, JAX, the input — is reported too).

Multi-device: ``sharded_hyperspherical_energy`` on 8 host devices
(``--xla_force_host_platform_device_count=8``, fresh process): agreement with the single-device
value and gradient in float64, and the per-device temporary memory from XLA's memory analysis.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [(2304, 256), (4608, 512), (512, 4096), (512, 10000)]
QUICK_SHAPES = [(2304, 256), (512, 2048)]
CONFIGS = list(itertools.product((0.0, 1.0, 2.0), ("euclidean", "angular"), (False, True)))
MEMORY_CASES = [  # (N, d, block_size) ; None = automatic
    (32768, 128, None),
    (16384, 128, None),
    (8192, 64, 512),
    (8192, 64, 8192),  # one tile: the dense N × N computation
]
QUICK_MEMORY_CASES = [(8192, 64, 512), (8192, 64, 8192)]


# ------------------------------------------------------------------------------------ speed


def naive_official(w, s, distance, half_space):
    """The official TF formula (wy1iu/MHE, _add_thomson_constraint) ported line by line."""
    import jax.numpy as jnp

    W = jnp.concatenate([w, -w], axis=1) if half_space else w
    n = W.shape[1]
    norm = jnp.sqrt(jnp.sum(W * W, axis=0, keepdims=True) + 1e-4)
    inner = (W.T @ W) / (norm.T @ norm)
    if distance == "euclidean":
        cross = 2.0 - 2.0 * inner + jnp.eye(n, dtype=W.dtype)
        final = -jnp.log(cross) if s == 0 else cross ** (-s / 2)
    else:
        acos = jnp.arccos(inner) / jnp.pi + 1e-4
        final = -jnp.log(acos) if s == 0 else acos ** (-s)
    final = jnp.triu(final, 1)  # tf.matrix_band_part without the diagonal
    return jnp.sum(final) / (n * (n - 1) / 2.0)


def _interleaved(fns, args, reps):
    """(wall, process CPU) medians of each function, in rounds over the functions."""
    import jax
    import numpy as np

    for f in fns:  # compile + warm-up
        jax.block_until_ready(f(*args))
        jax.block_until_ready(f(*args))
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            c0 = time.process_time()
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            wall[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return [float(np.median(t)) for t in wall], [float(np.median(t)) for t in cpu]


def import_trees(trees):
    """``{label: mhe_jax}`` for each source tree, imported in turn (``sys.modules`` cleared).

    The functions are traced later, so a tree's modules are put back in ``sys.modules`` while
    its functions are first called (:func:`_as_tree`): an import inside a function body then
    finds its own tree.
    """
    import importlib

    mods = {}
    for path in trees:
        for k in [k for k in sys.modules if k == "mhe_jax" or k.startswith("mhe_jax.")]:
            del sys.modules[k]
        sys.path.insert(0, path)
        try:
            mod = importlib.import_module("mhe_jax")
        finally:
            sys.path.pop(0)
        label = os.path.basename(os.path.abspath(path))
        mods[label] = (mod, {k: v for k, v in sys.modules.items()
                             if k == "mhe_jax" or k.startswith("mhe_jax.")})
    return mods


def _as_tree(tree_modules, f):
    def call(*args):
        sys.modules.update(tree_modules)
        return f(*args)
    return call


def bench_speed(shapes, configs, reps, naive=True, log=print, trees=None):
    import jax
    import jax.numpy as jnp

    import mhe_jax

    others = import_trees(trees) if trees else {}
    rows = []
    for d, n in shapes:
        w = jax.random.normal(jax.random.key(0), (d, n), jnp.float32)
        mm = jax.jit(lambda w: w.T @ w)
        for s, distance, half in configs:
            def vg(mod, s=s, distance=distance, half=half):
                return jax.jit(jax.value_and_grad(lambda x: mod.hyperspherical_energy(
                    x, s=s, distance=distance, half_space=half)))

            fns = [mm, vg(mhe_jax) if not others else None]
            labels = []
            for label, (mod, modules) in others.items():
                labels.append(label)
                fns.append(_as_tree(modules, vg(mod)))
            fns = [f for f in fns if f is not None]
            if naive:
                fns.append(jax.jit(jax.value_and_grad(
                    lambda w, s=s, distance=distance, half=half: naive_official(
                        w, s, distance, half))))
            ts, cs = _interleaved(fns, (w,), reps)
            ours = len(labels) or 1  # side by side: the last tree is "ours"
            row = {
                "d": d, "N": n, "s": s, "distance": distance, "half_space": half,
                "matmul_s": ts[0], "matmul_cpu_s": cs[0], "ours_s": ts[ours],
                "ours_cpu_s": cs[ours], "ratio": ts[ours] / ts[0],
            }
            if labels:
                row["trees"] = {label: {"s": ts[1 + i], "cpu_s": cs[1 + i],
                                        "ratio": ts[1 + i] / ts[0]}
                                for i, label in enumerate(labels)}
            if naive:
                row.update(naive_s=ts[-1], naive_ratio=ts[-1] / ts[0],
                           speedup=ts[-1] / ts[ours])
            rows.append(row)
            log(_fmt_speed(row))
    return rows


def _fmt_speed(r):
    txt = (f"d={r['d']:5d} N={r['N']:6d} s={r['s']:.0f} {r['distance']:9s} "
           f"half={int(r['half_space'])}  w.T@w {r['matmul_s'] * 1e3:8.1f} ms  "
           f"ours {r['ours_s'] * 1e3:8.1f} ms ({r['ratio']:.2f}x)")
    for label, t in r.get("trees", {}).items():
        txt += (f"  {label} {t['s'] * 1e3:8.1f} ms ({t['ratio']:.2f}x,"
                f" cpu {t['cpu_s'] * 1e3:.1f} ms)")
    if "naive_s" in r:
        txt += (f"  naive {r['naive_s'] * 1e3:8.1f} ms ({r['naive_ratio']:.2f}x)"
                f"  speedup {r['speedup']:.2f}")
    return txt


# ----------------------------------------------------------------------------------- memory

_MEMORY_CHILD = r"""
import json, resource, sys
import jax, jax.numpy as jnp
import mhe_jax
n, d, block = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
block = None if block == "None" else int(block)
w = jax.random.normal(jax.random.key(0), (d, n), jnp.float32)
jax.block_until_ready(w)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
f = jax.jit(jax.value_and_grad(lambda w: mhe_jax.hyperspherical_energy(
    w, s=1.0, block_size=block)))
v, g = jax.block_until_ready(f(w))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"baseline_mb": base / 1024, "peak_mb": peak / 1024, "value": float(v),
                  "finite": bool(jnp.all(jnp.isfinite(g)))}))
"""


def measure_rss(n, d, block, timeout=1800):
    """Peak RSS (MB) of a fresh process computing value and gradient once."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(n), str(d), str(block)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(cases, log=print):
    rows = []
    for n, d, block in cases:
        t0 = time.perf_counter()
        r = measure_rss(n, d, block)
        r.update(N=n, d=d, block_size=block, seconds=time.perf_counter() - t0,
                 dense_matrix_mb=n * n * 4 / 2**20)
        rows.append(r)
        log(f"N={n:6d} d={d:4d} block={str(block):5s} peak RSS {r['peak_mb']:7.0f} MB "
            f"(process baseline {r['baseline_mb']:.0f} MB; one N x N f32 matrix "
            f"{r['dense_matrix_mb']:.0f} MB)  {r['seconds']:.0f} s")
    return rows


# ------------------------------------------------------------------------------ multi-device

_MULTI_CHILD = r"""
import json, os, sys, time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import mhe_jax
n, d = int(sys.argv[1]), int(sys.argv[2])
out = {"devices": jax.device_count(), "N": n, "d": d}
mesh = Mesh(np.array(jax.devices()), ("x",))
def single(w):
    return mhe_jax.hyperspherical_energy(w, s=1.0, half_space=True)
def sharded(w):
    return mhe_jax.sharded_hyperspherical_energy(w, mesh, "x", s=1.0, half_space=True)
# exactness in float64
jax.config.update("jax_enable_x64", True)
w64 = jax.random.normal(jax.random.key(0), (64, 1000), jnp.float64)
v0, g0 = jax.value_and_grad(single)(w64)
v1, g1 = jax.jit(jax.value_and_grad(sharded))(w64)
out["f64_value_rel_err"] = float(abs(v1 - v0) / abs(v0))
out["f64_grad_rel_err"] = float(jnp.max(jnp.abs(g1 - g0)) / jnp.max(jnp.abs(g0)))
jax.config.update("jax_enable_x64", False)
w = jax.random.normal(jax.random.key(0), (d, n), jnp.float32)
ws = jax.device_put(w, NamedSharding(mesh, P(None, "x")))
def dense(w):
    return mhe_jax.hyperspherical_energy(w, s=1.0, half_space=True, block_size=n)
for name, fn, arg in [("single_dense", jax.value_and_grad(dense), w),
                      ("single_auto", jax.value_and_grad(single), w),
                      ("sharded", jax.value_and_grad(sharded), ws)]:
    c = jax.jit(fn).lower(arg).compile()
    m = c.memory_analysis()
    out[name + "_temp_mb"] = m.temp_size_in_bytes / 2**20
    out[name + "_arg_mb"] = m.argument_size_in_bytes / 2**20
    jax.block_until_ready(c(arg))
    t0 = time.perf_counter()
    jax.block_until_ready(c(arg))
    out[name + "_s"] = time.perf_counter() - t0
print(json.dumps(out))
"""


def bench_multi(n, d, log=print):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _MULTI_CHILD, str(n), str(d)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"8 host devices, N={n} d={d}: f64 rel. error value {r['f64_value_rel_err']:.1e}, "
        f"gradient {r['f64_grad_rel_err']:.1e}; temp memory per device: sharded "
        f"{r['sharded_temp_mb']:.1f} MB vs single device dense {r['single_dense_temp_mb']:.1f} MB, "
        f"tiled {r['single_auto_temp_mb']:.1f} MB")
    return r


# ------------------------------------------------------------------------------------- main


def machine():
    import jax

    info = {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                            if line.startswith("Model name")), None)
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:  # pragma: no cover
        return None


def speed_markdown(rows) -> str:
    """The speed results as the markdown table of RESULTS.md (side by side: one column per
    tree, wall-clock ratio to the Gram product and process-CPU milliseconds)."""
    if rows and "trees" in rows[0]:
        labels = list(rows[0]["trees"])
        head = " | ".join(f"{t} ratio | {t} CPU ms" for t in labels)
        lines = ["| d | N | s | distance | half | " + head + " |",
                 "|---:|---:|---:|---|---|" + "---:|---:|" * len(labels)]
        for r in rows:
            cells = " | ".join(f"{r['trees'][t]['ratio']:.2f} | {r['trees'][t]['cpu_s'] * 1e3:.2f}"
                               for t in labels)
            lines.append(f"| {r['d']} | {r['N']} | {r['s']:.0f} | {r['distance']} "
                         f"| {r['half_space']} | {cells} |")
        return "\n".join(lines)
    lines = ["| d | N | s | distance | half | ratio to Gram | naive ratio | speed-up vs naive |",
             "|---:|---:|---:|---|---|---:|---:|---:|"]
    for r in rows:
        naive = f"{r['naive_ratio']:.2f} | {r['speedup']:.2f}" if r.get("naive_ratio") else "— | —"
        lines.append(f"| {r['d']} | {r['N']} | {r['s']:.0f} | {r['distance']} "
                     f"| {r['half_space']} | {r['ratio']:.2f} | {naive} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shapes and configs (smoke run)")
    p.add_argument("--only", choices=("speed", "memory", "multi"), action="append")
    p.add_argument("--reps", type=int, default=5, help="timed runs per function (median)")
    p.add_argument("--no-naive", action="store_true", help="skip the official-formula port")
    p.add_argument("--shape", action="append", help="d,N (repeatable); default: the issue's four")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "energy.json"))
    p.add_argument("--trees", help="speed side by side: comma-separated source trees (e.g. "
                   "/tmp/bdec18e,.), each tree's mhe_jax timed in the same rounds; the last "
                   "one is reported as 'ours'")
    p.add_argument("--table", action="store_true",
                   help="print the speed table of --out as markdown")
    args = p.parse_args(argv)
    if args.table:
        with open(args.out) as f:
            print(speed_markdown(json.load(f)["speed"]))
        return
    only = set(args.only or ("speed", "memory", "multi"))

    sys.path.insert(0, ROOT)
    result = {}
    if args.only and os.path.exists(args.out):  # a partial run keeps the other parts' results
        with open(args.out) as f:
            result = json.load(f)
    result.update({"machine": machine(), "reps": args.reps})
    for part in only:
        result[f"{part}_machine"] = result["machine"]
    print(json.dumps(result["machine"]))
    if "speed" in only:
        shapes = ([tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape
                  else QUICK_SHAPES if args.quick else SHAPES)
        configs = CONFIGS[::5] if args.quick else CONFIGS
        print("\n## speed: value_and_grad vs one w.T @ w (ratio) and the naive official port")
        trees = args.trees.split(",") if args.trees else None
        result["speed"] = bench_speed(shapes, configs, args.reps, naive=not args.no_naive,
                                      trees=trees)
    if "memory" in only:
        print("\n## memory: peak RSS of value_and_grad in a fresh process")
        result["memory"] = bench_memory(QUICK_MEMORY_CASES if args.quick else MEMORY_CASES)
    if "multi" in only:
        print("\n## multi-device (8 host devices)")
        result["multi"] = bench_multi(*((2048, 64) if args.quick else (16384, 128)))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
