"""Generate the example notebooks (outputs stripped) from the sources in this file.

    python notebooks/_build.py            # rewrite notebooks/0*.ipynb

Edit the cells here, not in the .ipynb files, so the notebooks stay reviewable and stripped.
Cell ids are deterministic, so rebuilding without changes gives identical files.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
REPO = "mhe-jax/mhe_jax"  # placeholder owner: change it (and the README) when the repo is public


def badge(filename: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{filename}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


INSTALL = f'''\
# Install mhe_jax from its repository, unless it is importable already: installed, a source
# checkout (running notebooks/ of a clone), or CI's smoke run, which never touches the network.
import os, sys
from pathlib import Path

try:
    import mhe_jax
except ImportError:
    if (Path.cwd().parent / "mhe_jax" / "__init__.py").is_file():
        sys.path.insert(0, str(Path.cwd().parent))  # notebooks/ of a source checkout
    elif os.environ.get("MHE_JAX_SMOKE"):
        raise  # smoke mode installs nothing
    else:
        %pip install -q "mhe_jax[models] @ git+https://github.com/{REPO}"
    import mhe_jax'''


def setup(tag: str, extra_imports: str = "") -> str:
    return f'''\
import os, time, tempfile
from pathlib import Path

import numpy as np
import jax
import jax.numpy as jnp
import optax
import matplotlib.pyplot as plt
from flax import nnx
import mhe_jax
import mhe_jax.data, mhe_jax.models, mhe_jax.train  # subpackages are not imported by `import mhe_jax`
{extra_imports}
# MHE_JAX_SMOKE=1: tiny sizes, no network, embedded/synthetic data (CI runs every notebook so).
SMOKE = os.environ.get("MHE_JAX_SMOKE", "").strip().lower() not in ("", "0", "false", "no")
# Figures are shown inline and also saved here (MHE_JAX_NOTEBOOK_OUT, else a fresh temp dir).
OUT_DIR = Path(os.environ.get("MHE_JAX_NOTEBOOK_OUT") or tempfile.mkdtemp(prefix="mhe_jax_{tag}_"))
OUT_DIR.mkdir(parents=True, exist_ok=True)
T_START = time.perf_counter()


def show(fig, name):
    """Save ``fig`` as OUT_DIR/<name>.png, then display it inline."""
    fig.savefig(OUT_DIR / f"{{name}}.png", dpi=100, bbox_inches="tight")
    plt.show()


print(f"mhe_jax {{mhe_jax.__version__}}, jax {{jax.__version__}}, devices {{jax.devices()}}")
print(f"smoke mode: {{SMOKE}}; figures are saved to {{OUT_DIR}}")'''


FOOTER = 'print(f"notebook finished in {time.perf_counter() - T_START:.1f} s (smoke mode: {SMOKE})")'


def md(src: str):
    return ("md", src)


def code(src: str):
    return ("code", src)


def build(filename: str, cells, *, accelerator: str | None = None) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    if accelerator:
        nb.metadata["accelerator"] = accelerator
    stem = filename.split("_")[0]
    for i, (kind, src) in enumerate(cells):
        src = textwrap.dedent(src).strip("\n")
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"nb{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


# ---------------------------------------------------------------------------------------------
# 01 quickstart
# ---------------------------------------------------------------------------------------------

NB01 = "01_quickstart.ipynb"
CELLS01 = [
    md(f"""
    # mhe_jax quickstart: Minimum Hyperspherical Energy in JAX

    {badge(NB01)}

    *Learning towards Minimum Hyperspherical Energy* (Liu et al., NeurIPS 2018) treats the
    neurons of a layer as points on the unit sphere and penalises their **hyperspherical
    energy**, as in the Thomson problem of spreading electrons over a sphere:

    $$E_s = \\frac{{1}}{{N(N-1)}} \\sum_{{i \\ne j}} f_s\\big(\\lVert \\hat w_i - \\hat w_j \\rVert\\big),
    \\qquad f_s(r) = r^{{-s}}\\ (s>0), \\quad f_0(r) = \\log(1/r),$$

    with $\\hat w_i = w_i / \\lVert w_i \\rVert$. Minimising it spreads the neurons evenly and
    removes redundancy. This notebook shows

    1. the energies of a random layer: all variants, half-space MHE, the official-code preset and
       the diagnostics (minimum angle, coherence);
    2. MHE as a one-line optax transformation;
    3. `layer_energies` logged while training a small CNN on scikit-learn's digits, with and
       without MHE;
    4. the same energies on feature vectors (`neuron_axis=0`) and the Gaussian-kernel energy
       (Wang & Isola's uniformity).

    Full mode takes about ten minutes on a 2-core CPU (far less on a GPU); with
    `MHE_JAX_SMOKE=1` everything is tiny (CI).
    """),
    code(INSTALL),
    code(setup("01")),
    md("""
    ## 1. The energy of a layer

    A layer's neurons lie along `neuron_axis` (default: the last axis, as in Flax `Dense` and
    `Conv` kernels); every other axis is flattened into the neuron. A `Conv` kernel of shape
    `(3, 3, 16, 32)` therefore holds 32 neurons of dimension 144.

    Variants: Riesz exponent `s` (0 is the log energy), `distance="euclidean"` or `"angular"`
    (A-MHE, the geodesic angle instead of the chord), and `half_space=True`, which adds the
    virtual neurons $-\\hat w_i$ so that a neuron and its negation count as redundant.
    """),
    code("""
    W = jax.random.normal(jax.random.key(0), (3, 3, 16, 32))  # Conv kernel (kh, kw, in, out)
    print("neurons:", W.shape[-1], "of dimension", int(np.prod(W.shape[:-1])))
    print()
    print(f"{'distance':>10} {'space':>5} | {'s=0 (log)':>10} {'s=1':>10} {'s=2':>10}")
    for distance in ("euclidean", "angular"):
        for half in (False, True):
            vals = [float(mhe_jax.hyperspherical_energy(W, s=s, distance=distance, half_space=half))
                    for s in (0.0, 1.0, 2.0)]
            print(f"{distance:>10} {'half' if half else 'full':>5} | "
                  + " ".join(f"{v:10.4f}" for v in vals))
    """),
    md("""
    **Diagnostics.** `energy_stats` returns the energy, the smallest angle between two neurons
    (the Tammes objective) and the mean |cosine| (coherence) from one Gram matrix. A redundant
    neuron shows up in all three; a *negated* copy of a neuron is invisible to full-space MHE
    (it is as far away as possible) but not to half-space MHE, which is why the paper uses the
    half-space energy for hidden layers.
    """),
    code("""
    Wm = W.reshape(-1, W.shape[-1])  # (144, 32): neurons are columns


    def describe(name, w):
        full = mhe_jax.energy_stats(w, s=2.0)
        half = mhe_jax.energy_stats(w, s=2.0, half_space=True)
        print(f"{name:>26}: E_2 = {float(full.energy):7.4f}  half-space E_2 = {float(half.energy):7.4f}"
              f"  min angle = {np.degrees(float(full.min_angle)):6.2f} deg"
              f"  mean|cos| = {float(full.mean_abs_cosine):.3f}")


    describe("random", Wm)
    describe("orthogonal (QR of it)", jnp.linalg.qr(Wm)[0])
    describe("neuron 1 = neuron 0 + noise", Wm.at[:, 1].set(Wm[:, 0] + 0.05 * Wm[:, 1]))
    describe("neuron 1 = -neuron 0", Wm.at[:, 1].set(-Wm[:, 0]))
    print("\\nmin_angle / mean_abs_cosine alone:",
          f"{np.degrees(float(mhe_jax.min_angle(W))):.2f} deg,", f"{float(mhe_jax.mean_abs_cosine(W)):.3f}")
    """),
    md("""
    **The official TensorFlow code's losses.** `official_energy(w, power)` reproduces the
    per-layer loss of the authors' code (`"0"`, `"1"`, `"2"`, and angular `"a0"`, `"a1"`,
    `"a2"`, with its `1e-4` guards), for porting hyperparameters; `OFFICIAL_STRENGTHS` holds its
    λ's. They relate to this library's (the paper's) energies as printed below: the official log
    loss is twice $E_0$, and the angular losses use θ/π instead of θ.
    """),
    code("""
    import math

    E = lambda **kw: float(mhe_jax.hyperspherical_energy(W, **kw))
    ours = {
        "0": ("2 * E_0", 2 * E(s=0.0)),
        "1": ("E_1", E(s=1.0)),
        "2": ("E_2", E(s=2.0)),
        "a0": ("E_0(angular) + log(pi)", E(s=0.0, distance="angular") + math.log(math.pi)),
        "a1": ("pi * E_1(angular)", math.pi * E(s=1.0, distance="angular")),
        "a2": ("pi^2 * E_2(angular)", math.pi**2 * E(s=2.0, distance="angular")),
    }
    print(f"{'power':>5} {'official':>10} {'ours':>10}  relation")
    for power, (relation, value) in ours.items():
        print(f"{power:>5} {float(mhe_jax.official_energy(W, power)):10.5f} {value:10.5f}  {relation}")
    print("\\nofficial strengths:", mhe_jax.OFFICIAL_STRENGTHS)
    """),
    md("""
    **Neuron sampling (Sec. 3.6).** For very wide layers, `sample_size=k` computes the energy of
    `k` randomly drawn neurons: an unbiased estimate of the energy and of its gradient.
    """),
    code("""
    keys = jax.random.split(jax.random.key(1), 256)
    estimates = jax.vmap(lambda k: mhe_jax.hyperspherical_energy(W, s=2.0, sample_size=8, key=k))(keys)
    print(f"exact E_2 = {E(s=2.0):.4f};  mean of 256 estimates from 8 of 32 neurons = "
          f"{float(estimates.mean()):.4f} +- {float(estimates.std() / np.sqrt(len(keys))):.4f}")
    """),
    md("""
    ## 2. MHE as an optax transformation

    `mhe_regularizer(λ_h, λ_o, ...)` is an optax `GradientTransformation` that adds
    $\\nabla R$ to the incoming gradients, with
    $R = \\lambda_h \\sum_{\\text{hidden}} E + \\lambda_o E_{\\text{output}}$. By default every leaf
    whose path ends in `kernel` (ndim ≥ 2) is a layer; `output=` names the classifier, which gets
    full-space MHE (the hidden layers get half-space MHE here). Chain it before the optimizer:
    """),
    code("""
    k1, k2 = jax.random.split(jax.random.key(2))
    params = {"conv": {"kernel": jax.random.normal(k1, (3, 3, 1, 16))},  # 16 neurons in 9 dimensions
              "classifier": {"kernel": jax.random.normal(k2, (16, 10))}}
    reg = dict(s=2.0, half_space=True, output="classifier/kernel")

    tx = optax.chain(mhe_jax.mhe_regularizer(1.0, 10.0, **reg), optax.sgd(0.1, momentum=0.9))

    opt_state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)   # a flat loss: only MHE acts
    updates, _ = jax.jit(tx.update)(zero_grads, opt_state, params)  # the transformation needs params

    # It adds exactly the gradient of the penalty mhe_penalty (which you could add to a loss instead):
    grad_R = jax.jit(jax.grad(lambda p: mhe_jax.mhe_penalty(p, 1.0, 10.0, **reg)))(params)
    diff = max(float(jnp.max(jnp.abs(u + 0.1 * g)))
               for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grad_R)))
    print("max |update + lr * grad R| =", diff)
    """),
    md("""
    Descending on the regularizer alone spreads the neurons, most visibly where they are crowded
    (16 conv neurons in 9 dimensions, 10 classifier neurons): `layer_energies` reports each
    layer's energy, minimum angle and coherence (jit it for logging).
    """),
    code("""
    energies = jax.jit(lambda p: mhe_jax.layer_energies(p, **reg))


    def fmt(stats):
        return "; ".join(f"{path}: E={float(st.energy):.4f}, min angle={np.degrees(float(st.min_angle)):.1f} deg"
                         for path, st in stats.items())


    @jax.jit
    def mhe_only(params, opt_state):
        def body(carry, _):
            p, s = carry
            u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, opt_state), None, length=200)[0]


    print("before:        ", fmt(energies(params)))
    print("after 200 steps:", fmt(energies(mhe_only(params, opt_state)[0])))
    """),
    md("""
    ## 3. Logging `layer_energies` while training a CNN

    A small CNN from `mhe_jax.models` (the paper's CNN-9; one conv per stage in smoke mode) on scikit-learn's
    bundled digits, upsampled to 32×32 (16×16 in smoke mode), trained twice with the same seed:
    plain SGD with momentum and weight decay, and the same optimizer with half-space MHE on the
    hidden layers and MHE on the classifier (the official strengths λ_h = 1, λ_o = 10, s = 2).
    A plain `nnx.Optimizer` loop; `mhe_jax.train.fit` does the same with logging built in.
    """),
    code("""
    SIZE = 16 if SMOKE else 32
    STEPS = 30 if SMOKE else 600
    LOG_EVERY = 5 if SMOKE else 25
    BATCH = 32 if SMOKE else 64
    WIDTHS = (8, 8, 16) if SMOKE else (16, 32, 64)
    DEPTH = 1 if SMOKE else 3  # convolutions per stage: 3 is the paper's CNN-9

    ds = mhe_jax.data.load_digits(size=SIZE)
    print(ds.summary())
    lr = mhe_jax.train.step_decay_schedule(0.05, (int(0.7 * STEPS), int(0.9 * STEPS)),
                                           warmup_steps=STEPS // 10)


    def make_model(seed=0):
        return mhe_jax.models.CNN(DEPTH, WIDTHS, ds.num_classes, in_channels=1,
                                  fc_width=32 if SMOKE else 256, fc_kernel_size=SIZE // 8,
                                  bn_momentum=0.9,  # short run: the official 0.999 average lags
                                  rngs=nnx.Rngs(seed))


    log_energies = jax.jit(lambda p: mhe_jax.layer_energies(p, s=2.0, half_space=True,
                                                            output="classifier/kernel"))


    @nnx.jit
    def train_step(model, optimizer, images, labels):
        x = mhe_jax.data.normalize(images)  # uint8 -> (x - 127.5) / 128

        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss


    @nnx.jit
    def predict(model, images):
        return jnp.argmax(model(mhe_jax.data.normalize(images)), -1)


    def train(use_mhe, seed=0):
        model = make_model(seed)
        parts = [optax.add_decayed_weights(5e-4)]
        if use_mhe:
            parts.append(mhe_jax.mhe_regularizer(1.0, 10.0, s=2.0, half_space=True,
                                                 output=model.output_path))
        parts.append(optax.sgd(lr, momentum=0.9))
        optimizer = nnx.Optimizer(model, optax.chain(*parts), wrt=nnx.Param)
        data = mhe_jax.data.batches(ds.x_train, ds.y_train, BATCH, seed, epochs=None)
        history = []
        for step in range(STEPS + 1):
            if step % LOG_EVERY == 0 or step == STEPS:
                stats = log_energies(nnx.state(model, nnx.Param))
                history.append({"step": step, "layers": {
                    path: (float(st.energy), np.degrees(float(st.min_angle))) for path, st in stats.items()}})
            if step == STEPS:
                break
            images, labels = next(data)
            loss = train_step(model, optimizer, images, labels)
        model.eval()
        pred = np.concatenate([predict(model, ds.x_test[i:i + 500]) for i in range(0, len(ds.x_test), 500)])
        model.train()
        return model, history, float(np.mean(pred == ds.y_test)), float(loss)


    runs = {}
    for name, use_mhe in (("baseline", False), ("half-space MHE", True)):
        t = time.perf_counter()
        runs[name] = train(use_mhe)
        print(f"{name:>15}: test accuracy {runs[name][2]:.3f}, last batch loss {runs[name][3]:.3f}"
              f"  ({time.perf_counter() - t:.1f} s)")
    """),
    code("""
    paths = list(runs["baseline"][1][0]["layers"])
    colors = plt.cm.viridis(np.linspace(0, 0.95, len(paths)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, style in (("baseline", "--"), ("half-space MHE", "-")):
        history = runs[name][1]
        steps = [h["step"] for h in history]
        for path, color in zip(paths, colors):
            for k, ax in enumerate(axes):
                ax.plot(steps, [h["layers"][path][k] for h in history], style, color=color,
                        label=path if name == "half-space MHE" else None)
    axes[0].set(yscale="log", xlabel="step", title="layer energy (half-space E_2; classifier: full E_2)")
    axes[1].set(xlabel="step", ylabel="degrees", title="minimum angle between neurons")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("solid: half-space MHE, dashed: baseline")
    fig.tight_layout()
    show(fig, "layer_energies")
    """),
    md("""
    ## 4. Energies of feature vectors

    The energies are functions of any set of vectors: with `neuron_axis=0` the rows of a
    `(batch, dim)` array are the points. `gaussian_energy(z, t=2)` is
    $\\log \\operatorname{mean}_{i \\ne j} \\exp(-t \\lVert \\hat z_i - \\hat z_j \\rVert^2)$, the
    *uniformity* loss of Wang & Isola (2020) for normalised embeddings, so
    `loss + λ * mhe_jax.gaussian_energy(z, neuron_axis=0)` is their uniformity regulariser.
    Below: the fc-layer features of the trained CNN between two references, random Gaussian
    vectors (uniformly spread directions: low energy) and the features of a single class
    (nearly collapsed: high energy).
    """),
    code("""
    model_mhe = runs["half-space MHE"][0]
    feats = mhe_jax.train.predict_features(model_mhe, ds.x_test)
    feats = feats.reshape(len(feats), -1)  # (n, fc_width)
    random_vectors = np.asarray(jax.random.normal(jax.random.key(3), feats.shape))

    print(f"{'vectors':>28} | {'E_1 (rows)':>10} | {'uniformity (t=2)':>16}")
    for name, z in (("random Gaussian", random_vectors), ("CNN features, test set", feats),
                    ("CNN features, digit 0 only", feats[ds.y_test == 0])):
        e1 = float(mhe_jax.hyperspherical_energy(z, s=1.0, neuron_axis=0))
        uniformity = float(mhe_jax.gaussian_energy(z, t=2.0, neuron_axis=0))
        print(f"{name:>28} | {e1:10.4f} | {uniformity:16.4f}")

    # The same uniformity by hand (Wang & Isola: log of the mean over pairs of exp(-t * squared distance)):
    zn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sq = np.sum((zn[:, None] - zn[None]) ** 2, -1)[np.triu_indices(len(zn), 1)]
    print("by hand:", float(np.log(np.mean(np.exp(-2.0 * sq)))))
    """),
    code(FOOTER),
]


# ---------------------------------------------------------------------------------------------
# 02 Thomson and Figure 1
# ---------------------------------------------------------------------------------------------

NB02 = "02_thomson_and_figure1.ipynb"
# Best known Thomson energies (pairs counted once), copied from the project's reference table
# (Wikipedia "Thomson problem" / Cambridge Cluster Database, 9 decimals).
THOMSON = {2: 0.500000000, 3: 1.732050808, 4: 3.674234614, 5: 6.474691495, 6: 9.985281374,
           8: 19.675287861, 10: 32.716949460, 12: 49.165253058, 16: 92.911655302,
           24: 223.347074052, 32: 412.261274651, 48: 968.713455344, 64: 1765.802577927}
THOMSON_LINES = "\n".join(f"        {n}: {e:.9f}," for n, e in THOMSON.items())
CELLS02 = [
    md(f"""
    # Figure 1 and the Thomson problem

    {badge(NB02)}

    **Figure 1** of the paper compares orthonormal regularization, MHE and half-space MHE on 10
    neurons in 3-D: randomly initialised weights optimised by gradient descent on each
    regulariser alone. Orthonormal regularization cannot make 10 vectors in $\\mathbb{{R}}^3$
    orthogonal and leaves them grouped; MHE spreads them uniformly over the sphere but may put
    two neurons at opposite poles (co-linear, hence redundant); half-space MHE spreads the
    neurons *and* their virtual negations $-\\hat w_i$, i.e. the lines through the origin.

    The second part solves the **Thomson problem** (N electrons on the sphere, Coulomb energy
    $\\sum_{{i<j}} 1/\\lVert x_i - x_j\\rVert$, the $s = 1$ hyperspherical energy that inspired MHE)
    with `mhe_jax.sphere.minimize_energy` and compares with the best known minima.
    """),
    code(INSTALL),
    code(setup("02", "from mhe_jax.sphere import minimize_energy\n")),
    md("""
    ## 1. Figure 1: 10 neurons on $S^2$

    Each regulariser is minimised by SGD with momentum from the same random start; after every
    step the neurons are renormalised to the sphere (all three regularisers only see directions).
    """),
    code("""
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
        return np.degrees(np.arccos(np.clip(np.nanmax(c), -1, 1))), np.degrees(np.arccos(np.clip(np.nanmax(np.abs(c)), 0, 1)))


    print(f"\\n{'':>15} | {'min angle':>9} | {'min angle between lines (+-w)':>29} | {'E_2':>6} | {'half-space E_2':>14}")
    for name, w in solutions.items():
        a, a_lines = angles(w)
        print(f"{name:>15} | {a:9.2f} | {a_lines:29.2f} | {float(mhe_jax.hyperspherical_energy(w)):6.3f} | "
              f"{float(mhe_jax.hyperspherical_energy(w, half_space=True)):14.3f}")
    """),
    md("""
    Red: the neurons; pink (half-space MHE only): the virtual neurons $-\\hat w_i$. A min angle
    between lines near 0 means two neurons are (anti-)parallel, i.e. redundant.
    """),
    code("""
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
        draw(ax, w, f"{name}\\nmin angle {a:.1f}°, between lines {a_lines:.1f}°",
             virtual=-w if name == "half-space MHE" else None)
    fig.tight_layout()
    show(fig, "figure1")
    """),
    md(f"""
    ## 2. The Thomson problem

    `minimize_energy(n, dim=3, s=1)` runs a Riemannian L-BFGS from several random starts
    (`restarts`, vmapped in one jit) and keeps the best. Its energy uses the physics convention
    (each pair once); the paper's energy is the mean over ordered pairs, i.e.
    `hyperspherical_energy(points, s=1, neuron_axis=0) * n * (n - 1) / 2`.

    Reference: best known minima (Wikipedia's *Thomson problem* table / the Cambridge Cluster
    Database), copied from `shared/reference/thomson_minima_N2-64.tsv`. In full mode the solver
    runs in float64 with 16 random restarts (64 from N = 35 on, where local minima multiply) and
    reaches the table to its 9 decimals; smoke mode runs float32 on two small N.
    """),
    code(f"""
    THOMSON_REFERENCE = {{  # N: best known energy, sum over pairs of 1 / |x_i - x_j|
{THOMSON_LINES}
    }}

    if SMOKE:
        NS, restarts_for = [5, 12], lambda n: 2
    else:
        jax.config.update("jax_enable_x64", True)  # float64 for ~1e-10 relative energies
        NS, restarts_for = list(THOMSON_REFERENCE), lambda n: 16 if n < 35 else 64

    results = {{}}
    print(f"{{'N':>3}} | {{'reference':>14}} | {{'minimize_energy':>16}} | {{'rel. error':>10}} | "
          f"{{'paper E_1 x pairs':>17}} | time")
    for n in NS:
        t = time.perf_counter()
        r = minimize_energy(n, 3, s=1.0, restarts=restarts_for(n), key=jax.random.key(n))
        ref = THOMSON_REFERENCE[n]
        energy = float(r.energy)
        paper = float(mhe_jax.hyperspherical_energy(r.points, s=1.0, neuron_axis=0, eps=0.0)) * n * (n - 1) / 2
        results[n] = (r, abs(energy - ref) / ref)
        print(f"{{n:>3}} | {{ref:14.9f}} | {{energy:16.9f}} | {{results[n][1]:10.2e}} | {{paper:17.9f}} | "
              f"{{time.perf_counter() - t:.1f}} s")
    """),
    code("""
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
    """),
    code(FOOTER),
]


# ---------------------------------------------------------------------------------------------
# 03 class imbalance (Fig. 4)
# ---------------------------------------------------------------------------------------------

NB03 = "03_class_imbalance.ipynb"
CELLS03 = [
    md(f"""
    # Class-imbalance learning with output-layer MHE (Fig. 4)

    {badge(NB03)}

    Section 5.1.3 of the paper: throw away almost all training images of digit 0, train a CNN
    whose last hidden layer has **2 features**, and look at the features and the (normalised)
    classifier neurons. Without MHE the classifier neuron of the rare class is squeezed next to
    another digit's and digit 0 is mostly misclassified; MHE on the output layer spreads the
    classifier neurons evenly, so digit 0 keeps its own sector (paper: test accuracy 88.5% →
    98%).

    Data: full MNIST if a local copy is found (`mhe_jax.data.load_mnist(download=False)`, e.g.
    under `$MHE_JAX_DATA`), keeping 100 images of digit 0 as in the paper; otherwise
    scikit-learn's bundled digits (upsampled to 16×16), keeping 10 of 133. Smoke mode:
    digits and a few steps.

    On digits a single run is noisy (which test zeros land in the digit-0 sector varies with the
    initialisation), so full mode trains three seeds of each. We measured (full mode, CPU, seeds
    0–2, twice: with both of jax's random-number layouts, `JAX_THREEFRY_PARTITIONABLE` 1 and 0):
    without MHE 87.5–88.7% mean test accuracy and 0–11% on digit 0; with output MHE 90.5–93.0%
    and 29–61% on digit 0. The geometry is the same every time: with MHE the digit-0 neuron has
    its own 36° sector, without it the neuron lies on average 9–14° from another digit's. Trained
    much longer, the baseline memorises the ten zeros as well (at 1500 steps both reach ~95% on
    digit 0): the effect is about what the classifier learns before it can memorise the rare
    class.
    """),
    code(INSTALL),
    code(setup("03")),
    code("""
    ds = None
    if not SMOKE:
        try:
            ds = mhe_jax.data.load_mnist(download=False)
        except FileNotFoundError as e:  # DatasetNotFoundError
            print("no local MNIST, using scikit-learn's digits:", str(e).splitlines()[0])
    if ds is None:
        ds = mhe_jax.data.load_digits(size=16)
    KEEP = 100 if ds.name == "mnist" else 10  # training images of digit 0 that survive

    ds_imb, counts = mhe_jax.data.mnist_fig4_imbalance(ds, cls=0, keep_count=KEEP)
    print(ds.summary())
    print("imbalanced training set:", ds_imb.summary())
    print("training images per class:", counts)
    """),
    md("""
    The network is `mhe_jax.models.mnist2d` (6 conv layers → 2-D features → bias-free linear
    classifier with kernel `(2, 10)`). Both runs use the official optimizer recipe
    (`mhe_jax.train.make_optimizer`: weight decay, then the regulariser, then SGD with momentum)
    and `mhe_jax.train.fit`; the MHE run adds only output-layer MHE,
    `mhe_regularizer(0.0, λ_o, s=0.0, output=model.output_path, max_norm=1.0)`.

    - **Log energy (s = 0).** In two dimensions ten neurons are at best 36° apart, and the Riesz
      s = 2 energy and its gradient (∝ 1/distance³) grow large whenever two neurons come close,
      which can blow training up; the log energy is stable.
    - **λ_o = 20** is the official output strength 10 translated to this library's $E_0$ (the
      official log loss is $2E_0$).
    - **`max_norm=1.0`** clips the regulariser's gradient. The energy depends only on directions,
      so its gradient grows like $1/\\lVert w \\rVert$, and 2-D classifier neurons start short
      ($\\lVert w \\rVert \\approx 0.5$): unclipped, the first steps throw the neurons around and
      inflate their norms, and training can diverge (loss stuck near its maximum).
    """),
    code("""
    if ds.name == "mnist":  # the paper's setting (a GPU helps)
        STEPS, BATCH, WIDTHS, SEEDS = 6000, 128, (32, 32, 64, 64, 128, 128), (0,)
    elif SMOKE:  # 2 conv layers instead of 6: compiles fast
        STEPS, BATCH, WIDTHS, SEEDS = 40, 32, (8, 16), (0,)
    else:  # digits: ~30 epochs (much longer, and the baseline memorises the 10 zeros too)
        STEPS, BATCH, WIDTHS, SEEDS = 600, 64, (16, 16, 32, 32, 64, 64), (0, 1, 2)
    LAMBDA_O, MAX_NORM = 20.0, 1.0
    lr = mhe_jax.train.step_decay_schedule(0.05, (2 * STEPS // 3, 5 * STEPS // 6),
                                           warmup_steps=STEPS // 30)
    METHODS = {"without MHE": False, "with output MHE": True}


    from mhe_jax.experiments.fig4 import angle_to_nearest  # degrees from neuron c to its nearest


    def run(with_mhe, seed):
        model = mhe_jax.models.mnist2d(ds.num_classes, in_channels=ds.image_shape[-1], widths=WIDTHS,
                                       rngs=nnx.Rngs(seed))
        regularizer = (mhe_jax.mhe_regularizer(0.0, LAMBDA_O, s=0.0, output=model.output_path,
                                               max_norm=MAX_NORM) if with_mhe else None)
        optimizer = nnx.Optimizer(model, mhe_jax.train.make_optimizer(lr, regularizer=regularizer),
                                  wrt=nnx.Param)
        result = mhe_jax.train.fit(model, optimizer, ds_imb, steps=STEPS, batch_size=BATCH, seed=seed,
                                   augment=False, log_every=max(STEPS // 10, 1), learning_rate=lr,
                                   progress=not SMOKE)
        return model, result


    runs = {}
    for seed in SEEDS:
        for name, with_mhe in METHODS.items():
            model, result = runs[name, seed] = run(with_mhe, seed)
            test = result["test"]
            print(f"{name:>16} (seed {seed}): test accuracy {test['accuracy']:.4f}, digit 0: "
                  f"{test['per_class_accuracy'][0]:.4f}, angle w_0 to nearest "
                  f"{angle_to_nearest(np.asarray(model.classifier.kernel[...]), 0):.1f} deg "
                  f"({result['seconds']:.1f} s)")

    print(f"\\nmean over {len(SEEDS)} seed(s):")
    print(f"{'':>16} | {'test acc.':>9} | {'digit 0 acc.':>12} | {'angle w_0 to nearest':>20}")
    for name in METHODS:
        acc = np.mean([runs[name, s][1]["test"]["accuracy"] for s in SEEDS])
        acc0 = np.mean([runs[name, s][1]["test"]["per_class_accuracy"][0] for s in SEEDS])
        a0 = np.mean([angle_to_nearest(np.asarray(runs[name, s][0].classifier.kernel[...]), 0) for s in SEEDS])
        print(f"{name:>16} | {acc:9.4f} | {acc0:12.4f} | {a0:16.1f} deg")
    """),
    md("""
    Features of the **full, balanced** training set (as in the paper's figure), coloured by
    digit, with the normalised classifier neurons as red arrows (seed 0).
    """),
    code("""
    fig, axes = plt.subplots(1, 2, figsize=(12, 6))
    for ax, name in zip(axes, METHODS):
        model, result = runs[name, SEEDS[0]]
        test = result["test"]
        mhe_jax.models.plot_features_2d(
            mhe_jax.train.predict_features(model, ds.x_train), ds.y_train,
            np.asarray(model.classifier.kernel[...]),  # (2, 10): one column (neuron) per class
            ax=ax, max_points=10000, point_size=3,
            title=f"{name}: test acc. {test['accuracy']:.1%}, digit 0: {test['per_class_accuracy'][0]:.1%}")
    fig.tight_layout()
    show(fig, "fig4_features")
    """),
    code(FOOTER),
]


# ---------------------------------------------------------------------------------------------
# 04 CIFAR reproduction
# ---------------------------------------------------------------------------------------------

NB04 = "04_cifar_reproduction.ipynb"
CELLS04 = [
    md(f"""
    # Reproducing the CIFAR experiments (Tables 1 and 2) on a Colab GPU / TPU

    {badge(NB04)}

    The paper's CIFAR-10/100 experiments as named configurations of `mhe_jax.experiments`: the
    official recipe (CNN-9, SGD with momentum 0.9, lr 0.1 decayed ×0.1 at 20k/30k/37.5k of
    42.5k iterations, batch 128, weight decay 5e-4, label smoothing 0.01, flip + crop
    augmentation) and the official MHE strengths. Every run writes `config.json`, `log.jsonl`
    (loss, learning rate, per-layer energies, test accuracy), `results.json` and resumable orbax
    checkpoints, and the report puts our test error next to the paper's.

    **On Colab:** *Runtime → Change runtime type →* a GPU or a TPU. `mhe_jax.train.fit` shards
    every batch over all local devices (data parallel), so a TPU's 8 cores are used without
    changes (the batch size must divide by the device count). One full run (42.5k steps) takes
    hours; lower `steps` in `OVERRIDES` for a quicker, rougher comparison. Point `RUN_ROOT` at a
    mounted Google Drive folder so interrupted runs resume from their checkpoints.

    `MHE_JAX_SMOKE=1` (CI) replaces CIFAR by a tiny synthetic CIFAR-shaped dataset and runs two
    configurations for 3 steps with tiny widths.
    """),
    code(INSTALL),
    code(setup("04", "from IPython.display import Image, Markdown, display\n"
                     "from mhe_jax.experiments import apply_overrides, get_config, report, runner\n")),
    md("""
    ## Configurations

    Table 1: MHE variants on CIFAR-10 / CIFAR-100 (CNN-9, s ∈ {2, 1, 0}); Table 2: widths on
    CIFAR-100. `python -m mhe_jax.experiments list 'table*'` lists every row; add names below.
    """),
    code("""
    CONFIG_NAMES = [
        "table1/cifar10/baseline", "table1/cifar10/mhe/s2", "table1/cifar10/half_mhe/s2",
        "table2/baseline/w16_32_64", "table2/mhe/w16_32_64", "table2/half_mhe/w16_32_64",
    ]
    OVERRIDES = []  # e.g. ["steps=10000", "boundaries=5000,7500,9000", "eval_every=1000"]
    RUN_ROOT = Path(os.environ.get("MHE_JAX_RUNS", "runs/notebook04"))  # e.g. /content/drive/MyDrive/mhe_runs
    DATA_DIR = os.environ.get("MHE_JAX_DATA")  # CIFAR location; None: ~/.cache/mhe_jax

    if SMOKE:
        CONFIG_NAMES = ["table1/cifar10/mhe/s2", "table2/half_mhe/w16_32_64"]
        OVERRIDES = ["steps=3", "widths=4,4,8", "batch_size=16", "eval_every=0", "energy_every=0",
                     "checkpoint_every=0", "log_every=1"]
        RUN_ROOT = OUT_DIR / "runs"
    elif DATA_DIR:
        OVERRIDES = [f"data_dir={DATA_DIR}", *OVERRIDES]

    configs = {name: apply_overrides(get_config(name), OVERRIDES) for name in CONFIG_NAMES}
    print(f"{'config':>28} | {'data':>8} | {'method':>9} | {'s':>3} | {'widths':>13} | {'(λ_h, λ_o)':>12} | "
          f"{'steps':>6} | paper error")
    for name, cfg in configs.items():
        lam = tuple(None if v is None else round(v, 3) for v in cfg.strengths())
        print(f"{name:>28} | {cfg.dataset:>8} | {cfg.method:>9} | {cfg.s:3.0f} | {str(cfg.widths):>13} | "
              f"{str(lam):>12} | {cfg.steps:>6} | {cfg.paper.get('value')}%")
    print("local devices:", jax.local_device_count(), jax.devices()[0].platform)
    """),
    md("""
    ## Data

    Full mode downloads CIFAR-10 / CIFAR-100 once (official tarballs, md5-checked) into
    `DATA_DIR` or `~/.cache/mhe_jax`. Smoke mode serves a synthetic CIFAR-shaped dataset (random
    uint8 32×32×3 images) through `runner.load_dataset`, so `runner.run` is exercised unchanged.
    """),
    code("""
    def synthetic_cifar(cfg, n_train=64):
        \"\"\"Stand-in for runner.load_dataset in smoke mode: (Dataset, imbalance counts).\"\"\"
        rng = np.random.default_rng(cfg.seed)
        num_classes = 100 if cfg.dataset == "cifar100" else 10
        n_test = max(32, num_classes)  # every class in the test set
        x = rng.integers(0, 256, (n_train + n_test, 32, 32, 3), dtype=np.uint8)
        y = np.concatenate([rng.integers(0, num_classes, n_train), np.arange(n_test) % num_classes])
        ds = mhe_jax.data.make_dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:],
                                       num_classes, f"synthetic_{cfg.dataset}")
        return ds, None


    if SMOKE:
        print(synthetic_cifar(configs[CONFIG_NAMES[0]])[0].summary())
    else:
        datasets = {cfg.dataset for cfg in configs.values()}
        if "cifar10" in datasets:
            print(mhe_jax.data.load_cifar10(DATA_DIR, download=True).summary())
        if "cifar100" in datasets:
            print(mhe_jax.data.load_cifar100(DATA_DIR, download=True).summary())
    """),
    md("""
    ## Runs

    `runner.run(cfg, out_dir)` builds data, model and optimizer from the config, trains with
    `mhe_jax.train.fit` and writes the run directory. A finished run (with `results.json`) is
    skipped; an interrupted one resumes from its last checkpoint.
    """),
    code("""
    import contextlib
    from unittest import mock

    for name, cfg in configs.items():
        out = RUN_ROOT / name.replace("/", "-")
        if (out / "results.json").is_file() and not SMOKE:
            print(f"{name}: finished earlier ({out}), skipped")
            continue
        feed = (mock.patch.object(runner, "load_dataset", synthetic_cifar) if SMOKE
                else contextlib.nullcontext())
        with feed:
            r = runner.run(cfg, out, progress=not SMOKE)
        print(f"{name}: test error {r['test_error']:.2f}% (paper {cfg.paper.get('value')}%), "
              f"{r['wall_seconds']:.0f} s")
    """),
    md("""
    ## Results next to the paper

    Test error (%) of every run under `RUN_ROOT` beside the paper's number for that row, and the
    training curves (loss, test accuracy, mean layer energy).
    """),
    code("""
    run_results = report.collect([RUN_ROOT])
    display(Markdown(report.markdown_table(run_results)))
    curves = report.plot_runs([r["run_dir"] for r in run_results], OUT_DIR / "curves.png",
                              title="CIFAR runs" + (" (smoke: synthetic data, 3 steps)" if SMOKE else ""))
    display(Image(filename=str(curves)))
    """),
    code(FOOTER),
]


NOTEBOOKS = {
    NB01: (CELLS01, None),
    NB02: (CELLS02, None),
    NB03: (CELLS03, None),
    NB04: (CELLS04, "GPU"),
}


def main() -> None:
    for filename, (cells, accelerator) in NOTEBOOKS.items():
        nb = build(filename, cells, accelerator=accelerator)
        nbformat.write(nb, HERE / filename)
        print("wrote", HERE / filename)


if __name__ == "__main__":
    main()
