"""Turn an :class:`ExperimentConfig` into data, model, optimizer, and a finished run on disk.

:func:`run` builds everything from the config and hands it to :func:`mhe_jax.train.fit`; a run
directory holds ``config.json`` (:meth:`ExperimentConfig.to_json`), ``log.jsonl``,
``results.json`` and ``checkpoints/``. Resuming checks the checkpoint's saved config against
the current one (:func:`mhe_jax.experiments.configs.result_differences`).
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
import warnings
from pathlib import Path
from typing import Literal

import flax.nnx as nnx
import jax
import numpy as np
import optax

import mhe_jax
from mhe_jax import data as D, models as M
from mhe_jax.experiments.configs import (
    ConfigError,
    ExperimentConfig,
    RegularizerConfig,
    result_differences,
)
from mhe_jax.train import (
    Checkpointer,
    DataParallel,
    Every,
    JsonlLogger,
    ProgressBar,
    accuracy_eval,
    energy_logger,
    epoch_batches,
    fit,
    make_optimizer,
    make_steps,
    step_decay_schedule,
)

__all__ = ["ResumeError", "run", "call_length", "build", "load_dataset", "build_model",
           "build_regularizer", "build_optimizer", "machine"]

_NEEDS_DATA_DIR = {"cifar10_jpeg": "the cifar10_jpeg .npz file",
                   "imagenet": "a folder with train/ and val/ class folders"}


# results.json's "train_accuracy" evaluates the whole training set (eval mode, no augmentation)
# at the end when it has at most this many images (CIFAR and MNIST do; ImageNet does not), or
# when logging.train_eval_every is set (then also every that many steps).
_TRAIN_EVAL_MAX = 60_000


class ResumeError(ConfigError):
    """The checkpoint to resume was written by a run whose config differs (fields named)."""


def load_dataset(cfg: ExperimentConfig):
    """The config's dataset, with its subset and class imbalance applied to the training split.

    Returns ``(dataset, imbalance_counts or None)``.
    """
    d = cfg.data

    def required_dir() -> str:
        if d.data_dir is None:
            raise ConfigError(
                f"data.data_dir is required for dataset {d.dataset!r} "
                f"({_NEEDS_DATA_DIR[d.dataset]}): --set data.data_dir=PATH")
        return d.data_dir

    if d.dataset == "digits":
        ds = D.load_digits(size=d.image_size or 8)
    elif d.dataset == "cifar10":
        ds = D.load_cifar10(d.data_dir)
    elif d.dataset == "cifar100":
        ds = D.load_cifar100(d.data_dir)
    elif d.dataset == "cifar10_jpeg":
        ds = D.load_cifar10_jpeg_npz(required_dir())
    elif d.dataset == "mnist":
        ds = D.load_mnist(d.data_dir)
    else:  # imagenet: any ImageFolder layout <data_dir>/{train,val}/<class>/*
        root = required_dir()
        ds = (D.load_image_folder(root) if d.image_size is None
              else D.load_image_folder(root, size=d.image_size))
    if d.train_per_class is not None:
        ds, _ = D.per_class_subset(ds, d.train_per_class, seed=d.subset_seed)
    if d.imbalance is None:
        return ds, None
    if d.imbalance == "fig4":
        keep = d.imbalance_keep
        if keep >= 1:
            out = D.mnist_fig4_imbalance(ds, cls=d.imbalance_class, seed=cfg.seed,
                                         keep_count=int(keep))
        else:
            out = D.mnist_fig4_imbalance(ds, cls=d.imbalance_class, seed=cfg.seed,
                                         keep_fraction=float(keep))
    elif d.imbalance == "single":
        out = D.cifar10_single_class_imbalance(ds, cls=d.imbalance_class, ratio=d.imbalance_keep)
    else:  # multiple
        # "The number of images decreases as the class index decreases from 9 to 0" (Sec. 5.1.3):
        # our staircase keeps (c + 1)/10 of class c (class 0: 10 %, …, class 9: all).
        out = D.cifar10_multi_class_imbalance(
            ds, classes=tuple(range(9)), ratio=[(c + 1) / 10 for c in range(9)], seed=cfg.seed)
    return out if isinstance(out, tuple) else (out, None)


def build_model(cfg: ExperimentConfig, num_classes: int, in_channels: int, image_size: int):
    """The config's network for images of ``image_size`` with ``in_channels`` channels."""
    m = cfg.model
    rngs = nnx.Rngs(cfg.seed)
    kw = {"in_channels": in_channels, "rngs": rngs}
    if m.bn_momentum is not None:
        kw["bn_momentum"] = m.bn_momentum
    if m.arch in ("cnn6", "cnn9", "cnn15"):
        ctor = {"cnn6": M.cnn6, "cnn9": M.cnn9, "cnn15": M.cnn15}[m.arch]
        return ctor(num_classes, m.widths, fc_kernel_size=4 if image_size >= 25 else 1, **kw)
    if m.arch == "mnist2d":
        return M.mnist2d(num_classes, widths=m.widths, **kw)
    ctor = {"resnet32": M.resnet32, "resnet18": M.resnet18, "resnet34": M.resnet34}[m.arch]
    return ctor(num_classes, m.widths, **kw)


