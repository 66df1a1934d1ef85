"""Command line: ``python -m mhe_jax.experiments {quickstart,fig4,study,list,run,report} ...``.

A mistake in the command (an unknown config, a bad ``--set``, missing data) prints one line to
stderr saying what was wrong and how to fix it, and exits with status 2; ``--debug`` shows the
traceback instead.

``run``, ``quickstart`` and ``study`` also run as several processes (one per host or
accelerator, each started with the same command): ``--distributed`` takes the settings from
the cluster (SLURM, Open MPI, TPU pod, Kubernetes; ``jax.distributed.initialize()``), or
``--coordinator HOST:PORT --num-processes N --process-id I`` (or the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) give them. Process 0
alone writes the runs' logs, results, reports and figures; all save the checkpoints.
"""

from __future__ import annotations

import argparse
import difflib
import fnmatch
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Literal

ResumeMode = Literal["auto", "force", "restart"]
EXIT_USAGE = 2
DATA_DIR_KEY = "data.data_dir"  # the --set key of the data location


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


def _command_line() -> str:
    return "python -m mhe_jax.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _configs():
    from mhe_jax.experiments.configs import CONFIGS

    return CONFIGS


def _suggest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.6)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    return "see `python -m mhe_jax.experiments list`"


def config_for(name: str, overrides=()):
    """The named config with ``overrides`` applied; a :class:`UsageError` naming what is wrong."""
    from mhe_jax.experiments import configs as C

    if name not in C.CONFIGS:
        raise UsageError(f"unknown config {name!r}: {_suggest(name, C.CONFIGS)}")
    cfg = C.get_config(name)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.05")
    if not overrides:
        return cfg
    user_errors = tuple(e for e in (getattr(C, "ConfigError", None), ValueError, KeyError,
                                    TypeError) if e is not None)
    try:
        return C.apply_overrides(cfg, list(overrides))
    except user_errors as e:
        msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
        keys = [item.split("=", 1)[0].strip() for item in overrides]
        named = any(k in msg for k in keys) or any(k.rsplit(".", 1)[-1] in msg for k in keys)
        raise UsageError(f"--set: {msg}" if named else
                         f"--set {' '.join(overrides)}: {msg}") from e
    return cfg


def _data_error(e: BaseException) -> UsageError:
    msg = " ".join(str(e).split())
    return UsageError(f"{msg} — fix: point the run at the data with --set {DATA_DIR_KEY}=PATH")


def _check_out(path, option: str = "--out", *, file: bool = False) -> Path:
    """``path`` as the folder (``file``: the file) a command writes to: a :class:`UsageError`
    naming ``option`` if it, or a folder above it, is a regular file (or, for ``file``, if it
    is a folder), before anything runs."""
    p = Path(path)
    if file and p.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name, e.g. {p / 'out'}")
    for q in (p.parent,) if file else (p,):
        for above in (q, *q.parents):
            if above.exists():
                if not above.is_dir():
                    if file:
                        raise UsageError(f"{option} {path}: {above} is a file, not a folder, "
                                         f"so it cannot hold {p.name}; give another path")
                    where = "is a file" if above == p else f"is below {above}, which is a file"
                    raise UsageError(f"{option} {path}: {where}, not a folder; give a folder")
                break
    return p


def _check_json_files(root, names=("config.json", "results.json")) -> None:
    """Every ``config.json`` / ``results.json`` of the run folders under ``root`` (or ``root``
    itself, a file) parses as JSON: else a :class:`UsageError` naming the file."""
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = [f for name in names for f in sorted(root.rglob(name))
                 if "checkpoints" not in f.relative_to(root).parts]
    else:
        return
    for f in files:
        try:
            json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            detail = (f"{e.msg} at line {e.lineno} column {e.colno}"
                      if isinstance(e, json.JSONDecodeError) else type(e).__name__)
            raise UsageError(
                f"{f} is not valid JSON ({detail}): it is damaged (e.g. cut short by a killed "
                f"write); restore it, or delete the run folder {f.parent} to run it again"
            ) from e


