"""Checkpoints and resume never lie: damaged checkpoints fall back or fail loudly, a resume with a
different config is refused (naming the fields), and SIGKILLs during saves lose nothing."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mhe_jax.experiments import ConfigError, apply_overrides, get_config
from mhe_jax.experiments.runner import ResumeError, run
from mhe_jax.train import Checkpointer, CheckpointError, CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[1]


def _pure(obj):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(obj)))


def _assert_same(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


# ------------------------------------------------------------------ damaged checkpoints


def _model_and_opt(seed=0):
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(seed))
    opt = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    return model, opt


def _step(model, opt):
    grads = nnx.grad(lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2))(model)
    opt.update(model, grads)


def _two_checkpoints(directory):
    """Checkpoints at steps 3 and 6 of a tiny model; returns the states saved at each."""
    model, opt = _model_and_opt()
    ck = Checkpointer(directory, metadata={"config": {"x": 1}})
    states = {}
    for step in (3, 6):
        _step(model, opt)
        ck.save(step, model, opt)
        states[step] = (_pure(model), _pure(opt))
    ck.close()
    return states


def _files(path):
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def _truncate_all(path, keep):
    for f in _files(path):
        f.write_bytes(f.read_bytes()[: int(len(f.read_bytes()) * keep)])


def _flip_byte(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


DAMAGES = {
    "emptied state files": lambda d: _truncate_all(d / "state", 0.0),
    "truncated state files": lambda d: _truncate_all(d / "state", 0.5),
    "deleted state/": lambda d: shutil.rmtree(d / "state"),
    "garbage metadata": lambda d: (d / "metadata" / "metadata").write_text("{garbage"),
    "metadata of another step": lambda d: (d / "metadata" / "metadata").write_text(
        json.dumps({"step": 3})),
    "deleted metadata/": lambda d: shutil.rmtree(d / "metadata"),
    "deleted _METADATA": lambda d: (d / "state" / "_METADATA").unlink(),
    "garbage _METADATA": lambda d: (d / "state" / "_METADATA").write_bytes(b"\x00garbage"),
    "bit flip in the largest array file": lambda d: _flip_byte(
        max(_files(d / "state"), key=lambda f: f.stat().st_size)),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, damage):
    states = _two_checkpoints(tmp_path / "ck")
    DAMAGES[damage](tmp_path / "ck" / "6")
    model, opt = _model_and_opt(seed=7)
    ck = Checkpointer(tmp_path / "ck")
    with pytest.warns(RuntimeWarning, match=r"checkpoint .*/ck/6 is damaged"):
        step, meta = ck.restore(model, opt)
    assert step == 3 and meta["config"] == {"x": 1}
    _assert_same(states[3], (_pure(model), _pure(opt)))
    # moved aside (kept for inspection), so the step can be saved again
    assert [p.name.split("-")[0] for p in (tmp_path / "ck.damaged").iterdir()] == ["6"]
    assert ck.steps() == [3]
    _step(model, opt)
    ck.save(6, model, opt)
    assert ck.steps() == [3, 6]
    ck.close()


def test_every_single_file_truncated_or_flipped_never_restores_wrong_arrays(tmp_path):
    """Fuzz: each file of the latest checkpoint truncated (0 %, 50 %) or bit-flipped in turn.
    Restore either returns step 6 with exactly the saved arrays, or falls back to step 3."""
    states = _two_checkpoints(tmp_path / "base")
    files = [f.relative_to(tmp_path / "base" / "6") for f in _files(tmp_path / "base" / "6")]
    assert len(files) >= 8
    outcomes = {}
    for i, rel in enumerate(files):
        for how in ("empty", "half", "flip"):
            d = tmp_path / f"case{i}{how}"
            shutil.copytree(tmp_path / "base", d / "ck")
            f = d / "ck" / "6" / rel
            if how == "flip":
                if not f.stat().st_size:
                    continue
                _flip_byte(f)
            else:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2 if how == "half" else 0])
            model, opt = _model_and_opt(seed=9)
            ck = Checkpointer(d / "ck")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                step, _ = ck.restore(model, opt)
            ck.close()
            _assert_same(states[step], (_pure(model), _pure(opt)))
            outcomes[str(rel), how] = step
    assert len(outcomes) >= 3 * len(files) - 2
    # damage to our metadata is always detected; damage to an array file either is (checksum,
    # decode errors) or did not touch the arrays read (orbax keeps merged copies): never wrong
    assert all(outcomes["metadata/metadata", how] == 3 for how in ("empty", "half", "flip"))
    assert sum(v == 3 for v in outcomes.values()) >= 10, outcomes


def test_no_intact_checkpoint_raises_naming_every_damaged_one(tmp_path):
    _two_checkpoints(tmp_path / "ck")
    DAMAGES["emptied state files"](tmp_path / "ck" / "6")
    DAMAGES["garbage metadata"](tmp_path / "ck" / "3")
    model, opt = _model_and_opt()
    before = _pure(model)
    ck = Checkpointer(tmp_path / "ck")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError) as info:
        ck.restore(model, opt)
    assert "/ck/6 is damaged" in str(info.value) and "/ck/3 is damaged" in str(info.value)
    assert "--restart" in str(info.value)
    _assert_same(before, _pure(model))  # nothing half-loaded
    assert ck.restore(model, opt) is None  # both moved aside: an empty directory now


# ------------------------------------------------------------------ another model: not damage


def _other_models():
    """(model, optimizer, leaf the error names, checkpoint side, model side) of another shape,
    another dtype and another optimizer than _two_checkpoints'."""
    wide = nnx.Linear(3, 5, rngs=nnx.Rngs(1))
    half = nnx.Linear(3, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(1))
    adam_model = nnx.Linear(3, 4, rngs=nnx.Rngs(1))
    return {
        "shape": (wide, nnx.Optimizer(wide, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param),
                  "leaf model/bias", "checkpoint shape (4,) float32", "model shape (5,) float32"),
        "dtype": (half, nnx.Optimizer(half, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param),
                  "leaf model/bias", "shape (4,) float32", "shape (4,) bfloat16"),
        "optimizer": (adam_model, nnx.Optimizer(adam_model, optax.adam(0.1), wrt=nnx.Param),
                      "optimizer/opt_state/0/mu/bias", "the model has leaves", "trace"),
    }


