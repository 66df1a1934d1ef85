"""Experiment configs: nested sections, validation at construction, typed overrides, JSON."""

import dataclasses
import json
import math

import pytest

import mhe_jax
from mhe_jax.experiments import CONFIGS, ConfigError, ExperimentConfig, apply_overrides, get_config
from mhe_jax.experiments.configs import (
    FLAT_KEYS,
    NON_RESULT_FIELDS,
    SECTIONS,
    official_strength,
    result_differences,
)

# The 40-epoch pilot of issue 15's study (run by a separate checkout) used these values, written
# in the old flat spelling: the nested configs must resolve to exactly them.
STUDY_FLAT = {
    "dataset": "cifar10_jpeg", "data_dir": None, "image_size": None, "imbalance": None,
    "imbalance_class": 0, "imbalance_keep": 0.1, "train_per_class": 500, "subset_seed": 0,
    "model": "cnn9", "widths": (16, 32, 64), "bn_momentum": 0.9, "s": 2.0, "eq8": False,
    "baseline_strength": 0.001, "max_norm": None, "steps": 1560, "batch_size": 128, "lr": 0.05,
    "boundaries": (780, 1170), "warmup_steps": 200, "momentum": 0.9, "weight_decay": 0.0005,
    "label_smoothing": 0.01, "augment": True, "seed": 0, "log_every": 39, "eval_every": 156,
    "energy_every": 78, "checkpoint_every": 156,
}
STUDY_STRENGTHS = {"baseline": (None, None), "mhe": (1.0, 10.0), "half_mhe": (1.0, 10.0),
                   "orthonormal": (None, None)}


def _get(cfg, dotted):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("method", sorted(STUDY_STRENGTHS))
def test_study_pilot_configs_resolve_to_their_original_values(method):
    cfg = get_config(f"repro/cifar10_small_40ep/{method}")
    for key, value in STUDY_FLAT.items():
        assert _get(cfg, FLAT_KEYS[key]) == value, key
    assert cfg.regularizer.method == method
    assert cfg.strengths() == STUDY_STRENGTHS[method]
    # the old flat overrides of the running study still mean the same thing
    c2 = apply_overrides(cfg, ["seed=2", "data_dir=/x/cifar10_jpeg.npz"])
    assert (c2.seed, c2.data.data_dir) == (2, "/x/cifar10_jpeg.npz")


@pytest.mark.parametrize("method", sorted(STUDY_STRENGTHS))
def test_study_configs_are_the_pilot_at_80_epochs(method):
    pilot, cfg = (get_config(f"{p}/{method}") for p in ("repro/cifar10_small_40ep",
                                                         "repro/cifar10_small"))
    n_epochs = cfg.optim.steps * cfg.data.batch_size / (500 * 10)
    assert (cfg.optim.steps, cfg.optim.boundaries, round(n_epochs)) == (3120, (1560, 2340), 80)
    assert cfg.logging.train_eval_every == cfg.logging.eval_every == 312
    diffs = result_differences(pilot, cfg)
    assert [d.split(":")[0] for d in diffs] == ["optim.boundaries"]  # steps: a non-result field


def test_at_most_12_top_level_fields_and_frozen_sections():
    assert len(dataclasses.fields(ExperimentConfig)) <= 12
    cfg = get_config("quickstart/mhe")
    for name in SECTIONS:
        with pytest.raises(dataclasses.FrozenInstanceError):
            getattr(cfg, name).x = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


def test_every_registered_config_round_trips_through_json():
    for name, cfg in CONFIGS.items():
        back = ExperimentConfig.from_json(cfg.to_json())
        assert back == cfg and back.paper == cfg.paper and hash(back) == hash(cfg), name
        assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_strengths_come_from_official_strengths():
    off = mhe_jax.OFFICIAL_STRENGTHS
    for (s, distance, key, factor) in [(2.0, "euclidean", "2", 1.0), (1.0, "euclidean", "1", 1.0),
                                       (0.0, "euclidean", "0", 2.0), (0.0, "angular", "a0", 1.0),
                                       (1.0, "angular", "a1", math.pi),
                                       (2.0, "angular", "a2", math.pi ** 2)]:
        for layer in ("hidden", "output"):
            assert official_strength(layer, s, distance) == off[layer][key] * factor
    c = CONFIGS["table1/cifar100/half_a_mhe/s1"]
    assert (c.regularizer.distance, c.regularizer.half_space, c.regularizer.s) == (
        "angular", True, 1.0)
    assert c.strengths() == pytest.approx((0.1 * math.pi, 1.0 * math.pi))
    assert CONFIGS["table1/cifar10/mhe/s0"].strengths() == (2.0, 20.0)  # official "0" = 2 E_0
    assert CONFIGS["table4/mhe/H"].strengths() == (1.0, None)
    assert CONFIGS["table4/mhe/O"].strengths() == (None, 10.0)
    assert CONFIGS["fig3/half_mhe_H/lam1e-2"].strengths() == (0.01, None)
    assert CONFIGS["table1/cifar10/baseline"].strengths() == (None, None)
    with pytest.raises(ConfigError, match="regularizer.hidden_strength 'official'.*s=1.5"):
        apply_overrides(c, ["regularizer.s=1.5"])
    assert apply_overrides(c, ["s=1.5", "hidden_strength=0.2", "output_strength=none"]
                           ).strengths() == (0.2, None)


