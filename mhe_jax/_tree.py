"""Pick the layers of a parameter pytree: paths, neuron axes, the output layers.

Knows nothing about model classes, only pytrees and key paths. A leaf's path is its key path
joined with ``/`` (``{"Dense_0": {"kernel": w}}`` → ``"Dense_0/kernel"``; list entries give
integers, ``"layers/3/kernel"``; Equinox modules their attribute names, ``"layers/0/weight"``);
the ``.value`` attribute of Flax NNX variables is dropped, so ``nnx.State`` and its pure-dict
form give the same paths. The layout rules (which leaves, which axes) are in
:mod:`mhe_jax._layouts`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from mhe_jax import _layouts
from mhe_jax._layouts import NeuronAxes

__all__ = [
    "Layer", "SelectedLayer", "path_str", "select_layers", "selected_layers", "add_to_leaves",
]

PathPattern = str | Callable[[str], bool]
AxesSpec = int | Sequence[int] | NeuronAxes | None
#: ``neuron_axis=``: one spec for every layer, a callable ``(path, leaf) -> spec``, or a pytree
#: of specs structured like params (``None``: the layout's default).
NeuronAxis = AxesSpec | Callable[[str, Any], AxesSpec] | Any
#: ``mask=``: which leaves are layers, as in ``optax.masked``: a pytree of bools structured like
#: params (or a prefix of it), or a callable ``params -> that pytree`` (``None``: the layout's).
Mask = Any | Callable[[Any], Any] | None


def _key_str(key) -> str:
    if isinstance(key, tree_util.DictKey):
        return str(key.key)
    if isinstance(key, tree_util.GetAttrKey):
        return key.name
    if isinstance(key, tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(keypath: tree_util.KeyPath) -> str:
    """``/``-joined key path, without a trailing NNX ``value`` attribute."""
    keys = list(keypath)
    if keys and isinstance(keys[-1], tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


class Layer(NamedTuple):
    """A selected leaf: its position among the flattened leaves, path, role, neuron axes and
    shape (which says how its heads are laid out, :func:`mhe_jax._layouts.head_groups`)."""

    index: int
    path: str
    is_output: bool
    neuron_axes: tuple[int, ...]
    shape: tuple[int, ...] = ()

    def matrix(self, w) -> jax.Array:
        """The leaf ``w`` as its ``(d, N)`` neuron matrix (:func:`_layouts.neuron_matrix`)."""
        return _layouts.neuron_matrix(w, self.neuron_axes)

    def matrix_shape(self, w) -> tuple[int, int]:
        """``(d, N)`` of :meth:`matrix` from the leaf's shape alone (concrete or abstract)."""
        shape = tuple(w.shape)
        n = math.prod(shape[a] for a in self.neuron_axes)
        return math.prod(shape) // max(n, 1), n


def _mask_leaves(mask, params, n_leaves: int) -> list[bool]:
    if callable(mask):
        mask = mask(params)
    try:  # a mask may be a prefix of params: broadcast each bool over its subtree
        full = tree_util.tree_map(
            lambda m, sub: tree_util.tree_map(lambda _: bool(m), sub), mask, params,
            is_leaf=lambda x: isinstance(x, bool),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"mask must be a pytree of bools matching params (or its prefix): {e}"
        ) from e
    flags = tree_util.tree_leaves(full)
    if len(flags) != n_leaves:
        raise ValueError(f"mask has {len(flags)} leaves, params has {n_leaves}")
    return [bool(f) for f in flags]


def default_is_layer(path: str, leaf) -> bool:
    """Flax Dense/Conv kernels: the path ends in ``kernel`` and the leaf has ndim ≥ 2."""
    return _layouts.is_layer("flax", path, leaf)


def _is_scalar(x) -> bool:
    """A Python or NumPy scalar (ints, and bools/floats that are then refused by name)."""
    return isinstance(x, (numbers.Number, np.generic)) or (
        isinstance(x, np.ndarray) and x.ndim == 0)


def _is_single_spec(spec) -> bool:
    """One spec for every leaf: None, a (NumPy) int, a NeuronAxes, a callable or a sequence of
    scalars (not a pytree of per-leaf specs). Bools and floats count as one spec, so that
    :func:`mhe_jax._layouts.normalize_axes` refuses them by name."""
    if spec is None or _is_scalar(spec) or isinstance(spec, NeuronAxes) or callable(spec):
        return True
    return isinstance(spec, (tuple, list)) and all(_is_scalar(a) for a in spec)


