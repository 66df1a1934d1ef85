"""The experiments CLI as two processes (issue 27 §3): the same run as one process.

``test_two_process_cli_run_equals_the_one_process_run`` starts, at once, the quickstart config
(CNN-9 + MHE on digits, shrunk: widths 4/4/8, 8x8 images, 20 steps) as one process and as two
processes on 127.0.0.1 (one CPU device each, gloo collectives, a free port), each through
``tests/_multiprocess_cli_child.py``, which runs ``python -m mhe_jax.experiments`` unchanged
and records the files it writes and the batch rows it loads. Every process is waited for with
a deadline and only the processes started here are killed when they outlive it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mhe_jax.experiments.__main__ import main as cli
from mhe_jax.train import DataParallel, epoch_batches, process_batches
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("_multiprocess_cli_child.py")
STEPS = 20
SETS = ["model.widths=4,4,8", "data.image_size=8", f"optim.steps={STEPS}",
        "logging.log_every=5", "logging.energy_every=10", "logging.checkpoint_every=10"]
RUN = ["run", "quickstart/mhe", "--no-progress", *[a for s in SETS for a in ("--set", s)]]
# A guard against a hang, not a speed test: the three processes take ~55 s of CPU time in all
# (~30 s on 2 idle cores), and 127 s on the 2 cores of the development machine while 20
# other processes ran.
TIMEOUT = 300
# environment variables through which a process could join another run or cluster
FOREIGN = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
           "JAX_LOCAL_DEVICE_IDS", "XLA_FLAGS", "JAX_ENABLE_X64")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in FOREIGN and not k.startswith(("SLURM_", "OMPI_", "PMI_", "KUBERNETES_"))}
    # LLVM at -O0: a third less CPU time, mostly compiling; the same flags in every process
    return {**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
            "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def _start(tag: str, args: list[str], tmp: Path) -> subprocess.Popen:
    log = open(tmp / f"{tag}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(CHILD), str(tmp / f"{tag}.record.json"), *args],
                            env=_env(), cwd=tmp, stdout=subprocess.PIPE, stderr=log, text=True)


def _wait(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, tuple[int, str]]:
    """(return code, stdout) of each; past the deadline kill the processes started here (by
    their pid) and fail."""
    try:
        done = helpers.wait_or_kill(procs, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the CLI processes did not finish within {timeout} s")
    return {tag: (code, stdout) for tag, (code, stdout, _) in done.items()}

def _records(path: Path) -> dict[int, list[dict]]:
    """log.jsonl's records by step (several per step: losses, energies, evaluations)."""
    by_step: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        by_step.setdefault(r["step"], []).append(r)
    return by_step