# --------------------------------------------------------------------------- several processes

_PROCESS_FLAGS = {"coordinator": "--coordinator", "num_processes": "--num-processes",
                  "process_id": "--process-id", "detect": "--distributed"}


def _process_settings(args):
    """The checked multi-process settings of the command (None: one process); a
    :class:`UsageError` naming the flag or environment variable. Nothing connects yet."""
    if not hasattr(args, "coordinator"):  # a command without the options (list, report, fig4)
        return None
    from mhe_jax.train.distributed import process_settings

    try:
        settings = process_settings(args.coordinator, args.num_processes, args.process_id,
                                    detect=args.distributed, names=_PROCESS_FLAGS)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if settings is not None and getattr(args, "workers", 1) > 1:
        raise UsageError(f"--workers {args.workers} with several processes: a multi-process "
                         "study trains one run at a time over all of them; give --workers 1")
    return settings


def _start_processes(args) -> bool:
    """Start the distributed runtime when the command asks for several processes (after the
    command's own checks, before anything uses JAX); True in the process that writes the
    files (process 0, or the only one)."""
    settings = getattr(args, "process_settings", None)
    if settings is None:
        return True
    import jax

    if not getattr(args, "processes_started", False):
        from mhe_jax.train.distributed import DistributedError, initialize_distributed

        try:
            initialize_distributed(settings, names=_PROCESS_FLAGS)
        except DistributedError as e:
            where = ("--distributed" if settings.detect
                     else f"--coordinator {settings.coordinator}")
            raise UsageError(f"{where}: {e}") from None
        args.processes_started = True
    return jax.process_index() == 0


def _run(name, overrides, out_dir, progress, resume: ResumeMode = "auto",
         steps_per_call: int | Literal["auto"] = 1):
    from mhe_jax.experiments.runner import run

    cfg = config_for(name, overrides)
    out = Path(out_dir)
    return run(cfg, out, progress=progress, resume=resume, command=_command_line(),
               steps_per_call=steps_per_call), out


def _steps_per_call(text: str) -> int | Literal["auto"]:
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"--steps-per-call {text!r}: expected an integer >= 1 or 'auto'")
    return value


def steps_per_call_option(parser) -> None:
    parser.add_argument("--steps-per-call", default="1", metavar="K",
                        help="train K steps per jitted call (lax.scan; for GPU/TPU, where a "
                             "small model's step is as short as its Python dispatch), or "
                             "'auto': the largest divisor of the logging intervals up to 100")


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"{what} {text!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not values:
        raise UsageError(f"{what} is empty: give at least one, e.g. 0")
    return values


def _layer_shapes(model) -> dict[str, tuple[int, int]]:
    """``{log path: (neurons, dim)}`` of every kernel of an NNX model (the optimum needs both)."""
    import flax.nnx as nnx
    import jax
    import numpy as np

    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    out = {}
    for kp, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
        path = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        if path.endswith("kernel") and np.ndim(leaf) >= 2:
            out[path] = (int(leaf.shape[-1]), int(np.prod(leaf.shape[:-1])))
    return out


