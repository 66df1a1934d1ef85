"""Record sinks for :func:`mhe_jax.train.fit` (JSONL file, progress bar) and the energy probe."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.nnx as nnx
import jax

import mhe_jax

__all__ = ["JsonlLogger", "ProgressBar", "energy_logger"]


class JsonlLogger:
    """Append each record as one JSON line to ``path`` (flushed at once).

    ``keep_until=None`` starts a fresh file; ``keep_until=k`` (a resumed run at step k) keeps
    the existing records with ``step <= k`` and drops the rest (records of steps the resumed
    run will redo, and a line cut short by a kill), so the log reads as one uninterrupted run.
    """

    def __init__(self, path: str | os.PathLike[str], *, keep_until: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if keep_until is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("step", math.inf) <= keep_until:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")

    def __call__(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ProgressBar:
    """A tqdm bar moved to each record's step, showing the latest loss and accuracy."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "train"):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def __call__(self, record: dict) -> None:
        if "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                                 refresh=False)
        self.bar.update(max(0, record["step"] - self.bar.n))

    def close(self) -> None:
        self.bar.close()


_FULL_SPACE = {"s": 2.0, "distance": "euclidean", "half_space": False}
# options of layer_energies that choose the layers and their neuron axes (kept for energy_full)
_SELECTION = ("output", "mask", "neuron_axis", "layout")


def energy_logger(**energy_kwargs: Any) -> Callable[[nnx.Module], dict]:
    """``fn(model) -> {"layers": {path: stats}}``: every layer's energy, for ``fit(evals=)``.

    :func:`mhe_jax.layer_energies` of the model's ``nnx.Param`` state (jitted once) with
    ``energy_kwargs`` (s, distance, half_space, output, ...). Per layer, ``stats`` holds

    * ``"energy"``: the energy of ``energy_kwargs`` (half-space for hidden layers with
      ``half_space=True``: the run's own objective);
    * ``"energy_full"``: the full-space s = 2 Euclidean energy, mean over pairs ``i ≠ j`` of
      ``1/‖ŵ_i − ŵ_j‖²`` (same layer selection), comparable between runs of any options;
    * ``"min_angle_deg"``: the smallest angle between two neurons (full space, degrees),
      ``"mean_abs_cosine"`` and ``"pair_variance"`` (the variance of the pair potential over
      the energy's pairs, :func:`mhe_jax.energy_stats`);
    * ``"neurons"``, ``"dim"``: N and the vector length d of the layer's ``(d, N)`` neuron
      matrix, for any ``layout`` and ``neuron_axis``;
    * ``"is_output"``: whether the layer gets the output-layer energy, as
      :func:`mhe_jax.selected_layers` decides it for the same ``output`` (a module or leaf
      path, a regular expression or a callable); False for every layer without ``output``.

    Examples:
        >>> import flax.nnx as nnx
        >>> from mhe_jax.train import energy_logger
        >>> class Net(nnx.Module):
        ...     def __init__(self, rngs):
        ...         self.hidden = nnx.Linear(4, 3, rngs=rngs)
        ...         self.head = nnx.Linear(3, 2, rngs=rngs)
        >>> log = energy_logger(half_space=True, output="head")(Net(nnx.Rngs(0)))["layers"]
        >>> sorted(log), log["head/kernel"]["is_output"], log["hidden/kernel"]["neurons"]
        (['head/kernel', 'hidden/kernel'], True, 3)
        >>> h = log["hidden/kernel"]
        >>> h["energy"] != h["energy_full"]  # half-space vs full-space energy
        True
    """
    own_is_full = (all(energy_kwargs.get(k, v) == v for k, v in _FULL_SPACE.items())
                   and not set(energy_kwargs) - {*_FULL_SPACE, *_SELECTION})
    selection = {k: energy_kwargs[k] for k in _SELECTION if k in energy_kwargs}
    full_kwargs = {**selection, **_FULL_SPACE}

    def stats_of(params):
        own = mhe_jax.layer_energies(params, **energy_kwargs)
        return own, (own if own_is_full else mhe_jax.layer_energies(params, **full_kwargs))

    stats_fn = jax.jit(stats_of)

    def fn(model):
        params = nnx.state(model, nnx.Param)
        own, full = jax.device_get(stats_fn(params))
        layers = mhe_jax.selected_layers(params, **selection)
        return {"layers": {
            path: {"energy": float(st.energy), "energy_full": float(full[path].energy),
                   "min_angle_deg": math.degrees(float(st.min_angle)),
                   "mean_abs_cosine": float(st.mean_abs_cosine),
                   "pair_variance": float(st.pair_variance),
                   "neurons": layers[path].neurons, "dim": layers[path].dim,
                   "is_output": layers[path].is_output}
            for path, st in own.items()
        }}

    return fn
