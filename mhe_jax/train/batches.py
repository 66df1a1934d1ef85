"""The training batch stream of a run: a fixed order per ``(seed, epoch)``, resumable at a step,
gathered on the device when a placement is given."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mhe_jax.data import batches, steps_per_epoch

__all__ = ["epoch_batches", "process_batches"]


def epoch_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, put: Callable | None = None) -> Iterator[tuple]:
    """Endless ``(images, labels)`` batches, reshuffled each epoch, from step ``start_step`` on.

    The order depends only on ``(seed, epoch)`` (:func:`mhe_jax.data.batches`, incomplete last
    batches dropped), so the stream started at step k equals the full stream with k batches
    skipped: resuming is bit-exact.

    Without ``put`` the batches are host NumPy arrays. With ``put`` they are gathered on the
    device and no array crosses from the host per step: ``x`` and ``y`` are placed on the
    device(s) once, each epoch's order (the ``(steps_per_epoch, batch_size)`` indices that
    :func:`mhe_jax.data.batches` would use) is uploaded once per epoch, and each step is one
    jitted take ``(x[order[i]], y[order[i]])`` with the position ``i`` kept on the device. A
    :class:`mhe_jax.train.DataParallel` replicates ``x``, ``y`` and the order on its mesh and
    shards each batch along its ``data`` axis; any other ``put`` (e.g. ``jax.device_put``)
    is applied to ``x``, ``y`` and the order, so the batches are committed to a device only
    if ``put`` commits (a step whose model state is uncommitted then compiles once, not
    twice). The batches are exactly the host path's: the same values in the same order
    (``y`` in JAX's integer width). The training arrays must fit in each device's memory
    (CIFAR-10: 150 MB of uint8 images); for larger sets leave ``put`` out and place each host
    batch yourself.

    In a multi-process run (``put`` a :class:`mhe_jax.train.DataParallel` over the devices of
    every process, ``DataParallel(jax.devices())``), each process takes from host memory only
    its own rows of each global batch (:func:`process_batches` with
    ``put.process_rows(batch_size)``) and the batch is assembled as one global array sharded
    along ``data`` (``jax.make_array_from_process_local_data``): the global batches are those
    of one process, in the same order, and no process uploads another's rows.

    Examples:
        >>> import numpy as np
        >>> x, y = np.arange(10, dtype=np.uint8)[:, None], np.arange(10)
        >>> host = epoch_batches(x, y, batch_size=4, seed=0)
        >>> dev = epoch_batches(x, y, batch_size=4, seed=0, put=jax.device_put, start_step=1)
        >>> _ = next(host)
        >>> all(np.array_equal(a, b) for a, b in zip(next(host), next(dev), strict=True))
        True
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    batches(x, y, batch_size, seed, epochs=None)  # checks x, y, batch_size and seed first
    if put is not None and getattr(put, "spans_processes", False):
        return _global_batches(np.asarray(x), np.asarray(y), batch_size, seed, start_step, put)
    if put is not None:
        return _device_batches(np.asarray(x), np.asarray(y), batch_size, seed, start_step, put)
    spe = steps_per_epoch(len(x), batch_size)
    stream = batches(x, y, batch_size, seed, epochs=None, start_epoch=start_step // spe)
    return itertools.islice(stream, start_step % spe, None)


def process_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int,
                    rows: np.ndarray | slice, start_step: int = 0) -> Iterator[tuple]:
    """This process's share of every batch of :func:`epoch_batches`: rows ``rows`` of each.

    The stream of global batches is :func:`epoch_batches`'s for the same ``x``, ``y``,
    ``batch_size`` and ``seed`` (one order per ``(seed, epoch)``, resumable at
    ``start_step``); each item is ``(x[idx], y[idx])`` for the indices ``idx`` of the global
    batch's rows ``rows`` only, so a process gathers (and uploads) its own examples and no
    other's. Given disjoint ``rows`` that together cover ``range(batch_size)`` (e.g. each
    process's ``DataParallel.process_rows(batch_size)``), the processes' shares are disjoint
    and together are the global batch.

    Args:
      x: the training images, every process the same.
      y: their labels.
      batch_size: the global batch size.
      seed: the shuffling seed (see :func:`mhe_jax.data.batches`).
      rows: the rows of each global batch to take, indices into ``range(batch_size)`` or a
        slice of it.
      start_step: the first step's batch (resuming).

    Returns:
      An endless iterator of host ``(images, labels)`` NumPy pairs.

    Examples:
        Two processes' halves of each batch are the single-process batch:

        >>> import numpy as np
        >>> x, y = np.arange(10, dtype=np.uint8)[:, None], np.arange(10)
        >>> whole = epoch_batches(x, y, batch_size=4, seed=0)
        >>> halves = [process_batches(x, y, batch_size=4, seed=0, rows=r)
        ...           for r in (slice(0, 2), slice(2, 4))]
        >>> for _ in range(5):  # past the end of the first epoch
        ...     xb, yb = next(whole)
        ...     (x0, y0), (x1, y1) = next(halves[0]), next(halves[1])
        ...     assert np.array_equal(np.concatenate([y0, y1]), yb)
        >>> sorted(np.concatenate([y0, y1])) == sorted(yb), len(y0)
        (True, 2)
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    batches(x, y, batch_size, seed, epochs=None)  # checks x, y, batch_size and seed first
    index = np.arange(batch_size)[rows]
    if index.ndim != 1 or len(np.unique(index)) != len(index):
        raise ValueError(f"rows must select distinct rows of a batch of {batch_size}, got "
                         f"{rows!r}")
    x, y = np.asarray(x), np.asarray(y)
    spe = steps_per_epoch(len(x), batch_size)
    order = np.arange(len(x))
    orders = batches(order, order, batch_size, seed, epochs=None, start_epoch=start_step // spe)
    return ((x[idx[index]], y[idx[index]])
            for idx, _ in itertools.islice(orders, start_step % spe, None))


def _global_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: Any,
                    start_step: int, put: Any) -> Iterator[tuple]:
    """Every process its rows of each batch, assembled into global arrays on ``put``'s mesh."""
    rows = put.process_rows(batch_size)  # ValueError unless divisible by the devices
    local = process_batches(x, y, batch_size=batch_size, seed=seed, rows=rows,
                            start_step=start_step)
    y_dtype = jax.dtypes.canonicalize_dtype(y.dtype)  # JAX's integer width, as on one device
    return ((put.from_process_rows(xb, batch_size),
             put.from_process_rows(yb.astype(y_dtype), batch_size)) for xb, yb in local)


def _gather(x, y, order, i):
    idx = jax.lax.dynamic_index_in_dim(order, i, keepdims=False)
    return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0), i + 1


