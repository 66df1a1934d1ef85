"""One command for a GPU/TPU machine (issue 16 §4): energy speed, train-step overhead, Table 1.

    python benchmarks/device.py --data /path/cifar10_jpeg.npz            # ~10 min budget
    python benchmarks/device.py --data PATH --budget-minutes 60 --out benchmarks/device.json
    python benchmarks/device.py --smoke                     # CPU, tiny: ~2 CPU-minutes (CI)
    python benchmarks/device.py --smoke --methods baseline  # baseline rows only: ~1 CPU-minute

Three parts, in this order, each timed with ``block_until_ready`` after compilation:

(a) energy speed: ``jax.jit(jax.value_and_grad(hyperspherical_energy))`` against one jitted
    ``w.T @ w`` (and the naive official port) on ``benchmarks/energy.py``'s shapes
    (``energy.SHAPES``, ``energy.bench_speed``) plus ``d=512, N=65536`` (tiled automatically;
    no naive port there: its dense N × N matrices need ~50 GB).
(b) train-step overhead: ``benchmarks/train_step.py``'s ``bench_model`` (baseline / mhe /
    half_mhe) for CNN-9 64/128/256 and ResNet-32 at batch 128, plus the FLOP count of one CNN-9
    step from XLA's cost analysis and the implied step time at an assumed throughput.
(c) Table 1, CIFAR-10, CNN-9 64/128/256: ``repro/cifar10_cnn9_full/{baseline,mhe,half_mhe}``
    (the official recipe, 42.5k steps, the JPEG copy of CIFAR-10 given by ``--data``) through
    the public :func:`mhe_jax.experiments.runner.run`, with the training set on the device
    and ``steps_per_call = call_length(cfg)`` (the steps between two log / eval points, at most
    100, in one jitted ``lax.scan``: no per-step Python). The time each run may use is the budget
    left divided by the runs left; its step count is predicted from the step time measured in
    (b) (plus a fixed allowance for compilation and evaluation). If the full recipe does not
    fit, the run is SHORTENED, never cut silently: ``optim.steps``, the learning-rate
    boundaries, the warm-up and the eval / energy intervals are all scaled by the same factor
    (a complete, compressed schedule), and the row carries ``"note"`` saying so and
    ``"full_recipe": false``. A run that would get fewer than ``--min-steps`` steps is skipped
    with a note. The paper's numbers (Table 1, s = 2) are printed alongside.

Everything goes to ``--out`` (JSON) and a table on stdout. ``--smoke`` runs all three parts with
tiny sizes on whatever backend is present (digits data when ``--data`` is absent);
``--methods baseline`` (or ``baseline,mhe``) restricts (b) and (c) to those rows. Its cost on a
CPU is compilation (about ten CNN-9 train/eval programs), not the tiny steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import energy as energy_bench  # noqa: E402  (benchmarks/energy.py)
import train_step as step_bench  # noqa: E402  (benchmarks/train_step.py)

METHODS = ("baseline", "mhe", "half_mhe")
PAPER_CONFIG = {"baseline": "table1/cifar10/baseline", "mhe": "table1/cifar10/mhe/s2",
                "half_mhe": "table1/cifar10/half_mhe/s2"}
BIG_SHAPE = (512, 65536)
# Dense tensor throughput assumed for the time estimate (FLOP/s): H100 SXM / H200 TF32 dense
# ~495e12 peak; small convolutions at batch 128 reach a fraction of it.
ASSUMED_PEAK = {"h100_h200_tf32": 495e12, "h100_h200_fp32": 67e12}
ASSUMED_UTILISATION = 0.25
RUN_OVERHEAD_S = 90.0  # compilation, data loading and the evaluations of one run (c)


# ---------------------------------------------------------------------------------- (a)


def part_energy(smoke: bool, reps: int, log=print) -> list[dict]:
    configs = energy_bench.CONFIGS[::5]
    if smoke:
        return energy_bench.bench_speed([(64, 256)], configs, reps, naive=True, log=log)
    rows = energy_bench.bench_speed(energy_bench.SHAPES, configs, reps, naive=True, log=log)
    rows += energy_bench.bench_speed([BIG_SHAPE], configs, reps, naive=False, log=log)
    return rows


# ---------------------------------------------------------------------------------- (b)


def step_flops(widths, batch: int, method: str = "baseline", arch: str = "cnn9") -> dict:
    """XLA's cost analysis of one jitted train step (augmentation, forward, backward, update)."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp

    from mhe_jax.experiments.configs import get_config
    from mhe_jax.experiments.runner import build_model, build_optimizer
    from mhe_jax.train import make_steps

    cfg = get_config(f"repro/cifar10_cnn9_full/{method}").replace(
        model={"arch": arch, "widths": tuple(widths)})
    model = build_model(cfg, 10, 3, 32)
    optimizer, _ = build_optimizer(cfg, model)
    step = make_steps(augment=True, label_smoothing=cfg.optim.label_smoothing).train
    graphdef, state = nnx.split((model, optimizer))

    def pure(state, batch):
        m, o = nnx.merge(graphdef, state)
        out = step(m, o, batch)
        return out, nnx.state((m, o))

    batch_arrays = (jnp.zeros((batch, 32, 32, 3), jnp.uint8), jnp.zeros((batch,), jnp.int32))
    cost = jax.jit(pure).lower(state, batch_arrays).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0]
    flops = float(cost.get("flops", float("nan")))
    est = {k: flops / (peak * ASSUMED_UTILISATION) for k, peak in ASSUMED_PEAK.items()}
    return {"arch": arch, "widths": list(widths), "batch": batch, "method": method,
            "flops": flops, "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
            "estimated_step_seconds": est, "assumed_utilisation": ASSUMED_UTILISATION}