@pytest.mark.parametrize("case", ["shape", "dtype", "optimizer"])
def test_checkpoint_of_another_model_is_refused_and_left_in_place(tmp_path, case):
    """A mismatched model is not damage: it moved every intact checkpoint to .damaged and then
    said "no intact checkpoint". Now: one error naming the leaf and both sides; nothing moved,
    nothing loaded, no warning."""
    _two_checkpoints(tmp_path / "ck")
    files = _files(tmp_path / "ck")
    model, opt, *named = _other_models()[case]
    before = _pure(model)
    ck = Checkpointer(tmp_path / "ck")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "damaged" warning
        with pytest.raises(CheckpointMismatchError) as info:
            ck.restore(model, opt)
    message = str(info.value)
    assert all(text in message for text in named), message
    assert "/ck/6 " in message and "intact" in message
    assert not (tmp_path / "ck.damaged").exists() and _files(tmp_path / "ck") == files
    assert ck.steps() == [3, 6]
    _assert_same(before, _pure(model))
    model, opt = _model_and_opt(seed=5)  # the right model still restores the newest
    assert ck.restore(model, opt)[0] == 6
    ck.close()


def test_damage_is_still_damage_when_checking_the_model(tmp_path):
    """The mismatch check reads orbax's metadata: a damaged _METADATA is damage (falls back)."""
    _two_checkpoints(tmp_path / "ck")
    DAMAGES["garbage _METADATA"](tmp_path / "ck" / "6")
    model, opt = _model_and_opt(seed=5)
    with pytest.warns(RuntimeWarning, match="ck/6 is damaged"):
        assert Checkpointer(tmp_path / "ck").restore(model, opt)[0] == 3


def _target_refused(ck):
    """Make every restore of the state into a target fail as orbax does for abstract arrays in a
    multi-process run ("Topology mismatch"), though the files are sound (fault injection)."""
    real = ck._manager.restore

    def restore(step, args=None, **kw):
        if args is not None and "state" in args.keys():
            raise ValueError("Topology mismatch: the restore target's layout (injected)")
        return real(step, args=args, **kw)

    ck._manager.restore = restore


