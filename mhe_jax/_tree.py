"""Which leaves of a parameter pytree are layers: paths, neuron axes, the output layer.

Knows nothing about Flax modules, only pytrees and key paths. A leaf's path is its key path
joined with ``/`` (``{"Dense_0": {"kernel": w}}`` → ``"Dense_0/kernel"``; list entries give
integers, ``"layers/3/kernel"``); the ``.value`` attribute of Flax NNX variables is dropped, so
``nnx.State`` and its pure-dict form give the same paths.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import tree_util

from mhe_jax import _checks

__all__ = ["Layer", "path_str", "select_layers"]

PathPattern = str | Callable[[str], bool]
NeuronAxis = int | Callable[[str, Any], int]


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


def path_str(keypath) -> str:
    """``/``-joined key path, without a trailing NNX ``value`` attribute."""
    keys = list(keypath)
    if keys and isinstance(keys[-1], tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


class Layer(NamedTuple):
    """A selected leaf: its position among the flattened leaves, path, role and neuron axis."""

    index: int
    path: str
    is_output: bool
    neuron_axis: int


def _matcher(pattern: PathPattern | None, name: str) -> Callable[[str], bool] | None:
    if pattern is None or callable(pattern):
        return pattern
    if isinstance(pattern, str):
        try:
            regex = re.compile(rf"(?:.*/)?(?:{pattern})")
        except re.error as e:
            raise ValueError(f"{name}={pattern!r} is not a valid regular expression: {e}") from e
        return lambda path: regex.fullmatch(path) is not None
    raise TypeError(f"{name} must be a path pattern (str) or a callable on the path string")


def _mask_leaves(mask, params, n_leaves: int) -> list[bool]:
    if callable(mask):
        mask = mask(params)
    try:  # a mask may be a prefix of params: broadcast each bool over its subtree
        full = tree_util.tree_map(
            lambda m, sub: tree_util.tree_map(lambda _: bool(m), sub), mask, params,
            is_leaf=lambda x: isinstance(x, bool),
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"mask must be a pytree of bools matching params (or its prefix): {e}") from e
    flags = tree_util.tree_leaves(full)
    if len(flags) != n_leaves:
        raise ValueError(f"mask has {len(flags)} leaves, params has {n_leaves}")
    return [bool(f) for f in flags]


def default_is_layer(path: str, leaf) -> bool:
    """Flax Dense/Conv kernels: the path ends in ``kernel`` and the leaf has ndim ≥ 2."""
    return path.split("/")[-1] == "kernel" and getattr(leaf, "ndim", 0) >= 2


def select_layers(
    params,
    *,
    mask=None,
    output: PathPattern | None = None,
    neuron_axis: NeuronAxis = -1,
) -> tuple[list, Any, list[Layer]]:
    """Flatten ``params`` and pick its layers.

    Layers are the leaves chosen by ``mask`` (a pytree of bools, or a callable on ``params``
    returning one, as in ``optax.masked``), by default :func:`default_is_layer`, plus the leaves
    whose path matches ``output`` (a regular expression matched against the whole path or a
    ``/``-suffix of it, e.g. ``"classifier/kernel"``, or a callable on the path string).

    Returns ``(leaves, treedef, layers)``. Raises if ``params`` is None, if nothing is
    selected, if ``output`` matches no leaf, or if a selected leaf has ndim < 2.
    """
    if params is None:
        raise ValueError(
            "params is None: this transformation needs the current parameters, call "
            "`tx.update(updates, state, params)`"
        )
    keyed, treedef = tree_util.tree_flatten_with_path(params)
    paths = [path_str(kp) for kp, _ in keyed]
    leaves = [leaf for _, leaf in keyed]
    is_output = _matcher(output, "output")
    chosen = (
        _mask_leaves(mask, params, len(leaves)) if mask is not None
        else [default_is_layer(p, leaf) for p, leaf in zip(paths, leaves)]
    )
    outputs = [bool(is_output(p)) if is_output else False for p in paths]
    if output is not None and not any(outputs):
        raise ValueError(
            f"output={output!r} matches no leaf; paths are: {', '.join(paths) or '(none)'}"
        )
    layers = []
    for i, (path, leaf) in enumerate(zip(paths, leaves)):
        if not (chosen[i] or outputs[i]):
            continue
        ndim = getattr(leaf, "ndim", 0)
        if ndim < 2:
            raise ValueError(
                f"leaf {path!r} (shape {getattr(leaf, 'shape', ())}) was selected as a layer but has "
                "ndim < 2: a layer needs neurons along one axis and their vectors along the others"
            )
        axis = neuron_axis(path, leaf) if callable(neuron_axis) else neuron_axis
        axis = _checks.check_axis(axis, ndim, f"neuron_axis for {path!r}")
        layers.append(Layer(i, path, outputs[i], axis))
    if not layers:
        raise ValueError(
            "no parameter was selected as a layer (default: leaves named 'kernel' with ndim >= 2; "
            f"pass mask= or output=); paths are: {', '.join(paths) or '(none)'}"
        )
    return leaves, treedef, layers


def add_to_leaves(tree, num_leaves: int, additions: dict[int, jax.Array], name: str = "updates"):
    """``tree`` (structured like params) with ``additions[i]`` added to its ``i``-th leaf, in that
    leaf's dtype."""
    flat, treedef = tree_util.tree_flatten(tree)
    if len(flat) != num_leaves:
        raise ValueError(
            f"{name} has {len(flat)} leaves but params has {num_leaves}: they must share a structure"
        )
    for i, a in additions.items():
        flat[i] = flat[i] + a.astype(flat[i].dtype)
    return tree_util.tree_unflatten(treedef, flat)
