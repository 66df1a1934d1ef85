"""A seeds × methods study: run the grid (resuming what is unfinished) and collect its numbers.

Layout (the same as ``run NAME --set seed=S --out OUT/seedS``, so a study started with ``run``
can be collected here)::

    OUT/seed{S}/{PREFIX}/{METHOD}/config.json, log.jsonl, checkpoints/, results.json

A run with ``results.json`` is finished and skipped; one without is resumed from its latest
checkpoint. :func:`summarize` collects

* per seed: final and best-over-run test error, worst-class error, final training loss and
  accuracy, the hidden layers' and the classifier's minimum angle and energy;
* mean ± sample std per method;
* each variant's paired difference against the baseline over the seeds both finished: mean,
  std, the paired t-test and its t-interval at Holm's step-down level across the variants
  (:mod:`mhe_jax.experiments.stats`), and a verdict under a stated decision rule.

The data flow is one way: this module runs and collects; :mod:`mhe_jax.experiments.report`
reads what it collects and writes ``study.md``, ``study.json`` and the figures.

Energies are always the full-space s = 2 Euclidean energy (mean of ``1/‖ŵ_i − ŵ_j‖²`` over
pairs ``i ≠ j``), so methods are comparable: a record's ``energy_full`` when the log has one,
its ``energy`` when the run trained in full space, and otherwise (a half-space run logged only
its half-space energy) recomputed from the final checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mhe_jax.experiments.stats import holm_intervals, mean_std

METHOD_ORDER = ("baseline", "mhe", "half_mhe", "a_mhe", "half_a_mhe", "orthonormal",
                "orthogonality")
OUTPUT_PREFIXES = ("classifier",)  # path components that mark the output layer in old logs


# --------------------------------------------------------------------------- reading runs


def _lookup(config: dict, key: str, default=None):
    """``config[key]``, or ``config[section][key]`` for nested configs (first section found)."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return default


def read_json(path) -> Any:
    """``json.loads`` of a file; a file that is not JSON (e.g. truncated by a killed run) raises
    ``ValueError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): truncated or damaged? Delete it to "
                         "rerun that run, or restore it") from None


def read_jsonl(path) -> list[dict]:
    """Records of a JSONL log; a truncated last line (a killed run) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON") from None
    return out


@dataclass
class StudyRun:
    """One run folder: its config, its log and (once finished) its results."""

    run_dir: Path
    name: str
    method: str  # the name's last component (a study's column), e.g. "half_mhe"
    seed: int
    config: dict
    log: list[dict] = field(repr=False)
    results: dict | None = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def half_space(self) -> bool:
        hs = _lookup(self.config, "half_space")
        if hs is None:  # the flat configs derived it from the method
            hs = str(_lookup(self.config, "method", "")).startswith("half_")
        return bool(hs)

    @property
    def steps(self) -> int:
        return int(_lookup(self.config, "steps", 0) or 0)

    @property
    def last_step(self) -> int:
        return max((int(r.get("step", 0)) for r in self.log), default=0)


def load_run(run_dir) -> StudyRun:
    """Read ``config.json``, ``log.jsonl`` and (if present) ``results.json`` of one run folder."""
    d = Path(run_dir)
    cfg_path, res_path = d / "config.json", d / "results.json"
    if not cfg_path.exists() and not res_path.exists():
        raise FileNotFoundError(f"{d} is not a run folder (no config.json or results.json)")
    results = read_json(res_path) if res_path.exists() else None
    config = (read_json(cfg_path) if cfg_path.exists()
              else dict((results or {}).get("config") or {"name": (results or {}).get("name")}))
    name = str(config.get("name") or d.name)
    method = name.rsplit("/", 1)[-1] if "/" in name else str(_lookup(config, "method", name))
    seed = int(_lookup(config, "seed", 0) or 0)
    return StudyRun(d, name, method, seed, config, read_jsonl(d / "log.jsonl"), results)


def find_runs(root) -> list[StudyRun]:
    """Every run folder (a folder with ``config.json``) under ``root``, sorted by (seed, name)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    runs = [load_run(p.parent) for p in sorted(root.rglob("config.json"))
            if "checkpoints" not in p.relative_to(root).parts]
    return sorted(runs, key=lambda r: (r.seed, r.name))


def is_output_layer(path: str, stats: dict) -> bool:
    """The record's ``is_output`` flag, else (older logs) a path under ``classifier``."""
    if "is_output" in stats:
        return bool(stats["is_output"])
    return path.split("/")[0] in OUTPUT_PREFIXES


