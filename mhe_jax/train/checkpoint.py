"""Orbax checkpoints of an NNX model and its optimizer, verified on restore, with fallback.

Saves are atomic (orbax writes into a temporary directory and renames it when complete), so an
interrupted save leaves the previous checkpoint as the latest usable one. Each checkpoint's
metadata holds its step, the caller's ``metadata`` (the runner stores the run's config) and a
SHA-256 of every saved array, checked on restore. :meth:`Checkpointer.restore` tries the
checkpoints newest first: a damaged one (unreadable metadata, missing or truncated state files,
a checksum mismatch) is moved to ``<directory>.damaged/`` with a warning naming it, and the next
older one is used; when none is intact it raises :class:`CheckpointError`. A checkpoint of
another model (a leaf's shape or dtype differs, or a leaf is missing or extra) is not damage: it
raises :class:`CheckpointMismatchError` naming the leaf, and every checkpoint stays where it is.
Nor is a restore that fails for the target's sake (its arrays read back on their own, without
it, and match their checksum): that raises :class:`CheckpointError` and moves nothing.
"""

from __future__ import annotations

import hashlib
import json
import numbers
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

__all__ = ["Checkpointer", "CheckpointError", "CheckpointMismatchError"]


class CheckpointError(RuntimeError):
    """No intact checkpoint could be restored (every candidate is named in the message), or an
    intact one could not be restored into the given model and optimizer."""