def cmd_quickstart(args):
    """Baseline vs MHE vs half-space MHE on the embedded digits data (default: CNN-9 16/32/64)."""
    from mhe_jax.experiments import report
    from mhe_jax.experiments.study import load_run, run_metrics

    seeds = _parse_ints(args.seeds, "--seeds")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: expected an integer >= 1 (leave it out for the "
                         "config's steps)")
    _check_out(args.out)
    steps = (config_for("quickstart/baseline").optim.steps if args.steps is None
             else args.steps)
    # ~20 energy records per run, so the figure shows how the angles move (the user's --set wins)
    overrides = [f"logging.energy_every={max(1, steps // 20)}", *args.set,
                 *([f"optim.steps={args.steps}"] if args.steps is not None else [])]
    names = [f"quickstart/{m}" for m in ("baseline", "mhe", "half_mhe")]
    cfgs = {(n, s): config_for(n, [*overrides, f"seed={s}"]) for s in seeds for n in names}
    from mhe_jax.experiments.runner import run

    writes = _start_processes(args)  # several processes: process 0 alone prints and writes
    rows, runs, shapes = [], [], {}
    for seed in seeds:
        for name in names:
            label = name if len(seeds) == 1 else f"{name} seed {seed}"
            seed_dir = f"seed{seed}" if len(seeds) > 1 else ""
            out = Path(args.out) / "quickstart" / seed_dir / name.split("/")[1]
            if writes:
                print(f"{label}: loading data, building and compiling the model ...",
                      file=sys.stderr, flush=True)
            r = run(cfgs[name, seed], out, progress=not args.no_progress, resume="restart",
                    command=_command_line())
            if not writes:
                continue
            shapes = shapes or _layer_shapes(r["model"])
            run_ = load_run(out)
            runs.append(run_)
            rows.append((name.split("/")[1], seed, run_metrics(run_, use_checkpoint=False),
                         r["train_seconds"]))
    if not writes:
        return
    # what ran, from the config (a --set model.widths=... shows here) and where: CPU results
    # differ between machines in the last digits, so the numbers travel with the machine
    import platform

    import jax

    cfg = cfgs[names[0], seeds[0]]
    arch = cfg.model.arch.rstrip("0123456789").upper() + "-" + cfg.model.arch.lstrip(
        "abcdefghijklmnopqrstuvwxyz")
    model = f"{arch} {'/'.join(map(str, cfg.model.widths))}"
    data = "sklearn digits" if cfg.data.dataset == "digits" else cfg.data.dataset
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n{data} ({cfg.data.image_size}x{cfg.data.image_size}), {model}, official "
          f"loss/optimizer, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}:")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs ({usable} usable by this process), "
          f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
          f"jax {jax.__version__}, backend {jax.default_backend()} "
          f"({', '.join(str(d) for d in jax.devices())}"
          f"{f' in {jax.process_count()} processes' if jax.process_count() > 1 else ''})")
    print(f"{'method':<9} {'seed':>4} {'test acc. (%)':>13} {'hidden energy':>13} "
          f"{'hidden min angle':>16} {'classifier min angle':>20} {'train time':>10}")
    def cell(v, fmt, width):
        return f"{'—' if math.isnan(v) else format(v, fmt):>{width}}"

    for method, seed, m, sec in rows:
        print(f"{method:<9} {seed:>4} {cell(100 - m['test_error'], '.2f', 13)} "
              f"{cell(m['hidden_energy'], '.5f', 13)} {cell(m['hidden_min_angle'], '.2f', 15)}° "
              f"{cell(m['classifier_min_angle'], '.2f', 19)}° {sec:>7.1f} sec")
    print("energy: full-space Riesz energy with exponent 2, mean over neuron pairs (lower = more "
          "spread), mean over the hidden layers; min angle: smallest angle between two neurons, "
          "mean over the hidden layers")
    if any(math.isnan(m["hidden_energy"]) for _, _, m, _ in rows):
        print("—: the run logged its hidden layers' half-space energy only, which is not "
              "comparable with the others' full-space energy")
    png = report.plot_quickstart(runs, Path(args.out) / "quickstart" / "quickstart.png",
                                 layer_shapes=shapes,
                                 title=f"quickstart: {cfg.data.dataset}, {model} — "
                                       "MHE spreads the neurons")
    print(f"plot: {png}")


def cmd_fig4(args):
    """Fig. 4: class imbalance, with vs without output MHE, several seeds, table + plot."""
    from mhe_jax.experiments.fig4 import run_fig4

    seeds = _parse_ints(args.seeds, "--seeds")
    _check_out(args.out)
    for method in ("baseline", "mhe_output"):
        config_for(f"{args.configs}/{method}", [*args.set, f"seed={seeds[0]}"])  # check early
    result = run_fig4(args.configs, seeds, args.out, overrides=args.set,
                      progress=not args.no_progress, command=_command_line())
    print(result["table"])
    print(f"plot: {Path(args.out) / 'fig4.png'}")