def layer_records(run: StudyRun) -> list[dict]:
    """The log's per-layer records (``{"step", "layers": {path: stats}}``), in step order."""
    return [r for r in run.log if "layers" in r]


def _full_energy(run: StudyRun, path: str, stats: dict) -> float | None:
    if "energy_full" in stats:
        return float(stats["energy_full"])
    if not run.half_space or is_output_layer(path, stats):
        return float(stats["energy"])
    return None  # a half-space energy: not comparable across methods


def checkpoint_layer_stats(run_dir, step: int | None = None) -> dict[str, dict] | None:
    """Full-space s = 2 stats of every kernel in a run's checkpoint (default: the latest).

    ``{path: {"energy", "min_angle_deg", "neurons", "dim"}}``; None when the run has no
    checkpoint. Paths are those of the log (``layers/0/conv/kernel``, ``classifier/kernel``).
    """
    import orbax.checkpoint as ocp

    import mhe_jax

    ckpt_dir = Path(run_dir).absolute() / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()
                   and (p / "state").is_dir()) if ckpt_dir.is_dir() else []
    if not steps:
        return None
    step = steps[-1] if step is None else step
    state = ocp.StandardCheckpointer().restore(ckpt_dir / str(step) / "state")
    params = state["model"]
    stats = mhe_jax.layer_energies(params, s=2.0, distance="euclidean", half_space=False)
    out = {}
    flat = {"/".join(map(str, k)): v for k, v in _flatten(params)}
    for path, st in stats.items():
        shape = np.shape(flat[path])
        out[path] = {"energy": float(st.energy), "min_angle_deg": math.degrees(float(st.min_angle)),
                     "neurons": int(shape[-1]), "dim": int(np.prod(shape[:-1]))}
    return out


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, (*prefix, k))
    else:
        yield prefix, tree


def final_layer_stats(run: StudyRun, *, use_checkpoint: bool = True) -> dict[str, dict]:
    """``{path: {"energy" (full space, or None), "min_angle_deg", "is_output"}}`` at the end.

    From the last per-layer log record (or ``results.json``'s ``final_layers``); hidden-layer
    energies a half-space run logged only in half space are recomputed from its final
    checkpoint when ``use_checkpoint`` and the checkpoint is at the run's last step.
    """
    recs = layer_records(run)
    last = recs[-1]["layers"] if recs else ((run.results or {}).get("final_layers") or {})
    out = {p: {"energy": _full_energy(run, p, st), "min_angle_deg": float(st["min_angle_deg"]),
               "is_output": is_output_layer(p, st)} for p, st in last.items()}
    if use_checkpoint and any(v["energy"] is None for v in out.values()):
        step = recs[-1]["step"] if recs else run.steps
        ckpt_steps = _checkpoint_steps(run.run_dir)
        if step in ckpt_steps:
            recomputed = checkpoint_layer_stats(run.run_dir, step) or {}
            for p, v in out.items():
                if v["energy"] is None and p in recomputed:
                    v["energy"] = recomputed[p]["energy"]
    return out


def _checkpoint_steps(run_dir) -> list[int]:
    d = Path(run_dir) / "checkpoints"
    return sorted(int(p.name) for p in d.glob("*") if p.name.isdigit()) if d.is_dir() else []


def _nanmean(values) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return statistics.fmean(v) if v else math.nan


def final_train_accuracy(run: StudyRun) -> float:
    """Training accuracy (fraction) at the end of the run.

    ``results.json``'s ``train_accuracy`` (an evaluation on the training set) if the runner
    wrote one; else the mean logged batch accuracy (augmented batches, train mode) over the
    last 10 % of the steps.
    """
    res = run.results or {}
    if res.get("train_accuracy") is not None:
        return float(res["train_accuracy"])
    return _batch_tail_mean(run, "accuracy", 0.1)


def _batch_tail_mean(run: StudyRun, key: str, fraction: float) -> float:
    """Mean of the logged batch records' ``key`` over the last ``fraction`` of the steps (at
    least the last record; NaN without any)."""
    recs = [r for r in run.log if key in r and "layers" not in r]
    if not recs:
        return math.nan
    end = max(r["step"] for r in recs)
    start = end - max(1, round(fraction * (run.steps or end)))
    return statistics.fmean([r[key] for r in recs if r["step"] > start] or [recs[-1][key]])


