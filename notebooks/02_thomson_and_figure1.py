# %% [markdown]
# # Figure 1 and the Thomson problem
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/placeholder-owner/mhe_jax/blob/main/notebooks/02_thomson_and_figure1.ipynb)
#
# **Figure 1** of the paper compares orthonormal regularization, MHE and half-space MHE on 10
# neurons in 3-D: randomly initialised weights optimised by gradient descent on each
# regulariser alone. Orthonormal regularization cannot make 10 vectors in $\mathbb{R}^3$
# orthogonal and leaves them grouped; MHE spreads them uniformly over the sphere but may put
# two neurons at opposite poles (co-linear, hence redundant); half-space MHE spreads the
# neurons *and* their virtual negations $-\hat w_i$, i.e. the lines through the origin.
#
# The second part solves the **Thomson problem** (N electrons on the sphere, Coulomb energy
# $\sum_{i<j} 1/\lVert x_i - x_j\rVert$, the $s = 1$ hyperspherical energy that inspired MHE)
# with `mhe_jax.sphere.minimize_energy` and compares with the best known minima.

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import mhe_jax
from mhe_jax.experiments import notebook_setup
from mhe_jax.sphere import minimize_energy

# MHE_JAX_SMOKE=1: tiny sizes, no network, small or synthetic data (CI runs every notebook so).
# Figures are shown inline and saved to MHE_JAX_NOTEBOOK_OUT (default: a fresh temp folder);
# show(fig, name) saves one as <name>.png and displays it.
SMOKE, OUT_DIR, show, T_START = notebook_setup("02_thomson_and_figure1")

# %% [markdown]
# ## 1. Figure 1: 10 neurons on $S^2$
#
# Each regulariser is minimised by SGD with momentum from the same random start; after every
# step the neurons are renormalised to the sphere (all three regularisers only see directions).

# %%
N_NEURONS, FIG1_STEPS, LR = 10, (300 if SMOKE else 2000), 0.05


def unit(w):  # (3, N): neurons are columns
    return w / jnp.linalg.norm(w, axis=0, keepdims=True)


W0 = unit(jax.random.normal(jax.random.key(3), (3, N_NEURONS)))
regularizers = {
    "orthonormal": lambda w: mhe_jax.orthonormal_penalty(w),               # ||W^T W - I||_F^2
    "MHE": lambda w: mhe_jax.hyperspherical_energy(w, s=2.0),
    "half-space MHE": lambda w: mhe_jax.hyperspherical_energy(w, s=2.0, half_space=True),
}


def optimise(objective):
    tx = optax.sgd(LR, momentum=0.9)

    def step(carry, _):
        w, state = carry
        value, grad = jax.value_and_grad(objective)(w)
        updates, state = tx.update(grad, state)
        return (unit(w + updates), state), value

    (w, _), values = jax.lax.scan(step, (W0, tx.init(W0)), None, length=FIG1_STEPS)
    return w, values


solutions = {"random init": W0}
for name, objective in regularizers.items():
    w, values = jax.jit(optimise, static_argnums=0)(objective)
    solutions[name] = w
    print(f"{name:>15}: objective {float(values[0]):.4f} -> {float(values[-1]):.4f}")


def angles(w):
    c = np.array(w.T @ w)
    np.fill_diagonal(c, np.nan)
    closest = np.arccos(np.clip(np.nanmax(c), -1, 1))
    closest_lines = np.arccos(np.clip(np.nanmax(np.abs(c)), 0, 1))
    return np.degrees(closest), np.degrees(closest_lines)


print(f"\n{'':>15} | {'min angle':>9} | {'min angle between lines (+-w)':>29} | {'E_2':>6} | "
      f"{'half-space E_2':>14}")
for name, w in solutions.items():
    a, a_lines = angles(w)
    print(f"{name:>15} | {a:9.2f} | {a_lines:29.2f} | "
          f"{float(mhe_jax.hyperspherical_energy(w)):6.3f} | "
          f"{float(mhe_jax.hyperspherical_energy(w, half_space=True)):14.3f}")

# %% [markdown]
# Red: the neurons; pink (half-space MHE only): the virtual neurons $-\hat w_i$. A min angle
# between lines near 0 means two neurons are (anti-)parallel, i.e. redundant.

# %%
u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 25), np.linspace(0, np.pi, 13))
sphere = (np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v))


def draw(ax, points, title, virtual=None):
    ax.plot_wireframe(*sphere, color="0.8", linewidth=0.4)
    if virtual is not None:
        ax.scatter(*virtual, color="violet", s=40, depthshade=False, label="-w (virtual)")
    ax.scatter(*points, color="red", s=40, depthshade=False, label="w")
    ax.set_title(title)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()


fig = plt.figure(figsize=(16, 4.4))
for k, (name, w) in enumerate(solutions.items()):
    ax = fig.add_subplot(1, 4, k + 1, projection="3d")
    w = np.asarray(w)
    a, a_lines = angles(w)
    draw(ax, w, f"{name}\nmin angle {a:.1f}°, between lines {a_lines:.1f}°",
         virtual=-w if name == "half-space MHE" else None)
fig.tight_layout()
show(fig, "figure1")


