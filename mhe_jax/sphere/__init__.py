"""Point configurations on the sphere: Thomson / Riesz / Whyte (log) energy minima, Tammes.

* :func:`minimize_energy` — minimum Riesz ``s``-energy (``s = 1``: Thomson; ``s = 0``: log
  energy, Whyte's problem) for the euclidean or angular distance, any dimension;
* :func:`basin_hopping` — putative global minima of the same energies (basin-hopping over the
  local minima, several chains at once);
* :func:`fibonacci_points` — the Fibonacci spiral on ``S²`` (a low-discrepancy start);
* :func:`tammes` — maximise the minimum angle (Tammes problem);
* :func:`prototypes` — a fixed classifier: the simplex ETF, or a minimum-energy configuration.
"""

from mhe_jax.sphere._basin import (
    basin_hopping as basin_hopping,
    fibonacci_points as fibonacci_points,
)
from mhe_jax.sphere._prototypes import prototypes as prototypes
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
    "basin_hopping",
    "fibonacci_points",
    "minimize_energy",
    "physics_energy",
    "prototypes",
    "tammes",
]