def test_released_logs_preset():
    """'released_logs': full-space MHE at a tenth of the code's λ (0.1 / 1), half-space at the
    code's (1 / 10), Euclidean only; the full-data study's arm uses it."""
    assert mhe_jax.RELEASED_LOGS_STRENGTHS == {"full_space": {"hidden": 0.1, "output": 1.0},
                                                "half_space": {"hidden": 1.0, "output": 10.0}}
    cfg = lambda method, s: apply_overrides(get_config("quickstart/mhe"), [  # noqa: E731
        f"regularizer.method={method}", f"regularizer.s={s}",
        "regularizer.hidden_strength=released_logs", "regularizer.output_strength=released_logs"])
    assert cfg("mhe", 2).strengths() == pytest.approx((0.1, 1.0))
    assert cfg("mhe", 0).strengths() == pytest.approx((0.2, 2.0))  # official "0" = 2 E_0
    assert cfg("half_mhe", 2).strengths() == pytest.approx((1.0, 10.0))
    with pytest.raises(ConfigError, match="Euclidean energies only"):
        cfg("a_mhe", 2)
    assert get_config("repro/cifar10_full16/mhe_logs_lambda").strengths() == (0.1, 1.0)
    assert get_config("repro/cifar10_full16/mhe").strengths() == (1.0, 10.0)
    assert get_config("repro/cifar10_full16/half_mhe").strengths() == (1.0, 10.0)
    with pytest.raises(ConfigError, match="'official' or 'released_logs'"):
        official_strength("hidden", 2.0, "euclidean", "paper")