def train_accuracy_gain(run: StudyRun, fraction: float = 0.25) -> float:
    """Plateau check: the training-set accuracy at the end minus that at the last training-set
    evaluation at or before ``(1 − fraction)`` of the steps, in points (NaN without training-set
    evaluations in the log, ``logging.train_eval_every``)."""
    recs = sorted((r["step"], r["train_accuracy"]) for r in run.log if "train_accuracy" in r)
    if not recs or not run.steps:
        return math.nan
    final = (run.results or {}).get("train_accuracy")
    end = float(final) if final is not None else recs[-1][1]
    earlier = [a for step, a in recs if step <= (1 - fraction) * run.steps]
    return 100.0 * (end - earlier[-1]) if earlier else math.nan


def best_test_error(run: StudyRun) -> float:
    """The lowest test error (%) over the run's evaluations, the final one included: the
    paper's convention for 8 of the 13 CIFAR-100 rows of its Table 1 (NaN without any)."""
    errors = [100.0 * (1.0 - float(r["test_accuracy"])) for r in run.log if "test_accuracy" in r]
    final = (run.results or {}).get("test_error")
    if final is not None:
        errors.append(float(final))
    return min(errors) if errors else math.nan


def final_train_loss(run: StudyRun, fraction: float = 0.05) -> float:
    """Mean logged batch loss (augmented batches, train mode) over the last ``fraction`` of the
    steps (at least the last record; NaN without any)."""
    return _batch_tail_mean(run, "loss", fraction)


METRICS = (  # key, column header, format
    ("test_error", "test error (%)", "{:.2f}"),
    ("best_test_error", "best test error over the run (%)", "{:.2f}"),
    ("worst_class_error", "worst-class error (%)", "{:.1f}"),
    ("train_loss", "final train loss", "{:.3f}"),
    ("train_accuracy", "final train acc. (%)", "{:.1f}"),
    ("train_gain", "train acc. gain, last 25 % of steps (points)", "{:+.1f}"),
    ("hidden_min_angle", "hidden min angle (°)", "{:.2f}"),
    ("hidden_energy", "hidden energy", "{:.5f}"),
    ("classifier_min_angle", "classifier min angle (°)", "{:.2f}"),
    ("classifier_energy", "classifier energy", "{:.4f}"),
)
#: The paired comparisons: each gets Holm-adjusted t-intervals across the variants.
PAIRED_METRICS = ("test_error", "best_test_error", "worst_class_error")


def run_metrics(run: StudyRun, *, use_checkpoint: bool = True) -> dict[str, float]:
    """The per-seed table's numbers for one finished run (errors and accuracy in %)."""
    if run.results is None:
        raise ValueError(f"{run.run_dir} is not finished (no results.json)")
    res = run.results
    per_class = res.get("per_class_accuracy") or []
    layers = final_layer_stats(run, use_checkpoint=use_checkpoint)
    hidden = [v for v in layers.values() if not v["is_output"]]
    output = [v for v in layers.values() if v["is_output"]]
    return {
        "test_error": float(res["test_error"]),
        "best_test_error": best_test_error(run),
        "worst_class_error": 100.0 * (1.0 - min(per_class)) if per_class else math.nan,
        "train_loss": final_train_loss(run),
        "train_accuracy": 100.0 * final_train_accuracy(run),
        "train_gain": train_accuracy_gain(run),
        "hidden_min_angle": _nanmean(v["min_angle_deg"] for v in hidden),
        "hidden_energy": _nanmean(v["energy"] for v in hidden),
        "classifier_min_angle": _nanmean(v["min_angle_deg"] for v in output),
        "classifier_energy": _nanmean(v["energy"] for v in output),
    }


def verdict(interval: tuple[float, float], margin: float) -> str:
    """The decision rule for ``method − baseline`` test error (points; negative = MHE better).

    * ``"gain shown"``: the interval's upper bound is below 0;
    * ``"paper-sized gain excluded"``: its lower bound is above ``−margin``;
    * ``"inconclusive"`` otherwise (or with fewer than two pairs).

    Examples:
        >>> verdict((-1.2, -0.1), 0.75), verdict((-0.5, 0.3), 0.75), verdict((-1.0, 0.2), 0.75)
        ('gain shown', 'paper-sized gain excluded', 'inconclusive')
    """
    lo, hi = interval
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if hi < 0:
        return "gain shown"
    if lo > -margin:
        return "paper-sized gain excluded"
    return "inconclusive"


