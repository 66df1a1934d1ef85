"""Finished runs → markdown tables beside the paper's numbers, and accuracy / energy plots."""

from __future__ import annotations

import json
from pathlib import Path


def collect(paths) -> list[dict]:
    """Every ``results.json`` under the given directories (or files), with its run directory."""
    found = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            r = json.loads(f.read_text())
            r["run_dir"] = str(f.parent)
            found.append(r)
    return found


def _fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def markdown_table(results: list[dict]) -> str:
    """One row per run: config, our test error, the paper's number for that row, and their gaps."""
    lines = ["| config | steps | test error (%) | paper (%) | per-class min acc (%) |",
             "|---|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r["name"]):
        paper = (r.get("paper") or {}).get("value")
        if (r.get("paper") or {}).get("metric", "").startswith("test accuracy"):
            paper = None if paper is None else 100.0 - paper
        per_class = r.get("per_class_accuracy") or []
        worst = min(per_class) * 100 if per_class else None
        lines.append(f"| {r['name']} | {r['steps']} | {_fmt(r['test_error'])} | {_fmt(paper)} | {_fmt(worst, 1)} |")
    return "\n".join(lines)


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_runs(run_dirs, out_png, *, title: str | None = None):
    """Training loss, test accuracy and mean layer energy against steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run_dir in run_dirs:
        log = read_log(run_dir)
        label = Path(run_dir).name
        loss = [(e["step"], e["loss"]) for e in log if "loss" in e]
        acc = [(e["step"], e["test_accuracy"]) for e in log if "test_accuracy" in e]
        energy = [(e["step"], sum(v["energy"] for v in e["layers"].values()) / len(e["layers"]))
                  for e in log if "layers" in e]
        for ax, series in zip(axes, (loss, acc, energy)):
            if series:
                ax.plot(*zip(*series), label=label, marker="." if len(series) < 30 else None)
    for ax, name in zip(axes, ("train loss", "test accuracy", "mean layer energy (s of the run)")):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