def _leaf_specs(neuron_axis, params, treedef, paths, leaves) -> list:
    if _is_single_spec(neuron_axis):
        return [_layouts.leaf_spec(neuron_axis, p, leaf)
                for p, leaf in zip(paths, leaves, strict=True)]
    try:
        return treedef.flatten_up_to(neuron_axis)
    except (ValueError, TypeError) as e:
        raise ValueError(
            "neuron_axis must be an int, a sequence of ints, a NeuronAxes, a callable "
            f"(path, leaf) -> one of those, or a pytree of them structured like params: {e}"
        ) from e


def _output_flags(output, layout, paths, chosen, leaves, warn) -> list[bool]:
    match = _layouts.output_matcher(output, layout)
    if match is None:
        return [False] * len(paths)
    kinds = [match(p) for p in paths]
    flags = [k == "leaf" or (k == "module" and c) for k, c in zip(kinds, chosen, strict=True)]
    if not any(kinds):
        raise ValueError(
            f"output={output!r} matches no leaf or module; paths are: "
            f"{', '.join(paths) or '(none)'}"
        )
    if not any(flags):
        under = [p for p, k in zip(paths, kinds, strict=True) if k]
        raise ValueError(
            f"output={output!r} matches {', '.join(under)}, none of which is a layer; name the "
            "classifier's module (e.g. output='head') or its weight leaf"
        )
    layers = [p for p, f, c in zip(paths, flags, chosen, strict=True) if f or c]
    outputs = [p for p, f in zip(paths, flags, strict=True) if f]
    if len(layers) > 1 and len(outputs) == len(layers):
        raise ValueError(
            f"output={output!r} matches every layer ({', '.join(outputs)}): none would get hidden "
            "MHE. Name the classifier only, e.g. its module path output='head' or 'Dense_1'"
        )
    if warn and len(outputs) > 1:
        warnings.warn(
            f"output={output!r} matches {len(outputs)} layers ({', '.join(outputs)}); each gets "
            "the output-layer energy. Name one module (e.g. output='head') if that is not meant",
            UserWarning, stacklevel=4,
        )
    return flags


def select_layers(
    params,
    *,
    mask: Mask = None,
    output: PathPattern | None = None,
    neuron_axis: NeuronAxis = None,
    layout: str = "flax",
    warn: bool = False,
) -> tuple[list, Any, list[Layer]]:
    """Flatten ``params`` and pick its layers.

    Layers are the leaves chosen by ``mask`` (a pytree of bools, or a callable on ``params``
    returning one, as in ``optax.masked``), by default those of ``layout``
    (:func:`mhe_jax._layouts.is_layer`), plus the output layers matched by ``output``: a
    regular expression naming a module (``"head"``, ``"Dense_1"``, ``"encoder/classifier"``:
    the layers under it) or a leaf (``"head/kernel"``: that leaf), matched against the path or
    any part of it that starts after a ``/``; or a callable on the leaf path string. Neuron axes
    come from ``neuron_axis`` where given (see :data:`NeuronAxis`), else from the layout.

    Returns ``(leaves, treedef, layers)``. Raises if ``params`` is None, if nothing is
    selected, if ``output`` matches no layer or every layer, if a selected leaf has ndim < 2 or
    a non-floating dtype (integer, bool, complex; the error names its path), or if a 3-D
    kernel's neuron axes are ambiguous. ``warn``: warn when ``output`` matches several
    layers.
    """
    _layouts.check_layout(layout)
    if params is None:
        raise ValueError(
            "params is None: this transformation needs the current parameters, call "
            "`tx.update(updates, state, params)`"
        )
    keyed, treedef = tree_util.tree_flatten_with_path(params)
    paths = [path_str(kp) for kp, _ in keyed]
    leaves = [leaf for _, leaf in keyed]
    chosen = (
        _mask_leaves(mask, params, len(leaves)) if mask is not None
        else [_layouts.is_layer(layout, p, leaf) for p, leaf in zip(paths, leaves, strict=True)]
    )
    outputs = _output_flags(output, layout, paths, chosen, leaves, warn)
    specs = _leaf_specs(neuron_axis, params, treedef, paths, leaves)
    all_paths = frozenset(paths)
    layers, ambiguous = [], []
    for i, (path, leaf) in enumerate(zip(paths, leaves, strict=True)):
        if not (chosen[i] or outputs[i]):
            continue
        ndim = getattr(leaf, "ndim", 0)
        if ndim < 2:
            raise ValueError(
                f"leaf {path!r} (shape {getattr(leaf, 'shape', ())}) was selected as a layer but "
                "has ndim < 2: a layer needs neurons along one axis and their vectors along the "
                "others"
            )
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"leaf {path!r} (shape {tuple(leaf.shape)}, dtype {dtype}) was selected as a layer "
                "but has no real floating dtype: MHE needs float32/float64/bf16/f16 neurons (and "
                "a gradient). Leave it out with mask=, or cast it"
            )
        if specs[i] is None:
            axes = _layouts.default_neuron_axes(layout, path, leaf, all_paths)
            if isinstance(axes, _layouts.AmbiguousKernel):
                ambiguous.append(axes)
                continue
        else:
            axes = _layouts.normalize_axes(specs[i], ndim, f"neuron_axis for {path!r}")
        layers.append(Layer(i, path, outputs[i], axes, tuple(leaf.shape)))
    if ambiguous:
        raise _layouts.ambiguity_error(ambiguous)
    if not layers:
        names = {"flax": "'kernel'", "equinox": "'weight'", "haiku": "'w'", "torch": "'...weight'"}
        # The layouts under which this tree has layers (torch first for dotted state-dict keys).
        fits = [other for other in _layouts.LAYOUTS if other != layout and any(
            _layouts.is_layer(other, p, leaf) for p, leaf in zip(paths, leaves, strict=True))]
        if any("." in p for p in paths):
            fits.sort(key=lambda other: other != "torch")
        hint = (f"; its leaves fit layout={fits[0]!r}: pass layout={fits[0]!r}" if fits else "")
        raise ValueError(
            f"no parameter was selected as a layer (layout={layout!r}: leaves named "
            f"{names[layout]} with ndim >= 2; pass layout=, mask= or output=){hint}; paths are: "
            f"{', '.join(paths) or '(none)'}"
        )
    return leaves, treedef, layers