def _close(a, b, where: str, rel: float) -> float:
    """Compare two records' numbers (nested dicts and lists); the largest relative gap."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), where
        return max([_close(a[k], b[k], f"{where}/{k}", rel) for k in a] or [0.0])
    if isinstance(a, list):
        assert len(a) == len(b), where
        return max([_close(x, y, f"{where}[{i}]", rel) for i, (x, y) in
                    enumerate(zip(a, b, strict=True))] or [0.0])
    if isinstance(a, bool) or not isinstance(a, float):
        assert a == b, (where, a, b)
        return 0.0
    if np.isnan(a):
        assert np.isnan(b), where
        return 0.0
    gap = abs(a - b) / max(abs(a), 1e-30)
    assert gap <= rel, (where, a, b, gap)
    return gap


def test_two_process_cli_run_equals_the_one_process_run(tmp_path):
    """One process and two processes of the same run, started together; then the checks
    below (one test, so that pytest-xdist does not start the runs in two workers)."""
    runs = _start_runs(tmp_path)
    _metrics_agree(runs)
    _only_process_0_writes_and_each_loads_its_own_rows(runs)
    _checkpoints_restore_and_agree(runs)


def _start_runs(tmp: Path):
    coordinator = f"127.0.0.1:{_free_port()}"
    two = ["--coordinator", coordinator, "--num-processes", "2"]
    t0 = time.monotonic()
    procs = {"two0": _start("two0", [*RUN, "--out", str(tmp / "two"), *two, "--process-id", "0"],
                            tmp),
             "two1": _start("two1", [*RUN, "--out", str(tmp / "two"), *two, "--process-id", "1"],
                            tmp),
             "one": _start("one", [*RUN, "--out", str(tmp / "one")], tmp)}
    done = _wait(procs, TIMEOUT)
    logs = "\n".join(f"== {t}\n{(tmp / f'{t}.log').read_text()[-3000:]}" for t in procs)
    assert all(code == 0 for code, _ in done.values()), (done, logs)
    print(f"3 processes in {time.monotonic() - t0:.1f} s")
    return tmp, done, {t: json.loads((tmp / f"{t}.record.json").read_text()) for t in procs}


def _metrics_agree(runs):
    """Every record of the 2-process log (batch losses and accuracies, learning rates, every
    layer's energy and angles at steps 0/10/20, test and training-set accuracy) equals the
    1-process one to float32 rounding (measured: relative gaps up to ~3e-7, the accuracies
    equal), and results.json says so too; a process that loaded the wrong half of a batch, or
    a batch twice, is off by orders of magnitude more."""
    tmp, _, _ = runs
    one = _records(tmp / "one" / "quickstart/mhe" / "log.jsonl")
    two = _records(tmp / "two" / "quickstart/mhe" / "log.jsonl")
    assert sorted(one) == sorted(two) == [0, 5, 10, 15, 20]
    worst = max(_close(a, b, f"step {s}", rel=2e-5) for s in one
                for a, b in zip(one[s], two[s], strict=True))
    print(f"largest relative gap between the logs: {worst:.2e}")
    r1, r2 = (json.loads((tmp / d / "quickstart/mhe" / "results.json").read_text())
              for d in ("one", "two"))
    for key in ("test_accuracy", "train_accuracy", "per_class_accuracy", "steps"):
        assert r1[key] == r2[key], key
    _close(r1["final_layers"], r2["final_layers"], "final_layers", rel=2e-5)
    assert r2["machine"]["processes"] == 2 and "processes" not in r1["machine"]
    assert len(r2["machine"]["devices"]) == 2 and len(r1["machine"]["devices"]) == 1


def _only_process_0_writes_and_each_loads_its_own_rows(runs):
    """Process 1 writes nothing under --out outside the checkpoints and prints nothing;
    process 0 writes what the 1-process run writes. Each global batch (64 training examples;
    the evaluation batches, padded to even) is split into two disjoint halves, one each."""
    tmp, done, rec = runs

    def written(tag: str, out: Path) -> set[str]:
        paths = {Path(p) for _, p in rec[tag]["writes"]}
        return {str(p.relative_to(out)) for p in paths if p.is_relative_to(out)
                and "checkpoints" not in p.relative_to(out).parts}

    mine = written("two0", tmp / "two")
    assert written("two1", tmp / "two") == set(), rec["two1"]["writes"]
    def printed(tag: str) -> list[str]:  # gloo's own note of the connection aside
        return [line for line in done[tag][1].splitlines() if not line.startswith("[Gloo]")]

    assert printed("two1") == []
    assert [line.replace("/two/", "/one/") for line in printed("two0")] == printed("one")
    assert "test error" in printed("one")[0]
    assert {"quickstart/mhe/config.json", "quickstart/mhe/log.jsonl",
            "quickstart/mhe/results.json"} <= mine
    assert mine == written("one", tmp / "one")
    rows0, rows1 = rec["two0"]["rows"], rec["two1"]["rows"]
    assert "64" in rows0 and sorted(rows0) == sorted(rows1)
    for size, r0 in rows0.items():
        r1 = rows1[size]
        assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(int(size))), size
        assert len(r0) == len(r1) == int(size) // 2
    assert rec["one"]["rows"] == {}  # one process, one device: the single-device path


def _checkpoints_restore_and_agree(runs):
    """Both processes saved checkpoints 10 and 20 together (orbax); checkpoint 20 restores
    in this (single) process with its checksum verified, into the model and optimizer of
    the config, and equals the 1-process run's to float32 rounding (measured: every leaf
    within 5e-6 of its largest value, the median 3e-7; the integer leaves equal)."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp

    from mhe_jax.experiments import apply_overrides, get_config
    from mhe_jax.experiments.runner import build_model, build_optimizer
    from mhe_jax.train import Checkpointer

    tmp, _, _ = runs
    cfg = apply_overrides(get_config("quickstart/mhe"), SETS)

    def model_and_optimizer():
        model = build_model(cfg, 10, 1, 8)
        return model, build_optimizer(cfg, model)[0]

    # zeros of the right shapes, to restore into (no initialization to compile here)
    graphdef, abstract = nnx.split(nnx.eval_shape(model_and_optimizer))
    states = {}
    for d in ("one", "two"):
        ckpt = tmp / d / "quickstart/mhe" / "checkpoints"
        assert sorted(p.name for p in ckpt.iterdir()) == ["10", "20"], d
        model, optimizer = nnx.merge(
            graphdef, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract))
        with Checkpointer(ckpt) as c:
            restored = c.restore(model, optimizer)
        assert restored is not None
        step, meta = restored
        assert step == STEPS and "checksum" in meta and meta["config"] == cfg.to_dict()
        states[d] = jax.device_get(nnx.to_pure_dict(nnx.state((model, optimizer))))
    leaves = jax.tree_util.tree_leaves_with_path(states["one"])
    assert len(leaves) > 50
    for (path, a), b in zip(leaves, jax.tree.leaves(states["two"]), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind == "f":
            gap = np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)
            assert gap < 5e-5, (jax.tree_util.keystr(path), gap)  # measured: at most 5e-6
        else:
            assert np.array_equal(a, b), jax.tree_util.keystr(path)


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_process_shards_are_disjoint_and_make_the_global_batch(processes):
    """Each process's rows of every batch (contiguous blocks, as a data mesh over the
    processes' devices gives) are disjoint, and together they are the single-process batch,
    row for row: across an epoch boundary, and resumed at a step."""
    x = np.arange(30, dtype=np.uint8)[:, None, None, None]
    y = np.arange(30) % 7
    batch, per = 12, 12 // processes
    for start in (0, 3):
        whole = epoch_batches(x, y, batch_size=batch, seed=5, start_step=start)
        shares = [process_batches(x, y, batch_size=batch, seed=5, start_step=start,
                                  rows=slice(p * per, (p + 1) * per)) for p in range(processes)]
        for _ in range(5):  # 2 batches an epoch: through three epochs
            xb, yb = next(whole)
            parts = [next(s) for s in shares]
            seen = [int(v) for xp, _ in parts for v in xp.ravel()]
            assert len(set(seen)) == len(seen) == batch  # disjoint, each a share
            assert np.array_equal(np.concatenate([xp for xp, _ in parts]), xb)
            assert np.array_equal(np.concatenate([yp for _, yp in parts]), yb)