def cmd_study(args):
    """A seeds × methods grid of <configs>/<method>: run (skip finished, resume unfinished),
    report."""
    from mhe_jax.experiments import report, study

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise UsageError("--methods is empty: give e.g. --methods baseline,mhe")
    if args.baseline not in methods:  # checked before anything trains
        raise UsageError(f"--baseline {args.baseline!r} is not one of --methods "
                         f"{','.join(methods)}: the differences are taken to one of them")
    if args.report_out is not None:
        _check_out(args.report_out, "--report-out")
    if args.report_only:
        if args.process_settings is not None:
            raise UsageError("--report-only trains nothing: run it as one process, without "
                             "--distributed, --coordinator, --num-processes, --process-id")
        runs_dir = Path(args.runs if args.runs is not None else args.out)
        if not runs_dir.is_dir():
            raise UsageError(f"--runs {runs_dir}: no such folder; give the study's --out folder")
        _check_json_files(runs_dir)
        try:
            summary = report.write_report(runs_dir, args.report_out or runs_dir,
                                          methods=methods, baseline=args.baseline, paper=True)
        except (FileNotFoundError, ValueError) as e:  # nothing (finished) to report on
            raise UsageError(f"{e}: give the study's --out folder as --runs, or --methods "
                             "that it ran") from e
    else:
        if args.runs:
            raise UsageError("--runs is only for --report-only; the grid runs into --out")
        seeds = _parse_ints(args.seeds, "--seeds")
        k = _steps_per_call(args.steps_per_call)
        try:
            study.split_cpus(args.workers)
        except ValueError as e:
            raise UsageError(f"--workers: {e}") from None
        for m in methods:  # every config and override checked before anything trains
            config_for(f"{args.configs}/{m}", [*args.set, f"seed={seeds[0]}"])
        _check_out(args.out)
        _check_json_files(args.out)
        command = _command_line()
        writes = _start_processes(args)
        study.run_study(args.configs, methods, seeds, args.out, overrides=args.set,
                        progress=not args.no_progress, command=command,
                        config_for=config_for, workers=args.workers, steps_per_call=k)
        if not writes:  # the report is process 0's
            return
        summary = report.write_report(
            args.out, args.report_out or args.out, methods=methods, baseline=args.baseline,
            title=f"Study: {args.configs}, seeds {', '.join(map(str, seeds))}", command=command,
            paper=True)
    print(summary["markdown"])
    for f in summary["files"]:
        print(f"wrote {f}")


def cmd_list(args):
    configs = _configs()
    names = [n for n in configs if fnmatch.fnmatch(n, args.pattern)]
    if not names:
        raise UsageError(f"no config matches {args.pattern!r}: {_suggest(args.pattern, configs)} "
                         "(patterns are globs, e.g. 'table1/*')")
    for name in names:
        paper = configs[name].paper.get("value")
        print(f"{name:<40} paper: {paper}")


def cmd_run(args):
    configs = _configs()
    is_glob = any(ch in args.name for ch in "*?[")
    names = [n for n in configs if fnmatch.fnmatch(n, args.name)] if is_glob else [args.name]
    if not names:
        raise UsageError(f"no config matches {args.name!r}: {_suggest(args.name, configs)}")
    for name in names:  # check every config and override before training the first
        config_for(name, args.set)
    if args.restart and args.resume_anyway:
        raise UsageError("--restart and --resume-anyway contradict each other: give one")
    resume: ResumeMode = ("restart" if args.restart else
                          "force" if args.resume_anyway else "auto")
    k = _steps_per_call(args.steps_per_call)
    _check_out(args.out)
    writes = _start_processes(args)  # several processes: process 0 alone prints and writes
    for name in names:
        r, out = _run(name, args.set, Path(args.out) / name, not args.no_progress, resume=resume,
                      steps_per_call=k)
        if writes:
            paper = (r.get("paper") or {}).get("value")
            print(f"{name}: test error {r['test_error']:.2f} % (paper: "
                  f"{'—' if paper is None else f'{paper} %'}) -> {out}")


