# %% [markdown]
# # Reproducing the CIFAR experiments (Tables 1 and 2) on a Colab GPU / TPU
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/placeholder-owner/mhe_jax/blob/main/notebooks/04_cifar_reproduction.ipynb)
#
# The paper's CIFAR-10/100 experiments as named configurations of `mhe_jax.experiments`: the
# official recipe (CNN-9, SGD with momentum 0.9, lr 0.1 decayed ×0.1 at 20k/30k/37.5k of
# 42.5k iterations, batch 128, weight decay 5e-4, label smoothing 0.01, flip + crop
# augmentation) and the official MHE strengths. Every run writes `config.json`, `log.jsonl`
# (loss, learning rate, per-layer energies, test accuracy), `results.json` and resumable orbax
# checkpoints, and the report puts our test error next to the paper's.
#
# **On Colab:** *Runtime → Change runtime type →* a GPU or a TPU. `runner.run` shards every
# batch over all devices (data parallel), so a TPU's 8 cores are used without changes
# (the batch size must divide by the device count). One full run (42.5k steps) takes
# hours; lower `optim.steps` in `OVERRIDES` for a quicker, rougher comparison. Point
# `RUN_ROOT` at a mounted Google Drive folder so interrupted runs resume from their
# checkpoints.
#
# `MHE_JAX_SMOKE=1` (CI) runs two of the configurations through the same code path for 3
# steps with tiny widths, on scikit-learn's bundled digits (upsampled to 32×32) instead of CIFAR.

# %%
# Colab, or anywhere mhe_jax is missing: install it from its repository. Run from notebooks/ of a
# source checkout, the notebook imports the package of the parent directory instead; smoke mode
# (CI) never installs anything (the next cell's import fails if mhe_jax is missing).
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

sys.path += [str(Path.cwd().parent)] if Path("../mhe_jax/__init__.py").is_file() else []
if importlib.util.find_spec("mhe_jax") is None and not os.environ.get("MHE_JAX_SMOKE"):
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           "mhe_jax[models] @ git+https://github.com/placeholder-owner/mhe_jax"])

# %%
import os
import time
from pathlib import Path

import jax
from IPython.display import Image, Markdown, display

import mhe_jax
from mhe_jax.experiments import apply_overrides, get_config, notebook_setup, report, runner

# MHE_JAX_SMOKE=1: tiny sizes, no network, small or synthetic data (CI runs every notebook so).
# Figures are saved to MHE_JAX_NOTEBOOK_OUT (default: a fresh temp folder).
SMOKE, OUT_DIR, show, T_START = notebook_setup("04_cifar_reproduction")

# %% [markdown]
# ## Configurations
#
# Table 1: MHE variants on CIFAR-10 / CIFAR-100 (CNN-9, s ∈ {2, 1, 0}); Table 2: widths on
# CIFAR-100. `python -m mhe_jax.experiments list 'table*'` lists every row; add names below.

# %%
CONFIG_NAMES = [
    "table1/cifar10/baseline", "table1/cifar10/mhe/s2", "table1/cifar10/half_mhe/s2",
    "table2/baseline/w16_32_64", "table2/mhe/w16_32_64", "table2/half_mhe/w16_32_64",
]
OVERRIDES = []  # e.g. ["optim.steps=10000", "optim.boundaries=5000,7500,9000"]
# Run directories; on Colab e.g. /content/drive/MyDrive/mhe_runs (a mounted Drive) to resume.
RUN_ROOT = Path(os.environ.get("MHE_JAX_RUNS", "runs/notebook04"))
DATA_DIR = os.environ.get("MHE_JAX_DATA")  # CIFAR location; None: ~/.cache/mhe_jax

if SMOKE:  # the same configs and code path on tiny sizes, with scikit-learn's bundled digits
    CONFIG_NAMES = ["table1/cifar10/mhe/s2", "table2/half_mhe/w16_32_64"]
    OVERRIDES = ["data.dataset=digits", "data.image_size=32", "data.batch_size=16",
                 "model.widths=4,4,8", "optim.steps=3", "logging.log_every=1",
                 "logging.eval_every=none", "logging.energy_every=none",
                 "logging.checkpoint_every=none"]
    RUN_ROOT = OUT_DIR / "runs"
elif DATA_DIR:
    OVERRIDES = [f"data.data_dir={DATA_DIR}", *OVERRIDES]

configs = {name: apply_overrides(get_config(name), OVERRIDES) for name in CONFIG_NAMES}
print(f"{'config':>28} | {'data':>8} | {'method':>9} | {'s':>3} | {'widths':>13} | "
      f"{'(λ_h, λ_o)':>12} | {'steps':>6} | paper error")
