r"""MHE as an optax gradient transformation, as a loss term, and as per-layer diagnostics.

For parameters θ with hidden layers ``H`` and output layers ``O`` (chosen by ``layout``,
``mask`` and ``output``, see :mod:`mhe_jax._layouts`), each layer ``l`` seen as its neuron
matrix ``W_l`` of shape ``(d_l, N_l)`` (``N_l`` neurons, each a vector in ``R^{d_l}``),

    R(θ) = λ_h · Σ_{l∈H} E(W_l) + λ_o · Σ_{l∈O} E_out(W_l),

where ``E`` is :func:`mhe_jax.hyperspherical_energy` of the layer's neurons (normalised columns,
mean over pairs, Eq. 4; half-space for hidden layers when asked) and ``E_out`` is the
full-space energy, or :func:`mhe_jax.output_energy` (Eq. 8) when the batch's ``labels`` are given.
:func:`mhe_regularizer` adds ``∇R(params)`` to the incoming updates, so
``optax.chain(mhe_regularizer(λ_h, λ_o), optax.sgd(lr))`` steps exactly like ``optax.sgd(lr)`` on
the gradient of ``loss + R``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from mhe_jax import _checks, _energy, _layouts, _sharded, _tree
from mhe_jax._diagnostics import EnergyStats, energy_stats
from mhe_jax._pairenergy import check_pairs_given_groups
from mhe_jax._spec import EnergySpec, resolve_spec

__all__ = [
    "RegularizerState",
    "mhe_regularizer",
    "mhe_penalty",
    "layer_energies",
    "energies_as_floats",
    "EnergyStatsDegrees",
    "penalty_transformation",
]

ScalarOrSchedule = float | jax.Array | Callable[[jax.Array], jax.Array]
#: ``penalty(matrices, layers, count, key, **extra_args) -> scalar``; ``matrices[i]`` is the
#: ``(d, N)`` neuron matrix of ``layers[i]``.
LayerPenalty = Callable[..., jax.Array]


#: Prefix of the strengths' keys in :class:`RegularizerState`.
_LAST = "last_"


class RegularizerState(NamedTuple):
    """State of the penalty transformations.

    ``count``: the step count (drives schedules and sampling keys). ``strengths``: the strengths
    of the latest update (at ``init``: those the first update will use), keyed ``"last_"`` + the
    argument's name; each is also an attribute under the argument's name,
    ``state.hidden_strength``, ``state.output_strength`` (None when off) or ``state.strength``
    for the baselines. Inside a chain, ``optax.tree_utils.tree_get(opt_state,
    "last_hidden_strength")`` finds it. The prefix keeps the keys apart from the hyperparameters
    of ``optax.inject_hyperparams``, so ``tree_get(opt_state, "hidden_strength")`` there finds
    the one injected value (not two).
    """

    count: jax.Array
    strengths: Mapping[str, jax.Array | None] | None = None

    def __getattr__(self, name: str):
        strengths = tuple.__getitem__(self, 1)
        for key in (_LAST + name, name):
            if strengths is not None and key in strengths:
                return strengths[key]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")



def check_strength(value, name: str, *, optional: bool = False):
    """A strength is a concrete real ≥ 0 (or a traced scalar) or a schedule ``count -> value``."""
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} is required (use 0.0 to switch it off)")
    if callable(value):
        return value
    try:
        return _checks.check_nonnegative(value, name)
    except TypeError as e:
        raise TypeError(f"{e} (a strength is a number >= 0 or a schedule count -> number)") from e


def _value(strength: ScalarOrSchedule, count: Any) -> Any:
    """The strength at step ``count`` (a number or a traced scalar)."""
    return strength(count) if callable(strength) else strength


def _structural(value, name: str, hint: str):
    if isinstance(value, jax.Array):
        raise TypeError(
            f"{name} must be a Python value, got an array (optax.inject_hyperparams turns ints "
            f"into arrays): {hint}, or list {name!r} in static_args"
        )
    return value


def _check_seed(seed):
    is_int_array = (isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jnp.integer)
                    and seed.ndim == 0)
    if isinstance(seed, bool) or not (isinstance(seed, int) or is_int_array):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return seed


def penalty_transformation(
    penalty: LayerPenalty,
    *,
    strengths: Callable[[jax.Array], Mapping[str, Any]] | None = None,
    mask: _tree.Mask = None,
    output: _tree.PathPattern | None = None,
    neuron_axis: _tree.NeuronAxis = None,
    layout: str = "flax",
    seed: int | jax.Array = 0,
    max_norm: ArrayLike | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Add ``∇ penalty(layers)`` to the updates; the shared engine of every regularizer here.

    At each step the layers are selected from ``params`` (as :func:`mhe_jax.selected_layers`
    does, with ``mask``, ``output``, ``neuron_axis``, ``layout``) and ``penalty(matrices, layers,
    count, key, **extra_args)`` is differentiated with respect to them: ``matrices[i]`` is the
    ``(d, N)`` neuron matrix of ``layers[i]``, ``count`` the step count (the penalty evaluates
    its own schedules with it), ``key`` a PRNG key from ``seed`` and the count, and
    ``extra_args`` those given to ``update`` (e.g. ``labels``). ``strengths(count)`` (optional)
    returns the named strengths recorded in the state. ``max_norm`` clips the regularizer's own
    gradient (global norm) before it is added. ``init(params)`` checks the layer selection.
    """
    _layouts.check_layout(layout)
    _check_seed(seed)
    _structural(neuron_axis, "neuron_axis", "give it as a tuple, e.g. (0,), or a NeuronAxes")
    if max_norm is not None:
        _checks.check_nonnegative(max_norm, "max_norm")
    select: dict[str, Any] = dict(mask=mask, output=output, neuron_axis=neuron_axis,
                                  layout=layout)

    def report(count):
        if strengths is None:
            return None
        return {_LAST + k: None if v is None else jnp.asarray(v, jnp.float32)
                for k, v in strengths(count).items()}

    def init_fn(params):
        leaves, _, layers = _tree.select_layers(params, warn=True, **select)
        check_layers = getattr(penalty, "check_layers", None)
        if check_layers is not None:  # shape-only checks, raised here rather than at update
            check_layers([(layer, layer.matrix_shape(leaves[layer.index])) for layer in layers])
        count = jnp.zeros([], jnp.int32)
        return RegularizerState(count=count, strengths=report(count))

    def update_fn(updates, state, params=None, **extra_args):
        leaves, treedef, layers = _tree.select_layers(params, **select)
        key = jax.random.fold_in(jax.random.key(seed), state.count)

        def total(weights):
            matrices = [layer.matrix(w) for layer, w in zip(layers, weights, strict=True)]
            return penalty(matrices, layers, state.count, key, **extra_args)

        grads = jax.grad(total)([leaves[layer.index] for layer in layers])
        if max_norm is not None:
            clipped, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
            grads = cast(list[jax.Array], clipped)  # same structure: one array per layer
        additions = {layer.index: g for layer, g in zip(layers, grads, strict=True)}
        updates = _tree.add_to_leaves(updates, treedef, additions)
        count = cast(jax.Array, optax.safe_increment(state.count))
        new_state = RegularizerState(count=count, strengths=report(state.count))
        return updates, new_state

    # optax types a state as a pytree of arrays; RegularizerState holds None for a strength
    # that is off (as optax's own states hold None leaves), which its OptState alias leaves out.
    return optax.GradientTransformationExtraArgs(
        init_fn, update_fn  # pyright: ignore[reportArgumentType]
    )