def build_regularizer(reg: RegularizerConfig, output_path: str
                      ) -> tuple[optax.GradientTransformation | None, dict]:
    """The regularizer's optax transformation (None for the baseline) and the keyword
    arguments of :func:`mhe_jax.layer_energies` that log the same energies — built from one
    set of options, so the two always agree."""
    options = {"s": reg.s, "distance": reg.distance, "half_space": reg.half_space,
               "output": output_path}
    if reg.method == "baseline":
        return None, options
    if reg.method in ("orthonormal", "orthogonality"):
        ctor = (mhe_jax.orthonormal_regularizer if reg.method == "orthonormal"
                else mhe_jax.orthogonality_regularizer)
        return ctor(reg.baseline_strength, max_norm=reg.max_norm), options
    lam_h, lam_o = reg.strengths()
    tx = mhe_jax.mhe_regularizer(0.0 if lam_h is None else lam_h, lam_o, max_norm=reg.max_norm,
                                 **options)
    return tx, options


def build_optimizer(cfg: ExperimentConfig, model):
    """(``nnx.Optimizer`` of ``model`` with the config's recipe and regularizer, lr schedule)."""
    o = cfg.optim
    lr = step_decay_schedule(o.lr, o.boundaries, 0.1, o.warmup_steps)
    tx, _ = build_regularizer(cfg.regularizer, model.output_path)
    chain = make_optimizer(lr, momentum=o.momentum, weight_decay=o.weight_decay, regularizer=tx)
    return nnx.Optimizer(model, chain, wrt=nnx.Param), lr


def build(cfg: ExperimentConfig):
    """(dataset, imbalance_counts, model, optimizer, learning-rate schedule)."""
    ds, counts = load_dataset(cfg)
    _, h, _, c = ds.x_train.shape
    model = build_model(cfg, ds.num_classes, c, h)
    optimizer, lr = build_optimizer(cfg, model)
    return ds, counts, model, optimizer, lr


