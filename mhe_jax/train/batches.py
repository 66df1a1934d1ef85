"""The training batch stream of a run: a fixed order per ``(seed, epoch)``, resumable at a step."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

from mhe_jax.data import batches, steps_per_epoch

__all__ = ["epoch_batches"]


def epoch_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int,
                  start_step: int = 0, put: Callable | None = None) -> Iterator[tuple]:
    """Endless ``(images, labels)`` batches, reshuffled each epoch, from step ``start_step`` on.

    The order depends only on ``(seed, epoch)`` (:func:`mhe_jax.data.batches`, incomplete last
    batches dropped), so the stream started at step k equals the full stream with k batches
    skipped: resuming is bit-exact. ``put`` (e.g. :class:`mhe_jax.train.DataParallel`) places
    each array on the devices.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    spe = steps_per_epoch(len(x), batch_size)
    stream = batches(x, y, batch_size, seed, epochs=None, start_epoch=start_step // spe)
    stream = itertools.islice(stream, start_step % spe, None)
    if put is None:
        return stream
    return ((put(xb), put(yb)) for xb, yb in stream)
