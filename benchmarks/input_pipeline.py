"""Input pipeline + augmentation alone, steps/s: host batches vs the on-device stream.

    python benchmarks/input_pipeline.py [--n 50000] [--batch 128] [--steps 200] [--reps 5]

CIFAR-sized synthetic data (``n`` x 32 x 32 x 3 uint8). Per step, each path produces one
batch and runs the training step's input part, ``normalize(augment_batch(key, images))`` (pad 4,
random crop, random flip) jitted, and nothing else:

- ``host``: :func:`mhe_jax.train.epoch_batches` without ``put`` (NumPy fancy indexing on the
  host) and ``jax.device_put`` of each batch (the host-to-device copy every step);
- ``device``: ``epoch_batches(..., put=jax.device_put)``: the arrays placed on the device once,
  the order uploaded once per epoch, a jitted take per step.

Each rep times ``steps`` consecutive steps (the stream crosses epoch boundaries as in training)
after ``--warmup`` steps, blocking on the last output; the median over reps is reported. Both
paths yield the same batches (tests/test_device_path.py). Writes ``benchmarks/input_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def bench(n: int = 50000, batch: int = 128, steps: int = 200, reps: int = 5,
          warmup: int = 20, augment: bool = True, log=print) -> dict:
    """Median steps/s of the host and the device path (see the module docstring)."""
    import jax
    import numpy as np

    from mhe_jax.data import augment_batch, normalize
    from mhe_jax.train import epoch_batches

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.int32)
    key = jax.random.key(0)

    @jax.jit
    def inputs(images, labels, count):
        if augment:
            images = augment_batch(jax.random.fold_in(key, count), images, 4, True)
        return normalize(images), labels

    def host_stream():
        for xb, yb in epoch_batches(x, y, batch_size=batch, seed=0):
            yield jax.device_put(xb), jax.device_put(yb)

    def device_stream():
        return epoch_batches(x, y, batch_size=batch, seed=0, put=jax.device_put)

    out = {}
    for name, make in (("host", host_stream), ("device", device_stream)):
        stream = make()
        count = jax.device_put(np.int32(0))
        last = None
        for _ in range(warmup):
            last = inputs(*next(stream), count)
            count = count + 1
        jax.block_until_ready(last)
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(steps):
                last = inputs(*next(stream), count)
                count = count + 1
            jax.block_until_ready(last)
            rates.append(steps / (time.perf_counter() - t0))
        out[name] = {"steps_per_second": statistics.median(rates), "reps": rates}
        log(f"{name:6}: {out[name]['steps_per_second']:8.1f} steps/s "
            f"(reps {', '.join(f'{r:.0f}' for r in rates)})")
    out["speedup"] = out["device"]["steps_per_second"] / out["host"]["steps_per_second"]
    return {"n": n, "batch": batch, "steps": steps, "reps_count": reps, "warmup": warmup,
            "augment": augment, **out}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "input_pipeline.json"))
    args = p.parse_args(argv)
    import jax

    from mhe_jax.experiments.runner import machine

    result = {"machine": {**machine(), "backend": jax.default_backend(),
                          "cpu_count": os.cpu_count()}}
    for augment in (True, False):
        print(f"## augment={augment}")
        result["augment" if augment else "no_augment"] = bench(
            args.n, args.batch, args.steps, args.reps, args.warmup, augment)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
