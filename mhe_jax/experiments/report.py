"""Finished runs → markdown tables beside the paper's numbers, and the experiments' figures.

* :func:`markdown_table` — one row per run (the ``report`` command);
* :func:`plot_runs` — loss, test accuracy and min angle against step for any runs;
* :func:`plot_quickstart` — per layer, min angle and energy from step 0, per method, with the
  optimum as a reference, and test accuracy with error bars over seeds;
* :func:`plot_study_curves`, :func:`plot_test_error_bars` — the study's figures (``study``);
* :func:`write_report` — a study's ``study.md``, ``study.json`` and figures, from what
  :mod:`mhe_jax.experiments.study` collects (the flow is one way: study runs and collects,
  this module reads and draws).

Units: errors and accuracies are in % of the test set and say which they are; angles are in
degrees; energies are the full-space s = 2 Euclidean energy, the mean over pairs of
``1/‖ŵ_i − ŵ_j‖²`` (see :mod:`mhe_jax.experiments.study`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

METHOD_COLORS = {"baseline": "#555555", "mhe": "#1f77b4", "half_mhe": "#d62728",
                 "orthonormal": "#2ca02c", "orthogonality": "#9467bd", "a_mhe": "#17becf",
                 "half_a_mhe": "#ff7f0e", "mhe_output": "#1f77b4"}
_FALLBACK = ("#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")


def method_color(method: str, i: int = 0) -> str:
    return METHOD_COLORS.get(method, _FALLBACK[i % len(_FALLBACK)])


def collect(paths) -> list[dict]:
    """Every ``results.json`` under the given directories (or files), with its run directory
    (a file that is not JSON raises ``ValueError`` naming it)."""
    from mhe_jax.experiments.study import read_json

    found = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            r = read_json(f)
            r["run_dir"] = str(f.parent)
            found.append(r)
    return found


def _fmt(v, digits=2):
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(results: list[dict]) -> str:
    """One row per run: test error beside the paper's, worst class, min angles and energies.

    Every number is labelled with its unit: test error in % (100 − accuracy; the paper's
    accuracy rows are converted), per-class minimum accuracy in %, angles in degrees.
    """
    from mhe_jax.experiments.study import load_run, run_metrics

    lines = ["| config | steps | test error (%) | paper: test error (%) | worst-class accuracy (%) "
             "| hidden min angle (°) | hidden energy | classifier min angle (°) "
             "| classifier energy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r["name"]):
        paper = (r.get("paper") or {}).get("value")
        if (r.get("paper") or {}).get("metric", "").startswith("test accuracy"):
            paper = None if paper is None else 100.0 - paper
        m = run_metrics(load_run(r["run_dir"]))
        worst = 100.0 - m["worst_class_error"]
        lines.append(
            f"| {r['name']} | {r['steps']} | {_fmt(m['test_error'])} | {_fmt(paper)} | "
            f"{_fmt(worst, 1)} | {_fmt(m['hidden_min_angle'])} | {_fmt(m['hidden_energy'], 5)} | "
            f"{_fmt(m['classifier_min_angle'])} | {_fmt(m['classifier_energy'], 4)} |")
    lines += ["", "Energies: full-space s = 2 Euclidean, mean of 1/‖ŵ_i − ŵ_j‖² over pairs, at the "
              "end of training; hidden = mean over the hidden layers. Min angle: smallest angle "
              "between two neurons of a layer; hidden = mean over the hidden layers."]
    return "\n".join(lines)


def read_log(run_dir) -> list[dict]:
    from mhe_jax.experiments.study import read_jsonl

    return read_jsonl(Path(run_dir) / "log.jsonl")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_png, dpi=100):
    plt = _pyplot()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    plt.close(fig)
    return Path(out_png)


def plot_runs(run_dirs, out_png, *, title: str | None = None):
    """Training loss, test accuracy (%) and mean hidden-layer min angle (°) against step."""
    from mhe_jax.experiments.study import is_output_layer

    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run_dir in run_dirs:
        log = read_log(run_dir)
        label = Path(run_dir).name
        loss = [(e["step"], e["loss"]) for e in log if "loss" in e]
        acc = [(e["step"], 100 * e["test_accuracy"]) for e in log if "test_accuracy" in e]
        angle = [(e["step"], np.mean([v["min_angle_deg"] for p, v in e["layers"].items()
                                      if not is_output_layer(p, v)]))
                 for e in log if "layers" in e]
        for ax, series in zip(axes, (loss, acc, angle), strict=True):
            if series:
                ax.plot(*zip(*series, strict=True), label=label,
                        marker="o" if len(series) < 30 else None)
    names = ("train loss (batch)", "test accuracy (%)", "hidden layers: mean min angle (°)")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


# --------------------------------------------------------------------------- quickstart


def simplex_angle_deg(n: int) -> float:
    """Largest possible minimum angle of ``n ≥ 2`` unit vectors in ≥ n − 1 dimensions (°).

    The regular simplex: ``arccos(−1/(n − 1))`` (96.4° for 10 classes).
    """
    return math.degrees(math.acos(-1.0 / (n - 1)))


def simplex_energy(n: int) -> float:
    """The minimum full-space s = 2 Euclidean energy (mean over pairs) of ``n`` unit vectors
    in ≥ n − 1 dimensions: the simplex, where ``‖ŵ_i − ŵ_j‖² = 2n/(n − 1)``: ``(n − 1)/(2n)``."""
    return (n - 1) / (2 * n)


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _layer_order(paths, is_output) -> list[str]:
    """Hidden layers first in network order (``layers/0 … layers/9``, then others), output last."""
    return sorted(paths, key=lambda p: (is_output[p], not p.startswith("layers"), _natural_key(p)))


def _short(path: str) -> str:
    """``layers/3/conv/kernel`` → ``conv 3``, ``fc/conv/kernel`` → ``fc``."""
    m = re.fullmatch(r"layers/(\d+)/conv/kernel", path)
    if m:
        return f"conv {m.group(1)}"
    parts = [p for p in path.split("/") if p not in ("kernel", "conv")]
    return "/".join(parts) or path


def plot_quickstart(runs: Sequence, out_png, *,
                    layer_shapes: dict[str, tuple[int, int]] | None = None,
                    title: str | None = None, max_columns: int = 6) -> Path:
    """:func:`quickstart_figure` saved as ``out_png`` (returned)."""
    fig = quickstart_figure(runs, layer_shapes=layer_shapes, title=title, max_columns=max_columns)
    return _save(fig, out_png, dpi=90)


def quickstart_figure(runs: Sequence, *, layer_shapes: dict[str, tuple[int, int]] | None = None,
                      title: str | None = None, max_columns: int = 6):
    """The quickstart's figure: what MHE does to every layer, per method, from step 0.

    Top row: the hidden layers' min angle (°, mean over the hidden layers), the classifier's
    min angle (°) with the simplex optimum ``arccos(−1/(N − 1))`` dashed, and test accuracy
    (%) per method with error bars (sample std) over seeds. Below, one panel per layer: its
    min angle (optimum dashed where ``N ≤ d + 1``), then one per layer: its full-space s = 2
    energy (above the optimum, on a log axis, where the optimum is known). One thick line per
    method (the mean over seeds), thin lines per seed when there are several. The step axis
    is symlog so that step 0 (the initialization) is visible.

    Args:
      runs: :class:`~mhe_jax.experiments.study.StudyRun` objects (several seeds per method
        allowed), whose logs have per-layer records.
      layer_shapes: ``{path: (neurons, dim)}`` for the optimum, where the records lack
        ``neurons``/``dim``; without either only the classifier gets its simplex line
        (N = number of classes).
      title: the figure's title.
      max_columns: panels per row of the per-layer grid.

    Returns:
      A matplotlib ``Figure``; axes carry a ``gid``: ``"summary:hidden_angle"``,
      ``"summary:classifier_angle"``, ``"summary:accuracy"``, ``"angle:<path>"``,
      ``"energy:<path>"``; method lines carry the method as ``gid``, optimum lines
      ``"optimum"``.
    """
    from matplotlib.lines import Line2D

    from mhe_jax.experiments.study import METHOD_ORDER, _full_energy, is_output_layer, layer_records

    plt = _pyplot()
    found = list(dict.fromkeys(r.method for r in runs))
    methods = sorted(found, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER
                                           else len(METHOD_ORDER), found.index(m)))
    first = next((layer_records(r) for r in runs if layer_records(r)), None)
    if not first:
        raise ValueError("no run has per-layer records (\"layers\") in its log.jsonl")
    paths0 = first[-1]["layers"]
    is_out = {p: is_output_layer(p, st) for p, st in paths0.items()}
    order = _layer_order(list(paths0), is_out)
    hidden = [p for p in order if not is_out[p]]
    outputs = [p for p in order if is_out[p]]
    shapes = dict(layer_shapes or {})
    for p, st in paths0.items():
        if "neurons" in st and "dim" in st:
            shapes.setdefault(p, (int(st["neurons"]), int(st["dim"])))
    classes = next((len(r.results["per_class_accuracy"]) for r in runs
                    if r.results and r.results.get("per_class_accuracy")), None)
    for p in outputs:
        if p not in shapes and classes:
            shapes[p] = (classes, classes)  # only N matters for the simplex when d ≥ N − 1

    def optimum(p):
        if p not in shapes:
            return None
        n, d = shapes[p]
        return (simplex_angle_deg(n), simplex_energy(n)) if 2 <= n <= d + 1 else None

    linthresh = max(1, _first_positive_step(runs))

    def step_axis(ax):
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)

    def draw(ax, series_of, lw=2.0, ms=3):
        """One line per method: ``series_of(run) -> [(step, y)]``, mean over the seeds."""
        for i, m in enumerate(methods):
            color = method_color(m, i)
            curves = [dict(pts) for r in runs if r.method == m and (pts := series_of(r))]
            if len(curves) > 1:
                for c in curves:
                    ax.plot(list(c), list(c.values()), color=color, lw=0.7, alpha=0.35)
            if curves:
                common = sorted(set.intersection(*(set(c) for c in curves)))
                ax.plot(common, [float(np.mean([c[s] for c in curves])) for s in common],
                        color=color, lw=lw, marker="o", ms=ms, label=m, gid=m)
        step_axis(ax)

    def angle_series(paths):
        def fn(r):
            pts = []
            for rec in layer_records(r):
                v = [rec["layers"][p]["min_angle_deg"] for p in paths if p in rec["layers"]]
                if len(v) == len(paths):
                    pts.append((rec["step"], float(np.mean(v))))
            return pts
        return fn

    def energy_series(p, opt):
        def fn(r):
            pts = []
            for rec in layer_records(r):
                st = rec["layers"].get(p)
                y = None if st is None else _full_energy(r, p, st)
                if y is not None:
                    pts.append((rec["step"], max(y - opt[1], 1e-7) if opt else y))
            return pts
        return fn

    def reference(ax, y, text=None):
        ax.axhline(y, color="k", ls="--", lw=1, gid="optimum")
        if text:
            ax.annotate(text, (0.02, y), xycoords=("axes fraction", "data"), fontsize=9,
                        va="top", xytext=(0, -3), textcoords="offset points")

    ncols = min(max_columns, len(order))
    rows_each = math.ceil(len(order) / ncols)
    fig = plt.figure(figsize=(3.1 * ncols, 3.4 + 2.3 * 2 * rows_each), layout="constrained")
    subfigures = np.asarray(fig.subfigures(2, 1, height_ratios=[3.4, 2.3 * 2 * rows_each]))
    top, grid = subfigures[0], subfigures[1]

    # --- top row: the effect at a glance
    ax_h, ax_c, ax_a = top.subplots(1, 3, width_ratios=[1.2, 1.2, 0.8])
    ax_h.set_gid("summary:hidden_angle")
    ax_c.set_gid("summary:classifier_angle")
    ax_a.set_gid("summary:accuracy")
    if hidden:
        draw(ax_h, angle_series(hidden))
    ax_h.set_title(f"hidden layers ({len(hidden)}): min angle (°), mean over layers",
                   fontsize=10)
    if outputs:
        draw(ax_c, angle_series(outputs))
        opt = optimum(outputs[0])
        if opt is not None:
            reference(ax_c, opt[0], f"optimum (simplex, N = {shapes[outputs[0]][0]}): "
                                    f"{opt[0]:.1f}°")
    ax_c.set_title("classifier: min angle (°)", fontsize=10)
    for ax in (ax_h, ax_c):
        ax.set_xlabel("step (symlog: 0 = initialization)", fontsize=8)
        ax.tick_params(labelsize=8)
    for i, m in enumerate(methods):
        accs = [100 * r.results["test_accuracy"] for r in runs if r.method == m and r.results]
        if not accs:
            continue
        sd = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
        ax_a.bar(i, np.mean(accs), yerr=sd if len(accs) > 1 else None,
                 color=method_color(m, i), alpha=0.8, capsize=4, gid=m)
        ax_a.scatter([i] * len(accs), accs, color="k", s=8, zorder=3)
        ax_a.text(i, max(accs) + 0.2, f"{np.mean(accs):.1f}", ha="center", va="bottom",
                  fontsize=9)
    n_seeds = max((sum(1 for r in runs if r.method == m and r.results) for m in methods),
                  default=0)
    ax_a.set_xticks(range(len(methods)), methods, fontsize=8)
    all_acc = [100 * r.results["test_accuracy"] for r in runs if r.results]
    if all_acc:
        ax_a.set_ylim(max(0.0, min(all_acc) - 5), min(100.0, max(all_acc) + 2))
    ax_a.set_title(f"test accuracy (%, axis not from 0), {n_seeds} "
                   f"seed{'s' if n_seeds != 1 else ''}"
                   + (", mean ± std" if n_seeds > 1 else ""), fontsize=10)
    ax_a.grid(alpha=0.3, axis="y")
    ax_a.tick_params(labelsize=8)

    # --- every layer: min angle, then energy
    axes = grid.subplots(2 * rows_each, ncols, squeeze=False)
    angle_axes, energy_axes = axes[:rows_each].ravel(), axes[rows_each:].ravel()
    for ax, p in zip(angle_axes, order, strict=False):
        ax.set_gid(f"angle:{p}")
        draw(ax, angle_series([p]), lw=1.6, ms=2)
        opt = optimum(p)
        if opt is not None:
            reference(ax, opt[0])
        shape = f" (N={shapes[p][0]}, d={shapes[p][1]})" if p in shapes else ""
        ax.set_title(f"{'classifier' if is_out[p] else _short(p)}{shape}: min angle (°)",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    for ax, p in zip(energy_axes, order, strict=False):
        ax.set_gid(f"energy:{p}")
        opt = optimum(p)
        draw(ax, energy_series(p, opt), lw=1.6, ms=2)
        if opt is not None:
            ax.set_yscale("log")
        what = "energy − optimum" if opt is not None else "energy"
        ax.set_title(f"{'classifier' if is_out[p] else _short(p)}: {what}", fontsize=8)
        ax.tick_params(which="both", labelsize=6)
    for ax in [*angle_axes[len(order):], *energy_axes[len(order):]]:
        ax.axis("off")
    grid.suptitle("per layer: min angle (°), then full-space s = 2 energy (mean over pairs of "
                  "1/‖ŵ_i − ŵ_j‖²); step axis symlog, 0 = initialization", fontsize=9)

    handles = [Line2D([], [], color=method_color(m, i), lw=2, marker="o", ms=3)
               for i, m in enumerate(methods)]
    handles.append(Line2D([], [], color="k", ls="--", lw=1))
    ax_h.legend(handles, [*methods, "optimum (simplex)"], loc="upper left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def _first_positive_step(runs) -> int:
    steps = [rec["step"] for r in runs for rec in r.log if rec.get("step", 0) > 0]
    return min(steps) if steps else 1


# --------------------------------------------------------------------------- study figures


def _per_method_curves(ax, runs, methods, series_fn, *, ls="-", label_suffix=""):
    for i, m in enumerate(methods):
        color = method_color(m, i)
        curves = []
        for r in (r for r in runs if r.method == m):
            pts = series_fn(r)
            if pts:
                curves.append(dict(pts))
                ax.plot(*zip(*pts, strict=True), color=color, lw=0.8, alpha=0.35, ls=ls)
        if curves:
            common = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(common, [np.mean([c[s] for c in curves]) for s in common], color=color, lw=2,
                    ls=ls, label=f"{m}{label_suffix} (mean of {len(curves)})")


def plot_study_curves(runs: Sequence, out_png, *, methods: Sequence[str] | None = None):
    """Test error (%) (and, dashed, the training set's where the log has it), training loss,
    hidden layers' mean min angle (°) and the classifier's min angle (°) against step: thin
    lines per seed, thick the mean over seeds; unfinished runs included."""
    from mhe_jax.experiments.study import is_output_layer, layer_records

    plt = _pyplot()
    methods = list(methods or dict.fromkeys(r.method for r in runs))
    fig, grid = plt.subplots(2, 2, figsize=(13, 8.5))
    axes = [grid[0, 0], grid[1, 0], grid[1, 1], grid[0, 1]]

    def train_loss(r):  # batch loss, mean over a window of 5 records (the noise is large)
        pts = [(e["step"], e["loss"]) for e in r.log if "loss" in e]
        return [(s, float(np.mean([v for _, v in pts[max(0, i - 4):i + 1]])))
                for i, (s, _) in enumerate(pts)]

    def test_error(r):
        return [(e["step"], 100 * (1 - e["test_accuracy"])) for e in r.log if "test_accuracy" in e]

    def train_error(r):  # the training set in eval mode (logging.train_eval_every)
        return [(e["step"], 100 * (1 - e["train_accuracy"])) for e in r.log
                if "train_accuracy" in e]

    def angle(output):
        def fn(r):
            pts = []
            for e in layer_records(r):
                v = [st["min_angle_deg"] for p, st in e["layers"].items()
                     if is_output_layer(p, st) == output]
                if v:
                    pts.append((e["step"], float(np.mean(v))))
            return pts
        return fn

    _per_method_curves(axes[0], runs, methods, test_error)
    has_train = any(train_error(r) for r in runs)
    if has_train:
        _per_method_curves(axes[0], runs, methods, train_error, ls="--",
                           label_suffix=", training set")
    _per_method_curves(axes[1], runs, methods, angle(False))
    _per_method_curves(axes[2], runs, methods, angle(True))
    _per_method_curves(axes[3], runs, methods, train_loss)
    classes = next((len(r.results["per_class_accuracy"]) for r in runs
                    if r.results and r.results.get("per_class_accuracy")), None)
    if classes and classes >= 2:
        axes[2].axhline(simplex_angle_deg(classes), color="k", ls="--", lw=1,
                        label=f"simplex optimum ({simplex_angle_deg(classes):.1f}°)")
    titles = ("error (%): test" + (", training set dashed (eval mode)" if has_train else ""),
              "hidden layers: min angle (°), mean over layers",
              "classifier: min angle (°)", "training loss (batch, running mean of 5 logs)")
    for ax, t in zip(axes, titles, strict=True):
        ax.set_title(t)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_test_error_bars(summary: dict, out_png):
    """Left: test error (%) per method, mean with sample-std error bars, seeds as dots. Right:
    each variant's paired difference against the baseline (points): seeds, mean and its paired
    t-interval at Holm's step-down level (see :func:`mhe_jax.experiments.study.summarize`)."""
    plt = _pyplot()
    methods = summary["methods"]
    rows = summary["rows"]
    paired = summary["paired"]
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(11 if paired else 5.5, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    for i, m in enumerate(methods):
        errs = [row["test_error"] for row in rows if row["method"] == m]
        if not errs:
            continue
        mean = float(np.mean(errs))
        sd = float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0
        ax.bar(i, mean, yerr=sd if len(errs) > 1 else None, color=method_color(m, i), alpha=0.8,
               capsize=5)
        ax.scatter([i] * len(errs), errs, color="k", s=12, zorder=3)
    all_err = [row["test_error"] for row in rows]
    if all_err:
        ax.set_ylim(max(0.0, min(all_err) - 3), max(all_err) + 2)
    low = ax.get_ylim()[0]
    for i, m in enumerate(methods):
        errs = [row["test_error"] for row in rows if row["method"] == m]
        if errs:
            sd = float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0
            ax.text(i, low + 0.15, f"{np.mean(errs):.2f} ± {sd:.2f}\nn = {len(errs)}",
                    ha="center", va="bottom", fontsize=8, color="white", fontweight="bold")
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel("test error (%)")
    ax.set_title("test error, mean ± std over seeds (axis not from 0)", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    if paired:
        ax = axes[0, 1]
        names = list(paired)
        for i, m in enumerate(names):
            e = paired[m]["test_error"]
            ax.scatter([i] * len(e["differences"]), e["differences"], color=method_color(m, i),
                       s=18, zorder=3)
            lo, hi = e["interval"]
            if not (math.isnan(lo) or math.isnan(hi)):
                ax.errorbar(i + 0.15, e["mean"], yerr=[[e["mean"] - lo], [hi - e["mean"]]], fmt="D",
                            color="k", capsize=5, ms=5)
            if not math.isnan(e["mean"]):
                ax.text(i + 0.22, e["mean"], f"{e['mean']:+.2f}\np = {e['p']:.2f}", fontsize=8,
                        va="center")
        ax.axhline(0, color="k", lw=1)
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.5, len(names) - 0.2)
        ax.set_ylabel(f"test error − {summary['baseline']} (points)")
        ax.set_title("paired difference: seeds (dots), mean, t-interval (Holm levels)",
                     fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out_png)
def _cell(fmt: str, v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _pm(fmt: str, mean: float, sd: float) -> str:
    return "—" if math.isnan(mean) else f"{fmt.format(mean)} ± {fmt.format(sd)}"


def _interval(interval) -> str:
    lo, hi = interval
    return "—" if math.isnan(lo) or math.isnan(hi) else f"[{lo:+.2f}, {hi:+.2f}]"


#: Study method names → the paper's method of the same regularizer (``mhe_logs_lambda`` is MHE
#: with the released logs' λ).
PAPER_METHOD = {"baseline": "baseline", "mhe": "mhe", "mhe_logs_lambda": "mhe",
                "half_mhe": "half_mhe", "a_mhe": "a_mhe", "half_a_mhe": "half_a_mhe"}


def paper_context(methods: Sequence[str]) -> list[str]:
    """Markdown lines: the paper's nearest CNN-9 rows for ``methods``, read from
    :func:`mhe_jax.experiments.configs.paper_tables` (Table 1 CIFAR-10 and CIFAR-100 at
    s = 2, width 64/128/256; Table 2 CIFAR-100 at width 16/32/64)."""
    from mhe_jax.experiments.configs import paper_tables

    paper = paper_tables()
    rows = []
    for m in methods:
        pm = PAPER_METHOD.get(m)
        if pm is None:
            continue
        t1 = [paper["table1"][ds][pm] for ds in ("cifar10", "cifar100")]
        t1 = [v if isinstance(v, (int, float)) else v["2"] for v in t1]
        t2 = paper["table2"].get(pm, [None])[0]
        rows.append(f"| {m} | {pm} | {_cell('{:.2f}', t1[0])} | {_cell('{:.2f}', t1[1])} | "
                    f"{_cell('{:.2f}', t2)} |")
    if not rows:
        return []
    return ["", "## The paper's numbers (context, not the same setting)", "",
            "Test error (%) as printed in the paper (`mhe_jax/experiments/paper_tables.json`). "
            "Its Table 1 reports the best accuracy over the run for 8 of its 13 CIFAR-100 rows; "
            "compare those with this report's best-over-run column.", "",
            "| method here | paper's method | Table 1, CIFAR-10, 64/128/256, s = 2 | "
            "Table 1, CIFAR-100, 64/128/256, s = 2 | Table 2, CIFAR-100, 16/32/64 |",
            "|---|---|---:|---:|---:|", *rows]


def markdown(summary: dict, *, title: str = "Study", command: str | None = None,
             machine: str | None = None, wall_seconds: float | None = None,
             figures: Sequence[str] = (), run_commands: Sequence[str] = (),
             paper: bool = False) -> str:
    """``study.md``: command, machine, the decision rule, the tables, figures, definitions."""
    from mhe_jax.experiments.study import METRICS

    lines = [f"# {title}", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    elif run_commands:
        lines += ["The runs were made with (from their results.json):", "", "```",
                  *run_commands, "```", ""]
    if machine:
        lines += [f"Machine: {machine}.", ""]
    if wall_seconds is not None:
        lines += [f"Training time, summed over the finished runs: {wall_seconds / 60:.1f} min.", ""]
    level, margin = summary.get("level", 0.95), summary.get("margin", 0.75)
    b = summary["baseline"]
    if summary["paired"]:
        lines += ["## Decision rule", "",
                  f"For each variant, the paired difference of test error (variant − {b}, same "
                  f"seed) gets a two-sided paired t-interval; the family of the "
                  f"{len(summary['paired'])} comparisons is held at {100 * level:.0f} % with "
                  "Holm's step-down levels (the comparison with the k-th smallest p-value uses "
                  "confidence 1 − α/(m − k + 1)). Verdict: **gain shown** if the upper bound is "
                  f"below 0; **paper-sized gain excluded** if the lower bound is above "
                  f"−{margin:g} points; otherwise **inconclusive**.", ""]
    head = "| seed | method | " + " | ".join(h for _, h, _ in METRICS) + " |"
    sep = "|---:|---|" + "---:|" * len(METRICS)
    lines += ["## Per seed", "", head, sep]
    for row in summary["rows"]:
        cells = " | ".join(_cell(f, row[k]) for k, _, f in METRICS)
        lines.append(f"| {row['seed']} | {row['method']} | {cells} |")
    lines += ["", "## Mean ± std over seeds", "",
              "| method | seeds | " + " | ".join(h for _, h, _ in METRICS) + " |",
              "|---|---:|" + "---:|" * len(METRICS)]
    for m, st in summary["mean_std"].items():
        cells = " | ".join(_pm(f, *st[k]) for k, _, f in METRICS)
        lines.append(f"| {m} | {len(st['seeds'])} | {cells} |")
    if summary["paired"]:
        lines += ["", f"## Paired difference against {b} (method − {b}, same seed)", "",
                  "| method | metric | pairs | mean (points) | std | paired t-test p | "
                  "Holm p | t-interval | its level | verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---|---:|---|"]
        for m, entry in summary["paired"].items():
            for key, label in (("test_error", "test error"),
                               ("best_test_error", "best test error over the run"),
                               ("worst_class_error", "worst-class error")):
                e = entry[key]
                lines.append(
                    f"| {m} | {label} | {len(entry['seeds'])} | {_cell('{:+.2f}', e['mean'])} | "
                    f"{_cell('{:.2f}', e['std'])} | {_cell('{:.3f}', e['p'])} | "
                    f"{_cell('{:.3f}', e['p_holm'])} | {_interval(e['interval'])} | "
                    f"{_cell('{:.2%}', e['interval_level'])} | "
                    f"{entry['verdict'] if key == 'test_error' else ''} |")
    if paper:
        lines += paper_context(summary["methods"])
    if summary["unfinished"]:
        lines += ["", "## Unfinished runs (not in the tables)", ""]
        for u in summary["unfinished"]:
            lines.append(f"- {u['name']} seed {u['seed']}: logged up to step {u['last_step']} of "
                         f"{u['steps']} ({u['run_dir']})")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    lines += [
        "", "## Definitions", "",
        "- Errors are in % of the test set (lower is better); worst-class error is the error of "
        "the class with the lowest test accuracy. Differences are in percentage points; a negative "
        "difference means the method has lower error than the baseline.",
        "- Test error is the final one; best test error over the run is the lowest over the "
        "run's evaluations (logging.eval_every) and the final one, the paper's convention for "
        "most of its CIFAR-100 rows.",
        "- Final train loss: the mean logged batch loss (augmented batches, train mode) over the "
        "last 5 % of the steps.",
        "- Final train accuracy (%): the whole training set evaluated at the end (eval mode, no "
        "augmentation) where results.json has it, else the mean batch accuracy (augmented "
        "batches, train mode) over the last 10 % of the steps. Train acc. gain: that final "
        "accuracy minus the training set's at 75 % of the steps (a plateau check; needs "
        "logging.train_eval_every).",
        "- Min angle (°): the smallest angle between two neurons of a layer (full space); hidden = "
        "mean over the hidden layers of each layer's min angle. Energy: the full-space s = 2 "
        "Euclidean energy, mean of 1/‖ŵ_i − ŵ_j‖² over pairs, at the end of training (hidden: mean "
        "over the hidden layers); the same definition for every method, including half-space MHE.",
        *(["- — in an energy column: a half-space run that logged only its half-space energy "
           "and has no final checkpoint to recompute the full-space one from."]
          if any(math.isnan(row[k]) for row in summary["rows"]
                 for k in ("hidden_energy", "classifier_energy")) else []),
        "- Paired t-test: two-sided, t = mean/(std/√n), n − 1 degrees of freedom; Holm p: Holm's "
        "step-down adjustment across the variants. A bootstrap interval is not shown: over a "
        "few seeds it can never be wider than the differences' range "
        "(mhe_jax.experiments.stats.bootstrap_interval, n ≥ 10 only).",
    ]
    return "\n".join(lines) + "\n"


def write_report(runs_dir, out_dir=None, *, methods: Sequence[str] | None = None,
                 baseline: str = "baseline", title: str | None = None, command: str | None = None,
                 use_checkpoint: bool = True, margin: float = 0.75,
                 paper: bool = False) -> dict:
    """Collect every run under ``runs_dir``; write ``study.md``/``study.json``/PNGs to ``out_dir``.

    Returns the summary (see :func:`mhe_jax.experiments.study.summarize`) with ``"files"``: the
    paths written. Raises ``FileNotFoundError`` when ``runs_dir`` holds no run folder and
    ``ValueError`` when none of them has finished. ``paper`` adds the paper's nearest rows
    (:func:`paper_context`).
    """
    from mhe_jax.experiments.study import find_runs, summarize

    runs = find_runs(runs_dir)
    if methods:
        runs = [r for r in runs if r.method in methods]
    if not runs:
        raise FileNotFoundError(f"no run folder (config.json) under {runs_dir}"
                                + (f" for methods {', '.join(methods)}" if methods else ""))
    summary = summarize(runs, methods=methods, baseline=baseline, use_checkpoint=use_checkpoint,
                        margin=margin)
    if not summary["rows"]:
        raise ValueError(f"none of the {len(runs)} runs under {runs_dir} has finished "
                         "(no results.json)")
    out = Path(out_dir or runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = plot_study_curves(runs, out / "curves.png", methods=summary["methods"])
    bars = plot_test_error_bars(summary, out / "test_error.png")
    finished = [r for r in runs if r.finished]
    machine = _machine_line(finished[0].results or {})
    wall = sum(float((r.results or {}).get("train_seconds") or 0.0) for r in finished)
    run_commands = list(dict.fromkeys(str((r.results or {})["command"]) for r in finished
                                      if (r.results or {}).get("command")))
    title = title or f"Study: {Path(runs_dir).name}"
    text = markdown(summary, title=title, command=command, machine=machine, wall_seconds=wall,
                    figures=[str(curves), str(bars)], run_commands=run_commands, paper=paper)
    (out / "study.md").write_text(text)
    (out / "study.json").write_text(json.dumps({**summary, "command": command}, indent=1,
                                               default=float))
    summary["files"] = [str(out / "study.md"), str(out / "study.json"), str(curves), str(bars)]
    summary["markdown"] = text
    return summary


def _machine_line(results: dict) -> str | None:
    m = results.get("machine")
    if not m:
        return None
    if isinstance(m, str):
        return m
    devices = m.get("devices") or []
    return (f"{m.get('processor', '?')}, {m.get('platform', '?')}, jax {m.get('jax', '?')}, "
            f"devices {', '.join(devices)}")