def cmd_report(args):
    from mhe_jax.experiments import report

    for p in args.runs:
        if not Path(p).exists():
            raise UsageError(f"{p}: no such file or folder; give run folders (with results.json)")
    if args.out:
        _check_out(args.out, "--out", file=True)
    if args.plot:
        _check_out(args.plot, "--plot", file=True)
    for p in args.runs:
        _check_json_files(p, names=("results.json",))
    results = report.collect(args.runs)
    if not results:
        raise UsageError(f"no results.json under {', '.join(args.runs)}: give finished run folders")
    table = report.markdown_table(results)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    if args.plot:
        print("plot:", report.plot_runs([r["run_dir"] for r in results], args.plot))


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    p = argparse.ArgumentParser(prog="python -m mhe_jax.experiments", description=__doc__,
                                parents=[common])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        sp.set_defaults(fn=fn)
        return sp

    def set_option(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field by its dotted name, e.g. --set "
                             "optim.steps=100 --set optim.lr=0.05 --set data.batch_size=64 "
                             "(repeatable; the fields: see configs.py or a run's config.json)")

    def no_progress_option(sp):
        sp.add_argument("--no-progress", action="store_true",
                        help="no progress bar (e.g. for logs and CI)")

    def process_options(sp):
        g = sp.add_argument_group(
            "several processes",
            "Start every process with the same command (one per host or accelerator). "
            "Process 0 alone writes the logs, results, reports and figures; all of them save "
            "the checkpoints, so --out must be a folder every process sees. The global batch "
            "is the single-process run's (data.batch_size a multiple of the number of "
            "devices), each process loading its own rows of it.")
        g.add_argument("--distributed", action="store_true",
                       help="start JAX's distributed runtime with the settings of the cluster "
                            "(SLURM, Open MPI, TPU pod, Kubernetes: jax.distributed."
                            "initialize()) for those not given below")
        g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0 and a free port, the same in every process "
                            "(default: $JAX_COORDINATOR_ADDRESS)")
        g.add_argument("--num-processes", default=None, metavar="N",
                       help="how many processes (default: $JAX_NUM_PROCESSES)")
        g.add_argument("--process-id", default=None, metavar="I",
                       help="this process's id, 0..N-1; 0 writes the files (default: "
                            "$JAX_PROCESS_ID)")

    q = add("quickstart", cmd_quickstart, cmd_quickstart.__doc__)
    q.add_argument("--out", default="runs", metavar="DIR",
                   help="runs go to DIR/quickstart/<method> (DIR/quickstart/seed<S>/<method> "
                        "with several seeds), the figure to DIR/quickstart/quickstart.png "
                        "(default: runs)")
    q.add_argument("--steps", type=int, default=None, metavar="N",
                   help="training steps of each run, an integer >= 1 (default: the config's, "
                        "200); the same as --set optim.steps=N")
    q.add_argument("--seeds", default="0", metavar="S,...",
                   help="comma-separated seeds: each trains the three methods once, e.g. 0,1,2 "
                        "(default: 0)")
    set_option(q)
    no_progress_option(q)
    process_options(q)
    f4 = add("fig4", cmd_fig4, cmd_fig4.__doc__)
    f4.add_argument("--configs", default="repro/fig4_digits",
                    help="prefix of <prefix>/baseline, <prefix>/mhe_output")
    f4.add_argument("--seeds", default="0,1,2", metavar="S,...",
                    help="comma-separated seeds, e.g. 0,1,2 (default)")
    f4.add_argument("--out", default="runs/fig4", metavar="DIR",
                    help="the runs, the table and fig4.png go to DIR (default: runs/fig4)")
    set_option(f4)
    no_progress_option(f4)
    st = add("study", cmd_study, cmd_study.__doc__)
    st.add_argument("--configs", default="repro/cifar10_small",
                    help="prefix: runs <prefix>/<method> for each method")
    st.add_argument("--methods", default="baseline,mhe,half_mhe")
    st.add_argument("--seeds", default="0,1,2", metavar="S,...",
                    help="comma-separated seeds, each runs every method (default: 0,1,2)")
    st.add_argument("--baseline", default="baseline",
                    help="the method (one of --methods) the differences are taken to")
    st.add_argument("--workers", type=int, default=1,
                    help="train this many runs at once, each pinned to its share of the CPUs "
                         "(on a CPU-only machine 2 single-core runs train ~1.4x faster than one "
                         "run on 2 cores)")
    st.add_argument("--out", default="runs/cifar10_small",
                    help="runs go to <out>/seed<S>/<prefix>/<method>; the report to <out>")
    st.add_argument("--report-only", action="store_true",
                    help="train nothing: collect the runs under --runs (default --out) and report")
    st.add_argument("--runs", default=None, help="with --report-only: the folder of the runs")
    st.add_argument("--report-out", default=None,
                    help="where study.md and the PNGs go (default: the runs folder)")
    set_option(st)
    steps_per_call_option(st)
    no_progress_option(st)
    process_options(st)
    ls = add("list", cmd_list, "list named configs (glob pattern)")
    ls.add_argument("pattern", nargs="?", default="*")
    r = add("run", cmd_run, "run a named config (or a glob of them)")
    r.add_argument("name")
    set_option(r)
    r.add_argument("--out", default="runs", metavar="DIR",
                   help="the run goes to DIR/<name> (default: runs)")
    steps_per_call_option(r)
    r.add_argument("--restart", action="store_true",
                   help="start from step 0, deleting the run's checkpoints and log")
    r.add_argument("--resume-anyway", action="store_true",
                   help="resume from the checkpoint even if the config changed (the model's "
                        "shapes must still match the checkpoint's)")
    no_progress_option(r)
    process_options(r)
    rep = add("report", cmd_report, "markdown table (+ plot) of finished runs")
    rep.add_argument("runs", nargs="+", help="run folders (or folders above them, or "
                     "results.json files)")
    rep.add_argument("--out", default=None, metavar="FILE",
                     help="also write the markdown table to FILE")
    rep.add_argument("--plot", default=None, metavar="PNG",
                     help="also plot the runs' curves to PNG")
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix (one line, exit 2), beyond :class:`UsageError`."""
    from mhe_jax import data as D

    errors: list[type[BaseException]] = [D.DatasetNotFoundError, D.DownloadError,
                                         D.CorruptDataError, D.DatasetLayoutError]
    try:  # the checkpoint errors: a damaged run folder, or a model of another shape
        from mhe_jax.train import CheckpointError, CheckpointMismatchError

        errors += [CheckpointError, CheckpointMismatchError]
    except ImportError:  # no flax (the [models] extra): no checkpoints either
        pass
    from mhe_jax.experiments import configs as C

    if getattr(C, "ConfigError", None) is not None:
        errors.append(C.ConfigError)
    return tuple(errors)


def _quiet_broken_pipe() -> None:
    """After EPIPE (``list | head``): point stdout at /dev/null so the exit flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (e.g. captured in tests)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; user errors raise ``SystemExit(2)`` after one line."""
    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        args.process_settings = _process_settings(args)  # checked before anything runs
        args.fn(args)
        sys.stdout.flush()
        if getattr(args, "processes_started", False):  # every process got here: leave together
            import jax

            jax.distributed.shutdown()
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except UsageError as e:
        if debug:
            raise
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 — sorted into user errors and bugs below
        if debug:
            raise
        if isinstance(e, _user_errors()):
            from mhe_jax import data as D

            is_data = isinstance(e, (D.DatasetNotFoundError, D.DownloadError))
            _fail(str(_data_error(e)) if is_data else " ".join(str(e).split()))
        raise
    return 0


def _fail(message: str) -> None:
    print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
