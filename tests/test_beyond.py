"""Beyond the paper: force-bounded kernels, CoMHE, width calibration, uniformity loss."""

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhe_jax
from mhe_jax import hyperspherical_energy as energy
from tests import helpers


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------ force bound


def two(angle, dtype=jnp.float64):
    a = jnp.asarray(angle, dtype)
    return jnp.stack([jnp.array([1.0, 0.0], dtype), jnp.stack([jnp.cos(a), jnp.sin(a)])], axis=1)


@pytest.mark.parametrize("s", [0.0, 1.0, 2.0, 3.0])
@pytest.mark.parametrize("distance", ["euclidean", "angular"])
def test_min_distance_continues_the_kernel_linearly(s, distance):
    r0 = 0.3
    f = lambda r: -math.log(r) if s == 0 else r ** -s  # noqa: E731
    df = lambda r: -1 / r if s == 0 else -s * r ** (-s - 1)  # noqa: E731
    for angle in (0.05, 0.2, 0.5, 1.5):
        r = 2 * math.sin(angle / 2) if distance == "euclidean" else angle
        want = f(r) if r >= r0 else f(r0) + df(r0) * (r - r0)
        got = energy(two(angle), s=s, distance=distance, min_distance=r0)
        np.testing.assert_allclose(float(got), want, rtol=1e-9)


