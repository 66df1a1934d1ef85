"""Execute notebooks in smoke mode and report per-cell timings (a development helper).

    python notebooks/_smoke.py                      # all four, smoke mode
    python notebooks/_smoke.py 03 --full            # one notebook, full mode
    python notebooks/_smoke.py --out /tmp/nbrun     # keep executed copies and figures there

Executed copies (with outputs) go to ``--out`` (default: a temp dir), never into notebooks/,
which holds stripped notebooks only. Uses the current interpreter's ``python3`` kernel and puts
the repository on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def _seconds(cell) -> float | None:
    ex = cell.get("metadata", {}).get("execution", {})
    a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (a and b):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help="notebook name prefixes (default: all)")
    ap.add_argument("--full", action="store_true", help="full mode (no MHE_JAX_SMOKE)")
    ap.add_argument("--out", default=None, help="directory for executed copies and figures")
    ap.add_argument("--kernel", default="python3")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="mhe_jax_nb_"))
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in HERE.glob("[0-9]*.ipynb")
                   if not args.which or any(p.name.startswith(w) for w in args.which))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    env.pop("MHE_JAX_SMOKE", None)
    if not args.full:
        env["MHE_JAX_SMOKE"] = "1"
    env.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")  # much faster CPU compiles of model inits
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    total = 0.0
    for name in names:
        nb = nbformat.read(HERE / name, as_version=4)
        env["MHE_JAX_NOTEBOOK_OUT"] = str(out / Path(name).stem)
        t0 = time.perf_counter()
        client = nbclient.NotebookClient(nb, timeout=3600, kernel_name=args.kernel,
                                         resources={"metadata": {"path": str(HERE)}})
        try:
            client.execute(env=env)
        finally:
            nbformat.write(nb, out / name)
        dt = time.perf_counter() - t0
        total += dt
        cells = [(i, _seconds(c)) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        print(f"{name}: {dt:.1f} s; per code cell: "
              + ", ".join(f"[{i}] {s:.1f}" for i, s in cells if s is not None), flush=True)
    print(f"total {total:.1f} s; executed notebooks and figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
