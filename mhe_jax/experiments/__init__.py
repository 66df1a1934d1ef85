"""Experiments: named configs for the paper's tables, a runner, reports, and the CLI."""

from mhe_jax.experiments.configs import (
    CONFIGS as CONFIGS,
    ConfigError as ConfigError,
    DataConfig as DataConfig,
    ExperimentConfig as ExperimentConfig,
    LoggingConfig as LoggingConfig,
    ModelConfig as ModelConfig,
    OptimConfig as OptimConfig,
    RegularizerConfig as RegularizerConfig,
    apply_overrides as apply_overrides,
    get_config as get_config,
)
