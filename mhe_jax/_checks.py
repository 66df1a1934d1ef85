"""Argument validation shared by every public entry point (clear errors that name the argument)."""

from __future__ import annotations

import numbers

import jax
import jax.core  # jax.core.Tracer (so type checkers know the submodule)
import jax.numpy as jnp
import numpy as np

DISTANCES = ("euclidean", "angular")


def check_distance(distance: str) -> str:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    return distance


def is_concrete_number(x) -> bool:
    """True for Python / NumPy scalars (not JAX tracers): values we may inspect at trace time."""
    if isinstance(x, numbers.Real):
        return True  # a Python or NumPy real scalar: ndim 0
    return isinstance(x, (np.ndarray, np.generic)) and np.ndim(x) == 0


def check_nonnegative(value, name: str):
    """Raise if a concrete ``value`` is negative or not finite; traced values pass unchecked."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a real number, got a bool")
    if is_concrete_number(value):
        v = float(value)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite real >= 0, got {value!r}")
    elif isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
        v = float(value)
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite real >= 0, got {v!r}")
    elif not isinstance(value, jax.Array):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return value


def check_weights(w, name: str = "w") -> jax.Array:
    """Array of floating dtype with ndim >= 2."""
    if not hasattr(w, "dtype") or not hasattr(w, "ndim"):
        w = jnp.asarray(w)
    if w.ndim < 2:
        raise ValueError(
            f"{name} must have ndim >= 2 (neurons along one axis, their vectors along the others); "
            f"got shape {tuple(w.shape)}"
        )
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {w.dtype}")
    return w


def check_axis(axis, ndim: int, name: str = "neuron_axis") -> int:
    if isinstance(axis, np.ndarray) and axis.ndim == 0:
        axis = axis[()]  # a 0-d NumPy array: its scalar
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with ndim={ndim}")
    return int(axis) % ndim


def compute_dtype(dtype) -> jnp.dtype:
    """Energies accumulate in at least float32 (bf16 / f16 inputs are upcast)."""
    return jnp.promote_types(dtype, jnp.float32)
