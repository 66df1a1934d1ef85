r"""Which leaves of a parameter pytree are layers, and along which axes their neurons lie.

A *layout* names the convention of a model library (paths are ``/``-joined key paths, see
:func:`mhe_jax.path_str`):

============  =======================================  =====================================
layout        layer leaves (all with ndim ≥ 2)         neurons
============  =======================================  =====================================
``flax``      last key ``kernel``                      last axis (attention q/k/v: last two)
``equinox``   last key ``weight``, not under ``embed``  axis 0, the other axes flattened
``haiku``     last key ``w``                           last axis
``torch``     name ending in ``weight`` (after ``.``   axis 0, the other axes flattened
              or ``/``), not under ``embed``
============  =======================================  =====================================

Flax (linen and NNX) Dense / Conv kernels are ``(in, out)`` and ``(kh, kw, in, out)``: ``out``
neurons, each a vector of the other axes. A 3-D kernel is ambiguous from its shape alone: a 1-D
convolution ``(width, in, out)`` has ``out`` neurons, but an attention query/key/value kernel
``(in, heads, head_dim)`` (``nnx.MultiHeadAttention``, ``nn.MultiHeadDotProductAttention``) has
``heads·head_dim`` neurons in ``R^in`` — taking only the last axis would mix the heads. The path
decides (:func:`default_neuron_axes`): a kernel of a module named ``query``, ``key`` or
``value`` has its neurons on the last two axes; the attention output projection ``out``
``(heads, head_dim, out)`` (a sibling of ``query``/``key``/``value``, or under a module whose name
contains ``attention``/``attn``) and kernels under a ``conv`` module have them on the last axis;
any other 3-D kernel, and any ``DenseGeneral``/``LinearGeneral`` kernel with ndim ≥ 3, is refused
with an error naming the leaves and the fix. Equinox' ``MultiheadAttention`` projections are
``Linear`` layers ``(heads·size, in)``, already right with neurons on axis 0.

Embedding tables (``eqx.nn.Embedding.weight``, ``torch.nn.Embedding.weight``) look like weights;
leaves under a key containing ``embed`` are not layers in the equinox and torch layouts (Flax and
Haiku name them ``embedding`` / ``embeddings``, never selected). ``mask=`` changes any of this.

Heads. An attention query/key/value kernel ``(in, heads, head_dim)`` has its neurons on two axes;
its ``(d, N)`` matrix (:func:`neuron_matrix`) orders them head by head (``N`` index
``h·head_dim + j``), so the neurons of head ``h`` are one contiguous block. :func:`head_groups`
gives that grouping (``groups="heads"`` of the regularizers): a layer whose neurons lie on
several axes is grouped by its first neuron axis; a layer with one neuron axis has no heads.

A per-leaf :class:`NeuronAxes` (modelled on :class:`optax.contrib.MuonDimensionNumbers`) names the
neuron axes explicitly, for any number of them. This module knows pytrees, paths and layout names,
never model classes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = ["LAYOUTS", "NeuronAxes", "check_layout", "is_layer", "default_neuron_axes",
           "normalize_axes", "output_matcher", "neuron_matrix", "components", "head_groups"]

LAYOUTS = ("flax", "equinox", "haiku", "torch")
_LEAF_NAME = {"flax": "kernel", "equinox": "weight", "haiku": "w", "torch": "weight"}
_ATTENTION_INPUTS = ("query", "key", "value")


class NeuronAxes(NamedTuple):
    """The axes of one weight that index its neurons (cf. ``optax.contrib.MuonDimensionNumbers``).

    ``neuron_axes`` (an int or a sequence of ints) are the output axes: the layer has
    ``N = Π_{a ∈ neuron_axes} shape[a]`` neurons, each the vector of the remaining axes,
    ``vector_axes`` (None: all the others, flattened). MHE has no batch axes, so when
    ``vector_axes`` is given the two must partition the axes.

    ``NeuronAxes((1, 2))`` for an attention query kernel ``(in, heads, head_dim)`` gives
    ``heads·head_dim`` neurons in ``R^in``; ``NeuronAxes(0)`` an Equinox ``(out, in)`` weight.
    """

    neuron_axes: int | Sequence[int] = -1
    vector_axes: int | Sequence[int] | None = None


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def components(path: str, layout: str) -> list[str]:
    """The keys of a path; torch names are also split at dots (``fc1.weight``)."""
    return re.split(r"[/.]" if layout == "torch" else "/", path)


def is_layer(layout: str, path: str, leaf) -> bool:
    """Whether ``leaf`` at ``path`` is a layer of ``layout`` (table in the module docstring)."""
    if getattr(leaf, "ndim", 0) < 2:
        return False
    keys = components(path, layout)
    if keys[-1] != _LEAF_NAME[layout]:
        return False
    if layout in ("equinox", "torch") and any("embed" in k.lower() for k in keys[:-1]):
        return False
    return True


def _as_axes(value, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d NumPy array: its scalar
    scalar = isinstance(value, (int, np.integer, float, np.floating, np.bool_))
    items = (value,) if scalar else value
    try:
        items = tuple(items)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}") from None
    out = []
    for a in items:
        if not isinstance(a, (int, np.integer)) or isinstance(a, (bool, np.bool_)):
            raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}={value!r} is out of range for an array with ndim={ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={value!r} repeats an axis")
    return tuple(sorted(out))


def normalize_axes(spec, ndim: int, name: str = "neuron_axis") -> tuple[int, ...]:
    """The sorted neuron axes named by ``spec`` (int, sequence of ints or :class:`NeuronAxes`)."""
    if isinstance(spec, NeuronAxes):
        axes = _as_axes(spec.neuron_axes, ndim, f"{name}.neuron_axes")
        if spec.vector_axes is not None:
            vec = _as_axes(spec.vector_axes, ndim, f"{name}.vector_axes")
            if set(vec) & set(axes) or len(vec) + len(axes) != ndim:
                raise ValueError(
                    f"{name}={spec!r}: neuron_axes and vector_axes must partition the {ndim} axes "
                    "(MHE has no batch axes)"
                )
    else:
        axes = _as_axes(spec, ndim, name)
    if not axes or len(axes) == ndim:
        raise ValueError(
            f"{name}={spec!r} must leave at least one axis for the neurons' vectors "
            f"and name at least one neuron axis (ndim={ndim})"
        )
    return axes


class AmbiguousKernel(NamedTuple):
    path: str
    shape: tuple[int, ...]


def _is_attention_out(keys: list[str], paths: frozenset[str]) -> bool:
    if len(keys) < 2 or keys[-2] != "out":
        return False
    if any("attention" in k.lower() or "attn" in k.lower() for k in keys[:-2]):
        return True
    parent = "/".join(keys[:-2] + [""])
    return any(f"{parent}{q}/kernel" in paths for q in _ATTENTION_INPUTS)


def default_neuron_axes(layout: str, path: str, leaf, paths: frozenset[str]):
    """The layout's neuron axes of a layer leaf, or :class:`AmbiguousKernel` if the path does not
    say (flax kernels with ndim ≥ 3; rules in the module docstring). ``paths``: every leaf path."""
    ndim = leaf.ndim
    if layout in ("equinox", "torch"):
        return (0,)
    if layout == "haiku" or ndim == 2:
        return (ndim - 1,)
    keys = components(path, layout)
    parent = keys[-2] if len(keys) >= 2 else ""
    if parent in _ATTENTION_INPUTS:
        return (ndim - 2, ndim - 1)  # (..., heads, head_dim): heads·head_dim neurons
    if _is_attention_out(keys, paths):
        return (ndim - 1,)  # (heads, head_dim, out): out neurons in R^{heads·head_dim}
    if "general" in parent.lower():
        return AmbiguousKernel(path, tuple(leaf.shape))
    if any("conv" in k.lower() for k in keys[:-1]):
        return (ndim - 1,)
    if ndim == 3:
        return AmbiguousKernel(path, tuple(leaf.shape))
    return (ndim - 1,)  # (kh, kw, [kd,] in, out) convolutions


def ambiguity_error(ambiguous: list[AmbiguousKernel]) -> ValueError:
    listed = ", ".join(f"{a.path!r} {a.shape}" for a in ambiguous)
    return ValueError(
        f"cannot tell where the neurons of {listed} lie: a 1-D convolution kernel (width, in, out) "
        "has its neurons on the last axis, an attention query/key/value or DenseGeneral kernel "
        "(in, heads, head_dim) on the last two (heads·head_dim neurons; the last axis alone would "
        "mix the heads). Name them with neuron_axis=, e.g. neuron_axis=lambda path, leaf: "
        "NeuronAxes((1, 2)) if 'attn' in path else None (None: the layout's default), or a "
        "pytree of NeuronAxes like params, or leave them out with mask="
    )


def output_matcher(pattern, layout: str) -> Callable[[str], str | None] | None:
    """``path -> "leaf" | "module" | None``: how ``pattern`` matches a leaf path.

    A string is a regular expression. ``"leaf"``: it matches the whole path or a suffix starting
    after a separator (``"head/kernel"``, ``"params/head/kernel"``); ``"module"``: it matches a
    module containing the leaf the same way (``"head"``, ``"Dense_1"``, ``"encoder/classifier"``).
    A callable on the path string returning True means ``"leaf"``.
    """
    if pattern is None:
        return None
    if callable(pattern):
        return lambda path: "leaf" if pattern(path) else None
    if not isinstance(pattern, str):
        raise TypeError(
            f"output must be a module or leaf path (str, a regular expression) or a callable on "
            f"the path string, got {type(pattern).__name__}"
        )
    sep = "[/.]" if layout == "torch" else "/"
    try:
        regex = re.compile(rf"(?:.*{sep})?(?:{pattern})")
    except re.error as e:
        raise ValueError(f"output={pattern!r} is not a valid regular expression: {e}") from e

    def match(path: str) -> str | None:
        if regex.fullmatch(path):
            return "leaf"
        for m in re.finditer(sep, path):
            if regex.fullmatch(path[: m.start()]):
                return "module"
        return None

    return match


def neuron_matrix(w, axes: tuple[int, ...]):
    """``w`` as the ``(d, N)`` matrix of its neurons: ``axes`` moved last and flattened into
    ``N``, the other axes (in order) flattened into ``d``."""
    n = math.prod(w.shape[a] for a in axes)
    rest = [a for a in range(w.ndim) if a not in axes]
    return jnp.transpose(w, rest + list(axes)).reshape(-1, n)


def head_groups(shape: Sequence[int], axes: tuple[int, ...]) -> np.ndarray | None:
    """The head of each of the ``N`` neurons of a leaf of ``shape`` with neuron ``axes``, in the
    order of :func:`neuron_matrix` (an ``(N,)`` int array), or None when the neurons lie on one
    axis (no heads). The first neuron axis is the head's: ``(in, heads, head_dim)`` with
    ``axes = (1, 2)`` gives ``[0]*head_dim + [1]*head_dim + ...``."""
    if len(axes) < 2:
        return None
    heads = int(shape[axes[0]])
    per_head = math.prod(int(shape[a]) for a in axes[1:])
    return np.repeat(np.arange(heads, dtype=np.int32), per_head)


def leaf_spec(neuron_axis, path: str, leaf) -> Any:
    """The user's spec for one leaf (callables are called on ``(path, leaf)``)."""
    return neuron_axis(path, leaf) if callable(neuron_axis) else neuron_axis
