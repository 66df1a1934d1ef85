"""A user potential equal to Riesz s = 2 against the built-in kernel, side by side (issue 28 §1).

    python benchmarks/potential.py                    # writes benchmarks/potential.json
    python benchmarks/potential.py --shapes 2304x256 --rounds 11 --reps 30

``jax.jit(jax.value_and_grad(hyperspherical_energy))`` with ``s=2.0`` (built-in) and with
``potential=lambda r: r ** -2`` (the same kernel through the user-potential path), float32, in one
process: within a round the two functions alternate call by call, and each keeps the minimum of
its ``--reps`` calls (after a warm-up); the reported time is the median over rounds, and the
ratio is user / built-in of those medians (and the median of the per-round ratios). The shapes:
(2304, 256) (dense, the energy benchmark's first shape) and (512, 4096) (tiled, 256-neuron
tiles).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import mhe_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def user_riesz2(r):
    return r ** -2


def machine() -> dict:
    try:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                      if line.startswith("Model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "python": sys.version.split()[0],
            "load_start": os.getloadavg()[0]}


def measure(shape, rounds: int, reps: int | None) -> dict:
    w = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    fns = {
        "builtin": jax.jit(jax.value_and_grad(
            lambda w: mhe_jax.hyperspherical_energy(w, s=2.0))),
        "user": jax.jit(jax.value_and_grad(
            lambda w: mhe_jax.hyperspherical_energy(w, potential=user_riesz2))),
    }
    for f in fns.values():  # warm-up (compilation) and agreement
        jax.block_until_ready(f(w))
    if reps is None:  # about 0.5 s of calls per function and round
        t = time.perf_counter()
        jax.block_until_ready(fns["builtin"](w))
        reps = int(min(50, max(3, 0.5 / (time.perf_counter() - t))))
    vb, gb = fns["builtin"](w)
    vu, gu = fns["user"](w)
    agree = {"value_rel": float(abs(vu - vb) / abs(vb)),
             "grad_rel": float(jnp.max(jnp.abs(gu - gb)) / jnp.max(jnp.abs(gb)))}
    times = {k: [] for k in fns}
    for _ in range(rounds):
        best = {k: np.inf for k in fns}
        for _ in range(reps):  # the two functions alternate call by call: the same load
            for k, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f(w))
                best[k] = min(best[k], time.perf_counter() - t)
        for k in fns:
            times[k].append(best[k] * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    per_round = [u / b for u, b in zip(times["user"], times["builtin"], strict=True)]
    return {"shape": list(shape), "reps": reps, "ms_rounds": times, "ms_median": med,
            "ratio": med["user"] / med["builtin"],
            "ratio_median_of_rounds": float(np.median(per_round)), "agreement": agree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="2304x256,512x4096")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--reps", type=int, default=None,
                        help="calls per function and round (default: about 0.5 s of calls)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "potential.json"))
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    report = {"machine": machine(), "results": []}
    for shape in shapes:
        r = measure(shape, args.rounds, args.reps)
        report["results"].append(r)
        print(f"{shape}: built-in {r['ms_median']['builtin']:.2f} ms, user "
              f"{r['ms_median']['user']:.2f} ms, ratio {r['ratio']:.3f} "
              f"(per-round median {r['ratio_median_of_rounds']:.3f}); agreement "
              f"{r['agreement']}", flush=True)
    report["machine"]["load_end"] = os.getloadavg()[0]
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