def test_restore_refused_by_the_target_is_not_damage(tmp_path):
    """Issue 29's class of defect: any failure of the restore set the checkpoint aside as damaged,
    also when the files were sound and the target was at fault. Now the arrays are read back on
    their own and checked against their checksum first: intact, so one error and nothing moved;
    a really damaged newer checkpoint is still set aside on the way."""
    _two_checkpoints(tmp_path / "ck")
    files = _files(tmp_path / "ck")
    model, opt = _model_and_opt(seed=5)
    ck = Checkpointer(tmp_path / "ck")
    _target_refused(ck)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "damaged" warning
        with pytest.raises(CheckpointError) as info:
            ck.restore(model, opt)
    message = str(info.value)
    assert "/ck/6 could not be restored" in message and "Topology mismatch" in message, message
    assert "intact" in message and "match the checksum" in message, message
    assert not (tmp_path / "ck.damaged").exists() and _files(tmp_path / "ck") == files
    DAMAGES["bit flip in the largest array file"](tmp_path / "ck" / "6")
    with pytest.warns(RuntimeWarning, match="ck/6 is damaged"):
        with pytest.raises(CheckpointError, match="/ck/3 could not be restored"):
            ck.restore(model, opt)
    assert ck.steps() == [3]
    ck.close()


# ------------------------------------------------------------------ Checkpointer arguments


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(max_to_keep=0), ValueError, "max_to_keep must be an int >= 1"),
    (dict(max_to_keep=-1), ValueError, "max_to_keep must be an int >= 1"),
    (dict(max_to_keep=True), ValueError, "max_to_keep must be an int >= 1"),
    (dict(max_to_keep=1.5), ValueError, "max_to_keep must be an int >= 1"),
    (dict(every=True), ValueError, "every must be"),
    (dict(every=0), ValueError, "every must be"),
    (dict(metadata={"f": object()}), TypeError, "metadata must be JSON-able"),
    (dict(metadata=[1]), TypeError, "metadata must be a dict"),
])
def test_checkpointer_arguments_are_checked_at_construction(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Checkpointer(tmp_path / "ck", **kwargs)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("below", [False, True])
def test_checkpointer_on_a_regular_file_fails_at_construction(tmp_path, below):
    """It failed only at the first save, from orbax's background thread."""
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "ck" if below else tmp_path / "file"
    with pytest.raises(NotADirectoryError, match=re.escape(str(tmp_path / "file"))):
        Checkpointer(path)
    assert (tmp_path / "file").read_text() == "x"


def test_checkpointer_keeps_max_to_keep_or_every_checkpoint(tmp_path):
    model, opt = _model_and_opt()
    for keep, want in ((1, [3]), (None, [1, 2, 3])):
        with Checkpointer(tmp_path / str(keep), max_to_keep=keep) as ck:
            for step in (1, 2, 3):
                ck.save(step, model, opt)
            assert ck.steps() == want
    ck = Checkpointer(tmp_path / "e", every=4)
    assert ck.every == 4 and ck.directory == (tmp_path / "e").absolute()
    assert not any(name in vars(ck) for name in ("manager", "metadata", "directory", "every"))
    ck.close()


# ------------------------------------------------------------------ config checks (runner)

TINY = ["data.dataset=digits", "data.image_size=8", "model.widths=4,4,8", "data.batch_size=32",
        "optim.steps=6", "optim.lr=0.05", "optim.boundaries=4", "optim.warmup_steps=1",
        "logging.log_every=1", "logging.eval_every=3", "logging.energy_every=3",
        "logging.checkpoint_every=3", "data.augment=true"]


def tiny(*extra, method="half_mhe"):
    return apply_overrides(get_config(f"quickstart/{method}"), TINY + list(extra))


def _run(cfg, out, **kw):
    return run(cfg, out, progress=False, **kw)


def test_resume_checks_the_saved_config(tmp_path):
    out = tmp_path / "run"
    first = _run(tiny(), out)
    assert first["resumed_from"] == 0
    again = _run(tiny("logging.eval_every=2", "data.data_dir=/moved"), out)  # no result change
    assert again["resumed_from"] == 6 and again["test_accuracy"] == first["test_accuracy"]
    _assert_same(_pure(first["model"]), _pure(again["model"]))
    steps = [e["step"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # one run's log, no step twice
    for extra, field in [(["seed=1"], "seed: 0 (saved) != 1 (now)"),
                         (["optim.lr=0.1"], "optim.lr: 0.05 (saved) != 0.1 (now)"),
                         (["regularizer.method=mhe"], "regularizer.method"),
                         (["model.widths=4,4,4"], "model.widths"),
                         (["optim.steps=3"], "optim.steps: the checkpoint is at step 6")]:
        with pytest.raises(ResumeError, match=re.escape(field)) as info:
            _run(tiny(*extra), out)
        assert "--restart" in str(info.value) and "--resume-anyway" in str(info.value)
        assert isinstance(info.value, ConfigError)
    with pytest.warns(RuntimeWarning, match="despite: optim.lr"):
        forced = _run(tiny("optim.lr=0.1"), out, resume="force")
    assert forced["resumed_from"] == 6 and forced["resume_differences"]
    restarted = _run(tiny("optim.lr=0.1"), out, resume="restart")
    assert restarted["resumed_from"] == 0 and restarted["resume_differences"] == []
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.1
    with pytest.raises(ValueError, match="resume must be"):
        _run(tiny(), out, resume=True)  # type: ignore[arg-type]


@pytest.mark.slow  # CI time (~20 min); run with -m slow
def test_growing_steps_continues_exactly_like_a_fresh_longer_run(tmp_path):
    _run(tiny(), tmp_path / "a")
    longer = _run(tiny("optim.steps=9"), tmp_path / "a")
    fresh = _run(tiny("optim.steps=9"), tmp_path / "b")
    assert longer["resumed_from"] == 6 and fresh["resumed_from"] == 0
    _assert_same(_pure(fresh["model"]), _pure(longer["model"]))
    assert longer["test_accuracy"] == fresh["test_accuracy"]


def test_checkpoint_without_a_saved_config_is_not_resumed_silently(tmp_path):
    cfg = tiny()
    from mhe_jax.experiments.runner import build

    _, _, model, opt, _ = build(cfg)
    Checkpointer(tmp_path / "run" / "checkpoints").save(3, model, opt)  # no config metadata
    with pytest.raises(ResumeError, match="no saved config"):
        _run(cfg, tmp_path / "run")
    with pytest.warns(RuntimeWarning, match="no saved config"):
        assert _run(cfg, tmp_path / "run", resume="force")["resumed_from"] == 3


def test_cifar_jpeg_needs_an_explicit_data_dir(tmp_path):
    cfg = get_config("repro/cifar10_small/mhe")
    with pytest.raises(ConfigError, match=r"data.data_dir is required.*--set data.data_dir=PATH"):
        _run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ SIGKILL during saves

KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, flax.nnx as nnx
    jax.config.update("jax_enable_x64", True)  # as in the pytest process (conftest)
    from mhe_jax.experiments import apply_overrides, get_config
    from mhe_jax.experiments.runner import run
    from tests.test_resume import TINY
    cfg = apply_overrides(get_config("quickstart/half_mhe"), TINY + sys.argv[2:])
    r = run(cfg, sys.argv[1], progress=False)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(r["model"])))[0]
    np.savez(sys.argv[1] + "/final.npz",
             **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})
