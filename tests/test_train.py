"""Training: loss, schedule, steps lower the loss, exact resume, atomic checkpoints, CLI,
configs."""

import json
from pathlib import Path

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from mhe_jax.experiments import CONFIGS, apply_overrides, get_config
from mhe_jax.experiments.__main__ import main as cli
from mhe_jax.experiments.runner import build
from mhe_jax.train import (
    Checkpointer,
    Every,
    JsonlLogger,
    energy_logger,
    epoch_batches,
    fit,
    make_optimizer,
    make_steps,
    official_cross_entropy,
    step_decay_schedule,
)

TINY = ["data.dataset=digits", "data.image_size=8", "model.widths=4,4,8", "data.batch_size=32",
        "optim.steps=6", "optim.lr=0.05", "optim.boundaries=4", "optim.warmup_steps=0",
        "logging.log_every=1", "logging.eval_every=none", "logging.energy_every=3",
        "logging.checkpoint_every=none", "data.augment=true"]


def tiny(method="half_mhe", *extra):
    return apply_overrides(get_config(f"quickstart/{method}"), TINY + list(extra))


def _fit(cfg, ds, model, opt, lr, *, steps, start=0, **kw):
    """fit() with the runner's step and batch stream (seeded by cfg.seed)."""
    fns = make_steps(augment=cfg.data.augment, seed=cfg.seed, learning_rate=lr)
    data = epoch_batches(ds.x_train, ds.y_train, batch_size=cfg.data.batch_size, seed=cfg.seed,
                         start_step=start)
    return fit(model, opt, data, steps=steps, train_step=fns.train, **kw)


def test_official_cross_entropy():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    labels = np.array([0, 2])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    target = np.eye(3)[labels] * 0.99 + 0.01 / 3
    want = -np.mean(np.sum(target * np.log(p + 1e-4), -1))
    np.testing.assert_allclose(float(official_cross_entropy(logits, labels)), want, rtol=1e-6)
    plain = -np.mean(np.log(p[np.arange(2), labels]))
    bare = official_cross_entropy(logits, labels, label_smoothing=0, log_eps=0)
    np.testing.assert_allclose(float(bare), plain, rtol=1e-6)


def test_schedule():
    lr = step_decay_schedule(0.1, (20000, 30000, 37500))
    assert [float(lr(s)) for s in (0, 19999, 20001, 30001, 40000)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.0001])
    warm = step_decay_schedule(0.05, (100,), warmup_steps=10)
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.025)
    assert float(warm(50)) == pytest.approx(0.05)
    for bad in ({"boundaries": (5, 5)}, {"boundaries": (3,), "warmup_steps": 3},
                {"boundaries": (10,), "warmup_steps": -1}, {"boundaries": (2.5,)}):
        with pytest.raises(ValueError, match="boundaries|warmup_steps"):
            step_decay_schedule(0.1, **{"boundaries": (10,), **bad})


@pytest.mark.parametrize("warmup", [0, 3])
def test_decay_boundaries_count_from_step_zero_in_the_applied_update(warmup):
    """The parameter update actually applied at b - 1, b, b + 1 (nnx.Optimizer, uint32 count):
    the boundaries count from step 0 whether or not there is a warm-up (optax.join_schedules
    restarts its count at the join, which once moved every decay to b + warmup)."""
    boundaries = (8, 12)
    lr = step_decay_schedule(1.0, boundaries, 0.1, warmup)

    class Param(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jax.numpy.zeros(()))

    model = Param()
    opt = nnx.Optimizer(model, make_optimizer(lr, momentum=0.0, weight_decay=0.0),
                        wrt=nnx.Param)
    assert opt.step[...].dtype == np.uint32
    grads = nnx.State({"w": nnx.Param(jax.numpy.ones(()))})
    applied = []
    for _ in range(16):
        before = float(model.w[...])
        opt.update(model, nnx.state(grads))
        applied.append(before - float(model.w[...]))
    want = [(t / warmup if t < warmup else 1.0) * 0.1 ** sum(b <= t for b in boundaries)
            for t in range(16)]
    np.testing.assert_allclose(applied, want, rtol=1e-6, atol=1e-7)
    for b in boundaries:  # the drop lands exactly at b
        assert applied[b - 1] == pytest.approx(10 * applied[b], rel=1e-5)
        assert applied[b + 1] == pytest.approx(applied[b], rel=1e-5)


