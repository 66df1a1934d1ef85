"""Jitted NNX train and eval steps (augmentation and input scaling on device), evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from mhe_jax.data import augment_batch, normalize
from mhe_jax.train.losses import official_cross_entropy

__all__ = ["StepFns", "make_steps", "evaluate", "accuracy_eval", "DataParallel"]


class StepFns(NamedTuple):
    train: Callable  # (model, optimizer, (images_uint8, labels)) -> {"loss", "accuracy"[, "lr"]}
    eval: Callable  # (model, images_uint8) -> predicted labels (B,)
    # (model, optimizer, (images (K, B, ...), labels (K, B))) -> metrics stacked (K,): K steps
    # of ``train`` in one jitted lax.scan (``fit(..., steps_per_call=K)``)
    train_many: Callable


def make_steps(
    *,
    augment: bool = True,
    pad: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.01,
    log_eps: float = 1e-4,
    pass_labels: bool = False,
    seed: int = 0,
    learning_rate: Callable | None = None,
) -> StepFns:
    """Build ``train_step(model, optimizer, batch)`` / ``eval_step(model, images)``.

    ``train_step`` takes ``batch = (images_uint8, labels)``, augments (symmetric pad ``pad``,
    random crop, random flip) with the key ``fold_in(key(seed), optimizer.step)`` — so the
    augmentation depends only on ``(seed, step)`` and a resumed run continues bit-exactly —
    scales to ``(x − 127.5)/128``, takes one optimizer step on the official loss and returns the
    batch loss and accuracy as device scalars (and ``lr``, the step's learning rate, when the
    schedule ``learning_rate`` is given). With ``pass_labels`` the batch labels reach the
    optimizer as the extra argument ``labels`` (Eq. 8 output-layer MHE, or SphereFace+).

    ``train_many`` is the same step ``K`` times in one jitted ``lax.scan``, for batches stacked
    along a new leading axis of length ``K`` (``fit(..., steps_per_call=K)``): one dispatch
    and no host round trip for ``K`` steps, which matters on an accelerator, where a small
    model's step takes about as long as Python takes to launch it. It computes what ``K``
    calls of ``train`` compute, to float32 rounding (XLA fuses the scanned step differently;
    after 11 steps of a tiny CNN-9 with half-space MHE at lr 0.05 the parameters and momentum
    traces agree to about 1e-5 to 1e-4 of each array's largest value, the batch losses to
    1e-5).
    """
    base_key = jax.random.key(seed)

    def one_step(model, optimizer, batch):
        images, labels = batch
        count = optimizer.step[...]
        if augment:
            images = augment_batch(jax.random.fold_in(base_key, count), images, pad, flip)
        x = normalize(images)

        def loss_fn(model):
            logits = model(x)
            loss = official_cross_entropy(logits, labels, label_smoothing=label_smoothing,
                                          log_eps=log_eps)
            return loss, logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        extra = {"labels": labels} if pass_labels else {}
        optimizer.update(model, grads, **extra)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
        if learning_rate is not None:
            # NNX's step counter is uint32; a schedule's ``sign(boundary - count)`` wraps for an
            # unsigned count, so the logged rate is taken at optax's own int32 count.
            metrics["lr"] = learning_rate(count.astype(jnp.int32))
        return metrics

    @nnx.jit
    def train_many(model, optimizer, batches):
        graphdef, state = nnx.split((model, optimizer))

        def body(state, batch):
            m, opt = nnx.merge(graphdef, state)
            metrics = one_step(m, opt, batch)
            return nnx.state((m, opt)), metrics

        state, metrics = jax.lax.scan(body, state, batches)
        nnx.update((model, optimizer), state)
        return metrics

    @nnx.jit
    def eval_step(model, images):
        return jnp.argmax(model(normalize(images)), -1)

    return StepFns(nnx.jit(one_step), eval_step, train_many)


def evaluate(model: nnx.Module, eval_step: Callable[[nnx.Module, Any], ArrayLike],
             x: np.ndarray, y: ArrayLike, *, batch_size: int = 500,
             num_classes: int | None = None, put: DataParallel | None = None) -> dict:
    """Accuracy on ``(x, y)`` in eval mode, overall and per class (NaN for an absent class).

    With a ``put`` that spans several processes (:attr:`DataParallel.spans_processes`) every
    process calls it with the same ``(x, y)`` and loads only its rows of each batch (the last
    one padded to a multiple of the devices, the padding not counted); the counts of correct
    predictions are summed over all devices, so every process returns the accuracy of the
    whole set, the same numbers as a single process computes from the same predictions.
    """
    if put is not None and put.spans_processes:
        return _evaluate_across_processes(model, eval_step, x, y, batch_size=batch_size,
                                          num_classes=num_classes, put=put)
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        if put is not None and len(xb) % put.num_devices == 0:
            xb = put(xb)
        preds.append(eval_step(model, xb))  # device arrays: one fetch at the end, so the
    model.train()                               # batches' copies and steps overlap
    pred = np.concatenate(jax.device_get(preds))
    y = np.asarray(y)
    _check_num_classes(num_classes)
    k = num_classes if num_classes is not None else int(y.max()) + 1
    per_class = [float(np.mean(pred[y == c] == c)) if np.any(y == c) else float("nan")
                 for c in range(k)]
    return {"accuracy": float(np.mean(pred == y)), "per_class_accuracy": per_class}


def _check_num_classes(num_classes: int | None) -> None:
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be an int >= 1 or None, got {num_classes!r}")


def _class_counts(pred, y, valid, num_classes):
    """(correct, total) per class of the valid examples, int32 (num_classes,)."""
    hits = jax.nn.one_hot(y, num_classes, dtype=jnp.int32) * valid[:, None].astype(jnp.int32)
    return jnp.sum(hits * (pred == y)[:, None], axis=0), jnp.sum(hits, axis=0)


def _evaluate_across_processes(model, eval_step, x, y, *, batch_size, num_classes, put):
    y = np.asarray(y)
    _check_num_classes(num_classes)
    k = num_classes if num_classes is not None else int(y.max()) + 1
    counts = put._counts
    model.eval()
    correct = total = None
    for i in range(0, len(x), batch_size):
        n = min(batch_size, len(x) - i)
        padded = -(-n // put.num_devices) * put.num_devices
        rows = put.process_rows(padded)
        mine = rows[rows < n] + i  # this process's examples; rows >= n are padding
        xb = np.zeros((len(rows), *x.shape[1:]), x.dtype)
        yb = np.zeros(len(rows), np.int32)
        valid = rows < n
        xb[valid], yb[valid] = x[mine], y[mine]
        c, t = counts(eval_step(model, put.from_process_rows(xb, padded)),
                      put.from_process_rows(yb, padded), put.from_process_rows(valid, padded),
                      k)
        correct, total = (c, t) if correct is None else (correct + c, total + t)
    model.train()
    correct, total = (np.asarray(a, np.int64) for a in jax.device_get((correct, total)))
    per_class = [float(correct[c] / total[c]) if total[c] else float("nan") for c in range(k)]
    return {"accuracy": float(correct.sum() / len(y)), "per_class_accuracy": per_class}


def accuracy_eval(eval_step: Callable[[nnx.Module, Any], ArrayLike], x: np.ndarray,
                  y: ArrayLike, *, num_classes: int | None = None, batch_size: int = 500,
                  put: DataParallel | None = None,
                  prefix: str = "test") -> Callable[[nnx.Module], dict]:
    """``fn(model) -> {"<prefix>_accuracy", "<prefix>_per_class_accuracy"}`` for ``fit(evals=)``."""

    def fn(model: nnx.Module) -> dict:
        ev = evaluate(model, eval_step, x, y, batch_size=batch_size, num_classes=num_classes,
                      put=put)
        return {f"{prefix}_accuracy": ev["accuracy"],
                f"{prefix}_per_class_accuracy": ev["per_class_accuracy"]}

    return fn


class DataParallel:
    """Shard batches over all local devices along a ``data`` mesh axis; replicate the model.

    ``put = DataParallel(); put.replicate(model, optimizer)`` replicates the model and
    optimizer state; ``put(array)`` splits an array along its first axis over the devices
    (``epoch_batches(..., put=put)`` gathers the batches on the devices already sharded).
    The same jitted step (:func:`make_steps`) then runs as one SPMD program: XLA partitions
    the global-batch computation and inserts the all-reduces, so the gradients are of the
    global batch and BatchNorm's batch statistics (mean and variance in train mode, and so the
    running statistics) are computed over the **global** batch, not per device: the step
    equals the single-device step on the same batch to float32 rounding (verified on 8 host
    devices, 2 examples a device, in ``tests/test_device_path.py``: every parameter, running
    statistic and optimizer leaf within ~3e-6 of its largest value). It is the code path
    of ``runner.run`` (and so of notebook 04 and ``benchmarks/device.py``) whenever more
    than one local device is present (8 TPU cores on Colab).

    Several processes (``jax.distributed`` initialized, e.g. by
    :func:`mhe_jax.train.initialize_distributed`): ``DataParallel(jax.devices())`` spans the
    devices of every process (:attr:`spans_processes`). ``replicate`` works as in one process
    (every process builds the same model from the same seed); the batches are then built
    from each process's own rows (:meth:`process_rows`, :meth:`from_process_rows`), which
    :func:`mhe_jax.train.epoch_batches` and :func:`mhe_jax.train.evaluate` do when given it.
    """

    # jax.Device is a runtime alias (a variable to type checkers), hence Sequence[Any].
    def __init__(self, devices: Sequence[Any] | None = None):
        devices = devices if devices is not None else jax.local_devices()
        self.num_devices = len(devices)
        self.mesh = jax.make_mesh((self.num_devices,), ("data",), devices=devices,
                                  axis_types=(jax.sharding.AxisType.Auto,))
        self.batch = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        # evaluate()'s counts of correct predictions, summed over every device (replicated)
        self._counts = jax.jit(_class_counts, static_argnums=3,
                               out_shardings=(self.replicated, self.replicated))

    @property
    def spans_processes(self) -> bool:
        """Whether the mesh holds devices of other processes (a multi-process run): the
        batches are then built from each process's own rows (:meth:`process_rows`,
        :meth:`from_process_rows`)."""
        return not self.batch.is_fully_addressable

    def process_rows(self, batch_size: int) -> np.ndarray:
        """The rows of a global batch of ``batch_size`` that this process's devices hold,
        ascending: what this process loads of each batch (all rows in a single process).

        The processes' rows are disjoint and together every row of the batch; ``ValueError``
        when ``batch_size`` is not a multiple of the number of devices.

        Args:
          batch_size: the global batch size.

        Returns:
          The row indices, an int64 array.

        Examples:
            >>> from mhe_jax.train import DataParallel
            >>> DataParallel(jax.local_devices()[:1]).process_rows(4)
            array([0, 1, 2, 3])
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if batch_size % self.num_devices:
            raise ValueError(f"batch size {batch_size} is not divisible by the "
                             f"{self.num_devices} devices")
        index_map = self.batch.addressable_devices_indices_map((batch_size,))
        rows = set()
        for index in index_map.values():
            rows.update(range(batch_size)[index[0] if index else slice(None)])
        return np.array(sorted(rows), dtype=np.int64)

    def from_process_rows(self, local: jax.Array | np.ndarray, batch_size: int) -> jax.Array:
        """The global batch (sharded along ``data``) whose :meth:`process_rows` are ``local``
        in this process (``jax.make_array_from_process_local_data``): every process passes
        its own rows, no process holds the whole batch.

        Args:
          local: this process's rows of the batch, in the order of :meth:`process_rows`.
          batch_size: the global batch size.

        Returns:
          The global batch, a ``jax.Array`` of ``batch_size`` rows sharded along ``data``.

        Examples:
            >>> import numpy as np
            >>> from mhe_jax.train import DataParallel
            >>> put = DataParallel(jax.local_devices()[:1])  # one process: all rows are local
            >>> put.from_process_rows(np.arange(6).reshape(3, 2), 3).shape
            (3, 2)
        """
        return jax.make_array_from_process_local_data(
            self.batch, np.asarray(local), (batch_size, *np.shape(local)[1:]))

    def __call__(self, array: jax.Array | np.ndarray) -> jax.Array:
        if array.shape[0] % self.num_devices:
            raise ValueError(
                f"batch size {array.shape[0]} is not divisible by the {self.num_devices} devices"
            )
        return jax.device_put(array, self.batch)

    def replicate(self, *modules: nnx.Pytree) -> None:
        """Put every array of each module's (or ``nnx.Optimizer``'s) state on all devices
        (replicated), in place."""
        for m in modules:
            nnx.update(m, jax.device_put(nnx.state(m), self.replicated))