def part_train_step(smoke: bool, reps: int, log=print, methods=METHODS) -> dict:
    if smoke:
        cases, batch = [("cnn9", (4, 8, 16))], 8
    else:
        cases, batch = [("cnn9", (64, 128, 256)), ("resnet32", (16, 32, 64))], 128
    rows = []
    for arch, widths in cases:
        r = step_bench.bench_model(arch, widths, batch, reps, warmup=1 if smoke else 2,
                                   variants=methods)
        rows.append(r)
        log(f"{arch} {'/'.join(map(str, widths))} batch {batch}: " + ", ".join(
            f"{v} {r['step_seconds'][v] * 1e3:.2f} ms ({r['ratio_to_baseline'][v]:.3f}x)"
            for v in r["step_seconds"]))
    flops = [step_flops(cases[0][1], batch, m) for m in (methods[:1] if smoke else methods)]
    for f in flops:
        log(f"{f['method']}: {f['flops'] / 1e9:.2f} GFLOP per step; at "
            f"{ASSUMED_UTILISATION:.0%} of H100/H200 TF32 peak "
            f"{f['estimated_step_seconds']['h100_h200_tf32'] * 1e3:.3g} ms/step")
    return {"results": rows, "flops": flops}


# ---------------------------------------------------------------------------------- (c)


def plan_steps(full_steps: int, step_seconds: float, seconds_available: float,
               overhead_s: float = RUN_OVERHEAD_S) -> int:
    """How many steps fit in ``seconds_available`` (never more than ``full_steps``)."""
    if step_seconds <= 0 or not math.isfinite(step_seconds):
        raise ValueError(f"step_seconds must be a positive number, got {step_seconds!r}")
    return max(0, min(full_steps, int((seconds_available - overhead_s) / (1.15 * step_seconds))))


def scaled_config(cfg, steps: int):
    """``cfg`` with its whole schedule compressed to ``steps`` (same shape, fewer steps)."""
    o, lg = cfg.optim, cfg.logging
    f = steps / o.steps

    # log_every is kept (more log records, not fewer) and the scaled eval / energy intervals
    # are multiples of it, so every jitted call of runner.call_length(cfg) steps is alike
    log_every = None if lg.log_every is None else min(steps, lg.log_every)
    unit = log_every or 1

    def every(n):
        return None if n is None else max(unit, min(steps, round(n * f / unit) * unit))

    bounds = []
    for b in o.boundaries:
        nb = max(1, round(b * f))
        if bounds and nb <= bounds[-1]:
            nb = bounds[-1] + 1
        bounds.append(nb)
    bounds = tuple(b for b in bounds if b < steps)
    return cfg.replace(
        optim={"steps": steps, "boundaries": bounds, "warmup_steps": round(o.warmup_steps * f)},
        logging={"log_every": log_every, "eval_every": every(lg.eval_every),
                 "energy_every": every(lg.energy_every), "checkpoint_every": None})