# %% [markdown]
# ## 2. The Thomson problem
#
# `minimize_energy(n, dim=3, s=1)` runs a Riemannian L-BFGS from several random starts
# (`restarts`, vmapped in one jit) and keeps the best. Its energy uses the physics convention
# (each pair once); the paper's energy is the mean over ordered pairs, i.e.
# `hyperspherical_energy(points, s=1, neuron_axis=0) * n * (n - 1) / 2`.
#
# References, never a copy of a table: the energies of the proven optimal configurations
# (N = 2, 3, 4, 5, 6, 12: antipodal pair, triangle, tetrahedron, triangular bipyramid,
# octahedron, icosahedron), computed below from their vertices in float64 NumPy; and, in a source
# checkout that has it, the table of best known minima N = 2…64 (Wikipedia's *Thomson problem* /
# the Cambridge Cluster Database) in `shared/reference/thomson_minima_N2-64.tsv`, the file
# `tests/test_sphere.py` checks the solver against. In full mode the solver runs in float64 with
# 16 random restarts (64 from N = 35 on, where local minima multiply) and reaches the table to
# its 9 decimals; smoke mode runs float32 on two small N.

# %%
def pair_energy(x):
    """Sum over pairs i < j of 1 / |x_i - x_j| for the rows of x (float64 NumPy)."""
    x = np.asarray(x, np.float64)
    i, j = np.triu_indices(len(x), 1)
    return float(np.sum(1.0 / np.linalg.norm(x[i] - x[j], axis=1)))


def proven_optimum(n):
    """The optimal configuration of n = 2, 3, 4, 5, 6 or 12 points: (n, 3) unit rows."""
    phi = (1 + 5**0.5) / 2
    triangle = [[np.cos(a), np.sin(a), 0.0] for a in 2 * np.pi * np.arange(3) / 3]
    x = {
        2: [[0, 0, 1], [0, 0, -1]],
        3: triangle,
        4: [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
        5: [[0, 0, 1], [0, 0, -1], *triangle],
        6: [*np.eye(3), *-np.eye(3)],
        12: [p for a in (-1, 1) for b in (-phi, phi) for p in ([0, a, b], [a, b, 0], [b, 0, a])],
    }[n]
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


REFERENCE = {n: (pair_energy(proven_optimum(n)), "polyhedron") for n in (2, 3, 4, 5, 6, 12)}
TABLE = next((root / "shared" / "reference" / "thomson_minima_N2-64.tsv"
              for root in (Path.cwd().parent, Path.cwd().parent.parent)
              if (root / "shared" / "reference" / "thomson_minima_N2-64.tsv").is_file()), None)
if TABLE is None:
    print("no shared/reference table here: the references are the six polyhedra")
else:
    rows = [line.split("\t") for line in TABLE.read_text().splitlines()[1:] if line.strip()]
    best_known = {int(n): float(e) for n, e in rows}
    gap = max(abs(e - best_known[n]) for n, (e, _) in REFERENCE.items())
    print(f"{TABLE}: {len(best_known)} N; the polyhedra agree with it to {gap:.1e}")
    REFERENCE = {n: (e, "table") for n, e in best_known.items()} | REFERENCE

if SMOKE:
    NS = [5, 12]
else:
    jax.config.update("jax_enable_x64", True)  # float64 for ~1e-10 relative energies
    NS = [n for n in (2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64) if n in REFERENCE]


def restarts_for(n):
    return 2 if SMOKE else 16 if n < 35 else 64


results = {}
print(f"{'N':>3} | {'reference':>14} {'':>10} | {'minimize_energy':>16} | {'rel. error':>10} | "
      f"{'paper E_1 x pairs':>17} | time")
for n in NS:
    t = time.perf_counter()
    r = minimize_energy(n, 3, s=1.0, restarts=restarts_for(n), key=jax.random.key(n))
    ref, source = REFERENCE[n]
    energy = float(r.energy)
    pairs = n * (n - 1) / 2
    paper = float(mhe_jax.hyperspherical_energy(r.points, s=1.0, neuron_axis=0, eps=0.0)) * pairs
    results[n] = (r, abs(energy - ref) / ref)
    print(f"{n:>3} | {ref:14.9f} {source:>10} | {energy:16.9f} | {results[n][1]:10.2e} | "
          f"{paper:17.9f} | {time.perf_counter() - t:.1f} s")

# %%
fig = plt.figure(figsize=(12, 4.5))
ax = fig.add_subplot(1, 2, 1)
ns = list(results)
ax.semilogy(ns, [max(results[n][1], 1e-16) for n in ns], "o-")
ax.set(xlabel="N", ylabel="|E - E_ref| / E_ref", title="Thomson energies: relative error")
ax.grid(alpha=0.3)
n_big = ns[-1]
ax3 = fig.add_subplot(1, 2, 2, projection="3d")
draw(ax3, np.asarray(results[n_big][0].points).T, f"minimum-energy configuration, N = {n_big}")
fig.tight_layout()
show(fig, "thomson")

# %%
print(f"notebook finished in {time.perf_counter() - T_START:.1f} s (smoke mode: {SMOKE})")