for name, cfg in configs.items():
    lam = tuple(None if v is None else round(v, 3) for v in cfg.strengths())
    print(f"{name:>28} | {cfg.data.dataset:>8} | {cfg.regularizer.method:>9} | "
          f"{cfg.regularizer.s:3.0f} | {cfg.model.widths!s:>13} | {lam!s:>12} | "
          f"{cfg.optim.steps:>6} | {cfg.paper.get('value')}%")

# %% [markdown]
# ## Devices
#
# `runner.run` shards every batch over the devices when there is more than one
# (`mhe_jax.train.DataParallel`: model and optimizer state replicated, the batch split along
# its first axis, gathered on the devices from the training set held there): a Colab TPU's
# 8 cores, or several GPUs. This is the data-parallel path of `docs/scaling.md` — the batch
# over **every** device, `DataParallel(jax.devices())` — that `tests/test_notebooks.py` runs on
# 8 CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and
# `benchmarks/device.py` times. `tests/test_device_path.py` checks that on 8 devices its steps
# equal the single-device steps to float32 rounding, BatchNorm included: the batch statistics
# are over the global batch, not per device; `tests/test_multiprocess.py` checks the same
# over 2 processes. The global batch must divide by the number of devices.
#
# **A TPU pod slice** (several hosts): run this notebook's code as a script on every host with
# the launch line of `docs/scaling.md`, which calls `jax.distributed.initialize()` before
# anything else: `jupyter nbconvert --to script --output cifar_repro
# 04_cifar_reproduction.ipynb`, copy `cifar_repro.py` to every host, then `gcloud compute
# tpus tpu-vm ssh NAME --worker=all --command="python -c 'import jax;
# jax.distributed.initialize(); import cifar_repro'"`. `jax.devices()` then lists the devices
# of every host, and the cell below checks the batch against all of them. One host (Colab)
# needs none of this.

# %%
put = mhe_jax.train.DataParallel(jax.devices())  # the layout runner.run trains with
n_devices = put.num_devices
print(f"{n_devices} device(s) in {jax.process_count()} process(es), platform "
      f"{jax.devices()[0].platform}:", "data parallel" if n_devices > 1 else "single device",
      f"over the mesh axis 'data' ({dict(put.mesh.shape)})")
for name, cfg in configs.items():
    if cfg.data.batch_size % n_devices:
        raise ValueError(f"{name}: data.batch_size={cfg.data.batch_size} does not divide by "
                         f"the {n_devices} devices; add data.batch_size=... to OVERRIDES")

# %% [markdown]
# ## Data
#
# Full mode downloads CIFAR-10 / CIFAR-100 once (official tarballs, md5-checked) into
# `DATA_DIR` or `~/.cache/mhe_jax`; `runner.load_dataset(cfg)` is what every run below loads.

# %%
for cfg in {cfg.data.dataset: cfg for cfg in configs.values()}.values():
    if cfg.data.dataset == "cifar10":
        mhe_jax.data.load_cifar10(cfg.data.data_dir, download=True)
    elif cfg.data.dataset == "cifar100":
        mhe_jax.data.load_cifar100(cfg.data.data_dir, download=True)
    print(runner.load_dataset(cfg)[0].summary())

# %% [markdown]
# ## Runs
#
# `runner.run(cfg, out_dir)` builds data, model and optimizer from the config, trains with
# `mhe_jax.train.fit` and writes the run directory (`python -m mhe_jax.experiments run NAME
# --steps-per-call auto` does the same). A finished run (with `results.json`) is
# skipped; an interrupted one resumes from its last checkpoint. `steps_per_call` trains the
# steps between two log or eval points (`runner.call_length(cfg)`, at most 100) in one jitted
# `lax.scan`, as `benchmarks/device.py` does: on a GPU or TPU a small CNN's step is about as
# short as Python takes to launch it, so per-step calls would leave the device idle.

# %%
for name, cfg in configs.items():
    out = RUN_ROOT / name.replace("/", "-")
    if (out / "results.json").is_file() and not SMOKE:
        print(f"{name}: finished earlier ({out}), skipped")
        continue
    r = runner.run(cfg, out, progress=not SMOKE, steps_per_call=runner.call_length(cfg))
    print(f"{name}: test error {r['test_error']:.2f}% (paper {cfg.paper.get('value')}%), "
          f"{r['wall_seconds']:.0f} s")

# %% [markdown]
# ## Results next to the paper
#
# Test error (%) of every run under `RUN_ROOT` beside the paper's number for that row, and the
# training curves (loss, test accuracy, mean layer energy).

# %%
run_results = report.collect([RUN_ROOT])
display(Markdown(report.markdown_table(run_results)))
title = "CIFAR runs" + (" (smoke: digits, 3 steps)" if SMOKE else "")
curves = report.plot_runs([r["run_dir"] for r in run_results], OUT_DIR / "curves.png",
                          title=title)
display(Image(filename=str(curves)))

# %%
print(f"notebook finished in {time.perf_counter() - T_START:.1f} s (smoke mode: {SMOKE})")