def test_process_rows_of_one_process_are_the_whole_batch():
    import jax

    put = DataParallel(jax.devices())
    assert not put.spans_processes
    assert put.process_rows(4 * put.num_devices).tolist() == list(range(4 * put.num_devices))
    with pytest.raises(ValueError, match="rows must select distinct rows"):
        process_batches(np.zeros((8, 1, 1, 1), np.uint8), np.zeros(8), batch_size=4, seed=0,
                        rows=np.array([0, 0]))


@pytest.fixture
def no_process_env(monkeypatch):
    for k in FOREIGN[:4]:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, env, named", [
    (["--coordinator", "127.0.0.1"], {}, "--coordinator '127.0.0.1'"),
    (["--coordinator", "127.0.0.1:99999", "--num-processes", "2", "--process-id", "0"], {},
     "--coordinator"),
    (["--coordinator", "127.0.0.1:1234"], {}, "--num-processes (or JAX_NUM_PROCESSES) and "
                                              "--process-id (or JAX_PROCESS_ID)"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], {},
     "--process-id 2: must be below the number of processes, 2"),
    (["--coordinator", "127.0.0.1:1234", "--num-processes", "zero", "--process-id", "0"], {},
     "--num-processes 'zero'"),
    (["--process-id", "0"], {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234",
                             "JAX_NUM_PROCESSES": "-2"}, "JAX_NUM_PROCESSES (environment) '-2'"),
])
def test_bad_process_settings_are_one_line_naming_the_flag(capsys, no_process_env, tmp_path,
                                                             argv, env, named):
    for k, v in env.items():
        no_process_env.setenv(k, v)
    line = _user_error(capsys, [*RUN, "--out", str(tmp_path / "out"), *argv])
    assert named in line, line
    assert not (tmp_path / "out").exists()  # nothing ran


def test_process_settings_checks_of_other_commands(capsys, no_process_env, tmp_path):
    flags = ["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "1"]
    line = _user_error(capsys, ["study", "--configs", "quickstart", "--methods", "baseline",
                                "--workers", "2", "--out", str(tmp_path), *flags])
    assert "--workers 2" in line
    line = _user_error(capsys, ["study", "--report-only", "--runs", str(tmp_path), *flags])
    assert "--report-only" in line
    with pytest.raises(SystemExit):  # list and report take no process options
        cli(["list", "--coordinator", "127.0.0.1:1234"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_distributed_without_a_cluster_is_one_line(tmp_path):
    """``--distributed`` where JAX detects no cluster: exit 2 with one line naming the flags
    to give instead (a fresh process: JAX must not have started)."""
    p = subprocess.run([sys.executable, "-m", "mhe_jax.experiments", *RUN, "--out",
                        str(tmp_path / "out"), "--distributed"], env=_env(), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --distributed: "), p.stderr[-3000:]
    assert "--coordinator, --num-processes, --process-id" in lines[0]
    assert not (tmp_path / "out").exists()