def summarize(runs: Sequence[StudyRun], *, methods: Sequence[str] | None = None,
              baseline: str = "baseline", use_checkpoint: bool = True, level: float = 0.95,
              margin: float = 0.75) -> dict:
    """Per-seed rows, mean ± std per method and paired differences against ``baseline``.

    Each variant's paired differences (``method − baseline`` by seed) get the paired t-test
    and a t-interval at Holm's step-down level across the variants
    (:func:`~mhe_jax.experiments.stats.holm_intervals`, family level ``level``), per metric
    of :data:`PAIRED_METRICS`; the test-error interval gets :func:`verdict` with ``margin``
    (points: the size of the paper's gain that the study can exclude).
    """
    finished = [r for r in runs if r.finished]
    if methods:
        order = list(methods)
    else:  # baseline first, then the paper's methods, then the rest as found
        found = list(dict.fromkeys(r.method for r in finished))
        known = (baseline, *METHOD_ORDER)
        order = sorted(found, key=lambda m: (known.index(m) if m in known else len(known),
                                             found.index(m)))
    rows = [{"seed": r.seed, "method": r.method, "name": r.name, "run_dir": str(r.run_dir),
             **run_metrics(r, use_checkpoint=use_checkpoint)}
            for r in finished if r.method in order]
    rows.sort(key=lambda row: (row["seed"], order.index(row["method"])))
    per_method = {}
    for m in order:
        mine = [row for row in rows if row["method"] == m]
        per_method[m] = {"seeds": [row["seed"] for row in mine],
                         **{k: mean_std([row[k] for row in mine if not math.isnan(row[k])])
                            for k, _, _ in METRICS}}
    base = {row["seed"]: row for row in rows if row["method"] == baseline}
    pairs = {m: [(row, base[row["seed"]]) for row in rows
                 if row["method"] == m and row["seed"] in base]
             for m in order if m != baseline}
    paired: dict[str, dict[str, Any]] = {m: {"seeds": [a["seed"] for a, _ in p]}
                                         for m, p in pairs.items()}
    for key in PAIRED_METRICS:
        diffs = {m: [a[key] - b[key] for a, b in p] for m, p in pairs.items()}
        family = holm_intervals(diffs, level=level)
        for m, d in diffs.items():
            mean, sd = mean_std(d)
            paired[m][key] = {"differences": d, "mean": mean, "std": sd, "t": family[m]["t"],
                              "p": family[m]["p"],
                              "p_holm": family[m]["p_holm"], "interval": family[m]["interval"],
                              "interval_level": family[m]["level"]}
    for m in paired:
        paired[m]["verdict"] = verdict(paired[m]["test_error"]["interval"], margin)
    unfinished = [{"name": r.name, "seed": r.seed, "run_dir": str(r.run_dir),
                   "last_step": r.last_step, "steps": r.steps} for r in runs if not r.finished]
    return {"methods": order, "baseline": baseline, "rows": rows, "mean_std": per_method,
            "paired": paired, "unfinished": unfinished, "level": level, "margin": margin}


# --------------------------------------------------------------------------- running the grid


def run_dir_for(out_dir, prefix: str, method: str, seed: int) -> Path:
    """``OUT/seed{S}/{PREFIX}/{METHOD}``: the layout of ``run PREFIX/METHOD --out OUT/seedS``."""
    return Path(out_dir) / f"seed{seed}" / prefix / method


def _nested(stored: dict) -> dict:
    """A ``config.json`` as a nested dict; a flat one (before the config sections) is mapped
    with :data:`~mhe_jax.experiments.configs.FLAT_KEYS` and its unmapped keys dropped."""
    from mhe_jax.experiments.configs import FLAT_KEYS

    if any(isinstance(v, dict) for k, v in stored.items() if k != "paper"):
        return stored
    out: dict = {}
    for key, value in stored.items():
        dotted = FLAT_KEYS.get(key, key if key == "name" else None)
        if dotted is None:
            continue
        if "." in dotted:
            section, name = dotted.split(".", 1)
            out.setdefault(section, {})[name] = value
        else:
            out[dotted] = value
    reg = out.get("regularizer", {})
    for group in ("hidden", "output"):  # old: None = the official λ, hidden/output=False = off
        key = f"{group}_strength"
        if key in reg:
            reg[key] = None if stored.get(group) is False else (
                "official" if reg[key] is None else reg[key])
    return out


