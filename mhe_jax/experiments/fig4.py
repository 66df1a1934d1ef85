"""Fig. 4 of the paper: class imbalance with 2-D features, with and without output-layer MHE.

Runs each of ``<prefix>/baseline`` and ``<prefix>/mhe_output`` for several seeds through
:func:`mhe_jax.experiments.runner.run`, then writes

* ``summary.json`` — per run: test accuracy, accuracy on the rare class, the angle between the
  rare class's classifier neuron and its nearest neighbour;
* ``summary.md`` — those numbers per seed and their mean (± sample std);
* ``fig4.png`` — the paper's figure: features of the full training set coloured by class, with
  the normalised classifier neurons as arrows, without (left) and with (right) MHE (first seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mhe_jax.experiments.stats import mean_std

METHODS = (("baseline", "without MHE"), ("mhe_output", "with output MHE"))


def angle_to_nearest(kernel, c: int) -> float:
    """Angle in degrees between column ``c`` of ``kernel`` (d, N) and its nearest other column."""
    w = np.asarray(kernel, np.float64)
    w = w / np.linalg.norm(w, axis=0)
    cos = np.clip(w.T @ w, -1.0, 1.0)
    np.fill_diagonal(cos, -1.0)
    return float(np.degrees(np.arccos(cos[c].max())))


def run_fig4(prefix: str, seeds, out_dir, *, overrides=(), progress: bool = False,
             command=None) -> dict:
    from mhe_jax.experiments.configs import apply_overrides, get_config
    from mhe_jax.experiments.plots import plot_features_2d
    from mhe_jax.experiments.runner import load_dataset, run
    from mhe_jax.train import predict_features

    out = Path(out_dir)
    rows, models = [], {}
    for seed in seeds:
        for method, label in METHODS:
            cfg = apply_overrides(get_config(f"{prefix}/{method}"), [*overrides, f"seed={seed}"])
            r = run(cfg, out / f"seed{seed}" / method, progress=progress, resume="restart",
                    command=command)
            kernel = np.asarray(r["model"].classifier.kernel[...])
            rare = cfg.data.imbalance_class
            rows.append({"seed": seed, "method": method, "label": label,
                         "test_accuracy": r["test_accuracy"],
                         "rare_class_accuracy": r["per_class_accuracy"][rare],
                         "rare_class_angle_deg": angle_to_nearest(kernel, rare),
                         "train_images_per_class": [r["imbalance_counts"][c]
                                                    for c in sorted(r["imbalance_counts"])],
                         "train_seconds": r["train_seconds"]})
            models[seed, method] = (r["model"], kernel)

    lines = [f"Configs `{prefix}/*`, seeds {', '.join(map(str, seeds))}.", "",
             "| method | seed | test acc. (%) | rare-class acc. (%) | rare neuron to nearest (°) |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['seed']} | {100 * row['test_accuracy']:.2f} | "
                     f"{100 * row['rare_class_accuracy']:.1f} | "
                     f"{row['rare_class_angle_deg']:.1f} |")
    summary = {}
    for method, label in METHODS:
        mine = [r for r in rows if r["method"] == method]
        stats = {k: mean_std([r[k] for r in mine])
                 for k in ("test_accuracy", "rare_class_accuracy", "rare_class_angle_deg")}
        summary[method] = stats
        (acc, acc_sd), (rare, rare_sd), (ang, ang_sd) = stats.values()
        lines.append(f"| **{label}, mean ± std** | | **{100 * acc:.2f} ± {100 * acc_sd:.2f}** | "
                     f"**{100 * rare:.1f} ± {100 * rare_sd:.1f}** | {ang:.1f} ± {ang_sd:.1f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(
        {"runs": rows, "mean_std": summary, "command": command}, indent=1, default=float))

    # The figure: features of the full (balanced) training set, first seed.
    cfg = apply_overrides(get_config(f"{prefix}/baseline"), list(overrides))
    ds = load_dataset(cfg.replace(data={"imbalance": None}))[0]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6))
    axes = fig.subplots(1, 2)
    for ax, (method, label) in zip(axes, METHODS, strict=True):
        model, kernel = models[seeds[0], method]
        row = next(r for r in rows if r["seed"] == seeds[0] and r["method"] == method)
        plot_features_2d(predict_features(model, ds.x_train), ds.y_train, kernel, ax=ax,
                         max_points=10000, point_size=3,
                         title=f"{label}: test acc. {row['test_accuracy']:.1%}, "
                         f"class {cfg.data.imbalance_class}: {row['rare_class_accuracy']:.1%}")
    fig.tight_layout()
    fig.savefig(out / "fig4.png", dpi=90)
    return {"rows": rows, "summary": summary, "table": "\n".join(lines)}
