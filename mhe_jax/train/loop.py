"""The training loop: a small :func:`fit` over any NNX model, optimizer, step and batch stream."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.data import normalize
from mhe_jax.train.checkpoint import Checkpointer

__all__ = ["Every", "fit", "predict_features"]


class Every(NamedTuple):
    """Run ``fn(model) -> dict`` every ``steps`` training steps (and once at the end)."""

    steps: int | None
    fn: Callable[[nnx.Module], dict]


def fit(model: nnx.Module, optimizer: nnx.Optimizer, batches: Iterable, *, steps: int,
        train_step: Callable, log_every: int | None = None, evals: Sequence[Every] = (),
        loggers: Sequence[Callable[[dict], None]] = (),
        checkpointer: Checkpointer | None = None, steps_per_call: int = 1) -> dict:
    """Train ``model`` from ``optimizer.step`` up to ``steps`` steps.

    Several processes (``jax.distributed`` initialized): every process calls ``fit`` with the
    same arguments, on global arrays — the model and optimizer replicated by a
    :class:`mhe_jax.train.DataParallel` over ``jax.devices()``, the batches global arrays
    sharded along its ``data`` axis (``epoch_batches(..., put=put)``: each process loads only
    its rows of each global batch), the evaluations global (``accuracy_eval(..., put=put)``).
    Every process then records the same (global) metrics; give the loggers to process 0
    only (``loggers if jax.process_index() == 0 else []``). A ``checkpointer`` saves in all
    processes together (orbax's multi-process save), into a folder they all see.

    Args:
      model: the NNX module to train (restored from a checkpoint beforehand to resume).
      optimizer: its ``nnx.Optimizer`` (restored with the model to resume: training continues
        at ``optimizer.step``).
      batches: iterable whose next item is the batch of the next step (of step
        ``optimizer.step`` when resuming, e.g. :func:`mhe_jax.train.epoch_batches`). If it
        ends before ``steps``, the steps trained so far are saved (with a ``checkpointer``, as
        the checkpoint of the step reached) and ``ValueError`` says how many ran; with
        ``steps_per_call > 1`` the batches of an incomplete call are not trained.
      steps: total number of steps of the run.
      train_step: ``train_step(model, optimizer, batch) -> dict`` of scalar metrics (device
        arrays; they are fetched to the host only every ``log_every`` steps, so nothing
        synchronises the host with the device between log, eval and checkpoint points).
      log_every: record ``{"step", **metrics}`` every this many steps (None: never).
      evals: :class:`Every` items; ``{"step", **fn(model)}`` is recorded every ``n`` steps and,
        for every item, at the end (``Every(None, fn)``: only at the end).
      loggers: callables receiving each record (``JsonlLogger``, ``ProgressBar``, ``print``).
      checkpointer: a :class:`mhe_jax.train.Checkpointer`, saved every ``checkpointer.every``
        steps and at the end.
      steps_per_call: train this many steps per call of ``train_step``, which then takes the
        batches stacked along a new leading axis (on the batches' device: ``jnp.stack``) and
        returns its metrics stacked the same way, e.g. :func:`mhe_jax.train.make_steps`'s
        ``train_many``. A call ends early at a log, eval or checkpoint point and at the end, so
        the records are those of ``steps_per_call=1``; a call of another length compiles once
        more, so choose a divisor of the intervals.

    Returns:
      A dict with the keys ``"history"`` (the list of records), ``"final"`` (the merged eval
        results at the end), ``"start_step"`` (``optimizer.step`` at the call), ``"steps"`` (the
        argument) and ``"seconds"`` (training time, without the final evaluations).

    Examples:
        An own NNX model, an ``optax`` chain with :func:`mhe_jax.mhe_regularizer` (λ_h = λ_o = 1,
        the classifier kernel named by ``output=``) and a plain generator of random batches:

        >>> import numpy as np, optax, mhe_jax
        >>> from flax import nnx
        >>> from mhe_jax.train import fit
        >>> class MLP(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.hidden = nnx.Linear(4, 8, rngs=rngs)
        ...         self.out = nnx.Linear(8, 3, rngs=rngs)
        ...     def __call__(self, x):
        ...         return self.out(nnx.relu(self.hidden(x)))
        >>> model = MLP(nnx.Rngs(0))
        >>> tx = optax.chain(mhe_jax.mhe_regularizer(1.0, 1.0, output="out/kernel"),
        ...                  optax.sgd(0.1))
        >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        >>> @nnx.jit
        ... def train_step(model, optimizer, batch):
        ...     x, y = batch
        ...     def loss_fn(m):
        ...         return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        ...     loss, grads = nnx.value_and_grad(loss_fn)(model)
        ...     optimizer.update(model, grads)  # the regularizer reads the params from here
        ...     return {"loss": loss}
        >>> def batches(rng=np.random.default_rng(0)):  # x (16, 4), integer labels (16,)
        ...     while True:
        ...         yield rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
        >>> result = fit(model, optimizer, batches(), steps=3, train_step=train_step,
        ...              log_every=1)
        >>> [record["step"] for record in result["history"]], int(optimizer.step[...])
        ([1, 2, 3], 3)
        >>> sorted(result["history"][-1]), result["start_step"]
        (['loss', 'step'], 0)
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    for name, n in [("log_every", log_every)] + [(f"evals[{i}].steps", e.steps)
                                                  for i, e in enumerate(evals)]:
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ValueError(f"{name} must be an int >= 1 or None, got {n!r}")
    if (not isinstance(steps_per_call, int) or isinstance(steps_per_call, bool)
            or steps_per_call < 1):
        raise ValueError(f"steps_per_call must be an int >= 1, got {steps_per_call!r}")
    start = int(optimizer.step[...])
    if start > steps:
        raise ValueError(f"the optimizer is at step {start}, past steps={steps}")
    history: list[dict] = []

    def record(entry: dict) -> None:
        history.append(entry)
        for logger in loggers:
            logger(entry)

    def run_evals(done: int, final: bool) -> dict:
        merged: dict = {}
        for ev in evals:
            if final or (ev.steps is not None and done % ev.steps == 0):
                result = ev.fn(model)
                record({"step": done, **result})
                merged.update(result)
        return merged

    save_every = getattr(checkpointer, "every", None)
    intervals = [n for n in [log_every, save_every, *(e.steps for e in evals)] if n is not None]

    def steps_to_host_point(step: int) -> int:  # to the next log / eval / save, or the end
        return min([steps - step, steps_per_call]
                   + [n - step % n for n in intervals])

    data = iter(batches)

    def next_batch(step: int):
        try:
            return next(data)
        except StopIteration:
            pass
        saved = ""
        if checkpointer is not None and step > start:
            if checkpointer.latest_step() != step:  # not already saved at a save point
                checkpointer.save(step, model, optimizer)
            saved = f"; they are saved as checkpoint {step} in {checkpointer.directory}"
        raise ValueError(
            f"batches ran out after step {step} of steps={steps}: {step - start} step(s) ran "
            f"in this call (from step {start}){saved}. Pass a stream with a batch for every "
            "step (e.g. epoch_batches, which repeats the data), or a smaller steps") from None

    model.train()
    t0 = time.perf_counter()
    step = start
    while step < steps:
        if steps_per_call == 1:
            metrics = train_step(model, optimizer, next_batch(step))
            done = step + 1
        else:
            n = steps_to_host_point(step)
            chunk = [next_batch(step) for _ in range(n)]
            metrics = train_step(model, optimizer,
                                 jax.tree.map(lambda *xs: jnp.stack(xs), *chunk))
            _check_stacked(metrics, n)
            done = step + n
        if log_every is not None and done % log_every == 0:
            host = jax.device_get(metrics)
            if steps_per_call > 1:  # the call's last step (sliced on the host: no upload)
                host = jax.tree.map(lambda m: m[-1], host)
            record({"step": done, **{k: float(v) for k, v in host.items()}})
        if done < steps:
            run_evals(done, final=False)
            if checkpointer is not None and save_every is not None and done % save_every == 0:
                checkpointer.save(done, model, optimizer)
        step = done
    jax.block_until_ready(nnx.state(model))
    seconds = time.perf_counter() - t0
    if checkpointer is not None and start < steps:
        checkpointer.save(steps, model, optimizer)
    final = run_evals(steps, final=True)
    return {"history": history, "final": final, "start_step": start, "steps": steps,
            "seconds": seconds}


def _check_stacked(metrics, k: int) -> None:
    for leaf in jax.tree.leaves(metrics):
        if np.ndim(leaf) < 1 or np.shape(leaf)[0] != k:
            raise ValueError(
                f"with steps_per_call > 1, train_step must take {k} batches stacked along a new "
                f"leading axis and return metrics stacked the same way (e.g. make_steps(...)"
                f".train_many); it returned a metric of shape {np.shape(leaf)}")


def predict_features(model: nnx.Module, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """``model.features`` on ``x`` (uint8 images) in eval mode, as a NumPy array."""
    fn = nnx.jit(lambda m, xb: m.features(normalize(xb)))
    model.eval()
    out = np.concatenate([np.asarray(fn(model, x[i:i + batch_size]))
                          for i in range(0, len(x), batch_size)])
    model.train()
    return out