def config_differences(stored: dict, config, *, finished: bool) -> list[str]:
    """The result-changing fields in which a run folder's ``config.json`` differs from
    ``config`` (:func:`~mhe_jax.experiments.configs.result_differences`), plus ``optim.steps``
    for a finished run (an unfinished one may grow its steps on resume). Keys a flat, older
    ``config.json`` does not have are not compared."""
    from mhe_jax.experiments.configs import result_differences

    saved = _nested(stored)
    now = config.to_dict()
    flat_saved = not any(isinstance(v, dict) for k, v in stored.items() if k != "paper")
    if flat_saved:  # compare only what the old file recorded
        now = {sec: ({k: v for k, v in now[sec].items() if k in saved.get(sec, {})}
                     if isinstance(now.get(sec), dict) else now.get(sec))
               for sec in saved if sec in now}
    diffs = result_differences(saved, now)
    steps_saved = saved.get("optim", {}).get("steps")
    steps_now = config.to_dict()["optim"]["steps"]
    if finished and steps_saved is not None and steps_saved != steps_now:
        diffs.append(f"optim.steps: {steps_saved!r} (saved) != {steps_now!r} (now)")
    return diffs


def run_study(prefix: str, methods: Sequence[str], seeds: Sequence[int], out_dir, *,
              overrides: Sequence[str] = (), progress: bool = True,
              command: str | None = None, config_for=None,
              workers: int = 1, steps_per_call: int | Literal["auto"] = 1) -> dict:
    """Run ``PREFIX/METHOD`` for every seed (seed-major); the report is the caller's
    (:func:`mhe_jax.experiments.report.write_report`, as the ``study`` command does).

    A run folder with ``results.json`` is skipped; one without is resumed from its latest
    checkpoint (from step 0 if it has none). A folder made with a different config (other
    than ``name``, logging and the data path) raises ``ConfigError`` naming the fields, before
    anything trains.

    ``workers > 1`` trains that many runs at once, each in its own process (see
    :func:`run_parallel`) pinned to its own share of this process's CPUs; the runs and their
    results are the same as with ``workers=1``. ``steps_per_call`` is passed to
    :func:`mhe_jax.experiments.runner.run`.
    Returns ``{"trained": [(seed, method)], "skipped": [(seed, method)], "out_dir": out_dir}``.
    """
    from mhe_jax.experiments.configs import ConfigError
    from mhe_jax.experiments.runner import run

    groups = split_cpus(workers)  # validates workers
    cpu_groups = groups if workers > 1 else None

    if config_for is None:
        from mhe_jax.experiments.configs import apply_overrides, get_config

        def default_config_for(name, items):
            return apply_overrides(get_config(name), list(items))

        config_for = default_config_for

    plan = []
    for seed in seeds:
        for method in methods:
            cfg = config_for(f"{prefix}/{method}", [*overrides, f"seed={seed}"])
            d = run_dir_for(out_dir, prefix, method, seed)
            done = (d / "results.json").exists()
            if (d / "config.json").exists():
                diffs = config_differences(read_json(d / "config.json"), cfg,
                                           finished=done)
                if diffs:
                    raise ConfigError(
                        f"{d} holds a run of a different config ({'; '.join(diffs)}): use another "
                        "--out, or delete that folder to train it again")
            plan.append((seed, method, cfg, d, done))
    trained, skipped, todo = [], [], []
    for seed, method, cfg, d, done in plan:
        if done:
            print(f"seed {seed} {method}: finished, skipped ({d})", flush=True)
            skipped.append((seed, method))
        elif cpu_groups is None:
            print(f"seed {seed} {method}: training ({d}) ...", flush=True)
            run(cfg, d, progress=progress, resume="auto", command=command,
                steps_per_call=steps_per_call)
            trained.append((seed, method))
        else:
            todo.append(((seed, method), cfg, d))
    if todo:
        trained += run_parallel(todo, cpu_groups, command=command, steps_per_call=steps_per_call)
    return {"trained": trained, "skipped": skipped, "out_dir": Path(out_dir)}


# --------------------------------------------------------------------------- parallel runs


