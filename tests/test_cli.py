"""The command line: one-line errors (exit 2), --debug tracebacks, list, report, resume flags."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading

import jax
import pytest

from mhe_jax.experiments.__main__ import main as cli

TINY = ["data.image_size=8", "model.widths=4,4,8", "data.batch_size=32", "optim.steps=4",
        "optim.boundaries=3", "optim.warmup_steps=0", "logging.log_every=1",
        "logging.energy_every=2", "logging.eval_every=none", "logging.checkpoint_every=none"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _user_error(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exc:
        cli(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if not line.startswith("Downloading ")]
    assert len(lines) == 1, err  # (a download's progress note from pooch may precede it)
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def test_unknown_config_gets_close_matches(capsys):
    line = _user_error(capsys, ["run", "quickstart/mhee", "--out", "unused"])
    assert "'quickstart/mhee'" in line and "quickstart/mhe" in line
    assert "table1" not in line  # no substring hits from an unrelated table
    line = _user_error(capsys, ["run", "completely-unrelated-name"])
    assert "list" in line  # nothing close: points at `list`


@pytest.mark.parametrize("override,key", [
    ("stepz=3", "stepz"),
    ("steps=abc", "steps"),
    ("steps=2.5", "steps"),
    ("steps=0", "steps"),
    ("steps=-5", "steps"),
    ("lr=0", "lr"),
    ("optim.lr=-0.1", "lr"),
    ("batch_size=0", "batch_size"),
    ("data.batch_size=-1", "batch_size"),
    ("regularizer.method=mhf", "method"),
    ("noequals", "noequals"),
])
def test_bad_set_is_one_line_naming_the_key(capsys, tmp_path, override, key):
    line = _user_error(capsys, ["run", "quickstart/baseline", "--out", str(tmp_path), "--set",
                                override])
    assert key in line
    assert not any(tmp_path.iterdir())  # rejected before anything was written


def test_debug_shows_the_traceback(tmp_path):
    from mhe_jax.experiments.__main__ import UsageError

    with pytest.raises(UsageError, match="quickstart/mhe"):
        cli(["run", "quickstart/mhee", "--debug"])
    from mhe_jax.experiments.configs import ConfigError

    with pytest.raises(UsageError, match="optim.steps") as exc:
        cli(["--debug", "run", "quickstart/baseline", "--set", "steps=abc"])
    assert isinstance(exc.value.__cause__, ConfigError)  # the config's own error, chained


def test_list(capsys):
    cli(["list", "table5/*"])
    out = capsys.readouterr().out
    assert "table5/cifar10/half_mhe" in out and "table1" not in out
    line = _user_error(capsys, ["list", "nothing*"])
    assert "no config matches 'nothing*'" in line


def test_broken_pipe_exits_quietly():
    """``list | head``: the reader has gone; the CLI exits 0 without a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "mhe_jax.experiments", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write: EPIPE on flush
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_missing_data_names_the_data_dir_key(capsys, tmp_path):
    line = _user_error(capsys, ["run", "repro/cifar10_small/baseline", "--out", str(tmp_path),
                                "--set", f"data.data_dir={tmp_path / 'missing.npz'}"])
    assert "missing.npz" in line and "--set data.data_dir=PATH" in line
    line = _user_error(capsys, ["run", "repro/cifar10_small/baseline", "--out", str(tmp_path)])
    assert "data.data_dir" in line