def test_min_distance_leaves_spread_layers_unchanged_and_is_c1():
    w = jnp.asarray(helpers.unit(rand((8, 6), 1)))
    np.testing.assert_allclose(float(energy(w, min_distance=0.05)), float(energy(w)), rtol=1e-12)
    r0 = 0.3
    angle0 = 2 * math.asin(r0 / 2)
    grad_angle = jax.grad(lambda a: energy(two(a), s=2.0, min_distance=r0))
    left, right = float(grad_angle(angle0 - 1e-7)), float(grad_angle(angle0 + 1e-7))
    np.testing.assert_allclose(left, right, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_force_is_bounded_for_nearly_coincident_neurons(dtype):
    r0, s = 0.3, 2.0
    bound = s * r0 ** (-s - 1)
    for angle in (1e-2, 1e-4, 1e-6, 0.0):
        g = jax.grad(lambda w: energy(w, s=s, min_distance=r0))(two(angle, dtype))
        assert np.all(np.isfinite(g))
        assert float(jnp.max(jnp.linalg.norm(g, axis=0))) <= bound * 1.001
    g_free = jax.grad(lambda w: energy(w, s=s))(two(1e-3, dtype))
    assert float(jnp.max(jnp.abs(g_free))) > 1e3 * bound  # what the cap prevents


def test_min_distance_errors_and_traced():
    with pytest.raises(ValueError, match="min_distance"):
        energy(jnp.ones((3, 4)), min_distance=-1.0)
    w = jnp.asarray(rand((4, 5), 2))
    traced = jax.jit(lambda w, r0: energy(w, min_distance=r0))(w, 0.8)
    np.testing.assert_allclose(float(traced), float(energy(w, min_distance=0.8)), rtol=1e-12)


class MLP2D(nnx.Module):
    """64 → 128 → 2-D features → bias-free 10-way classifier (10 neurons in R²)."""

    output_path = "classifier/kernel"

    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 128, rngs=rngs)
        self.l2 = nnx.Linear(128, 2, rngs=rngs)
        self.classifier = nnx.Linear(2, 10, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.classifier(self.l2(nnx.relu(self.l1(x.reshape(x.shape[0], -1)))))


def _train_2d(lam, min_distance, steps=400):
    from mhe_jax.data import load_digits
    from mhe_jax.train import Every, accuracy_eval, epoch_batches, fit, make_optimizer, make_steps

    model = MLP2D(nnx.Rngs(0))
    reg = None if lam is None else mhe_jax.mhe_regularizer(
        0.0, lam, s=2.0, output="classifier/kernel", min_distance=min_distance)
    opt = nnx.Optimizer(model, make_optimizer(0.05, weight_decay=5e-4, regularizer=reg),
                        wrt=nnx.Param)
    ds = load_digits()
    fns = make_steps(augment=False)
    data = epoch_batches(ds.x_train, ds.y_train, batch_size=64, seed=0)
    test = accuracy_eval(fns.eval, ds.x_test, ds.y_test, num_classes=ds.num_classes)
    out = fit(model, opt, data, steps=steps, train_step=fns.train, log_every=20,
              evals=[Every(None, test)])
    losses = [h["loss"] for h in out["history"] if "loss" in h]
    angle = math.degrees(float(mhe_jax.min_angle(model.classifier.kernel[...])))
    return out["final"]["test_accuracy"], angle, losses


def test_output_mhe_s2_in_2d_trains_with_the_force_bound():
    """10 classifier neurons in R², output MHE s = 2 at λ ∈ {0.01, 0.1, 1}: finite, as accurate as
    the baseline (±2 pp, 450 test digits), neurons spread near the optimum 36°."""
    base_acc, _, _ = _train_2d(None, None)
    for lam in (0.01, 0.1, 1.0):
        acc, angle, losses = _train_2d(lam, 0.6)
        assert np.all(np.isfinite(losses)), lam
        assert acc >= base_acc - 0.02, (lam, acc, base_acc)
        assert 30.0 < angle <= 36.0 + 1e-3, (lam, angle)


# ------------------------------------------------------------------ CoMHE


@pytest.mark.parametrize("s,distance,half", [(2.0, "euclidean", False), (0.0, "angular", True),
                                             (1.0, "euclidean", True)])
def test_orthogonal_full_dimension_projection_is_plain_mhe(s, distance, half):
    w = jnp.asarray(rand((12, 9), 3))
    got = mhe_jax.compressive_energy(w, jax.random.key(0), projections=4, dim=12, kind="orthogonal",
                                     s=s, distance=distance, half_space=half)
    np.testing.assert_allclose(float(got),
                               float(energy(w, s=s, distance=distance, half_space=half)), rtol=1e-9)


def test_gaussian_comhe_estimator_variance_falls_as_one_over_p():
    w = jnp.asarray(rand((64, 10), 4))
    keys = jax.random.split(jax.random.key(1), 400)
    e1 = np.asarray(jax.vmap(
        lambda k: mhe_jax.compressive_energy(w, k, projections=1, dim=8))(keys))
    e16 = np.asarray(jax.vmap(
        lambda k: mhe_jax.compressive_energy(w, k, projections=16, dim=8))(keys))
    ratio = np.var(e1) / np.var(e16)
    assert 10 < ratio < 25, ratio  # 16 expected
    se = np.std(e1) / math.sqrt(len(e1))
    assert abs(np.mean(e1) - np.mean(e16)) < 4 * se  # same expectation
    # large k concentrates the projected angles: CoMHE approaches plain MHE
    big = mhe_jax.compressive_energy(w, jax.random.key(2), projections=8, dim=4096)
    np.testing.assert_allclose(float(big), float(energy(w)), rtol=0.02)


def test_comhe_in_regularizer_draws_fresh_projections():
    import optax

    params = {"a": {"kernel": jnp.asarray(rand((64, 10), 5), jnp.float32)}}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = mhe_jax.mhe_regularizer(1.0, projection={"projections": 4, "dim": 8})
    state = tx.init(params)
    u0, state = tx.update(zero, state, params)
    u1, _ = tx.update(zero, state, params)
    assert not np.allclose(u0["a"]["kernel"], u1["a"]["kernel"])
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
    want = jax.grad(lambda w: mhe_jax.compressive_energy(w, step_key, projections=4, dim=8))(
        params["a"]["kernel"])
    np.testing.assert_allclose(u0["a"]["kernel"], want, rtol=1e-5)
    with pytest.raises(ValueError, match="kind"):
        mhe_jax.compressive_energy(params["a"]["kernel"], jax.random.key(0), kind="sparse")
    with pytest.raises(ValueError, match="dim"):
        mhe_jax.compressive_energy(params["a"]["kernel"], jax.random.key(0), kind="orthogonal",
                                   dim=100)
    del optax


# ------------------------------------------------------------------ calibration


@pytest.mark.parametrize("d,s,distance", [(3, 0.0, "euclidean"), (3, 1.0, "euclidean"),
                                          (10, 2.0, "euclidean"), (10, 2.0, "angular"),
                                          (5, 0.0, "angular"), (30, 3.0, "euclidean")])
def test_uniform_reference_matches_monte_carlo(d, s, distance):
    rng = np.random.default_rng(0)
    x = helpers.unit(rng.standard_normal((d, 200000)))
    y = helpers.unit(rng.standard_normal((d, 200000)))
    r = (np.linalg.norm(x - y, axis=0) if distance == "euclidean"
         else np.arccos(np.clip((x * y).sum(0), -1, 1)))
    vals = -np.log(r) if s == 0 else r ** -s
    ref = mhe_jax.uniform_reference_energy(10, d, s=s, distance=distance)
    assert abs(ref - vals.mean()) < 5 * vals.std() / math.sqrt(vals.size) + 1e-3 * abs(ref)
    if (d, s, distance) == (3, 1.0, "euclidean"):
        assert ref == pytest.approx(1.0)  # E[1/|x − y|] = 1 on S²


def test_half_space_reference_and_divergence():
    n, d = 6, 8
    rng = np.random.default_rng(1)
    vals = [helpers.np_energy(rng.standard_normal((d, n)), 2.0, half_space=True)
            for _ in range(3000)]
    ref = mhe_jax.uniform_reference_energy(n, d, s=2.0, half_space=True)
    assert abs(np.mean(vals) - ref) < 4 * np.std(vals) / math.sqrt(len(vals))
    with pytest.raises(ValueError, match="diverges"):
        mhe_jax.uniform_reference_energy(10, 2, s=2.0)


@pytest.mark.slow  # full-width CNN-9 (~45 s in CI); the calibration itself is tested above
def test_calibrated_cnn9_layers_are_near_one_at_init():
    from mhe_jax.models import cnn9

    model = cnn9(10, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    raw = mhe_jax.layer_energies(params, s=2.0, half_space=True, output=model.output_path)
    cal = mhe_jax.layer_energies(params, s=2.0, half_space=True, output=model.output_path,
                                 calibrate=True)
    raw_values = [float(v.energy) for v in raw.values()]
    cal_values = [float(v.energy) for v in cal.values()]
    assert max(cal_values) / min(cal_values) < max(raw_values) / min(raw_values)
    for path, st in cal.items():
        assert 0.9 < float(st.energy) < 1.1, (path, float(st.energy))


# ------------------------------------------------------------------ uniformity


@pytest.mark.parametrize("normalize", [True, False])
def test_uniformity_loss_matches_wang_isola(normalize):
    x = rand((12, 5), 6)
    xs = x / np.linalg.norm(x, axis=1, keepdims=True) if normalize else x
    d2 = [np.sum((xs[i] - xs[j]) ** 2) for i in range(12) for j in range(i + 1, 12)]
    want = math.log(np.mean(np.exp(-2.0 * np.array(d2))))
    np.testing.assert_allclose(float(mhe_jax.uniformity_loss(x, normalize=normalize)), want,
                               rtol=1e-9)
    if normalize:
        np.testing.assert_allclose(float(mhe_jax.gaussian_energy(x, neuron_axis=0)), want,
                                   rtol=1e-9)