# --------------------------------------------------------------------------------------------
# MHE
# --------------------------------------------------------------------------------------------


def _half_space_for_hidden(half_space) -> bool:
    if half_space in ("all", "output"):
        raise ValueError(
            f"half_space={half_space!r}: half-space MHE is for hidden layers only; the output "
            "layer always gets full-space MHE (classifier neurons should cover the whole sphere, "
            "Sec. 3.4). "
            "Use half_space=True (or 'hidden')."
        )
    if half_space == "hidden":
        return True
    if not isinstance(half_space, bool):
        raise TypeError(f"half_space must be a bool or 'hidden', got {half_space!r}")
    return half_space


def _is_zero(x) -> bool:
    return _checks.is_concrete_number(x) and float(x) == 0.0


_SPEC_DEFAULTS = dict(s=2.0, distance="euclidean", half_space=False, eps=None, min_distance=None,
                      sample_size=None, projection=None, calibrate=False, potential=None,
                      groups=None, pairs="within")


def layer_groups(spec: EnergySpec, layer) -> Any:
    """The group ids of a layer's neurons for ``spec.groups`` (None: ungrouped). ``"heads"``:
    the heads of a layer whose neurons lie on several axes (attention q/k/v); a layer with one
    neuron axis, and every output layer, is not grouped (:func:`mhe_jax._layouts.head_groups`)."""
    if spec.groups is None or layer.is_output:
        return None
    return _layouts.head_groups(layer.shape, layer.neuron_axes)


