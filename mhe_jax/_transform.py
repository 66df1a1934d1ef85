r"""MHE as an optax gradient transformation, as a loss term, and as per-layer diagnostics.

For parameters θ with hidden layers ``H`` and output layers ``O`` (see :mod:`mhe_jax._tree`),

    R(θ) = λ_h · Σ_{l∈H} E(W_l) + λ_o · Σ_{l∈O} E_out(W_l),

where ``E`` is :func:`mhe_jax.hyperspherical_energy` of the layer's neurons (normalised columns,
mean over pairs, Eq. 4; half-space for hidden layers when asked) and ``E_out`` is the
full-space energy, or :func:`mhe_jax.output_energy` (Eq. 8) when the batch's ``labels`` are given.
:func:`mhe_regularizer` adds ``∇R(params)`` to the incoming updates, so
``optax.chain(mhe_regularizer(λ_h, λ_o), optax.sgd(lr))`` steps exactly like ``optax.sgd(lr)`` on
the gradient of ``loss + R``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mhe_jax import _calibration, _checks, _comhe, _energy, _tree

__all__ = [
    "RegularizerState",
    "mhe_regularizer",
    "mhe_penalty",
    "layer_energies",
    "penalty_transformation",
]

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]


class RegularizerState(NamedTuple):
    """State of the penalty transformations: the step count (drives schedules and sampling keys)."""

    count: jax.Array


def _value(strength, count):
    return strength(count) if callable(strength) else strength


def penalty_transformation(
    penalty: Callable[..., jax.Array],
    strengths: Sequence[ScalarOrSchedule | None],
    *,
    mask=None,
    output=None,
    neuron_axis=-1,
    seed=0,
    max_norm=None,
) -> optax.GradientTransformationExtraArgs:
    """Add ``∇ penalty(layers)`` to the updates; the shared engine of every regularizer here.

    ``penalty(weights, layers, strengths, key, **extra_args)`` receives the selected leaves (a
    list, aligned with ``layers``), the strengths evaluated at the current step, a PRNG key
    derived from ``seed`` and the step, and the extra arguments given to ``update``.
    ``max_norm`` clips the regularizer's own gradient (global norm) before it is added.
    """
    if max_norm is not None:
        _checks.check_nonnegative(max_norm, "max_norm")

    def init_fn(params):
        del params
        return RegularizerState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, **extra_args):
        leaves, treedef, layers = _tree.select_layers(
            params, mask=mask, output=output, neuron_axis=neuron_axis
        )
        values = [None if s is None else _value(s, state.count) for s in strengths]
        key = jax.random.fold_in(jax.random.key(seed), state.count)

        def total(weights):
            return penalty(weights, layers, values, key, **extra_args)

        grads = jax.grad(total)([leaves[layer.index] for layer in layers])
        if max_norm is not None:
            grads, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
        additions = {layer.index: g for layer, g in zip(layers, grads)}
        updates = _tree.add_to_leaves(updates, treedef.num_leaves, additions)
        return updates, RegularizerState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# MHE
# --------------------------------------------------------------------------------------------


def _half_space_for_hidden(half_space) -> bool:
    if half_space in ("all", "output"):
        raise ValueError(
            f"half_space={half_space!r}: half-space MHE is for hidden layers only; the output layer "
            "always gets full-space MHE (classifier neurons should cover the whole sphere, Sec. 3.4). "
            "Use half_space=True (or 'hidden')."
        )
    if half_space == "hidden":
        return True
    if not isinstance(half_space, bool):
        raise TypeError(f"half_space must be a bool or 'hidden', got {half_space!r}")
    return half_space


def _is_zero(x) -> bool:
    return _checks.is_concrete_number(x) and float(x) == 0.0


def _mhe_penalty_of_layers(
    weights, layers, strengths, key, *, s, distance, half_space, sample_size, eps, min_distance,
    calibrate=False, projection=None, labels=None, **unused_extra,
):
    hidden_strength, output_strength = strengths
    common = dict(s=s, distance=distance, eps=eps, min_distance=min_distance)
    hidden, out = [], []
    for w, layer in zip(weights, layers):
        axis = layer.neuron_axis
        n = w.shape[axis]
        d = w.size // n
        layer_key = jax.random.fold_in(key, layer.index)
        if layer.is_output:
            if output_strength is None:
                continue
            if labels is not None:
                e = _energy.output_energy(w, labels, neuron_axis=axis, **common)
            else:
                e = _energy.hyperspherical_energy(w, neuron_axis=axis, **common)
            half = False
        else:
            if _is_zero(hidden_strength):
                continue
            half = half_space
            if projection is not None and d > projection.get("dim", 40):
                e = _comhe.compressive_energy(w, layer_key, half_space=half, neuron_axis=axis,
                                              **projection, **common)
            else:
                k = sample_size if sample_size is not None and sample_size < n else None
                e = _energy.hyperspherical_energy(
                    w, half_space=half, neuron_axis=axis, sample_size=k,
                    key=layer_key if k is not None else None, **common,
                )
        if calibrate:
            e = e / _reference(n, d, s, distance, half)
        (out if layer.is_output else hidden).append(e)
    total = jnp.zeros((), jnp.float32)
    if hidden:
        total = total + hidden_strength * sum(hidden)
    if out:
        total = total + output_strength * sum(out)
    return total


def _reference(n, d, s, distance, half):
    if not _checks.is_concrete_number(s):
        raise ValueError("calibrate=True needs a concrete s (not a traced hyperparameter)")
    return _calibration.uniform_reference_energy(n, d, s=float(s), distance=distance, half_space=half)


def _mhe_options(hidden_strength, output_strength, s, distance, half_space, output, sample_size):
    _checks.check_distance(distance)
    _checks.check_nonnegative(s, "s")
    half = _half_space_for_hidden(half_space)
    if output_strength is not None and output is None:
        raise ValueError(
            "output_strength was given but output=None: name the output (classifier) layer, e.g. "
            "output='classifier/kernel' (or model.output_path)"
        )
    if hidden_strength is None:
        raise ValueError("hidden_strength is required (use 0.0 to regularize the output layer only)")
    if sample_size is not None and (
        not isinstance(sample_size, int) or isinstance(sample_size, bool) or sample_size < 2
    ):
        raise ValueError(f"sample_size must be an int >= 2 or None, got {sample_size!r}")
    return half


def mhe_regularizer(
    hidden_strength: ScalarOrSchedule,
    output_strength: ScalarOrSchedule | None = None,
    *,
    s=2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output=None,
    mask=None,
    neuron_axis=-1,
    sample_size: int | None = None,
    seed=0,
    eps=None,
    min_distance=None,
    calibrate: bool = False,
    projection: dict | None = None,
    max_norm=None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add the gradient of the MHE regularizer ``R`` (module docstring) to the updates.

    Args:
      hidden_strength: λ_h, a number or an optax schedule of the step count.
      output_strength: λ_o for the layers matched by ``output`` (None: output layer not
        regularized). Requires ``output``.
      s, distance: Riesz exponent (s = 0: log energy) and ``"euclidean"`` / ``"angular"``.
      half_space: half-space MHE on hidden layers (``True`` or ``"hidden"``); the output layer
        always gets full-space MHE (``"all"`` raises).
      output: the output (classifier) kernel: a regular expression matched against the
        ``/``-joined path or a ``/``-suffix of it (``"classifier/kernel"``), or a callable on the
        path string. It is removed from the hidden layers.
      mask: which leaves are layers, as in ``optax.masked`` (pytree of bools or a callable on
        params). Default: every leaf whose path ends in ``kernel`` with ndim ≥ 2.
      neuron_axis: axis of neurons in each layer (int, or callable ``(path, leaf) -> int``).
      sample_size: energy of a random subset of this many neurons per hidden layer (Sec. 3.6),
        drawn with keys from ``seed`` and the step count (reproducible).
      seed: seed of those keys.
      eps: singularity guard of the energies (see :func:`mhe_jax.hyperspherical_energy`).
      min_distance: bound each pair's force: ``f_s`` is continued linearly below this distance
        (energy unchanged above it; see :func:`mhe_jax.hyperspherical_energy`). The principled fix
        for low-dimensional layers (10 classifier neurons in R²) where s = 2 explodes.
      calibrate: divide each layer's energy by the expected energy of uniformly random neurons
        of the same shape (:func:`mhe_jax.uniform_reference_energy`), so one λ means the same in
        every layer (≈ λ at initialisation). Needs a concrete ``s < d − 1``.
      projection: CoMHE (:func:`mhe_jax.compressive_energy`) for hidden layers with more than
        ``dim`` inputs, e.g. ``{"projections": 20, "dim": 40, "kind": "gaussian"}``; fresh
        projections every step (keys from ``seed`` and the step).
      max_norm: clip the regularizer's own gradient to this global norm before adding it (the
        ``optax.clip_by_global_norm`` recipe applied to the MHE term alone).

    ``update(updates, state, params, labels=None)`` requires ``params``; with ``labels`` (the
    batch's integer labels, an optax extra argument) the output layer uses Eq. 8.

    Under ``optax.inject_hyperparams`` numbers become traced arrays (fine for the strengths,
    ``s``, ``seed`` and ``max_norm``); list the structural arguments as static:
    ``optax.inject_hyperparams(mhe_regularizer, static_args=("sample_size", "neuron_axis",
    "output", "mask"))``.
    """
    half = _mhe_options(hidden_strength, output_strength, s, distance, half_space, output, sample_size)

    def penalty(weights, layers, strengths, key, **extra):
        return _mhe_penalty_of_layers(
            weights, layers, strengths, key, s=s, distance=distance, half_space=half,
            sample_size=sample_size, eps=eps, min_distance=min_distance, calibrate=calibrate,
            projection=projection, **extra,
        )

    return penalty_transformation(
        penalty, (hidden_strength, output_strength), mask=mask, output=output,
        neuron_axis=neuron_axis, seed=seed, max_norm=max_norm,
    )


