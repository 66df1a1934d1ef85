"""mhe_jax: Minimum Hyperspherical Energy (Liu et al., NeurIPS 2018) for JAX, optax and Flax."""

from mhe_jax._energy import (
    OFFICIAL_STRENGTHS as OFFICIAL_STRENGTHS,
    EnergyStats as EnergyStats,
    energy_stats as energy_stats,
    gaussian_energy as gaussian_energy,
    hyperspherical_energy as hyperspherical_energy,
    mean_abs_cosine as mean_abs_cosine,
    min_angle as min_angle,
    official_energy as official_energy,
    output_energy as output_energy,
)

__version__ = "0.1.0"
