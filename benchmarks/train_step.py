"""Training-step overhead of MHE (issue 6, targets 4 and 5).

    python benchmarks/train_step.py              # CNN-9 64/128/256 and ResNet-32, batch 128
    python benchmarks/train_step.py --quick      # CNN-9 16/32/64 only, fewer reps (a smoke run)

One full jitted train step (augmentation, forward, backward, optimizer update) on random
CIFAR-shaped uint8 data, for each model and each regularizer:

* ``baseline``: ``chain(add_decayed_weights(5e-4), sgd(momentum 0.9))``;
* ``mhe``: + ``mhe_regularizer`` s=2 on all hidden kernels (λ_h=1) and the output layer (λ_o=10);
* ``half_mhe``: the same with half-space MHE on the hidden layers (the issue's target setting).

The optimizer is built exactly as ``python -m mhe_jax.experiments run`` builds it (the
``repro/cifar10_cnn9_full/*`` configs). The variants run interleaved in one process (rounds of
``baseline, mhe, half_mhe``), each time is the median of ``--reps`` steps after warm-up, with
``block_until_ready``. Also timed: the regularizer alone (``tx.update`` of the MHE transform on
the model's parameters), to show where the overhead goes.
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

VARIANTS = ("baseline", "mhe", "half_mhe")


def _setup(model_name, widths, method, batch, seed=0):
    import flax.nnx as nnx
    import jax
    import numpy as np

    from mhe_jax.experiments.configs import get_config
    from mhe_jax.experiments.runner import build_model, build_optimizer, build_regularizer
    from mhe_jax.train import make_steps

    cfg = get_config(f"repro/cifar10_cnn9_full/{method}").replace(
        model={"arch": model_name, "widths": widths})
    model = build_model(cfg, 10, 3, 32)
    optimizer, _ = build_optimizer(cfg, model)
    # the same transform again, timed on its own below
    reg, _ = build_regularizer(cfg.regularizer, model.output_path)
    step = make_steps(augment=True, label_smoothing=cfg.optim.label_smoothing).train
    rng = np.random.default_rng(seed)
    images = jax.numpy.asarray(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jax.numpy.asarray(rng.integers(0, 10, (batch,), dtype=np.int32))

    def run():
        out = step(model, optimizer, (images, labels))
        jax.block_until_ready(out)

    reg_only = None
    if reg is not None:
        params = nnx.state(model, nnx.Param)
        grads = jax.tree.map(jax.numpy.zeros_like, params)
        state = reg.init(params)
        update = jax.jit(lambda g, s, p: reg.update(g, s, p)[0])

        def reg_only():
            jax.block_until_ready(update(grads, state, params))

    return run, reg_only


def _median_time(fn, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(model_name, widths, batch, reps, warmup, variants=VARIANTS):
    """Median step seconds of each of ``variants`` (which must include "baseline")."""
    if "baseline" not in variants:
        raise ValueError(f"variants must include 'baseline', got {variants!r}")
    fns = {v: _setup(model_name, widths, v, batch) for v in variants}
    for v in variants:  # compile + warm-up
        for _ in range(warmup):
            fns[v][0]()
            if fns[v][1] is not None:
                fns[v][1]()
    samples = {v: [] for v in variants}
    reg_samples = {v: [] for v in variants if fns[v][1] is not None}
    for _ in range(reps):  # interleaved rounds
        for v in variants:
            samples[v].append(_median_time(fns[v][0], 1))
        for v in reg_samples:
            reg_samples[v].append(_median_time(fns[v][1], 3))
    step = {v: statistics.median(samples[v]) for v in variants}
    reg = {v: statistics.median(reg_samples[v]) for v in reg_samples}
    return {
        "model": model_name, "widths": list(widths), "batch": batch, "reps": reps,
        "step_seconds": step,
        "ratio_to_baseline": {v: step[v] / step["baseline"] for v in variants},
        "regularizer_seconds": reg,
        "regularizer_fraction_of_baseline_step": {v: reg[v] / step["baseline"] for v in reg},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "train_step.json"))
    args = p.parse_args(argv)


    if args.quick:
        cases, reps = [("cnn9", (16, 32, 64))], args.reps or 3
    else:
        cases, reps = [("cnn9", (64, 128, 256)), ("resnet32", (16, 32, 64))], args.reps or 7
    results = []
    for model_name, widths in cases:
        r = bench_model(model_name, widths, args.batch, reps, warmup=2)
        results.append(r)
        print(f"\n{model_name} {'/'.join(map(str, widths))}, batch {args.batch}, "
              f"median of {reps} steps:")
        print(f"{'variant':<10} {'step (s)':>9} {'× baseline':>11} {'regularizer alone (s)':>22}")
        for v in VARIANTS:
            reg = r["regularizer_seconds"].get(v)
            reg_txt = f"{reg:.4f}" if reg is not None else "-"
            print(f"{v:<10} {r['step_seconds'][v]:>9.3f} "
                  f"{r['ratio_to_baseline'][v]:>11.3f} {reg_txt:>22}")
    from mhe_jax.experiments.runner import machine as run_machine

    machine = {**run_machine(), "cpu_count": os.cpu_count()}
    with open(args.out, "w") as f:
        json.dump({"machine": machine, "results": results}, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
