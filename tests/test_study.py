"""The study's statistics, its report on synthetic run folders, and the grid's resume on digits."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest

from mhe_jax.experiments import report, stats, study

PREFIX = "repro/cifar10_small"
LAYERS = ("classifier/kernel", "fc/conv/kernel", "layers/0/conv/kernel", "layers/1/conv/kernel")


# ----------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("t,dof", [(2.0, 2), (0.3, 1), (5.0, 10), (-1.2, 3), (12.0, 2), (1e-3, 7)])
def test_t_tail_matches_scipy(t, dof):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.student_t_sf2(t, dof) == pytest.approx(2 * scipy_stats.t.sf(abs(t), dof),
                                                         rel=1e-9, abs=1e-12)


def test_paired_t_test_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        a, b = rng.normal(30, 1, n), rng.normal(29.5, 1, n)
        t, p = stats.paired_t_test(a - b)
        ref = scipy_stats.ttest_rel(a, b)
        assert t == pytest.approx(ref.statistic, rel=1e-9)
        assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_paired_t_test_degenerate_cases():
    assert all(math.isnan(v) for v in stats.paired_t_test([0.4]))
    assert stats.paired_t_test([0.5, 0.5, 0.5]) == (math.inf, 0.0)  # no spread: a sure shift
    assert stats.paired_t_test([0.0, 0.0]) == (0.0, 1.0)
    assert stats.student_t_sf2(0.0, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dof"):
        stats.student_t_sf2(1.0, 0)


def test_paired_t_interval_matches_scipy_and_covers_wider_than_the_bootstrap_could():
    """The t-interval of 3 differences is mean ± t_{2, .975} s/√3 (scipy's interval), and it
    is wider than their range, which the old bootstrap interval could never exceed."""
    scipy_stats = pytest.importorskip("scipy.stats")
    d = [0.3, -0.1, 0.5]
    lo, hi = stats.paired_t_interval(d)
    ref = scipy_stats.t.interval(0.95, 2, loc=np.mean(d), scale=scipy_stats.sem(d))
    assert (lo, hi) == pytest.approx(ref, rel=1e-9)
    assert lo < min(d) and hi > max(d)
    assert stats.paired_t_interval([0.2, 0.2]) == pytest.approx((0.2, 0.2))
    assert all(math.isnan(v) for v in stats.paired_t_interval([0.2]))
    with pytest.raises(ValueError, match="level"):
        stats.paired_t_interval(d, level=95)


def test_holm_adjustment_and_levels():
    """Holm's step-down p-values (checked by hand) and the interval levels 1 − α/(m − k + 1)."""
    assert stats.holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.06, "c": 0.06})
    assert stats.holm({"a": 0.5, "b": float("nan")})["a"] == 0.5  # NaN is not counted in m
    diffs = {"a": [0.2, 0.4, 0.6], "b": [0.1, -0.1, 0.3], "c": [1.0, 1.1, 1.3]}
    out = stats.holm_intervals(diffs)
    p = {k: stats.paired_t_test(d)[1] for k, d in diffs.items()}
    ranked = sorted(p, key=p.get)
    assert [out[k]["level"] for k in ranked] == pytest.approx([1 - 0.05 / 3, 1 - 0.05 / 2, 0.95])
    for k in diffs:
        assert out[k]["interval"] == pytest.approx(
            stats.paired_t_interval(diffs[k], level=out[k]["level"]))
    one = stats.holm_intervals({"a": [0.2]})  # one pair: no test, no interval
    assert math.isnan(one["a"]["p"]) and math.isnan(one["a"]["interval"][0])