class CheckpointMismatchError(ValueError):
    """The newest readable checkpoint holds another model or optimizer than the one restored
    into: the message names the leaf path, the checkpoint's shape and dtype and the model's.
    Nothing is moved aside (the checkpoints are intact)."""


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...] | None, str | None]]:
    """``{leaf path: (shape, dtype name)}`` of a state tree or of orbax's tree metadata (None
    where a leaf does not say)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for path, leaf in flat:
        shape = getattr(leaf, "shape", None)
        dtype = getattr(leaf, "dtype", None)
        out[_simple_path(path)] = (None if shape is None else tuple(int(d) for d in shape),
                    None if dtype is None else np.dtype(dtype).name)
    return out


def _simple_path(path: jax.tree_util.KeyPath) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _describe(spec: tuple[tuple[int, ...] | None, str | None]) -> str:
    shape, dtype = spec
    return f"shape {shape} {dtype or ''}".rstrip()


def _mismatch(stored: dict, target: dict) -> str | None:
    """The first difference between the checkpoint's leaves and the model's, in words."""
    missing = sorted(set(target) - set(stored))
    extra = sorted(set(stored) - set(target))
    for path in sorted(set(stored) & set(target)):
        (s_shape, s_dtype), (t_shape, t_dtype) = stored[path], target[path]
        if (s_shape is not None and t_shape is not None and s_shape != t_shape) or (
                s_dtype is not None and t_dtype is not None and s_dtype != t_dtype):
            return (f"leaf {path}: checkpoint {_describe(stored[path])}, model "
                    f"{_describe(target[path])}")
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"the model has leaves the checkpoint lacks ({', '.join(missing[:5])}"
                         + (", ..." if len(missing) > 5 else "") + ")")
        if extra:
            parts.append(f"the checkpoint has leaves the model lacks ({', '.join(extra[:5])}"
                         + (", ..." if len(extra) > 5 else "") + ")")
        return "; ".join(parts)
    return None


def _check_directory(directory: Path) -> None:
    """``directory`` must be a directory or creatable as one: no regular file at it or above."""
    for p in (directory, *directory.parents):
        if p.exists():
            if not p.is_dir():
                where = "is" if p == directory else f"is below {p}, which is"
                raise NotADirectoryError(
                    f"Checkpointer directory {directory} {where} not a directory")
            return


def _checksum(state: Any, paths: dict[str, str] | None = None) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes (a fixed, sorted order).

    ``paths``: ``{"a/0/b": "['a'][0]['b']"}``, the paths of the tree that was saved, for a
    ``state`` read back without a target (orbax then gives its int keys as strings).
    """
    h = hashlib.sha256()
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    keyed = [((paths or {}).get(_simple_path(p), jax.tree_util.keystr(p)), v) for p, v in flat]
    for path, leaf in sorted(keyed, key=lambda t: t[0]):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class Checkpointer:
    """Keep the ``max_to_keep`` newest ``(model, optimizer)`` checkpoints in ``directory``.

    Args:
      directory: where the checkpoints live (one sub-directory per step); created if missing.
        ``NotADirectoryError`` (at construction) if it, or a folder above it, is a regular file.
      every: :func:`mhe_jax.train.fit` saves every this many steps (None: only at the end).
      max_to_keep: an int ``>= 1``: older checkpoints are deleted (None: keep every one).
      metadata: JSON-able dict stored with every checkpoint (e.g. the run's config); checked
        at construction.
    """

    def __init__(self, directory: str | os.PathLike[str], *, every: int | None = None,
                 max_to_keep: int | None = 2, metadata: dict[str, Any] | None = None):
        if every is not None and (isinstance(every, (bool, np.bool_))
                                  or not isinstance(every, numbers.Integral) or every < 1):
            raise ValueError(f"every must be an int >= 1 or None, got {every!r}")
        if max_to_keep is not None and (isinstance(max_to_keep, (bool, np.bool_))
                                        or not isinstance(max_to_keep, numbers.Integral)
                                        or max_to_keep < 1):
            raise ValueError(
                f"max_to_keep must be an int >= 1 (None: keep every checkpoint), got "
                f"{max_to_keep!r}; 0 would keep nothing to resume from")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
        try:
            json.dumps(metadata or {})
        except (TypeError, ValueError) as e:
            raise TypeError(f"metadata must be JSON-able: {e}") from None
        self._directory = Path(directory).absolute()
        _check_directory(self._directory)
        self._every = None if every is None else int(every)
        self._metadata = dict(metadata or {})
        self._manager = ocp.CheckpointManager(
            self._directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=None if max_to_keep is None else int(max_to_keep), create=True),
        )

    @property
    def directory(self) -> Path:
        """The checkpoints' directory (absolute)."""
        return self._directory

    @property
    def every(self) -> int | None:
        """Steps between the saves of :func:`mhe_jax.train.fit` (None: only at the end)."""
        return self._every

    @staticmethod
    def _state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, Any]:
        return {"model": nnx.to_pure_dict(nnx.state(model)),
                "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}

    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
        """Write checkpoint ``step`` (blocks until it is complete on disk).

        In a multi-process run every process calls it (orbax's collective save: the global
        arrays are written shard by shard, each by a process that holds it, the metadata by
        process 0); the directory must be one that every process sees (a shared filesystem
        or a bucket).
        """
        state = self._state(model, optimizer)  # several processes: global arrays for orbax
        if jax.process_count() == 1:
            state = jax.device_get(state)
        host = _host_values(state)  # None: sharded over processes, no checksum
        meta = {**self._metadata, "step": int(step)}
        if host is not None:
            meta["checksum"] = _checksum(host)
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    metadata=ocp.args.JsonSave(meta)),
        )
        self._manager.wait_until_finished()

    def steps(self) -> list[int]:
        """Steps of the complete (renamed) checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

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
        warning; :class:`CheckpointError` if none is intact. A checkpoint whose leaves (paths,
        shapes, dtypes, read from orbax's metadata before any array) differ from ``model`` /
        ``optimizer``'s raises :class:`CheckpointMismatchError` naming the first difference,
        and moves nothing. A checkpoint that reads back on its own (and matches its checksum)
        but cannot be restored into ``model`` / ``optimizer`` (e.g. abstract arrays orbax
        refuses) raises :class:`CheckpointError` and is not moved either: only a checkpoint
        whose own files fail is set aside.
        """
        damaged: list[str] = []
        target = self._state(model, optimizer)
        for step in reversed(self.steps()):
            path = self._directory / str(step)
            try:
                meta = self._read_metadata(step)
            except Exception as e:  # noqa: BLE001 - any unreadable metadata means damaged
                damaged.append(self._quarantine(step, f"unreadable metadata ({_short(e)})"))
                continue
            if check is not None:
                check(step, meta)
            stored = self._stored_leaves(step)
            if stored is not None:
                difference = _mismatch(stored, _leaf_specs(target))
                if difference is not None:
                    raise CheckpointMismatchError(
                        f"checkpoint {path} holds another model or optimizer than the one "
                        f"restored into: {difference}. The checkpoints are intact and stay "
                        "where they are; restore into the model they were saved from, or "
                        "start over in another directory (CLI: --restart)")
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
                state = _host_values(restored["state"])  # None: sharded over processes
                if ("checksum" in meta and state is not None
                        and _checksum(state) != meta["checksum"]):
                    raise ValueError("the arrays do not match the checksum saved with them")
            except Exception as e:  # noqa: BLE001 - judged below: damage, or the target's
                why = self._damage(step, meta, target)
                if why is None:  # the files are sound: the failure is the restore target's
                    raise CheckpointError(
                        f"checkpoint {path} could not be restored into the given model / "
                        f"optimizer ({_short(e)}), though it is intact: its arrays read back "
                        "on their own" + (" and match the checksum saved with them"
                                          if "checksum" in meta else "")
                        + ". It stays where it is; restore into concrete (not abstract) "
                        "arrays laid out on this run's devices") from e
                damaged.append(self._quarantine(step, f"unreadable state ({_short(e)}; {why})"))
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
                f"no intact checkpoint in {self._directory}; damaged (moved aside): "
                + "; ".join(damaged) + ". Start over (CLI: --restart) or restore a backup.")
        return None

    def _stored_leaves(self, step: int) -> dict | None:
        """``{leaf path: (shape, dtype)}`` of checkpoint ``step`` from orbax's metadata (no
        array is read), or None when that metadata is unreadable (the restore then decides)."""
        try:
            tree = self._stored_tree(step)
            return _leaf_specs(tree) if isinstance(tree, dict) and tree else None
        except Exception:  # noqa: BLE001 - damage is judged by the restore that follows
            return None

    def _stored_tree(self, step: int) -> Any:
        """The tree of leaf metadata that orbax saved with checkpoint ``step``'s state."""
        md = ocp.StandardCheckpointer().metadata(self._directory / str(step) / "state")
        tree = getattr(md, "item_metadata", md)
        return getattr(tree, "tree", tree)

    def _damage(self, step: int, meta: dict[str, Any], target: Any) -> str | None:
        """Why checkpoint ``step``'s arrays are damaged, or None when they read back on their
        own (whole, as NumPy arrays: no restore target, no device layout) and match the
        checksum in ``meta`` (when it has one; ``target``, the tree restored into, gives the
        saved paths). A restore into a given model can fail for reasons of that model (e.g.
        orbax's layout checks); only this decides damage."""
        try:
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                self._stored_tree(step))
            with ocp.PyTreeCheckpointer() as reader:
                arrays = reader.restore(self._directory / str(step) / "state",
                                        args=ocp.args.PyTreeRestore(restore_args=args))
        except Exception as e:  # noqa: BLE001 - unreadable on its own: damaged
            return f"its arrays do not read back on their own: {_short(e)}"
        paths = {_simple_path(p): jax.tree_util.keystr(p)
                 for p, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
        if "checksum" in meta and _checksum(arrays, paths) != meta["checksum"]:
            return "its arrays do not match the checksum saved with them"
        return None

    def _read_metadata(self, step: int) -> dict[str, Any]:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        meta = restored["metadata"]
        if not isinstance(meta, dict) or meta.get("step", step) != step:
            raise ValueError(f"metadata is not this checkpoint's: {str(meta)[:80]!r}")
        return dict(meta)

    def _quarantine(self, step: int, why: str) -> str:
        """Move checkpoint ``step`` out of the manager's way (kept for inspection); warn.
        With several processes, process 0 moves it while the others wait."""
        src = self._directory / str(step)
        dst_dir = self._directory.with_name(self._directory.name + ".damaged")
        dst = dst_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}"
        several = jax.process_count() > 1
        if several:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mhe_jax quarantine {step} (read)")
        if jax.process_index() == 0:
            dst_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), str(dst))
        if several:
            multihost_utils.sync_global_devices(f"mhe_jax quarantine {step} (moved)")
        self._manager.reload()
        message = f"checkpoint {src} is damaged: {why}; moved to {dst}"
        warnings.warn(message + "; falling back to an older one", RuntimeWarning, stacklevel=3)
        return message

    def close(self) -> None:
        """Close the underlying orbax ``CheckpointManager`` (also on leaving a ``with`` block)."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _host_values(state: Any) -> Any | None:
    """``state`` on the host when this process can read every leaf whole (replicated or local
    arrays, as data parallelism gives), else None (a sharded state: no checksum)."""
    leaves = jax.tree.leaves(state)
    if all(not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated
           for a in leaves):
        return jax.device_get(state)
    return None


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) < 200 else text[:200] + "..."
