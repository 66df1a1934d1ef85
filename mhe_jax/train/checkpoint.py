"""Orbax checkpoints of an NNX model and its optimizer, with resume.

Saves are atomic (orbax writes into a temporary directory and renames it when complete), so an
interrupted save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

from pathlib import Path

import flax.nnx as nnx
import orbax.checkpoint as ocp


class Checkpointer:
    """Keep the ``max_to_keep`` most recent ``(model, optimizer, metadata)`` checkpoints."""

    def __init__(self, directory, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    @staticmethod
    def _state(model, optimizer):
        return {"model": nnx.to_pure_dict(nnx.state(model)),
                "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}

    def save(self, step: int, model, optimizer, metadata: dict | None = None) -> None:
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(self._state(model, optimizer)),
                metadata=ocp.args.JsonSave(metadata or {}),
            ),
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, model, optimizer, step: int | None = None) -> tuple[int, dict] | None:
        """Load ``step`` (default: latest) into ``model``/``optimizer``; None if there is none."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(self._state(model, optimizer)),
                metadata=ocp.args.JsonRestore(),
            ),
        )
        for obj, pure in ((model, restored.state["model"]), (optimizer, restored.state["optimizer"])):
            state = nnx.state(obj)
            nnx.replace_by_pure_dict(state, pure)
            nnx.update(obj, state)
        return int(step), dict(restored.metadata or {})

    def close(self) -> None:
        self.manager.close()