def test_logged_learning_rate_is_the_applied_one_after_every_drop():
    """make_steps logs lr at each step: it must equal the rate the optimizer applied (NNX's
    uint32 step once made piecewise_constant_schedule log the first rate forever)."""
    cfg = tiny("baseline", "optim.steps=9", "optim.boundaries=4,6", "optim.warmup_steps=2",
               "optim.momentum=0", "optim.weight_decay=0")
    ds, _, model, opt, lr = build(cfg)
    fns = make_steps(augment=False, seed=0, learning_rate=lr)
    data = epoch_batches(ds.x_train, ds.y_train, batch_size=32, seed=0)
    logged = [float(fns.train(model, opt, next(data))["lr"]) for _ in range(9)]
    want = [(t / 2 if t < 2 else 1.0) * 0.05 * 0.1 ** sum(b <= t for b in (4, 6))
            for t in range(9)]
    np.testing.assert_allclose(logged, want, rtol=1e-6)


def test_training_lowers_loss_and_logs_energies(tmp_path):
    cfg = tiny("half_mhe", "optim.steps=30", "data.augment=false", "optim.lr=0.02")
    ds, _, model, opt, lr = build(cfg)
    energies = energy_logger(half_space=True, output=model.output_path)
    log = JsonlLogger(tmp_path / "log.jsonl")
    out = _fit(cfg, ds, model, opt, lr, steps=30, log_every=1, evals=[Every(10, energies)],
               loggers=[log])
    log.close()
    losses = [e["loss"] for e in out["history"] if "loss" in e]
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    assert [e["lr"] for e in out["history"] if "lr" in e][:2] == pytest.approx([0.02, 0.02])
    layers = [e["layers"] for e in out["history"] if "layers" in e]
    assert [e["step"] for e in out["history"] if "layers" in e] == [10, 20, 30]
    assert "classifier/kernel" in layers[0] and "layers/0/conv/kernel" in layers[0]
    assert all(np.isfinite(v["energy"]) for v in layers[-1].values())
    assert all(v["pair_variance"] >= 0 for v in layers[-1].values())  # logged with the energy
    assert out["final"]["layers"] == layers[-1] and out["start_step"] == 0
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == len(out["history"])
    with pytest.raises(ValueError, match="past steps=3"):
        _fit(cfg, ds, model, opt, lr, steps=3)
    with pytest.raises(ValueError, match="log_every"):
        _fit(cfg, ds, model, opt, lr, steps=40, log_every=0)


def test_fit_syncs_with_the_host_only_at_log_points():
    """Between log points the metrics are never fetched: fit only keeps device arrays."""
    cfg = tiny("baseline")
    ds, _, model, opt, lr = build(cfg)
    fns = make_steps(augment=False, seed=0)
    fetched = []

    class Metric:  # a metric that records every host conversion
        def __init__(self, v):
            self.v = v

        def __array__(self, dtype=None, copy=None):
            fetched.append(int(opt.step[...]))
            return np.asarray(self.v, dtype)

        def __float__(self):
            return float(self.__array__())

    def step(m, o, batch):
        return {"loss": Metric(fns.train(m, o, batch)["loss"])}

    data = epoch_batches(ds.x_train, ds.y_train, batch_size=32, seed=0)
    fit(model, opt, data, steps=12, train_step=step, log_every=4)
    assert fetched and set(fetched) == {4, 8, 12}


def _params(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))


def test_resume_is_bit_exact(tmp_path):
    cfg = tiny("half_mhe", "seed=3")
    ds, _, model_a, opt_a, lr = build(cfg)
    _fit(cfg, ds, model_a, opt_a, lr, steps=6)

    ds, _, model_b, opt_b, lr = build(cfg)
    _fit(cfg, ds, model_b, opt_b, lr, steps=3, checkpointer=Checkpointer(tmp_path / "ck", every=3))
    ds, _, model_c, opt_c, lr = build(cfg.replace(seed=99))  # different init: must be overwritten
    step, meta = Checkpointer(tmp_path / "ck").restore(model_c, opt_c)
    assert step == 3 and meta["step"] == 3 and int(opt_c.step[...]) == 3
    out = _fit(cfg, ds, model_c, opt_c, lr, steps=6, start=3)
    assert out["start_step"] == 3
    jax.tree.map(np.testing.assert_array_equal, _params(model_a), _params(model_c))
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(opt_a)),
                 nnx.to_pure_dict(nnx.state(opt_c)))


