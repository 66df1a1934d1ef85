"""The official optimizer recipe: weight decay → regularizer → SGD with momentum and step decay."""

from __future__ import annotations

from collections.abc import Sequence

import optax


def step_decay_schedule(
    base_lr: float, boundaries: Sequence[int], decay: float = 0.1, warmup_steps: int = 0
) -> optax.Schedule:
    """``base_lr``, multiplied by ``decay`` at each boundary; optional linear warm-up from 0.

    The official recipe: ``step_decay_schedule(0.1, (20000, 30000, 37500))``.
    """
    decayed = optax.piecewise_constant_schedule(base_lr, {int(b): decay for b in boundaries})
    if warmup_steps <= 0:
        return decayed
    warm = optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.join_schedules([warm, decayed], [warmup_steps])


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
