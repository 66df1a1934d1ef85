"""Training: official loss and optimizer recipe, jitted NNX steps, the loop, checkpoints."""

from mhe_jax.train.checkpoint import Checkpointer as Checkpointer
from mhe_jax.train.loop import fit as fit, predict_features as predict_features
from mhe_jax.train.losses import official_cross_entropy as official_cross_entropy
from mhe_jax.train.optim import make_optimizer as make_optimizer, step_decay_schedule as step_decay_schedule
from mhe_jax.train.steps import (
    DataParallel as DataParallel,
    StepFns as StepFns,
    evaluate as evaluate,
    make_steps as make_steps,
)