def test_steps_in_one_jitted_call_equal_single_steps(tmp_path):
    """fit(steps_per_call=4) with make_steps' train_many (lax.scan over 4 steps, half-space MHE,
    BatchNorm, augmentation): the same parameters, optimizer state, records and checkpoints as
    single steps to float32 rounding (XLA fuses the scanned step differently), also when
    resumed from a checkpoint; wrong step functions are refused. (Calls that end early at a
    log / eval point: tests/test_device_path.py, lengths 4, 4, 2.)"""

    def close(a, b):  # within 1e-3 of each leaf's largest value (measured: up to 1.1e-4)
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * max(np.abs(b).max(), 1e-30))

    cfg = tiny("half_mhe", "seed=2")
    fns = make_steps(augment=True, seed=2)

    def train(k, steps, ckpt, model=None, opt=None, start=0):
        if model is None:
            _, _, model, opt, _ = build(cfg)
        data = epoch_batches(ds.x_train, ds.y_train, batch_size=32, seed=2, start_step=start,
                             put=jax.device_put)
        out = fit(model, opt, data, steps=steps, log_every=4, steps_per_call=k,
                  train_step=fns.train if k == 1 else fns.train_many,
                  evals=[Every(8, lambda m: {"x": 1.0})], checkpointer=ckpt)
        return model, opt, out["history"]

    ds = build(cfg)[0]
    ma, oa, ha = train(1, 8, Checkpointer(tmp_path / "k1", every=4))
    mb, ob, hb = train(4, 8, Checkpointer(tmp_path / "k4", every=4))
    jax.tree.map(close, _params(ma), _params(mb))
    jax.tree.map(close, nnx.to_pure_dict(nnx.state(oa)), nnx.to_pure_dict(nnx.state(ob)))
    assert [r["step"] for r in hb] == [r["step"] for r in ha] == [4, 8, 8]
    # which records carry a loss must match exactly; the losses themselves to float32 rounding
    assert ["loss" in r for r in hb] == ["loss" in r for r in ha] == [True, True, False]
    assert [r["loss"] for r in hb if "loss" in r] == pytest.approx(
        [r["loss"] for r in ha if "loss" in r], rel=1e-5)
    assert Checkpointer(tmp_path / "k4").steps() == Checkpointer(tmp_path / "k1").steps()
    # stopped at step 4, resumed from its checkpoint into a model of another init
    train(4, 4, Checkpointer(tmp_path / "r"))
    _, _, mc, oc, _ = build(cfg.replace(seed=9))
    assert Checkpointer(tmp_path / "r").restore(mc, oc)[0] == 4
    mc, oc, _ = train(4, 8, None, mc, oc, start=4)
    jax.tree.map(close, _params(ma), _params(mc))
    data = epoch_batches(ds.x_train, ds.y_train, batch_size=32, seed=2, put=jax.device_put)
    with pytest.raises(ValueError, match="steps_per_call must be an int >= 1"):
        fit(mc, oc, data, steps=12, train_step=fns.train_many, steps_per_call=0)
    # a step that takes the stacked batches as one big batch would train silently wrong
    with pytest.raises(ValueError, match="train_step must take 2 batches stacked.*train_many"):
        fit(mc, oc, data, steps=10, train_step=lambda m, o, b: {"loss": jax.numpy.zeros(())},
            steps_per_call=2)


def test_call_length_divides_every_logging_interval(tmp_path):
    from mhe_jax.experiments.runner import call_length, run

    cfg = tiny("baseline")  # log 1, energy 3
    assert call_length(cfg) == 1
    c = cfg.replace(logging={"log_every": 30, "energy_every": 45, "eval_every": None})
    assert call_length(c) == 15 and call_length(c, cap=10) == 5
    c = c.replace(logging={"log_every": None, "energy_every": None, "checkpoint_every": None})
    assert call_length(c) == 6 and call_length(c.replace(optim={"steps": 400})) == 100
    with pytest.raises(ValueError, match="cap"):
        call_length(c, cap=0)
    with pytest.raises(ValueError, match="steps_per_call must be an int >= 1 or 'auto'"):
        run(cfg, tmp_path / "x", steps_per_call=0)
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_interrupted_save_keeps_previous_checkpoint(tmp_path):
    cfg = tiny("mhe")
    ds, _, model, opt, _ = build(cfg)
    ck = Checkpointer(tmp_path / "ck")
    ck.save(3, model, opt)
    before = _params(model)
    # a save of step 6 that died half-way: orbax's temporary directory, never renamed
    tmp = tmp_path / "ck" / "6.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "garbage").write_bytes(b"\0" * 10)
    ck.close()
    ck = Checkpointer(tmp_path / "ck")
    assert ck.latest_step() == 3
    _, _, model2, opt2, _ = build(cfg.replace(seed=5))
    step, meta = ck.restore(model2, opt2)
    assert step == 3 and meta["step"] == 3
    jax.tree.map(np.testing.assert_array_equal, before, _params(model2))