def _device_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: Any, start_step: int,
                    put: Callable) -> Iterator[tuple]:
    n = len(x)
    spe = steps_per_epoch(n, batch_size)
    # The same orders as the host path, computed by the same code: batches of the indices.
    index = np.arange(n, dtype=np.int32)
    orders = batches(index, index, batch_size, seed, epochs=None, start_epoch=start_step // spe)
    replicated = getattr(put, "replicated", None)  # a DataParallel: replicate, shard the batch
    if replicated is not None:
        if batch_size % put.num_devices:
            raise ValueError(f"batch_size {batch_size} is not divisible by the "
                             f"{put.num_devices} devices of put")
        x_dev, y_dev = jax.device_put((x, y), replicated)
        gather = jax.jit(_gather, out_shardings=(put.batch, put.batch, replicated))

        def upload(a):
            return jax.device_put(a, replicated)
    else:
        x_dev, y_dev = put(x), put(y)
        devices = getattr(getattr(x_dev, "sharding", None), "device_set", set())
        if len(devices) != 1:
            raise ValueError("put must place an array on one device (e.g. jax.device_put) or "
                             f"be a mhe_jax.train.DataParallel; put(x) gave {type(x_dev)} on "
                             f"{len(devices)} devices")
        gather = jax.jit(_gather)
        upload = put  # the same placement (committed to a device or not) as x and y
    position = start_step % spe
    while True:
        order = np.stack([idx for idx, _ in itertools.islice(orders, spe)])  # (spe, batch)
        order_dev, i = upload((order, np.int32(position)))
        for _ in range(position, spe):
            xb, yb, i = gather(x_dev, y_dev, order_dev, i)
            yield xb, yb
        position = 0
