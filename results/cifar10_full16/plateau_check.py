"""The pre-registered plateau check (README.md): reads ONLY the batch losses of a run's log.

    python results/cifar10_full16/plateau_check.py RUN_DIR [--window 500] [--tolerance 0.02]

Compares the mean logged batch loss over the last ``window`` steps with that over the
``window`` steps before; prints both, the relative change and the decision. It never reads a
test-set number (the log's ``test_*`` records are skipped).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--tolerance", type=float, default=0.02)
    args = ap.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    steps = int(config["optim"]["steps"])
    losses = []
    for line in (args.run_dir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record and "layers" not in record:  # batch records only
            losses.append((int(record["step"]), float(record["loss"])))
    if not (args.run_dir / "results.json").exists() or not losses:
        raise SystemExit(f"{args.run_dir}: the run has not finished (no results.json)")
    last = [v for s, v in losses if steps - args.window < s <= steps]
    before = [v for s, v in losses if steps - 2 * args.window < s <= steps - args.window]
    a, b = statistics.fmean(last), statistics.fmean(before)
    change = (a - b) / b
    print(f"mean batch loss, steps {steps - 2 * args.window + 1}-{steps - args.window}: {b:.4f} "
          f"({len(before)} records)")
    print(f"mean batch loss, steps {steps - args.window + 1}-{steps}: {a:.4f} ({len(last)} records)")
    print(f"relative change: {100 * change:+.2f} % (tolerance ±{100 * args.tolerance:g} %)")
    print("plateau: keep the length" if abs(change) < args.tolerance
          else "no plateau: double the length")


if __name__ == "__main__":
    main()
