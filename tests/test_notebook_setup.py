"""mhe_jax.experiments.notebook_setup: the setup cell the example notebooks share."""

import time

import matplotlib.pyplot as plt  # Agg backend: tests/conftest.py
import pytest

import mhe_jax
from mhe_jax.experiments import NotebookEnv, notebook_setup, smoke_mode


@pytest.mark.parametrize("value, smoke", [
    (None, False), ("", False), ("0", False), ("false", False), ("No", False), ("off", False),
    ("1", True), ("true", True), (" YES ", True), ("on", True),
])
def test_smoke_mode_values(value, smoke):
    environ = {} if value is None else {"MHE_JAX_SMOKE": value}
    assert smoke_mode(environ) is smoke


def test_smoke_mode_rejects_unknown_values():
    with pytest.raises(ValueError, match="MHE_JAX_SMOKE='maybe'"):
        smoke_mode({"MHE_JAX_SMOKE": "maybe"})


def test_setup_uses_the_out_dir_creates_it_and_show_saves_the_figure(tmp_path, capsys):
    out = tmp_path / "figures" / "nested"
    t0 = time.perf_counter()
    env = notebook_setup("01_quickstart",
                         environ={"MHE_JAX_SMOKE": "1", "MHE_JAX_NOTEBOOK_OUT": str(out)})
    assert isinstance(env, NotebookEnv)
    smoke, out_dir, show, start = env
    assert smoke is True and out_dir == out and out.is_dir()
    assert t0 <= start <= time.perf_counter()
    printed = capsys.readouterr().out
    assert f"mhe_jax {mhe_jax.__version__}" in printed
    assert f"smoke mode: True; figures are saved to {out}" in printed

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = show(fig, "line")
    assert path == out / "line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    plt.close("all")


def test_setup_without_out_dir_makes_a_fresh_named_temp_dir(capsys):
    first = notebook_setup("02_thomson", environ={}, verbose=False)
    second = notebook_setup("02_thomson", environ={}, verbose=False)
    assert capsys.readouterr().out == ""
    assert first.smoke is False
    for env in (first, second):
        assert env.out_dir.is_dir() and env.out_dir.name.startswith("mhe_jax_02_thomson_")
        env.out_dir.rmdir()
    assert first.out_dir != second.out_dir


@pytest.mark.parametrize("name", ["", "a/b", None])
def test_setup_rejects_bad_names(name):
    with pytest.raises(ValueError, match="name"):
        notebook_setup(name, environ={}, verbose=False)


def test_setup_rejects_a_bad_smoke_value_before_creating_anything(tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="MHE_JAX_SMOKE"):
        notebook_setup("03", environ={"MHE_JAX_SMOKE": "2", "MHE_JAX_NOTEBOOK_OUT": str(out)})
    assert not out.exists()


def test_out_dir_expands_the_home_folder(tmp_path, monkeypatch):
    """``~/figs`` made a literal ``./~/figs`` in the working folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    env = notebook_setup("01", environ={"MHE_JAX_NOTEBOOK_OUT": "~/figs"}, verbose=False)
    assert env.out_dir == tmp_path / "home" / "figs" and env.out_dir.is_dir()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("value", [" ", "   ", "\t"])
def test_blank_out_dir_is_refused_naming_the_variable(tmp_path, monkeypatch, value):
    """A value of spaces made a folder named with spaces."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"MHE_JAX_NOTEBOOK_OUT=.* is blank"):
        notebook_setup("01", environ={"MHE_JAX_NOTEBOOK_OUT": value}, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_out_dir_on_a_file_is_refused_naming_the_variable(tmp_path):
    (tmp_path / "file").write_text("x")
    for value in (tmp_path / "file", tmp_path / "file" / "figs"):
        with pytest.raises(ValueError, match=r"MHE_JAX_NOTEBOOK_OUT=.*a file is in the way"):
            notebook_setup("01", environ={"MHE_JAX_NOTEBOOK_OUT": str(value)}, verbose=False)
