"""The official optimizer recipe: weight decay → regularizer → SGD with momentum and step decay."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence

import jax.numpy as jnp
import optax


def step_decay_schedule(
    base_lr: float, boundaries: Sequence[int], decay: float = 0.1, warmup_steps: int = 0
) -> optax.Schedule:
    """``base_lr``, multiplied by ``decay`` at each boundary; optional linear warm-up from 0.

    Every boundary counts from step 0 of training, warm-up or not: the rate applied at step
    ``t`` (the update that makes ``optimizer.step`` go from ``t`` to ``t + 1``) is

    * ``base_lr · t / warmup_steps`` for ``t < warmup_steps``;
    * ``base_lr · decay^k`` after that, ``k`` the number of boundaries ``b`` with ``b <= t``
      (optax's ``piecewise_constant_schedule`` convention: step ``b`` is the first decayed
      one).

    ``optax.join_schedules`` restarts the count at each join, so the decayed part is built with
    its boundaries shifted by ``warmup_steps``; the applied updates at ``b − 1``, ``b``, ``b + 1``
    are tested with and without warm-up (``tests/test_train.py``). The count is cast to int32,
    so a uint32 counter (``nnx.Optimizer.step``) gives the same rates as optax's own int32
    count: ``piecewise_constant_schedule`` takes ``sign(b − count)``, which wraps for an
    unsigned count.

    The official recipe: ``step_decay_schedule(0.1, (20000, 30000, 37500))``.

    Raises:
        ValueError: ``boundaries`` not increasing ints, ``warmup_steps`` negative, or a
            boundary inside the warm-up (``b <= warmup_steps``).

    Examples:
        >>> lr = step_decay_schedule(0.1, (300, 400), warmup_steps=100)
        >>> [round(float(lr(t)), 6) for t in (0, 50, 100, 299, 300, 400)]
        [0.0, 0.05, 0.1, 0.1, 0.01, 0.001]
    """
    try:
        bounds = tuple(operator.index(b) for b in boundaries)
        warmup = operator.index(warmup_steps)
    except TypeError:
        raise ValueError(f"boundaries must be ints and warmup_steps an int, got "
                         f"boundaries={boundaries!r}, warmup_steps={warmup_steps!r}") from None
    if any(a >= b for a, b in itertools.pairwise(bounds)) or any(b < 0 for b in bounds):
        raise ValueError(f"boundaries must be increasing ints >= 0, got {boundaries!r}")
    if warmup < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps!r}")
    if warmup and bounds and bounds[0] <= warmup:
        raise ValueError(f"boundaries must lie after the warm-up (> warmup_steps={warmup}), "
                         f"got {boundaries!r}")
    decayed = optax.piecewise_constant_schedule(base_lr, {b - warmup: decay for b in bounds})
    schedule = decayed if not warmup else optax.join_schedules(
        [optax.linear_schedule(0.0, base_lr, warmup), decayed], [warmup])

    def step_decay(count):
        return schedule(jnp.asarray(count).astype(jnp.int32))

    return step_decay


def make_optimizer(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    regularizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(add_decayed_weights(wd), regularizer, sgd(lr, momentum))``.

    Weight decay applies to every parameter, BatchNorm included, as in the official code.
    """
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    if regularizer is not None:
        parts.append(regularizer)
    parts.append(optax.sgd(learning_rate, momentum=momentum))
    return optax.chain(*parts)