@pytest.fixture
def http_404():
    """A 127.0.0.1 server that answers every request with 404."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_failed_download_names_the_data_dir_key(capsys, tmp_path, monkeypatch, http_404):
    import mhe_jax.data as D

    load = D.load_cifar10  # the runner's loader, its URL pointed at the local server
    monkeypatch.setattr(D, "load_cifar10",
                        lambda root, **kw: load(root, urls=f"{http_404}/cifar.tar.gz", **kw))
    line = _user_error(capsys, ["run", "table1/cifar10/baseline", "--out", str(tmp_path / "o"),
                                "--set", f"data.data_dir={tmp_path}"])
    assert "--set data.data_dir=PATH" in line and "404" in line


def test_study_and_report_user_errors(capsys, tmp_path):
    line = _user_error(capsys, ["study", "--report-only", "--runs", str(tmp_path / "none")])
    assert "no such folder" in line
    line = _user_error(capsys, ["study", "--report-only", "--runs", str(tmp_path)])
    assert "no run folder" in line
    line = _user_error(capsys, ["study", "--configs", "quickstart", "--methods", "baseline,mhf"])
    assert "quickstart/mhf" in line and "quickstart/mhe" in line
    line = _user_error(capsys, ["study", "--configs", "quickstart", "--seeds", "0,x"])
    assert "--seeds" in line
    for bad in ("0", "100000"):
        line = _user_error(capsys, ["study", "--configs", "quickstart", "--workers", bad,
                                    "--out", str(tmp_path / "w")])
        assert "--workers" in line
    assert not (tmp_path / "w").exists()
    for bad in ("0", "x"):
        for cmd in (["run", "quickstart/mhe"], ["study", "--configs", "quickstart"]):
            line = _user_error(capsys, [*cmd, "--steps-per-call", bad, "--out",
                                        str(tmp_path / "w")])
            assert "--steps-per-call" in line
    assert not (tmp_path / "w").exists()
    line = _user_error(capsys, ["report", str(tmp_path / "none")])
    assert "no such file" in line
    line = _user_error(capsys, ["report", str(tmp_path)])
    assert "no results.json" in line


@pytest.mark.parametrize("flags,expected", [([], "auto"), (["--restart"], "restart"),
                                             (["--resume-anyway"], "force")])
def test_run_resume_flags_reach_the_runner(monkeypatch, capsys, tmp_path, flags, expected):
    from mhe_jax.experiments import runner

    seen = {}

    def fake_run(cfg, out, *, resume, progress, command, steps_per_call):
        seen.update(name=cfg.name, resume=resume, out=out, steps_per_call=steps_per_call)
        return {"test_error": 1.0, "paper": {}}

    monkeypatch.setattr(runner, "run", fake_run)
    cli(["run", "quickstart/mhe", "--out", str(tmp_path), *flags])
    assert seen == {"name": "quickstart/mhe", "resume": expected,
                    "out": tmp_path / "quickstart/mhe", "steps_per_call": 1}
    assert "test error 1.00 %" in capsys.readouterr().out
    for text, value in (("auto", "auto"), ("25", 25)):
        cli(["run", "quickstart/mhe", "--out", str(tmp_path), "--steps-per-call", text, *flags])
        assert seen["steps_per_call"] == value


def test_restart_and_resume_anyway_contradict(capsys):
    line = _user_error(capsys, ["run", "quickstart/mhe", "--restart", "--resume-anyway"])
    assert "--restart" in line and "--resume-anyway" in line


@pytest.mark.slow  # CI time (~20 min); run with -m slow
def test_resume_with_changed_config_is_one_line(capsys, tmp_path):
    """A checkpoint written by another config: the runner's ResumeError, as one line."""
    tiny = [*TINY, "logging.checkpoint_every=2"]
    cli(["run", "quickstart/baseline", "--out", str(tmp_path), "--no-progress", *_sets(tiny)])
    (tmp_path / "quickstart/baseline/results.json").unlink()
    line = _user_error(capsys, ["run", "quickstart/baseline", "--out", str(tmp_path),
                                "--no-progress", *_sets([*tiny, "optim.lr=0.5"])])
    assert "optim.lr" in line and "--restart" in line
    # the report of the other (finished) run: energy and min-angle columns, units stated
    cli(["run", "quickstart/mhe", "--out", str(tmp_path), "--no-progress", *_sets(TINY)])
    capsys.readouterr()
    cli(["report", str(tmp_path / "quickstart/mhe"), "--out", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    for col in ("test error (%)", "paper: test error (%)", "worst-class accuracy (%)",
                "hidden min angle (°)", "hidden energy", "classifier min angle (°)",
                "classifier energy"):
        assert col in table
    row = next(line for line in table.splitlines() if line.startswith("| quickstart/mhe"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    res = json.loads((tmp_path / "quickstart/mhe/results.json").read_text())
    assert float(cells[2]) == pytest.approx(res["test_error"], abs=0.005)
    assert all(c != "—" for c in cells[4:])  # angles and energies present


def _check_quickstart_output(tmp_path, out: str, err: str) -> None:
    for name in ("quickstart/baseline", "quickstart/mhe", "quickstart/half_mhe"):
        assert f"{name}: loading data" in err  # no silent pause between runs
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert "test acc. (%)" in header and "train time" in header and " s " not in header
    # the widths actually used (model.widths=4,4,8 above), not the default 16/32/64
    title = lines[lines.index(header) - 2]
    assert "CNN-9 4/4/8," in title and "16/32/64" not in out, title
    # the machine the numbers come from: CPU, cores, jax version and backend
    machine = lines[lines.index(header) - 1]
    assert machine.startswith("machine: ") and " CPUs (" in machine, machine
    assert f"jax {jax.__version__}, backend cpu" in machine, machine
    rows = [line for line in lines if line.split()[:1] in (["baseline"], ["mhe"], ["half_mhe"])]
    assert len(rows) == 3 and all(row.endswith(" sec") for row in rows)
    assert "exponent 2" in out  # s is named, not abbreviated
    png = tmp_path / "quickstart" / "quickstart.png"
    assert png.stat().st_size > 30_000


def test_quickstart_runs_table_and_figure(tmp_path, capsys):
    """The quickstart end to end (tiny, 8x8 images): announced runs, table, figure. In this
    process, so its programs are those of the other tiny runs here (the compilation cache);
    ``python -m mhe_jax.experiments`` in a subprocess: the slow twin below, and
    test_broken_pipe_exits_quietly."""
    cli(["quickstart", "--out", str(tmp_path), "--no-progress", *_sets(TINY)])
    out, err = capsys.readouterr()
    _check_quickstart_output(tmp_path, out, err)


@pytest.mark.slow  # ~40 CPU-s: three CNN-9 runs at 32x32 compiled in a fresh process
def test_quickstart_runs_table_and_figure_in_a_subprocess(tmp_path):
    """The quickstart end to end in a subprocess (tiny, the default 32x32 images)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "mhe_jax.experiments", "quickstart", "--out", str(tmp_path),
         "--no-progress", *_sets([t for t in TINY if "image_size" not in t])],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_quickstart_output(tmp_path, proc.stdout, proc.stderr)


def test_progress_bar_is_labelled_with_the_run_name(tmp_path, capfd):
    cli(["run", "quickstart/mhe", "--out", str(tmp_path), *_sets(TINY)])
    err = capfd.readouterr().err
    assert "quickstart/mhe seed 0:" in err.replace("\r", "\n")


# ------------------------------------------------------------------ bad input: one line, exit 2


def _image_folder(root, *, corrupt=False, empty_val=False):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (root / split / c).mkdir(parents=True)
            if not (split == "val" and empty_val):
                Image.new("RGB", (10, 12), (9, 99, 199)).save(root / split / c / "0.png")
    bad = root / "train" / "n02" / "broken.jpg"
    if corrupt:
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return bad


def _bad_inputs(tmp_path):
    """(argv, texts the one line must hold): every class of user error that ended in a
    traceback (or was silently accepted) before."""
    from tests.data_files import make_jpeg_npz

    bad_jpg = _image_folder(tmp_path / "jpg", corrupt=True)
    _image_folder(tmp_path / "noval", empty_val=True)
    npz = tmp_path / "cifar.npz"
    make_jpeg_npz(npz)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    results = tmp_path / "done" / "results.json"
    results.parent.mkdir()
    results.write_text('{"name": "quickstart/mhe", "test_error": 1.')
    config = tmp_path / "study" / "seed0" / "quickstart" / "baseline" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"name": "quickstart/base')
    afile = tmp_path / "afile"
    afile.write_text("x")
    imagenet = ["run", "table6/resnet18/mhe", "--out", str(tmp_path / "o"), "--no-progress",
                "--set", "data.image_size=8"]
    return {
        "corrupt .jpg": ([*imagenet, "--set", f"data.data_dir={tmp_path / 'jpg'}"],
                         [str(bad_jpg), "cannot be decoded"]),
        "empty val/": ([*imagenet, "--set", f"data.data_dir={tmp_path / 'noval'}"],
                       [str(tmp_path / "noval" / "val"), "no images", "data.data_dir"]),
        "truncated JPEG .npz": (["run", "repro/cifar10_small/baseline", "--out",
                                 str(tmp_path / "o"), "--set", f"data.data_dir={npz}"],
                                [str(npz), "cannot be read"]),
        "truncated results.json": (["report", str(tmp_path / "done")],
                                   [str(results), "not valid JSON"]),
        "truncated config.json": (["study", "--configs", "quickstart", "--methods", "baseline",
                                   "--seeds", "0", "--out", str(tmp_path / "study")],
                                  [str(config), "not valid JSON"]),
        "--report-only, truncated config.json": (
            ["study", "--report-only", "--runs", str(tmp_path / "study")],
            [str(config), "not valid JSON"]),
        "run --out a file": (["run", "quickstart/mhe", "--out", str(afile)],
                             ["--out", str(afile), "is a file"]),
        "quickstart --out below a file": (["quickstart", "--out", str(afile / "x")],
                                          ["--out", "is below", str(afile)]),
        "study --out below a file": (["study", "--configs", "quickstart", "--out",
                                      str(afile / "x")], ["--out", str(afile)]),
        "fig4 --out below a file": (["fig4", "--out", str(afile / "x")], ["--out", str(afile)]),
        "report --out below a file": (["report", str(tmp_path / "done"), "--out",
                                       str(afile / "t.md")], ["--out", str(afile)]),
        "report --plot a folder": (["report", str(tmp_path / "done"), "--plot", str(tmp_path)],
                                   ["--plot", "is a folder"]),
        "quickstart --steps 0": (["quickstart", "--steps", "0", "--out", str(tmp_path / "q")],
                                 ["--steps 0", ">= 1"]),
        "quickstart --steps -3": (["quickstart", "--steps", "-3", "--out", str(tmp_path / "q")],
                                  ["--steps -3"]),
        "study --baseline nosuch": (["study", "--configs", "quickstart", "--baseline", "nosuch",
                                     "--out", str(tmp_path / "q")],
                                    ["--baseline 'nosuch'", "baseline,mhe,half_mhe"]),
        "study --report-only --baseline nosuch": (
            ["study", "--report-only", "--runs", str(tmp_path / "done"), "--baseline", "nosuch"],
            ["--baseline 'nosuch'"]),
    }


BAD_INPUTS = ["corrupt .jpg", "empty val/", "truncated JPEG .npz", "truncated results.json",
              "truncated config.json", "--report-only, truncated config.json", "run --out a file",
              "quickstart --out below a file", "study --out below a file",
              "fig4 --out below a file", "report --out below a file", "report --plot a folder",
              "quickstart --steps 0", "quickstart --steps -3", "study --baseline nosuch",
              "study --report-only --baseline nosuch"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file_or_argument(capsys, tmp_path, case):
    """Each class of bad input: exit 2, one line on stderr, the file or argument named, and
    nothing trained or written (no traceback, no silent default)."""
    cases = _bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD_INPUTS)
    argv, texts = cases[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    line = _user_error(capsys, argv)
    assert all(t in line for t in texts), line
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing trained, nothing written


def test_checkpoint_errors_are_one_line(capsys, tmp_path, monkeypatch):
    """A model of another shape than the checkpoint's (run --resume-anyway with another
    model.widths) ended in a traceback; the runner's error is now one line (the real run:
    test_resume_anyway_with_other_widths_is_one_line, slow)."""
    from mhe_jax.experiments import runner
    from mhe_jax.train import CheckpointError, CheckpointMismatchError

    for error in (CheckpointMismatchError("checkpoint /x/6 holds another model: leaf "
                                          "model/kernel: checkpoint shape (3, 4) float32"),
                  CheckpointError("no intact checkpoint in /x")):
        def fake_run(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(runner, "run", fake_run)
        line = _user_error(capsys, ["run", "quickstart/mhe", "--out", str(tmp_path),
                                    "--resume-anyway"])
        assert str(error) in line


@pytest.mark.slow  # a real tiny run (~30 s on 2 cores); the fast twin is the test above
def test_resume_anyway_with_other_widths_is_one_line(capsys, tmp_path):
    tiny = [*TINY, "logging.checkpoint_every=2"]
    cli(["run", "quickstart/baseline", "--out", str(tmp_path), "--no-progress", *_sets(tiny)])
    ckpts = tmp_path / "quickstart/baseline/checkpoints"
    files = sorted(ckpts.rglob("*"))
    line = _user_error(capsys, ["run", "quickstart/baseline", "--out", str(tmp_path),
                                "--no-progress", "--resume-anyway",
                                *_sets([*tiny, "model.widths=4,4,6"])])
    assert "leaf model/" in line and "checkpoint shape" in line and "model shape" in line
    assert sorted(ckpts.rglob("*")) == files
    assert not (tmp_path / "quickstart/baseline/checkpoints.damaged").exists()


def test_help_explains_the_options_with_todays_keys(capsys):
    """--out, --steps, --no-progress and --seeds had no help; --set's example used a key of
    the old flat configs (steps=100)."""
    from mhe_jax.experiments.__main__ import _parser

    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    seen = set()
    for command in ("quickstart", "fig4", "study", "run", "report"):
        for action in commands[command]._actions:
            named = {"--out", "--steps", "--no-progress", "--seeds", "--set"}
            for option in named & set(action.option_strings):
                assert action.help and len(action.help.split()) >= 4, (command, option)
                seen.add(option)
        with pytest.raises(SystemExit):
            _parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        if "--set KEY=VALUE" in text:
            assert "--set optim.steps=100" in text and "--set steps=" not in text
    assert seen == {"--out", "--steps", "--no-progress", "--seeds", "--set"}