def _linear_fit_parts():
    import optax

    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    def loss(m, x):
        return (m(x) ** 2).mean()

    def step(m, o, x):
        value, grads = nnx.value_and_grad(loss)(m, x)
        o.update(m, grads)
        return value

    @nnx.jit
    def train_step(m, o, x):
        return {"loss": step(m, o, x)}

    @nnx.jit
    def train_many(m, o, xs):  # the steps of a call unrolled (a few, in this test)
        return {"loss": jax.numpy.stack([step(m, o, x) for x in xs])}

    return model, opt, train_step, train_many


def _five_batches():
    for i in range(5):
        yield np.full((2, 4), i, np.float32)


@pytest.mark.parametrize("per_call", [1, 2])
def test_short_batch_stream_saves_what_ran_and_says_how_many(tmp_path, per_call):
    """A stream shorter than steps ended in a bare StopIteration, with no final checkpoint."""
    model, opt, one, many = _linear_fit_parts()
    ck = Checkpointer(tmp_path / "ck", every=None)
    ran = 5 if per_call == 1 else 4  # the incomplete last call is not trained
    with pytest.raises(ValueError, match=rf"batches ran out after step {ran} of steps=8: "
                                         rf"{ran} step\(s\) ran .*checkpoint {ran}"):
        fit(model, opt, _five_batches(), steps=8, train_step=one if per_call == 1 else many,
            checkpointer=ck, steps_per_call=per_call)
    assert int(opt.step[...]) == ran and ck.steps() == [ran]
    ck.close()


def test_short_batch_stream_inside_a_generator_is_the_same_error():
    """Inside a generator a StopIteration became "generator raised StopIteration"."""
    model, opt, one, _ = _linear_fit_parts()

    def trainer():
        yield fit(model, opt, _five_batches(), steps=8, train_step=one)

    with pytest.raises(ValueError, match="batches ran out after step 5 of steps=8"):
        next(trainer())


def test_fit_intervals_refuse_bools():
    """log_every=True (and Every(True, fn)) passed as an interval of 1 step."""
    model, opt, one, _ = _linear_fit_parts()
    for kwargs, name in ((dict(log_every=True), "log_every"),
                         (dict(evals=[Every(True, lambda m: {})]), r"evals\[0\].steps")):
        with pytest.raises(ValueError, match=name):
            fit(model, opt, _five_batches(), steps=2, train_step=one, **kwargs)


def test_short_batch_stream_at_a_save_point_saves_once(tmp_path):
    model, opt, one, _ = _linear_fit_parts()
    with Checkpointer(tmp_path / "ck", every=5) as ck:
        with pytest.raises(ValueError, match="after step 5 .*checkpoint 5"):
            fit(model, opt, _five_batches(), steps=8, train_step=one, checkpointer=ck)
        assert ck.steps() == [5]


def test_every_paper_row_has_a_config():
    counts = {}
    for name in CONFIGS:
        counts[name.split("/")[0]] = counts.get(name.split("/")[0], 0) + 1
    assert counts["table1"] == 2 * (1 + 4 * 3)
    assert counts["table2"] == 3 * 5
    assert counts["table3"] == 3 * 3
    assert counts["table4"] == 10
    assert counts["fig3"] == 3 * 5
    assert counts["table5"] == 6
    assert counts["table6"] == 10
    assert counts["table7"] == 12
    assert counts["fig4"] == 2
    assert CONFIGS["table2/mhe/w16_32_64"].model.widths == (16, 32, 64)
    assert CONFIGS["fig3/half_mhe_H/lam1e-2"].strengths() == (0.01, None)
    assert all(CONFIGS[n].paper for n in CONFIGS if n.startswith("table"))


