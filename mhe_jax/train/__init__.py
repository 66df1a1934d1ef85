"""Training: losses, the optimizer recipe, jitted NNX steps, a small ``fit``, checkpoints."""

# The extra check must run before the flax imports below (hence E402 for this file).
# ruff: noqa: E402
try:
    import flax  # noqa: F401  (the [models] extra)
except ModuleNotFoundError as _error:
    raise ImportError(
        "mhe_jax.train needs flax, which is not installed: "
        "install mhe_jax[models] (pip install 'mhe_jax[models]')", name="flax") from _error

from mhe_jax.train.batches import (
    epoch_batches as epoch_batches,
    process_batches as process_batches,
)
from mhe_jax.train.checkpoint import (
    Checkpointer as Checkpointer,
    CheckpointError as CheckpointError,
    CheckpointMismatchError as CheckpointMismatchError,
)
from mhe_jax.train.distributed import (
    DistributedError as DistributedError,
    ProcessSettings as ProcessSettings,
    initialize_distributed as initialize_distributed,
    process_settings as process_settings,
)
from mhe_jax.train.loggers import (
    JsonlLogger as JsonlLogger,
    ProgressBar as ProgressBar,
    energy_logger as energy_logger,
)
from mhe_jax.train.loop import Every as Every, fit as fit, predict_features as predict_features
from mhe_jax.train.losses import (
    a_softmax_logits as a_softmax_logits,
    a_softmax_loss as a_softmax_loss,
    normalized_softmax_loss as normalized_softmax_loss,
    official_cross_entropy as official_cross_entropy,
    sphereface_lambda as sphereface_lambda,
    sphereface_plus_loss as sphereface_plus_loss,
    sphereface_psi as sphereface_psi,
)
from mhe_jax.train.optim import (
    make_optimizer as make_optimizer,
    step_decay_schedule as step_decay_schedule,
)
from mhe_jax.train.steps import (
    DataParallel as DataParallel,
    StepFns as StepFns,
    accuracy_eval as accuracy_eval,
    evaluate as evaluate,
    make_steps as make_steps,
)
