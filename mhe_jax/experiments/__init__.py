"""Experiments: named configs for the paper's tables, a runner, reports, and the CLI."""

from mhe_jax.experiments.configs import (
    CONFIGS as CONFIGS,
    ExperimentConfig as ExperimentConfig,
    apply_overrides as apply_overrides,
    get_config as get_config,
)