def split_cpus(workers: int) -> list[set[int]] | list[None]:
    """This process's CPUs in ``workers`` contiguous groups (``[None] * workers`` where the
    platform cannot pin a process, e.g. macOS: the runs then share every CPU).

    Two single-CPU runs at once train about 1.4x as many steps a second as one run on two CPUs
    (XLA's CPU convolutions scale sub-linearly with threads; measured with CNN-9 16/32/64 on
    the 2-core development machine: 0.37 s a step alone on both cores, 0.53 s each side by side).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if not hasattr(os, "sched_getaffinity"):
        return [None] * workers
    cpus = sorted(os.sched_getaffinity(0))
    if workers > len(cpus):
        raise ValueError(f"workers={workers} is more than the {len(cpus)} CPUs this process may "
                         "use")
    size, extra = divmod(len(cpus), workers)
    groups, start = [], 0
    for k in range(workers):
        n = size + (k < extra)
        groups.append(set(cpus[start:start + n]))
        start += n
    return groups


def _worker_main() -> None:
    """A worker process (see :func:`run_parallel`): one run, its spec read as JSON on stdin."""
    spec = json.loads(sys.stdin.read())
    from mhe_jax.experiments.configs import ExperimentConfig
    from mhe_jax.experiments.runner import run

    run(ExperimentConfig.from_dict(spec["config"]), spec["run_dir"], progress=False,
        resume="auto", command=spec["command"], steps_per_call=spec["steps_per_call"])


def _worker_command(cpus) -> list[str]:
    # Pinned first, before anything imports JAX: its CPU client sizes its thread pool from the
    # process's affinity.
    pin = "" if cpus is None else f"import os; os.sched_setaffinity(0, {sorted(cpus)!r}); "
    return [sys.executable, "-c",
            pin + "from mhe_jax.experiments.study import _worker_main; _worker_main()"]


def run_parallel(todo, cpu_groups, *, command: str | None = None, poll_seconds: float = 1.0,
                 steps_per_call: int | Literal["auto"] = 1):
    """Train ``todo = [(key, cfg, run_dir)]`` in worker processes, one per CPU group at a time.

    Each run's output goes to ``run_dir/train.out``. A failed run does not stop the others
    that are running, but no new one starts; then ``RuntimeError`` names every failed run (the
    finished ones keep their results, the failed one its checkpoints, so the next call
    resumes). Interrupting (Ctrl-C) terminates the workers; their runs resume from their last
    checkpoint. Returns the keys of the trained runs, in the order of ``todo``.
    """
    import subprocess
    import time

    pending = list(todo)
    free = list(range(len(cpu_groups)))
    running: dict[int, tuple] = {}  # group -> (process, key, run_dir)
    trained, failed = [], []
    try:
        while pending or running:
            while pending and free and not failed:
                group = free.pop(0)
                key, cfg, d = pending.pop(0)
                d = Path(d)
                d.mkdir(parents=True, exist_ok=True)
                with open(d / "train.out", "ab") as out:  # the child keeps its own handle
                    proc = subprocess.Popen(_worker_command(cpu_groups[group]),
                                            stdin=subprocess.PIPE, stdout=out,
                                            stderr=subprocess.STDOUT)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"config": cfg.to_dict(), "run_dir": str(d),
                                             "command": command,
                                             "steps_per_call": steps_per_call}).encode())
                proc.stdin.close()
                cpus = "" if cpu_groups[group] is None else (
                    f" on CPU {','.join(map(str, sorted(cpu_groups[group])))}")
                print(f"seed {key[0]} {key[1]}: training ({d}){cpus}, output in "
                      f"{d / 'train.out'} ...", flush=True)
                running[group] = (proc, key, d)
            if failed and not running:
                break
            time.sleep(poll_seconds)
            for group, (proc, key, d) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[group]
                free.append(group)
                if proc.returncode == 0 and (d / "results.json").exists():
                    trained.append(key)
                    print(f"seed {key[0]} {key[1]}: finished", flush=True)
                else:
                    failed.append((key, d, proc.returncode))
    except BaseException:
        for proc, _, _ in running.values():
            proc.terminate()
        for proc, _, _ in running.values():
            proc.wait()
        raise
    if failed:
        raise RuntimeError("study runs failed: " + "; ".join(
            f"seed {k[0]} {k[1]} (exit code {code}; see {d / 'train.out'})"
            for k, d, code in failed) + (f"; not started: {len(pending)}" if pending else ""))
    order = {key: i for i, (key, _, _) in enumerate(todo)}
    return sorted(trained, key=order.__getitem__)