def mhe_penalty(
    params,
    hidden_strength,
    output_strength=None,
    *,
    s=2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output=None,
    mask=None,
    neuron_axis=-1,
    sample_size: int | None = None,
    key=None,
    labels=None,
    eps=None,
    min_distance=None,
    calibrate: bool = False,
    projection: dict | None = None,
) -> jax.Array:
    """The scalar ``R(params)`` of :func:`mhe_regularizer`, to add to a loss.

    ``jax.grad(mhe_penalty)`` equals what :func:`mhe_regularizer` adds to the updates (with the
    same ``key`` for ``sample_size``; the transformation derives it from ``seed`` and the step).
    """
    half = _mhe_options(hidden_strength, output_strength, s, distance, half_space, output, sample_size)
    if sample_size is not None and key is None:
        raise ValueError("sample_size requires key=")
    leaves, _, layers = _tree.select_layers(params, mask=mask, output=output, neuron_axis=neuron_axis)
    return _mhe_penalty_of_layers(
        [leaves[layer.index] for layer in layers], layers, (hidden_strength, output_strength),
        key if key is not None else jax.random.key(0), s=s, distance=distance, half_space=half,
        sample_size=sample_size, eps=eps, min_distance=min_distance, labels=labels,
        calibrate=calibrate, projection=projection,
    )


def layer_energies(
    params,
    *,
    s=2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output=None,
    mask=None,
    neuron_axis=-1,
    eps=None,
    calibrate: bool = False,
) -> dict[str, _energy.EnergyStats]:
    """``{path: EnergyStats(energy, min_angle, mean_abs_cosine)}`` for every selected layer.

    One Gram matrix per layer (jit it for repeated logging). Hidden layers use ``half_space``;
    output layers full space. ``min_angle`` is in radians. ``calibrate`` divides each energy by
    the uniform-random reference (see :func:`mhe_regularizer`).
    """
    half = _half_space_for_hidden(half_space)
    leaves, _, layers = _tree.select_layers(params, mask=mask, output=output, neuron_axis=neuron_axis)
    out = {}
    for layer in layers:
        w = leaves[layer.index]
        layer_half = half and not layer.is_output
        st = _energy.energy_stats(w, s=s, distance=distance, half_space=layer_half,
                                  neuron_axis=layer.neuron_axis, eps=eps)
        if calibrate:
            n = w.shape[layer.neuron_axis]
            st = st._replace(energy=st.energy / _reference(n, w.size // n, s, distance, layer_half))
        out[layer.path] = st
    return out