def test_cli_run_and_report(tmp_path, capsys):
    cli(["run", "quickstart/baseline", "--out", str(tmp_path), "--no-progress",
         *sum([["--set", t] for t in TINY], [])])
    res = json.loads((tmp_path / "quickstart/baseline/results.json").read_text())
    assert 0 <= res["test_accuracy"] <= 1 and res["steps"] == 6
    cli(["report", str(tmp_path), "--out", str(tmp_path / "t.md"),
         "--plot", str(tmp_path / "p.png")])
    assert "quickstart/baseline" in (tmp_path / "t.md").read_text()
    assert (tmp_path / "p.png").stat().st_size > 1000
    cli(["list", "table5/*"])
    assert "table5/cifar10/half_mhe" in capsys.readouterr().out


def test_bn_momentum_override_reaches_the_model():
    cfg = tiny("baseline", "model.bn_momentum=0.5")
    _, _, model, _, _ = build(cfg)
    assert model.layers[0].bn.momentum == 0.5
    _, _, model, _, _ = build(tiny("baseline", "model.bn_momentum=none"))
    assert model.layers[0].bn.momentum == 0.999  # the official CNN default


def test_angle_to_nearest():
    from mhe_jax.experiments.fig4 import angle_to_nearest

    t = np.radians([0.0, 30.0, 100.0, 250.0])
    kernel = np.stack([np.cos(t), np.sin(t)]) * np.array([1.0, 3.0, 0.5, 2.0])  # scale-free
    assert angle_to_nearest(kernel, 0) == pytest.approx(30.0)
    assert angle_to_nearest(kernel, 2) == pytest.approx(70.0)
    assert angle_to_nearest(kernel, 3) == pytest.approx(110.0)


@pytest.mark.slow  # CI time (~20 min); run with -m slow
def test_cli_fig4(tmp_path, capsys):
    tiny_fig4 = ["optim.steps=4", "model.widths=4,8", "data.batch_size=16",
                 "logging.energy_every=2", "logging.log_every=2"]
    cli(["fig4", "--seeds", "0,1", "--out", str(tmp_path), "--no-progress",
         *sum([["--set", t] for t in tiny_fig4], [])])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["seed"], r["method"]) for r in summary["runs"]] == [
        (0, "baseline"), (0, "mhe_output"), (1, "baseline"), (1, "mhe_output")]
    for r in summary["runs"]:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["rare_class_angle_deg"] <= 180
        assert r["train_images_per_class"][0] == 10  # digit 0 keeps 10 training images
    cfg = json.loads((tmp_path / "seed1/mhe_output/config.json").read_text())
    assert cfg["seed"] == 1 and cfg["regularizer"]["max_norm"] == 1.0
    res = json.loads((tmp_path / "seed1/mhe_output/results.json").read_text())
    assert res["strengths"] == [None, 20.0] and res["config"] == cfg
    assert (tmp_path / "fig4.png").stat().st_size > 10000
    assert "with output MHE, mean ± std" in (tmp_path / "summary.md").read_text()
    assert "mean ± std" in capsys.readouterr().out


def test_train_experiments_and_benchmarks_import_only_public_names():
    """No module in train/, experiments/ or benchmarks/ reaches into a private module."""
    import ast

    root = Path(__file__).resolve().parents[1]
    files = [*(root / "mhe_jax/train").glob("*.py"), *(root / "mhe_jax/experiments").glob("*.py"),
             *(root / "benchmarks").glob("*.py")]
    assert len(files) >= 12
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module
                    and node.module.startswith("mhe_jax")):
                parts = node.module.split(".")
                assert not any(p.startswith("_") for p in parts), (f.name, node.module)
                if node.module == "mhe_jax":
                    assert not any(a.name.startswith("_") for a in node.names), (
                        f.name, node.module)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    assert not any(p.startswith("_") for p in a.name.split(".")[1:]), (
                        f.name, a.name)


def test_regularizer_settings_are_built_once():
    """One function gives both the transformation and the energy logger's options."""
    from mhe_jax.experiments.runner import build_regularizer

    for name in ("table1/cifar10/half_a_mhe/s1", "table1/cifar10/baseline",
                 "table6/resnet18/orthonormal"):
        reg = get_config(name).regularizer
        tx, options = build_regularizer(reg, "classifier/kernel")
        assert options == {"s": reg.s, "distance": reg.distance, "half_space": reg.half_space,
                           "output": "classifier/kernel"}
        assert (tx is None) == (reg.method == "baseline")