""")


def _kill_during_saves(out: Path, kills: int, extra: list[str]) -> int:
    """Start the training subprocess ``kills`` times, each SIGKILLed as soon as a save is in
    progress (orbax's temporary directory exists); then let it finish. Returns kills done.
    The children share a compilation cache of their own (the next child reads what the killed
    one compiled), not the session's (conftest): a kill while an entry is being written
    would leave it truncated for every later test."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "JAX_COMPILATION_CACHE_DIR": str(out.parent / "xla_cache")}
    done = 0
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out), *extra], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        ck = out / "checkpoints"
        while proc.poll() is None:
            if ck.exists() and any("tmp" in p.name for p in ck.iterdir()):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done += 1
                break
            time.sleep(0.001)
        else:
            assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
            return done
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return done


def _check_kills(tmp_path, kills, extra):
    done = _kill_during_saves(tmp_path / "killed", kills, extra)
    assert done >= 1, "no save was ever caught in progress"
    ref = run(tiny(*extra), tmp_path / "ref", progress=False)
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(ref["model"])))[0]
    got = np.load(tmp_path / "killed" / "final.npz")
    assert sorted(got.files) == sorted(jax.tree_util.keystr(p) for p, _ in flat)
    for p, v in flat:
        np.testing.assert_array_equal(got[jax.tree_util.keystr(p)], np.asarray(v))
    res = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert res["test_accuracy"] == ref["test_accuracy"]
    log_lines = (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in log_lines]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, res["steps"] + 1))
    return done


def test_sigkill_during_a_save_then_resume_is_bit_exact(tmp_path):
    _check_kills(tmp_path, 1, ["optim.steps=6", "logging.checkpoint_every=2"])


@pytest.mark.slow
def test_sigkill_during_saves_many_times_is_bit_exact(tmp_path):
    done = _check_kills(tmp_path, 5, ["optim.steps=24", "logging.checkpoint_every=2"])
    assert done >= 3
