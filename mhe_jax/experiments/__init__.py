"""Experiments: named configs for the paper's tables, a runner, reports, the CLI and the
notebooks' setup."""

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
from mhe_jax.experiments.notebook import (
    NotebookEnv as NotebookEnv,
    notebook_setup as notebook_setup,
    smoke_mode as smoke_mode,
)