def test_full16_study_settings_are_the_registered_ones():
    """Issue 30's pre-registered settings: all data, CNN-9 16/32/64, BN 0.99, 15 epochs, lr 0.05
    with a 200-step warm-up, x0.1 at 50 % and 75 % of the steps; 30 epochs after the plateau
    check (results/cifar10_full16/README.md)."""
    cfg = get_config("repro/cifar10_full16/baseline")
    assert (cfg.data.dataset, cfg.data.train_per_class, cfg.data.batch_size) == (
        "cifar10_jpeg", None, 128)
    assert (cfg.model.arch, cfg.model.widths, cfg.model.bn_momentum) == ("cnn9", (16, 32, 64), 0.99)
    o = cfg.optim
    assert (o.steps, o.lr, o.warmup_steps, o.momentum, o.weight_decay, o.label_smoothing) == (
        11720, 0.05, 200, 0.9, 5e-4, 0.01)
    assert o.boundaries == (o.steps // 2, o.steps * 3 // 4)
    assert o.steps * 128 >= 30 * 50_000


def test_overrides_are_typed_checked_and_map_the_old_keys():
    base = get_config("table1/cifar10/mhe/s2")
    c = apply_overrides(base, ["optim.steps=10", "model.widths=16,32,64",
                               "regularizer.output_strength=none", "regularizer.s=1",
                               "data.augment=false", "logging.eval_every=none"])
    assert (c.optim.steps, c.model.widths, c.strengths()[1], c.regularizer.s, c.data.augment,
            c.logging.eval_every) == (10, (16, 32, 64), None, 1.0, False, None)
    old = apply_overrides(base, ["steps=10", "widths=16,32,64", "s=1", "lr=0.05", "seed=4",
                                 "model=cnn6", "bn_momentum=0.5", "data_dir=/d", "method=half_mhe"])
    assert (old.optim.steps, old.model.widths, old.regularizer.s, old.optim.lr, old.seed,
            old.model.arch, old.model.bn_momentum, old.data.data_dir,
            old.regularizer.method) == (10, (16, 32, 64), 1.0, 0.05, 4, "cnn6", 0.5, "/d",
                                        "half_mhe")
    assert base.optim.steps == 42500  # overrides never mutate
    bad = {
        "optim.steps=2.5": "optim.steps must be an int", "steps=1e3": "optim.steps",
        "optim.steps=0": "optim.steps must be an int >= 1", "optim.lr=-1": "optim.lr must be > 0",
        "lr=nan": "optim.lr", "optim.lr=abc": "optim.lr must be a float",
        "data.batch_size=0": "data.batch_size must be >= 1",
        "data.batch_size=-3": "data.batch_size", "optim.momentum=1": "optim.momentum",
        "optim.boundaries=5,3": "optim.boundaries must be increasing",
        "optim.warmup_steps=-1": "optim.warmup_steps", "optim.weight_decay=-1e-4": "weight_decay",
        "optim.label_smoothing=1": "label_smoothing", "regularizer.s=-1": "regularizer.s",
        "data.dataset=cifar11": "data.dataset must be one of.*did you mean 'cifar10'",
        "model.arch=vgg": "model.arch must be one of",
        "regularizer.method=foo": "regularizer.method must be one of",
        "data.imbalance=some": "data.imbalance must be one of",
        "logging.eval_every=0": r"logging.eval_every must be an int >= 1, or None \(off\)",
        "model.widths=": "model.widths must be a non-empty",
        "model.bn_momentum=1.5": "model.bn_momentum", "data.augment=maybe": "data.augment",
        "regularizer.hidden_strength=-1": "regularizer.hidden_strength must be >= 0",
        "regularizer.max_norm=0": "regularizer.max_norm", "seed=-1": "seed must be an int >= 0",
        "data.image_size=0": "data.image_size", "data.train_per_class=0": "train_per_class",
        "stepz=1": "unknown config field 'stepz'; did you mean steps",
        "optim.stepz=1": "unknown config field 'optim.stepz'; did you mean optim.steps",
        "hidden=false": "'hidden' was replaced by regularizer.hidden_strength",
        "output=false": "'output' was replaced by regularizer.output_strength",
        "paper=1": "unknown config field 'paper'", "steps": "must look like section.key=value",
    }
    for item, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            apply_overrides(base, [item])
    with pytest.raises(ConfigError, match="model.widths must have 3 entries for resnet32"):
        apply_overrides(get_config("table5/cifar10/mhe"), ["model.widths=16,32"])
    with pytest.raises(ConfigError, match="regularizer.eq8"):
        apply_overrides(get_config("table1/cifar10/baseline"), ["regularizer.eq8=true"])
    with pytest.raises(ConfigError, match="regularizer.max_norm.*baseline"):
        apply_overrides(get_config("table1/cifar10/baseline"), ["regularizer.max_norm=1"])
    with pytest.raises(ConfigError, match="regularizer.hidden_strength is an MHE strength"):
        apply_overrides(get_config("table1/cifar10/baseline"), ["hidden_strength=1"])
    with pytest.raises(ConfigError, match="list of 'key=value'"):
        apply_overrides(base, "optim.steps=3")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown config"):
        get_config("table9/x")


def test_construction_validates_every_field():
    with pytest.raises(ConfigError, match="optim.steps must be an int"):
        ExperimentConfig(optim={"steps": 2.5})
    with pytest.raises(ConfigError, match="data.batch_size must be an int"):
        ExperimentConfig(data={"batch_size": True})  # a bool is not an int
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['optim.stepz'\]"):
        ExperimentConfig(optim={"stepz": 3})
    with pytest.raises(ConfigError, match="unknown config field"):
        ExperimentConfig.from_dict({"steps": 3})
    with pytest.raises(ConfigError, match="not valid"):
        ExperimentConfig.from_json("{")
    with pytest.raises(ConfigError, match="model must be a ModelConfig"):
        ExperimentConfig(model="cnn9")  # type: ignore[arg-type]
    c = ExperimentConfig(optim={"lr": 1}, model={"widths": [8, 16, 32]})
    assert isinstance(c.optim.lr, float) and c.model.widths == (8, 16, 32)  # coerced
    c2 = c.replace(seed=3, optim={"steps": 7})
    assert (c2.seed, c2.optim.steps, c2.optim.lr, c.optim.steps) == (3, 7, 1.0, 42500)
    with pytest.raises(ConfigError, match="optim.lr"):
        c.replace(optim={"lr": 0})


def test_result_differences_name_the_fields():
    a = get_config("repro/cifar10_small/mhe")
    b = apply_overrides(a, ["seed=3", "optim.lr=0.1", "logging.eval_every=7", "data_dir=/x",
                            "optim.steps=9"])
    diffs = result_differences(a, b)
    assert [d.split(":")[0] for d in diffs] == ["optim.lr", "seed"]
    assert "0.05 (saved) != 0.1 (now)" in diffs[0]
    assert {"logging.eval_every", "data.data_dir", "optim.steps"} <= set(NON_RESULT_FIELDS)
    assert result_differences(a.to_dict(), a) == []