def test_bootstrap_interval_only_from_ten_pairs():
    d = [0.3, -0.1, 0.5]
    assert all(math.isnan(v) for v in stats.bootstrap_interval(d))  # too few pairs
    d = list(np.random.default_rng(0).normal(0.2, 0.3, 12))
    lo, hi = stats.bootstrap_interval(d)
    assert min(d) - 1e-12 <= lo < np.mean(d) < hi <= max(d) + 1e-12
    assert stats.bootstrap_interval(d, seed=3) == stats.bootstrap_interval(d, seed=3)
    wide = stats.bootstrap_interval(d, level=0.99)
    assert wide[0] <= lo and wide[1] >= hi
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_interval(d, level=95)


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
    assert stats.mean_std([3.0]) == (3.0, 0.0)


def test_verdict_rule():
    assert study.verdict((-1.0, -0.01), 0.75) == "gain shown"
    assert study.verdict((-0.7, 0.4), 0.75) == "paper-sized gain excluded"
    assert study.verdict((-0.8, 0.4), 0.75) == "inconclusive"
    assert study.verdict((float("nan"), float("nan")), 0.75) == "inconclusive"


def test_study_and_report_import_one_way():
    """study runs and collects, report reads and draws: study never imports report."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(study))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for a in node.names}
    assert "mhe_jax.experiments.report" not in imported and "report" not in names


# ----------------------------------------------------------------------------- synthetic runs


def _layers(angle, energy, half_energy=None):
    out = {}
    for i, p in enumerate(LAYERS):
        st = {"energy": energy + 0.01 * i if half_energy is None or p.startswith("classifier")
              else half_energy, "min_angle_deg": angle + i, "mean_abs_cosine": 0.1}
        out[p] = st
    return out


def make_run(root, method, seed, test_error, *, flat=False, finished=True, steps=100,
             angle=70.0, energy=0.5, half_energy=None, full_in_log=False, per_class=None):
    """A run folder as the runner writes it (``flat``: the frozen e6c9f28 config.json)."""
    d = study.run_dir_for(root, PREFIX, method, seed)
    d.mkdir(parents=True)
    name = f"{PREFIX}/{method}"
    if flat:
        cfg = {"name": name, "method": method, "seed": seed, "steps": steps,
               "dataset": "cifar10_jpeg"}
    else:
        cfg = {"name": name, "seed": seed, "data": {"dataset": "cifar10_jpeg"},
               "regularizer": {"method": method}, "optim": {"steps": steps}}
    (d / "config.json").write_text(json.dumps(cfg))
    log = []
    for step in range(0, steps + 1, 10):
        if step:
            log.append({"step": step, "loss": 2.0 - step / steps, "accuracy": 0.5 + 0.004 * step})
        if step % 20 == 0 and (step or not flat):  # old logs have no step-0 record
            layers = _layers(angle + step / 10, energy, half_energy)
            if full_in_log:
                for st in layers.values():
                    st["energy_full"] = energy
            log.append({"step": step, "layers": layers})
        if step % 50 == 0 and step:
            log.append({"step": step, "test_accuracy": 1 - (test_error + 5 * (step < steps)) / 100})
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    if finished:
        per_class = per_class or [1 - test_error / 100] * 9 + [1 - 2 * test_error / 100]
        (d / "results.json").write_text(json.dumps({
            "name": name, "method": method, "test_accuracy": 1 - test_error / 100,
            "test_error": test_error, "per_class_accuracy": per_class, "steps": steps,
            "train_seconds": 60.0, "machine": {"processor": "x86_64", "platform": "Linux",
                                               "jax": "0", "devices": ["cpu"]},
            "command": "python -m mhe_jax.experiments study", "final_layers": None}))
    return d


ERRORS = {"baseline": (30.0, 31.0, 29.5), "mhe": (29.0, 30.5, 29.4), "half_mhe": (28.0, 31.5, 29.0)}


@pytest.fixture
def grid(tmp_path):
    for seed in range(3):
        for method, errs in ERRORS.items():
            make_run(tmp_path, method, seed, errs[seed], angle=70 + 5 * (method != "baseline"))
    return tmp_path


def test_report_numbers(grid, tmp_path):
    out = tmp_path / "report"
    s = report.write_report(grid, out, methods=list(ERRORS), paper=True)
    assert [(r["seed"], r["method"]) for r in s["rows"]] == [
        (seed, m) for seed in range(3) for m in ERRORS]
    for m, errs in ERRORS.items():
        mean, sd = s["mean_std"][m]["test_error"]
        assert mean == pytest.approx(np.mean(errs)) and sd == pytest.approx(np.std(errs, ddof=1))
    for m in ("mhe", "half_mhe"):
        d = np.subtract(ERRORS[m], ERRORS["baseline"])
        e = s["paired"][m]["test_error"]
        assert e["differences"] == pytest.approx(d)
        assert e["mean"] == pytest.approx(d.mean()) and e["std"] == pytest.approx(d.std(ddof=1))
        t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
        assert e["t"] == pytest.approx(t) and e["p"] == pytest.approx(stats.student_t_sf2(t, 2))
        level = e["interval_level"]
        assert level in (pytest.approx(0.975), pytest.approx(0.95))  # Holm over 2 variants
        assert e["interval"] == pytest.approx(stats.paired_t_interval(d, level=level))
        assert s["paired"][m]["verdict"] == study.verdict(e["interval"], 0.75)
    assert sorted(s["paired"][m]["test_error"]["interval_level"] for m in ("mhe", "half_mhe")
                  ) == pytest.approx([0.95, 0.975])
    row = s["rows"][0]
    assert row["worst_class_error"] == pytest.approx(2 * ERRORS["baseline"][0])
    # batch accuracy over the last 10 % of 100 steps: the record at step 100 only
    assert row["train_accuracy"] == pytest.approx(100 * (0.5 + 0.4))
    # final layer record (step 100): angle 70 + 10, layers i = 1, 2, 3 hidden; classifier i = 0
    assert row["classifier_min_angle"] == pytest.approx(80.0)
    assert row["hidden_min_angle"] == pytest.approx(80.0 + 2.0)
    assert row["hidden_energy"] == pytest.approx(0.5 + 0.02)
    text = (out / "study.md").read_text()
    mhe_mean, mhe_sd = np.mean(ERRORS["mhe"]), np.std(ERRORS["mhe"], ddof=1)
    for needle in ("| 0 | baseline | 30.00 | 30.00 | 60.0 | 1.000 | 90.0 |",
                   f"| mhe | 3 | {mhe_mean:.2f} ± {mhe_sd:.2f} |",
                   "Paired difference against baseline", "t-interval", "## Decision rule",
                   "The paper's numbers", "| mhe | mhe | 6.22 | 27.15 | 36.84 |",
                   "python -m mhe_jax.experiments study", "Machine: x86_64",
                   "![curves](curves.png)"):
        assert needle in text, needle
    assert json.loads((out / "study.json").read_text())["paired"]["mhe"]["seeds"] == [0, 1, 2]
    for png in ("curves.png", "test_error.png"):
        assert (out / png).stat().st_size > 10_000


def test_train_accuracy_gain_is_the_last_quarter_of_the_training_set_curve(tmp_path):
    d = make_run(tmp_path, "baseline", 0, 30.0, steps=100)
    run = study.load_run(d)
    assert math.isnan(study.train_accuracy_gain(run))  # no training-set evaluations logged
    with open(d / "log.jsonl", "a") as f:
        for step, acc in ((25, 0.5), (50, 0.6), (75, 0.7), (100, 0.72)):
            f.write(json.dumps({"step": step, "train_accuracy": acc}) + "\n")
    res = json.loads((d / "results.json").read_text())
    (d / "results.json").write_text(json.dumps({**res, "train_accuracy": 0.73}))
    run = study.load_run(d)
    assert study.train_accuracy_gain(run) == pytest.approx(3.0)  # 73 % at the end - 70 % at 75
    assert study.train_accuracy_gain(run, fraction=0.5) == pytest.approx(13.0)
    row = study.run_metrics(run, use_checkpoint=False)
    assert row["train_accuracy"] == pytest.approx(73.0) and row["train_gain"] == pytest.approx(3)
    report.write_report(tmp_path, tmp_path / "r")
    assert "train acc. gain, last 25 % of steps (points)" in (tmp_path / "r" / "study.md"
                                                             ).read_text()
    assert "+3.0" in (tmp_path / "r" / "study.md").read_text()


def test_report_pairs_only_common_seeds_and_lists_unfinished(tmp_path):
    make_run(tmp_path, "baseline", 0, 30.0)
    make_run(tmp_path, "baseline", 1, 31.0)
    make_run(tmp_path, "mhe", 0, 29.0)
    make_run(tmp_path, "mhe", 1, 0.0, finished=False)
    (study.run_dir_for(tmp_path, PREFIX, "mhe", 1) / "log.jsonl").open("a").write('{"step": 1')
    s = report.write_report(tmp_path, methods=["baseline", "mhe"])
    assert s["paired"]["mhe"]["seeds"] == [0]
    assert s["paired"]["mhe"]["test_error"]["mean"] == pytest.approx(-1.0)
    assert math.isnan(s["paired"]["mhe"]["test_error"]["p"])  # one pair: no test
    assert [(u["seed"], u["last_step"]) for u in s["unfinished"]] == [(1, 100)]
    assert "Unfinished runs" in (tmp_path / "study.md").read_text()


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        report.write_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no run folder"):
        report.write_report(tmp_path)
    make_run(tmp_path, "baseline", 0, 30.0, finished=False)
    with pytest.raises(ValueError, match="none of the 1 runs"):
        report.write_report(tmp_path)
    d = study.run_dir_for(tmp_path, PREFIX, "baseline", 0)
    (d / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        study.load_run(d)


def test_energy_never_mixes_half_space(tmp_path):
    """A half-space run whose log has only its half-space energy gets no hidden energy (—),
    unless the log has ``energy_full`` or a final checkpoint to recompute it from."""
    make_run(tmp_path, "baseline", 0, 30.0, flat=True)
    make_run(tmp_path, "half_mhe", 0, 29.0, flat=True, half_energy=0.01)
    make_run(tmp_path, "half_mhe", 1, 29.0, half_energy=0.01, full_in_log=True, energy=0.49)
    s = report.write_report(tmp_path)
    rows = {(r["seed"], r["method"]): r for r in s["rows"]}
    assert rows[0, "baseline"]["hidden_energy"] == pytest.approx(0.52)
    assert math.isnan(rows[0, "half_mhe"]["hidden_energy"])  # half-space only, no checkpoint
    assert rows[0, "half_mhe"]["classifier_energy"] == pytest.approx(0.5)  # output: full space
    assert rows[1, "half_mhe"]["hidden_energy"] == pytest.approx(0.49)


def test_half_space_energy_recomputed_from_final_checkpoint(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    from tests.helpers import np_energy  # float64 brute force

    d = make_run(tmp_path, "half_mhe", 0, 29.0, flat=True, half_energy=0.01)
    rng = np.random.default_rng(0)
    model = {"classifier": {"kernel": rng.normal(size=(8, 10))},
             "fc": {"conv": {"kernel": rng.normal(size=(2, 2, 4, 8))}},
             "layers": {0: {"conv": {"kernel": rng.normal(size=(3, 3, 3, 4)),
                                     "bias": np.zeros(4)}},
                        1: {"conv": {"kernel": rng.normal(size=(3, 3, 4, 4))}}}}
    ckpt = ocp.StandardCheckpointer()
    ckpt.save((d / "checkpoints" / "100" / "state").absolute(), {"model": model})
    ckpt.wait_until_finished()
    run = study.load_run(d)
    stats = study.final_layer_stats(run)
    for path, kernel in (("fc/conv/kernel", model["fc"]["conv"]["kernel"]),
                         ("layers/0/conv/kernel", model["layers"][0]["conv"]["kernel"])):
        assert stats[path]["energy"] == pytest.approx(np_energy(kernel, s=2.0), rel=1e-5)
    assert stats["classifier/kernel"]["energy"] == pytest.approx(0.5)  # from the log (full space)


# ----------------------------------------------------------------------------- the grid, for real

TINY = ["data.image_size=8", "model.widths=4,4,8", "data.batch_size=32", "optim.steps=4",
        "optim.boundaries=3", "optim.warmup_steps=0", "logging.log_every=1",
        "logging.energy_every=2", "logging.eval_every=2", "logging.checkpoint_every=2"]


class Killed(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def test_study_grid_resumes_a_half_finished_grid(tmp_path, monkeypatch, capsys):
    from mhe_jax.experiments.__main__ import main as cli
    from mhe_jax.experiments.configs import ConfigError
    from mhe_jax.train import Checkpointer

    out = tmp_path / "study"
    # 1. one finished run
    first = study.run_study("quickstart", ["baseline"], [0], out, overrides=TINY, progress=False)
    assert first["trained"] == [(0, "baseline")] and first["skipped"] == []
    done = study.run_dir_for(out, "quickstart", "baseline", 0) / "results.json"
    finished_bytes = done.read_bytes()
    # 2. one run killed right after its step-2 checkpoint
    save = Checkpointer.save

    def save_then_die(self, step, *args, **kwargs):
        save(self, step, *args, **kwargs)
        if step == 2:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_die)
        with pytest.raises(Killed):
            study.run_study("quickstart", ["mhe"], [0], out, overrides=TINY, progress=False)
    half = study.run_dir_for(out, "quickstart", "mhe", 0)
    assert not (half / "results.json").exists() and (half / "checkpoints").is_dir()
    capsys.readouterr()
    # 3. the whole 2 x 2 grid from the command line: only the three missing runs train
    cli(["study", "--configs", "quickstart", "--methods", "baseline,mhe", "--seeds", "0,1",
         "--out", str(out), "--no-progress", *[a for t in TINY for a in ("--set", t)]])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed ")]
    assert printed[0].startswith("seed 0 baseline: finished, skipped")
    assert [line.split(":")[0] for line in printed] == [
        "seed 0 baseline", "seed 0 mhe", "seed 1 baseline", "seed 1 mhe"]  # seed-major
    assert all("training" in line for line in printed[1:])
    assert done.read_bytes() == finished_bytes  # not retrained
    assert json.loads((half / "results.json").read_text())["resumed_from"] == 2
    # every run's log starts with the initialization (once, also in the resumed run)
    _, model = _tiny_model()  # seed 0's model before training
    init = _initial_stats(model)
    for run_dir in (done.parent, half):
        run = study.load_run(run_dir)
        assert [r["step"] for r in study.layer_records(run)] == [0, 2, 4]
        for path, st in study.layer_records(run)[0]["layers"].items():
            assert st["energy_full"] == pytest.approx(init[path]["energy"], rel=1e-5)
            assert st["min_angle_deg"] == pytest.approx(init[path]["min_angle_deg"], abs=1e-3)
            assert {"is_output", "neurons", "dim"} <= set(st)
        assert 0.0 <= run.results["train_accuracy"] <= 1.0  # the training set, evaluated
        assert study.final_train_accuracy(run) == run.results["train_accuracy"]
    for seed, method in ((1, "baseline"), (1, "mhe")):
        res = json.loads((study.run_dir_for(out, "quickstart", method, seed) / "results.json")
                         .read_text())
        assert res["resumed_from"] == 0 and res["steps"] == 4
    summary = json.loads((out / "study.json").read_text())
    assert [(r["seed"], r["method"]) for r in summary["rows"]] == [
        (0, "baseline"), (0, "mhe"), (1, "baseline"), (1, "mhe")]
    assert summary["paired"]["mhe"]["seeds"] == [0, 1]
    text = (out / "study.md").read_text()
    assert "| 1 | mhe |" in text and "Paired difference against baseline" in text
    # 4. a changed config is refused before anything trains, naming the field
    with pytest.raises(ConfigError, match="optim.lr"):
        study.run_study("quickstart", ["baseline", "mhe"], [0, 1], out,
                        overrides=[*TINY, "optim.lr=0.5"], progress=False)
    # 5. report only, into another folder
    cli(["study", "--report-only", "--runs", str(out), "--methods", "baseline,mhe",
         "--report-out", str(tmp_path / "report")])
    report_md = (tmp_path / "report" / "study.md").read_text()
    assert "| 1 | mhe |" in report_md and "| mhe | 2 |" in report_md  # per seed; mean of 2
    assert (tmp_path / "report" / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_parallel_study_equals_the_in_process_study(tmp_path, capsys):
    """Two tiny runs with --workers 2 (worker processes, one CPU each) give the in-process
    results, to float32 rounding (one thread sums the convolutions in another order)."""
    from mhe_jax.experiments.__main__ import main as cli

    ref = study.run_study("quickstart", ["baseline", "mhe"], [1], tmp_path / "seq",
                          overrides=TINY, progress=False)
    assert ref["trained"] == [(1, "baseline"), (1, "mhe")]
    capsys.readouterr()
    par = tmp_path / "parallel"
    workers = min(2, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 2
    cli(["study", "--configs", "quickstart", "--methods", "baseline,mhe", "--seeds", "1",
         "--out", str(par), "--no-progress", "--workers", str(workers),
         *[a for t in TINY for a in ("--set", t)]])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("seed ")]
    assert [line.split(":")[0] for line in printed if ": training" in line] == [
        "seed 1 baseline", "seed 1 mhe"]
    assert sorted(line for line in printed if line.endswith(": finished")) == [
        "seed 1 baseline: finished", "seed 1 mhe: finished"]
    for m in ("baseline", "mhe"):
        want = json.loads((study.run_dir_for(tmp_path / "seq", "quickstart", m, 1)
                           / "results.json").read_text())
        d = study.run_dir_for(par, "quickstart", m, 1)
        res = json.loads((d / "results.json").read_text())
        assert (d / "train.out").exists()
        assert res["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=0.003)
        assert res["train_accuracy"] == pytest.approx(want["train_accuracy"], abs=0.003)
        assert res["final_layers"].keys() == want["final_layers"].keys()
        for path, st in want["final_layers"].items():
            for k in ("energy", "min_angle_deg"):
                assert res["final_layers"][path][k] == pytest.approx(st[k], rel=1e-4), (m, path)


def test_parallel_study_names_failed_runs_and_keeps_their_output(tmp_path, capsys):
    from mhe_jax.experiments.configs import apply_overrides, get_config

    # the child fails at its first step: the data file does not exist
    cfg = apply_overrides(get_config("repro/cifar10_small/baseline"),
                          [f"data.data_dir={tmp_path / 'missing.npz'}"])
    todo = [((0, "baseline"), cfg, tmp_path / "a"), ((1, "baseline"), cfg, tmp_path / "b"),
            ((2, "baseline"), cfg, tmp_path / "c")]
    with pytest.raises(RuntimeError, match=r"seed 0 baseline \(exit code 1; see .*train.out\)"
                       r".*not started: 1"):
        study.run_parallel(todo, study.split_cpus(1) * 2, poll_seconds=0.05)
    assert "missing.npz" in (tmp_path / "a" / "train.out").read_text()
    assert not (tmp_path / "c").exists()  # nothing new starts after a failure


def test_split_cpus(tmp_path):
    if not hasattr(os, "sched_getaffinity"):
        assert study.split_cpus(3) == [None] * 3
        return
    cpus = os.sched_getaffinity(0)
    groups = study.split_cpus(len(cpus))
    assert all(len(g) == 1 for g in groups) and set().union(*groups) == cpus
    assert study.split_cpus(1) == [cpus]
    with pytest.raises(ValueError, match="workers=.* more than"):
        study.split_cpus(len(cpus) + 1)
    with pytest.raises(ValueError, match="workers must be an int >= 1"):
        study.run_study("quickstart", ["baseline"], [0], tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


def test_quickstart_figure_from_synthetic_runs(tmp_path):
    from mhe_jax.experiments import report

    for seed in (0, 1):
        for method in ("baseline", "mhe", "half_mhe"):
            make_run(tmp_path, method, seed, 10.0 + seed, angle=60 + 10 * (method != "baseline"),
                     half_energy=0.01 if method == "half_mhe" else None, full_in_log=True)
    runs = study.find_runs(tmp_path)
    assert all(layer_records[0]["step"] == 0 for layer_records in map(study.layer_records, runs))
    shapes = {p: (10 if p.startswith("classifier") else 4, 27) for p in LAYERS}
    png = report.plot_quickstart(runs, tmp_path / "q.png", layer_shapes=shapes, title="t")
    assert png.stat().st_size > 30_000
    fig = report.quickstart_figure(runs, layer_shapes=shapes, title="t")
    axes = {ax.get_gid(): ax for ax in fig.get_axes() if ax.get_gid()}
    methods = ["baseline", "mhe", "half_mhe"]

    def method_lines(ax):
        return {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid() in methods}

    def optimum_lines(ax):
        return [ln.get_ydata()[0] for ln in ax.get_lines() if ln.get_gid() == "optimum"]

    for path in LAYERS:  # one panel per layer and quantity, one curve per method, from step 0
        n = shapes[path][0]
        for kind in ("angle", "energy"):
            lines = method_lines(axes[f"{kind}:{path}"])
            assert sorted(lines) == sorted(methods)
            assert all(ln.get_xdata()[0] == 0 for ln in lines.values())
        assert optimum_lines(axes[f"angle:{path}"]) == pytest.approx(
            [report.simplex_angle_deg(n)])
        energy = method_lines(axes[f"energy:{path}"])["half_mhe"].get_ydata()  # full space
        assert energy[0] == pytest.approx(0.5 - report.simplex_energy(n))
        assert axes[f"energy:{path}"].get_yscale() == "log"
    assert optimum_lines(axes["summary:classifier_angle"]) == pytest.approx([96.379], abs=1e-3)
    hidden = method_lines(axes["summary:hidden_angle"])["mhe"]  # mean over the hidden layers
    assert hidden.get_xdata()[0] == 0 and hidden.get_ydata()[0] == pytest.approx(70 + 2)
    acc = axes["summary:accuracy"]  # a bar per method, with error bars over the two seeds
    assert [b.get_gid() for b in acc.patches] == methods
    assert acc.patches[0].get_height() == pytest.approx(100 - 10.5)
    assert sum(type(c).__name__ == "ErrorbarContainer" for c in acc.containers) == 3
    with pytest.raises(ValueError, match="per-layer records"):
        old = study.load_run(make_run(tmp_path / "x", "mhe", 0, 1.0, steps=5, flat=True))
        report.plot_quickstart([old], tmp_path / "none.png")


def test_optimum_references():
    import mhe_jax
    from mhe_jax.experiments import report

    for n in (2, 3, 10):
        simplex = np.eye(n) - 1.0 / n  # n unit vectors of a regular simplex in R^n
        st = mhe_jax.energy_stats(simplex / np.linalg.norm(simplex, axis=0))
        assert report.simplex_energy(n) == pytest.approx(float(st.energy), rel=1e-6)
        assert report.simplex_angle_deg(n) == pytest.approx(math.degrees(float(st.min_angle)),
                                                            abs=1e-4)


# ----------------------------------------------------------------------------- runner's records


def _tiny_model():
    from mhe_jax.experiments.configs import apply_overrides, get_config
    from mhe_jax.experiments.runner import build_model

    cfg = apply_overrides(get_config("quickstart/half_mhe"), TINY)
    return cfg, build_model(cfg, 10, 1, 8)


def _initial_stats(model) -> dict:
    import flax.nnx as nnx

    import mhe_jax

    params = nnx.state(model, nnx.Param)
    return mhe_jax.layer_energies(params, output="classifier/kernel", as_floats=True,
                                  degrees=True)


def test_energy_logger_records_full_space_energy_role_and_shape():
    """Beside the run's own energy: the full-space one, the layer's role and its (N, d); a
    half-space run's hidden energies differ from their full-space ones, a full-space run logs
    one energy twice."""
    import flax.nnx as nnx

    import mhe_jax
    from mhe_jax.experiments.configs import get_config
    from mhe_jax.experiments.runner import build_regularizer
    from mhe_jax.train import energy_logger

    cfg, model = _tiny_model()
    _, half_options = build_regularizer(cfg.regularizer, model.output_path)
    _, full_options = build_regularizer(get_config("quickstart/mhe").regularizer,
                                        model.output_path)
    assert half_options["half_space"] is True and full_options["half_space"] is False
    half = energy_logger(**half_options)(model)["layers"]
    full = energy_logger(**full_options)(model)["layers"]
    init = _initial_stats(model)
    kernels = {mhe_jax.path_str(kp): np.shape(v) for kp, v in
               jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]}
    assert set(half) == set(full) == set(init) and len(half) == 11  # 9 convs, fc, classifier
    for path, st in half.items():
        shape = kernels[path]
        assert (st["neurons"], st["dim"]) == (shape[-1], math.prod(shape[:-1]))
        assert st["is_output"] == (path == "classifier/kernel") == full[path]["is_output"]
        assert st["energy_full"] == pytest.approx(init[path]["energy"], rel=1e-5)
        assert full[path]["energy"] == full[path]["energy_full"] == pytest.approx(
            st["energy_full"], rel=1e-6)
        if st["is_output"]:  # the classifier is full space in every run
            assert st["energy"] == pytest.approx(st["energy_full"], rel=1e-6)
        else:
            assert abs(st["energy"] - st["energy_full"]) > 1e-3 * st["energy_full"]
    from tests.helpers import np_energy  # float64 brute force of the s = 2 Euclidean energy

    w = np.asarray(nnx.state(model, nnx.Param)["fc"]["conv"]["kernel"][...], np.float64)
    assert half["fc/conv/kernel"]["energy_full"] == pytest.approx(np_energy(w, s=2.0), rel=1e-5)

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.hidden = nnx.Linear(4, 3, rngs=rngs)
            self.head = nnx.Linear(3, 2, rngs=rngs)

    net = Net(nnx.Rngs(0))
    # the output role as the regularizer decides it, for a regex and a callable too
    for output in ("head", "he.d", "head/kernel", lambda p: p == "head/kernel"):
        log = energy_logger(output=output)(net)["layers"]
        assert {p: st["is_output"] for p, st in log.items()} == {
            "head/kernel": True, "hidden/kernel": False}, output
    assert not any(st["is_output"] for st in energy_logger()(net)["layers"].values())
    # shapes follow the neuron axes given: neurons along axis 0 of a (4, 3) kernel are 4 of d = 3
    axes = energy_logger(output="head", neuron_axis=0)(net)["layers"]
    assert (axes["hidden/kernel"]["neurons"], axes["hidden/kernel"]["dim"]) == (4, 3)
    assert (axes["head/kernel"]["neurons"], axes["head/kernel"]["dim"]) == (3, 2)


def test_truncated_json_is_named(tmp_path):
    """A results.json / config.json cut short by a killed run raises ValueError naming the file
    (load_run, find_runs, report.collect), not a bare JSONDecodeError."""
    d = make_run(tmp_path, "baseline", 0, 30.0)
    (d / "results.json").write_text('{"name": "x", "test_er')
    for call in (lambda: study.load_run(d), lambda: study.find_runs(tmp_path),
                 lambda: report.collect([tmp_path])):
        with pytest.raises(ValueError, match="results.json is not valid JSON"):
            call()
    (d / "results.json").unlink()
    (d / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        study.load_run(d)
