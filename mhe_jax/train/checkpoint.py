"""Orbax checkpoints of an NNX model and its optimizer, verified on restore, with fallback.

Saves are atomic (orbax writes into a temporary directory and renames it when complete), so an
interrupted save leaves the previous checkpoint as the latest usable one. Each checkpoint's
metadata holds its step, the caller's ``metadata`` (the runner stores the run's config) and a
SHA-256 of every saved array, checked on restore. :meth:`Checkpointer.restore` tries the
checkpoints newest first: a damaged one (unreadable metadata, missing or truncated state files,
a checksum mismatch) is moved to ``<directory>.damaged/`` with a warning naming it, and the next
older one is used; when none is intact it raises :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.nnx as nnx
import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "CheckpointError"]


class CheckpointError(RuntimeError):
    """No intact checkpoint could be restored (every candidate is named in the message)."""


def _checksum(state: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (a fixed, sorted order)."""
    h = hashlib.sha256()
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    for path, leaf in sorted(((jax.tree_util.keystr(p), v) for p, v in flat), key=lambda t: t[0]):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Keep the ``max_to_keep`` newest ``(model, optimizer)`` checkpoints in ``directory``.

    Args:
      directory: where the checkpoints live (one sub-directory per step).
      every: :func:`mhe_jax.train.fit` saves every this many steps (None: only at the end).
      max_to_keep: older checkpoints are deleted.
      metadata: JSON-able dict stored with every checkpoint (e.g. the run's config).
    """

    def __init__(self, directory: str | os.PathLike[str], *, every: int | None = None,
                 max_to_keep: int = 2, metadata: dict[str, Any] | None = None):
        if every is not None and (not isinstance(every, int) or every < 1):
            raise ValueError(f"every must be an int >= 1 or None, got {every!r}")
        self.directory = Path(directory).absolute()
        self.every = every
        self.metadata = dict(metadata or {})
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    @staticmethod
    def _state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, Any]:
        return {"model": nnx.to_pure_dict(nnx.state(model)),
                "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}

    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
        """Write checkpoint ``step`` (blocks until it is complete on disk)."""
        state = jax.device_get(self._state(model, optimizer))
        meta = {**self.metadata, "step": int(step), "checksum": _checksum(state)}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    metadata=ocp.args.JsonSave(meta)),
        )
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Steps of the complete (renamed) checkpoints on disk, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer, *,
                check: Callable[[int, dict[str, Any]], None] | None = None
                ) -> tuple[int, dict[str, Any]] | None:
        """Load the newest intact checkpoint into ``model`` / ``optimizer``.

        ``check(step, metadata)`` runs before a checkpoint's arrays are loaded and may raise
        (e.g. a config mismatch); that error propagates. Returns ``(step, metadata)``, or None
        when the directory holds no checkpoint. Damaged checkpoints are moved aside with a
        warning; :class:`CheckpointError` if none is intact.
        """
        damaged: list[str] = []
        target = self._state(model, optimizer)
        for step in reversed(self.steps()):
            path = self.directory / str(step)
            try:
                meta = self._read_metadata(step)
            except Exception as e:  # noqa: BLE001 - any unreadable metadata means damaged
                damaged.append(self._quarantine(step, f"unreadable metadata ({_short(e)})"))
                continue
            if check is not None:
                check(step, meta)
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
                state = jax.device_get(restored["state"])
                if "checksum" in meta and _checksum(state) != meta["checksum"]:
                    raise ValueError("the arrays do not match the checksum saved with them")
            except Exception as e:  # noqa: BLE001 - truncated / missing / corrupt state
                damaged.append(self._quarantine(step, f"unreadable state ({_short(e)})"))
                continue
            for obj, pure in ((model, restored["state"]["model"]),
                              (optimizer, restored["state"]["optimizer"])):
                st = nnx.state(obj)
                nnx.replace_by_pure_dict(st, pure)
                nnx.update(obj, st)
            del path
            return int(step), meta
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}; damaged (moved aside): "
                + "; ".join(damaged) + ". Start over (CLI: --restart) or restore a backup.")
        return None

    def _read_metadata(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        meta = restored["metadata"]
        if not isinstance(meta, dict) or meta.get("step", step) != step:
            raise ValueError(f"metadata is not this checkpoint's: {str(meta)[:80]!r}")
        return dict(meta)

    def _quarantine(self, step: int, why: str) -> str:
        """Move checkpoint ``step`` out of the manager's way (kept for inspection); warn."""
        src = self.directory / str(step)
        dst_dir = self.directory.with_name(self.directory.name + ".damaged")
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"
        shutil.move(str(src), str(dst))
        self.manager.reload()
        message = f"checkpoint {src} is damaged: {why}; moved to {dst}"
        warnings.warn(message + "; falling back to an older one", RuntimeWarning, stacklevel=3)
        return message

    def close(self) -> None:
        """Close the underlying orbax ``CheckpointManager`` (also on leaving a ``with`` block)."""
        self.manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 200 else text[:200] + "..."