def _paper_error(method: str):
    from mhe_jax.experiments.configs import get_config

    return get_config(PAPER_CONFIG[method]).paper.get("value")


def part_table1(data: str | None, smoke: bool, deadline: float, step_seconds: dict,
                runs_dir: str, min_steps: int, log=print, methods=METHODS) -> list[dict]:
    from mhe_jax.experiments.configs import get_config
    from mhe_jax.experiments.runner import call_length, run

    rows = []
    for i, method in enumerate(methods):
        cfg = get_config(f"repro/cifar10_cnn9_full/{method}")
        if smoke:
            data_changes = ({"data_dir": data, "train_per_class": 20} if data
                            else {"dataset": "digits", "data_dir": None})
            cfg = cfg.replace(data={**data_changes, "batch_size": 16},
                              model={"widths": (4, 8, 16)},
                              optim={"steps": 4, "boundaries": (2, 3), "warmup_steps": 1},
                              logging={"log_every": 2, "eval_every": None, "energy_every": None,
                                       "checkpoint_every": None})
        else:
            if data is None:
                raise SystemExit("--data PATH (the CIFAR-10 JPEG .npz) is required without --smoke")
            cfg = cfg.replace(data={"data_dir": data}, logging={"checkpoint_every": None})
        full = cfg.optim.steps
        left = deadline - time.time()
        share = left / (len(methods) - i)
        per_step = step_seconds.get(method)
        note = None
        steps = full
        if not smoke and per_step is not None:
            steps = plan_steps(full, per_step, share)
            if steps < min_steps:
                note = (f"skipped: budget share {share:.0f} s fits {steps} steps "
                        f"(< --min-steps {min_steps}) at {per_step * 1e3:.2f} ms/step")
                log(f"{method}: {note}")
                rows.append({"method": method, "full_recipe": False, "steps": 0, "note": note,
                             "paper_test_error": _paper_error(method)})
                continue
            if steps < full:
                cfg = scaled_config(cfg, steps)
                note = (f"budget: {steps} of {full} steps; the schedule (lr boundaries "
                        f"{cfg.optim.boundaries}, warm-up {cfg.optim.warmup_steps}, evals) "
                        f"compressed by {steps / full:.4f}; predicted from "
                        f"{per_step * 1e3:.2f} ms/step and a {share:.0f} s share")
                log(f"{method}: {note}")
        t0 = time.time()
        k = call_length(cfg)  # one jitted lax.scan between log / eval points (<= 100 steps)
        res = run(cfg, os.path.join(runs_dir, method), resume="restart", progress=False,
                  command=" ".join(sys.argv), steps_per_call=k)
        row = {"method": method, "config": cfg.name, "steps": res["steps"],
               "full_recipe": res["steps"] == full and not smoke, "note": note,
               "test_error": res["test_error"], "paper_test_error": _paper_error(method),
               "train_seconds": res["train_seconds"], "wall_seconds": time.time() - t0,
               "steps_per_second": res["steps"] / res["train_seconds"],
               "steps_per_call": k,
               "dataset": cfg.data.dataset, "widths": list(cfg.model.widths)}
        rows.append(row)
        log(f"{method}: {row['steps']} steps, test error {row['test_error']:.2f} % "
            f"(paper {row['paper_test_error']}), {row['train_seconds']:.1f} s training, "
            f"{row['steps_per_second']:.1f} steps/s")
    return rows


# -------------------------------------------------------------------------------- report