@dataclasses.dataclass(frozen=True)
class _MHEPenalty:
    """R of the module docstring on the selected layers' ``(d, N)`` neuron matrices.

    ``spec`` holds the energy options (its ``half_space`` is that of the hidden layers); the
    strengths are numbers or schedules, evaluated here at the step count.
    """

    hidden_strength: Any
    output_strength: Any
    spec: EnergySpec
    mesh_axis: str | None = None

    def strengths(self, count) -> dict:
        lam_o = self.output_strength
        return {"hidden_strength": _value(self.hidden_strength, count),
                "output_strength": None if lam_o is None else _value(lam_o, count)}

    def output_spec(self) -> EnergySpec:
        return self.spec.replace(half_space=False, sample_size=None, projection=None, groups=None)

    def hidden_spec(self, d: int, n: int) -> EnergySpec:
        """The hidden-layer spec for a ``(d, N)`` layer: CoMHE only above ``projection.dim``
        inputs (then no sampling), sampling only for ``sample_size < N``; the grouping preset
        is resolved per layer (:func:`layer_groups`), so the spec carries none."""
        spec = self.spec
        if spec.projection is not None and d > spec.projection.dim:
            return spec.replace(sample_size=None, groups=None)
        k = spec.sample_size if spec.sample_size is not None and spec.sample_size < n else None
        return spec.replace(projection=None, sample_size=k, groups=None)

    def check_layers(self, shapes: list[tuple[_tree.Layer, tuple[int, int]]]) -> None:
        """At ``init``: each layer's calibration reference exists (``s < d − 1``), so an
        impossible ``calibrate=True`` names the layer before any step, not at the first update."""
        if not self.spec.calibrate:
            return
        for layer, (d, n) in shapes:
            if layer.is_output and self.output_strength is None:
                continue
            if not layer.is_output and _is_zero(self.hidden_strength):
                continue
            spec = self.output_spec() if layer.is_output else self.hidden_spec(d, n)
            try:
                _energy.calibration_reference(spec, n, d)
            except ValueError as e:
                raise ValueError(f"calibrate=True cannot calibrate layer {layer.path!r} "
                                 f"(d={d} inputs, N={n} neurons): {e}") from e

    def __call__(self, matrices, layers, count, key, labels=None, **unused_extra) -> jax.Array:
        lam_h = _value(self.hidden_strength, count)
        lam_o = None if self.output_strength is None else _value(self.output_strength, count)
        hidden, out = [], []
        for W, layer in zip(matrices, layers, strict=True):
            if layer.is_output:
                if lam_o is None:
                    continue
                if labels is not None:
                    out.append(_energy.output_energy(W, labels, spec=self.output_spec()))
                else:
                    out.append(_sharded.layer_energy(W, self.output_spec(), self.mesh_axis,
                                                     None, f"layer {layer.path!r}"))
            elif not _is_zero(lam_h):
                hidden.append(_sharded.layer_energy(
                    W, self.hidden_spec(*W.shape), self.mesh_axis,
                    jax.random.fold_in(key, layer.index), f"layer {layer.path!r}",
                    groups=layer_groups(self.spec, layer)))
        total = jnp.zeros((), jnp.float32)
        if hidden:
            total = total + lam_h * sum(hidden)
        if out and lam_o is not None:  # out is empty when lam_o is None
            total = total + lam_o * sum(out)
        return total


def _energy_spec(spec, **given) -> EnergySpec:
    """The one validated spec of a call: ``spec=`` or the keyword options (not both)."""
    if spec is not None and given["half_space"] == "hidden":
        given["half_space"] = True
    if spec is None:
        given["half_space"] = _half_space_for_hidden(given["half_space"])
    return resolve_spec(spec, _SPEC_DEFAULTS, given)


def _mhe(hidden_strength, output_strength, output, spec: EnergySpec,
         mesh_axis: str | None = None) -> _MHEPenalty:
    _sharded.check_mesh_axis(mesh_axis)
    check_strength(hidden_strength, "hidden_strength")
    check_strength(output_strength, "output_strength", optional=True)
    if output_strength is not None and output is None:
        raise ValueError(
            "output_strength was given but output=None: name the output (classifier) layer, e.g. "
            "output='head' (its module path) or output='classifier/kernel' (or model.output_path)"
        )
    if spec.kernel != "riesz":
        raise ValueError("the MHE regularizer uses the Riesz/log kernel: spec.kernel='riesz'")
    check_pairs_given_groups(spec.pairs, spec.groups)
    if spec.half_space and output is None and not _is_zero(hidden_strength):
        warnings.warn(
            "half_space=True with output=None: every selected layer is a hidden layer, so the "
            "last (classifier) layer gets half-space MHE too. Name it with output= (e.g. "
            "output='head') to give it full-space MHE, as in the paper (Sec. 3.4)",
            UserWarning, stacklevel=3,
        )
    return _MHEPenalty(hidden_strength, output_strength, spec, mesh_axis)


def _replicated_over(leaf, axis: str) -> bool:
    over = _sharded.sharded_over(leaf)
    return over is not None and axis not in over


