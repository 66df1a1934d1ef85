"""Child of tests/test_multiprocess_cli.py: ``python -m mhe_jax.experiments ARGS...`` as is,
recording what it writes and which rows of each batch it loads.

Usage: ``python tests/_multiprocess_cli_child.py RECORD.json ARGS...``. An audit hook
(``sys.addaudithook``) notes every path that Python opens for writing, creates, removes or
renames; ``DataParallel.process_rows`` is wrapped to note the rows of each global batch size
this process loads. At exit (also on an error) both go to ``RECORD.json``, which must lie
outside the command's ``--out``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

RECORD, ARGS = sys.argv[1], sys.argv[2:]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1),
                "shutil.rmtree": (0,), "os.truncate": (0,), "os.symlink": (1,), "os.link": (1,)}
writes: list[list[str]] = []
rows: dict[str, list[int]] = {}
recording = True


def _path(p) -> str | None:
    if isinstance(p, int) or p is None:
        return None
    return os.path.abspath(os.fsdecode(p))


def _hook(event: str, args: tuple) -> None:
    if not recording:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None))[:3]
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else bool((flags or 0) & _WRITE_FLAGS))
        if writing and (p := _path(path)) is not None:
            writes.append([event, p])
    elif event in _PATH_EVENTS:
        for i in _PATH_EVENTS[event]:
            if (p := _path(args[i])) is not None:
                writes.append([event, p])


def _record_rows() -> None:
    from mhe_jax.train import DataParallel  # imports jax; its backend starts later, in the CLI

    original = DataParallel.process_rows

    def process_rows(self, batch_size):
        out = original(self, batch_size)
        rows.setdefault(str(batch_size), [int(r) for r in out])
        return out

    DataParallel.process_rows = process_rows  # type: ignore[method-assign]


_record_rows()
sys.addaudithook(_hook)
sys.argv = ["python -m mhe_jax.experiments", *ARGS]
code: int | str | None = 0
try:
    runpy.run_module("mhe_jax.experiments", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
finally:
    recording = False
    with open(RECORD, "w") as f:
        json.dump({"writes": writes, "rows": rows, "code": code}, f)
sys.exit(code)