def table(result: dict) -> str:
    lines = ["", "## (a) energy value_and_grad vs one w.T @ w",
             f"{'d':>5} {'N':>6} {'s':>3} {'distance':9} {'half':>4} {'Gram ms':>9} "
             f"{'ours ms':>9} {'ratio':>6} {'naive ms':>9}"]
    for r in result.get("energy", []):
        naive = f"{r['naive_s'] * 1e3:9.2f}" if "naive_s" in r else f"{'-':>9}"
        lines.append(f"{r['d']:5d} {r['N']:6d} {r['s']:3.0f} {r['distance']:9} "
                     f"{int(r['half_space']):4d} {r['matmul_s'] * 1e3:9.2f} "
                     f"{r['ours_s'] * 1e3:9.2f} {r['ratio']:6.2f} {naive}")
    ts = result.get("train_step")
    if ts:
        lines += ["", "## (b) train step (ms) and ratio to baseline"]
        for r in ts["results"]:
            lines.append(f"{r['model']} {'/'.join(map(str, r['widths']))} batch {r['batch']}: "
                         + "  ".join(f"{v} {r['step_seconds'][v] * 1e3:.2f} "
                                     f"({r['ratio_to_baseline'][v]:.3f}x)"
                                     for v in r["step_seconds"]))
        for f in ts["flops"]:
            lines.append(f"FLOPs/step {f['method']}: {f['flops'] / 1e9:.2f} G")
    if result.get("table1"):
        lines += ["", "## (c) Table 1, CIFAR-10, CNN-9 (test error %)",
                  f"{'method':9} {'steps':>6} {'ours':>7} {'paper':>6} {'train s':>8} note"]
        for r in result["table1"]:
            ours = f"{r['test_error']:7.2f}" if "test_error" in r else f"{'-':>7}"
            lines.append(f"{r['method']:9} {r['steps']:6d} {ours} "
                         f"{r['paper_test_error']!s:>6} {r.get('train_seconds', 0):8.1f} "
                         f"{r.get('note') or ''}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=float, default=10.0,
                   help="wall-clock budget of the whole script; (c) is shortened to fit")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, all three parts, CPU")
    p.add_argument("--data", default=None, help="the CIFAR-10 JPEG .npz (needed for (c))")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "device.json"))
    p.add_argument("--only", choices=("energy", "train_step", "table1"), action="append")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--min-steps", type=int, default=500,
                   help="skip a (c) run that would get fewer steps than this")
    p.add_argument("--runs-dir", default=None, help="run directories of (c) (default: a temp dir)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="comma-separated subset of baseline,mhe,half_mhe for (b) and (c) "
                        "(baseline always included)")
    args = p.parse_args(argv)
    if args.budget_minutes <= 0:
        p.error("--budget-minutes must be > 0")
    if args.data is not None and not os.path.isfile(args.data):
        p.error(f"--data: no such file {args.data!r}")
    only = set(args.only or ("energy", "train_step", "table1"))
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not methods or methods[0] != "baseline" or not set(methods) <= set(METHODS) \
            or len(set(methods)) != len(methods):
        p.error(f"--methods must start with baseline and name each of {METHODS} at most "
                f"once, got {args.methods!r}")
    reps = args.reps or (2 if args.smoke else 5)
    t_start = time.time()
    deadline = t_start + 60 * args.budget_minutes

    import jax

    from mhe_jax.experiments.runner import machine

    result: dict = {"machine": {**machine(), "backend": jax.default_backend()},
                    "smoke": args.smoke, "budget_minutes": args.budget_minutes}
    print(json.dumps(result["machine"]))
    if "energy" in only:
        print("\n## (a) energy speed")
        result["energy"] = part_energy(args.smoke, reps)
    step_seconds: dict = {}
    if "train_step" in only:
        print("\n## (b) train-step overhead")
        result["train_step"] = part_train_step(args.smoke, reps, methods=methods)
        step_seconds = dict(result["train_step"]["results"][0]["step_seconds"])
    if "table1" in only:
        if not step_seconds and not args.smoke:  # (c) is sized from the measured step time
            r = step_bench.bench_model("cnn9", (64, 128, 256), 128, 3, warmup=2,
                                       variants=methods)
            step_seconds = dict(r["step_seconds"])
            result["table1_step_seconds"] = step_seconds
        print("\n## (c) Table 1 CIFAR-10 rows")
        runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="mhe_device_runs_")
        result["table1"] = part_table1(args.data, args.smoke, deadline, step_seconds, runs_dir,
                                       args.min_steps, methods=methods)
        result["runs_dir"] = runs_dir
    result["seconds"] = time.time() - t_start
    print(table(result))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nwrote {args.out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