def _check_mesh_axis_at_init(penalty: _MHEPenalty, params, select: dict) -> None:
    """``init``'s checks of the layers' meshes and shardings against ``mesh_axis`` (see
    :func:`mhe_regularizer`). With ``mesh_axis``: a layer on a mesh without that axis (or with
    it ``Explicit``) raises, and so does a concrete tiled-path layer replicated over it (the
    ring would return its update sharded along the neurons). Without it: a concrete tiled-path
    layer sharded along its neurons warns (its energy would all-gather it)."""
    leaves, _, layers = _tree.select_layers(params, **select)
    axis = penalty.mesh_axis
    for layer in layers:
        leaf = leaves[layer.index]
        where = f"layer {layer.path!r}"
        mesh = _sharded.ring_mesh(leaf, axis, where) if axis is not None else None
        if (penalty.output_strength is None if layer.is_output
                else _is_zero(penalty.hidden_strength)):
            continue  # not regularized
        n = math.prod(leaf.shape[a] for a in layer.neuron_axes)
        d = math.prod(leaf.shape) // max(n, 1)
        spec = penalty.output_spec() if layer.is_output else penalty.hidden_spec(d, n)
        if not _sharded.on_ring(spec, n):
            continue
        if axis is None:
            along = _sharded.sharded_over(leaf, layer.neuron_axes)
            if along:
                warnings.warn(
                    f"{where} ({n} neurons, tiled energy) is sharded along its neurons over the "
                    f"mesh axis {along[0]!r}: without mesh_axis= its energy all-gathers it on "
                    f"every device. Pass mesh_axis={along[0]!r} to compute it by a ring over "
                    "that axis (per-device memory O(N·d/devices), same update)",
                    UserWarning, stacklevel=3)
        elif mesh is not None and _replicated_over(leaf, axis):
            raise ValueError(
                f"mesh_axis={axis!r}: {where} ({n} neurons, tiled energy) is replicated over "
                f"that axis (sharding {leaf.sharding.spec}), so the ring would return its update "
                f"sharded along its neurons over {axis!r}, not laid out like the parameter. "
                f"Shard it over {axis!r} (along its neurons, or its input axis), leave it out "
                "with mask=, or drop mesh_axis")


