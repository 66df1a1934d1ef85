# %% [markdown]
# # mhe_jax quickstart: Minimum Hyperspherical Energy in JAX
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/placeholder-owner/mhe_jax/blob/main/notebooks/01_quickstart.ipynb)
#
# *Learning towards Minimum Hyperspherical Energy* (Liu et al., NeurIPS 2018) treats the
# neurons of a layer as points on the unit sphere and penalises their **hyperspherical
# energy**, as in the Thomson problem of spreading electrons over a sphere:
#
# $$E_s = \frac{1}{N(N-1)} \sum_{i \ne j} f_s\big(\lVert \hat w_i - \hat w_j \rVert\big),
# \qquad f_s(r) = r^{-s}\ (s>0), \quad f_0(r) = \log(1/r),$$
#
# with $\hat w_i = w_i / \lVert w_i \rVert$. Minimising it spreads the neurons evenly and
# removes redundancy. This notebook shows
#
# 1. the energies of a random layer: all variants, half-space MHE, the official-code preset and
#    the diagnostics (minimum angle, coherence);
# 2. MHE as a one-line optax transformation;
# 3. `layer_energies` logged while training a small CNN on scikit-learn's digits, with and
#    without MHE;
# 4. the same energies on feature vectors (`neuron_axis=0`) and the Gaussian-kernel energy
#    (Wang & Isola's uniformity).
#
# Full mode takes about ten minutes on a 2-core CPU (far less on a GPU); with
# `MHE_JAX_SMOKE=1` everything is tiny (CI).

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
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import mhe_jax
from mhe_jax.experiments import notebook_setup

# MHE_JAX_SMOKE=1: tiny sizes, no network, small or synthetic data (CI runs every notebook so).
# Figures are shown inline and saved to MHE_JAX_NOTEBOOK_OUT (default: a fresh temp folder);
# show(fig, name) saves one as <name>.png and displays it.
SMOKE, OUT_DIR, show, T_START = notebook_setup("01_quickstart")

# %% [markdown]
# ## 1. The energy of a layer
#
# A layer's neurons lie along `neuron_axis` (default: the last axis, as in Flax `Dense` and
# `Conv` kernels); every other axis is flattened into the neuron. A `Conv` kernel of shape
# `(3, 3, 16, 32)` therefore holds 32 neurons of dimension 144.
#
# Variants: Riesz exponent `s` (0 is the log energy), `distance="euclidean"` or `"angular"`
# (A-MHE, the geodesic angle instead of the chord), and `half_space=True`, which adds the
# virtual neurons $-\hat w_i$ so that a neuron and its negation count as redundant.

# %%
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

# %% [markdown]
# **Diagnostics.** `energy_stats` returns the energy, the smallest angle between two neurons
# (the Tammes objective) and the mean |cosine| (coherence) from one Gram matrix. A redundant
# neuron shows up in all three; a *negated* copy of a neuron is invisible to full-space MHE
# (it is as far away as possible) but not to half-space MHE, which is why the paper uses the
# half-space energy for hidden layers.

# %%
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
print("\nmin_angle / mean_abs_cosine alone:",
      f"{np.degrees(float(mhe_jax.min_angle(W))):.2f} deg,",
      f"{float(mhe_jax.mean_abs_cosine(W)):.3f}")


# %% [markdown]
# **The official TensorFlow code's losses.** `official_energy(w, power)` reproduces the
# per-layer loss of the authors' code (`"0"`, `"1"`, `"2"`, and angular `"a0"`, `"a1"`,
# `"a2"`, with its `1e-4` guards), for porting hyperparameters; `OFFICIAL_STRENGTHS` holds its
# λ's. They relate to this library's (the paper's) energies as printed below: the official log
# loss is twice $E_0$, and the angular losses use θ/π instead of θ.

# %%
def energy(**options):  # the energy of W as a float
    return float(mhe_jax.hyperspherical_energy(W, **options))


ours = {
    "0": ("2 * E_0", 2 * energy(s=0.0)),
    "1": ("E_1", energy(s=1.0)),
    "2": ("E_2", energy(s=2.0)),
    "a0": ("E_0(angular) + log(pi)", energy(s=0.0, distance="angular") + math.log(math.pi)),
    "a1": ("pi * E_1(angular)", math.pi * energy(s=1.0, distance="angular")),
    "a2": ("pi^2 * E_2(angular)", math.pi**2 * energy(s=2.0, distance="angular")),
}
print(f"{'power':>5} {'official':>10} {'ours':>10}  relation")
for power, (relation, value) in ours.items():
    print(f"{power:>5} {float(mhe_jax.official_energy(W, power)):10.5f} {value:10.5f}  {relation}")
print("\nofficial strengths:", mhe_jax.OFFICIAL_STRENGTHS)

# %% [markdown]
# **Neuron sampling (Sec. 3.6).** For very wide layers, `sample_size=k` computes the energy of
# `k` randomly drawn neurons: an unbiased estimate of the energy and of its gradient.

# %%
keys = jax.random.split(jax.random.key(1), 256)
estimates = jax.vmap(lambda k: mhe_jax.hyperspherical_energy(W, s=2.0, sample_size=8, key=k))(keys)
print(f"exact E_2 = {energy(s=2.0):.4f};  mean of 256 estimates from 8 of 32 neurons = "
      f"{float(estimates.mean()):.4f} +- {float(estimates.std() / np.sqrt(len(keys))):.4f}")

