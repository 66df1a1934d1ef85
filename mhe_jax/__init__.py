"""mhe_jax: Minimum Hyperspherical Energy (Liu et al., NeurIPS 2018) for JAX, optax and Flax."""

import types as _types
import typing as _typing

from mhe_jax import _optional
from mhe_jax._baselines import (
    orthogonality_penalty as orthogonality_penalty,
    orthogonality_regularizer as orthogonality_regularizer,
    orthonormal_penalty as orthonormal_penalty,
    orthonormal_regularizer as orthonormal_regularizer,
)
from mhe_jax._calibration import uniform_reference_energy as uniform_reference_energy
from mhe_jax._collapse import CollapseStats as CollapseStats, collapse_stats as collapse_stats
from mhe_jax._comhe import (
    compressive_energy as compressive_energy,
    random_projections as random_projections,
)
from mhe_jax._diagnostics import (
    EnergyStats as EnergyStats,
    energy_stats as energy_stats,
    mean_abs_cosine as mean_abs_cosine,
    min_angle as min_angle,
)
from mhe_jax._energy import (
    gaussian_energy as gaussian_energy,
    hyperspherical_energy as hyperspherical_energy,
    output_energy as output_energy,
    uniformity_loss as uniformity_loss,
)
from mhe_jax._koleo import (
    koleo_energy as koleo_energy,
    koleo_loss as koleo_loss,
    koleo_regularizer as koleo_regularizer,
)
from mhe_jax._layouts import LAYOUTS as LAYOUTS, NeuronAxes as NeuronAxes
from mhe_jax._official import (
    OFFICIAL_STRENGTHS as OFFICIAL_STRENGTHS,
    RELEASED_LOGS_STRENGTHS as RELEASED_LOGS_STRENGTHS,
    official_energy as official_energy,
)
from mhe_jax._sharded import sharded_hyperspherical_energy as sharded_hyperspherical_energy
from mhe_jax._spec import EnergySpec as EnergySpec
from mhe_jax._transform import (
    EnergyStatsDegrees as EnergyStatsDegrees,
    RegularizerState as RegularizerState,
    energies_as_floats as energies_as_floats,
    layer_energies as layer_energies,
    mhe_penalty as mhe_penalty,
    mhe_regularizer as mhe_regularizer,
    penalty_transformation as penalty_transformation,
)
from mhe_jax._tree import (
    SelectedLayer as SelectedLayer,
    path_str as path_str,
    selected_layers as selected_layers,
)
from mhe_jax._version import __version__ as __version__

# Subpackages load on first attribute access (`mhe_jax.models.cnn9`), so `import mhe_jax` stays
# light (jax, optax, numpy); a missing [models] extra raises "install mhe_jax[models]".
if _typing.TYPE_CHECKING:
    from mhe_jax import (
        data as data,
        experiments as experiments,
        models as models,
        sphere as sphere,
        train as train,
    )


def __getattr__(name: str) -> _types.ModuleType:
    if name in _optional.SUBPACKAGES:
        return _optional.import_subpackage(name)
    raise AttributeError(f"module 'mhe_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_optional.SUBPACKAGES))
