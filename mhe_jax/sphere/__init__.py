"""Point configurations on the sphere: Thomson / Riesz / Whyte (log) energy minima, Tammes.

* :func:`minimize_energy` — minimum Riesz ``s``-energy (``s = 1``: Thomson; ``s = 0``: log
  energy, Whyte's problem) for the euclidean or angular distance, any dimension;
* :func:`tammes` — maximise the minimum angle (Tammes problem).
"""

from mhe_jax.sphere._solver import (
    STATUS_NAMES as STATUS_NAMES,
    EnergyResult as EnergyResult,
    minimize_energy as minimize_energy,
    physics_energy as physics_energy,
)
from mhe_jax.sphere._tammes import TammesResult as TammesResult, tammes as tammes

__all__ = [
    "EnergyResult",
    "STATUS_NAMES",
    "TammesResult",
    "minimize_energy",
    "physics_energy",
    "tammes",
]
