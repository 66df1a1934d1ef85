"""Turn an :class:`ExperimentConfig` into data, model, optimizer, and a finished run on disk."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import flax.nnx as nnx
import jax
import numpy as np

from mhe_jax import _baselines, _transform
from mhe_jax import data as D
from mhe_jax import models as M
from mhe_jax.experiments.configs import ExperimentConfig
from mhe_jax.train import fit, make_optimizer, step_decay_schedule


def load_dataset(cfg: ExperimentConfig):
    """The config's dataset, with its class imbalance applied to the training split."""
    if cfg.dataset == "digits":
        ds = D.load_digits(size=cfg.image_size or 8)
    elif cfg.dataset == "cifar10":
        ds = D.load_cifar10(cfg.data_dir)
    elif cfg.dataset == "cifar100":
        ds = D.load_cifar100(cfg.data_dir)
    elif cfg.dataset == "cifar10_jpeg":
        ds = D.load_cifar10_jpeg_npz(cfg.data_dir)
    elif cfg.dataset == "mnist":
        ds = D.load_mnist(cfg.data_dir)
    elif cfg.dataset == "imagenet":  # any ImageFolder layout: <data_dir>/{train,val}/<class>/*
        root = cfg.data_dir or D.cache_dir() / "imagenet"
        ds = D.load_image_folder(root, **({} if cfg.image_size is None else {"size": cfg.image_size}))
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}")
    if cfg.train_per_class is not None:
        ds, _ = D.per_class_subset(ds, cfg.train_per_class, seed=cfg.subset_seed)
    if cfg.imbalance is None:
        return ds, None
    if cfg.imbalance == "fig4":
        keep = cfg.imbalance_keep
        kw = {"keep_count": int(keep)} if keep >= 1 else {"keep_fraction": float(keep)}
        out = D.mnist_fig4_imbalance(ds, cls=cfg.imbalance_class, seed=cfg.seed, **kw)
    elif cfg.imbalance == "single":
        out = D.cifar10_single_class_imbalance(ds, cls=cfg.imbalance_class, ratio=cfg.imbalance_keep)
    elif cfg.imbalance == "multiple":
        # "The number of images decreases as the class index decreases from 9 to 0" (Sec. 5.1.3):
        # our staircase keeps (c + 1)/10 of class c (class 0: 10 %, …, class 9: all).
        out = D.cifar10_multi_class_imbalance(
            ds, classes=tuple(range(9)), ratio=[(c + 1) / 10 for c in range(9)], seed=cfg.seed)
    else:
        raise ValueError(f"unknown imbalance {cfg.imbalance!r}")
    return out if isinstance(out, tuple) else (out, None)


def build_model(cfg: ExperimentConfig, num_classes: int, in_channels: int, image_size: int):
    rngs = nnx.Rngs(cfg.seed)
    bn = {} if cfg.bn_momentum is None else {"bn_momentum": cfg.bn_momentum}
    if cfg.model in ("cnn6", "cnn9", "cnn15"):
        ctor = {"cnn6": M.cnn6, "cnn9": M.cnn9, "cnn15": M.cnn15}[cfg.model]
        fc_kernel = 4 if image_size >= 25 else 1
        return ctor(num_classes, cfg.widths, in_channels=in_channels, fc_kernel_size=fc_kernel, rngs=rngs, **bn)
    if cfg.model == "resnet32":
        return M.resnet32(num_classes, cfg.widths, rngs=rngs, in_channels=in_channels, **bn)
    if cfg.model in ("resnet18", "resnet34"):
        ctor = M.resnet18 if cfg.model == "resnet18" else M.resnet34
        return ctor(num_classes, cfg.widths, rngs=rngs, in_channels=in_channels, **bn)
    if cfg.model == "mnist2d":
        return M.mnist2d(num_classes, in_channels=in_channels, widths=cfg.widths, rngs=rngs, **bn)
    raise ValueError(f"unknown model {cfg.model!r}")


def build_regularizer(cfg: ExperimentConfig, model):
    """The config's regularizer for ``model`` (None for the baseline)."""
    if cfg.method == "baseline":
        return None
    if cfg.method == "orthonormal":
        return _baselines.orthonormal_regularizer(cfg.baseline_strength, max_norm=cfg.max_norm)
    if cfg.method == "orthogonality":
        return _baselines.orthogonality_regularizer(cfg.baseline_strength, max_norm=cfg.max_norm)
    lam_h, lam_o = cfg.strengths()
    return _transform.mhe_regularizer(
        0.0 if lam_h is None else lam_h, lam_o, s=cfg.s, distance=cfg.distance,
        half_space=cfg.half_space, output=model.output_path, max_norm=cfg.max_norm,
    )


def build(cfg: ExperimentConfig):
    """(dataset, imbalance_counts, model, optimizer, learning-rate schedule)."""
    ds, counts = load_dataset(cfg)
    _, h, _, c = ds.x_train.shape
    model = build_model(cfg, ds.num_classes, c, h)
    optimizer, lr = build_optimizer(cfg, model)
    return ds, counts, model, optimizer, lr


def build_optimizer(cfg: ExperimentConfig, model):
    """(``nnx.Optimizer`` of ``model`` with the config's recipe and regularizer, lr schedule)."""
    lr = step_decay_schedule(cfg.lr, cfg.boundaries, 0.1, cfg.warmup_steps)
    tx = make_optimizer(lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                        regularizer=build_regularizer(cfg, model))
    return nnx.Optimizer(model, tx, wrt=nnx.Param), lr


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def run(cfg: ExperimentConfig, out_dir, *, progress: bool = True, resume: bool = True,
        command: str | None = None) -> dict:
    """Train ``cfg`` and write ``config.json``, ``log.jsonl``, ``results.json`` (and checkpoints)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds, counts, model, optimizer, lr = build(cfg)
    lam_h, lam_o = cfg.strengths()
    energy_kwargs = {"s": cfg.s if cfg.is_mhe else 2.0, "distance": cfg.distance,
                     "half_space": cfg.half_space, "output": model.output_path}
    (out / "config.json").write_text(json.dumps(
        {**{k: v for k, v in cfg.__dict__.items()}, "strengths": [lam_h, lam_o]}, indent=1, default=str))
    t0 = time.time()
    result = fit(
        model, optimizer, ds, steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
        augment=cfg.augment, label_smoothing=cfg.label_smoothing, pass_labels=cfg.eq8,
        log_every=cfg.log_every, eval_every=cfg.eval_every or None,
        energy_every=cfg.energy_every or None, energy_kwargs=energy_kwargs, learning_rate=lr,
        log_path=out / "log.jsonl",
        checkpoint_dir=(out / "checkpoints") if cfg.checkpoint_every else None,
        checkpoint_every=cfg.checkpoint_every or None, resume=resume, progress=progress,
    )
    test = result["test"]
    summary = {
        "name": cfg.name, "method": cfg.method, "test_accuracy": test["accuracy"],
        "test_error": 100.0 * (1.0 - test["accuracy"]),
        "per_class_accuracy": test["per_class_accuracy"], "steps": cfg.steps,
        "train_seconds": result["seconds"], "wall_seconds": time.time() - t0,
        "resumed_from": result["resumed_from"], "imbalance_counts": counts,
        "paper": cfg.paper, "machine": machine(), "command": command,
        "final_layers": next((h["layers"] for h in reversed(result["history"]) if "layers" in h), None),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    return {**summary, "model": model}


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)
