"""Record sinks for :func:`mhe_jax.train.fit` (JSONL file, progress bar) and the energy probe."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

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

    def __init__(self, path, *, keep_until: int | None = None):
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


def energy_logger(**energy_kwargs) -> Callable[[nnx.Module], dict]:
    """``fn(model) -> {"layers": {path: {"energy", "min_angle_deg", "mean_abs_cosine"}}}``.

    :func:`mhe_jax.layer_energies` of the model's ``nnx.Param`` state (jitted once) with
    ``energy_kwargs`` (s, distance, half_space, output, ...), for ``fit(evals=[Every(n, fn)])``.
    """
    stats_fn = jax.jit(lambda params: mhe_jax.layer_energies(params, **energy_kwargs))

    def fn(model):
        stats = jax.device_get(stats_fn(nnx.state(model, nnx.Param)))
        return {"layers": {
            path: {"energy": float(st.energy), "min_angle_deg": math.degrees(float(st.min_angle)),
                   "mean_abs_cosine": float(st.mean_abs_cosine)}
            for path, st in stats.items()}}

    return fn