def machine() -> dict:
    """Platform, processor, JAX devices and version (stored in results.json); the number of
    processes too when there are several (the devices are then those of every process)."""
    out = {"platform": platform.platform(),
           "processor": platform.processor() or platform.machine(),
           "devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
    if jax.process_count() > 1:
        out["processes"] = jax.process_count()
    return out


def _sync(name: str) -> None:
    """Wait until every process gets here (a multi-process run)."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"mhe_jax runner: {name}")


ResumeMode = Literal["auto", "force", "restart"]


def run(cfg: ExperimentConfig, out_dir, *, resume: ResumeMode = "auto", progress: bool = True,
        command: str | None = None, steps_per_call: int | Literal["auto"] = 1) -> dict:
    """Train ``cfg``; write ``config.json``, ``log.jsonl``, ``results.json`` and checkpoints.

    Multi-process (``jax.distributed`` initialized before, as the CLI's ``--coordinator``
    etc. do; every process calls ``run`` with the same arguments): the model is replicated
    over the devices of every process, each process loads only its rows of each global
    batch (the global batches are the single-process run's, in the same order), the
    evaluations count over the whole test set, and the checkpoints are saved by all
    processes together. Process 0 alone writes ``config.json``, ``log.jsonl`` and
    ``results.json`` and shows the progress bar; every process returns the same results.
    ``data.batch_size`` must be a multiple of the number of devices (``ConfigError``).

    Args:
      cfg: the experiment.
      out_dir: the run directory.
      resume: ``"auto"`` continues from the newest intact checkpoint in
        ``out_dir/checkpoints`` if its saved config matches ``cfg`` in every field that
        changes the result (else :class:`ResumeError` naming the fields; ``optim.steps`` may
        grow, never drop below the checkpoint's step); ``"force"`` continues despite
        differences (a warning; listed in results.json ``resume_differences``);
        ``"restart"`` deletes ``checkpoints/`` and ``log.jsonl`` and starts from scratch.
      progress: show a tqdm bar.
      command: the command line, stored in results.json.
      steps_per_call: train this many steps in one jitted call (``lax.scan``; see
        :func:`mhe_jax.train.fit`): for accelerators, where a small model's step is as short
        as its Python dispatch. The same run to float32 rounding; best a divisor of the
        logging intervals: ``"auto"`` is :func:`call_length`'s (at most 100).

    Returns:
      The results.json dict plus ``"model"`` (the trained model).
    """
    if resume not in ("auto", "force", "restart"):
        raise ValueError(f"resume must be 'auto', 'force' or 'restart', got {resume!r}")
    if not isinstance(cfg, ExperimentConfig):
        raise TypeError(f"cfg must be an ExperimentConfig, got {type(cfg).__name__}")
    if steps_per_call == "auto":
        steps_per_call = call_length(cfg)
    if (not isinstance(steps_per_call, int) or isinstance(steps_per_call, bool)
            or steps_per_call < 1):
        raise ValueError(f"steps_per_call must be an int >= 1 or 'auto', got {steps_per_call!r}")
    out = Path(out_dir)
    ds, counts = load_dataset(cfg)  # first: a missing data path fails before anything is written
    # Several processes (jax.distributed initialized): one global batch over every device,
    # each process its own rows; process 0 alone writes the run's files, all save checkpoints.
    several = jax.process_count() > 1
    writes = jax.process_index() == 0
    if several and cfg.data.batch_size % jax.device_count():
        raise ConfigError(
            f"data.batch_size {cfg.data.batch_size} is not divisible by the "
            f"{jax.device_count()} devices of the {jax.process_count()} processes: each device "
            "takes an equal share of the global batch; --set data.batch_size=... a multiple "
            f"of {jax.device_count()}")
    ckpt_dir = out / "checkpoints"
    if writes:
        out.mkdir(parents=True, exist_ok=True)
        if resume == "restart":
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            (out / "log.jsonl").unlink(missing_ok=True)
    if several:  # the others look for checkpoints after process 0 has removed them
        _sync("run folder ready")
    _, h, _, c = ds.x_train.shape
    model = build_model(cfg, ds.num_classes, c, h)
    optimizer, lr = build_optimizer(cfg, model)
    _, energy_kwargs = build_regularizer(cfg.regularizer, model.output_path)
    if several:
        put: DataParallel | None = DataParallel(jax.devices())
    else:
        put = DataParallel() if jax.local_device_count() > 1 else None
    if put is not None:
        put.replicate(model, optimizer)

    log = cfg.logging
    checkpointer = None
    start, differences = 0, []
    if log.checkpoint_every is not None or ckpt_dir.exists():
        checkpointer = Checkpointer(ckpt_dir, every=log.checkpoint_every,
                                    metadata={"config": cfg.to_dict()})

        def check(step: int, meta: dict) -> None:
            differences[:] = _resume_differences(cfg, step, meta)
            if differences and resume != "force":
                raise ResumeError(
                    f"{ckpt_dir / str(step)} was written by a different config: "
                    + "; ".join(differences)
                    + ". Use resume='restart' (CLI --restart) to start over, or "
                    "resume='force' (CLI --resume-anyway) to continue anyway.")

        restored = checkpointer.restore(model, optimizer, check=check)
        if restored is not None:
            start = restored[0]
            if differences:
                warnings.warn(f"resuming {ckpt_dir} despite: {'; '.join(differences)}",
                              RuntimeWarning, stacklevel=2)
    if writes:
        (out / "config.json").write_text(cfg.to_json() + "\n")

    fns = make_steps(augment=cfg.data.augment, label_smoothing=cfg.optim.label_smoothing,
                     pass_labels=cfg.regularizer.eq8, seed=cfg.seed, learning_rate=lr)
    batches = epoch_batches(ds.x_train, ds.y_train, batch_size=cfg.data.batch_size,
                            seed=cfg.seed, start_step=start,
                            put=put if put is not None else jax.device_put)  # on-device stream
    test = accuracy_eval(fns.eval, ds.x_test, ds.y_test, num_classes=ds.num_classes, put=put)
    evals = [Every(log.eval_every, test)]
    train_eval = None
    if log.train_eval_every is not None or len(ds.x_train) <= _TRAIN_EVAL_MAX:
        train_eval = accuracy_eval(fns.eval, ds.x_train, ds.y_train,
                                   num_classes=ds.num_classes, put=put, prefix="train")
        evals.append(Every(log.train_eval_every, train_eval))
    energies = None if log.energy_every is None else energy_logger(**energy_kwargs)
    if energies is not None:
        evals.insert(0, Every(log.energy_every, energies))
    loggers: list[JsonlLogger | ProgressBar] = (
        [JsonlLogger(out / "log.jsonl", keep_until=start)] if writes else [])
    if progress and writes:
        loggers.append(ProgressBar(cfg.optim.steps, initial=start,
                                   desc=f"{cfg.name} seed {cfg.seed}"))
    t0 = time.time()
    try:
        if energies is not None and start == 0:  # the initialization: curves start at step 0
            initial = {"step": 0, **energies(model)}
            for logger in loggers:
                logger(initial)
        result = fit(model, optimizer, batches, steps=cfg.optim.steps,
                     train_step=fns.train if steps_per_call == 1 else fns.train_many,
                     log_every=log.log_every, evals=evals, loggers=loggers,
                     checkpointer=checkpointer, steps_per_call=steps_per_call)
        train_accuracy = result["final"].get("train_accuracy")
    finally:
        for logger in loggers:
            logger.close()
        if checkpointer is not None:
            checkpointer.close()
    final = result["final"]
    lam_h, lam_o = cfg.strengths()
    summary = {
        "name": cfg.name, "method": cfg.regularizer.method,
        "test_accuracy": final["test_accuracy"],
        "test_error": 100.0 * (1.0 - final["test_accuracy"]),
        "train_accuracy": train_accuracy,
        "per_class_accuracy": final["test_per_class_accuracy"], "steps": cfg.optim.steps,
        "train_seconds": result["seconds"], "wall_seconds": time.time() - t0,
        "resumed_from": start, "imbalance_counts": counts, "paper": cfg.paper,
        "machine": machine(), "command": command, "final_layers": final.get("layers"),
        "strengths": [lam_h, lam_o], "config": cfg.to_dict(),
        "resume_differences": differences,
    }
    if writes:
        (out / "results.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    return {**summary, "model": model}


def call_length(cfg: ExperimentConfig, cap: int = 100) -> int:
    """The largest ``steps_per_call`` up to ``cap`` that divides every logging interval of
    ``cfg`` (log, eval, energy, training-set eval, checkpoint), so every jitted call has the
    same length and compiles once (a shorter one only at a resumed start and at the end)."""
    if not isinstance(cap, int) or cap < 1:
        raise ValueError(f"cap must be an int >= 1, got {cap!r}")
    lg = cfg.logging
    g = 0
    for n in (lg.log_every, lg.eval_every, lg.energy_every, lg.train_eval_every,
              lg.checkpoint_every):
        if n is not None:
            g = math.gcd(g, n)
    if g == 0:
        return min(cap, cfg.optim.steps) or 1
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)


def _resume_differences(cfg: ExperimentConfig, step: int, meta: dict) -> list[str]:
    saved = meta.get("config")
    if saved is None:
        return ["the checkpoint has no saved config (written by an older mhe_jax)"]
    diffs = result_differences(saved, cfg)
    if step > cfg.optim.steps:
        diffs.append(f"optim.steps: the checkpoint is at step {step}, past optim.steps="
                     f"{cfg.optim.steps}")
    return diffs


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    return str(o)