class SelectedLayer(NamedTuple):
    """One layer as the regularizers see it (:func:`selected_layers`).

    ``is_output``: it gets the output-layer energy (full space, the output strength);
    ``neuron_axes``: the axes of the leaf that index its neurons; ``neurons`` and ``dim``: N and
    d of its ``(d, N)`` neuron matrix.
    """

    is_output: bool
    neuron_axes: tuple[int, ...]
    neurons: int
    dim: int


def selected_layers(
    params: Any,
    *,
    output: PathPattern | None = None,
    mask: Mask = None,
    neuron_axis: NeuronAxis = None,
    layout: str = "flax",
) -> dict[str, SelectedLayer]:
    """Which leaves of ``params`` the MHE regularizers treat as layers, and how.

    The selection of :func:`mhe_jax.mhe_regularizer`, :func:`mhe_jax.mhe_penalty` and
    :func:`mhe_jax.layer_energies` for the same ``output``, ``mask``, ``neuron_axis`` and
    ``layout``, without computing anything: use it to check a model before training, or to
    tell a logger which layer is the output. Raises the same errors as they do (nothing
    selected, ``output`` matching no layer or every layer, ambiguous 3-D kernels, ...).

    Returns ``{path: SelectedLayer(is_output, neuron_axes, neurons, dim)}`` in the order of
    the flattened leaves. Shapes only are read, so ``params`` may hold
    ``jax.ShapeDtypeStruct`` leaves.

    Examples:
        >>> import jax.numpy as jnp, mhe_jax
        >>> params = {"body": {"conv": {"kernel": jnp.zeros((3, 3, 8, 16))}},
        ...           "head": {"kernel": jnp.zeros((16, 10)), "bias": jnp.zeros(10)}}
        >>> for path, layer in mhe_jax.selected_layers(params, output="head").items():
        ...     print(path, layer.is_output, layer.neurons, layer.dim)
        body/conv/kernel False 16 72
        head/kernel True 10 16
    """
    leaves, _, layers = select_layers(
        params, mask=mask, output=output, neuron_axis=neuron_axis, layout=layout
    )
    out = {}
    for layer in layers:
        dim, neurons = layer.matrix_shape(leaves[layer.index])
        out[layer.path] = SelectedLayer(layer.is_output, layer.neuron_axes, neurons, dim)
    return out


def _is_none(x) -> bool:
    return x is None


def add_to_leaves(tree, treedef, additions: dict[int, jax.Array], name: str = "updates"):
    """``tree`` (structured like params, whose structure is ``treedef``) with ``additions[i]``
    added to its ``i``-th leaf, in that leaf's dtype. ``None`` leaves of ``tree`` stay None
    (optax's convention for parameters without an update)."""
    flat = [additions.get(i) for i in range(treedef.num_leaves)]
    add_tree = tree_util.tree_unflatten(treedef, flat)
    try:
        return tree_util.tree_map(
            lambda u, a: u if u is None or a is None else u + a.astype(u.dtype),
            tree, add_tree, is_leaf=_is_none,
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} and params must share a structure: {e}") from e