def mhe_regularizer(
    hidden_strength: ScalarOrSchedule,
    output_strength: ScalarOrSchedule | None = None,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output: _tree.PathPattern | None = None,
    mask: _tree.Mask = None,
    neuron_axis: _tree.NeuronAxis = None,
    layout: str = "flax",
    sample_size: int | None = None,
    seed: int | jax.Array = 0,
    eps: ArrayLike | None = None,
    min_distance: ArrayLike | None = None,
    calibrate: bool = False,
    projection: dict | None = None,
    max_norm: ArrayLike | None = None,
    mesh_axis: str | None = None,
    potential: Callable[[jax.Array], jax.Array] | None = None,
    groups: str | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Add the gradient of the MHE regularizer ``R`` to the updates.

    ``R(θ) = λ_h · Σ_{l∈H} E(W_l) + λ_o · Σ_{l∈O} E_out(W_l)`` over the hidden layers ``H`` and
    output layers ``O``; ``W_l`` is layer ``l``'s ``(d, N)`` neuron matrix and
    ``E(W) = 1/(N(N−1)) Σ_{i≠j} f_s(‖ŵ_i − ŵ_j‖)`` (:func:`mhe_jax.hyperspherical_energy`, with
    ``f_s(r) = r^{−s}``, ``f_0(r) = log(1/r)``). ``update`` returns ``updates + ∇R(params)``.

    Args:
      hidden_strength: λ_h ≥ 0, a number or an optax schedule of the step count.
      output_strength: λ_o ≥ 0 (number or schedule) for the layers matched by ``output`` (None:
        output layer not regularized). Requires ``output``.
      s: Riesz exponent ``s ≥ 0`` (s = 0: log energy).
      distance: ``"euclidean"`` (chord) or ``"angular"`` (radians).
      half_space: half-space MHE on hidden layers (``True`` or ``"hidden"``); the output layer
        always gets full-space MHE (``"all"`` raises). Without ``output`` this warns: the last
        layer is then a hidden layer and gets half-space MHE too.
      output: the output (classifier) layer: a module path (``"head"``, ``"Dense_1"``,
        ``"encoder/classifier"``: the layers under it) or a leaf path (``"head/kernel"``), a
        regular expression matched against the ``/``-joined path or any part of it starting
        after a ``/``; or a callable on the leaf path string. It is removed from the hidden
        layers. Matching no layer, or every layer, raises at ``init``; several layers warn.
      mask: which leaves are layers, as in ``optax.masked`` (pytree of bools or a callable on
        params). Default: the ``layout``'s layer leaves.
      neuron_axis: where the neurons lie, overriding the layout: an int or a tuple of ints (the
        neuron axes; the others are flattened into each neuron), a
        :class:`mhe_jax.NeuronAxes`, a callable ``(path, leaf) -> one of those or None`` (None:
        the layout's default), or a pytree of those structured like params.
      layout: ``"flax"`` (default: ``kernel`` leaves, neurons on the last axis; attention
        query/key/value kernels ``(in, heads, head_dim)`` on the last two), ``"equinox"``
        (``weight``, neurons on axis 0), ``"haiku"`` (``w``, last axis) or ``"torch"`` (names
        ending in ``weight``, axis 0); the names are :data:`mhe_jax.LAYOUTS`.
      sample_size: energy of a random subset of this many neurons per hidden layer (Sec. 3.6),
        drawn with keys from ``seed`` and the step count (reproducible).
      seed: seed of those keys.
      eps: singularity guard of the energies (see :func:`mhe_jax.hyperspherical_energy`).
      min_distance: bound each pair's force: ``f_s`` is continued linearly below this distance
        (energy unchanged above it; see :func:`mhe_jax.hyperspherical_energy`). The principled fix
        for low-dimensional layers (10 classifier neurons in R²) where s = 2 explodes.
      calibrate: divide each layer's energy by the expected energy of uniformly random neurons
        of the same shape (:func:`mhe_jax.uniform_reference_energy`), so one λ means the same in
        every layer (≈ λ at initialisation); for the log energy (s = 0, whose reference can be
        ≤ 0) ``exp(E − E_ref)`` instead, so the calibrated energy is positive and increasing in
        ``E`` for every s. Needs a concrete ``s < d − 1``.
      projection: CoMHE (:func:`mhe_jax.compressive_energy`) for hidden layers with more than
        ``dim`` inputs, e.g. ``{"projections": 20, "dim": 40, "kind": "gaussian"}``; fresh
        projections every step (keys from ``seed`` and the step).
      max_norm: clip the regularizer's own gradient to this global norm before adding it (the
        ``optax.clip_by_global_norm`` recipe applied to the MHE term alone).
      mesh_axis: the name of the (``Auto``) mesh axis the layers' neurons are sharded over
        (tensor parallel, or FSDP along the neurons), for parameters laid out by a
        ``NamedSharding``. Each layer on the tiled path (more than 1024 neurons after sampling,
        or ``block_size`` set below its ``N``) whose parameter lies on a mesh with that axis
        then gets its energy from the ring of :func:`mhe_jax.sharded_hyperspherical_energy`
        over it: ``P`` devices on the axis hold ``N/P`` neurons each and pass blocks to their
        neighbour, so the temporary memory per device is ``O(N·d/P + (N/P)²)`` instead of an
        all-gather of the layer (``O(N·d)``) by the tiled path. The update is the same to
        rounding, and keeps its parameter's sharding. A layer sharded otherwise is re-sharded
        along its neurons first (replicated: a local slice; input axis: an all-to-all).
        Layers of the dense path (up to 1024 neurons), CoMHE layers and output layers with
        ``labels`` are computed as without it. The mesh is read from each parameter's type at
        trace time (``jax.typeof(w).sharding.mesh``, which ``jax.jit`` gives traced
        ``NamedSharding`` inputs; the partition spec of ``Auto`` axes is not in the type, hence
        this option); a layer on no mesh (one device) is computed as without it. ``init``
        raises when a layer lies on a mesh without that axis, or when a tiled-path layer is
        replicated over it (the ring would return its update sharded along the neurons, not
        replicated like the parameter; data-parallel layers need no ring); without
        ``mesh_axis``, ``init`` warns for a tiled-path layer sharded along its neurons.
      potential: a user pair potential ``f(r)`` in place of ``f_s`` for every layer (hidden and
        output, Eq. 8 included), as in :func:`mhe_jax.hyperspherical_energy`; leave ``s`` at
        its default. Under ``optax.inject_hyperparams`` list it in ``static_args`` (a callable).
      groups: ``"heads"``: one energy per attention head, averaged (``pairs="within"``), or
        the pairs between heads only (``"across"``), for the hidden layers whose neurons lie on
        several axes (Flax attention query/key/value kernels ``(in, heads, head_dim)``,
        grouped by their first neuron axis); the other layers, and the output layers, keep the
        plain energy. ``None``: no grouping.
      pairs: with ``groups``, ``"within"`` or ``"across"`` (see
        :func:`mhe_jax.hyperspherical_energy`).

    ``update(updates, state, params, labels=None)`` requires ``params`` (same structure as
    ``updates``; None leaves of ``updates`` pass through); with ``labels`` (the batch's integer
    labels, an optax extra argument) the output layers use Eq. 8. ``state.hidden_strength`` and
    ``state.output_strength`` hold the strengths of the latest update (see
    :class:`RegularizerState`).

    ``optax.inject_hyperparams(mhe_regularizer)(...)`` needs no ``static_args``: the strengths,
    ``s``, ``eps``, ``min_distance``, ``max_norm`` and ``seed`` may be traced; the other options
    are not numbers and stay static. An int ``sample_size`` or ``neuron_axis`` would be injected
    as an array and raises: list it in ``static_args`` (or give ``neuron_axis`` as a tuple).
    ``inject_hyperparams`` takes every callable for a schedule: a callable ``output``, ``mask``
    or ``neuron_axis`` must be listed in ``static_args`` (strings, tuples and pytrees need not).

    Examples:
      >>> import jax.numpy as jnp, optax, mhe_jax
      >>> params = {"Dense_0": {"kernel": jnp.eye(3), "bias": jnp.zeros(3)},
      ...           "head": {"kernel": jnp.ones((3, 2))}}
      >>> tx = optax.chain(mhe_jax.mhe_regularizer(1.0, 10.0, output="head"), optax.sgd(0.1))
      >>> state = tx.init(params)
      >>> grads = {"Dense_0": {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)},
      ...          "head": {"kernel": jnp.zeros((3, 2))}}
      >>> updates, state = tx.update(grads, state, params)
      >>> float(jnp.abs(updates["Dense_0"]["bias"]).sum())  # biases are not layers
      0.0
      >>> float(state[0].output_strength)
      10.0

      A user potential and one energy per attention head (the other layers are not grouped):

      >>> tx = mhe_jax.mhe_regularizer(1.0, potential=lambda r: jnp.exp(-2.0 * r**2),
      ...                              groups="heads")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["Dense_0"]["kernel"].shape
      (3, 3)
    """
    spec = _energy_spec(spec, s=s, distance=distance, half_space=half_space, eps=eps,
                        min_distance=min_distance, sample_size=_structural(
                            sample_size, "sample_size", "pass a Python int"),
                        projection=projection, calibrate=calibrate, potential=potential,
                        groups=groups, pairs=pairs)
    penalty = _mhe(hidden_strength, output_strength, output, spec, mesh_axis)
    tx = penalty_transformation(
        penalty, strengths=penalty.strengths, mask=mask, output=output, neuron_axis=neuron_axis,
        layout=layout, seed=seed, max_norm=max_norm,
    )

    def init_fn(params):
        state = tx.init(params)
        _check_mesh_axis_at_init(penalty, params, dict(
            mask=mask, output=output, neuron_axis=neuron_axis, layout=layout))
        return state

    return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def mhe_penalty(
    params: optax.Params,
    hidden_strength: ScalarOrSchedule,
    output_strength: ScalarOrSchedule | None = None,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output: _tree.PathPattern | None = None,
    mask: _tree.Mask = None,
    neuron_axis: _tree.NeuronAxis = None,
    layout: str = "flax",
    sample_size: int | None = None,
    key: jax.Array | None = None,
    labels: ArrayLike | None = None,
    eps: ArrayLike | None = None,
    min_distance: ArrayLike | None = None,
    calibrate: bool = False,
    projection: dict | None = None,
    step: int | jax.Array | None = None,
    mesh_axis: str | None = None,
    potential: Callable[[jax.Array], jax.Array] | None = None,
    groups: str | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> jax.Array:
    r"""The scalar ``R(params)`` of :func:`mhe_regularizer`, to add to a loss.

    ``R = λ_h Σ_{l∈H} E(W_l) + λ_o Σ_{l∈O} E_out(W_l)``, a float32 scalar (float64 for float64
    params). The arguments are those of :func:`mhe_regularizer`; ``key`` is required with
    ``sample_size`` (the transformation derives it from ``seed`` and the step), ``labels``
    selects Eq. 8 for the output layers, and ``step`` is the step count at which schedule
    strengths are evaluated (required when a strength is a schedule). ``mesh_axis``: the ring
    for the tiled-path layers sharded over that mesh axis, as in :func:`mhe_regularizer`.
    ``potential``, ``groups`` (``"heads"``) and ``pairs`` are those of :func:`mhe_regularizer`.
    ``jax.grad(mhe_penalty)`` equals what :func:`mhe_regularizer` adds to the updates.

    Examples:
      >>> import jax, jax.numpy as jnp, mhe_jax
      >>> params = {"Dense_0": {"kernel": jnp.eye(3)}}  # 3 orthonormal neurons in R^3
      >>> round(float(mhe_jax.mhe_penalty(params, 1.0, s=2.0)), 6)  # ‖ŵ_i − ŵ_j‖² = 2
      0.5
      >>> eqx_params = {"linear": {"weight": 2.0 * jnp.eye(3)}}  # Equinox (out, in)
      >>> round(float(mhe_jax.mhe_penalty(eqx_params, 0.1, layout="equinox")), 6)
      0.05
      >>> gauss = lambda r: jnp.exp(-2.0 * r**2)  # a user potential: exp(-2 · 2) per pair
      >>> round(float(mhe_jax.mhe_penalty(params, 1.0, potential=gauss)), 6)
      0.018316

      Attention: one energy per head, averaged (a query kernel ``(in, heads, head_dim)`` with
      2 heads of 2 neurons in R², at 90° in head 0 and 45° in head 1):

      >>> q = jnp.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
      >>> attn = {"attn": {"query": {"kernel": q}}}
      >>> round(float(mhe_jax.mhe_penalty(attn, 1.0, groups="heads")), 4)  # (1/2 + 1/(2-√2))/2
      1.1036
    """
    spec = _energy_spec(spec, s=s, distance=distance, half_space=half_space, eps=eps,
                        min_distance=min_distance, sample_size=sample_size,
                        projection=projection, calibrate=calibrate, potential=potential,
                        groups=groups, pairs=pairs)
    penalty = _mhe(hidden_strength, output_strength, output, spec, mesh_axis)
    if (spec.sample_size is not None or spec.projection is not None) and key is None:
        raise ValueError("sample_size and projection require key=")
    if step is None and (callable(hidden_strength) or callable(output_strength)):
        raise ValueError("a schedule strength needs step= (the step count to evaluate it at)")
    leaves, _, layers = _tree.select_layers(
        params, mask=mask, output=output, neuron_axis=neuron_axis, layout=layout
    )
    matrices = [layer.matrix(leaves[layer.index]) for layer in layers]
    return penalty(matrices, layers, step, key if key is not None else jax.random.key(0),
                   labels=labels)


class EnergyStatsDegrees(NamedTuple):
    """:class:`mhe_jax.EnergyStats` with the smallest angle in degrees (the field's name carries
    the unit, so :func:`energies_as_floats` never converts it twice).

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> st = mhe_jax.layer_energies({"Dense_0": {"kernel": jnp.eye(2)}}, degrees=True)
      >>> energy, angle_deg, coherence, variance = st["Dense_0/kernel"]
      >>> round(float(angle_deg), 3), round(float(energy), 4), float(variance)
      (90.0, 0.5, 0.0)
    """

    energy: jax.Array
    min_angle_deg: jax.Array  # degrees
    mean_abs_cosine: jax.Array
    pair_variance: jax.Array


def layer_energies(
    params: optax.Params,
    *,
    s: ArrayLike = 2.0,
    distance: str = "euclidean",
    half_space: bool | str = False,
    output: _tree.PathPattern | None = None,
    mask: _tree.Mask = None,
    neuron_axis: _tree.NeuronAxis = None,
    layout: str = "flax",
    eps: ArrayLike | None = None,
    calibrate: bool = False,
    as_floats: bool = False,
    degrees: bool = False,
    potential: Callable[[jax.Array], jax.Array] | None = None,
    groups: str | None = None,
    pairs: str = "within",
    spec: EnergySpec | None = None,
) -> dict[str, Any]:
    r"""Energy, smallest angle, coherence and pair-potential variance of every selected layer.

    For each layer's ``(d, N)`` neuron matrix: ``energy`` is
    :func:`mhe_jax.hyperspherical_energy` (half-space for hidden layers when asked, full space
    for output layers; divided by the uniform-random reference with ``calibrate``),
    ``min_angle`` the smallest ``arccos(ŵ_iᵀŵ_j)`` over ``i ≠ j``, ``mean_abs_cosine`` the
    mean ``|ŵ_iᵀŵ_j|`` and ``pair_variance`` the variance of the pair potential over the
    energy's pairs (not calibrated; :func:`mhe_jax.energy_stats`). Layer selection
    (``output``, ``mask``, ``neuron_axis``, ``layout``), ``potential``, ``groups``
    (``"heads"``) and ``pairs`` are those of :func:`mhe_regularizer`. One Gram matrix per
    layer, and a second value-only pass for the variance (jit it for repeated logging).

    Returns ``{path: EnergyStats(energy, min_angle, mean_abs_cosine, pair_variance)}`` (scalar
    arrays; ``min_angle`` in radians), or with ``degrees=True`` ``{path:
    EnergyStatsDegrees(energy, min_angle_deg, mean_abs_cosine, pair_variance)}`` (the unit in
    the field's name); with ``as_floats=True`` plain floats for a JSONL / TensorBoard logger,
    ``{path: {"energy": float, "min_angle_deg": float, "mean_abs_cosine": float,
    "pair_variance": float}}``
    (``"min_angle"`` in radians when ``degrees=False``), as :func:`energies_as_floats` gives
    from the arrays (use that one after a jitted call).

    Examples:
      >>> import jax.numpy as jnp, mhe_jax
      >>> params = {"Dense_0": {"kernel": jnp.eye(3)}, "head": {"kernel": jnp.eye(2)}}
      >>> log = mhe_jax.layer_energies(params, output="head", as_floats=True, degrees=True)
      >>> {path: round(v["min_angle_deg"], 3) for path, v in log.items()}
      {'Dense_0/kernel': 90.0, 'head/kernel': 90.0}
      >>> round(log["Dense_0/kernel"]["energy"], 6)
      0.5
      >>> q = jnp.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])  # 2 heads of 2
      >>> st = mhe_jax.layer_energies({"attn": {"query": {"kernel": q}}}, groups="heads")
      >>> round(float(st["attn/query/kernel"].energy), 4)  # the mean of the 2 heads' energies
      1.1036
      >>> round(float(st["attn/query/kernel"].pair_variance), 4)  # of 1/2 and 1/(2 − √2)
      0.3643
    """
    spec = _energy_spec(spec, s=s, distance=distance, half_space=half_space, eps=eps,
                        min_distance=None, sample_size=None, projection=None,
                        calibrate=calibrate, potential=potential, groups=groups, pairs=pairs)
    check_pairs_given_groups(spec.pairs, spec.groups)
    leaves, _, layers = _tree.select_layers(
        params, mask=mask, output=output, neuron_axis=neuron_axis, layout=layout
    )
    out = {}
    for layer in layers:
        W = layer.matrix(leaves[layer.index])
        layer_half = spec.half_space and not layer.is_output
        st = energy_stats(W, spec=spec.replace(half_space=layer_half, calibrate=False,
                                               groups=None),
                          groups=layer_groups(spec, layer))
        if spec.calibrate:
            d, n = W.shape
            st = st._replace(energy=_energy.calibrate(spec, st.energy, n, d, layer_half))
        if degrees and not as_floats:
            st = EnergyStatsDegrees(st.energy, jnp.degrees(st.min_angle), st.mean_abs_cosine,
                                    st.pair_variance)
        out[layer.path] = st
    return energies_as_floats(out, degrees=degrees) if as_floats else out


def energies_as_floats(stats: Mapping[str, Any], *, degrees: bool = True) -> dict[str, dict]:
    """``{path: {"energy", "min_angle_deg" (or "min_angle" in radians), "mean_abs_cosine",
    "pair_variance"}}``
    as Python floats, from the arrays of :func:`layer_energies`: :class:`mhe_jax.EnergyStats`
    (``min_angle`` in radians) or :class:`EnergyStatsDegrees` (``min_angle_deg``, from
    ``degrees=True``); each is converted from its own unit, never twice.

    Examples:
      >>> import jax, jax.numpy as jnp, mhe_jax
      >>> stats = jax.jit(mhe_jax.layer_energies)({"Dense_0": {"kernel": jnp.eye(2)}})
      >>> round(mhe_jax.energies_as_floats(stats)["Dense_0/kernel"]["min_angle_deg"], 3)
      90.0
      >>> deg = jax.jit(lambda p: mhe_jax.layer_energies(p, degrees=True))(
      ...     {"Dense_0": {"kernel": jnp.eye(2)}})
      >>> round(mhe_jax.energies_as_floats(deg)["Dense_0/kernel"]["min_angle_deg"], 3)
      90.0
    """
    out = {}
    for path, st in stats.items():
        if not isinstance(st, (EnergyStats, EnergyStatsDegrees)):
            raise TypeError(
                f"energies_as_floats: stats[{path!r}] must be an EnergyStats or "
                f"EnergyStatsDegrees (from layer_energies), got {type(st).__name__}"
            )
        try:
            if isinstance(st, EnergyStatsDegrees):  # the unit is in the type: convert once
                deg = float(st.min_angle_deg)
                angle = deg if degrees else math.radians(deg)
            else:
                rad = float(st.min_angle)
                angle = math.degrees(rad) if degrees else rad
        except jax.errors.ConcretizationTypeError as e:
            raise TypeError(
                "energies_as_floats / layer_energies(as_floats=True) need concrete values: call "
                "it outside jit, on the result of a jitted layer_energies"
            ) from e
        entry = {"energy": float(st.energy)}
        entry["min_angle_deg" if degrees else "min_angle"] = angle
        entry["mean_abs_cosine"] = float(st.mean_abs_cosine)
        entry["pair_variance"] = float(st.pair_variance)
        out[path] = entry
    return out
