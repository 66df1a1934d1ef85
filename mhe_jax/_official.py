r"""The official TensorFlow MHE code (github wy1iu/MHE, ``code/architecture.py``,
``_add_thomson_constraint``) as a preset of the core kernels, and its strengths."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from mhe_jax._kernels import make_kernel
from mhe_jax._neurons import as_neuron_matrix, normalize_columns
from mhe_jax._pairsum import mean_energy

Array = jax.Array

__all__ = ["OFFICIAL_STRENGTHS", "RELEASED_LOGS_STRENGTHS", "official_energy"]

#: λ of the official code per power: hidden layers and output layer (multiply official_energy).
OFFICIAL_STRENGTHS = {
    "hidden": {"0": 1.0, "1": 1.0, "2": 1.0, "a0": 1.0, "a1": 0.1, "a2": 0.1},
    "output": {"0": 10.0, "1": 10.0, "2": 10.0, "a0": 10.0, "a1": 1.0, "a2": 1.0},
}
#: λ of the paper's released training logs (github wy1iu/MHE, the CIFAR logs), in the same units
#: as :data:`OFFICIAL_STRENGTHS` (they multiply :func:`official_energy`), for the Euclidean powers
#: "0", "1", "2". The six full-space MHE logs record ``thom`` ≈ 1 × one layer's energy and
#: ``thomf`` ≈ 1 × the output energy, i.e. λ_h = 0.1 and λ_o = 1: a tenth of the committed code.
#: The half-space runs logged the code's 1 and 10. No angular run is in the logs.
RELEASED_LOGS_STRENGTHS = {
    "full_space": {"hidden": 0.1, "output": 1.0},
    "half_space": {"hidden": 1.0, "output": 10.0},
}
OFFICIAL_POWERS = ("0", "1", "2", "a0", "a1", "a2")
#: The official code's guard inside the norm: ``ŵ = w / sqrt(‖w‖² + 1e-4)``.
OFFICIAL_NORM_EPS = 1e-4


def official_energy(
    w: ArrayLike, power: str, *, half_space: bool = False, neuron_axis: int = -1
) -> Array:
    r"""Per-layer loss of the official TensorFlow MHE code, without its λ factor.

    As in ``_add_thomson_constraint``: ``ŵ = w / sqrt(‖w‖² + 1e-4)``; for ``power`` in
    ``"0", "1", "2"`` the pair term is ``−log(2 − 2c)`` / ``(2 − 2c)^{−s/2}``; for ``"a0", "a1",
    "a2"`` it is ``−log(r)`` / ``r^{−s}`` with ``r = arccos(c)/π + 1e-4``; the loss is the mean
    over the ``N(N−1)/2`` unordered pairs; half-space concatenates ``[W, −W]``.

    Relation to :func:`hyperspherical_energy` (which has no 1e-4 terms): ``"0"`` is twice the
    paper's log energy ``E_0``; ``"1"``, ``"2"`` are ``E_1``, ``E_2``; the angular ones use the
    angle divided by π. The official code multiplies "a1"/"a2" by 0.1 — that factor is part of
    λ here (see :data:`OFFICIAL_STRENGTHS`: hidden λ = 1, output λ = 10, a1/a2: 0.1 and 1).

    The 1e-4 inside the norm makes this loss (slightly) depend on the neurons' scale, as in the
    TF code: it is kept exact to that formula, and its gradient is the formula's (it has a
    radial component), unlike the scale-invariant energies. In float32 keep column norms
    within about 1e±18 (the squared norm is formed from the raw weights).

    Args:
      w: array with ``N`` neurons along ``neuron_axis`` (other axes flattened), shape ``(…, N)``.
      power: ``"0"``, ``"1"``, ``"2"``, ``"a0"``, ``"a1"`` or ``"a2"``.
      half_space: concatenate ``[W, −W]`` (2N neurons).
      neuron_axis: axis of ``w`` indexing neurons.

    Returns:
      A scalar in the compute dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import mhe_jax
      >>> w = jnp.array([[1.0, 0.0], [0.0, 1.0]])  # two orthogonal neurons: c = 0
      >>> round(float(mhe_jax.official_energy(w, "2")), 4)  # (2 − 2c)^{−1} with ‖ŵ‖² ≈ 1/(1 + 1e-4)
      0.5
      >>> round(float(mhe_jax.official_energy(w, "0")), 4)  # −log 2
      -0.6931
    """
    if power not in OFFICIAL_POWERS:
        raise ValueError(f"power must be one of {OFFICIAL_POWERS}, got {power!r}")
    W = as_neuron_matrix(w, neuron_axis)
    if half_space:
        W = jnp.concatenate([W, -W], axis=1)
    angular = power.startswith("a")
    s = float(power[-1])
    angle: dict[str, Any] = {"angle_scale": 1.0 / math.pi, "angle_offset": 1e-4} if angular else {}
    # eps = machine epsilon: the official formula up to rounding, finite for exact duplicates.
    eps = float(jnp.finfo(W.dtype).eps)
    kernel, params = make_kernel(
        "riesz", "angular" if angular else "euclidean", False, s, eps, W.dtype, **angle
    )
    Wn = normalize_columns(W, norm_eps=OFFICIAL_NORM_EPS)
    log_scale = 2.0 if power == "0" else 1.0  # −log(2 − 2c) = 2 log(1/z)
    return log_scale * mean_energy(kernel, params, Wn, W.shape[1])
