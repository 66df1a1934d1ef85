"""Command line: ``python -m mhe_jax.experiments {quickstart,fig4,list,run,report} ...``."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path

from mhe_jax.experiments import report
from mhe_jax.experiments.configs import CONFIGS, apply_overrides, get_config


def _run(name, overrides, out_root, progress, resume=True):
    from mhe_jax.experiments.runner import run

    cfg = apply_overrides(get_config(name), overrides)
    out = Path(out_root) / name
    command = "python -m mhe_jax.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return run(cfg, out, progress=progress, resume=resume, command=command), out


def cmd_quickstart(args):
    """Baseline vs MHE vs half-space MHE on the embedded digits data (CNN-9 16/32/64)."""
    rows, dirs = [], []
    for method in ("baseline", "mhe", "half_mhe"):
        overrides = list(args.set) + ([f"steps={args.steps}"] if args.steps else [])
        r, out = _run(f"quickstart/{method}", overrides, args.out, not args.no_progress, resume=False)
        layers = r["final_layers"] or {}
        hidden = [v for k, v in layers.items() if not k.startswith("classifier")]
        rows.append((method, r["test_accuracy"], sum(v["energy"] for v in hidden) / max(len(hidden), 1),
                     min((v["min_angle_deg"] for v in hidden), default=float("nan")), r["train_seconds"]))
        dirs.append(out)
    print("\nsklearn digits (32x32), CNN-9 16/32/64, official loss/optimizer, same seed:")
    print(f"{'method':<10} {'test acc':>9} {'hidden E (s=2)':>15} {'min angle':>10} {'train s':>8}")
    for method, acc, e, angle, sec in rows:
        print(f"{method:<10} {100 * acc:>8.2f}% {e:>15.4f} {angle:>9.1f}° {sec:>8.1f}")
    png = report.plot_runs(dirs, Path(args.out) / "quickstart" / "quickstart.png",
                           title="quickstart: digits, CNN-9 16/32/64")
    print(f"plot: {png}")


def cmd_fig4(args):
    """Fig. 4: class imbalance, with vs without output MHE, several seeds, table + plot."""
    from mhe_jax.experiments.fig4 import run_fig4

    seeds = [int(v) for v in args.seeds.split(",") if v]
    command = "python -m mhe_jax.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run_fig4(args.configs, seeds, args.out, overrides=args.set, progress=not args.no_progress,
                      command=command)
    print(result["table"])
    print(f"plot: {Path(args.out) / 'fig4.png'}")


def cmd_list(args):
    for name in CONFIGS:
        if fnmatch.fnmatch(name, args.pattern):
            paper = CONFIGS[name].paper.get("value")
            print(f"{name:<40} paper: {paper}")


def cmd_run(args):
    names = [n for n in CONFIGS if fnmatch.fnmatch(n, args.name)] or [args.name]
    for name in names:
        r, out = _run(name, args.set, args.out, not args.no_progress, resume=not args.restart)
        print(f"{name}: test error {r['test_error']:.2f}% (paper: {r['paper'].get('value')}) -> {out}")


def cmd_report(args):
    results = report.collect(args.runs)
    if not results:
        sys.exit(f"no results.json under {args.runs}")
    table = report.markdown_table(results)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    if args.plot:
        print("plot:", report.plot_runs([r["run_dir"] for r in results], args.plot))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mhe_jax.experiments", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quickstart", help=cmd_quickstart.__doc__)
    q.add_argument("--out", default="runs")
    q.add_argument("--steps", type=int, default=None)
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(fn=cmd_quickstart)
    f4 = sub.add_parser("fig4", help=cmd_fig4.__doc__)
    f4.add_argument("--configs", default="repro/fig4_digits", help="prefix of <prefix>/baseline, <prefix>/mhe_output")
    f4.add_argument("--seeds", default="0,1,2")
    f4.add_argument("--out", default="runs/fig4")
    f4.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f4.add_argument("--no-progress", action="store_true")
    f4.set_defaults(fn=cmd_fig4)
    ls = sub.add_parser("list", help="list named configs (glob pattern)")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.set_defaults(fn=cmd_list)
    r = sub.add_parser("run", help="run a named config (or a glob of them)")
    r.add_argument("name")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    r.add_argument("--out", default="runs")
    r.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)
    rep = sub.add_parser("report", help="markdown table (+ plot) of finished runs")
    rep.add_argument("runs", nargs="+")
    rep.add_argument("--out", default=None)
    rep.add_argument("--plot", default=None)
    rep.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
