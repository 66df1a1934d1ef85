"""``python benchmarks/device.py --smoke`` (issue 16 §4): all three parts run and report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import child_xla_flags

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *args):
    out = tmp_path / "device.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": child_xla_flags()}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device.py"), "--smoke", "--out", str(out),
         "--runs-dir", str(tmp_path / "runs"), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check(result, stdout, parts, methods=("baseline", "mhe", "half_mhe")):
    assert result["smoke"] is True and result["machine"]["backend"] == "cpu"
    if "energy" in parts:
        rows = result["energy"]
        assert rows and all(r["ours_s"] > 0 and r["matmul_s"] > 0 and "naive_s" in r
                            for r in rows)
        assert "## (a) energy value_and_grad vs one w.T @ w" in stdout
    if "train_step" in parts:
        ts = result["train_step"]
        (r,) = ts["results"]
        assert r["model"] == "cnn9" and tuple(r["step_seconds"]) == methods
        assert ts["flops"][0]["flops"] > 0
        assert "## (b) train step (ms) and ratio to baseline" in stdout
    if "table1" in parts:
        rows = result["table1"]
        assert tuple(r["method"] for r in rows) == methods
        assert all(r["steps"] == 4 and 0 <= r["test_error"] <= 100 and not r["full_recipe"]
                   and r["paper_test_error"] is not None for r in rows)
        assert all(r["steps_per_call"] == 2 for r in rows)  # one jitted scan per log interval
        assert "## (c) Table 1, CIFAR-10, CNN-9 (test error %)" in stdout
    for part in {"energy", "train_step", "table1"} - set(parts):
        assert part not in result


@pytest.mark.slow  # ~60 s; fast twin: the --methods baseline subset below
def test_device_smoke_runs_all_three_parts(tmp_path):
    """``--smoke``: all three parts, every method."""
    result, stdout = _run(tmp_path)
    _check(result, stdout, ("energy", "train_step", "table1"))


def test_device_smoke_subset_runs_all_three_parts(tmp_path):
    """``--methods baseline``: the same three parts, baseline rows only in (b) and (c)."""
    result, stdout = _run(tmp_path, "--methods", "baseline")
    _check(result, stdout, ("energy", "train_step", "table1"), methods=("baseline",))


def test_device_methods_option_is_checked(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device.py"), "--smoke",
                           "--methods", "mhe"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--methods must start with baseline" in proc.stderr


def test_budget_scaled_schedule_keeps_one_call_length():
    """A shortened Table 1 run keeps log_every and makes the other intervals multiples of it,
    so every jitted call trains runner.call_length(cfg) = 100 steps."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from mhe_jax.experiments.configs import get_config
    from mhe_jax.experiments.runner import call_length

    full = get_config("repro/cifar10_cnn9_full/mhe")
    assert call_length(full) == 100
    for steps in (1000, 4321, 20000):
        cfg = device.scaled_config(full, steps)
        lg = cfg.logging
        assert lg.log_every == 100 and lg.eval_every % 100 == 0 and lg.energy_every % 100 == 0
        assert call_length(cfg) == 100 and cfg.optim.steps == steps
        assert cfg.optim.boundaries == tuple(round(b * steps / 42500)
                                             for b in full.optim.boundaries)
    assert call_length(device.scaled_config(full, 60)) == 60
