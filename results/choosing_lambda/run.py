"""Cost of the MHE strength λ on a small Flax linen CNN on scikit-learn's 8x8 digits.

Measures test accuracy and per-layer minimum angles after 100 and 500 SGD steps for
λ_h ∈ {0, 0.01, 0.1, 1, 10} (λ_o = 10·λ_h, no output term at λ_h = 0), s = 2, plus one
half-space row at λ_h = 1; 3 seeds each. The 100-step numbers are read from the same
trajectory as the 500-step ones (constant learning rate, so identical to a 100-step run).

Run (from the repository root):  nice -n 5 python results/choosing_lambda/run.py
Writes results/choosing_lambda/results.json.
"""

from __future__ import annotations

import json
import pathlib
import platform
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import mhe_jax

LAMBDAS = (0.0, 0.01, 0.1, 1.0, 10.0)
SEEDS = (0, 1, 2)
CHECKPOINTS = (100, 500)
BATCH = 64
LR, MOMENTUM = 0.05, 0.9
S = 2.0
OUTPUT = "Dense_1"
HERE = pathlib.Path(__file__).resolve().parent


class CNN(nn.Module):
    """The Flax MNIST example CNN."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(64, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(256)(x))
        return nn.Dense(10)(x)


def load_data():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, train_size=1500, test_size=297,
                                              random_state=0, stratify=y)
    return jnp.asarray(x_tr), jnp.asarray(y_tr), jnp.asarray(x_te), jnp.asarray(y_te)


def make_run(model, tx, x_tr, y_tr, x_te, y_te):
    """One jitted step and one jitted eval; compiled once per configuration, reused per seed."""

    def loss_fn(params, xb, yb):
        logits = model.apply({"params": params}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(params, opt_state, key):
        idx = jax.random.choice(key, x_tr.shape[0], (BATCH,), replace=False)
        grads = jax.grad(loss_fn)(params, x_tr[idx], y_tr[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params):
        logits = model.apply({"params": params}, x_te)
        return (logits.argmax(-1) == y_te).mean()

    return step, accuracy


def main() -> None:
    x_tr, y_tr, x_te, y_te = load_data()
    model = CNN()
    configs = [{"lam_h": lam, "lam_o": (10 * lam if lam > 0 else None), "half_space": False}
               for lam in LAMBDAS]
    configs.append({"lam_h": 1.0, "lam_o": 10.0, "half_space": True})
    rows = []
    t_start = time.perf_counter()
    for cfg in configs:
        tx = optax.chain(
            mhe_jax.mhe_regularizer(cfg["lam_h"], cfg["lam_o"], s=S,
                                    half_space=cfg["half_space"], output=OUTPUT),
            optax.sgd(LR, momentum=MOMENTUM),
        )
        step, accuracy = make_run(model, tx, x_tr, y_tr, x_te, y_te)
        per_seed = []
        for seed in SEEDS:
            init_key, data_key = jax.random.split(jax.random.key(seed))
            params = model.init(init_key, x_tr[:1])["params"]
            opt_state = tx.init(params)
            record = {"seed": seed}
            for t in range(1, CHECKPOINTS[-1] + 1):
                params, opt_state = step(params, opt_state, jax.random.fold_in(data_key, t))
                if t in CHECKPOINTS:
                    # Full-space stats for every row (comparable across rows).
                    angles = mhe_jax.layer_energies(flax.core.unfreeze(params), s=S,
                                                    output=OUTPUT, as_floats=True,
                                                    degrees=True)
                    record[str(t)] = {
                        "test_accuracy": float(accuracy(params)),
                        "layers": angles,
                    }
            per_seed.append(record)
        summary = {}
        for t in map(str, CHECKPOINTS):
            accs = np.array([r[t]["test_accuracy"] for r in per_seed]) * 100
            layer_names = list(per_seed[0][t]["layers"])
            summary[t] = {
                "acc_mean": float(accs.mean()), "acc_std": float(accs.std(ddof=1)),
                "min_angle_deg": {
                    name: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))}
                    for name in layer_names
                    for v in [[r[t]["layers"][name]["min_angle_deg"] for r in per_seed]]
                },
            }
        rows.append({**cfg, "summary": summary, "per_seed": per_seed})
        print(cfg, {t: f"{summary[t]['acc_mean']:.1f}±{summary[t]['acc_std']:.1f}"
                    for t in summary}, f"{time.perf_counter() - t_start:.0f}s", flush=True)
    out = {
        "command": "nice -n 5 python results/choosing_lambda/run.py",
        "machine": {"processor": platform.processor(), "machine": platform.machine(),
                    "jax": jax.__version__, "flax": flax.__version__,
                    "optax": optax.__version__, "backend": jax.default_backend()},
        "setup": {"data": "sklearn load_digits, /16, stratified 1500/297 split random_state=0",
                  "model": "Conv32-relu-avgpool-Conv64-relu-avgpool-Dense256-relu-Dense10",
                  "optimizer": f"sgd({LR}, momentum={MOMENTUM})", "batch": BATCH, "s": S,
                  "output": OUTPUT, "seeds": list(SEEDS), "checkpoints": list(CHECKPOINTS),
                  "accuracy_units": "percent, mean ± sample std over seeds",
                  "min_angle": "full-space min angle in degrees, every row"},
        "wall_seconds": time.perf_counter() - t_start,
        "rows": rows,
    }
    (HERE / "results.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