# %% [markdown]
# ## 2. MHE as an optax transformation
#
# `mhe_regularizer(λ_h, λ_o, ...)` is an optax `GradientTransformation` that adds
# $\nabla R$ to the incoming gradients, with
# $R = \lambda_h \sum_{\text{hidden}} E + \lambda_o E_{\text{output}}$. By default every leaf
# whose path ends in `kernel` (ndim ≥ 2) is a layer; `output=` names the classifier, which gets
# full-space MHE (the hidden layers get half-space MHE here). Chain it before the optimizer:

# %%
k1, k2 = jax.random.split(jax.random.key(2))
params = {"conv": {"kernel": jax.random.normal(k1, (3, 3, 1, 16))},  # 16 neurons in 9 dimensions
          "classifier": {"kernel": jax.random.normal(k2, (16, 10))}}
reg = {"s": 2.0, "half_space": True, "output": "classifier/kernel"}

tx = optax.chain(mhe_jax.mhe_regularizer(1.0, 10.0, **reg), optax.sgd(0.1, momentum=0.9))

opt_state = tx.init(params)
zero_grads = jax.tree.map(jnp.zeros_like, params)   # a flat loss: only MHE acts
updates, _ = jax.jit(tx.update)(zero_grads, opt_state, params)  # the transformation needs params

# It adds exactly the gradient of the penalty mhe_penalty (which you could add to a loss instead):
grad_R = jax.jit(jax.grad(lambda p: mhe_jax.mhe_penalty(p, 1.0, 10.0, **reg)))(params)
diff = max(float(jnp.max(jnp.abs(u + 0.1 * g)))
           for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grad_R), strict=True))
print("max |update + lr * grad R| =", diff)

# %% [markdown]
# Descending on the regularizer alone spreads the neurons, most visibly where they are crowded
# (16 conv neurons in 9 dimensions, 10 classifier neurons): `layer_energies` reports each
# layer's energy, minimum angle and coherence (jit it for logging).

# %%
energies = jax.jit(lambda p: mhe_jax.layer_energies(p, **reg))


def fmt(stats):
    return "; ".join(f"{path}: E={float(st.energy):.4f}, "
                     f"min angle={np.degrees(float(st.min_angle)):.1f} deg"
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

# %% [markdown]
# ## 3. Logging `layer_energies` while training a CNN
#
# A small CNN from `mhe_jax.models` (the paper's CNN-9; one conv per stage in smoke mode) on
# scikit-learn's bundled digits, upsampled to 32×32 (16×16 in smoke mode), trained twice with
# the same seed: plain SGD with momentum and weight decay, and the same optimizer with
# half-space MHE on the hidden layers and MHE on the classifier (the official strengths
# λ_h = 1, λ_o = 10, s = 2).
# A plain `nnx.Optimizer` loop; `mhe_jax.train.fit(model, optimizer, batches, steps=...,
# train_step=...)` runs the same loop with logging, evaluations and checkpoints (README).

# %%
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
                path: (float(st.energy), np.degrees(float(st.min_angle)))
                for path, st in stats.items()}})
        if step == STEPS:
            break
        images, labels = next(data)
        loss = train_step(model, optimizer, images, labels)
    model.eval()
    pred = np.concatenate([predict(model, ds.x_test[i:i + 500])
                           for i in range(0, len(ds.x_test), 500)])
    model.train()
    return model, history, float(np.mean(pred == ds.y_test)), float(loss)


runs = {}
for name, use_mhe in (("baseline", False), ("half-space MHE", True)):
    t = time.perf_counter()
    runs[name] = train(use_mhe)
    print(f"{name:>15}: test accuracy {runs[name][2]:.3f}, last batch loss {runs[name][3]:.3f}"
          f"  ({time.perf_counter() - t:.1f} s)")

# %%
paths = list(runs["baseline"][1][0]["layers"])
colors = plt.cm.viridis(np.linspace(0, 0.95, len(paths)))
fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for name, style in (("baseline", "--"), ("half-space MHE", "-")):
    history = runs[name][1]
    steps = [h["step"] for h in history]
    for path, color in zip(paths, colors, strict=True):
        for k, ax in enumerate(axes):
            ax.plot(steps, [h["layers"][path][k] for h in history], style, color=color,
                    label=path if name == "half-space MHE" else None)
axes[0].set(yscale="log", xlabel="step",
            title="layer energy (half-space E_2; classifier: full E_2)")
axes[1].set(xlabel="step", ylabel="degrees", title="minimum angle between neurons")
for ax in axes:
    ax.grid(alpha=0.3)
axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
fig.suptitle("solid: half-space MHE, dashed: baseline")
fig.tight_layout()
show(fig, "layer_energies")

# %% [markdown]
# ## 4. Energies of feature vectors
#
# The energies are functions of any set of vectors: with `neuron_axis=0` the rows of a
# `(batch, dim)` array are the points. `gaussian_energy(z, t=2)` is
# $\log \operatorname{mean}_{i \ne j} \exp(-t \lVert \hat z_i - \hat z_j \rVert^2)$, the
# *uniformity* loss of Wang & Isola (2020) for normalised embeddings, so
# `loss + λ * mhe_jax.gaussian_energy(z, neuron_axis=0)` is their uniformity regulariser.
# Below: the fc-layer features of the trained CNN between two references, random Gaussian
# vectors (uniformly spread directions: low energy) and the features of a single class
# (nearly collapsed: high energy).

# %%
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

# The same uniformity by hand (Wang & Isola: the log of the mean over pairs of
# exp(-t * squared distance)):
zn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
sq = np.sum((zn[:, None] - zn[None]) ** 2, -1)[np.triu_indices(len(zn), 1)]
print("by hand:", float(np.log(np.mean(np.exp(-2.0 * sq)))))

# %%
print(f"notebook finished in {time.perf_counter() - T_START:.1f} s (smoke mode: {SMOKE})")
