"""Fixed prototype head vs learned heads on the embedded digits (issue 28, part 3).

The quickstart setup (config ``quickstart/baseline``: sklearn digits at 32x32, CNN-9 16/32/64,
200 steps, batch 64, official loss and SGD recipe), three heads on the same backbone, seed and
batches:

* ``linear``: the CNN-9's own learned 1x1-conv classifier (the quickstart baseline);
* ``cosine``: ``PrototypeHead(P, scale=16, trainable=True)``: learned cosine logits, started
  at ``P``;
* ``fixed``: ``PrototypeHead(P, scale=16)``: the same head, frozen (not an ``nnx.Param``);

``P = mhe_jax.sphere.prototypes(10, 256)``, the simplex ETF of the 10 classes in the 256-dim
feature space. Usage (from the repository root)::

    taskset -c 0 python results/prototype_head/run.py train --out /tmp/prototype_head --seeds 0 1
    python results/prototype_head/run.py report --out /tmp/prototype_head

``train`` writes ``<out>/<head>_seed<k>.json`` (accuracies, times) and ``.npz`` (test features,
labels and the final classifier); ``report`` prints the table with the neural-collapse metrics
of the test features (``mhe_jax.collapse_stats``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import mhe_jax
from mhe_jax import models, sphere
from mhe_jax.experiments import apply_overrides, get_config
from mhe_jax.experiments.runner import build_model, build_optimizer, load_dataset
from mhe_jax.train import accuracy_eval, epoch_batches, fit, make_steps, predict_features

HEADS = ("linear", "cosine", "fixed")
SCALE = 16.0


def train(head: str, seed: int, out: Path, steps: int | None = None) -> dict:
    overrides = [f"seed={seed}"] + ([] if steps is None else [f"optim.steps={steps}"])
    cfg = apply_overrides(get_config("quickstart/baseline"), overrides)
    ds, _ = load_dataset(cfg)
    _, h, _, c = ds.x_train.shape
    model = build_model(cfg, ds.num_classes, c, h)
    if head != "linear":
        p = sphere.prototypes(ds.num_classes, model.classifier.in_features)
        model.classifier = models.PrototypeHead(p, scale=SCALE, trainable=head == "cosine")
    optimizer, lr = build_optimizer(cfg, model)  # wrt=nnx.Param: a fixed head is not trained
    fns = make_steps(augment=cfg.data.augment, label_smoothing=cfg.optim.label_smoothing,
                     seed=cfg.seed, learning_rate=lr)
    batches = epoch_batches(ds.x_train, ds.y_train, batch_size=cfg.data.batch_size,
                            seed=cfg.seed, put=jax.device_put)
    evals = [mhe_jax.train.Every(None, accuracy_eval(fns.eval, ds.x_test, ds.y_test,
                                                     num_classes=ds.num_classes)),
             mhe_jax.train.Every(None, accuracy_eval(fns.eval, ds.x_train, ds.y_train,
                                                     num_classes=ds.num_classes,
                                                     prefix="train"))]
    t0 = time.time()
    result = fit(model, optimizer, batches, steps=cfg.optim.steps, train_step=fns.train,
                 log_every=cfg.logging.log_every, evals=evals)
    seconds = time.time() - t0
    features = predict_features(model, ds.x_test).reshape(len(ds.x_test), -1)
    kernel = np.asarray(model.classifier.kernel[...]).reshape(-1, ds.num_classes)
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    losses = [r["loss"] for r in result["history"] if "loss" in r]
    summary = {"head": head, "seed": seed, "steps": cfg.optim.steps,
               "test_accuracy": result["final"]["test_accuracy"],
               "train_accuracy": result["final"]["train_accuracy"],
               "final_loss": float(losses[-1]) if losses else None,
               "seconds": seconds, "trainable_parameters": int(trainable),
               "machine": {"platform": platform.platform(), "jax": jax.__version__,
                           "devices": [str(d) for d in jax.devices()]}}
    stem = out / f"{head}_seed{seed}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    np.savez(stem.with_suffix(".npz"), features=features, labels=ds.y_test, kernel=kernel)
    return summary


def report(out: Path) -> None:
    rows = []
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        z = np.load(path.with_suffix(".npz"))
        with jax.enable_x64(True):
            nc = mhe_jax.collapse_stats(np.asarray(z["features"], np.float64), z["labels"],
                                        10, classifier=np.asarray(z["kernel"], np.float64))
        rows.append((r["head"], r["seed"], 100 * r["test_accuracy"], 100 * r["train_accuracy"],
                     r["final_loss"] or float("nan"), float(nc.nc1), float(nc.cdnv), float(nc.nc2),
                     float(nc.nc3), r["seconds"]))
    order = {h: i for i, h in enumerate(HEADS)}
    rows.sort(key=lambda r: (order[r[0]], r[1]))
    print("| head | seed | test acc. (%) | train acc. (%) | last logged loss | NC1 | CDNV | NC2 "
          "| NC3 | train time (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.4f} | {r[5]:.4f} | "
              f"{r[6]:.4f} | {r[7]:.4f} | {r[8]:.4f} | {r[9]:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("train", "report"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--steps", type=int, default=None, help="default: the config's (200)")
    args = parser.parse_args()
    if args.mode == "report":
        report(args.out)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for head in args.heads:
            s = train(head, seed, args.out, args.steps)
            print(json.dumps({k: s[k] for k in ("head", "seed", "test_accuracy",
                                                "train_accuracy", "seconds")}), flush=True)


if __name__ == "__main__":
    main()
