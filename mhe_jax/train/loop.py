"""The training loop: batches, jitted steps, JSONL logs, evaluation, checkpoints and resume."""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

import flax.nnx as nnx
import jax
import numpy as np

from mhe_jax._transform import layer_energies
from mhe_jax.data.augment import batches, steps_per_epoch
from mhe_jax.train.checkpoint import Checkpointer
from mhe_jax.train.steps import DataParallel, evaluate, make_steps


def _energy_logger(energy_kwargs):
    fn = jax.jit(lambda params: layer_energies(params, **energy_kwargs))

    def log(model):
        stats = fn(nnx.state(model, nnx.Param))
        return {
            path: {"energy": float(st.energy), "min_angle_deg": math.degrees(float(st.min_angle)),
                   "mean_abs_cosine": float(st.mean_abs_cosine)}
            for path, st in stats.items()
        }

    return log


def fit(
    model,
    optimizer,
    dataset,
    *,
    steps: int,
    batch_size: int = 128,
    seed: int = 0,
    augment: bool = True,
    pad: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.01,
    log_eps: float = 1e-4,
    pass_labels: bool = False,
    log_every: int = 100,
    eval_every: int | None = None,
    energy_every: int | None = None,
    energy_kwargs: dict | None = None,
    learning_rate=None,
    log_path=None,
    checkpoint_dir=None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    eval_batch_size: int = 500,
) -> dict:
    """Train ``model`` with ``optimizer`` (an ``nnx.Optimizer``) for ``steps`` steps.

    The data order depends only on ``(seed, epoch)`` and the augmentation key only on
    ``(seed, step)``, so a run resumed from a checkpoint continues bit-exactly. Batches are
    sharded over all local devices (data parallel) when there is more than one.

    Logs (JSONL at ``log_path``): every ``log_every`` steps the batch loss/accuracy and learning
    rate; every ``energy_every`` steps each layer's energy, min angle (degrees) and coherence
    (``layer_energies(**energy_kwargs)``); every ``eval_every`` steps the test accuracy.
    Returns ``{"test": final evaluation, "history": [records], "steps": steps, "seconds": ...}``.
    """
    fns = make_steps(augment=augment, pad=pad, flip=flip, label_smoothing=label_smoothing,
                     log_eps=log_eps, pass_labels=pass_labels)
    put = DataParallel() if jax.local_device_count() > 1 else None
    if put is not None:
        put.replicate(model, optimizer)
    ckpt = Checkpointer(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    if ckpt is not None and resume:
        restored = ckpt.restore(model, optimizer)
        if restored is not None:
            start = restored[0]
    log_file = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a" if start else "w")
    energy_log = _energy_logger(energy_kwargs or {}) if energy_every else None
    history = []

    def record(entry):
        history.append(entry)
        if log_file is not None:
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()

    spe = steps_per_epoch(len(dataset.x_train), batch_size)
    data = batches(dataset.x_train, dataset.y_train, batch_size, seed, epochs=None,
                   start_epoch=start // spe)
    data = itertools.islice(data, start % spe, None)
    base_key = jax.random.key(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, initial=start, desc="train", dynamic_ncols=True)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        xb, yb = next(data)
        if put is not None:
            xb, yb = put(xb), put(yb)
        metrics = fns.train(model, optimizer, xb, yb, jax.random.fold_in(base_key, step))
        done = step + 1
        if log_every and done % log_every == 0:
            entry = {"step": done, "loss": float(metrics["loss"]), "accuracy": float(metrics["accuracy"])}
            if callable(learning_rate):
                entry["lr"] = float(learning_rate(step))
            record(entry)
            if bar is not None:
                bar.set_postfix(loss=f"{entry['loss']:.3f}", acc=f"{entry['accuracy']:.3f}")
        if energy_log is not None and done % energy_every == 0:
            record({"step": done, "layers": energy_log(model)})
        if eval_every and done % eval_every == 0 and done != steps:
            ev = evaluate(model, fns.eval, dataset.x_test, dataset.y_test, batch_size=eval_batch_size,
                          num_classes=dataset.num_classes, put=put)
            record({"step": done, "test_accuracy": ev["accuracy"]})
        if ckpt is not None and checkpoint_every and done % checkpoint_every == 0:
            ckpt.save(done, model, optimizer, {"step": done, "seed": seed})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    final = evaluate(model, fns.eval, dataset.x_test, dataset.y_test, batch_size=eval_batch_size,
                     num_classes=dataset.num_classes, put=put)
    record({"step": steps, "test_accuracy": final["accuracy"],
            "test_per_class_accuracy": final["per_class_accuracy"]})
    if energy_log is not None:
        record({"step": steps, "layers": energy_log(model)})
    if ckpt is not None:
        if checkpoint_every and ckpt.latest_step() != steps and start < steps:
            ckpt.save(steps, model, optimizer, {"step": steps, "seed": seed})
        ckpt.close()
    if log_file is not None:
        log_file.close()
    return {"test": final, "history": history, "steps": steps, "seconds": seconds,
            "resumed_from": start}


def predict_features(model, x, *, batch_size: int = 500) -> np.ndarray:
    """``model.features`` on ``x`` (uint8 images) in eval mode, as a NumPy array."""
    from mhe_jax.data.augment import normalize

    fn = nnx.jit(lambda m, xb: m.features(normalize(xb)))
    model.eval()
    out = np.concatenate([np.asarray(fn(model, x[i:i + batch_size])) for i in range(0, len(x), batch_size)])
    model.train()
    return out
