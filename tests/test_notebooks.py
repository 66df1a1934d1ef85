"""Run every example notebook top to bottom in smoke mode (MHE_JAX_SMOKE=1) and check its outputs.

Each notebook runs in a fresh Jupyter kernel of *this* interpreter (a temporary kernelspec, so
no ``python -m ipykernel install`` is needed), with the repository on ``PYTHONPATH`` and its
figures saved to a temporary ``MHE_JAX_NOTEBOOK_OUT``. Also checks that the committed notebooks
are stripped (no outputs, no execution counts).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"
KERNEL_NAME = "mhe-jax-notebook-test"

# notebook -> (figures it must save to MHE_JAX_NOTEBOOK_OUT, strings its outputs must contain)
EXPECTED = {
    "01_quickstart.ipynb": (["layer_energies.png"],
                            ["max |update + lr * grad R|", "half-space MHE: test accuracy",
                             "uniformity", "notebook finished"]),
    "02_thomson_and_figure1.ipynb": (["figure1.png", "thomson.png"],
                                     ["half-space MHE", "rel. error", "notebook finished"]),
    "03_class_imbalance.ipynb": (["fig4_features.png"],
                                 ["with output MHE (seed 0): test accuracy", "digit 0 acc.",
                                  "notebook finished"]),
    "04_cifar_reproduction.ipynb": (["curves.png"],
                                    ["table1/cifar10/mhe/s2: test error",
                                     "table2/half_mhe/w16_32_64: test error", "paper (%)",
                                     "notebook finished"]),
}


def test_expected_covers_every_notebook():
    assert sorted(p.name for p in NB_DIR.glob("[0-9]*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_stripped_valid_and_has_colab_badge(name):
    nb = nbformat.read(NB_DIR / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name}: outputs not stripped (rebuild with python notebooks/_build.py)")
    from IPython.core.inputtransformer2 import TransformerManager

    transform = TransformerManager().transform_cell  # %pip etc. -> Python, as the kernel does
    for i, cell in enumerate(nb.cells):
        assert "\r" not in cell.source, f"{name}: carriage return in cell {i}"
        if cell.cell_type == "code":
            compile(transform(cell.source), f"{name}[{i}]", "exec")
    first = nb.cells[0].source
    assert f"colab.research.google.com/github/mhe-jax/mhe_jax/blob/main/notebooks/{name}" in first
    install = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert '%pip install -q "mhe_jax[models] @ git+https://github.com/mhe-jax/mhe_jax"' in install


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """JUPYTER_PATH with a kernelspec running sys.executable, and the kernel's environment."""
    share = tmp_path_factory.mktemp("jupyter")
    spec_dir = share / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "mhe_jax notebook test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)  # let the kernel use its inline backend
    env["MHE_JAX_SMOKE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    # CPU compile time: jax's default partitionable threefry makes every model init compile
    # slowly (~4x here); the classic layout gives other random numbers but the same code paths.
    env.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")
    return share, env


def _outputs_text(nb) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"cell failed: {out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                images += "image/png" in data
                text.append(data.get("text/markdown", "") + data.get("text/plain", ""))
    return "\n".join(text), images


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_in_smoke_mode(name, kernel_env, tmp_path, monkeypatch):
    share, env = kernel_env
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(
        p for p in (str(share), os.environ.get("JUPYTER_PATH")) if p))
    out_dir = tmp_path / "out"
    env = {**env, "MHE_JAX_NOTEBOOK_OUT": str(out_dir)}
    nb = nbformat.read(NB_DIR / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL_NAME,
                                     resources={"metadata": {"path": str(NB_DIR)}})
    t0 = time.perf_counter()
    client.execute(env=env)
    print(f"{name}: executed in {time.perf_counter() - t0:.1f} s")

    figures, strings = EXPECTED[name]
    for fig in figures:
        path = out_dir / fig
        assert path.is_file() and path.stat().st_size > 1000, f"{name}: figure {fig} missing"
    text, images = _outputs_text(nb)
    assert images >= len(figures), f"{name}: {images} inline images, expected {len(figures)}"
    for s in strings:
        assert s in text, f"{name}: output lacks {s!r}"
